/// Completes TCP/UDP checksums left for offload.
///
/// A host hands packets to the device with CHECKSUM_PARTIAL: the checksum
/// field holds only the folded pseudo-header sum and the NIC finishes it on
/// the wire. The hooks (and tcpdump) see it unfinished, both for packets
/// this host sends and for packets a veth peer sends it. A mirror copy
/// should carry what the wire carries, so an IDS that verifies checksums
/// does not discard it: when the field equals the pseudo-header sum and the
/// segment does not verify, the copy gets the finished checksum. Anything
/// else, a checksum that is simply wrong included, is mirrored untouched.
///
/// A copy cut short holds only the start of the segment: the kernel then
/// sends the sum of the transport payload with it (`payloadSum`), and the
/// frame needs to hold only the headers.
public enum PartialChecksum {
    /// The finished checksum and where it goes (offset in the frame), or nil
    /// when the frame's checksum is already complete, absent (UDP over IPv4
    /// with 0) or not an unfinished offload value.
    /// `payloadSum` is the folded sum of the bytes after the TCP/UDP header
    /// up to the end of the IP payload, for a frame that does not hold them.
    public static func completion(
        frame: UnsafeRawBufferPointer, l3Offset: Int, l4Offset: Int, l4Protocol: UInt8, payloadSum: UInt16? = nil
    ) -> (offset: Int, value: UInt16)? {
        let fieldOffset: Int
        switch l4Protocol {
        case 6: fieldOffset = l4Offset + 16
        case 17: fieldOffset = l4Offset + 6
        default: return nil
        }
        guard l3Offset >= 14, l4Offset > l3Offset, fieldOffset + 2 <= frame.count else { return nil }
        let headerEnd = l4Protocol == 6 ? l4Offset + Int(frame[l4Offset + 12] >> 4) * 4 : l4Offset + 8
        // Without the payload in the frame, its sum must come with it.
        let held = payloadSum == nil ? Int.max : headerEnd
        guard headerEnd >= fieldOffset + 2, headerEnd <= frame.count else { return nil }
        let version = frame[l3Offset] >> 4
        let stored = be16(frame, fieldOffset)
        // No checksum at all: nothing to finish, and no sum to take.
        if l4Protocol == 17 && version == 4 && stored == 0 { return nil }
        let l4End: Int
        var pseudo: InternetChecksum
        if version == 4 {
            l4End = l3Offset + Int(be16(frame, l3Offset + 2))
            guard min(l4End, held) <= frame.count, l4End >= headerEnd else { return nil }
            pseudo = PseudoHeader.sumIPv4(
                source: UnsafeRawBufferPointer(rebasing: frame[(l3Offset + 12)..<(l3Offset + 16)]),
                destination: UnsafeRawBufferPointer(rebasing: frame[(l3Offset + 16)..<(l3Offset + 20)]),
                protocol: l4Protocol, length: l4End - l4Offset)
        } else if version == 6 {
            l4End = l3Offset + 40 + Int(be16(frame, l3Offset + 4))
            guard min(l4End, held) <= frame.count, l4End >= headerEnd else { return nil }
            pseudo = PseudoHeader.sumIPv6(
                source: UnsafeRawBufferPointer(rebasing: frame[(l3Offset + 8)..<(l3Offset + 24)]),
                destination: UnsafeRawBufferPointer(rebasing: frame[(l3Offset + 24)..<(l3Offset + 40)]),
                protocol: l4Protocol, length: l4End - l4Offset)
        } else {
            return nil
        }
        // Cheap test first: an unfinished field equals the folded pseudo sum.
        guard stored == pseudo.folded else { return nil }
        var full = pseudo
        full.add(UnsafeRawBufferPointer(rebasing: frame[l4Offset..<fieldOffset]))
        if let payloadSum {
            full.add(UnsafeRawBufferPointer(rebasing: frame[(fieldOffset + 2)..<headerEnd]))
            full.add(word: payloadSum)
        } else {
            full.add(UnsafeRawBufferPointer(rebasing: frame[(fieldOffset + 2)..<l4End]))
        }
        var value = full.value
        if value == 0 && l4Protocol == 17 { value = 0xFFFF } // UDP sends 0 as all ones
        // A finished checksum that happens to equal the pseudo sum verifies.
        if value == stored { return nil }
        return (fieldOffset, value)
    }
}

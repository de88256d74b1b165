/// Cuts a TCP or UDP GSO super-packet into the segments the wire carries,
/// the way the kernel's software GSO does (tcp_gso_segment,
/// __udp_gso_segment, inet_gso_segment / ipv6_gso_segment): every segment
/// gets the original headers with
///  - IPv4: total length, identification + i, header checksum;
///  - IPv6: payload length;
///  - TCP: sequence + i * gso_size, CWR only on the first segment, FIN and
///    PSH only on the last;
///  - UDP: length;
///  - a finished TCP/UDP checksum (the super-packet carries an unfinished one).
/// VLAN tags and IPv6 extension headers stay in place.
///
/// Headers are written into caller memory; payload chunks are ranges of the
/// original frame, so segments can be sent straight from the ring. A frame
/// the kernel sliced (`whole: false`) holds the headers and only the first
/// bytes of each segment: its payload sums come with it.
public struct GSOSegmenter {
    /// Largest header stack it will rewrite (the forwarder's scratch).
    public static let maxHeaderLength = 256

    public let frame: UnsafeRawBufferPointer
    public let l3Offset: Int
    public let l4Offset: Int
    public let tcp: Bool
    public let ipv4: Bool
    /// Ethernet + tags + IP + extension headers + transport header.
    public let headerLength: Int
    public let segmentSize: Int
    public let segmentCount: Int
    private let payloadLength: Int

    public init?(frame: UnsafeRawBufferPointer, l3Offset: Int, l4Offset: Int, l4Protocol: UInt8, gsoSize: Int,
                 whole: Bool = true) {
        guard gsoSize > 0, l3Offset >= 14, l4Offset > l3Offset, l4Offset + 8 <= frame.count else { return nil }
        self.frame = frame
        self.l3Offset = l3Offset
        self.l4Offset = l4Offset
        ipv4 = frame[l3Offset] >> 4 == 4
        switch l4Protocol {
        case 6:
            guard l4Offset + 20 <= frame.count else { return nil }
            let doff = Int(frame[l4Offset + 12] >> 4) * 4
            guard doff >= 20 else { return nil }
            tcp = true
            headerLength = l4Offset + doff
        case 17:
            tcp = false
            headerLength = l4Offset + 8
        default:
            return nil
        }
        guard headerLength <= Self.maxHeaderLength, headerLength <= frame.count else { return nil }
        // The IP lengths bound the payload (Ethernet padding is not data).
        let ipEnd = ipv4 ? l3Offset + Int(be16(frame, l3Offset + 2)) : l3Offset + 40 + Int(be16(frame, l3Offset + 4))
        guard !whole || ipEnd <= frame.count, ipEnd > headerLength else { return nil }
        payloadLength = ipEnd - headerLength
        segmentSize = gsoSize
        segmentCount = (payloadLength + gsoSize - 1) / gsoSize
    }

    /// Payload bytes of segment `i`, as a range of `frame`.
    public func payloadRange(_ i: Int) -> Range<Int> {
        let start = headerLength + i * segmentSize
        return start..<min(start + segmentSize, headerLength + payloadLength)
    }

    /// Writes segment `i`'s `headerLength` header bytes to `out`; the
    /// transport checksum covers `payloadSum` (the folded one's-complement
    /// sum of the segment's payload), or the payload in `frame` when nil.
    public func writeHeaders(_ i: Int, to out: UnsafeMutableRawPointer, payloadSum: UInt16? = nil) {
        out.copyMemory(from: frame.baseAddress!, byteCount: headerLength)
        let payload = payloadRange(i)
        let l4Length = headerLength - l4Offset + payload.count
        let last = i == segmentCount - 1
        if ipv4 {
            let ihl = Int(frame[l3Offset] & 0x0F) * 4
            let total = UInt16(truncatingIfNeeded: ihl + l4Length)
            let id = be16(frame, l3Offset + 4) &+ UInt16(truncatingIfNeeded: i)
            put16(out, l3Offset + 2, total)
            put16(out, l3Offset + 4, id)
            put16(out, l3Offset + 10, 0)
            var c = InternetChecksum()
            c.add(UnsafeRawBufferPointer(start: out + l3Offset, count: ihl))
            put16(out, l3Offset + 10, c.value)
        } else {
            put16(out, l3Offset + 4, UInt16(truncatingIfNeeded: l4Offset - l3Offset - 40 + l4Length))
        }
        let checkAt: Int
        if tcp {
            let seq = be32(frame, l4Offset + 4) &+ UInt32(truncatingIfNeeded: i * segmentSize)
            put32(out, l4Offset + 4, seq)
            var flags = frame[l4Offset + 13]
            if i > 0 { flags &= ~0x80 } // CWR: first segment only
            if !last { flags &= ~0x09 } // FIN, PSH: last segment only
            out.storeBytes(of: flags, toByteOffset: l4Offset + 13, as: UInt8.self)
            checkAt = l4Offset + 16
        } else {
            put16(out, l4Offset + 4, UInt16(truncatingIfNeeded: l4Length))
            checkAt = l4Offset + 6
        }
        put16(out, checkAt, 0)
        let h = UnsafeRawBufferPointer(start: out, count: headerLength)
        var sum: InternetChecksum
        if ipv4 {
            sum = PseudoHeader.sumIPv4(
                source: UnsafeRawBufferPointer(rebasing: h[(l3Offset + 12)..<(l3Offset + 16)]),
                destination: UnsafeRawBufferPointer(rebasing: h[(l3Offset + 16)..<(l3Offset + 20)]),
                protocol: tcp ? 6 : 17, length: l4Length)
        } else {
            sum = PseudoHeader.sumIPv6(
                source: UnsafeRawBufferPointer(rebasing: h[(l3Offset + 8)..<(l3Offset + 24)]),
                destination: UnsafeRawBufferPointer(rebasing: h[(l3Offset + 24)..<(l3Offset + 40)]),
                protocol: tcp ? 6 : 17, length: l4Length)
        }
        sum.add(UnsafeRawBufferPointer(rebasing: h[l4Offset..<headerLength]))
        if let payloadSum {
            sum.add(word: payloadSum)
        } else {
            sum.add(UnsafeRawBufferPointer(rebasing: frame[payload]))
        }
        var value = sum.value
        if value == 0 && !tcp { value = 0xFFFF }
        put16(out, checkAt, value)
    }

    @inline(__always) private func put16(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt16) {
        p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt16.self)
    }

    @inline(__always) private func put32(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt32) {
        p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt32.self)
    }
}

@inline(__always)
func be32(_ b: UnsafeRawBufferPointer, _ off: Int) -> UInt32 {
    UInt32(b[off]) << 24 | UInt32(b[off + 1]) << 16 | UInt32(b[off + 2]) << 8 | UInt32(b[off + 3])
}

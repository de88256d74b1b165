/// Where a session's `mask` falls in a copy, and the transport checksum
/// the copy then needs.
///
/// The masked bytes are counted from the end of the layer's headers: l3
/// (after IPv4 options or IPv6 extension headers), or l4 (after the TCP
/// header, its data offset, or the 8 bytes of UDP, ICMP and ICMPv6). A frame
/// without that layer is not masked. The copy's TCP, UDP or ICMP checksum is
/// adjusted for the pattern (RFC 1624), so it verifies when the original's
/// did; when the mask covers the checksum field itself the field carries the
/// pattern. A UDP/IPv4 checksum of 0 (none) stays 0.
public enum PayloadMask {
    /// The end of `layer`'s headers in `frame`, or nil when the frame has no
    /// such layer (or does not hold its header).
    public static func layerEnd(_ layer: SliceLayer, frame: UnsafeRawBufferPointer, l3Offset: Int, l4Offset: Int,
                                l4Protocol: UInt8) -> Int? {
        guard l3Offset >= 14, l4Offset > l3Offset else { return nil }
        if layer == .l3 { return l4Offset }
        switch l4Protocol {
        case 6:
            guard l4Offset + 13 <= frame.count else { return nil }
            return l4Offset + Int(frame[l4Offset + 12] >> 4) * 4
        case 17, 1, 58: return l4Offset + 8
        default: return nil
        }
    }

    /// The frame bytes the mask overwrites, within the `length` bytes the
    /// copy holds; nil when none.
    public static func range(_ m: Mask, layerEnd: Int, length: Int) -> Range<Int>? {
        let start = layerEnd + m.offset
        let end = min(start + m.bytes, length)
        return start < end ? start..<end : nil
    }

    /// Offset of the transport checksum field.
    public static func checksumField(l4Offset: Int, l4Protocol: UInt8) -> Int? {
        switch l4Protocol {
        case 6: l4Offset + 16
        case 17: l4Offset + 6
        case 1, 58: l4Offset + 2
        default: nil
        }
    }

    /// The copy's checksum after `range` of the frame becomes `pattern`:
    /// `current` is the value the copy would carry otherwise. Nil when
    /// nothing is to change (no checksum, or the mask covers its field).
    public static func adjustedChecksum(
        frame: UnsafeRawBufferPointer, l3Offset: Int, l4Offset: Int, l4Protocol: UInt8, range: Range<Int>,
        pattern: UInt8, current: UInt16
    ) -> (offset: Int, value: UInt16)? {
        guard let field = checksumField(l4Offset: l4Offset, l4Protocol: l4Protocol), field + 2 <= frame.count,
              range.upperBound <= field || range.lowerBound >= field + 2 else { return nil }
        let v4 = frame[l3Offset] >> 4 == 4
        if l4Protocol == 17 && v4 && current == 0 { return nil }
        // Sums aligned as in the transport segment: an odd start is a low byte.
        var old = InternetChecksum(), new = InternetChecksum()
        if (range.lowerBound - l4Offset) & 1 == 1 {
            old.add([0])
            new.add([0])
        }
        old.add(UnsafeRawBufferPointer(rebasing: frame[range]))
        addPattern(&new, pattern, count: range.count)
        var c = InternetChecksum()
        c.add(word: ~current)
        c.add(word: ~old.folded)
        c.add(word: new.folded)
        var value = c.value
        if value == 0 && l4Protocol == 17 { value = 0xFFFF }
        return (field, value)
    }

    /// Adds `count` bytes of `pattern` to a running sum.
    @inlinable
    public static func addPattern(_ sum: inout InternetChecksum, _ pattern: UInt8, count: Int) {
        var n = count
        if sum.pendingOdd && n > 0 {
            sum.add([pattern])
            n -= 1
        }
        let word = UInt64(pattern) << 8 | UInt64(pattern)
        sum.add(sum64: word &* UInt64(n / 2))
        if n & 1 == 1 { sum.add([pattern]) }
    }
}

/// The Internet checksum (RFC 1071) as a running one's-complement sum.
public struct InternetChecksum: Sendable {
    /// The unfolded sum; fold with `value` or `folded`.
    public private(set) var sum: UInt64 = 0
    /// Whether an odd byte is pending (the next byte is a low byte).
    private var odd = false

    public init() {}

    /// Adds bytes as big-endian 16-bit words.
    public mutating func add(_ bytes: UnsafeRawBufferPointer) {
        var i = 0
        let n = bytes.count
        if odd, n > 0 {
            sum &+= UInt64(bytes[0])
            i = 1
            odd = false
        }
        // Eight bytes at a time: a one's-complement sum can add the words
        // in any grouping as long as carries are folded back in.
        while i + 8 <= n {
            let w = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            sum &+= (w >> 48) &+ ((w >> 32) & 0xFFFF) &+ ((w >> 16) & 0xFFFF) &+ (w & 0xFFFF)
            i += 8
        }
        while i + 2 <= n {
            sum &+= UInt64(bytes[i]) << 8 | UInt64(bytes[i + 1])
            i += 2
        }
        if i < n {
            sum &+= UInt64(bytes[i]) << 8
            odd = true
        }
    }

    public mutating func add(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { add($0) }
    }

    /// Whether an odd byte is pending: the next byte added is a low byte.
    public var pendingOdd: Bool { odd }

    /// Adds an unfolded sum of whole 16-bit words.
    public mutating func add(sum64 v: UInt64) {
        sum &+= v
    }

    /// Adds one 16-bit word (host value).
    public mutating func add(word: UInt16) {
        sum &+= UInt64(word)
    }

    /// Adds a 32-bit value as two words.
    public mutating func add(word32: UInt32) {
        sum &+= UInt64(word32 >> 16) &+ UInt64(word32 & 0xFFFF)
    }

    /// The 16-bit one's-complement sum (not inverted).
    public var folded: UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xFFFF) &+ (s >> 16) }
        return UInt16(s)
    }

    /// The checksum to put in a header: the inverted folded sum.
    public var value: UInt16 { ~folded }
}

/// Pseudo-header sums for TCP/UDP checksums (RFC 768, RFC 8200 §8.1).
public enum PseudoHeader {
    /// IPv4: source, destination, protocol, transport length.
    public static func sumIPv4(
        source: UnsafeRawBufferPointer, destination: UnsafeRawBufferPointer,
        protocol proto: UInt8, length: Int
    ) -> InternetChecksum {
        var c = InternetChecksum()
        c.add(source)
        c.add(destination)
        c.add(word: UInt16(proto))
        c.add(word: UInt16(truncatingIfNeeded: length))
        return c
    }

    /// IPv6: source, destination, 32-bit length, next header.
    public static func sumIPv6(
        source: UnsafeRawBufferPointer, destination: UnsafeRawBufferPointer,
        protocol proto: UInt8, length: Int
    ) -> InternetChecksum {
        var c = InternetChecksum()
        c.add(source)
        c.add(destination)
        c.add(word32: UInt32(truncatingIfNeeded: length))
        c.add(word: UInt16(proto))
        return c
    }
}

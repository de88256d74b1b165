/// Writes the classic pcap format (nanosecond variant), which tcpdump,
/// tshark and Wireshark read from a file or a pipe.
public struct PcapWriter {
    /// LINKTYPE_ETHERNET.
    public static let linkTypeEthernet: UInt32 = 1
    public static let magicNanoseconds: UInt32 = 0xA1B2_3C4D
    public static let magicMicroseconds: UInt32 = 0xA1B2_C3D4

    /// The 24-byte file header.
    public static func fileHeader(snapLength: UInt32 = 262_144) -> [UInt8] {
        var h = [UInt8]()
        h.reserveCapacity(24)
        append32(&h, magicNanoseconds)
        append16(&h, 2); append16(&h, 4) // version 2.4
        append32(&h, 0); append32(&h, 0) // thiszone, sigfigs
        append32(&h, snapLength)
        append32(&h, linkTypeEthernet)
        return h
    }

    /// Appends one record header (16 bytes) for a frame captured at
    /// `timestampNanoseconds` (since the epoch).
    public static func appendRecordHeader(
        _ out: inout [UInt8], timestampNanoseconds: UInt64, capturedLength: Int, originalLength: Int
    ) {
        append32(&out, UInt32(truncatingIfNeeded: timestampNanoseconds / 1_000_000_000))
        append32(&out, UInt32(truncatingIfNeeded: timestampNanoseconds % 1_000_000_000))
        append32(&out, UInt32(capturedLength))
        append32(&out, UInt32(originalLength))
    }

    static func append16(_ b: inout [UInt8], _ v: UInt16) {
        b.append(UInt8(v & 0xFF)); b.append(UInt8(v >> 8))
    }

    static func append32(_ b: inout [UInt8], _ v: UInt32) {
        for i in 0..<4 { b.append(UInt8((v >> (8 * UInt32(i))) & 0xFF)) }
    }
}

/// Writes pcapng (draft-ietf-opsawg-pcapng), little-endian: a section
/// header, an interface description per capture interface (Ethernet,
/// nanosecond timestamps, a name and a description) and enhanced packet
/// blocks with the direction in `epb_flags`.
public enum PcapngWriter {
    public static let sectionHeaderType: UInt32 = 0x0A0D_0D0A
    public static let interfaceDescriptionType: UInt32 = 1
    public static let enhancedPacketType: UInt32 = 6
    public static let byteOrderMagic: UInt32 = 0x1A2B_3C4D

    /// The section header block, with the writing application named.
    public static func appendSectionHeader(_ out: inout [UInt8], application: String) {
        block(&out, sectionHeaderType) { b in
            PcapWriter.append32(&b, byteOrderMagic)
            PcapWriter.append16(&b, 1); PcapWriter.append16(&b, 0) // version 1.0
            PcapWriter.append32(&b, 0xFFFF_FFFF); PcapWriter.append32(&b, 0xFFFF_FFFF) // section length unknown
            option(&b, 4, Array(application.utf8)) // shb_userappl
            PcapWriter.append32(&b, 0) // opt_endofopt
        }
    }

    /// One interface description block: Ethernet, if_tsresol 9 (ns).
    public static func appendInterface(_ out: inout [UInt8], name: String, description: String, snapLength: UInt32 = 0) {
        block(&out, interfaceDescriptionType) { b in
            PcapWriter.append16(&b, UInt16(PcapWriter.linkTypeEthernet)); PcapWriter.append16(&b, 0)
            PcapWriter.append32(&b, snapLength)
            option(&b, 2, Array(name.utf8)) // if_name
            option(&b, 3, Array(description.utf8)) // if_description
            option(&b, 9, [9]) // if_tsresol: 10^-9
            PcapWriter.append32(&b, 0)
        }
    }

    /// One enhanced packet block; `direction` sets epb_flags bits 0-1
    /// (01 inbound for ingress, 10 outbound for egress).
    public static func appendPacket(
        _ out: inout [UInt8], interface: UInt32, timestampNanoseconds: UInt64, frame: UnsafeRawBufferPointer,
        originalLength: Int, direction: Direction?
    ) {
        block(&out, enhancedPacketType) { b in
            PcapWriter.append32(&b, interface)
            PcapWriter.append32(&b, UInt32(truncatingIfNeeded: timestampNanoseconds >> 32))
            PcapWriter.append32(&b, UInt32(truncatingIfNeeded: timestampNanoseconds))
            PcapWriter.append32(&b, UInt32(frame.count))
            PcapWriter.append32(&b, UInt32(originalLength))
            b.append(contentsOf: frame)
            pad(&b)
            if let direction {
                PcapWriter.append16(&b, 2); PcapWriter.append16(&b, 4) // epb_flags
                PcapWriter.append32(&b, direction == .ingress ? 1 : 2)
                PcapWriter.append32(&b, 0)
            }
        }
    }

    /// Bytes `appendPacket` writes for a frame of `length` bytes.
    public static func packetBlockLength(_ length: Int, direction: Bool) -> Int {
        12 + 20 + (length + 3) & ~3 + (direction ? 12 : 0)
    }

    /// Type, total length, body, total length again.
    static func block(_ out: inout [UInt8], _ type: UInt32, body: (inout [UInt8]) -> Void) {
        let start = out.count
        PcapWriter.append32(&out, type)
        PcapWriter.append32(&out, 0)
        body(&out)
        let total = UInt32(out.count - start + 4)
        PcapWriter.append32(&out, total)
        for i in 0..<4 { out[start + 4 + i] = UInt8((total >> (8 * UInt32(i))) & 0xFF) }
    }

    static func option(_ b: inout [UInt8], _ code: UInt16, _ value: [UInt8]) {
        PcapWriter.append16(&b, code)
        PcapWriter.append16(&b, UInt16(value.count))
        b.append(contentsOf: value)
        pad(&b)
    }

    static func pad(_ b: inout [UInt8]) {
        while b.count % 4 != 0 { b.append(0) }
    }
}

/// Reads a pcap file (either byte order, micro- or nanosecond stamps).
public struct PcapReader {
    public struct Frame: Equatable, Sendable {
        public var timestampNanoseconds: UInt64
        public var originalLength: Int
        public var bytes: [UInt8]
    }

    public enum Error: Swift.Error, CustomStringConvertible {
        case notPcap, truncated

        public var description: String {
            switch self {
            case .notPcap: "not a pcap file (bad magic)"
            case .truncated: "pcap file ends inside a record"
            }
        }
    }

    public let linkType: UInt32
    public let frames: [Frame]

    public init(bytes: [UInt8]) throws {
        guard bytes.count >= 24 else { throw Error.notPcap }
        func le32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
        }
        let magic = le32(0)
        let swapped: Bool
        let nanos: Bool
        switch magic {
        case PcapWriter.magicMicroseconds: (swapped, nanos) = (false, false)
        case PcapWriter.magicNanoseconds: (swapped, nanos) = (false, true)
        case PcapWriter.magicMicroseconds.byteSwapped: (swapped, nanos) = (true, false)
        case PcapWriter.magicNanoseconds.byteSwapped: (swapped, nanos) = (true, true)
        default: throw Error.notPcap
        }
        func r32(_ o: Int) -> UInt32 { swapped ? le32(o).byteSwapped : le32(o) }
        linkType = r32(20) & 0xFFFF
        var out = [Frame]()
        var o = 24
        while o < bytes.count {
            guard o + 16 <= bytes.count else { throw Error.truncated }
            let sec = UInt64(r32(o)), frac = UInt64(r32(o + 4))
            let cap = Int(r32(o + 8)), orig = Int(r32(o + 12))
            o += 16
            guard o + cap <= bytes.count else { throw Error.truncated }
            out.append(Frame(
                timestampNanoseconds: sec * 1_000_000_000 + (nanos ? frac : frac * 1000),
                originalLength: orig, bytes: Array(bytes[o..<(o + cap)])))
            o += cap
        }
        frames = out
    }
}

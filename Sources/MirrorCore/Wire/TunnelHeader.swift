/// Encapsulations a target can receive.
public enum Encapsulation: String, Sendable, Codable, CaseIterable {
    /// VXLAN, RFC 7348: UDP 4789, 8-byte header, flags 0x08, 24-bit VNI.
    case vxlan
    /// GENEVE, RFC 8926: UDP 6081, version 0, no options, protocol 0x6558.
    case geneve

    /// The IANA port of the encapsulation.
    public var defaultPort: UInt16 {
        switch self {
        case .vxlan: 4789
        case .geneve: 6081
        }
    }
}

/// The 8-byte tunnel headers that precede each mirrored frame.
public enum TunnelHeader {
    /// Bytes of either header (GENEVE without options).
    public static let length = 8
    /// Largest VNI: 24 bits.
    public static let maxVNI: UInt32 = 0xFF_FFFF
    /// GENEVE protocol type for Ethernet frames (Transparent Ethernet Bridging).
    public static let genevePayloadEthernet: UInt16 = 0x6558

    /// Writes the header of `encapsulation` for `vni` into 8 bytes at `out`.
    public static func write(
        _ encapsulation: Encapsulation, vni: UInt32, to out: UnsafeMutableRawBufferPointer
    ) {
        precondition(out.count >= length && vni <= maxVNI)
        switch encapsulation {
        case .vxlan:
            // flags (I bit), 24 reserved bits, VNI, 8 reserved bits
            out[0] = 0x08
            out[1] = 0; out[2] = 0; out[3] = 0
        case .geneve:
            // version 0, option length 0; O and C clear; protocol type
            out[0] = 0
            out[1] = 0
            out[2] = UInt8(genevePayloadEthernet >> 8)
            out[3] = UInt8(genevePayloadEthernet & 0xFF)
        }
        out[4] = UInt8(vni >> 16)
        out[5] = UInt8((vni >> 8) & 0xFF)
        out[6] = UInt8(vni & 0xFF)
        out[7] = 0
    }

    /// The header as an array.
    public static func bytes(_ encapsulation: Encapsulation, vni: UInt32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: length)
        b.withUnsafeMutableBytes { write(encapsulation, vni: vni, to: $0) }
        return b
    }

    /// A decoded tunnel header.
    public struct Decoded: Equatable, Sendable {
        public var encapsulation: Encapsulation
        public var vni: UInt32
        /// Bytes from the start of the UDP payload to the inner frame.
        public var headerLength: Int

        public init(encapsulation: Encapsulation, vni: UInt32, headerLength: Int) {
            self.encapsulation = encapsulation
            self.vni = vni
            self.headerLength = headerLength
        }
    }

    /// Decodes a UDP payload as VXLAN or GENEVE, telling them apart by the
    /// header: GENEVE carries protocol type 0x6558 in bytes 2-3, where VXLAN
    /// has reserved zero bytes.
    public static func decode(_ payload: UnsafeRawBufferPointer) -> Decoded? {
        guard payload.count >= length else { return nil }
        if payload[2] == 0x65 && payload[3] == 0x58 {
            return decode(payload, as: .geneve)
        }
        return decode(payload, as: .vxlan)
    }

    /// Decodes a UDP payload as `encapsulation`; nil when it is not a valid
    /// Ethernet-carrying header of that kind.
    public static func decode(_ payload: UnsafeRawBufferPointer, as encapsulation: Encapsulation) -> Decoded? {
        guard payload.count >= length else { return nil }
        let vni = UInt32(payload[4]) << 16 | UInt32(payload[5]) << 8 | UInt32(payload[6])
        switch encapsulation {
        case .vxlan:
            guard payload[0] & 0x08 != 0 else { return nil }
            return Decoded(encapsulation: .vxlan, vni: vni, headerLength: length)
        case .geneve:
            let version = payload[0] >> 6
            let options = Int(payload[0] & 0x3F) * 4
            let proto = UInt16(payload[2]) << 8 | UInt16(payload[3])
            guard version == 0, proto == genevePayloadEthernet, payload.count >= length + options else { return nil }
            return Decoded(encapsulation: .geneve, vni: vni, headerLength: length + options)
        }
    }
}

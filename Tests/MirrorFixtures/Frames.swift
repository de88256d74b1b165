import MirrorCore

/// Builds Ethernet frames byte by byte for tests: VLAN tags, IPv4 with
/// options and fragments, IPv6 with extension headers, TCP/UDP/ICMP with
/// correct checksums, and deliberately broken variants.
public enum Frames {
    public static let macA: [UInt8] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0A]
    public static let macB: [UInt8] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0B]

    public struct VLAN: Sendable {
        public var tpid: UInt16
        public var tci: UInt16
        public init(tpid: UInt16 = 0x8100, tci: UInt16) {
            self.tpid = tpid
            self.tci = tci
        }
    }

    public static func ethernet(
        dst: [UInt8] = macB, src: [UInt8] = macA, vlans: [VLAN] = [], etherType: UInt16, payload: [UInt8]
    ) -> [UInt8] {
        var f = dst + src
        for v in vlans { f += be16(v.tpid) + be16(v.tci) }
        f += be16(etherType)
        return f + payload
    }

    // MARK: transport

    public enum Transport: Sendable {
        case udp(sport: UInt16, dport: UInt16, payload: [UInt8])
        case tcp(sport: UInt16, dport: UInt16, seq: UInt32, flags: UInt8, payload: [UInt8])
        case icmpEcho(id: UInt16, seq: UInt16, payload: [UInt8])
        case raw(proto: UInt8, bytes: [UInt8])

        public var proto: UInt8 { proto(v6: false) }

        /// ICMP echo is protocol 1 over IPv4 and 58 (ICMPv6) over IPv6.
        public func proto(v6: Bool) -> UInt8 {
            switch self {
            case .udp: 17
            case .tcp: 6
            case .icmpEcho: v6 ? 58 : 1
            case .raw(let p, _): p
            }
        }
    }

    /// The transport header and payload with its checksum computed over
    /// `pseudo` (nil: ICMPv4, no pseudo header).
    static func transportBytes(_ t: Transport, pseudo: InternetChecksum?, v6: Bool) -> [UInt8] {
        var b: [UInt8]
        var checksumAt: Int?
        switch t {
        case let .udp(sport, dport, payload):
            b = be16(sport) + be16(dport) + be16(UInt16(8 + payload.count)) + [0, 0] + payload
            checksumAt = 6
        case let .tcp(sport, dport, seq, flags, payload):
            b = be16(sport) + be16(dport) + be32(seq) + be32(0) + [0x50, flags] + be16(65535) + [0, 0, 0, 0] + payload
            checksumAt = 16
        case let .icmpEcho(id, seq, payload):
            b = [v6 ? 128 : 8, 0, 0, 0] + be16(id) + be16(seq) + payload
            checksumAt = 2
        case .raw(_, let bytes):
            return bytes
        }
        if let at = checksumAt {
            var c = (v6 || t.proto != 1) ? (pseudo ?? InternetChecksum()) : InternetChecksum()
            c.add(b)
            var v = c.value
            if v == 0 && t.proto == 17 { v = 0xFFFF }
            b[at] = UInt8(v >> 8)
            b[at + 1] = UInt8(v & 0xFF)
        }
        return b
    }

    // MARK: IPv4

    public static func ipv4(
        src: [UInt8] = [198, 18, 0, 1], dst: [UInt8] = [198, 18, 0, 2], transport: Transport,
        ttl: UInt8 = 64, id: UInt16 = 1, fragment: UInt16 = 0, options: [UInt8] = [],
        totalLength: Int? = nil, ihl: UInt8? = nil, partialChecksum: Bool = false
    ) -> [UInt8] {
        var l4: [UInt8]
        let pseudoLength = transportLength(transport)
        let pseudo = src.withUnsafeBytes { s in dst.withUnsafeBytes { d in
            PseudoHeader.sumIPv4(source: s, destination: d, protocol: transport.proto, length: pseudoLength)
        } }
        l4 = transportBytes(transport, pseudo: pseudo, v6: false)
        if partialChecksum { l4 = makePartial(l4, transport: transport, pseudo: pseudo) }
        let hlen = 20 + options.count
        var h: [UInt8] = [(4 << 4) | (ihl ?? UInt8(hlen / 4)), 0]
        h += be16(UInt16(totalLength ?? (hlen + l4.count)))
        h += be16(id) + be16(fragment) + [ttl, transport.proto, 0, 0] + src + dst + options
        var c = InternetChecksum()
        c.add(h)
        h[10] = UInt8(c.value >> 8)
        h[11] = UInt8(c.value & 0xFF)
        return h + l4
    }

    // MARK: IPv6

    public struct ExtensionHeader: Sendable {
        public var type: UInt8
        /// Bytes after next-header and length (total must make the header a
        /// multiple of 8, or 4 for AH).
        public var body: [UInt8]
        public init(type: UInt8, body: [UInt8]) {
            self.type = type
            self.body = body
        }

        public static func hopByHop(_ n: Int = 1) -> ExtensionHeader {
            ExtensionHeader(type: 0, body: [UInt8](repeating: 0, count: 8 * n - 2))
        }

        public static func destination(_ n: Int = 1) -> ExtensionHeader {
            ExtensionHeader(type: 60, body: [UInt8](repeating: 0, count: 8 * n - 2))
        }

        /// Offset in 8-byte units; `more` sets M.
        public static func fragment(offset: UInt16, more: Bool, id: UInt32 = 7) -> ExtensionHeader {
            ExtensionHeader(type: 44, body: be16(offset << 3 | (more ? 1 : 0)) + be32(id))
        }
    }

    public static func ipv6(
        src: [UInt8] = ip6(1), dst: [UInt8] = ip6(2), transport: Transport,
        extensions: [ExtensionHeader] = [], payloadLength: Int? = nil, hopLimit: UInt8 = 64,
        partialChecksum: Bool = false
    ) -> [UInt8] {
        let pseudo = src.withUnsafeBytes { s in dst.withUnsafeBytes { d in
            PseudoHeader.sumIPv6(source: s, destination: d, protocol: transport.proto(v6: true), length: transportLength(transport))
        } }
        var l4 = transportBytes(transport, pseudo: pseudo, v6: true)
        if partialChecksum { l4 = makePartial(l4, transport: transport, pseudo: pseudo) }
        var ext = [UInt8]()
        for (i, e) in extensions.enumerated() {
            let next = i + 1 < extensions.count ? extensions[i + 1].type : transport.proto(v6: true)
            let total = 2 + e.body.count
            let lenField: UInt8 = e.type == 51 ? UInt8(total / 4 - 2) : e.type == 44 ? 0 : UInt8(total / 8 - 1)
            ext += [next, lenField] + e.body
        }
        let first = extensions.first?.type ?? transport.proto(v6: true)
        var h: [UInt8] = [0x60, 0, 0, 0]
        h += be16(UInt16(payloadLength ?? (ext.count + l4.count))) + [first, hopLimit] + src + dst
        return h + ext + l4
    }

    /// fd00::N style addresses.
    public static func ip6(_ n: UInt8, prefix: [UInt8] = [0xFD, 0x00]) -> [UInt8] {
        prefix + [UInt8](repeating: 0, count: 14 - prefix.count) + [0, n]
    }

    static func transportLength(_ t: Transport) -> Int {
        switch t {
        case .udp(_, _, let p): 8 + p.count
        case .tcp(_, _, _, _, let p): 20 + p.count
        case .icmpEcho(_, _, let p): 8 + p.count
        case .raw(_, let b): b.count
        }
    }

    /// Replaces a TCP/UDP checksum by the folded pseudo-header sum, as the
    /// kernel leaves it for checksum offload (CHECKSUM_PARTIAL).
    static func makePartial(_ l4: [UInt8], transport: Transport, pseudo: InternetChecksum) -> [UInt8] {
        var b = l4
        let at: Int
        switch transport {
        case .udp: at = 6
        case .tcp: at = 16
        default: return b
        }
        let v = pseudo.folded
        b[at] = UInt8(v >> 8)
        b[at + 1] = UInt8(v & 0xFF)
        return b
    }

    // MARK: whole frames

    public static func udp4(sport: UInt16 = 40000, dport: UInt16 = 53, payload: [UInt8] = Array("hello".utf8),
                            src: [UInt8] = [198, 18, 0, 1], dst: [UInt8] = [198, 18, 0, 2], vlans: [VLAN] = []) -> [UInt8] {
        ethernet(vlans: vlans, etherType: 0x0800, payload: ipv4(src: src, dst: dst, transport: .udp(sport: sport, dport: dport, payload: payload)))
    }

    public static func tcp6(sport: UInt16 = 40000, dport: UInt16 = 443, payload: [UInt8] = [],
                            src: [UInt8] = ip6(1), dst: [UInt8] = ip6(2), vlans: [VLAN] = []) -> [UInt8] {
        ethernet(vlans: vlans, etherType: 0x86DD,
                 payload: ipv6(src: src, dst: dst, transport: .tcp(sport: sport, dport: dport, seq: 1, flags: 0x18, payload: payload)))
    }

    public static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    public static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
}

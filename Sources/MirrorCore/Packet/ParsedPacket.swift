/// What the selection path knows of a frame: the reference twin of
/// `struct tm_pkt` and `tm_parse()` in bpf/lib/parse.h, line for line, so
/// the reference classifier can be checked against the kernel's decisions.
///
/// Semantics (SPEC §3): up to two VLAN tags are looked through; an IPv4 or
/// IPv6 header that cannot be parsed (bad version or IHL, cut short, a total
/// length below the header or beyond the frame) makes the frame `malformed`
/// and matches no rule; IPv6 extension headers are walked (at most
/// `maxExtensionHeaders`) to the transport header; TCP/UDP ports are known
/// only when the whole minimal header (TCP 20, UDP 8 bytes) is inside the IP
/// payload and the packet is not a non-first fragment.
public struct ParsedPacket: Equatable, Sendable {
    public enum Family: UInt8, Sendable { case none = 0, ipv4 = 4, ipv6 = 6 }

    /// Protocol value when the upper protocol was not found.
    public static let protocolUnknown: UInt16 = 256
    /// VLAN tags looked through (802.1Q 0x8100, 802.1ad 0x88A8).
    public static let maxVLANDepth = 2
    /// IPv6 extension headers walked before giving up.
    public static let maxExtensionHeaders = 8

    public var family: Family = .none
    /// IP header parsed and sane: rules can look at it.
    public var isIP = false
    /// IP ethertype but an unusable header.
    public var malformed = false
    public var fragment = false
    public var nonFirstFragment = false
    /// Source and destination ports are valid.
    public var hasPorts = false
    /// TCP/UDP header cut short.
    public var transportTruncated = false
    /// The whole TCP/UDP segment is inside the frame and not a fragment.
    public var transportComplete = false
    /// 16 bytes each, network order; IPv4 in the first four.
    public var source = [UInt8](repeating: 0, count: 16)
    public var destination = [UInt8](repeating: 0, count: 16)
    public var sourceMAC = [UInt8](repeating: 0, count: 6)
    public var destinationMAC = [UInt8](repeating: 0, count: 6)
    public var sourcePort: UInt16 = 0
    public var destinationPort: UInt16 = 0
    /// 0...255, or `protocolUnknown`.
    public var proto: UInt16 = 0
    /// Ethertype after the VLAN tags, host value (0x0800 for IPv4).
    public var etherType: UInt16 = 0
    public var l3Offset = 0
    public var l4Offset = 0
    public var l4End = 0

    public init() {}

    /// Parses `frame`. `tagsInMetadata` counts VLAN tags the kernel carries
    /// outside the bytes (skb metadata at tc): they use up the tag budget.
    public init(frame: UnsafeRawBufferPointer, tagsInMetadata: Int = 0) {
        self.init()
        let len = frame.count
        guard len >= 14 else { return }
        destinationMAC = Array(frame[0..<6])
        sourceMAC = Array(frame[6..<12])
        var proto = be16(frame, 12)
        var off = 14
        var tags = tagsInMetadata
        for _ in 0..<Self.maxVLANDepth {
            guard proto == 0x8100 || proto == 0x88A8 else { break }
            guard tags < Self.maxVLANDepth else { break }
            guard off + 4 <= len else { return }
            proto = be16(frame, off + 2)
            off += 4
            tags += 1
        }
        etherType = proto
        if proto == 0x0800 {
            parseIPv4(frame, off)
        } else if proto == 0x86DD {
            parseIPv6(frame, off)
        }
    }

    public init(frame: [UInt8], tagsInMetadata: Int = 0) {
        self = frame.withUnsafeBytes { ParsedPacket(frame: $0, tagsInMetadata: tagsInMetadata) }
    }

    private mutating func parseIPv4(_ f: UnsafeRawBufferPointer, _ off: Int) {
        let len = f.count
        guard off + 20 <= len, f[off] >> 4 == 4, f[off] & 0x0F >= 5 else {
            malformed = true
            return
        }
        let hlen = Int(f[off] & 0x0F) * 4
        let tot = Int(be16(f, off + 2))
        guard tot >= hlen, off + tot <= len else {
            malformed = true
            return
        }
        family = .ipv4
        isIP = true
        for i in 0..<4 {
            source[i] = f[off + 12 + i]
            destination[i] = f[off + 16 + i]
        }
        proto = UInt16(f[off + 9])
        l3Offset = off
        l4Offset = off + hlen
        l4End = off + tot
        let frag = be16(f, off + 6)
        if frag & 0x3FFF != 0 { fragment = true }
        if frag & 0x1FFF != 0 { nonFirstFragment = true }
        parsePorts(f)
    }

    private mutating func parseIPv6(_ f: UnsafeRawBufferPointer, _ off: Int) {
        let len = f.count
        guard off + 40 <= len, f[off] >> 4 == 6 else {
            malformed = true
            return
        }
        let end = off + 40 + Int(be16(f, off + 4))
        guard end <= len else {
            malformed = true
            return
        }
        family = .ipv6
        isIP = true
        for i in 0..<16 {
            source[i] = f[off + 8 + i]
            destination[i] = f[off + 24 + i]
        }
        l3Offset = off
        l4End = end
        var next = f[off + 6]
        var cur = off + 40
        for _ in 0..<Self.maxExtensionHeaders {
            switch next {
            case 0, 43, 60, 135, 139, 140: // hop-by-hop, routing, destination, mobility, HIP, shim6
                guard cur + 8 <= end else { return unknownTransport() }
                let nh = f[cur], hl = Int(f[cur + 1])
                next = nh
                cur += (hl + 1) * 8
            case 51: // AH
                guard cur + 8 <= end else { return unknownTransport() }
                let nh = f[cur], hl = Int(f[cur + 1])
                next = nh
                cur += (hl + 2) * 4
            case 44: // fragment
                guard cur + 8 <= end else { return unknownTransport() }
                let nh = f[cur]
                let offset = be16(f, cur + 2) & 0xFFF8
                next = nh
                cur += 8
                fragment = true
                if offset != 0 {
                    nonFirstFragment = true
                    proto = UInt16(next)
                    l4Offset = cur
                    return
                }
            default:
                proto = UInt16(next)
                l4Offset = cur
                parsePorts(f)
                return
            }
        }
        unknownTransport()
    }

    private mutating func unknownTransport() {
        proto = Self.protocolUnknown
    }

    private mutating func parsePorts(_ f: UnsafeRawBufferPointer) {
        guard !nonFirstFragment else { return }
        let need: Int
        switch proto {
        case 6: need = 20
        case 17: need = 8
        default: return
        }
        guard l4Offset + need <= l4End else {
            transportTruncated = true
            return
        }
        sourcePort = be16(f, l4Offset)
        destinationPort = be16(f, l4Offset + 2)
        hasPorts = true
        if !fragment { transportComplete = true }
    }
}

@inline(__always)
func be16(_ b: UnsafeRawBufferPointer, _ off: Int) -> UInt16 {
    UInt16(b[off]) << 8 | UInt16(b[off + 1])
}

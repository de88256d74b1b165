import MirrorCore

/// A small seeded generator, so a failing case can be replayed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random frames covering what the select path must handle: both
/// families, all protocols, VLAN and QinQ (and one tag too many), IPv4
/// options and fragments, IPv6 extension chains (some too long or cut
/// short), truncated transports and malformed IP headers. Addresses and
/// ports come from small pools, with edges, so generated rules match often.
public enum FrameGenerator {
    public static let v4Pool: [[UInt8]] = [
        [198, 18, 0, 1], [198, 18, 0, 2], [198, 18, 1, 10], [198, 18, 1, 200], [198, 19, 255, 255],
        [10, 1, 2, 3], [0, 0, 0, 0], [255, 255, 255, 255], [198, 18, 128, 7],
    ]
    public static let v6Pool: [[UInt8]] = [
        Frames.ip6(1), Frames.ip6(2), Frames.ip6(3, prefix: [0xFD, 0x00, 0, 1]), Frames.ip6(9, prefix: [0xFD, 0xFF]),
        [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1], [UInt8](repeating: 0, count: 16),
        [UInt8](repeating: 0xFF, count: 16),
    ]
    public static let portPool: [UInt16] = [0, 1, 22, 53, 80, 443, 1023, 1024, 4789, 8080, 32767, 49152, 65534, 65535]

    public static func port<R: RandomNumberGenerator>(_ rng: inout R) -> UInt16 {
        Bool.random(using: &rng) ? portPool.randomElement(using: &rng)! : UInt16.random(in: 0...65535, using: &rng)
    }

    static func transport<R: RandomNumberGenerator>(_ rng: inout R, v6: Bool) -> Frames.Transport {
        let payload = [UInt8](repeating: UInt8.random(in: 0...255, using: &rng), count: Int.random(in: 0...64, using: &rng))
        switch Int.random(in: 0..<10, using: &rng) {
        case 0..<4: return .tcp(sport: port(&rng), dport: port(&rng), seq: UInt32.random(in: 0...UInt32.max, using: &rng), flags: 0x18, payload: payload)
        case 4..<8: return .udp(sport: port(&rng), dport: port(&rng), payload: payload)
        case 8: return .icmpEcho(id: 1, seq: 2, payload: payload)
        default:
            let protos: [UInt8] = [47, 50, 132, 89, 0, 255, 6, 17, 59]
            let p = protos.randomElement(using: &rng)!
            // Sometimes a "TCP/UDP" whose header is cut short.
            return .raw(proto: p, bytes: [UInt8](repeating: 7, count: Int.random(in: 0...12, using: &rng)))
        }
    }

    /// `f` with one to four mutations of the kinds that break parsers:
    /// header bytes flipped or set to edge values (versions, IHL, next
    /// headers, lengths), the frame cut short or given trailing bytes, the
    /// IP length fields lying. At least the 14 bytes of an Ethernet header
    /// stay (what BPF_PROG_TEST_RUN takes).
    public static func mutate<R: RandomNumberGenerator>(_ frame: [UInt8], _ rng: inout R) -> [UInt8] {
        var f = frame
        let edges: [UInt8] = [0, 0xFF, 0x7F, 0x80, 0x45, 0x4F, 0x46, 0x60, 0x06, 0x11, 0x2C, 0x3A, 0x00, 0x3B, 0x33]
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            let headers = min(f.count, 96)
            switch Int.random(in: 0..<7, using: &rng) {
            case 0:
                f[Int.random(in: 12..<headers, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
            case 1:
                f[Int.random(in: 12..<headers, using: &rng)] = edges.randomElement(using: &rng)!
            case 2:
                if f.count > 14 { f.removeLast(Int.random(in: 1...(f.count - 14), using: &rng)) }
            case 3:
                f += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 4:
                // An IPv4 total length or IPv6 payload length that lies.
                if f.count >= 20 {
                    let at = Bool.random(using: &rng) ? 16 : 18
                    f[at] = UInt8.random(in: 0...255, using: &rng)
                    f[at + 1] = UInt8.random(in: 0...255, using: &rng)
                }
            case 5:
                f[Int.random(in: 0..<f.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            default:
                // The EtherType (or a tag's) replaced by one the parser follows.
                f[12] = [0x08, 0x86, 0x81, 0x88].randomElement(using: &rng)!
                f[13] = [0x00, 0xDD, 0x00, 0xA8].randomElement(using: &rng)!
            }
        }
        return f
    }

    public static func frame<R: RandomNumberGenerator>(_ rng: inout R) -> [UInt8] {
        var vlans = [Frames.VLAN]()
        switch Int.random(in: 0..<10, using: &rng) {
        case 0..<6: break
        case 6..<8: vlans = [Frames.VLAN(tci: UInt16.random(in: 1...4094, using: &rng))]
        case 8: vlans = [Frames.VLAN(tpid: 0x88A8, tci: 100), Frames.VLAN(tci: 200)]
        default: vlans = [Frames.VLAN(tpid: 0x88A8, tci: 1), Frames.VLAN(tci: 2), Frames.VLAN(tci: 3)]
        }
        let kind = Int.random(in: 0..<20, using: &rng)
        if kind == 0 {
            return Frames.ethernet(vlans: vlans, etherType: 0x0806, payload: [UInt8](repeating: 0, count: 28))
        }
        let v6 = kind % 2 == 0
        let t = transport(&rng, v6: v6)
        var ip: [UInt8]
        if v6 {
            var ext = [Frames.ExtensionHeader]()
            if Int.random(in: 0..<3, using: &rng) == 0 {
                for _ in 0..<Int.random(in: 1...10, using: &rng) {
                    switch Int.random(in: 0..<4, using: &rng) {
                    case 0: ext.append(.hopByHop(Int.random(in: 1...3, using: &rng)))
                    case 1: ext.append(.destination())
                    case 2: ext.append(Frames.ExtensionHeader(type: 51, body: [UInt8](repeating: 0, count: 10)))
                    default: ext.append(.fragment(offset: Bool.random(using: &rng) ? 0 : UInt16.random(in: 1...100, using: &rng), more: Bool.random(using: &rng)))
                    }
                }
            }
            ip = Frames.ipv6(src: v6Pool.randomElement(using: &rng)!, dst: v6Pool.randomElement(using: &rng)!, transport: t, extensions: ext)
        } else {
            let frag: UInt16 = switch Int.random(in: 0..<8, using: &rng) {
            case 0: 0x2000
            case 1: UInt16.random(in: 1...0x1FFF, using: &rng)
            default: 0x4000
            }
            ip = Frames.ipv4(src: v4Pool.randomElement(using: &rng)!, dst: v4Pool.randomElement(using: &rng)!, transport: t,
                             fragment: frag, options: Int.random(in: 0..<6, using: &rng) == 0 ? [1, 1, 1, 1] : [])
        }
        // Break some: cut the frame, or lie about lengths.
        switch Int.random(in: 0..<25, using: &rng) {
        case 0: ip = Array(ip.prefix(Int.random(in: 0..<ip.count, using: &rng)))
        case 1 where !v6: ip[0] = 0x43 // IHL 3
        case 2 where !v6: ip[2] = 0xFF
        case 3 where v6: ip[4] = 0xFF
        case 4: ip += [UInt8](repeating: 0, count: Int.random(in: 1...20, using: &rng)) // padding
        default: break
        }
        return Frames.ethernet(vlans: vlans, etherType: v6 ? 0x86DD : 0x0800, payload: ip)
    }
}

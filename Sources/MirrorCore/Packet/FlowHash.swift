/// The symmetric flow hash of SPEC §4.3, the Swift twin of `tm_flow_hash()`
/// in bpf/lib/hash.h (the kernel computes it; this one is the reference the
/// tests hold it to, and what `receive` and the tests use to predict ports).
///
/// Endpoints are put in canonical order (smaller address first, as four
/// 32-bit words read in little-endian host order from network-order bytes;
/// ports follow their address) and mixed with MurmurHash3's x86_32 steps.
/// Fragments hash without ports, non-IP frames hash their MAC pair.
public enum FlowHash {
    public static let seed: UInt32 = 0x746D_6972
    /// Outer UDP source ports are 49152 + (hash mod 16384).
    public static let sourcePortBase: UInt16 = 49152
    public static let sourcePortCount: UInt32 = 16384

    /// The outer UDP source port for a flow hash.
    @inline(__always)
    public static func sourcePort(for hash: UInt32) -> UInt16 {
        sourcePortBase &+ UInt16(truncatingIfNeeded: hash % sourcePortCount)
    }

    public static func hash(_ p: ParsedPacket) -> UInt32 {
        var h = seed
        guard p.isIP else {
            let a = words(p.sourceMAC), b = words(p.destinationMAC)
            let (lo, hi) = compare(a, b) <= 0 ? (a, b) : (b, a)
            h = mix(h, lo[0]); h = mix(h, lo[1])
            h = mix(h, hi[0]); h = mix(h, hi[1])
            h = mix(h, UInt32(p.etherType.byteSwapped)) // network-order u16 as stored
            return fmix(h ^ 20)
        }
        let s = words(p.source), d = words(p.destination)
        var c = compare(s, d)
        if c == 0 && p.hasPorts && p.sourcePort > p.destinationPort { c = 1 }
        let (lo, hi) = c <= 0 ? (s, d) : (d, s)
        var plo: UInt16 = 0, phi: UInt16 = 0
        if p.hasPorts && !p.fragment {
            plo = c <= 0 ? p.sourcePort : p.destinationPort
            phi = c <= 0 ? p.destinationPort : p.sourcePort
        }
        for w in lo { h = mix(h, w) }
        for w in hi { h = mix(h, w) }
        h = mix(h, UInt32(plo) << 16 | UInt32(phi))
        h = mix(h, UInt32(p.proto))
        return fmix(h ^ 40)
    }

    /// Four little-endian words of up to 16 bytes, zero-padded.
    static func words(_ bytes: [UInt8]) -> [UInt32] {
        var out = [UInt32](repeating: 0, count: 4)
        for (i, b) in bytes.prefix(16).enumerated() {
            out[i / 4] |= UInt32(b) << (8 * UInt32(i % 4))
        }
        return out
    }

    static func compare(_ a: [UInt32], _ b: [UInt32]) -> Int {
        for i in 0..<4 {
            if a[i] < b[i] { return -1 }
            if a[i] > b[i] { return 1 }
        }
        return 0
    }

    @inline(__always)
    static func rotl(_ x: UInt32, _ r: UInt32) -> UInt32 { (x << r) | (x >> (32 - r)) }

    @inline(__always)
    static func mix(_ h: UInt32, _ k: UInt32) -> UInt32 {
        var k = k &* 0xCC9E_2D51
        k = rotl(k, 15)
        k = k &* 0x1B87_3593
        var h = h ^ k
        h = rotl(h, 13)
        return h &* 5 &+ 0xE654_6B64
    }

    @inline(__always)
    static func fmix(_ h: UInt32) -> UInt32 {
        var h = h
        h ^= h >> 16
        h = h &* 0x85EB_CA6B
        h ^= h >> 13
        h = h &* 0xC2B2_AE35
        h ^= h >> 16
        return h
    }
}

import MirrorCore
import MirrorFixtures
import Testing

/// The forwarder's mask arithmetic against a checksum verifier written
/// here (RFC 1071 over the pseudo header and the segment, word by word).
@Suite("Payload masks")
struct PayloadMaskTests {
    static func onesSum(_ b: [UInt8]) -> UInt32 {
        var s: UInt32 = 0
        var i = 0
        while i + 1 < b.count {
            s += UInt32(b[i]) << 8 | UInt32(b[i + 1])
            i += 2
        }
        if i < b.count { s += UInt32(b[i]) << 8 }
        while s > 0xFFFF { s = (s & 0xFFFF) + (s >> 16) }
        return s
    }

    /// Whether the transport checksum of an Ethernet frame (IPv4, or IPv6
    /// without extension headers) verifies.
    static func verifies(_ f: [UInt8]) -> Bool {
        let ip = 14
        if f[ip] >> 4 == 4 {
            let proto = f[ip + 9], seg = Array(f[(ip + Int(f[ip] & 0xF) * 4)...])
            let pseudo = proto == 1 ? [] : Array(f[(ip + 12)..<(ip + 20)]) + [0, proto, UInt8(seg.count >> 8), UInt8(seg.count & 0xFF)]
            return onesSum(pseudo + seg) == 0xFFFF
        }
        let seg = Array(f[(ip + 40)...])
        let pseudo = Array(f[(ip + 8)..<(ip + 40)]) + [0, 0, UInt8(seg.count >> 8), UInt8(seg.count & 0xFF), 0, 0, 0, f[ip + 6]]
        return onesSum(pseudo + seg) == 0xFFFF
    }

    /// The copy the forwarder sends for `mask`: the pattern over the range,
    /// the checksum adjusted; nil when nothing is masked.
    static func masked(_ f: [UInt8], l4: Int, proto: UInt8, _ mask: Mask) -> [UInt8]? {
        f.withUnsafeBytes { raw -> [UInt8]? in
            guard let end = PayloadMask.layerEnd(mask.after, frame: raw, l3Offset: 14, l4Offset: l4, l4Protocol: proto),
                  let r = PayloadMask.range(mask, layerEnd: end, length: f.count),
                  let field = PayloadMask.checksumField(l4Offset: l4, l4Protocol: proto) else { return nil }
            var out = f
            for i in r { out[i] = mask.pattern }
            let current = UInt16(f[field]) << 8 | UInt16(f[field + 1])
            if let (o, v) = PayloadMask.adjustedChecksum(frame: raw, l3Offset: 14, l4Offset: l4, l4Protocol: proto, range: r,
                                                         pattern: mask.pattern, current: current) {
                out[o] = UInt8(v >> 8)
                out[o + 1] = UInt8(v & 0xFF)
            }
            return out
        }
    }

    /// Odd: a mask that runs to the end of a segment ends on a lone byte.
    static let payload = (0..<201).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }

    /// (name, frame, l4 offset, protocol)
    static let frames: [(String, [UInt8], Int, UInt8)] = [
        ("UDP/IPv4", Frames.udp4(payload: payload), 34, 17),
        ("TCP/IPv4", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(
            transport: .tcp(sport: 1, dport: 2, seq: 9, flags: 0x18, payload: payload))), 34, 6),
        ("ICMP", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .icmpEcho(id: 7, seq: 1, payload: payload))), 34, 1),
        ("TCP/IPv6", Frames.tcp6(payload: payload), 54, 6),
        ("ICMPv6", Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .icmpEcho(id: 7, seq: 1, payload: payload))), 54, 58),
    ]

    @Test("masked copies verify, at even and odd offsets, short and past the end; only the masked bytes and the checksum change",
          arguments: [(0, 16), (1, 16), (3, 7), (5, 1), (190, 50), (191, 50)], [UInt8(0x00), 0xFF, 0x5A])
    func checksumsVerify(_ at: (Int, Int), _ pattern: UInt8) throws {
        for (name, frame, l4, proto) in Self.frames {
            #expect(Self.verifies(frame), "\(name): the original verifies")
            let m = Mask(after: .l4, offset: at.0, bytes: at.1, pattern: pattern)
            let copy = try #require(Self.masked(frame, l4: l4, proto: proto, m), "\(name): masked")
            let header = proto == 6 ? 20 : 8, start = l4 + header + at.0, end = min(start + at.1, frame.count)
            let field = proto == 6 ? l4 + 16 : proto == 17 ? l4 + 6 : l4 + 2
            #expect(copy[start..<end].allSatisfy { $0 == pattern }, "\(name): the pattern over \(start)..<\(end)")
            let changed = (0..<frame.count).filter { copy[$0] != frame[$0] && !(start..<end).contains($0) }
            #expect(changed.allSatisfy { $0 == field || $0 == field + 1 }, "\(name): other bytes changed: \(changed)")
            #expect(Self.verifies(copy), "\(name) mask \(at) pattern \(pattern): the copy's checksum verifies")
        }
    }

    @Test("a mask over the checksum field leaves the pattern there; UDP/IPv4 without a checksum stays without; l3 masks the transport header")
    func edges() throws {
        // Over the UDP checksum: l3, offset 6, two bytes.
        let udp = Frames.udp4(payload: Self.payload)
        let over = try #require(Self.masked(udp, l4: 34, proto: 17, Mask(after: .l3, offset: 6, bytes: 2, pattern: 0xEE)))
        #expect(over[40] == 0xEE && over[41] == 0xEE && Array(over[42...]) == Array(udp[42...]))
        // A zero UDP/IPv4 checksum means none (RFC 768): it stays zero.
        var none = udp
        none[40] = 0
        none[41] = 0
        let masked = try #require(Self.masked(none, l4: 34, proto: 17, Mask(after: .l4, offset: 0, bytes: 8, pattern: 0xAB)))
        #expect(masked[40] == 0 && masked[41] == 0 && masked[42..<50].allSatisfy { $0 == 0xAB })
        // After l3, the ports are masked and the checksum still verifies.
        let tcp = Self.frames[1].1
        let ports = try #require(Self.masked(tcp, l4: 34, proto: 6, Mask(after: .l3, offset: 0, bytes: 4, pattern: 0x11)))
        #expect(ports[34..<38].allSatisfy { $0 == 0x11 } && Self.verifies(ports))
        // Past what the copy holds: nothing to mask.
        #expect(Self.masked(udp, l4: 34, proto: 17, Mask(after: .l4, offset: 500, bytes: 4, pattern: 1)) == nil)
    }
}

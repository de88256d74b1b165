import MirrorCore
import MirrorFixtures
import Testing

@Suite("Tunnel headers")
struct TunnelHeaderTests {
    @Test("VXLAN: flags 0x08, reserved zero, 24-bit VNI (RFC 7348)")
    func vxlan() {
        #expect(TunnelHeader.bytes(.vxlan, vni: 42) == [0x08, 0, 0, 0, 0, 0, 42, 0])
        #expect(TunnelHeader.bytes(.vxlan, vni: 0xABCDEF) == [0x08, 0, 0, 0, 0xAB, 0xCD, 0xEF, 0])
        #expect(TunnelHeader.bytes(.vxlan, vni: 0) == [0x08, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test("GENEVE: version 0, no options, protocol 0x6558 (RFC 8926)")
    func geneve() {
        #expect(TunnelHeader.bytes(.geneve, vni: 0x123456) == [0, 0, 0x65, 0x58, 0x12, 0x34, 0x56, 0])
    }

    @Test("decode inverts write and rejects what is not ours")
    func decode() {
        for enc in [Encapsulation.vxlan, .geneve] {
            for vni: UInt32 in [0, 1, 4096, TunnelHeader.maxVNI] {
                let b = TunnelHeader.bytes(enc, vni: vni)
                let d = b.withUnsafeBytes { DecodedTunnel.udp($0, as: enc) }
                #expect(d == .init(encapsulation: enc, id: vni, headerLength: 8))
            }
        }
        let noI: [UInt8] = [0, 0, 0, 0, 0, 0, 1, 0]
        #expect(noI.withUnsafeBytes { DecodedTunnel.udp($0, as: .vxlan) } == nil)
        let ipPayload: [UInt8] = [0, 0, 0x08, 0x00, 0, 0, 1, 0]
        #expect(ipPayload.withUnsafeBytes { DecodedTunnel.udp($0, as: .geneve) } == nil)
        let short: [UInt8] = [0x08, 0, 0]
        #expect(short.withUnsafeBytes { DecodedTunnel.udp($0, as: .vxlan) } == nil)
    }
}

/// Per-packet tunnel headers against bytes from an independent encoder:
/// scapy 2.6.1 (scapy.contrib.erspan, scapy.contrib.geneve), e.g.
/// `GRE(seqnum_present=1, proto=0x88be, seqence_number=0x01020304)/
/// ERSPAN_II(vlan=100, cos=5, en=3, t=1, session_id=341, index=0x12345)`.
@Suite("Tunnel headers")
struct TunnelTests {
    static let seconds: UInt64 = 1_764_806_400
    static let nanos: UInt64 = 123_456_789

    @Test("ERSPAN Type II: GRE with sequence, VLAN, CoS, En, T, session ID, index")
    func erspan2() {
        var f = Tunnel.Fields()
        f.sequence = 0x0102_0304
        f.vlan = 100
        f.cos = 5
        f.truncated = true
        f.sessionID = 341
        f.ifindex = 0x12345
        let t = Tunnel(.erspan2)
        #expect(t.headerLength == 16 && t.outerProtocol == .gre && t.perPacket)
        let b = t.bytes(f)
        #expect(b == [0x10, 0x00, 0x88, 0xbe, 0x01, 0x02, 0x03, 0x04, 0x10, 0x64, 0xbd, 0x55, 0x00, 0x01, 0x23, 0x45])
        let d = b.withUnsafeBytes { DecodedTunnel.gre($0) }
        #expect(d?.encapsulation == .erspan2 && d?.id == 341 && d?.sequence == 0x0102_0304 && d?.truncated == true
                && d?.ifindex == 0x12345 && d?.headerLength == 16 && d?.timestamp == nil)
    }

    @Test("ERSPAN Type III: 1588 time in the header and platform 3 subheader, direction, hardware ID")
    func erspan3() {
        var f = Tunnel.Fields()
        f.sequence = 7
        f.cos = 2
        f.sessionID = 1023
        f.timestamp = Self.seconds * 1_000_000_000 + Self.nanos
        f.egress = true
        f.ifindex = 4242
        let t = Tunnel(.erspan3, hardwareID: 0x2A)
        #expect(t.headerLength == 28)
        let b = t.bytes(f)
        // ERSPAN_III(cos=2, session_id=1023, timestamp=123456789, p=1, hw=0x2a, d=1, gra=2, o=1)
        // /ERSPAN_PlatformSpecific(platf_id=3, info1=4242, info2=1764806400)
        #expect(b == [0x10, 0x00, 0x22, 0xeb, 0x00, 0x00, 0x00, 0x07, 0x20, 0x00, 0x43, 0xff, 0x07, 0x5b, 0xcd, 0x15,
                      0x00, 0x00, 0x82, 0xad, 0x0c, 0x00, 0x10, 0x92, 0x69, 0x30, 0xcf, 0x00])
        let d = b.withUnsafeBytes { DecodedTunnel.gre($0) }
        #expect(d?.encapsulation == .erspan3 && d?.id == 1023 && d?.sequence == 7 && d?.direction == .egress
                && d?.ifindex == 4242 && d?.timestamp == f.timestamp && d?.truncated == false && d?.headerLength == 28)
    }

    @Test("GENEVE origin option: class 0xFFF0 type 1, time, ifindex, host ID, flags")
    func geneveOrigin() {
        var f = Tunnel.Fields()
        f.vni = 0x123456
        f.timestamp = Self.seconds * 1_000_000_000 + Self.nanos
        f.ifindex = 4242
        f.egress = true
        f.truncated = true
        let t = Tunnel(.geneve, origin: .init(hostID: 0xDEAD_BEEF))
        #expect(t.headerLength == 32 && t.outerProtocol == .udp && t.perPacket && !Tunnel(.geneve).perPacket)
        let b = t.bytes(f)
        // GENEVE(vni=0x123456, proto=0x6558, options=[GeneveOptions(classid=0xfff0, type=1, length=5,
        //        data=struct.pack(">QIII", ns, 4242, 0xdeadbeef, 3))])
        #expect(b == [0x06, 0x00, 0x65, 0x58, 0x12, 0x34, 0x56, 0x00, 0xff, 0xf0, 0x01, 0x05, 0x18, 0x7d, 0xda, 0x12,
                      0x10, 0xb1, 0xcd, 0x15, 0x00, 0x00, 0x10, 0x92, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x00, 0x03])
        let d = b.withUnsafeBytes { DecodedTunnel.udp($0) }
        #expect(d?.encapsulation == .geneve && d?.id == 0x123456 && d?.headerLength == 32 && d?.timestamp == f.timestamp
                && d?.ifindex == 4242 && d?.hostID == 0xDEAD_BEEF && d?.direction == .egress && d?.truncated == true)
        // The per-packet writer gives the ring's header for the plain kinds.
        var plain = Tunnel.Fields()
        plain.vni = 77
        #expect(Tunnel(.vxlan).bytes(plain) == TunnelHeader.bytes(.vxlan, vni: 77))
    }

    @Test("GRE outer headers: IP protocol 47, no UDP, lengths and checksum")
    func greOuter() {
        let h = OuterHeader(source: [198, 18, 0, 1], destination: [198, 18, 1, 2], destinationPort: 0, tunnel: Tunnel(.erspan3))
        #expect(h.length == 20 && h.overhead == 48)
        // IP(src="198.18.0.1", dst="198.18.1.2", proto=47, flags="DF", id=0x1234, ttl=64, len=120)
        #expect(h.bytes(sourcePort: 0, payloadLength: 100, identification: 0x1234)
                == [0x45, 0x00, 0x00, 0x78, 0x12, 0x34, 0x40, 0x00, 0x40, 0x2f, 0x9a, 0xfb, 0xc6, 0x12, 0x00, 0x01, 0xc6, 0x12, 0x01, 0x02])
        let src: [UInt8] = [0xfd] + [UInt8](repeating: 0, count: 14) + [1]
        let dst: [UInt8] = [0xfd] + [UInt8](repeating: 0, count: 14) + [2]
        let h6 = OuterHeader(source: src, destination: dst, destinationPort: 0, tunnel: Tunnel(.erspan2))
        #expect(h6.length == 40 && h6.overhead == 56)
        // IPv6(src="fd00::1", dst="fd00::2", nh=47, hlim=64, plen=100)
        #expect(h6.bytes(sourcePort: 0, payloadLength: 100, identification: 0)
                == [0x60, 0, 0, 0, 0x00, 0x64, 0x2f, 0x40] + src + dst)
    }

    @Test("decoders reject what is short, of another version or another protocol")
    func rejects() {
        var f = Tunnel.Fields()
        f.timestamp = 1
        let three = Tunnel(.erspan3).bytes(f)
        for n in 0..<three.count {
            #expect(Array(three[0..<n]).withUnsafeBytes { DecodedTunnel.gre($0) } == nil)
        }
        var wrongVersion = three
        wrongVersion[8] = 0x10 // version 1 under protocol 0x22EB
        #expect(wrongVersion.withUnsafeBytes { DecodedTunnel.gre($0) } == nil)
        var ipInGRE = three
        ipInGRE[2] = 0x08; ipInGRE[3] = 0x00
        #expect(ipInGRE.withUnsafeBytes { DecodedTunnel.gre($0) } == nil)
        // A GENEVE option that claims more than the header holds is not read.
        var g = Tunnel(.geneve, origin: .init(hostID: 1)).bytes(f)
        g[11] = 0x1F
        let d = g.withUnsafeBytes { DecodedTunnel.udp($0) }
        #expect(d?.timestamp == nil && d?.headerLength == 32)
    }
}

@Suite("pcapng")
struct PcapngTests {
    @Test("an enhanced packet block: interface, 64-bit ns time, lengths, padding, epb_flags")
    func packet() {
        var out = [UInt8]()
        let frame: [UInt8] = [1, 2, 3, 4, 5]
        frame.withUnsafeBytes {
            PcapngWriter.appendPacket(&out, interface: 2, timestampNanoseconds: 0x0000_0001_0000_0002, frame: $0,
                                      originalLength: 9, direction: .egress)
        }
        let expected: [UInt8] = [
            6, 0, 0, 0, 52, 0, 0, 0, // type 6, total length 52
            2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, // interface 2, time high 1, low 2
            5, 0, 0, 0, 9, 0, 0, 0, // captured 5, original 9
            1, 2, 3, 4, 5, 0, 0, 0, // data, padded
            2, 0, 4, 0, 2, 0, 0, 0, // epb_flags: outbound
            0, 0, 0, 0, // end of options
            52, 0, 0, 0,
        ]
        #expect(out == expected)
        #expect(PcapngWriter.packetBlockLength(5, direction: true) == 52)
    }
}

@Suite("Checksums")
struct ChecksumTests {
    @Test("RFC 1071 example sums to 0xddf2")
    func rfc1071() {
        var c = InternetChecksum()
        c.add([0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7])
        #expect(c.folded == 0xDDF2)
    }

    @Test("summing in odd-sized pieces equals summing at once")
    func pieces() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let n = Int.random(in: 0...300, using: &rng)
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var whole = InternetChecksum()
            whole.add(bytes)
            var parts = InternetChecksum()
            var i = 0
            while i < n {
                let k = min(n - i, Int.random(in: 1...17, using: &rng))
                parts.add(Array(bytes[i..<(i + k)]))
                i += k
            }
            #expect(whole.folded == parts.folded)
        }
    }

    @Test("an unfinished offload checksum is completed, a finished or wrong one left alone")
    func partialCompletion() throws {
        let payload = Array("partial checksum payload!".utf8) // odd length
        let cases: [(String, Bool, (Bool) -> [UInt8])] = [
            ("udp4", false, { p in Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .udp(sport: 1000, dport: 2000, payload: payload), partialChecksum: p)) }),
            ("tcp4", false, { p in Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .tcp(sport: 1000, dport: 80, seq: 9, flags: 0x10, payload: payload), partialChecksum: p)) }),
            ("udp6", true, { p in Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .udp(sport: 1000, dport: 2000, payload: payload), partialChecksum: p)) }),
            ("tcp6", true, { p in Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .tcp(sport: 1000, dport: 80, seq: 9, flags: 0x10, payload: payload), extensions: [.hopByHop()], partialChecksum: p)) }),
        ]
        for (name, _, make) in cases {
            let good = make(false), partial = make(true)
            let p = ParsedPacket(frame: partial)
            #expect(p.transportComplete, "\(name) parses as a complete segment")
            let fix = partial.withUnsafeBytes {
                PartialChecksum.completion(frame: $0, l3Offset: p.l3Offset, l4Offset: p.l4Offset, l4Protocol: UInt8(p.proto))
            }
            let f = try #require(fix, "\(name): unfinished checksum detected")
            var fixed = partial
            fixed[f.offset] = UInt8(f.value >> 8)
            fixed[f.offset + 1] = UInt8(f.value & 0xFF)
            #expect(fixed == good, "\(name): completed copy equals the finished frame")
            let none = good.withUnsafeBytes {
                PartialChecksum.completion(frame: $0, l3Offset: p.l3Offset, l4Offset: p.l4Offset, l4Protocol: UInt8(p.proto))
            }
            #expect(none == nil, "\(name): a finished checksum is left alone")
            var wrong = good
            wrong[f.offset] ^= 0x5A
            let w = wrong.withUnsafeBytes {
                PartialChecksum.completion(frame: $0, l3Offset: p.l3Offset, l4Offset: p.l4Offset, l4Protocol: UInt8(p.proto))
            }
            #expect(w == nil, "\(name): a wrong checksum is mirrored as it is")
        }
    }
}

@Suite("Outer headers")
struct OuterHeaderTests {
    @Test("IPv4: valid header checksum, DF, lengths, zero UDP checksum, source port")
    func ipv4() {
        let h = OuterHeader(source: [198, 18, 1, 1], destination: [198, 18, 1, 2], destinationPort: 4789)
        #expect(h.length == 28 && h.overhead == 36)
        #expect(h.innerLimit(mtu: 1500) == 1464)
        let b = h.bytes(sourcePort: 50000, payloadLength: 100, identification: 0x1234)
        var c = InternetChecksum()
        c.add(Array(b[0..<20]))
        #expect(c.folded == 0xFFFF, "IPv4 header checksum verifies")
        #expect(b[0] == 0x45 && b[6] == 0x40 && b[9] == 17)
        #expect(Int(b[2]) << 8 | Int(b[3]) == 128)
        #expect(Array(b[20..<28]) == [0xC3, 0x50, 0x12, 0xB5, 0, 108, 0, 0])
    }

    @Test("partial: the UDP field holds the folded pseudo-header sum the kernel finishes (hand-computed)")
    func partial() {
        let h = OuterHeader(source: [198, 18, 0, 1], destination: [198, 18, 1, 2], destinationPort: 4789)
        var b = [UInt8](repeating: 0, count: 28)
        b.withUnsafeMutableBytes { raw in
            h.writeTemplate(to: raw.baseAddress!)
            OuterHeader.finish(raw.baseAddress!, h.constants, sourcePort: 50000, payloadLength: 100, identification: 7, partial: true)
        }
        // c612 + 0001 + c612 + 0102 + 0011 (UDP) + 006c (length 108), folded.
        #expect(Array(b[24..<28]) == [0, 108, 0x8D, 0xA5])
        var c = InternetChecksum()
        c.add(Array(b[0..<20]))
        #expect(c.folded == 0xFFFF, "the IPv4 header checksum is complete")
    }

    @Test("IPv6: UDP checksum verifies over pseudo header and payload")
    func ipv6() {
        let src = Frames.ip6(1), dst = Frames.ip6(2)
        let h = OuterHeader(source: src, destination: dst, destinationPort: 6081)
        #expect(h.length == 48 && h.innerLimit(mtu: 1500) == 1444)
        for n in [0, 1, 7, 8, 61, 1400] {
            let payload = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            var sum = InternetChecksum()
            sum.add(payload)
            let b = h.bytes(sourcePort: 65535, payloadLength: n, identification: 0, payloadSum: sum.sum)
            var v = src.withUnsafeBytes { s in dst.withUnsafeBytes { d in
                PseudoHeader.sumIPv6(source: s, destination: d, protocol: 17, length: 8 + n)
            } }
            v.add(Array(b[40..<48]))
            v.add(payload)
            #expect(v.folded == 0xFFFF, "UDP checksum verifies for \(n) bytes")
            #expect(Int(b[4]) << 8 | Int(b[5]) == 8 + n)
        }
    }
}

@Suite("Flow hash")
struct FlowHashTests {
    @Test("both directions of a flow hash alike; ports stay in 49152...65535")
    func symmetric() {
        var rng = SystemRandomNumberGenerator()
        for i in 0..<2000 {
            let v6 = i % 2 == 0
            let a: [UInt8] = v6 ? (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) } : (0..<4).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let b: [UInt8] = i % 7 == 0 ? a : (v6 ? (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) } : (0..<4).map { _ in UInt8.random(in: 0...255, using: &rng) })
            let sp = UInt16.random(in: 0...65535, using: &rng), dp = UInt16.random(in: 0...65535, using: &rng)
            let t: Frames.Transport = i % 3 == 0 ? .udp(sport: sp, dport: dp, payload: []) : .tcp(sport: sp, dport: dp, seq: 1, flags: 2, payload: [])
            let fwd: [UInt8], rev: [UInt8]
            let tr: Frames.Transport = i % 3 == 0 ? .udp(sport: dp, dport: sp, payload: []) : .tcp(sport: dp, dport: sp, seq: 9, flags: 0x12, payload: [])
            if v6 {
                fwd = Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(src: a, dst: b, transport: t))
                rev = Frames.ethernet(dst: Frames.macA, src: Frames.macB, etherType: 0x86DD, payload: Frames.ipv6(src: b, dst: a, transport: tr))
            } else {
                fwd = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(src: a, dst: b, transport: t))
                rev = Frames.ethernet(dst: Frames.macA, src: Frames.macB, etherType: 0x0800, payload: Frames.ipv4(src: b, dst: a, transport: tr))
            }
            let h1 = FlowHash.hash(ParsedPacket(frame: fwd)), h2 = FlowHash.hash(ParsedPacket(frame: rev))
            #expect(h1 == h2)
            let port = FlowHash.sourcePort(for: h1)
            #expect(port >= 49152)
        }
    }

    @Test("fragments of a datagram share a hash; different flows spread")
    func fragmentsAndSpread() {
        let first = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .udp(sport: 5, dport: 6, payload: [1, 2, 3]), fragment: 0x2000))
        let later = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .raw(proto: 17, bytes: [9, 9, 9, 9]), fragment: 0x0010))
        #expect(FlowHash.hash(ParsedPacket(frame: first)) == FlowHash.hash(ParsedPacket(frame: later)))
        var ports = Set<UInt16>()
        for p in 0..<1000 {
            ports.insert(FlowHash.sourcePort(for: FlowHash.hash(ParsedPacket(frame: Frames.udp4(sport: UInt16(1000 + p))))))
        }
        #expect(ports.count > 950, "1000 flows take nearly 1000 ports (\(ports.count))")
        let arpAB = Frames.ethernet(dst: Frames.macB, src: Frames.macA, etherType: 0x0806, payload: [UInt8](repeating: 0, count: 28))
        let arpBA = Frames.ethernet(dst: Frames.macA, src: Frames.macB, etherType: 0x0806, payload: [UInt8](repeating: 1, count: 28))
        #expect(FlowHash.hash(ParsedPacket(frame: arpAB)) == FlowHash.hash(ParsedPacket(frame: arpBA)))
    }
}

@Suite("pcap")
struct PcapTests {
    @Test("what the writer writes, the reader reads")
    func roundTrip() throws {
        var file = PcapWriter.fileHeader()
        let frames: [[UInt8]] = [Frames.udp4(), Frames.tcp6(payload: [1, 2, 3]), [UInt8](repeating: 7, count: 60)]
        for (i, f) in frames.enumerated() {
            PcapWriter.appendRecordHeader(&file, timestampNanoseconds: UInt64(i) * 1_500_000_123, capturedLength: f.count, originalLength: f.count + i)
            file += f
        }
        let r = try PcapReader(bytes: file)
        #expect(r.linkType == 1)
        #expect(r.frames.map(\.bytes) == frames)
        #expect(r.frames.map(\.timestampNanoseconds) == [0, 1_500_000_123, 3_000_000_246])
        #expect(r.frames.map(\.originalLength) == [frames[0].count, frames[1].count + 1, frames[2].count + 2])
        #expect(throws: PcapReader.Error.self) { try PcapReader(bytes: [1, 2, 3, 4] + [UInt8](repeating: 0, count: 20)) }
    }
}

@Suite("GSO segmentation")
struct GSOSegmenterTests {
    /// Segment i as a sender without GSO would have built it.
    static func expected(v6: Bool, tcp: Bool, vlans: [Frames.VLAN], payload: [UInt8], mss: Int, i: Int, count: Int,
                         flags: UInt8, seq: UInt32, id: UInt16) -> [UInt8] {
        let chunk = Array(payload[(i * mss)..<min(payload.count, (i + 1) * mss)])
        var f = flags
        if i > 0 { f &= ~0x80 }
        if i < count - 1 { f &= ~0x09 }
        let t: Frames.Transport = tcp ? .tcp(sport: 443, dport: 50000, seq: seq &+ UInt32(i * mss), flags: f, payload: chunk)
                                      : .udp(sport: 4433, dport: 50000, payload: chunk)
        return v6 ? Frames.ethernet(vlans: vlans, etherType: 0x86DD, payload: Frames.ipv6(transport: t, extensions: [.destination()]))
                  : Frames.ethernet(vlans: vlans, etherType: 0x0800, payload: Frames.ipv4(transport: t, id: id &+ UInt16(i)))
    }

    @Test("TCP and UDP super-packets become the segments the kernel's GSO sends", arguments: [
        (false, true), (true, true), (false, false), (true, false),
    ])
    func segments(v6: Bool, tcp: Bool) throws {
        let mss = tcp ? 1448 : 1200
        for vlans in [[], [Frames.VLAN(tci: 5)]] {
            for size in [mss + 1, 3 * mss, 10_000, 60_000] {
                let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13) }
                let count = (size + mss - 1) / mss
                let flags: UInt8 = 0x80 | 0x10 | 0x08 | 0x01 // CWR ACK PSH FIN
                let t: Frames.Transport = tcp ? .tcp(sport: 443, dport: 50000, seq: 0xFFFF_F000, flags: flags, payload: payload)
                                              : .udp(sport: 4433, dport: 50000, payload: payload)
                let superPacket = v6
                    ? Frames.ethernet(vlans: vlans, etherType: 0x86DD, payload: Frames.ipv6(transport: t, extensions: [.destination()], partialChecksum: true))
                    : Frames.ethernet(vlans: vlans, etherType: 0x0800, payload: Frames.ipv4(transport: t, id: 0xFFFE, partialChecksum: true))
                let p = ParsedPacket(frame: superPacket)
                try superPacket.withUnsafeBytes { raw in
                    let seg = try #require(GSOSegmenter(frame: raw, l3Offset: p.l3Offset, l4Offset: p.l4Offset,
                                                        l4Protocol: UInt8(p.proto), gsoSize: mss))
                    #expect(seg.segmentCount == count)
                    var headers = [UInt8](repeating: 0, count: seg.headerLength)
                    for i in 0..<count {
                        headers.withUnsafeMutableBytes { seg.writeHeaders(i, to: $0.baseAddress!) }
                        let got = headers + Array(raw[seg.payloadRange(i)])
                        let want = Self.expected(v6: v6, tcp: tcp, vlans: vlans, payload: payload, mss: mss, i: i, count: count,
                                                 flags: flags, seq: 0xFFFF_F000, id: 0xFFFE)
                        #expect(got == want, "segment \(i) of \(count) (v6 \(v6), tcp \(tcp), \(size) bytes, tags \(vlans.count))")
                    }
                    // Sliced as the kernel slices it: headers, then 40 bytes of
                    // each segment, and each payload's sum (summed here by hand).
                    let slice = 40
                    var sliced = Array(raw[0..<seg.headerLength])
                    for i in 0..<count { sliced += Array(raw[seg.payloadRange(i)].prefix(slice)) }
                    try sliced.withUnsafeBytes { cut in
                        let s = try #require(GSOSegmenter(frame: cut, l3Offset: p.l3Offset, l4Offset: p.l4Offset,
                                                          l4Protocol: UInt8(p.proto), gsoSize: mss, whole: false))
                        #expect(s.segmentCount == count)
                        for i in 0..<count {
                            let bytes = Array(raw[seg.payloadRange(i)])
                            var sum = 0
                            for j in stride(from: 0, to: bytes.count, by: 2) {
                                sum += Int(bytes[j]) << 8 | (j + 1 < bytes.count ? Int(bytes[j + 1]) : 0)
                            }
                            while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
                            headers.withUnsafeMutableBytes { s.writeHeaders(i, to: $0.baseAddress!, payloadSum: UInt16(sum)) }
                            let want = Self.expected(v6: v6, tcp: tcp, vlans: vlans, payload: payload, mss: mss, i: i, count: count,
                                                     flags: flags, seq: 0xFFFF_F000, id: 0xFFFE)
                            #expect(headers == Array(want.prefix(seg.headerLength)), "sliced segment \(i) of \(count)")
                        }
                    }
                }
            }
        }
    }

    @Test("refuses what it cannot cut")
    func refuses() {
        let icmp = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .icmpEcho(id: 1, seq: 1, payload: [1])))
        icmp.withUnsafeBytes {
            #expect(GSOSegmenter(frame: $0, l3Offset: 14, l4Offset: 34, l4Protocol: 1, gsoSize: 100) == nil)
        }
        let tcp = Frames.udp4()
        tcp.withUnsafeBytes {
            #expect(GSOSegmenter(frame: $0, l3Offset: 14, l4Offset: 34, l4Protocol: 17, gsoSize: 0) == nil)
        }
    }
}

@Suite("Rendezvous hashing")
struct RendezvousTests {
    @Test("flows spread evenly; an endpoint going away moves only its flows, and they come back with it")
    func minimalMovement() {
        let seeds = ["198.18.1.2:4789", "198.18.2.2:4789", "198.18.3.2:4789"].map(Rendezvous.seed)
        var rng = SplitMix64(seed: 5)
        let flows = (0..<30_000).map { _ in UInt32.random(in: 0...UInt32.max, using: &rng) }
        let all = flows.map { Rendezvous.choose($0, seeds: seeds, up: [true, true, true])! }
        for e in 0..<3 {
            let share = Double(all.filter { $0 == e }.count) / Double(flows.count)
            #expect(abs(share - 1.0 / 3) < 0.02, "endpoint \(e) takes \(share)")
        }
        let without = flows.map { Rendezvous.choose($0, seeds: seeds, up: [true, false, true])! }
        for (a, b) in zip(all, without) {
            if a != 1 { #expect(a == b) } else { #expect(b != 1) }
        }
        #expect(Rendezvous.choose(1, seeds: seeds, up: [false, false, false]) == nil)
        let back = flows.map { Rendezvous.choose($0, seeds: seeds, up: [true, true, true])! }
        #expect(back == all)
    }
}

import CMirrorSys
import Foundation
import MirrorCore
import MirrorDataPlane
import MirrorFixtures
import MirrorTestSupport
import Testing

/// Frames built in Swift run through the loaded program
/// (BPF_PROG_TEST_RUN); what it put in the ring and its counters are held
/// to the reference parser and hash. Loading the program in every test
/// means a verifier rejection fails the suite.
@Suite("BPF select path", .serialized)
struct SelectionTests {
    /// A varied set: families, protocols, tags, fragments, extension headers.
    static var wellFormed: [(String, [UInt8])] {
        [
            ("udp4", Frames.udp4()),
            ("udp4 vlan", Frames.udp4(vlans: [Frames.VLAN(tci: 42)])),
            ("udp4 qinq", Frames.udp4(vlans: [Frames.VLAN(tpid: 0x88A8, tci: 7), Frames.VLAN(tci: 42)])),
            ("tcp6", Frames.tcp6(payload: Array(repeating: 0xAB, count: 100))),
            ("tcp6 vlan", Frames.tcp6(vlans: [Frames.VLAN(tci: 3)])),
            ("icmp4", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .icmpEcho(id: 1, seq: 2, payload: [1, 2, 3])))),
            ("icmp6", Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .icmpEcho(id: 1, seq: 2, payload: [4])))),
            ("tcp4 options", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .tcp(sport: 1, dport: 22, seq: 5, flags: 2, payload: []), options: [1, 1, 1, 0]))),
            ("udp6 ext", Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .udp(sport: 9, dport: 4789, payload: [1]), extensions: [.hopByHop(), .destination()]))),
            ("frag4 first", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .udp(sport: 5, dport: 6, payload: [1, 2]), fragment: 0x2000))),
            ("frag4 later", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .raw(proto: 17, bytes: [1, 2, 3, 4, 5, 6, 7, 8]), fragment: 0x0001))),
            ("frag6 later", Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .raw(proto: 6, bytes: [1, 2, 3, 4]), extensions: [.fragment(offset: 4, more: true)]))),
            ("arp", Frames.ethernet(dst: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], etherType: 0x0806, payload: [UInt8](repeating: 1, count: 28))),
            ("udp4 1500", Frames.udp4(payload: [UInt8](repeating: 0x55, count: 1472))),
        ]
    }

    static var malformed: [(String, [UInt8])] {
        [
            ("tiny", [UInt8](Frames.udp4().prefix(14))),
            ("ip cut", [UInt8](Frames.udp4().prefix(30))),
            ("bad ihl", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .udp(sport: 1, dport: 2, payload: []), ihl: 3))),
            ("lying length", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .udp(sport: 1, dport: 2, payload: []), totalLength: 1000))),
            ("v6 lying", Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .udp(sport: 1, dport: 2, payload: []), payloadLength: 900))),
            ("v6 version 4", Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv4(transport: .udp(sport: 1, dport: 2, payload: [UInt8](repeating: 0, count: 40))))),
            ("tcp cut", Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .raw(proto: 6, bytes: [0, 1, 0, 2, 0, 0])))),
        ]
    }

    @Test("every frame is copied whole and described as the reference parser sees it, ingress and egress")
    func wellFormedFrames() throws {
        let h = try BPFHarness()
        // The skb test run refuses IP frames shorter than an IP header
        // before the program runs; those go through XDP only.
        let frames = (Self.wellFormed + Self.malformed).filter { skbTestRunAccepts($0.1) }
        let xdpOnly = (Self.wellFormed + Self.malformed).filter { !skbTestRunAccepts($0.1) }
        #expect(xdpOnly.count == 2)
        for (_, f) in frames {
            #expect(try h.run(.xdp, f).retval == xdpPass)
            #expect(try h.run(.tcEgress, f).retval == tcNext)
        }
        let recs = h.records()
        try #require(recs.count == 2 * frames.count, "one record per frame and direction (\(recs.count))")
        for (i, (name, f)) in frames.enumerated() {
            let p = ParsedPacket(frame: f)
            for (r, d) in [(recs[2 * i], Direction.ingress), (recs[2 * i + 1], Direction.egress)] {
                #expect(r.frame == f, "\(name) \(d): frame bytes")
                #expect(r.originalLength == f.count)
                #expect(r.direction == d)
                #expect(r.ifindex == BPFHarness.loopback)
                #expect(r.session == 0 && r.bank == 0)
                #expect(r.tunnelHeader == [0x08, 0, 0, 0, 0, 0, 7, 0], "\(name): VXLAN header with VNI 7")
                #expect(r.flowHash == FlowHash.hash(p), "\(name): kernel hash equals the reference")
                #expect(r.l3Offset == (p.isIP ? p.l3Offset : 0), "\(name): l3 offset")
                #expect(r.l4Offset == (p.isIP ? p.l4Offset : 0), "\(name): l4 offset")
                #expect(r.flags.contains(.l4Complete) == p.transportComplete, "\(name): l4 complete")
                #expect(r.flags.contains(.fragment) == p.fragment, "\(name): fragment")
                #expect(!r.flags.contains(.truncatedMax) && !r.flags.contains(.truncatedLength))
            }
        }
        for d in Direction.allCases {
            let c = try h.interfaceCounters(d)
            #expect(c["seen"] == UInt64(frames.count) && c["selected"] == UInt64(frames.count))
            #expect(c["malformed_ip"] == UInt64(Self.malformed.count - 3), "\(d): malformed IP headers counted")
            #expect(c["l4_truncated"] == 1)
            let s = try h.sessionCounters(0, d)
            #expect(s["selected"] == UInt64(frames.count) && s["ring_full"] == 0)
        }
        for (_, f) in xdpOnly { #expect(try h.run(.xdp, f).retval == xdpPass) }
        let short = h.records()
        #expect(short.map(\.frame) == xdpOnly.map(\.1), "frames shorter than their IP header are mirrored whole")
        #expect(short.allSatisfy { $0.l3Offset == 0 && $0.flowHash == FlowHash.hash(ParsedPacket(frame: $0.frame)) })
        #expect(try h.interfaceCounters(.ingress)["malformed_ip"] == UInt64(Self.malformed.count - 1))
    }

    @Test("random frames: the kernel hash and offsets equal the reference's")
    func randomFrames() throws {
        let h = try BPFHarness()
        var rng = SplitMix64(seed: 0x7E57)
        var frames = [[UInt8]]()
        for _ in 0..<500 { frames.append(FrameGenerator.frame(&rng)) }
        for f in frames { try h.run(skbTestRunAccepts(f) ? .tcIngress : .xdp, f) }
        let recs = h.records()
        try #require(recs.count == frames.count)
        for (f, r) in zip(frames, recs) {
            let p = ParsedPacket(frame: f)
            #expect(r.frame == f)
            #expect(r.flowHash == FlowHash.hash(p))
            #expect(r.l4Offset == (p.isIP ? p.l4Offset : 0))
        }
    }

    @Test("packet_length and the MTU cut copies and say why; TM_MAX_FRAME caps jumbo frames")
    func truncation() throws {
        let big = Frames.udp4(payload: [UInt8](repeating: 1, count: 1400))
        let h = try BPFHarness(packetLength: 64, mtuLimit: 1000)
        try h.run(.xdp, big)
        try h.run(.xdp, Frames.udp4())
        var r = h.records()
        try #require(r.count == 2)
        #expect(r[0].frame == Array(big.prefix(64)) && r[0].originalLength == big.count)
        #expect(r[0].flags.contains(.truncatedLength) && !r[0].flags.contains(.l4Complete))
        #expect(r[1].frame == Frames.udp4() && r[1].flags == [.l4Complete])
        #expect(try h.sessionCounters(0, .ingress)["packet_length"] == 1)

        let m = try BPFHarness(mtuLimit: 1000)
        try m.run(.xdp, big)
        let jumbo = Frames.udp4(payload: [UInt8](repeating: 2, count: 20000))
        let unlimited = try BPFHarness()
        try unlimited.run(.xdp, jumbo)
        let nine = Frames.udp4(payload: [UInt8](repeating: 3, count: 9000))
        try unlimited.run(.xdp, nine)
        r = m.records()
        #expect(r.count == 1 && r[0].frame == Array(big.prefix(1000)) && r[0].flags.contains(.truncatedMTU))
        #expect(try m.sessionCounters(0, .ingress)["mtu"] == 1)
        r = unlimited.records()
        try #require(r.count == 2)
        #expect(r[0].frame == Array(jumbo.prefix(16384)) && r[0].originalLength == jumbo.count && r[0].flags.contains(.truncatedMax))
        #expect(r[1].frame == nine && !r[1].flags.contains(.truncatedMax), "a 9000-byte jumbo frame is copied whole")
        #expect(try unlimited.sessionCounters(0, .ingress)["capture_max"] == 1)
    }

    @Test("UDP to a target endpoint is the agent's own output at every hook, whatever the mark; other ports and protocols are not")
    func ownTraffic() throws {
        let h = try BPFHarness()
        let own = OwnOutput(program: h.program)
        try own.setDestinations([.init(address: IPAddress("198.18.9.9")!, port: 4789),
                                 .init(address: IPAddress("fd00::9")!, port: 6081)])
        let toTarget = Frames.udp4(sport: 50000, dport: 4789, dst: [198, 18, 9, 9])
        let tagged = Frames.udp4(sport: 50001, dport: 4789, dst: [198, 18, 9, 9], vlans: [.init(tci: 5)])
        let toTarget6 = Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(
            src: Frames.ip6(1), dst: IPAddress("fd00::9")!.bytes, transport: .udp(sport: 50002, dport: 6081, payload: [1, 2, 3])))
        // The host's ICMP answer to a copy (port unreachable at the target).
        let quoted = Array(Frames.ipv4(dst: [198, 18, 9, 9], transport: .udp(sport: 50000, dport: 4789, payload: [9, 9])).prefix(28))
        let unreachable = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(
            src: [198, 18, 9, 9], dst: [198, 18, 0, 1], transport: .raw(proto: 1, bytes: [3, 3, 0, 0, 0, 0, 0, 0] + quoted)))
        for f in [toTarget, tagged, toTarget6, unreachable] {
            try h.run(.xdp, f)
            try h.run(.tcIngress, f)
            try h.run(.tcEgress, f, mark: 0x4000)
        }
        // Another port of the target, the target's port elsewhere, TCP to it:
        // production traffic, mirrored.
        try h.run(.tcEgress, Frames.udp4(sport: 50000, dport: 4790, dst: [198, 18, 9, 9]))
        try h.run(.tcEgress, Frames.udp4(sport: 50000, dport: 4789, dst: [198, 18, 9, 10]))
        try h.run(.xdp, Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(
            dst: [198, 18, 9, 9], transport: .tcp(sport: 50000, dport: 4789, seq: 1, flags: 0x10, payload: []))))
        // The mark the agent once used means nothing now.
        try h.run(.tcEgress, Frames.udp4(), mark: 0x746D_6972)
        // An ICMP error about someone else's UDP is production traffic.
        let otherQuoted = Array(Frames.ipv4(dst: [198, 18, 9, 10], transport: .udp(sport: 50000, dport: 4789, payload: [])).prefix(28))
        try h.run(.xdp, Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(
            src: [198, 18, 9, 10], dst: [198, 18, 0, 1], transport: .raw(proto: 1, bytes: [3, 3, 0, 0, 0, 0, 0, 0] + otherQuoted))))
        #expect(h.records().count == 5)
        let i = try h.interfaceCounters(.ingress), e = try h.interfaceCounters(.egress)
        #expect(i["own_traffic"] == 8 && i["selected"] == 2, "\(i)")
        #expect(e["own_traffic"] == 4 && e["selected"] == 3, "\(e)")
        // Targets that are gone are production traffic again.
        try own.setDestinations([])
        try h.run(.tcEgress, toTarget)
        #expect(h.records().count == 1)
    }

    @Test("a session for one direction leaves the other alone")
    func directionSelection() throws {
        let h = try BPFHarness(direction: .ingress)
        try h.run(.xdp, Frames.udp4())
        try h.run(.tcEgress, Frames.udp4())
        let r = h.records()
        #expect(r.count == 1 && r[0].direction == .ingress)
        #expect(try h.interfaceCounters(.egress)["no_match"] == 1)
    }

    @Test("a full ring drops and counts, never blocks: selected = in ring + ring_full")
    func ringFull() throws {
        let h = try BPFHarness(ringBytes: 1 << 14)
        let f = Frames.udp4(payload: [UInt8](repeating: 9, count: 1000))
        for _ in 0..<100 { #expect(try h.run(.xdp, f).retval == xdpPass) }
        let inRing = UInt64(h.records().count)
        let s = try h.sessionCounters(0, .ingress)
        #expect(inRing > 0 && inRing < 100)
        #expect(s["selected"] == 100 && s["ring_full"]! + inRing == 100)
    }
}

/// Sampling and rate limiting in the kernel: what they hold back is
/// counted, and selected = in the ring + held back, exactly.
@Suite("BPF sampling and rate limits", .serialized)
struct ShapingTests {
    func harness(sample: UInt32 = 0, rate: (UInt64, UInt64, Bool)? = nil) throws -> BPFHarness {
        let config = MirrorConfig.quick(interfaces: ["lo"], target: HostPort(host: "198.18.9.9", port: nil), vni: 1,
                                        direction: .both, packetLength: nil)
        return try BPFHarness(config: config, sampleEvery: ["default": sample],
                              rates: rate.map { ["default": (rate: $0.0, burst: $0.1, bits: $0.2)] } ?? [:])
    }

    /// Runs on one CPU so the per-CPU sample counter is one sequence.
    func onOneCPU<T>(_ body: () throws -> T) rethrows -> T {
        _ = CMirrorSys_pin_thread(0)
        defer { _ = CMirrorSys_pin_thread(-1) }
        return try body()
    }

    @Test("sample 1 in 4: exactly a quarter mirrored, the rest counted sampled_out")
    func sampling() throws {
        try onOneCPU {
            let h = try harness(sample: 4)
            for i in 0..<1000 { try h.run(.xdp, Frames.udp4(sport: UInt16(i))) }
            let records = h.records()
            let s = try h.sessionCounters(0, .ingress)
            #expect(records.count == 250)
            #expect(s["selected"] == 1000 && s["sampled_out"] == 750)
            // The first of every four goes.
            #expect(records.map { ParsedPacket(frame: $0.frame).sourcePort } == stride(from: 0, to: 1000, by: 4).map(UInt16.init))
        }
    }

    @Test("packets per second: the burst goes, the rest is rate_limited, and tokens come back with time")
    func packetRate() throws {
        let h = try harness(rate: (200, 50, false))
        // Tokens that come back while the frames run (one per 5 ms): a few
        // milliseconds on an idle machine, more when a busy one preempts us.
        func refilled(during body: () throws -> Void) rethrows -> Int {
            let start = CMirrorSys_monotonic_ns()
            try body()
            return Int((Double(CMirrorSys_monotonic_ns() - start) / 5e6).rounded(.up))
        }
        var extra = try refilled { for _ in 0..<300 { try h.run(.xdp, Frames.udp4()) } }
        let first = h.records().count
        var s = try h.sessionCounters(0, .ingress)
        #expect(first >= 50 && first <= 51 + extra, "the burst of 50, and \(extra) refilled at most (\(first))")
        #expect(s["selected"] == 300 && s["rate_limited"] == UInt64(300 - first))
        Thread.sleep(forTimeInterval: 0.25) // refills 50 tokens, the bucket's depth
        extra = try refilled { for _ in 0..<100 { try h.run(.xdp, Frames.udp4()) } }
        let second = h.records().count
        s = try h.sessionCounters(0, .ingress)
        #expect(second >= 50 && second <= 51 + extra, "a refilled bucket, and \(extra) refilled at most (\(second))")
        #expect(s["selected"] == 400 && s["rate_limited"]! + UInt64(first + second) == 400)
    }

    @Test("bits per second: frames cost their length")
    func bitRate() throws {
        // A burst of 100,000 bits holds eight 1514-byte frames (12,112 bits each).
        let h = try harness(rate: (1_000, 100_000, true))
        let f = Frames.udp4(payload: [UInt8](repeating: 0, count: 1472))
        for _ in 0..<20 { try h.run(.xdp, f) }
        let s = try h.sessionCounters(0, .ingress)
        #expect(h.records().count == 8 && s["rate_limited"] == 12)
    }
}

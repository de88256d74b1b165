import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// Targets: the built-in receiver, GENEVE, IPv6, groups of endpoints with
/// balancing, failover and replication, sampling and rate limits.
@Suite("Targets end to end", .serialized)
struct TargetsEndToEndTests {
    /// Outer IPv4 or IPv6 + UDP + VXLAN/GENEVE of a captured datagram.
    static func decode(_ f: [UInt8]) -> (vni: UInt32, encapsulation: Encapsulation, sourcePort: UInt16, inner: [UInt8])? {
        let p = ParsedPacket(frame: f)
        guard p.isIP, p.proto == 17, p.hasPorts else { return nil }
        let payload = Array(f[(p.l4Offset + 8)...])
        guard let d = payload.withUnsafeBytes({ DecodedTunnel.udp($0) }) else { return nil }
        return (d.id, d.encapsulation, p.sourcePort, Array(payload[d.headerLength...]))
    }

    static func send(_ lab: Lab, _ socket: RawSocket, _ frames: [[UInt8]]) throws {
        for (i, f) in frames.enumerated() {
            try socket.send(f)
            if i % 20 == 19 { usleep(2000) }
        }
    }

    @Test("pacing toward a receiver with a 256-slot ring (XDP on its veth): every copy arrives, none dropped at the ring; departures keep the rate and the burst; the waits are counted")
    func pacing() throws {
        // veth takes XDP only up to a page per frame: the usual 1500 MTU.
        let topo = try Topology(targetMTU: 1500)
        let lab = topo.lab
        // An XDP program on t0 puts a 256-slot ring, drained by NAPI,
        // between m1 and the target's stack; what finds it full is dropped
        // and counted as m1's tx_dropped.
        let fx = try LifecycleEndToEndTests.fixtures()
        defer { try? FileManager.default.removeItem(atPath: fx) }
        try lab.ip(topo.tgt, "link", "set", "dev", "t0", "xdpdrv", "obj", fx, "sec", "xdp")
        try lab.exec(topo.mon, ["ping", "-c", "1", "198.18.1.2"])
        try lab.exec(topo.src, ["ping", "-c", "1", "198.18.0.2"])
        let frames = 10000, rate = 20_000, burst = 16
        func round(_ arguments: [String]) throws -> (sent: Int, arrived: Int, ringDrops: UInt64, departures: [UInt64], metrics: Exposition) {
            let seen = try Capture(lab: lab, ns: topo.mon, device: "m0", filter: ["-Q", "in", "udp", "port", "7300"])
            let out = try Capture(lab: lab, ns: topo.mon, device: "m1", filter: ["-Q", "out", "udp", "port", "4789"])
            let arrived = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
            let dropped = try lab.statistic(topo.mon, "m1", "tx_dropped")
            let agent = try topo.startAgent(["--interface", "m0", "--direction", "ingress", "--target", "198.18.1.2",
                                             "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"] + arguments)
            try lab.exec(topo.src, ["python3", "-c", """
                import socket, struct
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(\(frames)): s.sendto(struct.pack("!I", i) + b"p" * 60, ("198.18.0.2", 7300))
                """])
            _ = try arrived.waitFor(count: frames, timeout: 10)
            try arrived.settle()
            let m = try MetricsEndToEndTests.scrape(topo)
            #expect(agent.stop() == 0)
            let ringDrops = try lab.statistic(topo.mon, "m1", "tx_dropped") - dropped
            // Copies of the test flow only (ARP and the like are mirrored too).
            func flow(_ frames: [PcapReader.Frame]) -> [PcapReader.Frame] {
                frames.filter { Self.decode($0.bytes).map { $0.inner.count > 37 && $0.inner[23] == 17 && $0.inner[36] == 0x1C && $0.inner[37] == 0x84 } ?? false }
            }
            return (try seen.stop().count, flow(try arrived.stop()).count, ringDrops, flow(try out.stop()).map(\.timestampNanoseconds), m)
        }

        let unpaced = try round([])
        print("pacing: unpaced, \(unpaced.sent) frames: \(unpaced.arrived) copies arrived, \(unpaced.ringDrops) dropped at the 256-slot ring")
        let paced = try round(["--pace", "\(rate)", "--pace-burst", "\(burst)"])
        let d = paced.departures.sorted()
        let span = Double((d.last ?? 0) - (d.first ?? 0)) / 1e9
        // The most departures in any 1 ms: the rate's 20 and one burst
        // (tcpdump's timestamps are the kernel's, at the device).
        var most = 0, j = 0
        for i in d.indices {
            while d[i] - d[j] >= 1_000_000 { j += 1 }
            most = max(most, i - j + 1)
        }
        let waits = paced.metrics.all("traffic_mirror_endpoint_pacing_waits_total").reduce(0) { $0 + $1.1 }
        print("pacing: \(rate) pps, burst \(burst): \(paced.sent) frames, \(paced.arrived) copies arrived, \(paced.ringDrops) dropped at the ring; departures over \(String(format: "%.3f", span)) s, at most \(most) in 1 ms; \(Int(waits)) waits")
        #expect(paced.sent == frames, "m0 received every frame")
        #expect(paced.arrived == paced.sent && paced.ringDrops == 0, "every copy through the ring: \(paced.arrived) of \(paced.sent), \(paced.ringDrops) dropped")
        #expect(span >= Double(frames - burst) / Double(rate) * 0.95, "\(frames) copies at \(rate) pps take at least \(Double(frames) / Double(rate)) s: \(span) s")
        #expect(most <= rate / 1000 + burst + 4, "at most the rate's \(rate / 1000) and a burst of \(burst) in any 1 ms: \(most)")
        #expect(waits > 0)
        MetricsEndToEndTests.checkInvariants(paced.metrics, sessions: ["default"], interfaces: ["m0"])
    }

    @Test("receive writes exactly the frames that arrive, VXLAN and GENEVE, in order; tshark decodes both")
    func receiveAndGeneve() throws {
        let topo = try Topology()
        let lab = topo.lab
        try lab.ip(topo.tgt, "link", "del", "vx0") // the receiver takes port 4789
        let pcap = NSTemporaryDirectory() + "\(lab.prefix)-received.pcap"
        defer { try? FileManager.default.removeItem(atPath: pcap) }
        let receiver = try lab.start(topo.tgt, [try trafficMirrorBinary(), "receive", "--listen", "0.0.0.0:4789",
                                                "--listen", "0.0.0.0:6081", "--write", pcap])
        let config = """
        targets:
          vx: {address: 198.18.1.2}
          gn: {address: 198.18.1.2, encapsulation: geneve}
        filters:
          udp:
            ingress: [{rule: 1, action: accept, protocol: udp}]
        sessions:
          - {name: udp, interfaces: [m0], target: gn, filter: udp, number: 1, vni: 600, direction: ingress}
          - {name: rest, interfaces: [m0], target: vx, number: 2, vni: 500, direction: ingress}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config)])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp"])
        let srcOut = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "out"])
        var rng = SplitMix64(seed: 0x6E7E)
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        let frames = (0..<400).map { _ -> [UInt8] in
            var f = FrameGenerator.frame(&rng)
            f.replaceSubrange(0..<12, with: m0 + s0)
            return f
        }
        try Self.send(lab, try RawSocket(lab: lab, ns: topo.src, device: "s0"), frames)
        _ = try wire.waitFor(count: frames.count, timeout: 10)
        try wire.settle()
        #expect(agent.stop() == 0)
        receiver.stop(signal: SIGINT)
        #expect(receiver.stderr.contains("frames written"), "\(receiver.stderr)")

        let datagrams = try wire.stop().map(\.bytes)
        let decoded = datagrams.compactMap(Self.decode)
        let received = try PcapReader(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: pcap)))).frames.map(\.bytes)
        let sent = try srcOut.stop().map(\.bytes)
        #expect(sent.count >= frames.count)
        try MirrorEndToEndTests.expectSameFrames(decoded.map(\.inner), sent, "every frame the monitored host received")
        // Each listening socket is read in turn, so order holds per port.
        for enc in Encapsulation.allCases {
            let arrived = decoded.filter { $0.encapsulation == enc }.map(\.inner)
            let written = received.filter { f in arrived.contains(f) }
            #expect(written == arrived, "\(enc): receive's pcap holds the arrived frames in order (\(written.count) of \(arrived.count))")
        }
        try MirrorEndToEndTests.expectSameFrames(received, decoded.map(\.inner), "received frames")
        let geneve = decoded.filter { $0.encapsulation == .geneve }
        #expect(geneve.count > 50 && geneve.allSatisfy { $0.vni == 600 } && decoded.filter { $0.encapsulation == .vxlan }.allSatisfy { $0.vni == 500 })

        // tshark's own decoders agree: GENEVE on 6081, VXLAN on 4789.
        let path = NSTemporaryDirectory() + "\(lab.prefix)-geneve.pcap"
        writePcap(datagrams, to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let out = try Shell.check(["tshark", "-n", "-r", path, "-T", "fields", "-e", "geneve.vni", "-e", "vxlan.vni", "-e", "geneve.proto_type"])
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.isEmpty }
        // tshark prints GENEVE VNIs in hex, VXLAN ones in decimal.
        func number(_ s: Substring) -> Int? { s.hasPrefix("0x") ? Int(s.dropFirst(2), radix: 16) : Int(s) }
        let g = lines.filter { number($0.split(separator: "\t", omittingEmptySubsequences: false)[0]) == 600 }
        #expect(g.count == geneve.count, "tshark decodes \(g.count) GENEVE datagrams with VNI 600")
        #expect(g.allSatisfy { $0.split(separator: "\t").last?.hasPrefix("0x6558") == true }, "protocol type Ethernet")
        #expect(lines.filter { $0.split(separator: "\t", omittingEmptySubsequences: false).dropFirst().first?.hasPrefix("500") == true }.count
                == decoded.count - geneve.count, "and the VXLAN ones with VNI 500")
    }

    @Test("an IPv6 target: copies arrive with valid UDP checksums; receive listens on IPv6")
    func ipv6Target() throws {
        let topo = try Topology()
        let lab = topo.lab
        try topo.enableIPv6(link: 1, targetNS: topo.tgt)
        let pcap = NSTemporaryDirectory() + "\(lab.prefix)-v6.pcap"
        defer { try? FileManager.default.removeItem(atPath: pcap) }
        let receiver = try lab.start(topo.tgt, [try trafficMirrorBinary(), "receive", "--listen", "[::]:4789", "--write", pcap, "--count", "200"])
        let agent = try topo.startAgent(["--interface", "m0", "--target", "[fd00:1::2]", "--direction", "ingress"])
        #expect(agent.stderr.contains("[fd00:1::2]:4789"))
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "ip6", "and", "udp"])
        let frames = (0..<200).map { Frames.tcp6(sport: UInt16(2000 + $0), payload: [UInt8](repeating: UInt8($0 & 0xFF), count: $0 * 3)) }
        try Self.send(lab, try RawSocket(lab: lab, ns: topo.src, device: "s0"), frames)
        _ = try wire.waitFor(count: 200, timeout: 10)
        #expect(agent.stop() == 0)
        let datagrams = try wire.stop().map(\.bytes)
        for _ in 0..<100 where receiver.isRunning { usleep(50_000) }
        #expect(!receiver.isRunning, "receive stopped after --count 200: \(receiver.stderr)")
        let received = try PcapReader(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: pcap)))).frames.map(\.bytes)
        #expect(received == frames, "\(received.count) of \(frames.count) frames received; the agent said: \(agent.stderr)")

        let path = NSTemporaryDirectory() + "\(lab.prefix)-v6-wire.pcap"
        writePcap(datagrams, to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let out = try Shell.check(["tshark", "-n", "-r", path, "-o", "udp.check_checksum:TRUE", "-T", "fields",
                                   "-e", "udp.checksum.status", "-e", "vxlan.vni", "-e", "ipv6.dst"])
        let lines = out.split(separator: "\n").filter { !$0.isEmpty }
        #expect(lines.count == 200 && lines.allSatisfy { $0.hasPrefix("1\t1\tfd00:1::2") },
                "tshark: good UDP checksums, VNI 1, to fd00:1::2: \(lines.prefix(3))")
    }

    /// The frames of one round: per flow a frame each way, marked with the round.
    static func flows(_ n: Int, round: UInt8, m0: [UInt8], s0: [UInt8]) -> (in: [[UInt8]], out: [[UInt8]]) {
        var inbound = [[UInt8]](), outbound = [[UInt8]]()
        for i in 0..<n {
            let port = UInt16(20000 + i)
            var a = Frames.udp4(sport: port, dport: 53, payload: [round, 1], src: [198, 18, 0, 1], dst: [198, 18, 0, 2])
            a.replaceSubrange(0..<12, with: m0 + s0)
            var b = Frames.udp4(sport: 53, dport: port, payload: [round, 2], src: [198, 18, 0, 2], dst: [198, 18, 0, 1])
            b.replaceSubrange(0..<12, with: s0 + m0)
            inbound.append(a)
            outbound.append(b)
        }
        return (inbound, outbound)
    }

    /// Which endpoint (index) got each flow of a round; a flow at two
    /// endpoints, or missing a direction, is recorded as -1.
    static func assignment(_ captures: [Capture?], round: UInt8, flows n: Int) throws -> [Int] {
        var seen = [Int: Set<Int>]()
        var copies = [Int: Int]()
        for (e, c) in captures.enumerated() {
            guard let c else { continue }
            for f in try c.frames() {
                guard let d = decode(f.bytes) else { continue }
                let p = ParsedPacket(frame: d.inner)
                guard p.isIP, p.proto == 17, p.hasPorts, d.inner.count > p.l4Offset + 9, d.inner[p.l4Offset + 8] == round else { continue }
                let port = Int(p.sourcePort == 53 ? p.destinationPort : p.sourcePort) - 20000
                seen[port, default: []].insert(e)
                copies[port, default: 0] += 1
            }
        }
        return (0..<n).map { i in (seen[i]?.count == 1 && copies[i] == 2) ? seen[i]!.first! : -1 }
    }

    @Test("three endpoints: each flow and both its directions at one endpoint; failover moves only the lost endpoint's flows; recovery brings them back")
    func balanceAndFailover() throws {
        let topo = try Topology()
        let lab = topo.lab
        try topo.addTarget(2)
        try topo.addTarget(3)
        let config = """
        targets:
          ids:
            endpoints: [198.18.1.2, 198.18.2.2, 198.18.3.2]
            health_check: {interval: 200ms, timeout: 150ms, unhealthy_threshold: 2, healthy_threshold: 2}
        sessions:
          - {name: all, interfaces: [m0], target: ids, number: 1, vni: 9}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config)])
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0"), fromMon = try RawSocket(lab: lab, ns: topo.mon, device: "m0")
        func wires() throws -> [Capture] {
            try ["tgt", "tgt2", "tgt3"].map { try Capture(lab: lab, ns: "\(lab.prefix)-\($0)", device: "t0", filter: ["-Q", "in", "udp", "port", "4789"]) }
        }
        func round(_ r: UInt8, _ captures: [Capture?]) throws -> [Int] {
            let (a, b) = Self.flows(300, round: r, m0: m0, s0: s0)
            for (x, y) in zip(a, b) {
                try fromSrc.send(x)
                try fromMon.send(y)
            }
            for c in captures { try c?.settle() }
            return try Self.assignment(captures, round: r, flows: 300)
        }

        var captures: [Capture?] = try wires()
        let first = try round(1, captures)
        #expect(!first.contains(-1), "every flow, both directions, at exactly one endpoint")
        for e in 0..<3 {
            #expect(first.filter { $0 == e }.count > 60, "endpoint \(e) takes its share (\(first.filter { $0 == e }.count) of 300)")
        }

        // The third endpoint's host goes away (its capture first: a process
        // inside would keep the namespace, and its link, alive).
        _ = try captures[2]?.stop()
        captures[2] = nil
        try Shell.check(["ip", "netns", "del", "\(lab.prefix)-tgt3"])
        #expect(agent.waitForStderr(timeout: 15) { $0.contains("endpoint down") }, "the health check notices: \(agent.stderr.suffix(500))")
        let second = try round(2, captures)
        for (before, after) in zip(first, second) {
            if before == 2 { #expect(after == 0 || after == 1) } else { #expect(after == before) }
        }
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect(m.value("traffic_mirror_endpoint_up", ["target": "ids", "endpoint": "198.18.3.2:4789"]) == 0)

        // It comes back: its flows return to it.
        try topo.addTarget(3)
        captures[2] = try Capture(lab: lab, ns: "\(lab.prefix)-tgt3", device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        #expect(agent.waitForStderr(timeout: 15) { $0.contains("endpoint up") })
        let third = try round(3, captures)
        #expect(third == first, "after recovery every flow is where it was")
        let final = try MetricsEndToEndTests.scrape(topo)
        MetricsEndToEndTests.checkInvariants(final, sessions: ["all"], interfaces: ["m0"])
        #expect(final.value("traffic_mirror_endpoint_up", ["target": "ids", "endpoint": "198.18.3.2:4789"]) == 1)
        #expect(agent.stop() == 0)
    }

    @Test("replicate: every copy reaches every endpoint, each packet counted once as sent")
    func replicate() throws {
        let topo = try Topology()
        let lab = topo.lab
        try topo.addTarget(2)
        let config = """
        targets:
          both: {endpoints: [198.18.1.2, 198.18.2.2], mode: replicate}
        sessions:
          - {name: all, interfaces: [m0], target: both, number: 1, direction: ingress}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config)])
        let wires = try ["tgt", "tgt2"].map { try Capture(lab: lab, ns: "\(lab.prefix)-\($0)", device: "t0", filter: ["-Q", "in", "udp", "port", "4789"]) }
        let frames = (0..<300).map { Frames.udp4(sport: UInt16(5000 + $0)) }
        try Self.send(lab, try RawSocket(lab: lab, ns: topo.src, device: "s0"), frames)
        for w in wires { try w.settle() }
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect(agent.stop() == 0)
        for w in wires {
            let inner = try w.stop().compactMap { Self.decode($0.bytes)?.inner }
            #expect(inner == frames, "every frame at this endpoint, in order")
        }
        #expect(m.value("traffic_mirror_sent_packets_total", ["session": "all", "target": "both"]) == 300)
        #expect(m.value("traffic_mirror_endpoint_sent_packets_total", ["target": "both", "endpoint": "198.18.2.2:4789"]) == 300)
        MetricsEndToEndTests.checkInvariants(m, sessions: ["all"], interfaces: ["m0"])
    }

    @Test("sample and rate_limit: what they hold back is counted, the invariants stay exact")
    func shaping() throws {
        let topo = try Topology()
        let lab = topo.lab
        let config = """
        targets:
          a: {address: 198.18.1.2}
        sessions:
          - {name: sampled, interfaces: [m0], target: a, number: 1, sample: 5, direction: ingress}
          - {name: limited, interfaces: [m0], target: a, number: 2, direction: egress, rate_limit: {packets_per_second: 100, burst: 40}}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config)])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        let (a, b) = Self.flows(500, round: 7, m0: m0, s0: s0)
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0"), fromMon = try RawSocket(lab: lab, ns: topo.mon, device: "m0")
        for (x, y) in zip(a, b) {
            try fromSrc.send(x)
            try fromMon.send(y)
        }
        let (m, received) = try MetricsEndToEndTests.scrapeWhenQuiet(topo, wire)
        #expect(agent.stop() == 0)
        let selected = m.value("traffic_mirror_selected_packets_total", ["session": "sampled", "direction": "ingress"]) ?? 0
        let sampledOut = m.value("traffic_mirror_dropped_packets_total", ["session": "sampled", "reason": "sampled_out"]) ?? 0
        let limited = m.value("traffic_mirror_dropped_packets_total", ["session": "limited", "reason": "rate_limited"]) ?? 0
        // The first of every five per CPU goes: a fifth, plus at most one per CPU.
        let kept = selected - sampledOut
        #expect(selected >= 500 && kept >= (selected / 5).rounded(.down) && kept <= (selected / 5).rounded(.up) + 2,
                "1 in 5: \(kept) of \(selected) kept")
        #expect(limited >= 400, "a 40-packet burst at 100/s: \(limited) of 500 limited")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["sampled", "limited"], interfaces: ["m0"])
        let sent = m.all("traffic_mirror_sent_packets_total").map(\.1).reduce(0, +)
        #expect(Double(received) == sent)
        _ = try wire.stop()
    }
}

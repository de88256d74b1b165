import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// Packet-broker functions at the source: sessions that end by themselves,
/// slicing after a layer, masking, deduplication.
@Suite("Broker functions end to end", .serialized)
struct BrokerEndToEndTests {
    /// VNI and inner frame of a VXLAN datagram over IPv4, by byte offsets.
    static func vxlan(_ f: [UInt8]) -> (vni: UInt32, inner: [UInt8])? {
        guard f.count >= 64, f[12] == 0x08, f[13] == 0x00, f[23] == 17 else { return nil }
        let udp = 14 + Int(f[14] & 0xF) * 4
        guard f.count > udp + 16, f[udp + 8] == 0x08 else { return nil }
        return (UInt32(f[udp + 12]) << 16 | UInt32(f[udp + 13]) << 8 | UInt32(f[udp + 14]), Array(f[(udp + 16)...]))
    }

    static func frame(_ lab: Lab, _ topo: Topology, _ f: [UInt8]) throws -> [UInt8] {
        var f = f
        f.replaceSubrange(0..<12, with: try lab.mac(topo.mon, "m0") + lab.mac(topo.src, "s0"))
        return f
    }

    @Test("bounded sessions: duration 2s, max_packets 100, max_bytes 20000 and a start_at..stop_at window end in the kernel exactly; a reload keeps what they used unless they changed")
    func boundedSessions() throws {
        let topo = try Topology()
        let lab = topo.lab
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let opens = Date().addingTimeInterval(1.5), closes = opens.addingTimeInterval(1)
        func config(counted: Int) -> String {
            """
            targets:
              t: {address: 198.18.1.2}
            filters:
              f1: {ingress: [{rule: 1, action: accept, protocol: udp, destination_ports: 1001}]}
              f2: {ingress: [{rule: 1, action: accept, protocol: udp, destination_ports: 1002}]}
              f3: {ingress: [{rule: 1, action: accept, protocol: udp, destination_ports: 1003}]}
              f4: {ingress: [{rule: 1, action: accept, protocol: udp, destination_ports: 1004}]}
            sessions:
              - {name: timed, interfaces: [m0], target: t, filter: f1, number: 1, vni: 11, direction: ingress, duration: 2s}
              - {name: counted, interfaces: [m0], target: t, filter: f2, number: 2, vni: 12, direction: ingress, max_packets: \(counted)}
              - {name: sized, interfaces: [m0], target: t, filter: f3, number: 3, vni: 13, direction: ingress, max_bytes: 20000}
              - {name: window, interfaces: [m0], target: t, filter: f4, number: 4, vni: 14, direction: ingress,
                 start_at: '\(iso.string(from: opens))', stop_at: '\(iso.string(from: closes))'}
            """
        }
        let path = try topo.writeConfig(config(counted: 100))
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let sent = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "out", "udp"])
        let agent = try topo.startAgent(["--config", path])
        let socket = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        var flows: [[[UInt8]]] = [[], [], [], []]
        func round(_ n: Int, _ tag: UInt8) throws {
            for i in 0..<n {
                for k in 0..<4 {
                    let f = try Self.frame(lab, topo, Frames.udp4(sport: 5000, dport: UInt16(1001 + k),
                                                               payload: [tag, UInt8(i & 0xFF), UInt8(i >> 8)] + [UInt8](repeating: 7, count: (i * 37) % 340)))
                    try socket.send(f)
                    flows[k].append(f)
                }
                usleep(10_000)
            }
        }
        try round(300, 1) // about 3.3 s
        try wire.settle()
        var m = try MetricsEndToEndTests.scrape(topo)
        let copies = try wire.frames().compactMap { Self.vxlan($0.bytes) }
        func of(_ vni: UInt32) -> [[UInt8]] { copies.filter { $0.vni == vni }.map(\.inner) }

        // max_packets: exactly the first 100 of its flow.
        #expect(of(12) == Array(flows[1].prefix(100)), "counted: \(of(12).count) copies")
        // max_bytes: the longest prefix within 20000 frame bytes.
        var total = 0, fit = 0
        for f in flows[2] { if total + f.count > 20000 { break }; total += f.count; fit += 1 }
        #expect(of(13) == Array(flows[2].prefix(fit)), "sized: \(of(13).count) copies, \(fit) fit in 20000 bytes (\(total))")
        // duration: every frame sent well inside the window, none well after.
        let stop = m.value("traffic_mirror_session_stop_time_seconds", ["session": "timed"]) ?? 0
        let wireTimes = try sent.frames().filter { $0.bytes.count > 37 && $0.bytes[37] == 0xE9 } // dport 1001
        let inside = wireTimes.filter { Double($0.timestampNanoseconds) / 1e9 < stop - 0.002 }.map(\.bytes)
        let after = wireTimes.filter { Double($0.timestampNanoseconds) / 1e9 > stop + 0.002 }.map(\.bytes)
        let timed = of(11)
        // Enough on both sides that the membership checks mean something
        // (about 200 and 100 on a quiet host; a loaded CI host sends fewer).
        #expect(inside.count > 50 && after.count > 50, "the window closes mid-run: \(inside.count) before, \(after.count) after")
        #expect(Array(timed.prefix(inside.count)) == inside && timed.allSatisfy { !after.contains($0) },
                "timed: \(timed.count) copies, all \(inside.count) sent inside the window, none of the \(after.count) after")
        // start_at and stop_at: exactly the frames sent inside the window.
        let flow4 = try sent.frames().filter { $0.bytes.count > 37 && $0.bytes[37] == 0xEC } // dport 1004
        let open = opens.timeIntervalSince1970, close = closes.timeIntervalSince1970
        func at(_ f: PcapReader.Frame) -> Double { Double(f.timestampNanoseconds) / 1e9 }
        let within = flow4.filter { at($0) > open + 0.002 && at($0) < close - 0.002 }.map(\.bytes)
        let outside = flow4.filter { at($0) < open - 0.002 || at($0) > close + 0.002 }.map(\.bytes)
        let windowed = of(14)
        #expect(within.count > 10 && outside.count > 100 && within.allSatisfy { windowed.contains($0) }
                && windowed.allSatisfy { !outside.contains($0) },
                "window: \(windowed.count) copies, all \(within.count) sent inside, none of the \(outside.count) outside")
        for (s, reason) in [("timed", "duration"), ("counted", "max_packets"), ("sized", "max_bytes"), ("window", "stop_at")] {
            #expect(m.value("traffic_mirror_session_state", ["session": s, "state": "ended"]) == 1, "\(s) ended")
            #expect(m.value("traffic_mirror_session_end_info", ["session": s, "reason": reason]) == 1, "\(s) ended by \(reason)")
        }
        MetricsEndToEndTests.checkInvariants(m, sessions: ["timed", "counted", "sized", "window"], interfaces: ["m0"])
        #expect(agent.stderr.contains("session ended") && agent.stderr.contains("max_packets"), "the log says which limit")

        // A reload: unchanged sessions keep what they used (still ended), a
        // changed one starts again.
        let reloads = agent.stderr.components(separatedBy: "reloaded").count
        _ = try topo.writeConfig(config(counted: 50))
        #expect(agent.waitForStderr(timeout: 10) { $0.components(separatedBy: "reloaded").count > reloads }, "reloaded: \(agent.stderr)")
        let before = copies.count
        flows = [[], [], [], []]
        try round(100, 2)
        try wire.settle()
        let later = Array(try wire.frames().compactMap { Self.vxlan($0.bytes) }.dropFirst(before))
        #expect(later.filter { $0.vni == 12 }.map(\.inner) == Array(flows[1].prefix(50)), "the changed session mirrors 50 anew")
        #expect(later.filter { $0.vni != 12 }.isEmpty, "the unchanged ones stay ended: \(later.filter { $0.vni != 12 }.count) copies")
        m = try MetricsEndToEndTests.scrape(topo)
        MetricsEndToEndTests.checkInvariants(m, sessions: ["timed", "counted", "sized", "window"], interfaces: ["m0"])
        #expect(agent.stop() == 0)
        _ = try sent.stop()
        _ = try wire.stop()
    }

    @Test("quick mode: --count 50 mirrors 50 packets, says why it stopped and exits 0 by itself")
    func quickCount() throws {
        let topo = try Topology()
        let lab = topo.lab
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        // The agent stops right after its 50th copy: the target's neighbour
        // must be known by then, or the last copies wait on ARP in a kernel
        // queue the exit does not wait for.
        _ = try lab.exec(topo.mon, ["ping", "-c", "1", "-W", "2", "198.18.1.2"])
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "ingress", "--count", "50"])
        // What m0 receives, ARP included: the unfiltered session counts it all.
        let sent = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "out"])
        let socket = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        for i in 0..<200 where agent.isRunning {
            try socket.send(try Self.frame(lab, topo, Frames.udp4(sport: 6000, dport: 7, payload: [UInt8(i)])))
            usleep(2000)
        }
        _ = agent.waitForStderr(timeout: 10) { _ in false }
        #expect(!agent.isRunning, "the agent stopped by itself")
        #expect(agent.stop() == 0, "exit status 0: \(agent.stderr)")
        #expect(agent.stderr.contains("session ended") && agent.stderr.contains("max_packets"))
        // Past tcpdump's one-second block timeout: the last copies of a
        // burst are in a block it has not handed over yet.
        try wire.settle()
        let copies = try wire.stop().compactMap { Self.vxlan($0.bytes) }.map(\.inner)
        let frames = try sent.stop().map(\.bytes)
        // Copies of different flows (an ARP reply, the UDP frames) may pass each other.
        #expect(copies.count == 50, "\(copies.count) copies")
        try MirrorEndToEndTests.expectSameFrames(copies, Array(frames.prefix(50)), "the first 50 frames m0 received")
    }

    /// End of the headers up to and including the transport's, by hand.
    static func headersEnd(_ f: [UInt8]) -> Int? {
        var o = 12
        var type = UInt16(f[o]) << 8 | UInt16(f[o + 1])
        while type == 0x8100 || type == 0x88A8 {
            o += 4
            type = UInt16(f[o]) << 8 | UInt16(f[o + 1])
        }
        o += 2
        var proto: UInt8
        if type == 0x0800 {
            proto = f[o + 9]
            o += Int(f[o] & 0xF) * 4
        } else if type == 0x86DD {
            proto = f[o + 6]
            o += 40
            while [0, 43, 60].contains(proto) {
                proto = f[o]
                o += (Int(f[o + 1]) + 1) * 8
            }
        } else {
            return nil
        }
        switch proto {
        case 6: return o + Int(f[o + 12] >> 4) * 4
        case 17, 1, 58: return o + 8
        default: return nil
        }
    }

    @Test("packet_length after l4 + 16: TCP, UDP, ICMP, IPv6 with extension headers, VLAN-tagged, non-IP; mask: only the masked bytes change and checksums verify")
    func sliceAndMask() throws {
        let topo = try Topology()
        let lab = topo.lab
        let payload = (0..<600).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        let originals = try [
            Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .tcp(sport: 1, dport: 80, seq: 9, flags: 0x18, payload: payload))),
            Frames.udp4(sport: 2, dport: 53, payload: payload),
            Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .icmpEcho(id: 3, seq: 4, payload: payload))),
            Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(transport: .tcp(sport: 5, dport: 443, seq: 1, flags: 0x10, payload: payload),
                                                                    extensions: [.hopByHop(), .destination(2)])),
            Frames.udp4(sport: 6, dport: 123, payload: payload, vlans: [.init(tci: 42)]),
            Frames.ethernet(etherType: 0x88B5, payload: payload), // not IP: the fallback
        ].map { try Self.frame(lab, topo, $0) }

        func run(_ session: String, _ frames: [[UInt8]]) throws -> [[UInt8]] {
            let config = "targets:\n  t: {address: 198.18.1.2}\nsessions:\n  - {name: s, interfaces: [m0], target: t, number: 1, direction: ingress, \(session)}\n"
            let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
            let agent = try topo.startAgent(["--config", try topo.writeConfig(config)])
            let socket = try RawSocket(lab: lab, ns: topo.src, device: "s0")
            for f in frames { try socket.send(f); usleep(5000) }
            _ = try wire.waitFor(count: frames.count, timeout: 10)
            try wire.settle()
            #expect(agent.stop() == 0)
            return try wire.stop().compactMap { Self.vxlan($0.bytes)?.inner }.filter { c in frames.contains { $0.starts(with: c.prefix(40)) } }
        }

        let sliced = try run("packet_length: {after: l4, bytes: 16}", originals)
        #expect(sliced.count == originals.count, "\(sliced.count) copies")
        for (copy, original) in zip(sliced, originals) {
            let want = Self.headersEnd(original).map { $0 + 16 } ?? 64 + 16
            #expect(copy == Array(original.prefix(want)), "a copy of \(copy.count) bytes, want the first \(want) of \(original.count)")
        }

        // Mask 8 bytes from 4 after the UDP header with 0xAA.
        let udp = try (0..<5).map { i in try Self.frame(lab, topo, Frames.udp4(sport: UInt16(7000 + i), dport: 9999, payload: payload)) }
        let masked = try run("mask: {after: l4, offset: 4, bytes: 8, pattern: 0xAA}", udp)
        #expect(masked.count == udp.count)
        for (copy, original) in zip(masked, udp) {
            let start = 14 + 20 + 8 + 4
            var want = original
            for i in start..<(start + 8) { want[i] = 0xAA }
            want[40] = copy.count > 41 ? copy[40] : 0 // the checksum is checked below
            want[41] = copy.count > 41 ? copy[41] : 0
            #expect(copy == want, "only the masked bytes (and the checksum) differ")
            // The UDP checksum of the masked copy verifies, by hand.
            var sum = 0
            func add(_ b: [UInt8]) { for i in stride(from: 0, to: b.count, by: 2) { sum += Int(b[i]) << 8 | (i + 1 < b.count ? Int(b[i + 1]) : 0) } }
            let l4 = Array(copy[34...])
            add(Array(copy[26..<34])); sum += 17 + l4.count
            add(l4)
            while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
            #expect(sum == 0xFFFF, "the masked copy's UDP checksum verifies")
        }
    }

    @Test("deduplication: a packet routed between two mirrored interfaces arrives once, duplicates counted; without it twice; per session; before max_packets counts")
    func deduplication() throws {
        let topo = try Topology()
        let lab = topo.lab
        // a (198.18.10.2) -- ra:mon:rb -- b (198.18.11.2), mon forwarding.
        let a = try lab.namespace("a"), b = try lab.namespace("b")
        try lab.veth(a, "a0", topo.mon, "ra")
        try lab.veth(b, "b0", topo.mon, "rb")
        try lab.ip(a, "addr", "add", "198.18.10.2/24", "dev", "a0")
        try lab.ip(b, "addr", "add", "198.18.11.2/24", "dev", "b0")
        try lab.ip(topo.mon, "addr", "add", "198.18.10.1/24", "dev", "ra")
        try lab.ip(topo.mon, "addr", "add", "198.18.11.1/24", "dev", "rb")
        try lab.ip(a, "route", "add", "default", "via", "198.18.10.1")
        try lab.ip(b, "route", "add", "default", "via", "198.18.11.1")
        _ = try lab.exec(topo.mon, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _ = try lab.exec(a, ["ping", "-c", "1", "-W", "2", "198.18.11.2"])

        func run(dedup: Bool) throws -> (copies: [[UInt8]], vnis: [UInt32], times: [UInt64], metrics: Exposition) {
            try run("  - {name: s, interfaces: [ra, rb], target: t, filter: udp, number: 1\(dedup ? ", deduplicate: true" : "")}\n")
        }
        func run(_ sessions: String) throws -> (copies: [[UInt8]], vnis: [UInt32], times: [UInt64], metrics: Exposition) {
            let config = """
            targets:
              t: {address: 198.18.1.2, encapsulation: geneve, geneve_origin: true}
            filters:
              udp: {ingress: [{rule: 1, action: accept, protocol: udp}], egress: [{rule: 1, action: accept, protocol: udp}]}
            sessions:

            """ + sessions
            let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "6081"])
            let agent = try topo.startAgent(["--config", try topo.writeConfig(config)])
            _ = try lab.exec(a, ["python3", "-c", """
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(500):
                s.sendto(b'%05d' % i + b'x' * 100, ('198.18.11.2', 9))
                time.sleep(0.001)
            """])
            try wire.settle()
            let m = try MetricsEndToEndTests.scrape(topo)
            #expect(agent.stop() == 0)
            let datagrams = try wire.stop().map(\.bytes).filter { $0.count > 80 }
            // GENEVE with the origin option: inner frame after 14+20+8+32.
            let inner = datagrams.map { Array($0[74...]) }
            let times = datagrams.map { d in (12..<20).reduce(UInt64(0)) { $0 << 8 | UInt64(d[42 + $1]) } }
            let vnis = datagrams.map { d in UInt32(d[46]) << 16 | UInt32(d[47]) << 8 | UInt32(d[48]) }
            return (inner, vnis, times, m)
        }
        let without = try run(dedup: false)
        let with = try run(dedup: true)
        // Key each packet by its IP ID and payload: TTL and MACs differ between the two sightings.
        func key(_ f: [UInt8]) -> [UInt8] { Array(f[18..<20]) + Array(f[42...]) }
        let withoutKeys = Dictionary(grouping: without.copies.indices, by: { key(without.copies[$0]) })
        #expect(without.copies.count == 1000 && withoutKeys.count == 500 && withoutKeys.values.allSatisfy { $0.count == 2 },
                "without deduplication every packet twice (ingress ra, egress rb): \(without.copies.count)")
        #expect(with.copies.count == 500 && Set(with.copies.map(key)).count == 500, "with it once each: \(with.copies.count)")
        #expect(with.copies.allSatisfy { $0[22] == 64 }, "the first sighting goes: the TTL before routing")
        let duplicates = with.metrics.value("traffic_mirror_dropped_packets_total", ["session": "s", "reason": "duplicate"]) ?? -1
        #expect(duplicates == Double(without.copies.count - with.copies.count), "duplicates counted: \(duplicates)")
        MetricsEndToEndTests.checkInvariants(with.metrics, sessions: ["s"], interfaces: ["ra", "rb"])
        // How far apart the two sightings are: what the default window must cover.
        let gaps = withoutKeys.values.map { ix in ix.map { without.times[$0] } }.map { $0.max()! - $0.min()! }.sorted()
        print("dedup: the two sightings of a routed packet are p50 \(gaps[gaps.count / 2]) ns, p99 \(gaps[gaps.count * 99 / 100]) ns, max \(gaps.last!) ns apart")
        #expect(gaps.last! < 1_000_000, "both sightings within the default 1 ms window")

        // Per session: one session's sighting on ra never holds back
        // another session's on rb.
        let two = try run("""
          - {name: s, interfaces: [ra], target: t, filter: udp, number: 1, vni: 1, deduplicate: true}
          - {name: s2, interfaces: [rb], target: t, filter: udp, number: 2, vni: 2, deduplicate: true}

        """)
        #expect(two.vnis.filter { $0 == 1 }.count == 500 && two.vnis.filter { $0 == 2 }.count == 500,
                "each session mirrors all 500: \(two.vnis.filter { $0 == 1 }.count) and \(two.vnis.filter { $0 == 2 }.count)")
        // Bounded: the duplicates do not use up max_packets.
        let bounded = try run("  - {name: s, interfaces: [ra, rb], target: t, filter: udp, number: 1, deduplicate: true, max_packets: 300}\n")
        #expect(bounded.copies.count == 300 && Set(bounded.copies.map(key)).count == 300,
                "300 distinct packets mirrored: \(bounded.copies.count), \(Set(bounded.copies.map(key)).count) distinct")
        #expect(bounded.metrics.value("traffic_mirror_dropped_packets_total", ["session": "s", "reason": "duplicate"]) == 300,
                "the 300 mirrored packets' second sightings held back")
        MetricsEndToEndTests.checkInvariants(bounded.metrics, sessions: ["s"], interfaces: ["ra", "rb"])
    }
}

import Foundation
import MirrorCore
import MirrorTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Sources that come and go: interface patterns, the netlink link monitor,
/// interfaces recreated under their names (docs/operations.md).
@Suite("Interface patterns and hot-plug end to end", .serialized)
struct SourcesEndToEndTests {
    /// Lines of the agent's text log that carry `message` for `interface`.
    static func count(_ log: String, _ message: String, _ interface: String) -> Int {
        log.split(separator: "\n").filter { $0.contains(" INFO \(message) ") && $0.hasSuffix("interface=\(interface)") }.count
    }

    @Test("a pattern that matches nothing waits; 100 interfaces appearing are attached within 1 s and detached when they go; accounting exact across recreations")
    func hotPlug() throws {
        let topo = try Topology()
        let lab = topo.lab
        let port = MetricsEndToEndTests.port
        try lab.exec(topo.mon, ["ping", "-c", "1", "198.18.1.2"])
        let agent = try topo.startAgent(["--interface", "pd*", "--direction", "ingress", "--target", "198.18.1.2",
                                         "--metrics-address", "127.0.0.1:\(port)"])
        #expect(agent.waitForStderr(timeout: 10) { $0.contains("waiting for an interface to match interface=pd*") }, "\(agent.stderr)")
        let health = try HTTP.get(lab: lab, ns: topo.mon, port: port, path: "/healthz")
        #expect(health.status == 200 && health.body.contains("waiting: pd* matches no interface yet"), "\(health.body)")
        var m = try MetricsEndToEndTests.scrape(topo)
        #expect(m.value("traffic_mirror_interface_pattern_matches", ["pattern": "pd*"]) == 0)
        #expect(m.all("traffic_mirror_hook_info").isEmpty)

        // The copies at the target, by the inner UDP destination port.
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let rounds = 100, trafficEvery = 10, datagrams = 50
        var attach = [Double](), detach = [Double]()
        for i in 0..<rounds {
            // pd0 in the monitored namespace, its peer in the source one.
            var t = Date()
            try lab.exec(topo.mon, ["ip", "link", "add", "pd0", "type", "veth", "peer", "name", "pq0", "netns", topo.src])
            while Self.count(agent.stderr, "attached", "pd0") <= i && Date().timeIntervalSince(t) < 5 { usleep(1000) }
            attach.append(Date().timeIntervalSince(t))
            if i % trafficEvery == 0 {
                try lab.exec(topo.mon, ["ip", "addr", "add", "198.18.5.1/30", "dev", "pd0"])
                try lab.exec(topo.mon, ["ip", "link", "set", "pd0", "up"])
                try lab.exec(topo.src, ["ip", "addr", "add", "198.18.5.2/30", "dev", "pq0"])
                try lab.exec(topo.src, ["ip", "link", "set", "pq0", "up"])
                try lab.exec(topo.src, ["python3", "-c", """
                    import socket, time
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    for i in range(\(datagrams)): s.sendto(b"h" * 100, ("198.18.5.1", 7777))
                    time.sleep(0.2)
                    """])
            }
            t = Date()
            try lab.exec(topo.mon, ["ip", "link", "del", "pd0"])
            while Self.count(agent.stderr, "detached", "pd0") <= i && Date().timeIntervalSince(t) < 5 { usleep(1000) }
            detach.append(Date().timeIntervalSince(t))
        }
        try wire.settle()
        let copies = try wire.frames().filter { f in
            // Outer Ethernet, IPv4, UDP, VXLAN (50 bytes); inner Ethernet,
            // IPv4 (protocol at 73), UDP (destination port at 86).
            f.bytes.count >= 88 && f.bytes[73] == 17 && Int(f.bytes[86]) << 8 | Int(f.bytes[87]) == 7777
        }.count
        m = try MetricsEndToEndTests.scrape(topo)
        let log = agent.stderr
        #expect(agent.stop() == 0)

        let a = attach.sorted(), d = detach.sorted()
        let p50 = a[rounds / 2], p99 = a[rounds * 99 / 100]
        print("hot-plug: attach p50 \(String(format: "%.1f", p50 * 1000)) ms, p99 \(String(format: "%.1f", p99 * 1000)) ms, max \(String(format: "%.1f", a.last! * 1000)) ms; detach p50 \(String(format: "%.1f", d[rounds / 2] * 1000)) ms, p99 \(String(format: "%.1f", d[rounds * 99 / 100] * 1000)) ms")
        #expect(p99 < 1.0, "attach p99 \(p99) s")
        #expect(d[rounds * 99 / 100] < 2.0, "detach p99 \(d[rounds * 99 / 100]) s")
        #expect(Self.count(log, "attached", "pd0") == rounds && Self.count(log, "detached", "pd0") == rounds, "\(log.suffix(2000))")
        #expect(m.value("traffic_mirror_interface_events_total", ["event": "attached"]) == Double(rounds))
        #expect(m.value("traffic_mirror_interface_events_total", ["event": "detached"]) == Double(rounds))
        #expect(m.value("traffic_mirror_interface_events_total", ["event": "failed"]) == 0)
        #expect(m.all("traffic_mirror_hook_info").isEmpty, "pd0 is gone: no hook listed")
        // Every datagram of every incarnation of pd0 was mirrored once, and
        // pd0's counters add up over its incarnations.
        let expected = rounds / trafficEvery * datagrams
        #expect(copies == expected, "copies of the test datagrams at the target: \(copies), sent \(expected)")
        let selected = m.value("traffic_mirror_source_selected_packets_total", ["interface": "pd0", "direction": "ingress"]) ?? -1
        #expect(selected >= Double(expected), "pd0 ingress selected \(selected) over its incarnations")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["pd0"])
    }

    @Test("a filtered session on a pattern with 16 interfaces attached: one more is attached within 1 s (scopes share the session's tables; only the new scopes are written)")
    func hotPlugFiltered() throws {
        let topo = try Topology()
        let lab = topo.lab
        let batch = NSTemporaryDirectory() + "\(lab.prefix)-pods.batch"
        try (0..<16).map { "link add pe\($0) type veth peer name pf\($0)\n" }.joined().write(toFile: batch, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: batch) }
        try lab.exec(topo.mon, ["ip", "-batch", batch])
        let path = try topo.writeConfig("""
            targets: {t: {address: 198.18.1.2}}
            filters:
              web:
                ingress:
                  - {rule: 10, action: reject, protocol: tcp, destination_ports: 22}
                  - {rule: 20, action: accept, protocol: tcp, destination: 198.18.0.0/15, destination_ports: 80-443}
                egress:
                  - {rule: 10, action: accept, protocol: udp, source_ports: 53}
            sessions:
              - {name: pods, interfaces: ['pe*'], target: t, filter: web, number: 1}
            """)
        let agent = try topo.startAgent(["--config", path, "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"])
        var latencies = [Double]()
        for i in 0..<5 {
            let t = Date()
            try lab.exec(topo.mon, ["ip", "link", "add", "pe9\(i)", "type", "veth", "peer", "name", "pf9\(i)"])
            while Self.count(agent.stderr, "attached", "pe9\(i)") < 2 && Date().timeIntervalSince(t) < 10 { usleep(1000) }
            latencies.append(Date().timeIntervalSince(t))
        }
        // The log line comes as each hook attaches; the metrics once the
        // whole change is applied.
        var m = try MetricsEndToEndTests.scrape(topo)
        for _ in 0..<100 where m.all("traffic_mirror_hook_info").count < 2 * 21 {
            usleep(20_000)
            m = try MetricsEndToEndTests.scrape(topo)
        }
        #expect(agent.stop() == 0)
        print("hot-plug with a filter, 16 to 21 interfaces: attach " + latencies.map { String(format: "%.0f ms", $0 * 1000) }.joined(separator: ", "))
        #expect(latencies.allSatisfy { $0 < 1.0 }, "\(latencies)")
        #expect(m.all("traffic_mirror_hook_info").count == 2 * 21)
    }

    @Test("a literal interface missing at a reload waits instead of refusing the reload; it is attached when it appears")
    func missingAtReload() throws {
        let topo = try Topology()
        let lab = topo.lab
        func config(_ interfaces: String) -> String {
            "targets: {t: {address: 198.18.1.2}}\nsessions:\n  - {name: s, interfaces: [\(interfaces)], target: t, number: 1, direction: ingress}\n"
        }
        let path = try topo.writeConfig(config("m0"))
        let agent = try topo.startAgent(["--config", path, "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"])
        try config("m0, late0").write(toFile: path, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        #expect(agent.waitForStderr(timeout: 20) { $0.contains("reloaded") }, "\(agent.stderr)")
        #expect(agent.stderr.contains("waiting for an interface to match interface=late0"))
        var m = try MetricsEndToEndTests.scrape(topo)
        #expect(m.all("traffic_mirror_hook_info").map { $0.0["interface"] } == ["m0"])
        #expect(m.value("traffic_mirror_interface_pattern_matches", ["pattern": "late0"]) == 0)
        try lab.exec(topo.mon, ["ip", "link", "add", "late0", "type", "veth", "peer", "name", "late1"])
        #expect(agent.waitForStderr(timeout: 5) { Self.count($0, "attached", "late0") == 1 }, "\(agent.stderr)")
        // The log line comes as the hook is attached; readers see the new
        // state once the change has finished.
        let deadline = Date().addingTimeInterval(5)
        repeat {
            m = try MetricsEndToEndTests.scrape(topo)
        } while m.all("traffic_mirror_hook_info").count < 2 && Date() < deadline
        #expect(Set(m.all("traffic_mirror_hook_info").compactMap { $0.0["interface"] }) == ["m0", "late0"])
        #expect(m.value("traffic_mirror_interface_pattern_matches", ["pattern": "late0"]) == 1)
        #expect(agent.stop() == 0)
    }

    @Test("check shows what each pattern matches now")
    func checkShowsMatches() throws {
        let topo = try Topology()
        let path = try topo.writeConfig("targets: {t: {address: 198.18.1.2}}\nsessions:\n  - {name: s, interfaces: ['m*', 'zz?'], target: t, number: 1}\n")
        let r = try Shell.run(["ip", "netns", "exec", topo.mon, try trafficMirrorBinary(), "check", "--config", path], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("  m*: m0, m1"), "\(r.stdout)")
        #expect(r.stdout.contains("  zz?: matches nothing yet"), "\(r.stdout)")
    }
}

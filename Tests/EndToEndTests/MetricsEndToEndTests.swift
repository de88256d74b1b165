import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// The metrics endpoint, its accounting invariants, and a real Prometheus.
@Suite("Metrics end to end", .serialized)
struct MetricsEndToEndTests {
    static let port: UInt16 = 9781

    static func scrape(_ topo: Topology) throws -> Exposition {
        let r = try HTTP.get(lab: topo.lab, ns: topo.mon, port: port, path: "/metrics")
        guard r.status == 200 else { throw Failure("/metrics answered \(r.status)") }
        return Exposition(r.body)
    }

    /// The counters and the number of datagrams the target captured, read
    /// at a quiet moment (a late ARP probe is mirrored too): settle,
    /// scrape, count, until no datagram arrived in between.
    static func scrapeWhenQuiet(_ topo: Topology, _ wire: Capture) throws -> (Exposition, Int) {
        var m = Exposition("")
        var received = -1
        for _ in 0..<5 {
            try wire.settle()
            let before = try wire.frames().count
            m = try scrape(topo)
            received = try wire.frames().count
            if received == before { break }
        }
        return (m, received)
    }

    /// Both invariants of docs/metrics.md, exactly.
    static func checkInvariants(_ m: Exposition, sessions: [String], interfaces: [String],
                                sourceLocation: SourceLocation = #_sourceLocation) {
        var selectedAll = 0.0
        for s in sessions {
            let selected = Direction.allCases.map { m.value("traffic_mirror_selected_packets_total", ["session": s, "direction": $0.rawValue]) ?? -1 }.reduce(0, +)
            let sent = m.all("traffic_mirror_sent_packets_total").filter { $0.0["session"] == s }.map(\.1).reduce(0, +)
            let dropped = m.all("traffic_mirror_dropped_packets_total").filter { $0.0["session"] == s }.map(\.1).reduce(0, +)
            #expect(selected == sent + dropped, "session \(s): selected \(selected) = sent \(sent) + dropped \(dropped)", sourceLocation: sourceLocation)
            selectedAll += selected
        }
        var sourceSelectedAll = 0.0
        for i in interfaces {
            for d in Direction.allCases {
                let l = ["interface": i, "direction": d.rawValue]
                let seen = m.value("traffic_mirror_source_packets_total", l) ?? -1
                let selected = m.value("traffic_mirror_source_selected_packets_total", l) ?? -1
                let unselected = ["own_traffic", "no_match", "rejected"].map { m.value("traffic_mirror_unselected_packets_total", l.merging(["reason": $0]) { a, _ in a }) ?? -1 }.reduce(0, +)
                #expect(seen == selected + unselected, "\(i) \(d): seen \(seen) = selected \(selected) + unselected \(unselected)", sourceLocation: sourceLocation)
                sourceSelectedAll += selected
            }
        }
        #expect(selectedAll == sourceSelectedAll, "sessions' selected \(selectedAll) = interfaces' selected \(sourceSelectedAll)", sourceLocation: sourceLocation)
    }

    @Test("a ring overflowed on purpose (the target paced, so every metric is emitted): ring_full counted, both invariants exact, scraping changes nothing; promtool accepts the exposition")
    func ringOverflow() throws {
        let topo = try Topology()
        let lab = topo.lab
        let config = """
        targets:
          a: {address: 198.18.1.2, pacing: {packets_per_second: 1000000}}
        filters:
          udp:
            ingress:
              - {rule: 1, action: reject, protocol: udp, destination_ports: 9}
              - {rule: 2, action: accept, protocol: udp}
        sessions:
          - {name: udp, interfaces: [m0], target: a, filter: udp, number: 1, vni: 7, packet_length: 200}
          - {name: egress, interfaces: [m0], target: a, number: 2, vni: 8, direction: egress}
          - {name: closed, interfaces: [m0], target: a, number: 3, vni: 9, direction: egress, stop_at: '2020-01-01T00:00:00Z'}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config), "--ring-size", "64K", "--log-format", "json"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        func send(_ n: Int, dport: UInt16 = 7) throws {
            for i in 0..<n {
                var f = Frames.udp4(sport: UInt16(1000 + i % 500), dport: dport, payload: [UInt8](repeating: 1, count: 900))
                f.replaceSubrange(0..<12, with: m0 + s0)
                try fromSrc.send(f)
            }
        }
        // A scraper as busy as a dashboard, all along.
        let scraping = ManagedFlag()
        let scraper = Thread {
            while !scraping.isSet {
                _ = try? HTTP.get(lab: lab, ns: topo.mon, port: Self.port, path: "/metrics")
                usleep(50_000)
            }
        }
        scraper.start()
        try send(300)
        try send(50, dport: 9) // rejected
        // Stall the drain: the agent stops, the kernel keeps filling its
        // 64 KiB rings, and counts what does not fit.
        kill(agent.pid, SIGSTOP)
        try send(2000)
        kill(agent.pid, SIGCONT)
        try lab.exec(topo.mon, ["bash", "-c", "for i in $(seq 1 20); do echo x > /dev/udp/198.18.0.1/9; done"])
        let (m, received) = try Self.scrapeWhenQuiet(topo, wire)
        scraping.set()

        let ringFull = m.value("traffic_mirror_dropped_packets_total", ["session": "udp", "reason": "ring_full"]) ?? 0
        #expect(ringFull > 500, "the 64 KiB rings overflowed: \(ringFull) ring_full")
        #expect(m.value("traffic_mirror_unselected_packets_total", ["interface": "m0", "direction": "ingress", "reason": "rejected"]) == 50)
        #expect(m.value("traffic_mirror_truncated_packets_total", ["session": "udp", "reason": "packet_length"])! > 100)
        Self.checkInvariants(m, sessions: ["udp", "egress"], interfaces: ["m0"])
        let sent = m.all("traffic_mirror_sent_packets_total").map(\.1).reduce(0, +)
        _ = try wire.stop()
        #expect(Double(received) == sent, "what the target received (\(received)) is what was counted as sent (\(sent))")

        // docs/metrics.md describes exactly what is emitted; the dashboard
        // queries nothing that is not.
        let emitted = Set(m.samples.keys.map { String($0.prefix { $0 != "{" }) })
        func names(_ file: String) throws -> Set<String> {
            let text = try String(contentsOf: LifecycleEndToEndTests.repository.appendingPathComponent(file), encoding: .utf8)
            let re = try NSRegularExpression(pattern: "(traffic_mirror|process)_[a-z_]+")
            return Set(re.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { String(text[Range($0.range, in: text)!]) })
        }
        let documented = try names("docs/metrics.md")
        #expect(emitted.subtracting(documented).isEmpty, "emitted but not in docs/metrics.md: \(emitted.subtracting(documented).sorted())")
        #expect(documented.subtracting(emitted).isEmpty, "in docs/metrics.md but not emitted: \(documented.subtracting(emitted).sorted())")
        let dashboard = try names("deploy/grafana-dashboard.json")
        #expect(dashboard.subtracting(emitted).isEmpty, "the dashboard queries unknown metrics: \(dashboard.subtracting(emitted).sorted())")

        let check = try Shell.run(["promtool", "check", "metrics"], input: Data(try HTTP.get(lab: lab, ns: topo.mon, port: Self.port, path: "/metrics").body.utf8))
        #expect(check.ok, "promtool check metrics: \(check.stdout)\(check.stderr)")
        #expect(try HTTP.get(lab: lab, ns: topo.mon, port: Self.port, path: "/healthz").status == 200)
        #expect(agent.stop() == 0)
        // JSON logs, one object per line, with the events a collector wants.
        let events = agent.stderr.split(separator: "\n").compactMap { line -> String? in
            guard let d = line.data(using: .utf8), let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else { return nil }
            return o["message"] as? String
        }
        #expect(events.count == agent.stderr.split(separator: "\n").count, "every log line is a JSON object")
        for e in ["BPF program loaded", "attached", "mirroring", "stopping: detaching hooks and draining the rings", "detached", "stopped"] {
            #expect(events.contains(e), "log has \"\(e)\"")
        }
    }

    @Test("a real Prometheus scrapes the agent; its API returns the agent's counters")
    func prometheus() throws {
        let topo = try Topology()
        let lab = topo.lab
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2"])
        let dir = NSTemporaryDirectory() + "\(lab.prefix)-prometheus"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try """
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: traffic-mirror
            static_configs:
              - targets: ['127.0.0.1:\(Self.port)']
        """.write(toFile: dir + "/prometheus.yml", atomically: true, encoding: .utf8)
        let prom = try lab.start(topo.mon, ["prometheus", "--config.file=\(dir)/prometheus.yml", "--storage.tsdb.path=\(dir)/data",
                                            "--web.listen-address=127.0.0.1:9090"])
        #expect(prom.waitForStderr(timeout: 60) { $0.contains("Server is ready to receive web requests") }, "prometheus started: \(prom.stderr.suffix(500))")

        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        for i in 0..<500 { try fromSrc.send(Frames.udp4(sport: UInt16(i))) }
        // The agent sends within milliseconds (a drain interval, or an idle
        // sleep of up to 5 ms): read its count once the copies are out.
        var mine = -1.0
        for _ in 0..<50 {
            mine = try Self.scrape(topo).value("traffic_mirror_sent_packets_total", ["session": "default", "target": "default"]) ?? -1
            if mine >= 500 { break }
            usleep(100_000)
        }
        #expect(mine >= 500)
        // Prometheus scrapes every second; wait until it has the final value.
        var seen = -1.0
        for _ in 0..<60 {
            let r = try HTTP.get(lab: lab, ns: topo.mon, port: 9090,
                                 path: "/api/v1/query?query=traffic_mirror_sent_packets_total%7Bsession%3D%22default%22%7D")
            if let d = r.body.data(using: .utf8),
               let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
               let data = o["data"] as? [String: Any], let result = (data["result"] as? [[String: Any]])?.first,
               let value = result["value"] as? [Any], let text = value.last as? String, let v = Double(text) {
                seen = v
                if v == mine { break }
            }
            usleep(500_000)
        }
        #expect(seen == mine, "Prometheus read \(seen), the agent counted \(mine)")
        let up = try HTTP.get(lab: lab, ns: topo.mon, port: 9090, path: "/api/v1/query?query=up%7Bjob%3D%22traffic-mirror%22%7D").body
        #expect(up.contains("\"1\""), "the scrape target is up: \(up)")
        prom.stop()
        #expect(agent.stop() == 0)
    }

    @Test("a metrics address in use: exit 1 naming it, nothing attached")
    func addressInUse() throws {
        let topo = try Topology()
        let first = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "ingress"])
        let r = try Shell.run(["ip", "netns", "exec", topo.mon, try trafficMirrorBinary(), "run", "--interface", "m1",
                               "--target", "198.18.1.2"], timeout: 60)
        #expect(r.status == 1 && r.stderr.contains("cannot listen on 127.0.0.1:9781"), "\(r.stderr)")
        #expect(try topo.attachments(topo.mon, "m1").none)
        #expect(first.stop() == 0)
    }
}

/// A flag one thread sets and another polls.
final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

import Foundation
import MirrorCore
import MirrorTestSupport
import Testing

/// Days of uptime in miniature: traffic at 200 kpps, a reload every 10 s,
/// one endpoint of a group going away and coming back. TM_SOAK_SECONDS long
/// (60 in CI; scripts/soak runs 600 and more).
@Suite("Soak", .serialized)
struct SoakEndToEndTests {
    static var seconds: Int { ProcessInfo.processInfo.environment["TM_SOAK_SECONDS"].flatMap(Int.init) ?? 60 }

    struct Sample {
        var at: Double
        var rssKiB: Int
        var fds: Int
        var threads: Int
    }

    static func threads(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("Threads:") } ?? ""
        return Int(line.split(separator: "\t").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "") ?? -1
    }

    /// Least-squares slope of `y` over `x`.
    static func slope(_ x: [Double], _ y: [Double]) -> Double {
        let n = Double(x.count), mx = x.reduce(0, +) / n, my = y.reduce(0, +) / n
        let sxx = zip(x, x).map { ($0 - mx) * ($1 - mx) }.reduce(0, +)
        return sxx == 0 ? 0 : zip(x, y).map { ($0 - mx) * ($1 - my) }.reduce(0, +) / sxx
    }

    @Test("soak: 200 kpps, a reload every 10 s, one endpoint flapping: RSS, fds and threads flat, invariants exact")
    func soak() throws {
        let seconds = Self.seconds
        let topo = try Topology()
        let lab = topo.lab
        let second = try topo.addTarget(2)
        // The generator's frames reach m0 as redirected XDP frames, which a
        // veth takes only into a NAPI context: GRO on gives it one.
        try lab.exec(topo.mon, ["ethtool", "-K", "m0", "gro", "on"])
        let dir = NSTemporaryDirectory() + "\(lab.prefix)-soak"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = dir + "/bench.o"
        try Shell.check(["bash", LifecycleEndToEndTests.repository.appendingPathComponent("scripts/build-bpf").path, "--bench", object])
        let config = """
        targets:
          group:
            endpoints: [198.18.1.2, 198.18.2.2]
            health_check: {interval: 0.5, timeout: 0.4, unhealthy_threshold: 2, healthy_threshold: 2}
        sessions:
          - {name: all, interfaces: [m0], target: group, number: 1, vni: 42, direction: ingress}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config), "--no-watch-config"])
        let generator = try lab.start(topo.src, [try builtProduct("tm-bench"), "generate", "--object", object, "--interface", "s0",
                                                 "--dst-mac", try lab.mac(topo.mon, "m0").map { String(format: "%02x", $0) }.joined(separator: ":"),
                                                 "--src-mac", try lab.mac(topo.src, "s0").map { String(format: "%02x", $0) }.joined(separator: ":"),
                                                 "--rate", "200000", "--flows", "64", "--duration", "\(seconds)"])
        var samples = [Sample]()
        let start = Date()
        var tick = 0
        while Date().timeIntervalSince(start) < Double(seconds) {
            usleep(5_000_000)
            tick += 1
            // The second endpoint goes away for 5 s of every 20.
            try lab.ip(second, "link", "set", "t0", tick % 4 == 0 ? "down" : "up")
            if tick % 2 == 0 {
                kill(agent.pid, SIGHUP)
                let s = Sample(at: Date().timeIntervalSince(start), rssKiB: FaultsEndToEndTests.rssKiB(agent.pid),
                               fds: FaultsEndToEndTests.openFDs(agent.pid), threads: Self.threads(agent.pid))
                samples.append(s)
                print(String(format: "soak: %4.0f s  RSS %d KiB  fds %d  threads %d", s.at, s.rssKiB, s.fds, s.threads))
            }
        }
        try lab.ip(second, "link", "set", "t0", "up")
        _ = generator.waitForStderr(timeout: 30) { _ in false }
        usleep(2_000_000) // the rings drain, the health checks settle
        let m = try MetricsEndToEndTests.scrape(topo)
        MetricsEndToEndTests.checkInvariants(m, sessions: ["all"], interfaces: ["m0"])
        let sent = m.all("traffic_mirror_sent_packets_total").map(\.1).reduce(0, +)
        let selected = Direction.allCases.map { m.value("traffic_mirror_selected_packets_total", ["session": "all", "direction": $0.rawValue]) ?? 0 }.reduce(0, +)
        let reloads = agent.stderr.components(separatedBy: "reloaded").count - 1
        let downs = agent.stderr.components(separatedBy: "endpoint down").count - 1
        // After the first minute's warm-up (ring pages touched, caches filled).
        let steady = samples.filter { $0.at >= min(30, Double(seconds) / 2) }
        let rssSlope = Self.slope(steady.map(\.at), steady.map { Double($0.rssKiB) }) * 60
        let fdSlope = Self.slope(steady.map(\.at), steady.map { Double($0.fds) }) * 60
        let threadSlope = Self.slope(steady.map(\.at), steady.map { Double($0.threads) }) * 60
        print(String(format: "soak: %d s, %.0f selected (%.0f pps), %.0f sent, %d reloads, %d endpoint downs; slopes per minute: RSS %.0f KiB, fds %.2f, threads %.2f; fds %d...%d, threads %d...%d",
                     seconds, selected, selected / Double(seconds), sent, reloads, downs, rssSlope, fdSlope, threadSlope,
                     samples.map(\.fds).min() ?? 0, samples.map(\.fds).max() ?? 0, samples.map(\.threads).min() ?? 0, samples.map(\.threads).max() ?? 0))
        #expect(selected > Double(seconds) * 100_000, "traffic at most half the rate lost before the hooks: \(selected); generator: \(generator.stdout) \(generator.stderr)")
        #expect(reloads >= seconds / 10 - 1, "\(reloads) reloads")
        #expect(downs >= max(1, seconds / 20 - 1), "the flapping endpoint was marked down \(downs) times")
        #expect(rssSlope < 2048, "RSS grows \(rssSlope) KiB/min")
        #expect((samples.map(\.fds).max() ?? 0) - (samples.map(\.fds).min() ?? 0) <= 2, "fds \(samples.map(\.fds))")
        // A worker of Swift's concurrency pool or the reload queue may come and go.
        #expect((samples.map(\.threads).max() ?? 0) - (samples.map(\.threads).min() ?? 0) <= 2, "threads \(samples.map(\.threads))")
        #expect(agent.stop() == 0)
    }
}

import Foundation
import MirrorCore
import MirrorFixtures
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
        func address(_ mon: String, _ src: String) throws {
            try lab.exec(topo.mon, ["ip", "addr", "add", "198.18.5.1/30", "dev", mon])
            try lab.exec(topo.mon, ["ip", "link", "set", mon, "up"])
            try lab.exec(topo.src, ["ip", "addr", "add", "198.18.5.2/30", "dev", src])
            try lab.exec(topo.src, ["ip", "link", "set", src, "up"])
        }
        // `count` datagrams to `port`, each with its sequence number.
        func send(_ port: Int, _ count: Int, from first: Int = 0) throws {
            try lab.exec(topo.src, ["python3", "-c", """
                import socket, struct, time
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(\(first), \(first + count)): s.sendto(struct.pack("!I", i) + b"h" * 96, ("198.18.5.1", \(port)))
                time.sleep(0.2)
                """])
        }
        // The agent's descriptors and resident memory, to see them not grow.
        func usage() -> (fds: Int, rss: Int) {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(agent.pid)/fd").count) ?? -1
            let status = (try? String(contentsOfFile: "/proc/\(agent.pid)/status", encoding: .utf8)) ?? ""
            let rss = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
                .flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? -1
            return (fds, rss)
        }
        var early = (fds: 0, rss: 0)
        var inFlightSent = 0
        for i in 0..<rounds {
            // pd0 in the monitored namespace, its peer in the source one.
            var t = Date()
            try lab.exec(topo.mon, ["ip", "link", "add", "pd0", "type", "veth", "peer", "name", "pq0", "netns", topo.src])
            while Self.count(agent.stderr, "attached", "pd0") <= i && Date().timeIntervalSince(t) < 5 { usleep(1000) }
            attach.append(Date().timeIntervalSince(t))
            if i % trafficEvery == 0 {
                try address("pd0", "pq0")
                try send(7777, datagrams)
            }
            var sender: Background?
            if i % trafficEvery == 5 {
                // Deleted with copies in flight: a sender that keeps going
                // (bounded) while the interface goes.
                try address("pd0", "pq0")
                // It says when it has begun (python's start takes long on a busy host).
                let first = i * 100_000
                let s = try lab.start(topo.src, ["python3", "-c", """
                    import socket, struct, sys, time
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    end = time.time() + 2
                    for i in range(\(first), \(first + 20_000)):
                        if time.time() > end: break
                        try: s.sendto(struct.pack("!I", i) + b"f" * 96, ("198.18.5.1", 7778))
                        except OSError: break
                        if i == \(first + 50):
                            sys.stderr.write("sending\\n"); sys.stderr.flush()
                        time.sleep(0.0001)
                    """])
                #expect(s.waitForStderr(timeout: 10) { $0.contains("sending") }, "the in-flight sender began")
                sender = s
            }
            t = Date()
            try lab.exec(topo.mon, ["ip", "link", "del", "pd0"])
            while Self.count(agent.stderr, "detached", "pd0") <= i && Date().timeIntervalSince(t) < 5 { usleep(1000) }
            detach.append(Date().timeIntervalSince(t))
            if let sender { _ = sender.stop(timeout: 5); inFlightSent += 1 }
            if i == 10 { early = usage() }
        }
        let late = usage()

        // Not matching, then renamed into the pattern: what crossed it
        // before is not mirrored, what crosses it after is. Then moved to
        // another namespace: detached.
        try lab.exec(topo.mon, ["ip", "link", "add", "px0", "type", "veth", "peer", "name", "pq0", "netns", topo.src])
        try address("px0", "pq0")
        try send(7779, 20)
        try lab.exec(topo.mon, ["ip", "link", "set", "px0", "down"])
        try lab.exec(topo.mon, ["ip", "link", "set", "px0", "name", "pd0"])
        try lab.exec(topo.mon, ["ip", "link", "set", "pd0", "up"])
        #expect(agent.waitForStderr(timeout: 5) { Self.count($0, "attached", "pd0") == rounds + 1 }, "renamed into the pattern")
        // The link back up (carrier) before the datagrams: a veth drops
        // what it is given while its peer is down, before any hook.
        try lab.exec(topo.src, ["ping", "-c", "1", "-w", "5", "198.18.5.1"])
        try send(7780, 20)
        try lab.exec(topo.mon, ["ip", "link", "set", "pd0", "netns", topo.tgt])
        #expect(agent.waitForStderr(timeout: 5) { Self.count($0, "detached", "pd0") == rounds + 1 }, "moved away")
        try lab.exec(topo.tgt, ["ip", "link", "del", "pd0"])

        _ = try wire.waitFor(count: rounds / trafficEvery * datagrams + 20, timeout: 20)
        try wire.settle()
        var byPort = [Int: [UInt32]]()
        for f in try wire.frames() {
            // Outer Ethernet, IPv4, UDP, VXLAN (50 bytes); inner Ethernet,
            // IPv4 (protocol at 73), UDP (destination port at 86, payload
            // and its sequence number at 92).
            let b = f.bytes
            guard b.count >= 96, b[73] == 17 else { continue }
            byPort[Int(b[86]) << 8 | Int(b[87]), default: []].append(UInt32(b[92]) << 24 | UInt32(b[93]) << 16 | UInt32(b[94]) << 8 | UInt32(b[95]))
        }
        m = try MetricsEndToEndTests.scrape(topo)
        let log = agent.stderr
        #expect(agent.stop() == 0)

        let a = attach.sorted(), d = detach.sorted()
        let p50 = a[rounds / 2], p99 = a[rounds * 99 / 100]
        print("hot-plug: attach p50 \(String(format: "%.1f", p50 * 1000)) ms, p99 \(String(format: "%.1f", p99 * 1000)) ms, max \(String(format: "%.1f", a.last! * 1000)) ms; detach p50 \(String(format: "%.1f", d[rounds / 2] * 1000)) ms, p99 \(String(format: "%.1f", d[rounds * 99 / 100] * 1000)) ms")
        print("hot-plug: agent after round 10 \(early.fds) fds, \(early.rss) KiB RSS; after round \(rounds) \(late.fds) fds, \(late.rss) KiB RSS; \(byPort[7778]?.count ?? 0) copies of datagrams in flight at \(inFlightSent) deletions")
        #expect(p99 < 1.0, "attach p99 \(p99) s")
        #expect(d[rounds * 99 / 100] < 2.0, "detach p99 \(d[rounds * 99 / 100]) s")
        #expect(late.fds == early.fds, "no descriptor growth: \(early.fds) → \(late.fds)")
        #expect(late.rss - early.rss < 16 * 1024, "no memory growth beyond noise: \(early.rss) → \(late.rss) KiB")
        #expect(Self.count(log, "attached", "pd0") == rounds + 1 && Self.count(log, "detached", "pd0") == rounds + 1, "\(log.suffix(2000))")
        #expect(m.value("traffic_mirror_interface_events_total", ["event": "attached"]) == Double(rounds + 1))
        #expect(m.value("traffic_mirror_interface_events_total", ["event": "detached"]) == Double(rounds + 1))
        #expect(m.value("traffic_mirror_interface_events_total", ["event": "failed"]) == 0)
        #expect(m.all("traffic_mirror_hook_info").isEmpty, "pd0 is gone: no hook listed")
        // Every datagram of every incarnation of pd0 was mirrored once;
        // those in flight at a deletion at most once; none from before the
        // rename; pd0's counters add up over its incarnations.
        let expected = rounds / trafficEvery * datagrams
        #expect(byPort[7777]?.count == expected && Set(byPort[7777] ?? []).count == datagrams,
                "copies of the test datagrams at the target: \(byPort[7777]?.count ?? 0), sent \(expected)")
        let inFlight = byPort[7778] ?? []
        #expect(!inFlight.isEmpty && Set(inFlight).count == inFlight.count, "in flight: \(inFlight.count) copies, \(Set(inFlight).count) distinct")
        #expect(byPort[7779] == nil, "nothing from before the rename")
        #expect(byPort[7780]?.count == 20)
        let selected = m.value("traffic_mirror_source_selected_packets_total", ["interface": "pd0", "direction": "ingress"]) ?? -1
        #expect(selected >= Double(expected + inFlight.count + 20), "pd0 ingress selected \(selected) over its incarnations")
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

    @Test("sources in other network namespaces (netns, netns_path, NS/IF): traffic inside each mirrored exactly, copies from the agent's namespace, one ifindex in two namespaces kept apart; a namespace that goes is detached, one that comes later attached")
    func namespaces() throws {
        let topo = try Topology()
        let lab = topo.lab
        let port = MetricsEndToEndTests.port
        // A pod: eth0 with its peer in another namespace. Its ifindex is one
        // an interface of the agent's own namespace (hx) has too.
        let pod = try lab.namespace("pod"), peer = try lab.namespace("peer"), proc = try lab.namespace("proc")
        try Shell.check(["ip", "-n", pod, "link", "add", "eth0", "index", "4242", "type", "veth", "peer", "name", "eth0", "netns", peer])
        try Shell.check(["ip", "-n", topo.mon, "link", "add", "hx", "index", "4242", "type", "veth", "peer", "name", "hy"])
        try Shell.check(["ip", "-n", proc, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", "netns", peer])
        for (ns, dev, addr) in [(pod, "eth0", "198.18.6.1/30"), (peer, "eth0", "198.18.6.2/30"),
                                (proc, "eth0", "198.18.6.5/30"), (peer, "eth1", "198.18.6.6/30")] {
            try lab.ip(ns, "addr", "add", addr, "dev", dev)
            try lab.ip(ns, "link", "set", dev, "up")
        }
        for dev in ["hx", "hy"] { try lab.ip(topo.mon, "link", "set", dev, "up") }
        // A container's process; its namespace by /proc/PID/ns/net.
        let sleeper = try lab.start(proc, ["sleep", "120"])
        let procPath = "/proc/\(sleeper.pid)/ns/net"
        let late = lab.prefix + "-late"
        let path = try topo.writeConfig("""
            targets: {a: {address: 198.18.1.2}}
            sessions:
              - {name: pod, interfaces: [{interface: eth0, netns: \(pod)}], target: a, number: 1, vni: 10, direction: egress}
              - {name: host, interfaces: [hx], target: a, number: 2, vni: 20, direction: ingress}
              - {name: proc, interfaces: [{interface: eth0, netns_path: \(procPath)}], target: a, number: 3, vni: 30, direction: egress}
              - {name: late, interfaces: ['\(late)/eth*'], target: a, number: 4, vni: 40, direction: egress}
            """)
        let agent = try topo.startAgent(["--config", path, "--metrics-address", "127.0.0.1:\(port)"])
        #expect(agent.waitForStderr(timeout: 10) { $0.contains("waiting for an interface to match interface=\(late)/eth*") }, "\(agent.stderr)")
        let health = try HTTP.get(lab: lab, ns: topo.mon, port: port, path: "/healthz")
        #expect(health.status == 200 && health.body.contains("waiting: network namespace \(late) cannot be entered"), "\(health.body)")
        #expect(Self.count(agent.stderr, "attached", "\(pod)/eth0") == 1 && Self.count(agent.stderr, "attached", "\(procPath)/eth0") == 1
                && Self.count(agent.stderr, "attached", "hx") == 1, "\(agent.stderr)")

        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        func udp(_ ns: String, to address: String, count: Int) throws {
            try lab.exec(ns, ["python3", "-c", """
                import socket
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(\(count)): s.sendto(b"n" * 64, ("\(address)", 7001))
                """])
        }
        try udp(pod, to: "198.18.6.2", count: 50)
        try udp(proc, to: "198.18.6.6", count: 40)
        let hy = try RawSocket(lab: lab, ns: topo.mon, device: "hy")
        let hx = try lab.mac(topo.mon, "hx")
        for _ in 0..<30 {
            var f = Frames.udp4(sport: 7000, dport: 7001, payload: [UInt8](repeating: 0x68, count: 64))
            f.replaceSubrange(0..<6, with: hx)
            try hy.send(f)
        }
        // The namespace that comes later, and its interface.
        let t = Date()
        try lab.namespace("late")
        try Shell.check(["ip", "-n", late, "link", "add", "eth0", "type", "veth", "peer", "name", "eth2", "netns", peer])
        try lab.ip(late, "addr", "add", "198.18.6.9/30", "dev", "eth0")
        try lab.ip(late, "link", "set", "eth0", "up")
        try lab.ip(peer, "addr", "add", "198.18.6.10/30", "dev", "eth2")
        try lab.ip(peer, "link", "set", "eth2", "up")
        #expect(agent.waitForStderr(timeout: 5) { Self.count($0, "attached", "\(late)/eth0") == 1 }, "\(agent.stderr)")
        let lateAttach = Date().timeIntervalSince(t)
        try udp(late, to: "198.18.6.10", count: 20)

        _ = try wire.waitFor(count: 140, timeout: 20)
        try wire.settle()
        var m = try MetricsEndToEndTests.scrape(topo)
        #expect(Set(m.all("traffic_mirror_hook_info").compactMap { $0.0["interface"] }) == ["\(pod)/eth0", "hx", "\(procPath)/eth0", "\(late)/eth0"])
        let healthy = try HTTP.get(lab: lab, ns: topo.mon, port: port, path: "/healthz")
        #expect(healthy.status == 200 && !healthy.body.contains("waiting"), "\(healthy.body)")
        for (interface, direction, n) in [("\(pod)/eth0", "egress", 50.0), ("hx", "ingress", 30), ("\(procPath)/eth0", "egress", 40), ("\(late)/eth0", "egress", 20)] {
            #expect((m.value("traffic_mirror_source_selected_packets_total", ["interface": interface, "direction": direction]) ?? 0) >= n, "\(interface)")
        }

        // The pod's namespace deleted, the container's process gone.
        try Shell.check(["ip", "netns", "del", pod])
        kill(sleeper.pid, SIGKILL)
        #expect(agent.waitForStderr(timeout: 5) {
            Self.count($0, "detached", "\(pod)/eth0") == 1 && Self.count($0, "detached", "\(procPath)/eth0") == 1
        }, "\(agent.stderr)")
        for _ in 0..<100 where m.all("traffic_mirror_hook_info").count != 2 {
            usleep(20_000)
            m = try MetricsEndToEndTests.scrape(topo)
        }
        #expect(Set(m.all("traffic_mirror_hook_info").compactMap { $0.0["interface"] }) == ["hx", "\(late)/eth0"])
        #expect(agent.stop() == 0)

        // Every copy left from the agent's namespace (nothing else has a
        // route to the target), each exactly once, from its own source.
        var byVNI = [UInt32: [String: Int]]()
        for o in try wire.stop().compactMap({ MirrorEndToEndTests.outer($0.bytes) }) {
            // Ethernet and IPv4 without options, as every frame here is.
            let f = o.inner
            guard f.count >= 38, f[12] == 0x08, f[13] == 0x00, f[23] == 17, Int(f[36]) << 8 | Int(f[37]) == 7001 else { continue }
            byVNI[o.vni, default: [:]][f[26..<30].map(String.init).joined(separator: "."), default: 0] += 1
        }
        print("network namespace sources: one created later attached in \(String(format: "%.0f ms", lateAttach * 1000))")
        #expect(byVNI == [10: ["198.18.6.1": 50], 20: ["198.18.0.1": 30], 30: ["198.18.6.5": 40], 40: ["198.18.6.9": 20]], "\(byVNI)")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["pod", "host", "proc", "late"], interfaces: ["\(pod)/eth0", "hx", "\(procPath)/eth0", "\(late)/eth0"])
        #expect(try topo.attachments(topo.mon, "hx").none)
        #expect(try topo.attachments(late, "eth0").none)
    }

    @Test("1,024 interfaces under one pattern: all attached, the last one's traffic mirrored exactly; a 1,025th is refused with the reason and the 1,024 stay; nothing left attached after stop")
    func thousandInterfaces() throws {
        let topo = try Topology()
        let lab = topo.lab
        let port = MetricsEndToEndTests.port
        let n = 1024
        let batch = NSTemporaryDirectory() + "\(lab.prefix)-many.batch"
        try (0..<n).map { "link add pa\($0) type veth peer name pb\($0) netns \(topo.src)\n" }.joined()
            .write(toFile: batch, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: batch) }
        try lab.exec(topo.mon, ["ip", "-batch", batch])
        try lab.ip(topo.mon, "addr", "add", "198.18.5.1/30", "dev", "pa\(n - 1)")
        try lab.ip(topo.mon, "link", "set", "pa\(n - 1)", "up")
        try lab.ip(topo.src, "addr", "add", "198.18.5.2/30", "dev", "pb\(n - 1)")
        try lab.ip(topo.src, "link", "set", "pb\(n - 1)", "up")
        // Ingress only: one tcx hook per interface (each waits for an RCU
        // grace period in the kernel; docs/benchmarks.md#many-interfaces).
        let t = Date()
        let agent = try topo.startAgent(["--interface", "pa*", "--direction", "ingress", "--target", "198.18.1.2",
                                         "--metrics-address", "127.0.0.1:\(port)"])
        let started = Date().timeIntervalSince(t)
        #expect(agent.stderr.components(separatedBy: " INFO attached ").count - 1 == n)

        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        // The new link carries traffic once the kernel has activated both
        // ends (link events of 1,024 new devices can take seconds on a
        // loaded host): until then ARP goes unanswered and the datagrams
        // queued behind it are dropped.
        var reachable = false
        for _ in 0..<20 where !reachable {
            reachable = (try? lab.exec(topo.src, ["ping", "-c", "1", "-W", "1", "198.18.5.1"])) != nil
        }
        #expect(reachable, "198.18.5.1 over pb\(n - 1)")
        try lab.exec(topo.src, ["python3", "-c", """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(100): s.sendto(b"m" * 64, ("198.18.5.1", 7777))
            """])
        _ = try wire.waitFor(count: 100, timeout: 20)
        try wire.settle()
        let copies = try wire.stop().compactMap { MirrorEndToEndTests.outer($0.bytes) }.filter {
            $0.inner.count >= 38 && $0.inner[23] == 17 && Int($0.inner[36]) << 8 | Int($0.inner[37]) == 7777
        }
        #expect(copies.count == 100)

        // One more matching interface: the change is refused as a whole.
        try lab.exec(topo.mon, ["ip", "link", "add", "pa\(n)", "type", "veth", "peer", "name", "pb\(n)"])
        #expect(agent.waitForStderr(timeout: 10) { $0.contains("the kernel holds \(n)") }, "\(agent.stderr.suffix(2000))")
        let health = try HTTP.get(lab: lab, ns: topo.mon, port: port, path: "/healthz")
        #expect(health.status == 503 && health.body.contains("the kernel holds \(n)"), "\(health.body)")
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect(m.all("traffic_mirror_hook_info").count == n)
        #expect(m.value("traffic_mirror_interface_events_total", ["event": "failed"]) == 1)
        // The datagrams, the pings and the ARP exchange before them.
        #expect((m.value("traffic_mirror_source_selected_packets_total", ["interface": "pa\(n - 1)", "direction": "ingress"]) ?? 0) >= 100)

        let s = Date()
        #expect(agent.stop(timeout: 120) == 0)
        let stopped = Date().timeIntervalSince(s)
        print(String(format: "%d interfaces: started in %.1f s, stopped in %.1f s", n, started, stopped))
        let left = try lab.exec(topo.mon, ["bpftool", "net", "show"])
        #expect(!left.contains("tm_tc_ingress"), "nothing attached after stop")
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
        // A name no longer configured has no series any more.
        try config("late0").write(toFile: path, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        #expect(agent.waitForStderr(timeout: 5) { Self.count($0, "detached", "m0") == 1 }, "\(agent.stderr)")
        repeat {
            m = try MetricsEndToEndTests.scrape(topo)
        } while m.all("traffic_mirror_hook_info").count > 1 && Date() < deadline.addingTimeInterval(5)
        #expect(m.all("traffic_mirror_interface_pattern_matches").map { $0.0["pattern"] } == ["late0"])
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

import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// Faults the agent meets on a host that runs for months: paths that
/// change under it, reload storms, kills under load, hosts without IPv6,
/// full disks for `receive`.
@Suite("Faults end to end", .serialized)
struct FaultsEndToEndTests {
    /// Outer IPv4 source, total length, fragment field and the inner frame
    /// of a VXLAN datagram, by byte offsets.
    static func outer(_ f: [UInt8]) -> (source: [UInt8], length: Int, fragment: UInt16, inner: [UInt8])? {
        guard f.count >= 50, f[12] == 0x08, f[13] == 0x00, f[23] == 17 else { return nil }
        return (Array(f[26..<30]), Int(f[16]) << 8 | Int(f[17]), UInt16(f[20]) << 8 | UInt16(f[21]), Array(f[50...]))
    }

    /// Sends frames of one flow from src for `seconds`, one every `gap` µs;
    /// `at` runs once after `after` seconds. Returns the frames.
    static func load(_ lab: Lab, _ topo: Topology, seconds: Double, gap: UInt32 = 1000, payload: Int = 200,
                     after: Double = .infinity, _ at: () throws -> Void = {}) throws -> [[UInt8]] {
        try withoutActuallyEscaping(at) { at in try load(lab, topo, seconds: seconds, gap: gap, payload: payload, events: [(after, at)]) }
    }

    /// The same with several events, each run once when its time comes.
    static func load(_ lab: Lab, _ topo: Topology, seconds: Double, gap: UInt32 = 1000, payload: Int = 200,
                     events: [(Double, () throws -> Void)]) throws -> [[UInt8]] {
        let socket = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        let mac = try lab.mac(topo.mon, "m0") + lab.mac(topo.src, "s0")
        var frames = [[UInt8]]()
        let start = Date()
        var next = 0
        var i = 0
        while Date().timeIntervalSince(start) < seconds {
            var f = Frames.udp4(sport: 4444, dport: 4445, payload: [UInt8(i & 0xFF), UInt8(i >> 8 & 0xFF)] + [UInt8](repeating: 1, count: payload))
            f.replaceSubrange(0..<12, with: mac)
            try socket.send(f)
            frames.append(f)
            i += 1
            if next < events.count && Date().timeIntervalSince(start) >= events[next].0 {
                try events[next].1()
                next += 1
            }
            usleep(gap)
        }
        return frames
    }

    @Test("the source address, the path MTU and then the link change under load (failover, old addresses removed): copies follow within 1 s, none with a stale source after, none fragmented")
    func pathChanges() throws {
        let topo = try Topology()
        let lab = topo.lab
        _ = try lab.exec(topo.mon, ["ping", "-c", "1", "-W", "2", "198.18.1.2"])
        _ = try lab.exec(topo.src, ["ping", "-c", "1", "-W", "2", "198.18.0.2"])
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "ingress"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        var changed = Date()
        // The route's preferred source becomes 198.18.1.3.
        _ = try Self.load(lab, topo, seconds: 3, after: 1) {
            try lab.ip(topo.mon, "addr", "add", "198.18.1.3/24", "dev", "m1")
            try lab.ip(topo.mon, "route", "replace", "198.18.1.0/24", "dev", "m1", "src", "198.18.1.3")
            changed = Date()
        }
        try wire.settle()
        var copies = try wire.frames().compactMap { d in Self.outer(d.bytes).map { (d.timestampNanoseconds, $0) } }
        let cut = UInt64(changed.timeIntervalSince1970 * 1e9)
        let first = copies.first { $0.1.source == [198, 18, 1, 3] }
        #expect(first != nil, "copies took the new source: \(agent.stderr)")
        if let first {
            let delay = Double(first.0 - cut) / 1e6
            print("faults: the new source in force \(String(format: "%.1f", delay)) ms after the route changed")
            #expect(delay < 1000, "within 1 s: \(delay) ms")
            let stale = copies.filter { $0.0 > first.0 && $0.1.source != [198, 18, 1, 3] }
            #expect(stale.isEmpty, "\(stale.count) copies with the stale source after the switch")
        }
        #expect(agent.stderr.contains("a target's path changed"))

        // The path MTU drops to 1400: frames of 1244 bytes fit whole before,
        // are cut to 1350 after (1400 - 50), counted, never fragmented.
        let before = copies.count
        changed = Date()
        _ = try Self.load(lab, topo, seconds: 3, payload: 1400, after: 1) {
            try lab.ip(topo.mon, "link", "set", "m1", "mtu", "1400")
            changed = Date()
        }
        try wire.settle()
        copies = Array(try wire.frames().compactMap { d in Self.outer(d.bytes).map { (d.timestampNanoseconds, $0) } }.dropFirst(before))
        let small = copies.first { $0.1.length <= 1400 }
        #expect(small != nil && copies.allSatisfy { $0.1.fragment & 0x3FFF == 0 }, "cut to fit, never fragmented")
        if let small {
            let delay = Double(small.0 - UInt64(changed.timeIntervalSince1970 * 1e9)) / 1e6
            print("faults: the new MTU in force \(String(format: "%.1f", delay)) ms after the link changed")
            #expect(delay < 1000, "within 1 s: \(delay) ms")
            #expect(copies.filter { $0.0 > small.0 }.allSatisfy { $0.1.length <= 1400 }, "no copy over 1400 bytes after")
        }
        // Failover: the target moves behind another link, and the old
        // link's addresses go (DHCP lost, a bond's other leg): the copies
        // leave by m9 with its address, none with an old one after.
        try lab.veth(topo.mon, "m9", topo.tgt, "t9")
        try lab.ip(topo.mon, "addr", "add", "198.18.9.1/24", "dev", "m9")
        try lab.ip(topo.tgt, "addr", "add", "198.18.9.2/24", "dev", "t9")
        try lab.exec(topo.mon, ["ethtool", "-K", "m9", "tx-udp-segmentation", "off", "tx-checksumming", "off"])
        let wire9 = try Capture(lab: lab, ns: topo.tgt, device: "t9", filter: ["-Q", "in", "udp", "port", "4789"])
        _ = try Self.load(lab, topo, seconds: 3, after: 1) {
            try lab.ip(topo.mon, "addr", "flush", "dev", "m1")
            try lab.ip(topo.mon, "route", "replace", "198.18.1.2/32", "dev", "m9", "src", "198.18.9.1")
            changed = Date()
        }
        try wire9.settle()
        let moved = try wire9.stop().compactMap { d in Self.outer(d.bytes).map { (d.timestampNanoseconds, $0) } }
        // Until the agent has the new link's path, the kernel routes what
        // it sends through the stack, and fills in the source.
        #expect(!moved.isEmpty && moved.allSatisfy { $0.1.source == [198, 18, 9, 1] },
                "copies by m9, all from 198.18.9.1: \(moved.count), sources \(Set(moved.map(\.1.source)))")
        if let first = moved.first {
            let delay = Double(first.0 - UInt64(changed.timeIntervalSince1970 * 1e9)) / 1e6
            print("faults: after failover to another link, copies on it \(String(format: "%.1f", delay)) ms after the route moved, "
                  + "\(moved.count) in all, every one from the new source")
            #expect(delay < 1000, "within 1 s: \(delay) ms")
        }
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect((m.value("traffic_mirror_truncated_packets_total", ["session": "default", "reason": "mtu"]) ?? 0) > 100)
        #expect((m.value("traffic_mirror_target_path_changes_total") ?? 0) >= 3)
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["m0"])
        #expect(agent.stop() == 0)
        _ = try wire.stop()
    }

    @Test("a router on the way has a smaller MTU (1000): its ICMP fragmentation-needed lowers the endpoint's path MTU within 1 s; copies cut to fit, never fragmented")
    func pathMTUFromICMP() throws {
        let topo = try Topology()
        let lab = topo.lab
        // mon m7 198.18.7.1 --- r0 198.18.7.2 [rtr] r1 198.18.8.1 --(mtu 1000)-- f0 198.18.8.2 [far]
        let rtr = try lab.namespace("rtr"), far = try lab.namespace("far")
        try lab.veth(topo.mon, "m7", rtr, "r0")
        try lab.veth(rtr, "r1", far, "f0", mtu: 1000)
        try lab.ip(topo.mon, "addr", "add", "198.18.7.1/24", "dev", "m7")
        try lab.ip(rtr, "addr", "add", "198.18.7.2/24", "dev", "r0")
        try lab.ip(rtr, "addr", "add", "198.18.8.1/24", "dev", "r1")
        try lab.ip(far, "addr", "add", "198.18.8.2/24", "dev", "f0")
        try lab.ip(topo.mon, "route", "add", "198.18.8.0/24", "via", "198.18.7.2")
        try lab.ip(far, "route", "add", "default", "via", "198.18.8.1")
        try lab.exec(rtr, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        try lab.exec(topo.mon, ["ethtool", "-K", "m7", "tx-udp-segmentation", "off", "tx-checksumming", "off"])
        _ = try lab.exec(topo.mon, ["ping", "-c", "1", "-W", "2", "198.18.8.2"])
        _ = try lab.exec(topo.src, ["ping", "-c", "1", "-W", "2", "198.18.0.2"])
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.8.2", "--direction", "ingress"])
        let wire = try Capture(lab: lab, ns: far, device: "f0", filter: ["-Q", "in", "udp", "port", "4789"])
        let start = Date()
        // Frames of 1444 bytes: their copies (1494) fit the first link, not the second.
        let frames = try Self.load(lab, topo, seconds: 2, payload: 1400)
        try wire.settle()
        let copies = try wire.frames().compactMap { d in Self.outer(d.bytes).map { (d.timestampNanoseconds, $0) } }
        // The load's frames (UDP); an ARP exchange on m0 may be mirrored too.
        let load = copies.filter { $0.1.inner.count > 23 && $0.1.inner[12] == 0x08 && $0.1.inner[13] == 0x00 && $0.1.inner[23] == 17 }
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect(agent.stop() == 0)
        _ = try wire.stop()
        let first = load.first
        #expect(first != nil, "copies get through: \(agent.stderr)")
        if let first {
            let delay = Double(first.0 - UInt64(start.timeIntervalSince1970 * 1e9)) / 1e6
            print("faults: path MTU 1000 learnt from ICMP, the first copy through \(String(format: "%.1f", delay)) ms after the traffic began; "
                  + "\(frames.count - load.count) of \(frames.count) copies lost before")
            #expect(delay < 1000, "within 1 s: \(delay) ms")
        }
        #expect(copies.allSatisfy { $0.1.length <= 1000 && $0.1.fragment == 0x4000 },
                "every copy fits 1000, DF set, not a fragment: lengths \(Set(copies.map(\.1.length))), fragment fields \(Set(copies.map(\.1.fragment)))")
        #expect(load.allSatisfy { c in c.1.inner.count == 964 && frames.contains { $0.starts(with: c.1.inner) } },
                "each copy is a sent frame's first 964 bytes (1000 less outer IPv4, UDP, VXLAN): \(Set(load.map(\.1.inner.count)))")
        #expect(load.count > frames.count * 8 / 10, "most copies arrive: \(load.count) of \(frames.count)")
        #expect(agent.stderr.contains("ICMP lowered a target's path MTU"), "\(agent.stderr)")
        #expect(m.all("traffic_mirror_endpoint_mtu_bytes").map(\.1) == [1000], "\(m.all("traffic_mirror_endpoint_mtu_bytes"))")
        #expect((m.value("traffic_mirror_truncated_packets_total", ["session": "default", "reason": "mtu"]) ?? 0) >= Double(load.count))
        #expect(m.all("traffic_mirror_endpoint_icmp_errors_total").map(\.1).reduce(0, +) >= 1)
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["m0"])
    }

    @Test("a target's host name comes to resolve elsewhere (/etc/hosts edited in place): copies follow within a --resolve-interval (the test allows two)")
    func dnsAnswerChanges() throws {
        let topo = try Topology()
        let lab = topo.lab
        let second = try topo.addTarget(2)
        try lab.addHost(topo.mon, "sensor.test", "198.18.1.2")
        _ = try lab.exec(topo.mon, ["ping", "-c", "1", "-W", "2", "198.18.2.2"])
        _ = try lab.exec(topo.src, ["ping", "-c", "1", "-W", "2", "198.18.0.2"])
        let agent = try topo.startAgent(["--interface", "m0", "--target", "sensor.test", "--direction", "ingress", "--resolve-interval", "1"])
        let wire = try Capture(lab: lab, ns: second, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        var changed = Date()
        _ = try Self.load(lab, topo, seconds: 4, after: 0.5) {
            // In place: `ip netns exec` bind-mounts this file over /etc/hosts.
            let path = "/etc/netns/\(topo.mon)/hosts"
            let hosts = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "198.18.1.2 sensor.test", with: "198.18.2.2 sensor.test")
            let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            try h.truncate(atOffset: 0)
            try h.write(contentsOf: Data(hosts.utf8))
            try h.close()
            changed = Date()
        }
        try wire.settle()
        let copies = try wire.stop()
        #expect(agent.stop() == 0)
        #expect(!copies.isEmpty, "copies reach the name's new address: \(agent.stderr)")
        if let first = copies.first {
            let delay = Double(first.timestampNanoseconds - UInt64(changed.timeIntervalSince1970 * 1e9)) / 1e6
            print("faults: a changed host-name answer in force \(String(format: "%.0f", delay)) ms after the edit (--resolve-interval 1)")
            #expect(delay < 2000, "within two intervals: \(delay) ms")
        }
        #expect(agent.stderr.contains("a target's path changed"))
    }

    static func openFDs(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    static func rssKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }

    @Test("100 SIGHUP reloads under traffic: every one reloads, invariants exact, no fd or memory growth")
    func reloadStorm() throws {
        let topo = try Topology()
        let lab = topo.lab
        _ = try lab.exec(topo.src, ["ping", "-c", "1", "-W", "2", "198.18.0.2"])
        let config = """
        targets:
          t: {address: 198.18.1.2}
        filters:
          udp: {ingress: [{rule: 1, action: accept, protocol: udp}]}
        sessions:
          - {name: udp, interfaces: [m0], target: t, filter: udp, number: 1, vni: 5}
          - {name: rest, interfaces: [m0], target: t, number: 2, vni: 6}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config), "--no-watch-config"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        var samples = [(fds: Int, rss: Int)]()
        let backlogBefore = Self.softnetDrops()
        // Traffic both ways throughout: a ping flood, bounded in time.
        let sender = try lab.start(topo.src, ["ping", "-f", "-q", "-w", "60", "198.18.0.2"])
        let started = Date()
        for i in 1...100 {
            kill(agent.pid, SIGHUP)
            _ = agent.waitForStderr(timeout: 10) { $0.components(separatedBy: "reloaded").count - 1 >= i }
            if i == 10 || i == 100 { samples.append((Self.openFDs(agent.pid), Self.rssKiB(agent.pid))) }
        }
        let elapsed = Date().timeIntervalSince(started)
        sender.stop(signal: SIGINT)
        try wire.settle()
        let (m, received) = try MetricsEndToEndTests.scrapeWhenQuiet(topo, wire)
        let reloads = agent.stderr.components(separatedBy: "reloaded").count - 1
        #expect(reloads == 100, "\(reloads) reloads")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["udp", "rest"], interfaces: ["m0"])
        let sentCopies = m.all("traffic_mirror_sent_packets_total").map(\.1).reduce(0, +)
        // Every copy counted sent reached t0: in the file, or dropped by
        // tcpdump's own ring on a loaded host (which tcpdump counts).
        // A backlog that overflows on the way in is counted by the kernel
        // too, for all namespaces (softnet_stat): an upper bound of what
        // was lost there.
        let (all, captureDrops) = try wire.stopCountingDrops()
        let backlogDrops = Self.softnetDrops() - backlogBefore
        let missing = sentCopies - Double(received + captureDrops)
        #expect(all.count == received, "no copy after the scrape")
        #expect(missing >= 0 && missing <= Double(backlogDrops) && received > 1000,
                "received \(received) + \(captureDrops) dropped by the capture, counted sent \(sentCopies), backlog drops \(backlogDrops)")
        #expect(Double(captureDrops) + missing < sentCopies / 100, "at least 99 % captured: \(captureDrops) + \(missing) not")
        print("faults: 100 reloads under traffic in \(String(format: "%.1f", elapsed)) s, \(received) copies (\(captureDrops) dropped by the capture); fds \(samples.map(\.fds)), RSS KiB \(samples.map(\.rss)) at reload 10 and 100")
        #expect(samples.count == 2 && samples[1].fds == samples[0].fds, "fds \(samples.map(\.fds))")
        #expect(samples.count == 2 && samples[1].rss - samples[0].rss < 4096, "RSS \(samples.map(\.rss)) KiB")
        #expect(agent.stop() == 0)
    }

    /// Frames the kernel dropped because a CPU's input backlog was full,
    /// all CPUs (the second column of /proc/net/softnet_stat).
    static func softnetDrops() -> Int {
        let text = (try? String(contentsOfFile: "/proc/net/softnet_stat", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count > 1 ? Int(f[1], radix: 16) : nil
        }.reduce(0, +)
    }

    @Test("20 SIGKILLs under load, each followed by a start: nothing stays attached, every start is clean")
    func killStorm() throws {
        let topo = try Topology()
        let lab = topo.lab
        let sender = try lab.start(topo.src, ["ping", "-f", "-w", "60", "198.18.0.2"])
        defer { sender.stop() }
        for i in 0..<20 {
            let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2"])
            #expect(!agent.stderr.contains("removed a tc filter") && !agent.stderr.contains("error"), "start \(i) is clean: \(agent.stderr)")
            #expect(try !topo.attachments(topo.mon, "m0").none, "start \(i) attached")
            usleep(100_000)
            kill(agent.pid, SIGKILL)
            _ = agent.stop()
            // tcx links belong to the process: the kernel removes them with it.
            var left = try topo.attachments(topo.mon, "m0")
            for _ in 0..<50 where !left.none { usleep(20_000); left = try topo.attachments(topo.mon, "m0") }
            #expect(left.none, "after kill \(i): \(left)")
        }
    }

    @Test("an IPv6 target on a host without IPv6 sockets fails at start, with the remedy, and attaches nothing")
    func noIPv6() throws {
        let topo = try Topology()
        let lab = topo.lab
        try topo.enableIPv6(link: 1, targetNS: topo.tgt)
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("faults/no_ipv6.c").path
        let library = NSTemporaryDirectory() + "\(lab.prefix)-no_ipv6.so"
        defer { try? FileManager.default.removeItem(atPath: library) }
        try Shell.check(["clang", "-shared", "-fPIC", "-O2", "-Wall", "-o", library, source, "-ldl"])
        let agent = try lab.start(topo.mon, ["env", "LD_PRELOAD=\(library)", try trafficMirrorBinary(), "run", "--interface", "m0",
                                             "--target", "[fd00:1::2]"])
        _ = agent.waitForStderr(timeout: 30) { _ in false }
        #expect(agent.stop() == 1, "exit 1: \(agent.stderr)")
        #expect(agent.stderr.contains("this host cannot send IPv6") && agent.stderr.contains("give the target an IPv4 address"),
                "\(agent.stderr)")
        #expect(try topo.attachments(topo.mon, "m0").none)
    }

    @Test("receive on a full disk: exits 1 naming the cause; the file it wrote stays readable, whole records only")
    func receiveFullDisk() throws {
        let topo = try Topology()
        let lab = topo.lab
        let dir = NSTemporaryDirectory() + "\(lab.prefix)-full"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Shell.check(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir])
        defer {
            _ = try? Shell.run(["umount", dir])
            try? FileManager.default.removeItem(atPath: dir)
        }
        try lab.ip(topo.tgt, "link", "del", "vx0")
        let receiver = try lab.start(topo.tgt, [try trafficMirrorBinary(), "receive", "--write", dir + "/full.pcap"])
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "ingress"])
        _ = try Self.load(lab, topo, seconds: 2, gap: 2000, payload: 700)
        _ = receiver.waitForStderr(timeout: 10) { _ in false }
        #expect(receiver.stop() == 1, "receive exits 1: \(receiver.stderr)")
        #expect(receiver.stderr.contains("the disk is full"), "\(receiver.stderr)")
        #expect(agent.stop() == 0)
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/full.pcap")))
        let frames = try PcapReader(bytes: bytes).frames
        #expect(frames.count > 100 && bytes.count <= 256 * 1024, "\(frames.count) whole frames in \(bytes.count) bytes")
        let tshark = try Shell.run(["tshark", "-r", dir + "/full.pcap", "-T", "fields", "-e", "frame.number"])
        #expect(tshark.ok && tshark.stdout.split(separator: "\n").count == frames.count, "tshark reads it: \(tshark.stderr)")
    }

    @Test("a target that is not there answers with ICMP: the errors are counted and logged; its namespace removed and restored under load: drops counted, copies back within 2 s")
    func deadAndRestoredTarget() throws {
        let topo = try Topology()
        let lab = topo.lab
        _ = try lab.exec(topo.src, ["ping", "-c", "1", "-W", "2", "198.18.0.2"])
        _ = try lab.exec(topo.mon, ["ping", "-c", "1", "-W", "2", "198.18.1.2"])
        // Nothing listens on 4790 there: the target's kernel answers port unreachable.
        var agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2:4790", "--direction", "ingress"])
        _ = try Self.load(lab, topo, seconds: 1)
        var m = try MetricsEndToEndTests.scrape(topo)
        let errors = m.value("traffic_mirror_endpoint_icmp_errors_total", ["target": "default", "endpoint": "198.18.1.2:4790"]) ?? 0
        #expect(errors > 0, "ICMP errors counted: \(errors)")
        #expect(agent.stderr.contains("an endpoint answers copies with ICMP errors") && agent.stderr.contains("port unreachable"), "\(agent.stderr)")
        #expect(agent.stop() == 0)

        // The target's namespace goes away under load, then comes back.
        agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "ingress"])
        var restored = Date()
        var wire: Capture?
        _ = try Self.load(lab, topo, seconds: 4, events: [
            // The target's namespace goes away (its veth with it), then a new one of that name.
            (1, { try Shell.check(["ip", "netns", "del", topo.tgt]) }),
            (2, {
                try Shell.check(["ip", "netns", "add", topo.tgt])
                try lab.ip(topo.tgt, "link", "set", "lo", "up")
                try lab.veth(topo.mon, "m1", topo.tgt, "t0")
                try lab.ip(topo.mon, "addr", "add", "198.18.1.1/24", "dev", "m1")
                try lab.ip(topo.tgt, "addr", "add", "198.18.1.2/24", "dev", "t0")
                restored = Date()
                // The capture starts on the new link once it is up; copies
                // before it are not seen, so the bound below is an upper one.
                wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
            }),
        ])
        try wire?.settle()
        let copies = try wire?.stop().compactMap { d in Self.outer(d.bytes).map { (d.timestampNanoseconds, $0.inner) } } ?? []
        #expect(copies.count > 500, "copies flow again: \(copies.count)")
        if let first = copies.first {
            let recovery = Double(first.0) / 1e9 - restored.timeIntervalSince1970
            print("faults: copies back at most \(String(format: "%.0f", recovery * 1000)) ms after the namespace was restored (the capture's own start included)")
            #expect(recovery < 2, "within 2 s: \(recovery) s")
        }
        m = try MetricsEndToEndTests.scrape(topo)
        let failed = (m.value("traffic_mirror_dropped_packets_total", ["session": "default", "reason": "send_failed"]) ?? 0)
            + (m.value("traffic_mirror_dropped_packets_total", ["session": "default", "reason": "backpressure"]) ?? 0)
        #expect(failed > 100, "the copies that could not go are counted: \(failed); \(agent.stderr)")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["m0"])
        #expect(agent.stop() == 0)
    }

    @Test("another XDP program on the interface: --ingress-hook xdp fails with the remedy and leaves it in place; no BPF filesystem and a small memlock limit change nothing")
    func hostLimits() throws {
        let topo = try Topology()
        let lab = topo.lab
        let dir = NSTemporaryDirectory() + "\(lab.prefix)-xdp"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "#include <linux/bpf.h>\n__attribute__((section(\"xdp\"), used)) int other(struct xdp_md *c) { return XDP_PASS; }\nchar _l[] __attribute__((section(\"license\"), used)) = \"GPL\";\n"
            .write(toFile: dir + "/other.c", atomically: true, encoding: .utf8)
        try Shell.check(["clang", "-O2", "-target", "bpf", "-I/usr/include/\(try Shell.check(["uname", "-m"]).trimmingCharacters(in: .whitespacesAndNewlines))-linux-gnu",
                         "-c", dir + "/other.c", "-o", dir + "/other.o"])
        try lab.ip(topo.mon, "link", "set", "dev", "m0", "xdpgeneric", "obj", dir + "/other.o", "sec", "xdp")
        let xdp = try lab.start(topo.mon, [try trafficMirrorBinary(), "run", "--interface", "m0", "--target", "198.18.1.2",
                                           "--ingress-hook", "xdp"])
        _ = xdp.waitForStderr(timeout: 30) { _ in false }
        #expect(xdp.stop() == 1 && xdp.stderr.contains("already has XDP program") && xdp.stderr.contains("--ingress-hook tc"), "\(xdp.stderr)")
        let link = try lab.exec(topo.mon, ["ip", "-d", "link", "show", "m0"])
        #expect(link.contains("xdpgeneric") && link.contains("other"), "the other program stays: \(link)")
        let a = try topo.attachments(topo.mon, "m0")
        #expect(a.tcxIngress == 0 && a.tcxEgress == 0, "nothing of ours attached: \(a)")
        try lab.ip(topo.mon, "link", "set", "dev", "m0", "xdpgeneric", "off")

        // No BPF filesystem (the agent pins nothing) and a memlock limit of
        // 64 KiB (BPF memory is charged to the memory cgroup on 5.11+).
        let agent = try lab.start(topo.mon, ["unshare", "-m", "sh", "-c",
                                             "mount -t tmpfs none /sys/fs/bpf && exec prlimit --memlock=65536:65536 \(try trafficMirrorBinary()) run --interface m0 --target 198.18.1.2 --direction ingress"])
        #expect(agent.waitForStderr(timeout: 60) { $0.contains("mirroring") }, "\(agent.stderr)")
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        _ = try lab.exec(topo.src, ["ping", "-c", "20", "-i", "0.01", "198.18.0.2"])
        try wire.settle()
        #expect(try wire.stop().count >= 20, "copies flow")
        #expect(agent.stop() == 0, "\(agent.stderr)")
    }
}

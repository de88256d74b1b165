import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// The host is left as it was (SPEC §6): the agent's copies are never
/// mirrored again whatever netfilter does to them, attaching changes nothing
/// about the devices, no UDP port is bound, and every way of stopping or
/// reloading leaves the host clean.
@Suite("Host safety end to end", .serialized)
struct HostSafetyEndToEndTests {
    /// Netfilter rules as kube-proxy, Calico and Cilium install them, in the
    /// monitored host, acting on the copies.
    enum Rules: String, CaseIterable, CustomTestStringConvertible {
        case kubeProxy, calicoCilium

        var testDescription: String { rawValue }

        /// iptables argument lists, in order.
        var commands: [[String]] {
            switch self {
            case .kubeProxy:
                // KUBE-POSTROUTING as kube-proxy writes it, and every locally
                // sent packet marked for masquerade as KUBE-MARK-MASQ does for
                // service traffic: the copies are SNATed with random ports,
                // and their mark is flipped.
                return [
                    ["-t", "nat", "-N", "KUBE-POSTROUTING"],
                    ["-t", "nat", "-N", "KUBE-MARK-MASQ"],
                    ["-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", "0x4000"],
                    ["-t", "nat", "-A", "OUTPUT", "-j", "KUBE-MARK-MASQ"],
                    ["-t", "mangle", "-A", "OUTPUT", "-j", "MARK", "--set-xmark", "0x4000/0x4000"],
                    ["-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"],
                    ["-t", "nat", "-A", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", "0x4000/0x4000", "-j", "RETURN"],
                    ["-t", "nat", "-A", "KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", "0x4000"],
                    ["-t", "nat", "-A", "KUBE-POSTROUTING", "-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
                     "-j", "MASQUERADE", "--random-fully"],
                ]
            case .calicoCilium:
                // Calico owns 0xffff0000 and rewrites it on every packet;
                // Cilium's magic marks live in 0x0f00. Both set here on every
                // packet the host sends, over whatever mark it had.
                return [
                    ["-t", "mangle", "-N", "cali-POSTROUTING"],
                    ["-t", "mangle", "-A", "POSTROUTING", "-j", "cali-POSTROUTING"],
                    ["-t", "mangle", "-A", "cali-POSTROUTING", "-j", "MARK", "--set-xmark", "0x0/0xffff0000"],
                    ["-t", "mangle", "-A", "cali-POSTROUTING", "-j", "MARK", "--set-xmark", "0x10000/0x10000"],
                    ["-t", "mangle", "-A", "OUTPUT", "-j", "MARK", "--set-xmark", "0xa00/0xf00"],
                    ["-t", "raw", "-A", "OUTPUT", "-j", "MARK", "--set-xmark", "0x40000/0xffffffff"],
                ]
            }
        }

        /// The chain whose rules act on every copy.
        var chain: (table: String, name: String) { self == .kubeProxy ? ("nat", "KUBE-POSTROUTING") : ("mangle", "cali-POSTROUTING") }

        /// The agent sets a mark of its own here, which the rules overwrite.
        var agentArguments: [String] { self == .calicoCilium ? ["--socket-mark", "0x100"] : [] }
    }

    /// Whether a frame captured on the target's link is one of the agent's
    /// copies: UDP from the monitored host to the target's VXLAN port.
    static func isCopy(_ f: [UInt8]) -> Bool {
        f.count >= 42 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 17
            && Array(f[30..<34]) == [198, 18, 1, 2] && Int(f[36]) << 8 | Int(f[37]) == 4789
    }

    @Test("netfilter rules of kube-proxy, Calico and Cilium on the interface the copies leave by, both directions: every frame mirrored once, no copy mirrored", arguments: Rules.allCases)
    func netfilterRules(_ rules: Rules) throws {
        let topo = try Topology(vni: 42)
        let lab = topo.lab
        for c in rules.commands { try lab.exec(topo.mon, ["iptables"] + c) }
        // Captured from the first frame the hooks can see: the agent resolves
        // the target's neighbour (ARP) before it attaches.
        let agent = try topo.startAgent(["--interface", "m1", "--target", "198.18.1.2", "--vni", "42"] + rules.agentArguments)
        let link = try Capture(lab: lab, ns: topo.tgt, device: "t0")

        try lab.exec(topo.mon, ["ping", "-c", "20", "-i", "0.05", "-W", "1", "198.18.1.2"])
        try lab.exec(topo.tgt, ["bash", "-c", "for i in $(seq 30); do echo datagram-$i > /dev/udp/198.18.1.1/9; done"])
        let (m, _) = try MetricsEndToEndTests.scrapeWhenQuiet(topo, link)
        let frames = try link.stop()
        #expect(agent.stop() == 0)

        let copies = frames.filter { Self.isCopy($0.bytes) }
        let production = frames.count - copies.count
        let sent = m.value("traffic_mirror_sent_packets_total", ["session": "default", "target": "default"]) ?? -1
        let own = m.value("traffic_mirror_unselected_packets_total", ["interface": "m1", "direction": "egress", "reason": "own_traffic"]) ?? -1
        #expect(production >= 70, "pings, replies and datagrams crossed m1: \(production)")
        #expect(Double(copies.count) == sent, "what left is what was counted as sent: \(copies.count) vs \(sent)")
        #expect(sent == Double(production), "each frame m1 carried mirrored once (\(production)), the copies never: \(sent) sent")
        #expect(own == sent, "every copy was seen at m1's egress and recognised: \(own) of \(sent)")
        // The rules did act on the copies (the masquerade or the marks).
        let listing = try lab.exec(topo.mon, ["iptables", "-t", rules.chain.table, "-L", rules.chain.name, "-v", "-x", "-n"])
        let hits = listing.split(separator: "\n").dropFirst(2).compactMap { $0.split(separator: " ").first.flatMap { Int($0) } }
        #expect(hits.count >= 2 && hits.last! > 0, "the last rule of \(rules.chain.name) acted on packets:\n\(listing)")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["m1"])
    }

    @Test("--interface lo with a local target: every frame of lo mirrored once at each hook, the copies to receive never")
    func loopback() throws {
        let lab = try Lab()
        let host = try lab.namespace("host")
        let other = try lab.namespace("other")
        // Metrics on a veth, so scraping adds nothing to lo.
        try lab.veth(host, "h0", other, "o0")
        try lab.ip(host, "addr", "add", "198.18.5.1/24", "dev", "h0")
        try lab.ip(other, "addr", "add", "198.18.5.2/24", "dev", "o0")
        let pcap = NSTemporaryDirectory() + "\(lab.prefix)-lo.pcap"
        defer { try? FileManager.default.removeItem(atPath: pcap) }
        let receiver = try lab.start(host, [try trafficMirrorBinary(), "receive", "--listen", "127.0.0.1:4789", "--write", pcap])
        usleep(300_000)
        let agent = try lab.start(host, [try trafficMirrorBinary(), "run", "--interface", "lo", "--target", "127.0.0.1",
                                         "--metrics-address", "198.18.5.1:9781"])
        #expect(agent.waitForStderr(timeout: 60) { $0.contains("mirroring") }, "\(agent.stderr)")

        try lab.exec(host, ["ping", "-c", "20", "-i", "0.05", "127.0.0.1"])
        try lab.exec(host, ["bash", "-c", "for i in $(seq 10); do echo datagram-$i > /dev/udp/127.0.0.1/9; done"])
        sleep(1)
        let m = Exposition(try HTTP.get(lab: lab, ns: other, port: 9781, path: "/metrics", host: "198.18.5.1").body)
        #expect(agent.stop() == 0)
        receiver.stop(signal: SIGINT)
        let frames = try PcapReader(bytes: Array(FileManager.default.contents(atPath: pcap) ?? Data())).frames

        // Each of 40 ICMP packets and 10 datagrams (and the 10 port
        // unreachables they draw) crosses lo's egress and then its ingress.
        let icmp = frames.filter { $0.bytes.count > 23 && $0.bytes[23] == 1 }.count
        let udp = frames.filter { $0.bytes.count > 37 && $0.bytes[23] == 17 && Int($0.bytes[36]) << 8 | Int($0.bytes[37]) == 9 }.count
        #expect(icmp == 2 * (40 + 10) && udp == 2 * 10 && frames.count == icmp + udp,
                "\(frames.count) frames: \(icmp) ICMP (want 100), \(udp) UDP to port 9 (want 20)")
        let sent = m.value("traffic_mirror_sent_packets_total", ["session": "default", "target": "default"]) ?? -1
        #expect(sent == Double(frames.count))
        for d in ["ingress", "egress"] {
            let own = m.value("traffic_mirror_unselected_packets_total", ["interface": "lo", "direction": d, "reason": "own_traffic"]) ?? -1
            #expect(own == sent, "every copy recognised at lo \(d): \(own) of \(sent)")
        }
    }

    /// `ethtool -k` and `ip -d link` of a device: everything the agent must
    /// not change, and what XDP does change.
    static func deviceState(_ lab: Lab, _ ns: String, _ dev: String) throws -> String {
        try lab.exec(ns, ["ethtool", "-k", dev]) + (try lab.exec(ns, ["ip", "-d", "link", "show", "dev", dev]))
    }

    @Test("attaching changes no feature, offload or MTU of the interface or its veth peer; native XDP (opt-in) changes the peer, as documented")
    func transparentHooks() throws {
        let topo = try Topology(offloads: true)
        let lab = topo.lab
        let before = (try Self.deviceState(lab, topo.mon, "m0"), try Self.deviceState(lab, topo.src, "s0"))
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2"])
        let attached = try topo.attachments(topo.mon, "m0")
        #expect(attached.tcxIngress == 1 && attached.tcxEgress == 1 && !attached.xdp, "\(attached)")
        let during = (try Self.deviceState(lab, topo.mon, "m0"), try Self.deviceState(lab, topo.src, "s0"))
        #expect(agent.stop() == 0)
        let after = (try Self.deviceState(lab, topo.mon, "m0"), try Self.deviceState(lab, topo.src, "s0"))
        #expect(during.0 == before.0 && during.1 == before.1, "attached: m0 or its peer s0 changed:\n\(during.0)\n\(during.1)")
        #expect(after.0 == before.0 && after.1 == before.1, "detached: m0 or its peer s0 changed")

        let xdp = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--ingress-hook", "xdp"])
        let peer = try lab.exec(topo.src, ["ethtool", "-k", "s0"])
        #expect(xdp.stop() == 0)
        #expect(peer.contains("tcp-segmentation-offload: off") && before.1.contains("tcp-segmentation-offload: on"),
                "XDP on a veth takes TSO off its peer (docs/operations.md): \(peer)")
        #expect(try Self.deviceState(lab, topo.src, "s0") == before.1, "and gives it back on detach")
    }

    @Test("100 mirrored flows: the agent binds no UDP port and holds a small, fixed set of sockets and descriptors")
    func noHostPorts() throws {
        let topo = try Topology()
        let lab = topo.lab
        // The target's neighbour is known, so copies leave by the packet
        // socket from the first one (else the first go by the raw socket).
        try lab.exec(topo.mon, ["ping", "-c", "1", "198.18.1.2"])
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2"])
        // Five datagrams on one socket per flow, so copies could form runs.
        try lab.exec(topo.src, ["bash", "-c", """
            for p in $(seq 20000 20099); do exec 3>/dev/udp/198.18.0.2/$p; for i in 1 2 3 4 5; do echo x >&3; done; exec 3>&-; done
            """])
        sleep(1)
        let m = try MetricsEndToEndTests.scrape(topo)
        let mine = { (listing: String) in listing.split(separator: "\n").filter { $0.contains("pid=\(agent.pid),") }.count }
        let udp = mine(try lab.exec(topo.mon, ["ss", "-uanp"]))
        let all = mine(try lab.exec(topo.mon, ["ss", "-anp"]))
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(agent.pid)/fd").count) ?? -1
        #expect(agent.stop() == 0)
        #expect((m.value("traffic_mirror_selected_packets_total", ["session": "default", "direction": "ingress"]) ?? 0) >= 400)
        #expect(udp == 0, "no UDP socket after 100 mirrored flows: \(udp)")
        #expect(all <= 9, "the fixed few sockets (two raw, two ICMP probes, two ICMP error listeners, one packet socket, the metrics listener): \(all)")
        #expect(m.value("traffic_mirror_own_sockets") == 5, "registered with the hooks: \(m.value("traffic_mirror_own_sockets") ?? -1)")
        #expect(fds > 0 && fds < 64, "open descriptors stay few: \(fds)")
    }

    @Test("receive stops when the reader of its output goes away")
    func receiveReaderGone() throws {
        let lab = try Lab()
        let ns = try lab.namespace("rx")
        let bin = try trafficMirrorBinary()
        let pipeline = try lab.start(ns, ["bash", "-c", "\(bin) receive --listen 127.0.0.1:4789 --write - | head -c 1 > /dev/null"])
        usleep(300_000)
        // VXLAN datagrams (VNI 42, a 60-byte frame) until the pipeline ends.
        let datagram = "\\x08\\x00\\x00\\x00\\x00\\x00\\x2a\\x00" + String(repeating: "\\x01", count: 60)
        for _ in 0..<100 where pipeline.isRunning {
            try lab.exec(ns, ["bash", "-c", "printf '\(datagram)' > /dev/udp/127.0.0.1/4789"])
            usleep(100_000)
        }
        let status = pipeline.stop(signal: SIGKILL, timeout: 1)
        #expect(status == 0, "receive left when head did (pipeline status \(status)): \(pipeline.stderr)")
        #expect(pipeline.stderr.contains("the reader of the output went away"), "\(pipeline.stderr)")
    }

    @Test("netlink tc filters, both directions: the agent keeps its own fresh filters, never removes another running agent's, and the next start removes a crashed one's")
    func netlinkOwnership() throws {
        let topo = try Topology()
        let lab = topo.lab
        let first = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--tc-attach", "netlink"])
        let a = try topo.attachments(topo.mon, "m0")
        #expect(a.tcFilters.contains("tm_tc_ingress") && a.tcFilters.contains("tm_tc_egress"), "both filters stay: \(a)")
        try lab.exec(topo.src, ["ping", "-c", "3", "-i", "0.1", "198.18.0.2"])
        sleep(1)
        let m = try MetricsEndToEndTests.scrape(topo)
        for d in ["ingress", "egress"] {
            #expect((m.value("traffic_mirror_selected_packets_total", ["session": "default", "direction": d]) ?? 0) >= 3, "\(d) mirrored")
        }

        // A second agent on the same interface: refused, the first untouched.
        let second = try lab.start(topo.mon, [try trafficMirrorBinary(), "run", "--interface", "m0", "--target", "198.18.1.2",
                                              "--tc-attach", "netlink", "--metrics-address", "127.0.0.1:9782"])
        for _ in 0..<600 where second.isRunning { usleep(100_000) }
        #expect(second.stop(timeout: 1) == 1, "the second agent exits 1: \(second.stderr)")
        #expect(second.stderr.contains("another running traffic-mirror holds a tc filter here"), "\(second.stderr)")
        #expect(try topo.attachments(topo.mon, "m0") == a, "the first agent's filters are still there")

        first.stop(signal: SIGKILL)
        let third = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--tc-attach", "netlink"])
        #expect(third.stderr.components(separatedBy: "removed a tc filter left by an earlier traffic-mirror run").count == 3,
                "both of the crashed agent's filters removed: \(third.stderr)")
        #expect(third.stop() == 0)
        #expect(try topo.attachments(topo.mon, "m0").none)
    }

    @Test("SIGHUP during start-up neither kills the agent nor is lost: the reload follows once it runs")
    func hangupDuringStartup() throws {
        let topo = try Topology()
        let path = try topo.writeConfig("""
            targets: {t: {address: 198.18.1.2}}
            sessions:
              - {name: s, interfaces: [m0], target: t, number: 1}
            """)
        let agent = try topo.lab.start(topo.mon, [try trafficMirrorBinary(), "run", "--config", path])
        // Once `ip netns exec` has become the agent and its loader has run
        // (SIGHUP caught: bit 0 of SigCgt), hang up on it until it mirrors.
        func caught() -> Bool {
            guard let status = try? String(contentsOfFile: "/proc/\(agent.pid)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigCgt:") }),
                  let mask = UInt64(line.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16) else { return false }
            return mask & 1 != 0 && status.contains("Name:\ttraffic-mirror")
        }
        for _ in 0..<2000 where !caught() { usleep(500) }
        var hangups = 0
        while agent.isRunning && hangups < 2000 && !agent.stderr.contains("mirroring") {
            kill(agent.pid, SIGHUP)
            hangups += 1
            usleep(2000)
        }
        #expect(hangups > 1, "SIGHUPs sent during start-up: \(hangups)")
        #expect(agent.waitForStderr(timeout: 60) { $0.contains("reloaded") }, "a reload after start-up: \(agent.stderr)")
        #expect(agent.isRunning)
        #expect(agent.stop() == 0)
    }

    @Test("/metrics and /healthz answer at once while a slow reload attaches 63 interfaces")
    func scrapesDuringSlowReload() throws {
        let topo = try Topology()
        let lab = topo.lab
        let n = 64
        let batch = NSTemporaryDirectory() + "\(lab.prefix)-links.batch"
        try (0..<n).map { "link add d\($0) type veth peer name e\($0)\nlink set d\($0) up\nlink set e\($0) up\n" }.joined()
            .write(toFile: batch, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: batch) }
        try lab.exec(topo.mon, ["ip", "-batch", batch])
        func config(_ count: Int) -> String {
            """
            targets: {t: {address: 198.18.1.2}}
            sessions:
              - {name: s, interfaces: [\((0..<count).map { "d\($0)" }.joined(separator: ", "))], target: t, number: 1}
            """
        }
        let path = try topo.writeConfig(config(1))
        let agent = try topo.startAgent(["--config", path, "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"])
        try config(n).write(toFile: path, atomically: true, encoding: .utf8)
        let start = Date()
        kill(agent.pid, SIGHUP)
        var slowest = 0.0, answered = 0
        while !agent.stderr.contains("reloaded") && Date().timeIntervalSince(start) < 60 {
            for page in ["/metrics", "/healthz"] {
                let t = Date()
                let r = try HTTP.get(lab: lab, ns: topo.mon, port: MetricsEndToEndTests.port, path: page)
                slowest = max(slowest, Date().timeIntervalSince(t))
                if r.status == 200 { answered += 1 }
            }
            usleep(20_000)
        }
        let reload = Date().timeIntervalSince(start)
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect(agent.stop() == 0)
        #expect(agent.stderr.contains("reloaded"), "\(agent.stderr.suffix(500))")
        #expect(reload > 0.5, "the reload is slow enough to tell: \(reload) s")
        #expect(answered >= 6, "pages answered during the reload: \(answered)")
        #expect(slowest < 0.25, "the slowest answer during a \(reload) s reload took \(slowest) s")
        #expect(m.all("traffic_mirror_hook_info").count == 2 * n, "both directions of every interface hooked")
    }

    @Test("a target slower than the traffic: the forwarder waits at most its 2 ms budget per batch, and counts what cannot go")
    func slowTargetBoundedWait() throws {
        let topo = try Topology()
        let lab = topo.lab
        // The link toward the target carries 4 Mbit/s with a small queue:
        // the agent's sends find it full.
        try lab.exec(topo.mon, ["tc", "qdisc", "replace", "dev", "m1", "root", "tbf", "rate", "4mbit", "burst", "8kb", "limit", "16kb"])
        try lab.exec(topo.mon, ["ping", "-c", "1", "198.18.1.2"])
        let agent = try topo.startAgent(["--interface", "m0", "--direction", "ingress", "--target", "198.18.1.2",
                                         "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"])
        // 30,000 datagrams of 300 bytes over 256 flows, as fast as one
        // socket sends them: about 80 Mbit/s of copies.
        try lab.exec(topo.src, ["python3", "-c", """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(30000): s.sendto(b"x" * 300, ("198.18.0.2", 20000 + i % 256))
            """])
        sleep(1)
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect(agent.stop() == 0)
        let labels = ["session": "default", "direction": "ingress"]
        let selected = m.value("traffic_mirror_selected_packets_total", labels) ?? 0
        let backpressure = m.value("traffic_mirror_dropped_packets_total", ["session": "default", "reason": "backpressure"]) ?? 0
        let batches = m.value("traffic_mirror_send_batches_total") ?? 0
        let waited = m.value("traffic_mirror_send_backpressure_seconds_total") ?? -1
        #expect(selected >= 30000, "every datagram selected: \(selected)")
        #expect(backpressure > 1000, "what the link cannot take is counted as backpressure: \(backpressure)")
        #expect((m.value("traffic_mirror_send_backpressure_waits_total") ?? 0) > 0)
        #expect(waited > 0 && waited <= batches * 0.0025 + 0.02,
                "waited \(waited) s over \(batches) batches: at most 2 ms each")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["m0"])
    }

    @Test("a UDP GSO message the kernel refuses (EIO) goes again as single copies: every copy arrives, each refusal counted as a fallback")
    func gsoRefusedFallsBack() throws {
        let topo = try Topology()
        let lab = topo.lab
        // Tests/faults/refuse_gso.c, preloaded: the first 20 GSO messages
        // the agent's packet sockets send fail with EIO.
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("faults/refuse_gso.c").path
        let library = NSTemporaryDirectory() + "\(lab.prefix)-refuse_gso.so", log = NSTemporaryDirectory() + "\(lab.prefix)-refused.log"
        defer { for f in [library, log] { try? FileManager.default.removeItem(atPath: f) } }
        try Shell.check(["clang", "-shared", "-fPIC", "-O2", "-Wall", "-o", library, source, "-ldl"])
        try lab.exec(topo.mon, ["ping", "-c", "1", "198.18.1.2"])
        let agent = try lab.start(topo.mon, ["env", "LD_PRELOAD=\(library)", "TM_REFUSE_GSO=20", "TM_REFUSE_GSO_LOG=\(log)",
                                             try trafficMirrorBinary(), "run", "--interface", "m0", "--direction", "ingress",
                                             "--target", "198.18.1.2", "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"])
        #expect(agent.waitForStderr(timeout: 60) { $0.contains("mirroring") }, "\(agent.stderr)")
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        // One flow, back to back: runs of its copies go as GSO messages. The
        // source's neighbour resolved first (datagrams sent while ARP runs
        // may be dropped before any hook).
        try lab.exec(topo.src, ["ping", "-c", "1", "198.18.0.2"])
        let total = 3000
        try lab.exec(topo.src, ["python3", "-c", """
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(\(total)): s.sendto(b"g" * 200, ("198.18.0.2", 7001))
            """])
        _ = try wire.waitFor(count: total, timeout: 20)
        try wire.settle()
        let copies = try wire.stop().compactMap { MirrorEndToEndTests.outer($0.bytes) }.filter {
            $0.inner.count >= 38 && $0.inner[23] == 17 && Int($0.inner[36]) << 8 | Int($0.inner[37]) == 7001
        }
        let m = try MetricsEndToEndTests.scrape(topo)
        #expect(agent.stop() == 0)
        let refused = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").count
        #expect(refused > 0, "the preloaded sendmmsg refused GSO messages")
        #expect(m.value("traffic_mirror_send_gso_fallbacks_total") == Double(refused), "each refusal counted once")
        #expect(copies.count == total, "every copy arrived, the refused runs as single copies: \(copies.count) of \(total)")
        #expect((m.value("traffic_mirror_dropped_packets_total", ["session": "default", "reason": "send_failed"]) ?? 0) == 0)
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["m0"])
    }

    /// CPU time (user + system, in clock ticks) of the agent's thread named
    /// `name`.
    static func threadTicks(_ pid: Int32, _ name: String) -> Int? {
        let dir = "/proc/\(pid)/task"
        for t in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard let comm = try? String(contentsOfFile: "\(dir)/\(t)/comm", encoding: .utf8),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == name,
                  let stat = try? String(contentsOfFile: "\(dir)/\(t)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // Fields after the command: state is field 3, utime 14, stime 15.
            let f = stat[stat.index(after: close)...].split(separator: " ")
            guard f.count > 12, let u = Int(f[11]), let s = Int(f[12]) else { return nil }
            return u + s
        }
        return nil
    }

    @Test("an ICMP flood at the host neither freezes nor busies the health prober")
    func icmpFloodAndProber() throws {
        let topo = try Topology()
        let lab = topo.lab
        let config = """
        targets:
          ids:
            endpoints: [198.18.1.2]
            health_check: {interval: 200ms, timeout: 150ms, unhealthy_threshold: 2, healthy_threshold: 2}
        sessions:
          - {name: s, interfaces: [m1], target: ids, number: 1}
        """
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config),
                                         "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"])
        let labels = ["target": "ids", "endpoint": "198.18.1.2:4789"]
        let before = try MetricsEndToEndTests.scrape(topo)
        let ticks = try #require(Self.threadTicks(agent.pid, "tm-health"))
        // Two flooding pingers (replies not awaited beyond a preload of 64)
        // at the monitored host for 4 s: every echo request and every ICMP
        // error the host receives reaches a raw ICMP socket unless it is
        // filtered.
        let start = Date()
        let floods = try (0..<2).map { _ in
            try lab.start(topo.src, ["ping", "-q", "-f", "-l", "64", "-s", "16", "-c", "2000000", "-w", "4", "198.18.0.2"])
        }
        for f in floods { _ = f.stop(signal: 0, timeout: 15) }
        let elapsed = Date().timeIntervalSince(start)
        let spent = (Self.threadTicks(agent.pid, "tm-health") ?? Int.max) - ticks
        let after = try MetricsEndToEndTests.scrape(topo)
        let flood = try lab.exec(topo.mon, ["cat", "/proc/net/snmp"])
        #expect(agent.stop() == 0)

        let requests = flood.split(separator: "\n").filter { $0.hasPrefix("IcmpMsg:") }
        let inEchos: Int = {
            guard requests.count == 2 else { return 0 }
            let k = requests[0].split(separator: " "), v = requests[1].split(separator: " ")
            return k.firstIndex(of: "InType8").map { Int(v[$0]) ?? 0 } ?? 0
        }()
        #expect(inEchos > 50_000, "the flood reached the host: \(inEchos) echo requests")
        let probes = (after.value("traffic_mirror_endpoint_probes_total", labels.merging(["result": "sent"]) { a, _ in a }) ?? 0)
            - (before.value("traffic_mirror_endpoint_probes_total", labels.merging(["result": "sent"]) { a, _ in a }) ?? 0)
        #expect(probes >= elapsed / 0.2 * 0.7, "probing kept its pace: \(probes) probes in \(elapsed) s")
        #expect(after.value("traffic_mirror_endpoint_probes_total", labels.merging(["result": "failed"]) { a, _ in a }) == 0)
        #expect(after.value("traffic_mirror_endpoint_up", labels) == 1)
        // 100 clock ticks a second: the prober's CPU during the flood.
        #expect(Double(spent) <= elapsed * 100 * 0.03, "the prober read the flood: \(spent) ticks in \(elapsed) s")
    }
}

/// Offloads on, as hosts run: TSO and GSO super-packets at egress, GRO at
/// ingress, checksums left for offload. The copies must be the packets the
/// wire carries, which Tests/oracle/wire_segments.py computes from captures
/// of the far side without any of traffic-mirror's code.
@Suite("Offloads on, end to end", .serialized)
struct OffloadsEndToEndTests {
    enum Case: String, CaseIterable, CustomTestStringConvertible {
        /// Defaults, GRO requested on every veth: TSO super-packets both ways.
        case tso
        /// The client cuts its segments itself (TSO off on s0) and m0's GRO
        /// merges them again: the ingress hook sees GRO super-packets.
        case gro
        /// TSO both ways with packet_length 100: the kernel slices each
        /// super-packet's segments and sends their sums, not 64 KiB.
        case sliced

        var testDescription: String { rawValue }
    }

    @Test("TCP both directions and UDP: every copy is a packet the wire carries, byte for byte", arguments: Case.allCases)
    func copiesAreWireSegments(_ c: Case) throws {
        let topo = try Topology(vni: 42, offloads: true)
        let lab = topo.lab
        for (ns, dev) in [(topo.src, "s0"), (topo.mon, "m0")] {
            try lab.exec(ns, ["ethtool", "-K", dev, "gro", "on"])
        }
        if c == .gro { try lab.exec(topo.src, ["ethtool", "-K", "s0", "tso", "off"]) }
        let offloads = try lab.exec(topo.mon, ["ethtool", "-k", "m0"])
        #expect(offloads.contains("tcp-segmentation-offload: on") && offloads.contains("generic-receive-offload: on")
                && offloads.contains("tx-checksumming: on"), "m0 runs with offloads on")

        let snap = c == .sliced ? 100 : 0
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--vni", "42",
                                         "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"]
                                        + (snap > 0 ? ["--packet-length", "\(snap)"] : []))
        let out = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "out"])
        let into = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "in"])
        let copies = try Capture(lab: lab, ns: topo.tgt, device: "vx0", filter: ["-Q", "in"])

        try TCPExchange.run(lab: lab, serverNS: topo.mon, serverAddress: .v4([198, 18, 0, 2]), port: 18080,
                            clientNS: topo.src, bytes: 3_000_000)
        try lab.exec(topo.src, ["bash", "-c", "for i in $(seq 50); do head -c $((i * 30)) /dev/zero > /dev/udp/198.18.0.2/9; done"])
        try lab.exec(topo.mon, ["bash", "-c", "for i in $(seq 50); do head -c $((i * 20)) /dev/zero > /dev/udp/198.18.0.1/9; done"])
        try out.settle()
        try copies.settle()
        let metrics = try MetricsEndToEndTests.scrape(topo)
        // The kernel's own count of super-packets it sliced (per CPU, in the
        // scratch map of every agent running now; only this test slices GSO
        // packets). One dump per map: bpftool prints one document per match.
        func json(_ args: [String]) throws -> Any? {
            try JSONSerialization.jsonObject(with: Data(Shell.run(["bpftool", "-j"] + args).stdout.utf8))
        }
        let ids = ((try json(["map", "show"])) as? [[String: Any]] ?? [])
            .filter { $0["name"] as? String == "tm_slice_scratc" }.compactMap { $0["id"] as? Int }
        var slicedGSO = 0
        for id in ids {
            let entries = (try? json(["map", "dump", "id", "\(id)"])) as? [[String: Any]] ?? []
            slicedGSO += entries.compactMap { $0["formatted"] as? [String: Any] }
                .flatMap { ($0["values"] as? [[String: Any]]) ?? [] }
                .compactMap { ($0["value"] as? [String: Any])?["sliced_gso"] as? Int }.reduce(0, +)
        }
        #expect(agent.stop() == 0)

        let dir = NSTemporaryDirectory() + "\(lab.prefix)-offloads"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func save(_ frames: [PcapReader.Frame], _ name: String) throws -> String {
            let path = "\(dir)/\(name).pcap"
            writePcap(frames.map { ($0.timestampNanoseconds, $0.bytes) }, to: path)
            return path
        }
        let wire = [try save(out.stop(), "out"), try save(into.stop(), "in")]
        let mirrored = try save(copies.stop(), "copies")
        let oracle = LifecycleEndToEndTests.repository.appendingPathComponent("Tests/oracle/wire_segments.py").path
        let r = try Shell.run(["/usr/bin/python3", oracle] + wire + ["--copies", mirrored, "--min-super", "20", "--snap", "\(snap)"])
        #expect(r.status == 0, "the copies are the wire's packets: \(r.stdout) \(r.stderr)")
        let truncated = metrics.all("traffic_mirror_truncated_packets_total").map(\.1).reduce(0, +)
        let sent = metrics.all("traffic_mirror_sent_packets_total").map(\.1).reduce(0, +)
        if c == .sliced {
            #expect(truncated > 1000 && truncated <= sent, "copies cut by packet_length: \(truncated) of \(sent)")
            #expect(slicedGSO >= 20, "super-packets sliced in the kernel, not copied whole: \(slicedGSO)")
        }
        print("offloads \(c.rawValue): \(r.stdout)")
    }
}

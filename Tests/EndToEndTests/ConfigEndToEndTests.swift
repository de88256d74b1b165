import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// Configurations with filters and several sessions and targets, and
/// reloads, between namespaces.
@Suite("Config end to end", .serialized)
struct ConfigEndToEndTests {
    static let config = """
    targets:
      a: {address: 198.18.1.2}
      b: {address: 198.18.2.2, mtu: 1000}
    filters:
      web:
        ingress:
          - {rule: 10, action: reject, protocol: tcp, source: 198.18.0.0/24, destination_ports: 22}
          - {rule: 20, action: accept, protocol: tcp, destination_ports: 0-1023}
          - {rule: 30, action: reject, protocol: udp}
        egress:
          - {rule: 10, action: accept, protocol: tcp, source_ports: 0-1023}
      udp:
        ingress:
          - {rule: 1, action: accept, protocol: udp, destination: 198.18.0.0/15}
          - {rule: 2, action: accept, protocol: udp, destination: fd00::/8}
        egress:
          - {rule: 1, action: accept, protocol: udp}
    sessions:
      - {name: web, interfaces: [m0], target: a, filter: web, number: 10, vni: 100}
      - {name: udp, interfaces: [m0], target: b, filter: udp, number: 20, vni: 200, packet_length: 80}
      - {name: rest-in, interfaces: [m0], target: b, number: 30, vni: 300, direction: ingress}
    """

    @Test("two targets, three sessions: each frame at the right target with the right VNI, truncated as configured, or not at all")
    func sessionsAndTargets() throws {
        let topo = try Topology()
        let lab = topo.lab
        let tgt2 = try topo.addTarget()
        let parsed = try ConfigLoader.load(yaml: Self.config)
        let reference = ReferenceClassifier(config: parsed)
        let agent = try topo.startAgent(["--config", try topo.writeConfig(Self.config)])

        let srcOut = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "out"])
        let srcIn = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "in"])
        let wireA = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let wireB = try Capture(lab: lab, ns: tgt2, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])

        var rng = SplitMix64(seed: 0x5E55)
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        let fromMon = try RawSocket(lab: lab, ns: topo.mon, device: "m0")
        for i in 0..<1200 {
            var f = FrameGenerator.frame(&rng)
            if i % 40 == 0 { f = Frames.udp4(sport: 53, dport: 53, payload: [UInt8](repeating: 7, count: 1400)) }
            // Large TCP: to 443 the web session takes it whole; to 8443 only
            // the unfiltered session does, cut to target b's MTU.
            if i % 41 == 0 { f = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .tcp(sport: 40000, dport: 443, seq: 1, flags: 0x10, payload: [UInt8](repeating: 9, count: 1400)))) }
            if i % 43 == 0 { f = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .tcp(sport: 40000, dport: 8443, seq: 1, flags: 0x10, payload: [UInt8](repeating: 8, count: 1400)))) }
            if i % 2 == 0 {
                f.replaceSubrange(0..<12, with: m0 + s0)
                try fromSrc.send(f)
            } else {
                f.replaceSubrange(0..<12, with: s0 + m0)
                try fromMon.send(f)
            }
            if i % 20 == 0 { usleep(2000) }
        }
        try lab.exec(topo.src, ["bash", "-c", "for i in $(seq 1 5); do echo x > /dev/udp/198.18.0.2/53; done"])

        // What each target should get: (VNI, frame) by the reference.
        func expected(_ frames: [[UInt8]], _ d: Direction) -> [String: [[UInt8]]] {
            var out = [String: [[UInt8]]]()
            for f in frames {
                guard case .session(let name) = reference.decide(interface: "m0", direction: d, packet: ParsedPacket(frame: f)) else { continue }
                let s = parsed.sessions.first { $0.name == name }!
                let limit = min(s.packetLength ?? Int.max, s.target == "b" ? 1000 - 36 : 9000 - 36)
                let copy = f.count > limit ? MirrorEndToEndTests.cutOnTheWire(f, limit) : MirrorEndToEndTests.onTheWire(f)
                out[s.target, default: []].append(Frames.be32(s.vni) + copy)
            }
            return out
        }
        let sent = try srcOut.frames().count + srcIn.frames().count
        _ = try wireB.waitFor(count: sent / 4, timeout: 10)
        try wireA.settle()
        try wireB.settle()
        #expect(agent.stop() == 0)
        let wantIn = expected(try srcOut.stop().map(\.bytes), .ingress)
        let wantOut = expected(try srcIn.stop().map(\.bytes), .egress)
        for (target, capture) in [("a", wireA), ("b", wireB)] {
            let got = try capture.stop().compactMap { MirrorEndToEndTests.outer($0.bytes) }.map { Frames.be32($0.vni) + $0.inner }
            let want = (wantIn[target] ?? []) + (wantOut[target] ?? [])
            try MirrorEndToEndTests.expectSameFrames(got, want, "target \(target)")
            #expect(want.count > 50, "target \(target) is exercised (\(want.count) copies)")
        }
        // Each session reached its target, and both truncations happened.
        let vnis = Set((wantIn.values.flatMap { $0 } + wantOut.values.flatMap { $0 }).map { Array($0.prefix(4)) })
        #expect(vnis.count == 3)
        #expect(wantIn["b"]!.contains { $0.count == 4 + 80 }, "packet_length 80 cuts")
        #expect(wantIn["b"]!.contains { $0.count == 4 + 964 }, "mtu 1000 cuts to 964")
    }

    @Test("SIGHUP under traffic: every frame mirrored exactly once, the new plan from one frame on; a bad config keeps the old plan")
    func reloadUnderTraffic() throws {
        let topo = try Topology()
        let lab = topo.lab
        func config(vni: Int) -> String {
            "targets:\n  a: {address: 198.18.1.2}\nsessions:\n  - {name: all, interfaces: [m0], target: a, number: 1, vni: \(vni), direction: ingress}\n"
        }
        let path = try topo.writeConfig(config(vni: 1))
        // SIGHUP alone: the file watcher (configWatch) would reload too.
        let agent = try topo.startAgent(["--config", path, "--no-watch-config"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")

        let total = 6000
        for seq in 0..<total {
            var f = Frames.udp4(sport: 7000, dport: 7001, payload: Frames.be32(UInt32(seq)) + [UInt8](repeating: 0, count: 20))
            f.replaceSubrange(0..<12, with: m0 + s0)
            try fromSrc.send(f)
            if seq % 10 == 0 { usleep(1000) }
            switch seq {
            case 1500, 3000:
                try config(vni: seq / 1500 + 1).write(toFile: path, atomically: true, encoding: .utf8)
                kill(agent.pid, SIGHUP)
            case 4000:
                try "sessions: [".write(toFile: path, atomically: true, encoding: .utf8)
                kill(agent.pid, SIGHUP)
            case 4500:
                try config(vni: 4).write(toFile: path, atomically: true, encoding: .utf8)
                kill(agent.pid, SIGHUP)
            default: break
            }
        }
        _ = try wire.waitFor(count: total, timeout: 20)
        #expect(agent.stop() == 0)
        try wire.settle()
        var vniBySeq = [Int: [UInt32]]()
        for o in try wire.stop().compactMap({ MirrorEndToEndTests.outer($0.bytes) }) {
            let p = ParsedPacket(frame: o.inner)
            guard p.isIP, p.destinationPort == 7001 else { continue }
            let at = p.l4Offset + 8
            let seq = Int(o.inner[at]) << 24 | Int(o.inner[at + 1]) << 16 | Int(o.inner[at + 2]) << 8 | Int(o.inner[at + 3])
            vniBySeq[seq, default: []].append(o.vni)
        }
        #expect(vniBySeq.count == total && vniBySeq.values.allSatisfy { $0.count == 1 },
                "each of \(total) frames exactly once: \(vniBySeq.count) distinct, \(vniBySeq.values.filter { $0.count > 1 }.count) repeated")
        let sequence = (0..<total).compactMap { vniBySeq[$0]?.first }
        #expect(sequence == sequence.sorted(), "the VNI changes once per reload, never back")
        #expect(Set(sequence) == [1, 2, 3, 4], "all four plans were in force: \(Set(sequence))")
        #expect(agent.stderr.components(separatedBy: "reloaded").count - 1 == 3)
        #expect(agent.stderr.contains("reload rejected: the running plan stays"))
    }

    @Test("the config file changed as Kubernetes changes a ConfigMap volume (the ..data symlink swap), and in place: each new plan in force within 1 s, a bad one rejected with the old plan kept, other files ignored")
    func configWatch() throws {
        let topo = try Topology()
        let lab = topo.lab
        let fm = FileManager.default
        // The kubelet's layout: config.yaml -> ..data/config.yaml,
        // ..data -> ..TIMESTAMP (a directory of the ConfigMap's keys).
        let dir = NSTemporaryDirectory() + "\(lab.prefix)-configmap"
        try? fm.removeItem(atPath: dir)
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: dir) }
        func config(vni: Int) -> String {
            "targets:\n  a: {address: 198.18.1.2}\nsessions:\n  - {name: all, interfaces: [m0], target: a, number: 1, vni: \(vni), direction: ingress}\n"
        }
        var generation = 0
        func swap(_ text: String) throws {
            generation += 1
            let data = "..2026_12_04_00_00_0\(generation)"
            try fm.createDirectory(atPath: dir + "/" + data, withIntermediateDirectories: false)
            try text.write(toFile: "\(dir)/\(data)/config.yaml", atomically: false, encoding: .utf8)
            try fm.createSymbolicLink(atPath: dir + "/..data_tmp", withDestinationPath: data)
            #expect(rename(dir + "/..data_tmp", dir + "/..data") == 0)
            if generation > 1 { try fm.removeItem(atPath: "\(dir)/..2026_12_04_00_00_0\(generation - 1)") }
        }
        try swap(config(vni: 1))
        try fm.createSymbolicLink(atPath: dir + "/config.yaml", withDestinationPath: "..data/config.yaml")

        let agent = try topo.startAgent(["--config", dir + "/config.yaml"])
        #expect(agent.waitForStderr(timeout: 5) { $0.contains("watching the config file") })
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        var sent = 0
        // 20 frames tagged with their phase.
        func burst(_ phase: UInt8) throws {
            for _ in 0..<20 {
                var f = Frames.udp4(sport: 7000, dport: 7001, payload: [phase] + [UInt8](repeating: 0, count: 20))
                f.replaceSubrange(0..<12, with: m0 + s0)
                try fromSrc.send(f)
                sent += 1
            }
        }
        func reloads(_ count: Int, _ what: String = "reloaded") -> Double? {
            let t = Date()
            let ok = agent.waitForStderr(timeout: 5) { $0.components(separatedBy: what).count - 1 >= count }
            return ok ? Date().timeIntervalSince(t) : nil
        }

        try burst(1)
        try swap(config(vni: 2))
        let first = reloads(1)
        try burst(2)
        try swap("sessions: [")
        #expect(reloads(1, "reload rejected") != nil)
        try burst(3)
        // Edited in place through the links (as `kubectl edit` never does,
        // but an operator on a host does).
        try config(vni: 4).write(toFile: dir + "/config.yaml", atomically: false, encoding: .utf8)
        let third = reloads(2)
        try burst(4)
        // A file of the directory that is not the config, and a touch.
        try "x".write(toFile: dir + "/unrelated", atomically: true, encoding: .utf8)
        #expect(utimes(dir + "/config.yaml", nil) == 0)
        usleep(500_000)
        try burst(5)

        _ = try wire.waitFor(count: sent, timeout: 20)
        #expect(agent.stop() == 0)
        try wire.settle()
        var vnis = [UInt8: Set<UInt32>](), count = 0
        for o in try wire.stop().compactMap({ MirrorEndToEndTests.outer($0.bytes) }) {
            let p = ParsedPacket(frame: o.inner)
            guard p.isIP, p.destinationPort == 7001 else { continue }
            vnis[o.inner[p.l4Offset + 8], default: []].insert(o.vni)
            count += 1
        }
        print("config watch: new plan in force \(first.map { String(format: "%.0f ms", $0 * 1000) } ?? "never") after a ..data swap, \(third.map { String(format: "%.0f ms", $0 * 1000) } ?? "never") after an edit in place")
        #expect(count == sent, "every frame mirrored once")
        #expect(vnis == [1: [1], 2: [2], 3: [2], 4: [4], 5: [4]], "VNIs by phase: \(vnis)")
        #expect((first ?? 9) < 1 && (third ?? 9) < 1)
        let log = agent.stderr
        #expect(log.components(separatedBy: "reloaded").count - 1 == 2, "the unrelated file and the touch reload nothing")
        #expect(log.contains("reload rejected: the running plan stays"))
    }
}

@Suite("Config commands", .serialized)
struct ConfigCommandTests {
    @Test("reload attaches the interfaces a config adds and detaches those it drops")
    func reloadInterfaces() throws {
        let topo = try Topology()
        func config(_ interfaces: String) -> String {
            "targets:\n  a: {address: 198.18.1.2}\nsessions:\n  - {name: s, interfaces: [\(interfaces)], target: a, number: 1}\n"
        }
        let path = try topo.writeConfig(config("m0"))
        let agent = try topo.startAgent(["--config", path, "--no-watch-config"])
        #expect(try topo.attachments(topo.mon, "m1").none)
        try config("m0, m1").write(toFile: path, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        #expect(agent.waitForStderr(timeout: 10) { $0.components(separatedBy: "reloaded").count == 2 })
        let both = try topo.attachments(topo.mon, "m1")
        #expect(both.tcxIngress == 1 && both.tcxEgress == 1, "m1 attached: \(both)")
        try config("m1").write(toFile: path, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        #expect(agent.waitForStderr(timeout: 10) { $0.components(separatedBy: "reloaded").count == 3 })
        #expect(try topo.attachments(topo.mon, "m0").none, "m0 detached")
        #expect(agent.stop() == 0)
        #expect(try topo.attachments(topo.mon, "m1").none)
    }

    @Test("run and check with a bad config: exit 2, every problem, nothing attached")
    func badConfig() throws {
        let topo = try Topology()
        let path = try topo.writeConfig("""
        targets:
          a: {address: 198.18.1.2, mtu: 10}
        sessions:
          - {name: s, interfaces: [m0], target: b, number: 1, vni: 99999999}
        """)
        let bin = try trafficMirrorBinary()
        for command in ["run", "check"] {
            let r = try Shell.run(["ip", "netns", "exec", topo.mon, bin, command, "--config", path])
            #expect(r.status == 2, "\(command): \(r.stderr)")
            #expect(r.stderr.contains("targets.a.mtu: 10 is out of range") && r.stderr.contains("sessions[0].target: no target named \"b\"")
                    && r.stderr.contains("sessions[0].vni: 99999999 is out of range 0...16777215"), "\(command): \(r.stderr)")
        }
        #expect(try topo.attachments(topo.mon, "m0").none)
        let both = try Shell.run(["ip", "netns", "exec", topo.mon, bin, "run", "--config", path, "--interface", "m0"])
        #expect(both.status == 2 && both.stderr.contains("--interface: the config file describes the sessions"))
    }

    @Test("check on 300 mangled documents: exit 0 or 2 with problems, never a crash")
    func fuzzCheck() throws {
        let bin = try trafficMirrorBinary()
        let base = try String(contentsOf: LifecycleEndToEndTests.repository.appendingPathComponent("deploy/traffic-mirror.yaml"), encoding: .utf8)
        var rng = SplitMix64(seed: 0xC4EC)
        let path = NSTemporaryDirectory() + "tm-fuzz-\(getpid()).yaml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        var codes = [Int32: Int]()
        for _ in 0..<300 {
            var b = Array(base.utf8)
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let at = Int.random(in: 0..<b.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: b.remove(at: at)
                case 1: b.insert(UInt8.random(in: 32...126, using: &rng), at: at)
                default: b[at] = [UInt8(ascii: ":"), UInt8(ascii: "-"), UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "9")].randomElement(using: &rng)!
                }
            }
            FileManager.default.createFile(atPath: path, contents: Data(b))
            let r = try Shell.run([bin, "check", "--config", path])
            codes[r.status, default: 0] += 1
            #expect(r.status == 0 || (r.status == 2 && r.stderr.contains("problem")), "status \(r.status): \(r.stderr.suffix(300))")
        }
        #expect(codes[2, default: 0] > 100, "\(codes)")
    }
}

import CMirrorBPF
import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// Attach and detach under every way the agent can end, VLAN tags carried
/// as metadata, and bad input.
@Suite("Lifecycle end to end", .serialized)
struct LifecycleEndToEndTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The test fixtures object (bpf/test/fixtures.bpf.c), built now.
    static func fixtures() throws -> String {
        let path = NSTemporaryDirectory() + "tm-fixtures-\(getpid()).o"
        try Shell.check(["bash", repository.appendingPathComponent("scripts/build-bpf").path, "--fixtures", path])
        return path
    }

    @Test("SIGKILL leaves nothing attached: XDP and tcx are links owned by the process")
    func sigkill() throws {
        let topo = try Topology()
        for hook in ["tc", "xdp"] {
            let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--ingress-hook", hook])
            let before = try topo.attachments(topo.mon, "m0")
            #expect(before.xdp == (hook == "xdp") && before.tcxIngress == (hook == "tc" ? 1 : 0) && before.tcxEgress == 1, "\(hook): \(before)")
            agent.stop(signal: SIGKILL)
            #expect(agent.terminationReason == .uncaughtSignal)
            let after = try topo.attachments(topo.mon, "m0")
            #expect(after.none, "nothing attached after SIGKILL (\(hook)): \(after)")
        }
    }

    @Test("netlink tc filters: a crashed run's filter is found and removed by the next start")
    func netlinkFallback() throws {
        let topo = try Topology()
        let first = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "egress", "--tc-attach", "netlink"])
        #expect(try topo.attachments(topo.mon, "m0").tcFilters.contains("tm_tc_egress"))
        first.stop(signal: SIGKILL)
        let stale = try topo.attachments(topo.mon, "m0")
        #expect(stale.tcFilters.contains("tm_tc_egress"), "a netlink filter outlives a killed agent: \(stale)")

        let second = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "egress"])
        #expect(second.stderr.contains("removed a tc filter left by an earlier traffic-mirror run"))
        let now = try topo.attachments(topo.mon, "m0")
        #expect(!now.tcFilters.contains("tm_tc_egress") && now.tcxEgress == 1, "the stale filter is gone, tcx is used: \(now)")
        #expect(second.stop() == 0)
        #expect(try topo.attachments(topo.mon, "m0").none)

        // And a clean netlink run removes its own filter on SIGTERM.
        let third = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--direction", "egress", "--tc-attach", "netlink"])
        #expect(third.stop() == 0)
        #expect(try topo.attachments(topo.mon, "m0").none)
    }

    @Test("VLAN tags the kernel carries as metadata are re-inserted, ingress (tc hook) and egress")
    func vlanMetadata() throws {
        let topo = try Topology()
        let lab = topo.lab
        let fx = try Self.fixtures()
        defer { try? FileManager.default.removeItem(atPath: fx) }
        // Egress: a program ahead of ours moves a tag into skb metadata for
        // UDP to port 7777, as a VLAN device or bridge would.
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: fx)))
        var obj: OpaquePointer?
        try #require(bytes.withUnsafeBytes { CMirrorBPF_object_open($0.baseAddress, $0.count, "fixtures", &obj) } == 0)
        defer { CMirrorBPF_object_close(obj) }
        try #require(CMirrorBPF_object_load(obj, -1) == 0)
        let prog = CMirrorBPF_object_prog_fd(obj, "fx_vlan_push")
        let ifindex = try lab.ifindex(topo.mon, "m0")
        let link = try lab.inNamespace(topo.mon) { CMirrorBPF_tcx_link(prog, ifindex, 1) }
        try #require(link >= 0, "fixture attached: \(link)")
        defer { close(link) }

        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--ingress-hook", "tc"])
        let attached = try topo.attachments(topo.mon, "m0")
        #expect(!attached.xdp && attached.tcxIngress == 1 && attached.tcxEgress == 2, "\(attached)")
        let srcIn = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "in"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])

        // Ingress: frames tagged on the wire; the stack moves the tag into
        // metadata before tc ingress.
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        var tagged = [[UInt8]]()
        for i in 0..<20 {
            var f = Frames.udp4(sport: UInt16(3000 + i), payload: Array("tagged \(i)".utf8),
                                vlans: i % 2 == 0 ? [Frames.VLAN(tci: 100)] : [Frames.VLAN(tpid: 0x88A8, tci: 200), Frames.VLAN(tci: 300)])
            f.replaceSubrange(0..<12, with: m0 + s0)
            tagged.append(f)
            try fromSrc.send(f)
        }
        try lab.exec(topo.mon, ["bash", "-c", "for i in $(seq 1 10); do echo meta > /dev/udp/198.18.0.1/7777; done"])
        _ = try wire.waitFor(count: 20 + 10 + 2, timeout: 10) // + ARP
        #expect(agent.stop() == 0)
        try wire.settle()
        let inner = try wire.stop().compactMap { MirrorEndToEndTests.outer($0.bytes)?.inner }
        let egressOnWire = try srcIn.stop().map(\.bytes).filter { $0.count > 16 && $0[12] == 0x81 }

        for f in tagged {
            #expect(inner.contains(f), "ingress frame with its tags: \(f.prefix(22).map { String(format: "%02x", $0) }.joined())")
        }
        #expect(egressOnWire.count == 10, "the fixture tagged the egress UDP (\(egressOnWire.count) tagged frames at the peer)")
        for f in egressOnWire {
            #expect(inner.contains(MirrorEndToEndTests.onTheWire(f)), "egress frame with the tag as the peer received it")
        }
        let withTag = inner.filter { $0.count > 16 && $0[12] == 0x81 && $0[13] == 0x00 && UInt16($0[14] & 0x0F) << 8 | UInt16($0[15]) == 42 }
        #expect(withTag.count == 10, "tag 42 re-inserted in the egress copies")
    }

    @Test("bad input: one clear line, the right exit code, nothing attached")
    func badInput() throws {
        let topo = try Topology()
        let bin = try trafficMirrorBinary()
        func run(_ args: [String], asNobody: Bool = false) throws -> Shell.Result {
            let prefix = asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"] : []
            return try Shell.run(["ip", "netns", "exec", topo.mon] + prefix + [bin, "run"] + args, timeout: 60)
        }

        // A name that matches no interface waits (SourcesEndToEndTests); one
        // that cannot be an interface name is refused.
        var r = try run(["--interface", "no such", "--target", "198.18.1.2"])
        #expect(r.status == 2 && r.stderr.contains("--interface: \"no such\" is not an interface name"), "\(r.stderr)")

        r = try run(["--interface", "m0", "--target", "no-such-host.test"])
        #expect(r.status == 1 && r.stderr.contains("cannot resolve host \"no-such-host.test\""), "\(r.stderr)")
        // A name the namespace's hosts file knows works.
        try topo.lab.addHost(topo.mon, "ids.test", "198.18.1.2")
        let named = try topo.startAgent(["--interface", "m0", "--target", "ids.test:4789"])
        #expect(named.stderr.contains("198.18.1.2:4789"))
        #expect(named.stop() == 0)

        r = try run(["--interface", "m0", "--target", "198.19.200.1"])
        #expect(r.status == 1 && r.stderr.contains("no route"), "\(r.stderr)")

        r = try run(["--interface", "m0", "--target", "198.18.1.2"], asNobody: true)
        #expect(r.status == 1 && r.stderr.contains("CAP_BPF"), "unprivileged: \(r.stderr)")

        r = try run(["--interface", "m0", "--target", "198.18.1.2:99999", "--vni", "16777216", "--direction", "sideways"])
        #expect(r.status == 2, "usage errors exit 2: \(r.stderr)")
        #expect(r.stderr.contains("direction"))
        r = try run(["--interface", "m0", "--target", "198.18.1.2:99999", "--vni", "16777216"])
        #expect(r.status == 2 && r.stderr.contains("--vni: 16777216 is out of range 0...16777215") && r.stderr.contains("--target"),
                "every problem at once: \(r.stderr)")

        // Another XDP program holds the interface: named, refused, and the
        // egress hook is not left behind.
        let fx = try Self.fixtures()
        defer { try? FileManager.default.removeItem(atPath: fx) }
        try topo.lab.ip(topo.mon, "link", "set", "dev", "m0", "xdpgeneric", "obj", fx, "sec", "xdp")
        r = try run(["--interface", "m0", "--target", "198.18.1.2", "--ingress-hook", "xdp"])
        #expect(r.status == 1 && r.stderr.contains("already has XDP program \"fx_xdp_pass\""), "\(r.stderr)")
        let a = try topo.attachments(topo.mon, "m0")
        #expect(a.xdp && a.tcxEgress == 0 && a.tcxIngress == 0, "only the other program stays: \(a)")
        // With the tc ingress hook (the default) the agent works next to it.
        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2"])
        #expect(agent.stop() == 0)
        try topo.lab.ip(topo.mon, "link", "set", "dev", "m0", "xdpgeneric", "off")
        #expect(try topo.attachments(topo.mon, "m0").none)

        let v = try Shell.check([bin, "version"])
        #expect(v.contains("libbpf v1.") && v.contains("bpf object sha256 "))
    }
}

@Suite("Least privilege", .serialized)
struct PrivilegeEndToEndTests {
    /// The capabilities deploy/traffic-mirror.service grants.
    static func unitCapabilities() throws -> [String] {
        let unit = try String(contentsOf: LifecycleEndToEndTests.repository.appendingPathComponent("deploy/traffic-mirror.service"), encoding: .utf8)
        let line = try #require(unit.split(separator: "\n").first { $0.hasPrefix("AmbientCapabilities=") })
        return line.dropFirst("AmbientCapabilities=".count).split(separator: " ").map { String($0.dropFirst(4)).lowercased() }
    }

    @Test("as nobody with exactly the unit's capabilities the agent mirrors; with one fewer it says which is missing")
    func unitCapabilitiesSuffice() throws {
        let caps = try Self.unitCapabilities()
        #expect(Set(caps) == ["bpf", "perfmon", "net_admin", "net_raw"])
        let topo = try Topology()
        func setpriv(_ c: [String]) -> [String] {
            let list = (["-all"] + c.map { "+\($0)" }).joined(separator: ",")
            return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=\(list)", "--ambient-caps=\(list)", "--bounding-set=\(list)"]
        }
        let bin = try trafficMirrorBinary()
        let agent = try topo.lab.start(topo.mon, setpriv(caps) + [bin, "run", "--interface", "m0", "--target", "198.18.1.2"])
        #expect(agent.waitForStderr(timeout: 60) { $0.contains("mirroring") }, "\(agent.stderr)")
        let wire = try Capture(lab: topo.lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        try topo.lab.exec(topo.src, ["bash", "-c", "echo hi > /dev/udp/198.18.0.2/9"])
        #expect(try wire.waitFor(count: 2, timeout: 10).count >= 2, "copies sent without root")
        #expect(agent.stop() == 0)
        _ = try wire.stop()
        #expect(try topo.attachments(topo.mon, "m0").none)

        for missing in caps {
            let r = try Shell.run(["ip", "netns", "exec", topo.mon] + setpriv(caps.filter { $0 != missing }) +
                                  [bin, "run", "--interface", "m0", "--target", "198.18.1.2"], timeout: 60)
            #expect(r.status == 1 && r.stderr.contains("CAP_\(missing.uppercased())"), "without \(missing): \(r.stderr)")
            #expect(try topo.attachments(topo.mon, "m0").none)
        }
    }
}

import CMirrorBPF
import Foundation
import MirrorCore

/// The standard test network: a source host, the monitored host that runs
/// the agent, and a target whose kernel vxlan device decapsulates.
///
///     src: s0 198.18.0.1 --- m0 198.18.0.2 :mon: m1 198.18.1.1 --- t0 198.18.1.2 :tgt
///                                                                 vx0 (VXLAN, VNI)
///
/// IPv6 autoconfiguration is off so nothing talks unless a test makes it;
/// segmentation offloads are off on s0/m0 so every frame is wire-sized.
public struct Topology: Sendable {
    public let lab: Lab
    public let src: String
    public let mon: String
    public let tgt: String
    public let vni: UInt32

    public init(vni: UInt32 = 42, targetMTU: Int = 9000, offloads: Bool = false) throws {
        lab = try Lab()
        src = try lab.namespace("src")
        mon = try lab.namespace("mon")
        tgt = try lab.namespace("tgt")
        self.vni = vni
        for ns in [src, mon, tgt] {
            try lab.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        }
        try lab.veth(src, "s0", mon, "m0")
        try lab.veth(mon, "m1", tgt, "t0", mtu: targetMTU)
        try lab.ip(src, "addr", "add", "198.18.0.1/24", "dev", "s0")
        try lab.ip(mon, "addr", "add", "198.18.0.2/24", "dev", "m0")
        try lab.ip(mon, "addr", "add", "198.18.1.1/24", "dev", "m1")
        try lab.ip(tgt, "addr", "add", "198.18.1.2/24", "dev", "t0")
        if !offloads {
            for (ns, dev) in [(src, "s0"), (mon, "m0")] {
                try lab.exec(ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])
            }
        }
        try Self.segmentOnTheWire(lab, mon, "m1")
        try lab.ip(tgt, "link", "add", "vx0", "type", "vxlan", "id", "\(vni)", "local", "198.18.1.2", "dstport", "4789", "nolearning")
        try lab.ip(tgt, "link", "set", "vx0", "mtu", "\(targetMTU - 50)", "up")
        // The vxlan device merges back-to-back segments of one TCP flow
        // (GRO); a capture on it should show the frames as mirrored, as a
        // sensor's capture interface is set up (GRO and LRO off).
        try lab.exec(tgt, ["ethtool", "-K", "vx0", "gro", "off"])
    }

    /// Another target: namespace `tgt<n>`, reached from the monitored host by
    /// m<n> 198.18.<n>.1 --- t0 198.18.<n>.2 (and fd00:<n>::1 --- fd00:<n>::2
    /// with `ipv6`). Returns the namespace.
    @discardableResult
    public func addTarget(_ n: Int = 2, mtu: Int = 9000, ipv6: Bool = false) throws -> String {
        let ns = try lab.namespace("tgt\(n)")
        try lab.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        try lab.veth(mon, "m\(n)", ns, "t0", mtu: mtu)
        try lab.ip(mon, "addr", "add", "198.18.\(n).1/24", "dev", "m\(n)")
        try lab.ip(ns, "addr", "add", "198.18.\(n).2/24", "dev", "t0")
        try Self.segmentOnTheWire(lab, mon, "m\(n)")
        if ipv6 { try enableIPv6(link: n, targetNS: ns) }
        return ns
    }

    /// Links toward targets finish what a NIC would before the wire: they
    /// cut UDP GSO messages into datagrams and fill in the checksums left
    /// for offload. veth would otherwise hand the receiver one merged
    /// super-packet per GSO message, and a capture would show unfinished
    /// checksums.
    static func segmentOnTheWire(_ lab: Lab, _ ns: String, _ dev: String) throws {
        try lab.exec(ns, ["ethtool", "-K", dev, "tx-udp-segmentation", "off", "tx-checksumming", "off"])
    }

    /// IPv6 on the link to target n: fd00:<n>::1 and fd00:<n>::2 (n = 1 for tgt).
    public func enableIPv6(link n: Int, targetNS: String) throws {
        for (ns, dev, host) in [(mon, "m\(n)", 1), (targetNS, "t0", 2)] {
            try lab.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.\(dev).disable_ipv6=0"])
            try lab.ip(ns, "-6", "addr", "add", "fd00:\(n)::\(host)/64", "dev", dev, "nodad")
        }
    }

    /// Writes a config file for the agent; returns its path.
    public func writeConfig(_ yaml: String, name: String = "config") throws -> String {
        let path = NSTemporaryDirectory() + "\(lab.prefix)-\(name).yaml"
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Starts the agent in the monitored namespace and waits until it mirrors.
    public func startAgent(_ arguments: [String]) throws -> Background {
        let agent = try lab.start(mon, [try trafficMirrorBinary(), "run"] + arguments)
        // waitForStderr returns early when the agent exits (a start-up error).
        guard agent.waitForStderr(timeout: 60, { $0.contains("mirroring") }),
              agent.stderr.contains("mirroring") else {
            agent.stop()
            throw Failure("the agent did not start: \(agent.stderr)")
        }
        return agent
    }

    /// What is attached to an interface, as the kernel reports it.
    public struct Attachments: Equatable, CustomStringConvertible {
        public var xdp: Bool
        public var tcxIngress: Int
        public var tcxEgress: Int
        public var tcFilters: String
        public var description: String { "xdp=\(xdp) tcx ingress=\(tcxIngress) egress=\(tcxEgress) tc filters=[\(tcFilters)]" }
        public var none: Bool { !xdp && tcxIngress == 0 && tcxEgress == 0 && tcFilters.isEmpty }
    }

    public func attachments(_ ns: String, _ dev: String) throws -> Attachments {
        let link = try lab.exec(ns, ["ip", "link", "show", "dev", dev])
        let idx = try lab.ifindex(ns, dev)
        let counts: (Int, Int) = try lab.inNamespace(ns) {
            var ids = [UInt32](repeating: 0, count: 16)
            return (Int(CMirrorBPF_tcx_query(idx, 0, &ids, 16)), Int(CMirrorBPF_tcx_query(idx, 1, &ids, 16)))
        }
        var filters = ""
        for d in ["ingress", "egress"] {
            if let f = try? lab.exec(ns, ["tc", "filter", "show", "dev", dev, d]) { filters += f.trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        return Attachments(xdp: link.contains(" xdp"), tcxIngress: counts.0, tcxEgress: counts.1, tcFilters: filters)
    }
}

import ArgumentParser
import CMirrorBPF
import MirrorCore
import MirrorDataPlane
import MirrorFixtures
import MirrorTestSupport

/// What the kernel's select path costs per packet as the rules grow: the
/// loaded program runs one frame many times (BPF_PROG_TEST_RUN, XDP, as on
/// lo) under plans of 1 session without a filter, 1 session with 1 rule,
/// 1 session with 256 rules, and 32 sessions with 256 rules each way (also
/// with rules built to defeat the summaries: every word ANDed). The
/// classifier reads the protocol's and ports' classes from arrays, finds
/// both addresses' classes by binary search, then ANDs five bitmaps over
/// the words of each session it walks (one word per 64 rules).
struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Nanoseconds per packet of the XDP select path under growing rule sets (BPF_PROG_TEST_RUN).")

    @Option(help: "Runs of the frame per measurement.") var repeats: UInt32 = 200_000
    @Option(help: "Measurements per plan; the median is reported.") var runs: Int = 7

    func run() throws {
        try requireRoot("tm-bench classify")
        var rng = SplitMix64(seed: 0xC1A5)
        let large = ConfigGenerator.largest(&rng, interface: "lo")
        var one = MirrorConfig.quick(interfaces: ["lo"], target: HostPort(host: "198.18.9.9", port: nil), vni: 1,
                                     direction: .both, packetLength: nil)
        let unfiltered = one
        // One rule that rejects the frame: classified, never copied.
        one.filters = [FilterConfig(name: "f", ingress: [RuleConfig(number: 1, action: .reject)], egress: [])]
        one.sessions[0].filter = "f"
        var wide = large
        wide.sessions = [large.sessions[0]]
        wide.filters = [large.filters[0]]
        let frame = MirrorFixtures.Frames.udp4(payload: [UInt8](repeating: 0, count: 18))
        // The worst case: every rule allows the frame in four fields and
        // misses it in the fifth, so every word of every session survives
        // the summaries and is ANDed, and no session decides.
        var adversarial = large
        for f in adversarial.filters.indices {
            for r in adversarial.filters[f].ingress.indices { Self.missInOneField(&adversarial.filters[f].ingress[r], &rng) }
            for r in adversarial.filters[f].egress.indices { Self.missInOneField(&adversarial.filters[f].egress[r], &rng) }
        }
        for (name, config, frame) in [("1 session, no filter (every frame copied)", unfiltered, frame),
                                      ("1 session, 1 rule (rejects)", one, frame),
                                      ("1 session, 256 rules each way", wide, frame),
                                      ("32 sessions x 256 rules each way", large, frame),
                                      ("32 sessions x 256 rules each way, each missing the frame in one field", adversarial, frame)] {
            let ns = try (0..<runs).map { _ in try measure(config, frame) }
            let packet = ParsedPacket(frame: frame)
            let decision = ReferenceClassifier(config: config).decide(interface: "lo", direction: .ingress, packet: packet)
            let bitmaps = MirrorPlan(compiling: config).bitmapCount
            print(String(format: "%@: %.0f ns per packet (runs: %@; the frame: %@; %d rule bitmaps)", name, Report.median(ns),
                         ns.map { String(format: "%.0f", $0) }.joined(separator: ", "), "\(decision)", bitmaps))
        }
    }

    /// Makes `rule` allow the frame (UDP 198.18.0.1:40000 -> 198.18.0.2:53)
    /// in every field but one. Values come from a few choices, so that the
    /// plan stays within the kernel's bitmap budget.
    static func missInOneField(_ rule: inout RuleConfig, _ rng: inout SplitMix64) {
        let miss = Int.random(in: 0..<5, using: &rng)
        let around = ["198.0.0.0/8", "198.18.0.0/16", "198.18.0.0/24"].randomElement(using: &rng)!
        rule.proto = .number(miss == 0 ? 6 : 17)
        rule.sourcePorts = miss == 1 ? PortRange(1, 1023) : [nil, PortRange(1024, 65535)].randomElement(using: &rng)!
        rule.destinationPorts = miss == 2 ? PortRange(1024, 65535) : [nil, PortRange(53, 53)].randomElement(using: &rng)!
        rule.source = try! CIDR(parsing: miss == 3 ? "10.0.0.0/8" : around)
        rule.destination = try! CIDR(parsing: miss == 4 ? "192.0.2.0/24" : "198.18.0.2/32")
    }

    func measure(_ config: MirrorConfig, _ frame: [UInt8]) throws -> Double {
        let program = try MirrorProgram(settings: .init(ringBytes: 1 << 26))
        let rings = try RingSet(program: program)
        let plan = MirrorPlan(compiling: config)
        try program.setSlot(netns: NetworkNamespace.currentCookie(), ifindex: 1, slot: 0)
        let sessions = plan.sessions.map { s in
            KernelSession(lengthLimit: 0, mtuLimit: 0, sampleEvery: 0, rate: 0, burst: 0, rateBits: false,
                          tunnelHeader: TunnelHeader.bytes(.vxlan, vni: s.vni))
        }
        try program.install(plan: plan, sessions: sessions, slots: ["lo": 0], bank: 0)
        try program.activate(bank: 0)
        var retval: UInt32 = 0, duration: UInt32 = 0
        let rc = frame.withUnsafeBytes {
            CMirrorBPF_prog_test_run(program.xdpIngress, $0.baseAddress, UInt32($0.count), nil, 0, repeats, &retval, &duration)
        }
        guard rc == 0 else { throw Failure("BPF_PROG_TEST_RUN: errno \(-rc)") }
        withExtendedLifetime(rings) {}
        return Double(duration)
    }
}

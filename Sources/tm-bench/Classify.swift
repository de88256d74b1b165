import ArgumentParser
import CMirrorBPF
import MirrorCore
import MirrorDataPlane
import MirrorFixtures
import MirrorTestSupport

/// What the kernel's select path costs per packet as the rules grow: the
/// loaded program runs one frame many times (BPF_PROG_TEST_RUN, XDP, as on
/// lo) under plans of 1 session without a filter, 1 session with 1 rule,
/// 1 session with 256 rules, and 32 sessions with 256 rules each way. The
/// classifier does five lookups, then one AND per 64 rules of each session
/// it walks: the cost grows with sessions x rules / 64, not with rules.
struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Nanoseconds per packet of the XDP select path under growing rule sets (BPF_PROG_TEST_RUN).")

    @Option(help: "Runs of the frame per measurement.") var repeats: UInt32 = 200_000

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
        for (name, config) in [("1 session, no filter (every frame copied)", unfiltered),
                               ("1 session, 1 rule (rejects)", one),
                               ("1 session, 256 rules each way", wide),
                               ("32 sessions x 256 rules each way", large)] {
            let ns = try measure(config, frame)
            print(String(format: "%@: %.0f ns per packet", name, ns))
        }
    }

    func measure(_ config: MirrorConfig, _ frame: [UInt8]) throws -> Double {
        let program = try MirrorProgram(settings: .init(ringBytes: 1 << 26))
        let rings = try RingSet(program: program)
        let plan = MirrorPlan(compiling: config)
        try program.setSlot(ifindex: 1, slot: 0)
        let sessions = plan.sessions.map { s in
            KernelSession(lengthLimit: 0, mtuLimit: 0, sampleEvery: 0, rate: 0, burst: 0, rateBits: false,
                          tunnelHeader: TunnelHeader.bytes(.vxlan, vni: s.vni))
        }
        var keys = [[UInt8]]()
        try program.install(plan: plan, sessions: sessions, slots: ["lo": 0], bank: 0, previousKeys: &keys)
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

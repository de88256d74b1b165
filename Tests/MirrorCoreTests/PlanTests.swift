import MirrorCore
import MirrorFixtures
import Testing

@Suite("Plan compiler")
struct PlanTests {
    @Test("a port range becomes prefixes that cover exactly that range")
    func portPrefixes() {
        var rng = SplitMix64(seed: 11)
        var ranges = [PortRange(0, 65535), PortRange(0, 0), PortRange(65535, 65535), PortRange(1024, 65535), PortRange(1, 65534)]
        for _ in 0..<300 {
            let a = UInt16.random(in: 0...65535, using: &rng), b = UInt16.random(in: 0...65535, using: &rng)
            ranges.append(PortRange(min(a, b), max(a, b)))
        }
        for r in ranges {
            let cfg = MirrorConfig(
                targets: [TargetConfig(name: "t", address: "198.18.9.9")],
                filters: [FilterConfig(name: "f", ingress: [RuleConfig(number: 1, action: .accept, proto: .number(17), destinationPorts: r)], egress: [])],
                sessions: [SessionConfig(name: "s", interfaces: ["lo"], target: "t", filter: "f", number: 1, vni: 1)])
            let plan = MirrorPlan(compiling: cfg)
            let prefixes = plan.entries.filter { $0.field == .destinationPort && $0.prefixLength > 0 }
            #expect(prefixes.count <= 30, "\(r) takes \(prefixes.count) prefixes")
            // Covered ports, counted from the prefixes: exactly the range, no overlap.
            var covered = 0
            var inside = true
            for p in prefixes {
                let lo = Int(p.value[2]) << 8 | Int(p.value[3])
                let size = 1 << (32 - p.prefixLength)
                covered += size
                inside = inside && lo >= Int(r.lower) && lo + size - 1 <= Int(r.upper) && p.value[0] == 0 && p.value[1] == 0
            }
            #expect(inside && covered == Int(r.upper) - Int(r.lower) + 1, "\(r)")
        }
    }

    @Test("the compiled bitmaps decide as the reference classifier, on random configs and frames")
    func bitmapsEqualReference() {
        var rng = SplitMix64(seed: 0xC0FFEE)
        var decided = [String: Int]()
        for round in 0..<40 {
            let config = ConfigGenerator.config(&rng, interfaces: ["lo"], sessions: Int.random(in: 1...8, using: &rng),
                                                maxRules: round % 10 == 0 ? 200 : 12)
            let eval = PlanEvaluator(MirrorPlan(compiling: config))
            let reference = ReferenceClassifier(config: config)
            for _ in 0..<400 {
                let f = FrameGenerator.frame(&rng)
                let p = ParsedPacket(frame: f)
                for d in Direction.allCases {
                    let want = reference.decide(interface: "lo", direction: d, packet: p)
                    let got = eval.decide(interface: "lo", direction: d, packet: p)
                    #expect(got == want, "round \(round) \(d): \(got) vs reference \(want)")
                    switch want {
                    case .session: decided["session", default: 0] += 1
                    case .rejected: decided["rejected", default: 0] += 1
                    case .noMatch: decided["none", default: 0] += 1
                    }
                }
            }
        }
        // The generators reach every outcome often.
        #expect(decided.values.allSatisfy { $0 > 1000 } && decided.count == 3, "\(decided)")
    }
}

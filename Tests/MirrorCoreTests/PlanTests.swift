import MirrorCore
import MirrorFixtures
import Testing

@Suite("Plan compiler")
struct PlanTests {
    @Test("port intervals tile 0...65536 and each allows exactly the rules whose range holds it")
    func portIntervals() {
        var rng = SplitMix64(seed: 11)
        var ranges = [PortRange(0, 65535), PortRange(0, 0), PortRange(65535, 65535), PortRange(1024, 65535), PortRange(1, 65534)]
        for _ in 0..<250 {
            let a = UInt16.random(in: 0...65535, using: &rng), b = UInt16.random(in: 0...65535, using: &rng)
            ranges.append(PortRange(min(a, b), max(a, b)))
        }
        // One filter with a rule per range, plus a rule without ports.
        var rules = ranges.enumerated().map { i, r in
            RuleConfig(number: i + 1, action: .accept, proto: .number(17), destinationPorts: r)
        }
        rules.append(RuleConfig(number: ranges.count + 1, action: .reject, proto: .number(6)))
        let cfg = MirrorConfig(
            targets: [TargetConfig(name: "t", address: "198.18.9.9")],
            filters: [FilterConfig(name: "f", ingress: rules, egress: [])],
            sessions: [SessionConfig(name: "s", interfaces: ["lo"], target: "t", filter: "f", number: 1, vni: 1)])
        let tables = MirrorPlan(compiling: cfg).profiles[0].tables!
        let intervals = tables.intervals[.destinationPort]!
        #expect(intervals.first?.lower == 0 && intervals.last?.upper == UInt128(PlanLimits.portValues))
        #expect(zip(intervals, intervals.dropFirst()).allSatisfy { $0.upper + 1 == $1.lower && $0.bitmap != $1.bitmap })
        // At most two cuts per range.
        #expect(intervals.count <= 2 * rules.count + 1, "\(intervals.count) intervals")
        for iv in intervals {
            let bits = tables.bitmaps[iv.bitmap]
            for v in Set([iv.lower, iv.upper, (iv.lower + iv.upper) / 2]) {
                for (i, r) in ranges.enumerated() {
                    let inside = v >= UInt128(r.lower) && v <= UInt128(r.upper)
                    #expect((bits[i / 64] >> UInt64(i % 64)) & 1 == (inside ? 1 : 0), "port \(v), range \(r)")
                }
                // The rule without ports allows every value, "no port" too.
                let last = ranges.count
                #expect((bits[last / 64] >> UInt64(last % 64)) & 1 == 1)
            }
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

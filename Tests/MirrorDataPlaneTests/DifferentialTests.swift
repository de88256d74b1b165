import Foundation
import MirrorCore
import MirrorDataPlane
import MirrorFixtures
import MirrorTestSupport
import Testing

/// The kernel's classifier against the plain reference of SPEC §3: random
/// configurations, random frames, both directions, through the loaded
/// program. Every decision must be the reference's.
@Suite("Differential: kernel vs reference classifier", .serialized)
struct DifferentialTests {
    struct Tally {
        var frames = 0, sessions = 0, rejected = 0, none = 0
    }

    /// Runs `count` frames both ways through a harness for `config`.
    static func run(_ config: MirrorConfig, frames count: Int, seed: UInt64, mutate: Bool = false) throws -> Tally {
        let h = try BPFHarness(config: config, ringBytes: 1 << 24)
        let reference = ReferenceClassifier(config: config)
        var rng = SplitMix64(seed: seed)
        var t = Tally()
        var want = (rejected: [UInt64](repeating: 0, count: 2), none: [UInt64](repeating: 0, count: 2))
        for _ in 0..<count {
            var f = FrameGenerator.frame(&rng)
            if mutate { f = FrameGenerator.mutate(f, &rng) }
            let p = ParsedPacket(frame: f)
            for d in Direction.allCases {
                // The skb test run refuses IP frames shorter than their IP
                // header; XDP takes everything, so ingress covers those.
                if d == .egress && !skbTestRunAccepts(f) { continue }
                try h.run(d == .ingress ? .xdp : .tcEgress, f)
                let records = h.records()
                let expected = reference.decide(interface: "lo", direction: d, packet: p)
                let got: ReferenceClassifier.Decision? = records.isEmpty ? nil : .session(h.plan.sessions[records[0].session].name)
                t.frames += 1
                switch expected {
                case .session:
                    t.sessions += 1
                    #expect(records.count == 1 && got == expected, "\(d) frame \(f.prefix(40)): kernel \(String(describing: got)), reference \(expected)")
                case .rejected:
                    t.rejected += 1
                    want.rejected[d.index] += 1
                    #expect(records.isEmpty, "\(d): kernel mirrored by \(String(describing: got)), reference rejected")
                case .noMatch:
                    t.none += 1
                    want.none[d.index] += 1
                    #expect(records.isEmpty, "\(d): kernel mirrored by \(String(describing: got)), reference matched nothing")
                }
            }
        }
        // Not mirrored, for the right reason: rejected and no-match counts.
        for d in Direction.allCases {
            let c = try h.interfaceCounters(d)
            #expect(c["rejected"] == want.rejected[d.index] && c["no_match"] == want.none[d.index],
                    "\(d): rejected \(c["rejected"]!)/\(want.rejected[d.index]), no match \(c["no_match"]!)/\(want.none[d.index])")
        }
        return t
    }

    @Test("100,000 frames under generated configs: every decision is the reference's")
    func generated() throws {
        var rng = SplitMix64(seed: 0xD1FF)
        var total = Tally()
        for round in 0..<8 {
            let config = ConfigGenerator.config(&rng, interfaces: ["lo"], sessions: [1, 2, 3, 5, 8, 12, 4, 6][round],
                                                maxRules: [4, 10, 30, 12, 6, 3, 60, 20][round])
            let t = try Self.run(config, frames: 7000, seed: UInt64(round) &* 7919)
            total.frames += t.frames; total.sessions += t.sessions; total.rejected += t.rejected; total.none += t.none
        }
        #expect(total.frames >= 100_000, "\(total.frames) decisions")
        #expect(total.sessions > 10_000 && total.rejected > 3_000 && total.none > 5_000, "every outcome reached: \(total)")
    }

    /// Mutated frames per run: TM_DIFFERENTIAL_FRAMES, or 20,000 (CI's bound;
    /// docs/benchmarks.md has a run of a million).
    static var mutatedFrames: Int { ProcessInfo.processInfo.environment["TM_DIFFERENTIAL_FRAMES"].flatMap(Int.init) ?? 20_000 }

    @Test("mutated frames (headers flipped, cut short, lying lengths, trailing bytes): every decision is the reference's, nothing crashes")
    func mutated() throws {
        var rng = SplitMix64(seed: 0x5EED_F00D)
        var total = Tally()
        let rounds = 4
        let start = Date()
        for round in 0..<rounds {
            let config = ConfigGenerator.config(&rng, interfaces: ["lo"], sessions: [2, 5, 8, 3][round], maxRules: [10, 30, 6, 60][round])
            let t = try Self.run(config, frames: Self.mutatedFrames / rounds, seed: 0xA11 &+ UInt64(round), mutate: true)
            total.frames += t.frames; total.sessions += t.sessions; total.rejected += t.rejected; total.none += t.none
        }
        print("differential: \(total.frames) decisions on \(Self.mutatedFrames) mutated frames in \(String(format: "%.1f", Date().timeIntervalSince(start))) s: \(total)")
        #expect(total.frames >= Self.mutatedFrames, "\(total.frames) decisions")
        #expect(total.sessions > 0 && total.rejected > 0 && total.none > 0, "every outcome reached: \(total)")
    }

    @Test("32 sessions with 256 rules per filter direction load and decide as the reference")
    func largest() throws {
        var rng = SplitMix64(seed: 0xB16)
        let config = ConfigGenerator.largest(&rng, interface: "lo")
        let plan = MirrorPlan(compiling: config)
        #expect(plan.profiles.allSatisfy { $0.sessions.count == 32 && $0.wordTotal == 128 })
        #expect(plan.bitmapCount <= PlanLimits.bitmapsPerPlan, "\(plan.bitmapCount) bitmaps")
        let t = try Self.run(config, frames: 3000, seed: 99)
        #expect(t.sessions > 100 && t.rejected + t.none > 100, "\(t)")
    }
}

import MirrorCore

/// What bpf/lib/classify.h computes, done in Swift over a compiled plan's
/// tables (interval lookup per field, AND, lowest set bit per session). It tests the plan compiler without the kernel.
public struct PlanEvaluator {
    let plan: MirrorPlan

    public init(_ plan: MirrorPlan) {
        self.plan = plan
    }

    func lookup(_ t: MirrorPlan.Tables, _ field: MirrorPlan.Field, _ value: UInt128) -> [UInt64]? {
        guard let iv = t.intervals[field]?.first(where: { $0.lower <= value && value <= $0.upper }) else { return nil }
        return t.bitmaps[iv.bitmap]
    }

    public func decide(interface: String, direction: Direction, packet p: ParsedPacket) -> ReferenceClassifier.Decision {
        guard let si = plan.scopes.firstIndex(where: { $0.interface == interface && $0.direction == direction }) else { return .noMatch }
        let scope = plan.profile(of: plan.scopes[si])
        var matched: [UInt64]?
        if p.isIP, let t = scope.tables {
            let v4 = p.family == .ipv4
            let none = PlanLimits.portValues
            let lists = [
                lookup(t, .proto, UInt128(p.proto)),
                lookup(t, .sourcePort, UInt128(p.hasPorts ? UInt32(p.sourcePort) : none)),
                lookup(t, .destinationPort, UInt128(p.hasPorts ? UInt32(p.destinationPort) : none)),
                lookup(t, v4 ? .source4 : .source6, MirrorPlan.number(Array(p.source.prefix(v4 ? 4 : 16)))),
                lookup(t, v4 ? .destination4 : .destination6, MirrorPlan.number(Array(p.destination.prefix(v4 ? 4 : 16)))),
            ]
            if lists.allSatisfy({ $0 != nil }) {
                matched = (0..<scope.wordTotal).map { w in lists.reduce(UInt64.max) { $0 & $1![w] } }
            }
        }
        var rejected = false
        for (i, s) in scope.sessions.enumerated() {
            if scope.filteredMask & (1 << UInt32(i)) == 0 { return .session(plan.sessions[s].name) }
            guard let m = matched else { continue }
            for w in scope.wordStart[i]..<(scope.wordStart[i] + scope.wordCount[i]) where m[w] != 0 {
                let low = m[w] & (~m[w] &+ 1)
                if low & scope.accept[w] != 0 { return .session(plan.sessions[s].name) }
                rejected = true
                break
            }
        }
        return rejected ? .rejected : .noMatch
    }
}

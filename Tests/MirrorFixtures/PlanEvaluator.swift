import MirrorCore

/// What bpf/lib/classify.h computes, done in Swift over a compiled plan's
/// entries (longest-prefix match per field, AND, lowest set bit per
/// session). It tests the plan compiler without the kernel.
public struct PlanEvaluator {
    let plan: MirrorPlan
    /// Entries by scope and field.
    let entries: [Int: [MirrorPlan.Field: [MirrorPlan.Entry]]]

    public init(_ plan: MirrorPlan) {
        self.plan = plan
        var e = [Int: [MirrorPlan.Field: [MirrorPlan.Entry]]]()
        for x in plan.entries { e[x.scope, default: [:]][x.field, default: []].append(x) }
        entries = e
    }

    func lookup(_ scope: Int, _ field: MirrorPlan.Field, _ value: [UInt8]) -> [UInt64]? {
        var best: MirrorPlan.Entry?
        for e in entries[scope]?[field] ?? [] {
            var match = true
            for bit in 0..<e.prefixLength where (e.value[bit / 8] ^ value[bit / 8]) & (0x80 >> UInt8(bit % 8)) != 0 {
                match = false
                break
            }
            if match && e.prefixLength >= (best?.prefixLength ?? -1) { best = e }
        }
        return best?.bits
    }

    public func decide(interface: String, direction: Direction, packet p: ParsedPacket) -> ReferenceClassifier.Decision {
        guard let si = plan.scopes.firstIndex(where: { $0.interface == interface && $0.direction == direction }) else { return .noMatch }
        let scope = plan.scopes[si]
        func number(_ n: UInt32) -> [UInt8] {
            [UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + [UInt8](repeating: 0, count: 12)
        }
        var matched: [UInt64]?
        if p.isIP {
            let v4 = p.family == .ipv4
            let lists = [
                lookup(si, .proto, number(UInt32(p.proto))),
                lookup(si, .sourcePort, number(p.hasPorts ? UInt32(p.sourcePort) : 65536)),
                lookup(si, .destinationPort, number(p.hasPorts ? UInt32(p.destinationPort) : 65536)),
                lookup(si, v4 ? .source4 : .source6, p.source),
                lookup(si, v4 ? .destination4 : .destination6, p.destination),
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

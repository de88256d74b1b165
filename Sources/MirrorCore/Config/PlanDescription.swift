/// The compiled plan as `traffic-mirror check` prints it: per interface and
/// direction, the sessions in evaluation order with their rules in
/// evaluation order, then what the kernel maps will hold.
public enum PlanDescription {
    public static func render(_ config: MirrorConfig) -> String {
        let plan = MirrorPlan(compiling: config)
        let filters = Dictionary(config.filters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var out = ["targets:"]
        for t in config.targets {
            let endpoints = t.endpoints.map { HostPort(host: $0.host, port: t.encapsulation.isERSPAN ? nil : $0.port ?? t.effectivePort).description }
            var line = "  \(t.name): \(endpoints.joined(separator: ", ")) \(t.encapsulation.rawValue)"
            if t.geneveOrigin { line += " with the origin option (host id \(t.hostID.map(String.init) ?? "from the host name"))" }
            if t.encapsulation == .erspan3 { line += " hardware id \(t.hardwareID)" }
            if let p = t.pacing { line += ", paced at \(p.packetsPerSecond) packets/s per endpoint (burst \(p.burst))" }
            line += ", mtu \(t.mtu.map(String.init) ?? "of the route")"
            if t.endpoints.count > 1 {
                let h = t.healthCheck
                line += "; \(t.mode == .balance ? "each flow to one endpoint" : "every copy to every endpoint")"
                line += h.probe == .none ? ", no health checks"
                    : ", \(h.probe == .tcp ? "tcp port \(h.port ?? 0)" : "icmp") probe every \(h.interval) s (down after \(h.unhealthyThreshold) failures, up after \(h.healthyThreshold) answers)"
            }
            out.append(line)
        }
        for scope in plan.scopes {
            let profile = plan.profile(of: scope)
            out.append("")
            out.append("\(scope.interface) \(scope.direction.rawValue):")
            if profile.sessions.isEmpty {
                out.append("  not hooked: no session mirrors this direction")
                continue
            }
            for index in profile.sessions {
                let s = plan.sessions[index]
                let t = plan.targets[s.target]
                var line = "  session \(s.number) \(s.name) -> \(t.name), \(t.encapsulation.rawValue) "
                    + (t.encapsulation.isERSPAN ? "session id \(s.erspanSessionID)" : "vni \(s.vni)")
                if let l = s.packetLength { line += ", first \(l) bytes" }
                if let c = config.sessions.first(where: { $0.name == s.name }) {
                    if let sl = c.slice { line += ", \(sl.after) headers + \(sl.bytes) bytes (else the first \(sl.fallback))" }
                    if let m = c.mask { line += ", mask \(m.bytes) bytes at \(m.after) + \(m.offset) with 0x\(String(m.pattern, radix: 16))" }
                    if let w = c.deduplicate { line += ", deduplicated within \(w * 1000) ms" }
                    if let b = c.bounds {
                        var parts = [String]()
                        if let a = b.startAt { parts.append("from \(a) (epoch s)") }
                        if let z = b.stopAt { parts.append("until \(z) (epoch s)") }
                        if let d = b.duration { parts.append("for \(d) s") }
                        if let n = b.maxPackets { parts.append("at most \(n) packets") }
                        if let n = b.maxBytes { parts.append("at most \(n) bytes") }
                        line += ", " + parts.joined(separator: ", ")
                    }
                    if c.sample > 1 { line += ", 1 in \(c.sample)" }
                    if let r = c.rateLimit { line += ", at most \(r.perSecond) \(r.unit == .packets ? "packets" : "bits")/s (burst \(r.burst))" }
                }
                out.append(line)
                guard let f = s.filter else {
                    out.append("    no filter: mirrors every frame")
                    continue
                }
                for r in (filters[f]?.rules(scope.direction) ?? []).sorted(by: { $0.number < $1.number }) {
                    out.append("    rule \(r.number) \(r.action.rawValue) \(describe(r))")
                }
                out.append("    no rule matches: on to the next session")
            }
            out.append("  otherwise: not mirrored")
        }
        let words = plan.profiles.map(\.wordTotal).max() ?? 0
        out.append("")
        out.append("kernel plan: \(plan.scopes.filter { !plan.profile(of: $0).sessions.isEmpty }.count) hooks, \(plan.sessions.count) sessions, \(plan.profiles.count) profiles, \(plan.bitmapCount) rule bitmaps (the kernel holds \(PlanLimits.bitmapsPerPlan)); per packet 5 table lookups, then an AND of 5 bitmaps over at most \(words) words")
        return out.joined(separator: "\n")
    }

    static func describe(_ r: RuleConfig) -> String {
        var parts = [r.proto.description]
        let fam = r.family.map { $0 == .ipv4 ? " (IPv4)" : " (IPv6)" } ?? ""
        parts.append("from \(r.source?.description ?? "any")\(r.sourcePorts.map { " port \($0)" } ?? "")")
        parts.append("to \(r.destination?.description ?? "any")\(r.destinationPorts.map { " port \($0)" } ?? "")\(fam)")
        return parts.joined(separator: " ")
    }
}

import MirrorCore

/// Random valid configurations whose rules draw from the same address and
/// port pools as `FrameGenerator`, so they match generated frames often.
public enum ConfigGenerator {
    static let v4CIDRs = ["198.18.0.0/15", "198.18.0.0/24", "198.18.1.0/24", "198.18.1.200/32", "10.0.0.0/8",
                          "0.0.0.0/0", "255.255.255.255/32", "198.18.128.0/17", "198.18.0.2/31"]
    static let v6CIDRs = ["fd00::/8", "fd00::/16", "fd00:0:1::/48", "2001:db8::/32", "::/0", "fdff::/16",
                          "fd00::2/128", "::/128"]

    public static func rule<R: RandomNumberGenerator>(_ number: Int, _ rng: inout R) -> RuleConfig {
        var r = RuleConfig(number: number, action: Int.random(in: 0..<3, using: &rng) == 0 ? .reject : .accept)
        let family = Int.random(in: 0..<3, using: &rng) // 0 v4, 1 v6, 2 either
        switch Int.random(in: 0..<10, using: &rng) {
        case 0..<3: r.proto = .number(6)
        case 3..<6: r.proto = .number(17)
        case 6: r.proto = .number(family == 1 ? 58 : 1)
        case 7: r.proto = .number([47, 50, 0, 132].randomElement(using: &rng)!)
        default: r.proto = .all
        }
        func cidr() -> CIDR? {
            guard family != 2, Int.random(in: 0..<3, using: &rng) > 0 else { return nil }
            let text = family == 0 ? v4CIDRs.randomElement(using: &rng)! : v6CIDRs.randomElement(using: &rng)!
            return try! CIDR(parsing: text)
        }
        r.source = cidr()
        r.destination = cidr()
        if family != 2 && r.source == nil && r.destination == nil {
            r.destination = try! CIDR(parsing: family == 0 ? "0.0.0.0/0" : "::/0")
        }
        if case .number(1) = r.proto, family == 2 { r.proto = .number(1) }
        if r.proto.hasPorts {
            func range() -> PortRange? {
                switch Int.random(in: 0..<5, using: &rng) {
                case 0, 1: return nil
                case 2: let p = FrameGenerator.portPool.randomElement(using: &rng)!; return PortRange(p, p)
                case 3: return [PortRange(0, 1023), PortRange(1024, 65535), PortRange(80, 443), PortRange(49152, 65535)].randomElement(using: &rng)!
                default:
                    let a = UInt16.random(in: 0...65535, using: &rng), b = UInt16.random(in: 0...65535, using: &rng)
                    return PortRange(min(a, b), max(a, b))
                }
            }
            r.sourcePorts = range()
            r.destinationPorts = range()
        }
        return r
    }

    /// The largest plan the limits allow on one interface: 32 sessions,
    /// each with its own filter of exactly 256 random rules each way.
    public static func largest<R: RandomNumberGenerator>(_ rng: inout R, interface: String) -> MirrorConfig {
        var config = Self.config(&rng, interfaces: [interface], sessions: 32, maxRules: 0)
        config.filters = (0..<32).map { f in
            func rules() -> [RuleConfig] {
                Array(1...32766).shuffled(using: &rng).prefix(256).map { rule($0, &rng) }
            }
            return FilterConfig(name: "f\(f)", ingress: rules(), egress: rules())
        }
        for i in config.sessions.indices {
            config.sessions[i].filter = "f\(i)"
            config.sessions[i].direction = .both
        }
        return config
    }

    /// Sessions on `interfaces`, each with a filter (some shared, some
    /// without rules in a direction) or, now and then, none.
    public static func config<R: RandomNumberGenerator>(
        _ rng: inout R, interfaces: [String], sessions: Int, maxRules: Int
    ) -> MirrorConfig {
        var filters = [FilterConfig]()
        let filterCount = max(1, sessions - Int.random(in: 0...(sessions / 2), using: &rng))
        for f in 0..<filterCount {
            func rules() -> [RuleConfig] {
                let n = Int.random(in: 0...maxRules, using: &rng)
                var numbers = Set<Int>()
                while numbers.count < n { numbers.insert(Int.random(in: 1...32766, using: &rng)) }
                return numbers.sorted().shuffled(using: &rng).map { rule($0, &rng) }
            }
            filters.append(FilterConfig(name: "f\(f)", ingress: rules(), egress: rules()))
        }
        var numbers = Set<Int>()
        while numbers.count < sessions { numbers.insert(Int.random(in: 1...32766, using: &rng)) }
        let list = numbers.sorted().shuffled(using: &rng).enumerated().map { i, number in
            SessionConfig(
                name: "s\(i)", interfaces: interfaces, target: "t", filter: Int.random(in: 0..<8, using: &rng) == 0 ? nil : "f\(Int.random(in: 0..<filterCount, using: &rng))",
                number: number, vni: UInt32(i + 1), packetLength: nil,
                direction: [DirectionSelection.both, .both, .both, .ingress, .egress].randomElement(using: &rng)!)
        }
        return MirrorConfig(targets: [TargetConfig(name: "t", address: "198.18.9.9")], filters: filters, sessions: list)
    }
}

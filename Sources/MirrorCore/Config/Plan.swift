/// A configuration compiled for the kernel's bit-vector classifier
/// (bpf/lib/classify.h): per interface and direction ("scope") the sessions
/// in evaluation order, one bit per rule, and the longest-prefix entries
/// that map each field value to the rules it allows.
public struct MirrorPlan: Sendable {
    /// Fields the kernel looks up (`enum tm_field`).
    public enum Field: Int, Sendable, CaseIterable {
        case proto = 0, sourcePort, destinationPort, source4, destination4, source6, destination6
    }

    public struct Session: Sendable, Equatable {
        public var name: String
        public var number: Int
        /// Index into `targets`.
        public var target: Int
        public var vni: UInt32
        public var packetLength: Int?
        public var direction: DirectionSelection
        public var filter: String?
    }

    public struct Scope: Sendable, Equatable {
        public var interface: String
        public var direction: Direction
        /// Session indexes in evaluation order.
        public var sessions: [Int]
        /// Bit i: sessions[i] has a filter.
        public var filteredMask: UInt32
        /// Per entry of `sessions`: its filter's first bitmap word and count.
        public var wordStart: [Int]
        public var wordCount: [Int]
        public var wordTotal: Int
        /// Bit b: rule b accepts.
        public var accept: [UInt64]
    }

    public struct Entry: Sendable, Equatable {
        public var scope: Int
        public var field: Field
        /// 16 bytes; numbers as 32-bit big-endian in the first four.
        public var value: [UInt8]
        /// Prefix bits of `value`.
        public var prefixLength: Int
        public var bits: [UInt64]
    }

    public var targets: [TargetConfig]
    public var sessions: [Session]
    public var scopes: [Scope]
    public var entries: [Entry]

    /// Interfaces in first-mention order.
    public var interfaces: [String] {
        var seen = Set<String>(), out = [String]()
        for s in scopes where seen.insert(s.interface).inserted { out.append(s.interface) }
        return out
    }

    /// Directions hooked on an interface (those with at least one session).
    public func directions(of interface: String) -> [Direction] {
        scopes.filter { $0.interface == interface && !$0.sessions.isEmpty }.map(\.direction)
    }
}

public enum PlanLimits {
    public static let sessionsPerInterface = 32
    public static let rulesPerFilterDirection = 256
    public static let sessions = 256
    public static let interfaces = 64
    public static let ruleWords = sessionsPerInterface * rulesPerFilterDirection / 64
    /// Entries the kernel's LPM map holds for one bank (two banks share it).
    public static let entriesPerBank = 32768
}

extension MirrorPlan {
    /// Compiles a validated configuration. Sessions are numbered in the
    /// order of their session numbers; ties cannot occur (validation).
    public init(compiling config: MirrorConfig) {
        targets = config.targets
        let ordered = config.sessions.sorted { $0.number < $1.number }
        sessions = ordered.map { s in
            Session(name: s.name, number: s.number,
                    target: config.targets.firstIndex { $0.name == s.target } ?? 0,
                    vni: s.vni, packetLength: s.packetLength, direction: s.direction, filter: s.filter)
        }
        var interfaceOrder = [String]()
        for s in config.sessions {
            for i in s.interfaces where !interfaceOrder.contains(i) { interfaceOrder.append(i) }
        }
        let filters = Dictionary(config.filters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        scopes = []
        entries = []
        for interface in interfaceOrder {
            for direction in Direction.allCases {
                compileScope(interface: interface, direction: direction, ordered: ordered, filters: filters)
            }
        }
    }

    private mutating func compileScope(
        interface: String, direction: Direction, ordered: [SessionConfig], filters: [String: FilterConfig]
    ) {
        var scope = Scope(interface: interface, direction: direction, sessions: [], filteredMask: 0,
                          wordStart: [], wordCount: [], wordTotal: 0, accept: [])
        // Each distinct filter gets its own run of words, shared by the
        // sessions that use it; rule j of the filter is bit start*64 + j.
        var filterWords = [String: (start: Int, count: Int)]()
        var ruleBits = [(bit: Int, rule: RuleConfig)]()
        for (index, s) in ordered.enumerated()
        where s.interfaces.contains(interface) && s.direction.includes(direction) {
            guard let name = s.filter else {
                scope.sessions.append(index)
                scope.wordStart.append(0)
                scope.wordCount.append(0)
                continue
            }
            let rules = (filters[name]?.rules(direction) ?? []).sorted { $0.number < $1.number }
            // A direction without rules mirrors nothing: leave the session out.
            guard !rules.isEmpty else { continue }
            if filterWords[name] == nil {
                let count = (rules.count + 63) / 64
                filterWords[name] = (scope.wordTotal, count)
                for (j, r) in rules.enumerated() { ruleBits.append((scope.wordTotal * 64 + j, r)) }
                scope.wordTotal += count
            }
            scope.filteredMask |= 1 << UInt32(scope.sessions.count)
            scope.sessions.append(index)
            scope.wordStart.append(filterWords[name]!.start)
            scope.wordCount.append(filterWords[name]!.count)
        }
        scope.accept = [UInt64](repeating: 0, count: scope.wordTotal)
        for (bit, rule) in ruleBits where rule.action == .accept {
            scope.accept[bit / 64] |= 1 << UInt64(bit % 64)
        }
        let scopeIndex = scopes.count
        scopes.append(scope)
        guard !ruleBits.isEmpty else { return }

        for field in Field.allCases {
            var prefixes = [Prefix: [Int]]()
            // Every field of a scope with rules has a /0 entry, so a lookup
            // never misses; it may allow no rule at all.
            prefixes[Prefix(value: [UInt8](repeating: 0, count: 16), length: 0), default: []] += []
            for (bit, rule) in ruleBits {
                for p in Self.prefixes(of: rule, field: field) { prefixes[p, default: []].append(bit) }
            }
            // The entry of prefix P must allow every rule that allows any
            // value under P's longest match: the rules of P and of every
            // shorter prefix that contains P.
            // Ancestors are found by masking P to each prefix length in use.
            let lengths = Set(prefixes.keys.map(\.length)).sorted()
            let ordered = prefixes.keys.sorted {
                $0.length != $1.length ? $0.length < $1.length : $0.value.lexicographicallyPrecedes($1.value)
            }
            for p in ordered {
                var bits = [UInt64](repeating: 0, count: scope.wordTotal)
                for len in lengths where len <= p.length {
                    guard let rules = prefixes[p.masked(to: len)] else { continue }
                    for b in rules { bits[b / 64] |= 1 << UInt64(b % 64) }
                }
                entries.append(Entry(scope: scopeIndex, field: field, value: p.value,
                                     prefixLength: p.length, bits: bits))
            }
        }
    }

    /// A prefix of a field's value space; `value` has no bits set past
    /// `length`.
    struct Prefix: Hashable {
        var value: [UInt8]
        var length: Int

        func masked(to len: Int) -> Prefix {
            var v = value
            for bit in len..<(v.count * 8) { v[bit / 8] &= ~(0x80 >> UInt8(bit % 8)) }
            return Prefix(value: v, length: len)
        }
    }

    /// The prefixes under which a rule allows a field's value.
    static func prefixes(of rule: RuleConfig, field: Field) -> [Prefix] {
        func number(_ n: UInt32, _ len: Int) -> Prefix {
            var v = [UInt8](repeating: 0, count: 16)
            v[0] = UInt8(n >> 24); v[1] = UInt8((n >> 16) & 0xFF); v[2] = UInt8((n >> 8) & 0xFF); v[3] = UInt8(n & 0xFF)
            return Prefix(value: v, length: len)
        }
        let any = Prefix(value: [UInt8](repeating: 0, count: 16), length: 0)
        switch field {
        case .proto:
            if case .number(let n) = rule.proto { return [number(UInt32(n), 32)] }
            return [any]
        case .sourcePort, .destinationPort:
            guard let r = field == .sourcePort ? rule.sourcePorts : rule.destinationPorts else { return [any] }
            return portPrefixes(r).map { number($0.value, $0.length) }
        case .source4, .destination4, .source6, .destination6:
            let wantV4 = field == .source4 || field == .destination4
            let cidr = (field == .source4 || field == .source6) ? rule.source : rule.destination
            if let fam = rule.family, (fam == .ipv4) != wantV4 { return [] }
            guard let c = cidr else { return [any] }
            let b = c.masked.address.bytes
            return [Prefix(value: b + [UInt8](repeating: 0, count: 16 - b.count), length: c.prefixLength)]
        }
    }

    /// An inclusive port range as prefixes of the 32-bit number space.
    static func portPrefixes(_ r: PortRange) -> [(value: UInt32, length: Int)] {
        var out = [(UInt32, Int)]()
        var lo = UInt32(r.lower)
        let hi = UInt32(r.upper)
        while lo <= hi {
            var size: UInt32 = 1
            // Grow the block while it stays aligned and inside the range.
            while size < 65536, lo % (size * 2) == 0, lo + size * 2 - 1 <= hi { size *= 2 }
            out.append((lo, 32 - size.trailingZeroBitCount))
            lo += size
        }
        return out
    }
}

/// SPEC §3 evaluated directly on the configuration, rule by rule: the
/// reference the kernel's bitmaps are held to in the differential tests.
public struct ReferenceClassifier: Sendable {
    public let config: MirrorConfig
    private let ordered: [SessionConfig]
    private let filters: [String: FilterConfig]

    public init(config: MirrorConfig) {
        self.config = config
        ordered = config.sessions.sorted { $0.number < $1.number }
        filters = Dictionary(config.filters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    public enum Decision: Equatable, Sendable {
        /// Mirrored by the session with this name.
        case session(String)
        /// A session's filter rejected it and no later session accepted it.
        case rejected
        /// No rule of any session matched.
        case noMatch
    }

    public func decide(interface: String, direction: Direction, packet p: ParsedPacket) -> Decision {
        var rejected = false
        for s in ordered where s.interfaces.contains(interface) && s.direction.includes(direction) {
            guard let f = s.filter else { return .session(s.name) }
            guard p.isIP else { continue }
            let rules = (filters[f]?.rules(direction) ?? []).sorted { $0.number < $1.number }
            if let first = rules.first(where: { Self.matches($0, p) }) {
                if first.action == .accept { return .session(s.name) }
                rejected = true
            }
        }
        return rejected ? .rejected : .noMatch
    }

    /// SPEC §3.3 and §3.8 for one rule.
    public static func matches(_ r: RuleConfig, _ p: ParsedPacket) -> Bool {
        guard p.isIP else { return false }
        if let fam = r.family, fam != p.family { return false }
        if case .number(let n) = r.proto, p.proto != UInt16(n) { return false }
        if let s = r.source, !s.contains(p.source) { return false }
        if let d = r.destination, !d.contains(p.destination) { return false }
        if r.sourcePorts != nil || r.destinationPorts != nil {
            guard p.hasPorts else { return false }
            if let sp = r.sourcePorts, !sp.contains(p.sourcePort) { return false }
            if let dp = r.destinationPorts, !dp.contains(p.destinationPort) { return false }
        }
        return true
    }
}

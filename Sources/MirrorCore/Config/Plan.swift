/// A configuration compiled for the kernel's bit-vector classifier
/// (bpf/lib/classify.h): per interface and direction ("scope") a profile,
/// the sessions in evaluation order with one bit per rule and the tables
/// that map each field value to a class: the bitmap of the rules that value
/// allows. Scopes that the same sessions mirror share one profile.
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
        /// The session ID of ERSPAN copies.
        public var erspanSessionID: UInt16
        public var packetLength: Int?
        public var direction: DirectionSelection
        public var filter: String?
    }

    public struct Scope: Sendable, Equatable {
        public var interface: String
        public var direction: Direction
        /// Index into `profiles`.
        public var profile: Int
    }

    public struct Profile: Sendable, Hashable {
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
        /// Present when some session of the scope has rules.
        public var tables: Tables?
    }

    /// The classifier's tables of one profile.
    public struct Tables: Sendable, Hashable {
        /// Distinct rule bitmaps, `wordTotal` words each, indexed by class;
        /// class 0 allows no rule.
        public var bitmaps: [[UInt64]]
        /// Every field's value space (protocol 0...256, ports 0...65536,
        /// addresses as 32- or 128-bit numbers) cut into intervals over which
        /// the allowed rules stay the same, in order.
        public var intervals: [Field: [Interval]]
    }

    public struct Interval: Sendable, Hashable {
        public var lower: UInt128
        public var upper: UInt128
        public var bitmap: Int
    }

    public var targets: [TargetConfig]
    public var sessions: [Session]
    public var scopes: [Scope]
    /// One per distinct (direction, session list), in first-use order.
    public var profiles: [Profile]

    /// Rule bitmaps of all profiles: what the kernel holds for this plan.
    public var bitmapCount: Int { profiles.reduce(0) { $0 + ($1.tables?.bitmaps.count ?? 0) } }

    /// Profiles with classifier tables (each holds a 256 KiB value array).
    public var tableCount: Int { profiles.filter { $0.tables != nil }.count }

    public func profile(of scope: Scope) -> Profile { profiles[scope.profile] }

    /// What of this plan the kernel's maps cannot hold, with the remedy
    /// (the loader checks a configuration, the agent again once patterns
    /// have matched interfaces).
    public var kernelLimitProblem: (path: String, message: String)? {
        if bitmapCount > PlanLimits.bitmapsPerPlan {
            return ("filters", "the compiled plan needs \(bitmapCount) rule bitmaps; the kernel holds \(PlanLimits.bitmapsPerPlan): use fewer distinct CIDRs and port ranges, or share filters between sessions")
        }
        if profiles.count > PlanLimits.profiles {
            return ("sessions", "interfaces are mirrored by \(profiles.count) distinct lists of sessions; the kernel holds \(PlanLimits.profiles): give interfaces that are mirrored alike the same sessions")
        }
        if tableCount > PlanLimits.tables {
            return ("sessions", "\(tableCount) distinct lists of filtered sessions; the kernel holds \(PlanLimits.tables): give interfaces that are mirrored alike the same sessions")
        }
        return nil
    }

    /// Interfaces in first-mention order.
    public var interfaces: [String] {
        var seen = Set<String>(), out = [String]()
        for s in scopes where seen.insert(s.interface).inserted { out.append(s.interface) }
        return out
    }

    /// The directions hooked on each interface (those with at least one
    /// session), in one pass over the scopes.
    public var hookedDirections: [String: [Direction]] {
        var out = [String: [Direction]]()
        for s in scopes where !profiles[s.profile].sessions.isEmpty { out[s.interface, default: []].append(s.direction) }
        return out
    }
}

public enum PlanLimits {
    public static let sessionsPerInterface = 32
    public static let rulesPerFilterDirection = 256
    public static let sessions = 256
    public static let interfaces = 1024
    /// Distinct profiles of one plan (TM_MAX_PROFILES / 2 - 1: the banks
    /// hold the plan in force and the next one).
    public static let profiles = 1023
    /// Profiles with filters: their value arrays take 256 KiB each.
    public static let tables = 128
    public static let ruleWords = sessionsPerInterface * rulesPerFilterDirection / 64
    /// Rule bitmaps of one plan, over all scopes (1 KiB of kernel memory each).
    public static let bitmapsPerPlan = 32768
    /// Largest protocol and port values (TM_PROTO_UNKNOWN, TM_PORT_NONE).
    public static let protocolValues: UInt32 = 256
    public static let portValues: UInt32 = 65536
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
                    vni: s.vni, erspanSessionID: s.effectiveERSPANSessionID, packetLength: s.packetLength, direction: s.direction, filter: s.filter)
        }
        var interfaceOrder = [String]()
        for s in config.sessions {
            for i in s.interfaces where !interfaceOrder.contains(i) { interfaceOrder.append(i) }
        }
        let filters = Dictionary(config.filters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        scopes = []
        profiles = []
        // Interfaces mirrored by the same sessions share a profile: compile
        // each session list once, however many interfaces it covers.
        let members = ordered.map { Set($0.interfaces) }
        var known = [[Int]: Int]()
        for interface in interfaceOrder {
            for direction in Direction.allCases {
                let list = ordered.indices.filter { members[$0].contains(interface) && ordered[$0].direction.includes(direction) }
                let key = [direction.index] + list
                if known[key] == nil {
                    known[key] = profiles.count
                    profiles.append(Self.compileProfile(direction: direction, sessions: list, ordered: ordered, filters: filters))
                }
                scopes.append(Scope(interface: interface, direction: direction, profile: known[key]!))
            }
        }
    }

    private static func compileProfile(
        direction: Direction, sessions list: [Int], ordered: [SessionConfig], filters: [String: FilterConfig]
    ) -> Profile {
        var scope = Profile(direction: direction, sessions: [], filteredMask: 0,
                            wordStart: [], wordCount: [], wordTotal: 0, accept: [])
        // Each distinct filter gets its own run of words, shared by the
        // sessions that use it; rule j of the filter is bit start*64 + j.
        var filterWords = [String: (start: Int, count: Int)]()
        var ruleBits = [(bit: Int, rule: RuleConfig)]()
        for index in list {
            let s = ordered[index]
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
        if !ruleBits.isEmpty { scope.tables = Self.tables(ruleBits, words: scope.wordTotal) }
        return scope
    }

    /// The intervals of every field, each pointing at the bitmap of the
    /// rules (by bit) that its values allow.
    static func tables(_ rules: [(bit: Int, rule: RuleConfig)], words: Int) -> Tables {
        var bitmaps = [[UInt64](repeating: 0, count: words)]
        var index = [bitmaps[0]: 0]
        func intern(_ bits: [UInt64]) -> Int {
            if let i = index[bits] { return i }
            bitmaps.append(bits)
            index[bits] = bitmaps.count - 1
            return bitmaps.count - 1
        }
        var intervals = [Field: [Interval]]()
        for field in Field.allCases {
            let top = Self.top(of: field)
            let ranges = rules.compactMap { bit, rule in Self.range(of: rule, field: field, top: top).map { (bit, $0) } }
            intervals[field] = Self.intervals(ranges, top: top, words: words, intern: intern)
        }
        return Tables(bitmaps: bitmaps, intervals: intervals)
    }

    /// The largest value of a field.
    public static func top(of field: Field) -> UInt128 {
        switch field {
        case .proto: UInt128(PlanLimits.protocolValues)
        case .sourcePort, .destinationPort: UInt128(PlanLimits.portValues)
        case .source4, .destination4: UInt128(UInt32.max)
        case .source6, .destination6: UInt128.max
        }
    }

    /// The values of a field that a rule allows; nil for an address field
    /// of the other family.
    static func range(of rule: RuleConfig, field: Field, top: UInt128) -> ClosedRange<UInt128>? {
        switch field {
        case .proto:
            if case .number(let n) = rule.proto { return UInt128(n)...UInt128(n) }
            return 0...top
        case .sourcePort, .destinationPort:
            guard let r = field == .sourcePort ? rule.sourcePorts : rule.destinationPorts else { return 0...top }
            return UInt128(r.lower)...UInt128(r.upper)
        case .source4, .destination4, .source6, .destination6:
            let wantV4 = field == .source4 || field == .destination4
            if let fam = rule.family, (fam == .ipv4) != wantV4 { return nil }
            guard let c = (field == .source4 || field == .source6) ? rule.source : rule.destination else { return 0...top }
            let width = wantV4 ? 32 : 128
            let lower = Self.number(c.masked.address.bytes)
            let hostBits = width - c.prefixLength
            let span: UInt128 = hostBits == 128 ? .max : (1 << UInt128(hostBits)) - 1
            return lower...(lower | span)
        }
    }

    /// Big-endian bytes as a number.
    public static func number(_ bytes: [UInt8]) -> UInt128 {
        bytes.reduce(0) { $0 << 8 | UInt128($1) }
    }

    /// Cuts 0...top where the set of ranges covering a value changes,
    /// merging neighbours with the same set.
    static func intervals(_ ranges: [(bit: Int, range: ClosedRange<UInt128>)], top: UInt128, words: Int,
                          intern: ([UInt64]) -> Int) -> [Interval] {
        var starts = [UInt128: [Int]](), ends = [UInt128: [Int]]()
        for (bit, r) in ranges {
            starts[r.lowerBound, default: []].append(bit)
            if r.upperBound < top { ends[r.upperBound + 1, default: []].append(bit) }
        }
        let cuts = Set(starts.keys).union(ends.keys).union([0]).sorted()
        var bits = [UInt64](repeating: 0, count: words)
        var out = [Interval]()
        for (i, cut) in cuts.enumerated() {
            for b in starts[cut] ?? [] { bits[b / 64] |= 1 << UInt64(b % 64) }
            for b in ends[cut] ?? [] { bits[b / 64] &= ~(1 << UInt64(b % 64)) }
            let upper = i + 1 < cuts.count ? cuts[i + 1] - 1 : top
            let bitmap = intern(bits)
            if let last = out.last, last.bitmap == bitmap {
                out[out.count - 1].upper = upper
            } else {
                out.append(Interval(lower: cut, upper: upper, bitmap: bitmap))
            }
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

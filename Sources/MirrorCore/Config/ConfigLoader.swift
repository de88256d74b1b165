import Yams

/// One problem in a configuration, with its path in the file
/// (`sessions[1].vni`) and its line.
public struct ConfigProblem: Error, Equatable, Sendable, CustomStringConvertible {
    public var path: String
    public var message: String
    public var line: Int?

    public init(path: String, message: String, line: Int? = nil) {
        self.path = path
        self.message = message
        self.line = line
    }

    public var description: String {
        "\(path): \(message)" + (line.map { " (line \($0))" } ?? "")
    }
}

/// Every problem found, in file order.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var problems: [ConfigProblem]
    public init(_ problems: [ConfigProblem]) { self.problems = problems }
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// Reads the YAML configuration of SPEC §2 into a `MirrorConfig`, or lists
/// every problem at once: unknown or repeated keys, wrong types, values out
/// of range, bad CIDRs, ports on a protocol without ports, repeated rule or
/// session numbers, names that refer to nothing, rules that mix address
/// families, and plans beyond what the kernel maps hold.
public enum ConfigLoader {
    public static func load(yaml: String) throws(ConfigError) -> MirrorConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let e as YamlError {
            throw ConfigError([ConfigProblem(path: "config", message: "not valid YAML: \(Self.describe(e))")])
        } catch {
            throw ConfigError([ConfigProblem(path: "config", message: "not valid YAML: \(error)")])
        }
        var c = Checker()
        let config = c.config(root)
        if !c.problems.isEmpty { throw ConfigError(c.problems) }
        return config
    }

    static func describe(_ e: YamlError) -> String {
        switch e {
        case let .scanner(_, problem, mark, _), let .parser(_, problem, mark, _):
            return "\(problem) at line \(mark.line), column \(mark.column)"
        case let .composer(_, problem, mark, _):
            return "\(problem) at line \(mark.line), column \(mark.column)"
        case let .duplicatedKeysInMapping(duplicates, context):
            return "key \(duplicates.map { "\"\($0)\"" }.joined(separator: ", ")) appears twice in one mapping at line \(context.mark.line); each key may appear once"
        case let .reader(problem, offset, _, _):
            return "\(problem)" + (offset.map { " at byte \($0)" } ?? "")
        default:
            return "\(e)"
        }
    }
}

/// Walks the document, collecting problems instead of stopping at the first.
struct Checker {
    var problems: [ConfigProblem] = []
    var declaredTargets = Set<String>()
    var declaredFilters = Set<String>()
    /// Session names and numbers seen so far, with the index that used them.
    var sessionNames = [String: Int]()
    var sessionNumbers = [Int: Int]()

    mutating func fail(_ path: String, _ node: Node?, _ message: String) {
        problems.append(ConfigProblem(path: path, message: message, line: node?.mark?.line))
    }

    // MARK: shapes

    /// The pairs of a mapping whose keys must be among `allowed`; unknown
    /// and repeated keys are problems. Nil (with a problem) if not a mapping.
    mutating func mapping(_ node: Node?, _ path: String, allowed: [String]? = nil, what: String) -> [(String, Node)]? {
        guard let node else { return nil }
        guard case .mapping(let m) = node else {
            fail(path, node, "expected \(what) (a mapping of keys to values)")
            return nil
        }
        var seen = Set<String>()
        var out = [(String, Node)]()
        for (k, v) in m {
            guard case .scalar(let s) = k else {
                fail(path, k, "keys must be plain names")
                continue
            }
            let key = s.string
            let p = path.isEmpty ? key : "\(path).\(key)"
            if let allowed, !allowed.contains(key) {
                fail(p, k, "unknown key; expected one of \(allowed.joined(separator: ", "))")
                continue
            }
            guard seen.insert(key).inserted else {
                fail(p, k, "appears twice")
                continue
            }
            out.append((key, v))
        }
        return out
    }

    mutating func sequence(_ node: Node?, _ path: String, what: String) -> [Node]? {
        guard let node else { return nil }
        guard case .sequence(let s) = node else {
            fail(path, node, "expected a list of \(what)")
            return nil
        }
        return Array(s)
    }

    /// A scalar's text; nil for null (`~`, empty), a problem for non-scalars.
    mutating func scalar(_ node: Node?, _ path: String) -> String? {
        guard let node else { return nil }
        guard case .scalar(let s) = node else {
            fail(path, node, "expected a single value, not a list or mapping")
            return nil
        }
        if s.style == .plain && ["", "~", "null", "Null", "NULL"].contains(s.string) { return nil }
        return s.string
    }

    mutating func integer(_ node: Node?, _ path: String, _ range: ClosedRange<Int>) -> Int? {
        guard let text = scalar(node, path) else { return nil }
        guard let v = Int(text) else {
            fail(path, node, "expected an integer \(range.lowerBound)...\(range.upperBound), got \"\(text)\"")
            return nil
        }
        guard range.contains(v) else {
            fail(path, node, "\(v) is out of range \(range.lowerBound)...\(range.upperBound)")
            return nil
        }
        return v
    }

    mutating func name(_ text: String, _ node: Node?, _ path: String, what: String) -> Bool {
        let ok = (1...64).contains(text.count) && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
        if !ok { fail(path, node, "\(what) \"\(text)\" must be 1 to 64 letters, digits, '-', '_' or '.'") }
        return ok
    }

    mutating func choice<T: RawRepresentable>(_ node: Node?, _ path: String, _ type: T.Type, all: [T]) -> T? where T.RawValue == String {
        guard let text = scalar(node, path) else { return nil }
        guard let v = T(rawValue: text) else {
            fail(path, node, "\"\(text)\" is not one of \(all.map(\.rawValue).joined(separator: ", "))")
            return nil
        }
        return v
    }

    // MARK: document

    mutating func config(_ root: Node?) -> MirrorConfig {
        guard let root else {
            fail("config", nil, "the file is empty; it needs targets and sessions")
            return MirrorConfig(targets: [], filters: [], sessions: [])
        }
        let top = mapping(root, "", allowed: ["targets", "filters", "sessions"], what: "the configuration") ?? []
        let dict = Dictionary(top, uniquingKeysWith: { a, _ in a })
        // Names as declared, valid or not, so references are checked even
        // when the thing referred to has problems of its own.
        declaredTargets = Set(dict["targets"].flatMap { n -> [String]? in
            if case .mapping(let m) = n { m.compactMap(\.key.string) } else { nil } } ?? [])
        declaredFilters = Set(dict["filters"].flatMap { n -> [String]? in
            if case .mapping(let m) = n { m.compactMap(\.key.string) } else { nil } } ?? [])
        var targets = [TargetConfig]()
        if let t = mapping(dict["targets"], "targets", what: "targets by name") {
            for (name, node) in t { if let x = target(name, node) { targets.append(x) } }
        }
        if dict["targets"] == nil || targets.isEmpty && problems.isEmpty {
            fail("targets", dict["targets"], "at least one target is required")
        }
        var filters = [FilterConfig]()
        if let f = mapping(dict["filters"], "filters", what: "filters by name") {
            for (name, node) in f { if let x = filter(name, node) { filters.append(x) } }
        }
        var sessions = [SessionConfig]()
        if let s = sequence(dict["sessions"], "sessions", what: "sessions") {
            for (i, node) in s.enumerated() { if let x = session(i, node) { sessions.append(x) } }
        }
        if dict["sessions"] == nil || sessions.isEmpty && problems.isEmpty {
            fail("sessions", dict["sessions"], "at least one session is required")
        }
        let config = MirrorConfig(targets: targets, filters: filters, sessions: sessions)
        crossCheck(config, dict["sessions"])
        return config
    }

    mutating func target(_ name: String, _ node: Node) -> TargetConfig? {
        let path = "targets.\(name)"
        guard self.name(name, node, path, what: "target name"),
              let pairs = mapping(node, path, allowed: [
                  "address", "endpoints", "port", "encapsulation", "mtu", "mode", "health_check", "description",
                  "geneve_origin", "host_id", "hardware_id", "pacing",
              ], what: "a target")
        else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        let before = problems.count
        var endpoints = [HostPort]()
        switch (d["address"], d["endpoints"]) {
        case (let a?, nil):
            if let text = scalar(a, "\(path).address") {
                if let e = endpoint(text, a, "\(path).address", allowPort: false) { endpoints = [e] }
            } else {
                fail("\(path).address", a, "required: the target's IPv4 or IPv6 address or host name")
            }
        case (nil, let list?):
            if let items = sequence(list, "\(path).endpoints", what: "endpoints (HOST, HOST:PORT or [IPv6]:PORT)") {
                for (i, n) in items.enumerated() {
                    let p = "\(path).endpoints[\(i)]"
                    guard let text = scalar(n, p) else { fail(p, n, "empty endpoint"); continue }
                    if let e = endpoint(text, n, p, allowPort: true) {
                        if endpoints.contains(e) { fail(p, n, "\(e) is listed twice") } else { endpoints.append(e) }
                    }
                }
                if items.isEmpty { fail("\(path).endpoints", list, "at least one endpoint is required") }
                if items.count > 64 { fail("\(path).endpoints", list, "\(items.count) endpoints; at most 64") }
            }
        case (_?, _?):
            fail("\(path).endpoints", d["endpoints"], "give either address (one endpoint) or endpoints (a group), not both")
        case (nil, nil):
            fail("\(path).address", node, "required: address, or endpoints for a group")
        }
        let port = integer(d["port"], "\(path).port", 1...65535)
        let enc = choice(d["encapsulation"], "\(path).encapsulation", Encapsulation.self, all: Encapsulation.allCases) ?? .vxlan
        let mtu = integer(d["mtu"], "\(path).mtu", 128...65535)
        let mode = choice(d["mode"], "\(path).mode", TargetMode.self, all: TargetMode.allCases) ?? .balance
        let health = healthCheck(d["health_check"], "\(path).health_check")
        _ = scalar(d["description"], "\(path).description")
        if enc.isERSPAN {
            if d["port"] != nil {
                fail("\(path).port", d["port"], "\(enc.rawValue) runs over GRE (IP protocol 47), which has no port; remove port")
            }
            if let e = endpoints.first(where: { $0.port != nil }) {
                fail("\(path).endpoints", d["endpoints"], "\(e): \(enc.rawValue) runs over GRE, which has no port; give the host alone")
            }
        }
        let origin = boolean(d["geneve_origin"], "\(path).geneve_origin")
        if origin != nil && enc != .geneve {
            fail("\(path).geneve_origin", d["geneve_origin"], "the origin option is a GENEVE option; set encapsulation: geneve or remove geneve_origin")
        }
        let hostID = integer(d["host_id"], "\(path).host_id", 0...Int(UInt32.max))
        if d["host_id"] != nil && origin != true {
            fail("\(path).host_id", d["host_id"], "host_id is carried by the GENEVE origin option; set geneve_origin: true or remove host_id")
        }
        let hardwareID = integer(d["hardware_id"], "\(path).hardware_id", 0...Int(Tunnel.maxHardwareID))
        if d["hardware_id"] != nil && enc != .erspan3 {
            fail("\(path).hardware_id", d["hardware_id"], "only ERSPAN Type III carries a hardware ID; set encapsulation: erspan3 or remove hardware_id")
        }
        var pacing: Pacing?
        if let node = d["pacing"] { pacing = self.pacing(node, "\(path).pacing") }
        guard problems.count == before else { return nil }
        var t = TargetConfig(name: name, endpoints: endpoints, port: port.map(UInt16.init), encapsulation: enc, mtu: mtu,
                             mode: mode, healthCheck: health ?? .init())
        t.geneveOrigin = origin ?? false
        t.hostID = hostID.map(UInt32.init)
        t.hardwareID = UInt8(hardwareID ?? 0)
        t.pacing = pacing
        return t
    }

    mutating func pacing(_ node: Node, _ path: String) -> Pacing? {
        guard let pairs = mapping(node, path, allowed: ["packets_per_second", "burst"], what: "pacing") else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        guard d["packets_per_second"] != nil else {
            fail("\(path).packets_per_second", node, "required: the most datagrams a second each endpoint takes, e.g. 500000")
            return nil
        }
        let rate = integer(d["packets_per_second"], "\(path).packets_per_second", 1...1_000_000_000)
        let burst = integer(d["burst"], "\(path).burst", 1...Pacing.maxBurst)
        guard let rate else { return nil }
        return Pacing(packetsPerSecond: UInt64(rate), burst: burst ?? Pacing.defaultBurst)
    }

    mutating func boolean(_ node: Node?, _ path: String) -> Bool? {
        guard let text = scalar(node, path) else { return nil }
        switch text {
        case "true", "True", "TRUE", "yes", "on": return true
        case "false", "False", "FALSE", "no", "off": return false
        default:
            fail(path, node, "expected true or false, got \"\(text)\"")
            return nil
        }
    }

    mutating func endpoint(_ text: String, _ node: Node?, _ path: String, allowPort: Bool) -> HostPort? {
        if IPAddress(text) != nil { return HostPort(host: text, port: nil) }
        guard let hp = try? HostPort(parsing: text) else {
            fail(path, node, "\"\(text)\" is not an IPv4 address, IPv6 address or host name" + (allowPort ? ", with an optional :PORT" : ""))
            return nil
        }
        if hp.port != nil && !allowPort {
            fail(path, node, "\"\(text)\": an address takes no port; set port: instead")
            return nil
        }
        return hp
    }

    mutating func healthCheck(_ node: Node?, _ path: String) -> HealthCheckConfig? {
        guard let pairs = mapping(node, path, allowed: [
            "probe", "port", "interval", "timeout", "unhealthy_threshold", "healthy_threshold",
        ], what: "a health check") else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        var h = HealthCheckConfig()
        h.explicit = true
        h.probe = choice(d["probe"], "\(path).probe", HealthCheckConfig.Probe.self, all: HealthCheckConfig.Probe.allCases) ?? .icmp
        h.port = integer(d["port"], "\(path).port", 1...65535).map(UInt16.init)
        if h.probe == .tcp && h.port == nil && d["port"] == nil {
            fail("\(path).port", node, "required with probe: tcp (the TCP port to connect to)")
        }
        if h.probe != .tcp && d["port"] != nil {
            fail("\(path).port", d["port"], "only probe: tcp uses a port")
        }
        h.interval = seconds(d["interval"], "\(path).interval", 0.1...3600) ?? 1
        h.timeout = seconds(d["timeout"], "\(path).timeout", 0.05...60) ?? min(1, h.interval)
        if h.timeout > h.interval { fail("\(path).timeout", d["timeout"], "\(h.timeout) s is longer than the interval (\(h.interval) s)") }
        h.unhealthyThreshold = integer(d["unhealthy_threshold"], "\(path).unhealthy_threshold", 1...100) ?? 3
        h.healthyThreshold = integer(d["healthy_threshold"], "\(path).healthy_threshold", 1...100) ?? 2
        return h
    }

    /// Seconds as a number, or with an "s"/"ms" suffix.
    mutating func seconds(_ node: Node?, _ path: String, _ range: ClosedRange<Double>) -> Double? {
        guard let text = scalar(node, path) else { return nil }
        var v: Double?
        if text.hasSuffix("ms") { v = Double(text.dropLast(2)).map { $0 / 1000 } }
        else if text.hasSuffix("s") { v = Double(text.dropLast()) }
        else { v = Double(text) }
        guard let v, range.contains(v) else {
            fail(path, node, "\"\(text)\" must be seconds from \(range.lowerBound) to \(range.upperBound) (e.g. 1, 0.5, 250ms)")
            return nil
        }
        return v
    }

    mutating func filter(_ name: String, _ node: Node) -> FilterConfig? {
        let path = "filters.\(name)"
        guard self.name(name, node, path, what: "filter name"),
              let pairs = mapping(node, path, allowed: ["ingress", "egress", "description"], what: "a filter")
        else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        _ = scalar(d["description"], "\(path).description")
        var out = FilterConfig(name: name, ingress: [], egress: [])
        for direction in Direction.allCases {
            let dp = "\(path).\(direction.rawValue)"
            guard let rules = sequence(d[direction.rawValue], dp, what: "rules") else { continue }
            if rules.count > PlanLimits.rulesPerFilterDirection {
                fail(dp, d[direction.rawValue], "\(rules.count) rules; at most \(PlanLimits.rulesPerFilterDirection) per direction")
            }
            var numbers = [Int: Int]()
            var parsed = [RuleConfig]()
            for (i, r) in rules.enumerated() {
                let before = problems.count
                let rule = rule(r, "\(dp)[\(i)]")
                // Repeated numbers are found even in rules with other problems.
                if let n = r.mapping?.first(where: { $0.key.string == "rule" })?.value.string.flatMap({ Int($0) }) {
                    if let first = numbers[n] {
                        fail("\(dp)[\(i)].rule", r, "rule number \(n) is already used by \(dp)[\(first)]; rule numbers are unique per direction")
                    } else {
                        numbers[n] = i
                    }
                }
                if let rule, problems.count == before { parsed.append(rule) }
            }
            if direction == .ingress { out.ingress = parsed } else { out.egress = parsed }
        }
        return out
    }

    mutating func rule(_ node: Node, _ path: String) -> RuleConfig? {
        guard let pairs = mapping(node, path, allowed: [
            "rule", "action", "protocol", "source", "destination", "source_ports", "destination_ports", "description",
        ], what: "a rule") else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        let before = problems.count
        let number = integer(d["rule"], "\(path).rule", 1...32766)
        if d["rule"] == nil { fail("\(path).rule", node, "required: the rule number, 1...32766 (lower is evaluated first)") }
        let action = choice(d["action"], "\(path).action", RuleAction.self, all: [.accept, .reject])
        if d["action"] == nil { fail("\(path).action", node, "required: accept or reject") }
        let proto = protocolMatch(d["protocol"], "\(path).protocol")
        let source = cidr(d["source"], "\(path).source")
        let destination = cidr(d["destination"], "\(path).destination")
        let sp = ports(d["source_ports"], "\(path).source_ports")
        let dp = ports(d["destination_ports"], "\(path).destination_ports")
        _ = scalar(d["description"], "\(path).description")
        if (sp != nil || dp != nil), let proto, !proto.hasPorts {
            let which = sp != nil ? "source_ports" : "destination_ports"
            fail("\(path).\(which)", d[which], "ports need protocol tcp or udp; protocol \(proto) has no ports")
        }
        if let s = source, let t = destination, s.isIPv4 != t.isIPv4 {
            fail("\(path).destination", d["destination"], "\(t) is \(t.isIPv4 ? "IPv4" : "IPv6") but source \(s) is \(s.isIPv4 ? "IPv4" : "IPv6"); a rule matches one family")
        }
        if case .number(let n) = proto ?? .all, let fam = (source ?? destination).map({ $0.isIPv4 }) {
            if n == 58 && fam { fail("\(path).protocol", d["protocol"], "icmpv6 never matches IPv4 addresses") }
            if n == 1 && !fam { fail("\(path).protocol", d["protocol"], "icmp (IPv4) never matches IPv6 addresses; use icmpv6") }
        }
        guard problems.count == before, let number, let action else { return nil }
        return RuleConfig(number: number, action: action, proto: proto ?? .all, source: source,
                          destination: destination, sourcePorts: sp, destinationPorts: dp)
    }

    mutating func protocolMatch(_ node: Node?, _ path: String) -> ProtocolMatch? {
        guard let text = scalar(node, path) else { return .all }
        let lower = text.lowercased()
        if lower == "all" || lower == "-1" { return .all }
        if let n = ProtocolMatch.names[lower] { return .number(n) }
        if let n = Int(text), (0...255).contains(n) { return .number(UInt8(n)) }
        fail(path, node, "\"\(text)\" is not a protocol: tcp, udp, icmp, icmpv6, a number 0...255, or all")
        return nil
    }

    mutating func cidr(_ node: Node?, _ path: String) -> CIDR? {
        guard let text = scalar(node, path) else { return nil }
        do {
            return try CIDR(parsing: text)
        } catch {
            fail(path, node, error.message)
            return nil
        }
    }

    mutating func ports(_ node: Node?, _ path: String) -> PortRange? {
        guard let text = scalar(node, path) else { return nil }
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
        guard (1...2).contains(parts.count), let lo = UInt16(parts[0]), let hi = UInt16(parts.last!) else {
            fail(path, node, "\"\(text)\" is not a port (0...65535) or an inclusive range N-M")
            return nil
        }
        guard lo <= hi else {
            fail(path, node, "range \(text) runs backwards; write \(hi)-\(lo)")
            return nil
        }
        return PortRange(lo, hi)
    }

    mutating func rateLimit(_ node: Node?, _ path: String) -> RateLimit? {
        guard let pairs = mapping(node, path, allowed: ["packets_per_second", "bits_per_second", "burst"], what: "a rate limit") else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        let pps = integer(d["packets_per_second"], "\(path).packets_per_second", 1...1_000_000_000)
        let bps = integer(d["bits_per_second"], "\(path).bits_per_second", 1_000...1_000_000_000_000)
        // The kernel keeps the bucket in token-nanoseconds (exact refill):
        // RateLimit.maxBurst keeps twice the depth in 64 bits.
        let burst = integer(d["burst"], "\(path).burst", 1...Int(RateLimit.maxBurst))
        switch (pps, bps) {
        case let (p?, nil): return RateLimit(unit: .packets, perSecond: UInt64(p), burst: burst.map(UInt64.init))
        case let (nil, b?):
            if let burst, burst < RateLimit.minBitBurst {
                fail("\(path).burst", d["burst"], "\(burst) bits cannot hold one GSO super-packet (64 KiB and its segments' headers); use at least \(RateLimit.minBitBurst)")
            }
            return RateLimit(unit: .bits, perSecond: UInt64(b), burst: burst.map(UInt64.init))
        case (_?, _?):
            fail(path, node, "give packets_per_second or bits_per_second, not both")
        case (nil, nil):
            if d["packets_per_second"] == nil && d["bits_per_second"] == nil {
                fail(path, node, "needs packets_per_second or bits_per_second")
            }
        }
        return nil
    }

    /// One entry of `interfaces`: a name or pattern (NAMESPACE/PATTERN for
    /// another namespace), or {interface, netns | netns_path}.
    mutating func source(_ node: Node, _ path: String) -> String? {
        if case .mapping = node {
            guard let pairs = mapping(node, path, allowed: ["interface", "netns", "netns_path"], what: "an interface of a network namespace")
            else { return nil }
            let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
            guard let interface = scalar(d["interface"], "\(path).interface") else {
                fail("\(path).interface", d["interface"] ?? node, "required: the interface name or pattern inside the namespace")
                return nil
            }
            switch (scalar(d["netns"], "\(path).netns"), scalar(d["netns_path"], "\(path).netns_path")) {
            case (let name?, nil):
                guard !name.contains("/"), !name.isEmpty else {
                    fail("\(path).netns", d["netns"], "\"\(name)\" is not a name under /var/run/netns; for a path use netns_path")
                    return nil
                }
                return "\(name)/\(interface)"
            case (nil, let file?):
                guard file.hasPrefix("/") else {
                    fail("\(path).netns_path", d["netns_path"], "\"\(file)\" is not an absolute path (e.g. /proc/PID/ns/net)")
                    return nil
                }
                return "\(file)/\(interface)"
            case (nil, nil):
                return interface
            default:
                fail(path, node, "give either netns or netns_path, not both")
                return nil
            }
        }
        guard let text = scalar(node, path) else {
            fail(path, node, "empty interface name")
            return nil
        }
        return text
    }

    mutating func session(_ i: Int, _ node: Node) -> SessionConfig? {
        let path = "sessions[\(i)]"
        guard let pairs = mapping(node, path, allowed: [
            "name", "interfaces", "target", "filter", "number", "vni", "packet_length", "direction", "sample", "rate_limit",
            "erspan_session_id", "duration", "max_packets", "max_bytes", "start_at", "stop_at", "mask", "deduplicate",
            "description",
        ], what: "a session") else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        let before = problems.count
        let name = scalar(d["name"], "\(path).name")
        if let n = name { _ = self.name(n, d["name"], "\(path).name", what: "session name") }
        else { fail("\(path).name", d["name"] ?? node, "required: a name for the session (it labels its metrics)") }
        var interfaces = [String]()
        if let list = sequence(d["interfaces"], "\(path).interfaces", what: "interface names") {
            for (j, n) in list.enumerated() {
                let p = "\(path).interfaces[\(j)]"
                guard let text = source(n, p) else { continue }
                if let problem = InterfacePattern.problem(text) {
                    fail(p, n, problem)
                } else if interfaces.contains(text) {
                    fail(p, n, "\(text) is listed twice")
                } else {
                    interfaces.append(text)
                }
            }
            if list.isEmpty { fail("\(path).interfaces", d["interfaces"], "at least one source interface is required") }
        } else if d["interfaces"] == nil {
            fail("\(path).interfaces", node, "required: the source interfaces, e.g. [eth0]")
        }
        let target = scalar(d["target"], "\(path).target")
        if let t = target, !declaredTargets.contains(t) {
            fail("\(path).target", d["target"], "no target named \"\(t)\"" + (declaredTargets.isEmpty ? "" : "; targets: \(declaredTargets.sorted().joined(separator: ", "))"))
        } else if target == nil {
            fail("\(path).target", d["target"] ?? node, "required: the name of a target")
        }
        let filter = scalar(d["filter"], "\(path).filter")
        if let f = filter, !declaredFilters.contains(f) {
            fail("\(path).filter", d["filter"], "no filter named \"\(f)\"" + (declaredFilters.isEmpty ? "" : "; filters: \(declaredFilters.sorted().joined(separator: ", "))"))
        }
        let number = integer(d["number"], "\(path).number", 1...32766)
        if d["number"] == nil { fail("\(path).number", node, "required: the session number, 1...32766 (lower is evaluated first)") }
        if let name {
            if let first = sessionNames[name] {
                fail("\(path).name", d["name"], "session name \"\(name)\" is already used by sessions[\(first)]")
            } else { sessionNames[name] = i }
        }
        if let number {
            if let first = sessionNumbers[number] {
                fail("\(path).number", d["number"], "session number \(number) is already used by sessions[\(first)]; numbers give the evaluation order and must be unique")
            } else { sessionNumbers[number] = i }
        }
        let vni = integer(d["vni"], "\(path).vni", 0...Int(TunnelHeader.maxVNI))
        var length: Int?
        var slice: LayerSlice?
        if let n = d["packet_length"], n.mapping != nil {
            slice = layerSlice(n, "\(path).packet_length")
        } else {
            length = integer(d["packet_length"], "\(path).packet_length", 14...65535)
        }
        let mask = self.mask(d["mask"], "\(path).mask")
        let bounds = self.bounds(d, path)
        var dedup: Double?
        if let n = d["deduplicate"] {
            if let text = n.string, ["true", "false", "yes", "no", "on", "off"].contains(text) {
                dedup = boolean(n, "\(path).deduplicate") == true ? SessionConfig.defaultDedupWindow : nil
            } else {
                dedup = duration(n, "\(path).deduplicate", 0.000_001...1,
                                 what: "true, false or the window, which", example: "1ms")
            }
        }
        let direction = choice(d["direction"], "\(path).direction", DirectionSelection.self, all: DirectionSelection.allCases)
        let sample = integer(d["sample"], "\(path).sample", 1...1_000_000)
        let rate = rateLimit(d["rate_limit"], "\(path).rate_limit")
        let erspanID = integer(d["erspan_session_id"], "\(path).erspan_session_id", 0...Int(Tunnel.maxSessionID))
        _ = scalar(d["description"], "\(path).description")
        guard problems.count == before, let name, let target, let number else { return nil }
        var s = SessionConfig(name: name, interfaces: interfaces, target: target, filter: filter, number: number,
                              vni: UInt32(vni ?? 1), packetLength: length, direction: direction ?? .both,
                              sample: sample ?? 1, rateLimit: rate)
        s.erspanSessionID = erspanID.map(UInt16.init)
        s.slice = slice
        s.mask = mask
        s.bounds = bounds
        s.deduplicate = dedup
        return s
    }

    mutating func layerSlice(_ node: Node, _ path: String) -> LayerSlice? {
        guard let pairs = mapping(node, path, allowed: ["after", "bytes"], what: "a layer-relative length ({after: l4, bytes: 64})")
        else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        let after = choice(d["after"], "\(path).after", SliceLayer.self, all: SliceLayer.allCases)
        if d["after"] == nil { fail("\(path).after", node, "required: the layer whose headers the copy keeps, l3 or l4") }
        let bytes = integer(d["bytes"], "\(path).bytes", 0...LayerSlice.maxBytes)
        if d["bytes"] == nil { fail("\(path).bytes", node, "required: the bytes kept after those headers, 0...\(LayerSlice.maxBytes)") }
        guard let after, let bytes else { return nil }
        return LayerSlice(after: after, bytes: bytes)
    }

    mutating func mask(_ node: Node?, _ path: String) -> Mask? {
        guard let node, let pairs = mapping(node, path, allowed: ["after", "offset", "bytes", "pattern"],
                                            what: "a mask ({after: l4, offset: 0, bytes: 16, pattern: 0x00})")
        else { return nil }
        let d = Dictionary(pairs, uniquingKeysWith: { a, _ in a })
        let after = choice(d["after"], "\(path).after", SliceLayer.self, all: SliceLayer.allCases)
        if d["after"] == nil { fail("\(path).after", node, "required: the layer whose payload is masked, l3 or l4") }
        let offset = integer(d["offset"], "\(path).offset", 0...65535) ?? 0
        let bytes = integer(d["bytes"], "\(path).bytes", 1...Mask.maxBytes)
        if d["bytes"] == nil { fail("\(path).bytes", node, "required: how many bytes to overwrite, 1...\(Mask.maxBytes)") }
        var pattern: UInt8 = 0
        if let text = scalar(d["pattern"], "\(path).pattern") {
            let v = text.lowercased().hasPrefix("0x") ? UInt8(text.dropFirst(2), radix: 16) : UInt8(text)
            if let v { pattern = v } else { fail("\(path).pattern", d["pattern"], "\"\(text)\" must be a byte, 0...255 or 0x00...0xff") }
        }
        guard let after, let bytes else { return nil }
        return Mask(after: after, offset: offset, bytes: bytes, pattern: pattern)
    }

    /// duration, max_packets, max_bytes, start_at, stop_at; nil when none is given.
    mutating func bounds(_ d: [String: Node], _ path: String) -> SessionBounds? {
        var b = SessionBounds()
        b.duration = duration(d["duration"], "\(path).duration", 0.001...31_622_400, what: "the duration", example: "10m")
        b.maxPackets = integer(d["max_packets"], "\(path).max_packets", 1...Int.max).map(UInt64.init)
        b.maxBytes = byteCount(d["max_bytes"], "\(path).max_bytes")
        for (key, keyPath) in [("start_at", \SessionBounds.startAt), ("stop_at", \SessionBounds.stopAt)] {
            guard let text = scalar(d[key], "\(path).\(key)") else { continue }
            if let t = RFC3339.parse(text) { b[keyPath: keyPath] = t }
            else { fail("\(path).\(key)", d[key], "\"\(text)\" is not an RFC 3339 date-time such as 2026-12-04T21:00:00Z") }
        }
        if let a = b.startAt, let z = b.stopAt, z <= a {
            fail("\(path).stop_at", d["stop_at"], "stop_at is not after start_at")
        }
        return b.isEmpty ? nil : b
    }

    /// Seconds, with an optional unit: us, ms, s, m, h.
    mutating func duration(_ node: Node?, _ path: String, _ range: ClosedRange<Double>, what: String,
                           example: String) -> Double? {
        guard let text = scalar(node, path) else { return nil }
        guard let v = SessionBounds.seconds(text), range.contains(v) else {
            fail(path, node, "\"\(text)\": \(what) must be \(range.lowerBound) to \(range.upperBound) seconds, as a number or with a unit (us, ms, s, m, h), e.g. \(example)")
            return nil
        }
        return v
    }

    /// Bytes, with an optional K, M or G (powers of 1024).
    mutating func byteCount(_ node: Node?, _ path: String) -> UInt64? {
        guard let text = scalar(node, path) else { return nil }
        var digits = Substring(text)
        var scale: UInt64 = 1
        if let last = digits.last, let s = ["K": UInt64(1) << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40][String(last).uppercased()] {
            scale = s
            digits = digits.dropLast()
        }
        guard let v = UInt64(digits), v > 0, v <= UInt64.max / scale else {
            fail(path, node, "\"\(text)\" must be a byte count above 0, with an optional K, M, G or T (powers of 1024), e.g. 1G")
            return nil
        }
        return v * scale
    }

    /// What only the whole document can tell: names that refer to nothing,
    /// repeated names and numbers, limits per interface and in total, and
    /// whether the compiled plan fits the kernel's maps.
    mutating func crossCheck(_ c: MirrorConfig, _ sessionsNode: Node?) {
        if c.sessions.count > PlanLimits.sessions {
            fail("sessions", sessionsNode, "\(c.sessions.count) sessions; at most \(PlanLimits.sessions)")
        }
        var perInterface = [String: Int]()
        for s in c.sessions { for i in s.interfaces { perInterface[i, default: 0] += 1 } }
        for (i, n) in perInterface.sorted(by: { $0.key < $1.key }) where n > PlanLimits.sessionsPerInterface {
            fail("sessions", sessionsNode, "interface \(i) has \(n) sessions; at most \(PlanLimits.sessionsPerInterface) per interface")
        }
        if perInterface.count > PlanLimits.interfaces {
            fail("sessions", sessionsNode, "\(perInterface.count) interfaces; at most \(PlanLimits.interfaces)")
        }
        let nodes = sessionsNode.flatMap { n -> [Node]? in if case .sequence(let q) = n { Array(q) } else { nil } } ?? []
        // Indexes are the document's only when every session loaded.
        for (i, s) in c.sessions.enumerated() where nodes.count == c.sessions.count {
            guard let t = c.targets.first(where: { $0.name == s.target }) else { continue }
            let node = nodes[i]
            if t.encapsulation.isERSPAN {
                if s.erspanSessionID == nil && s.vni > UInt32(Tunnel.maxSessionID) {
                    fail("sessions[\(i)].erspan_session_id", node, "required: target \(t.name) is \(t.encapsulation.rawValue), whose session ID (0...1023) defaults to the VNI, and vni \(s.vni) is larger; set erspan_session_id")
                }
            } else if s.erspanSessionID != nil {
                fail("sessions[\(i)].erspan_session_id", node, "target \(t.name) is \(t.encapsulation.rawValue), not ERSPAN; remove erspan_session_id (the VNI identifies the session)")
            }
        }
        guard problems.isEmpty else { return }
        if let problem = MirrorPlan(compiling: c).kernelLimitProblem {
            fail(problem.path, problem.path == "filters" ? nil : sessionsNode, problem.message)
        }
    }
}

extension Node {
    /// A scalar's text, if this is a scalar.
    var string: String? {
        if case .scalar(let s) = self { return s.string }
        return nil
    }

    var mapping: Mapping? {
        if case .mapping(let m) = self { return m }
        return nil
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}

/// The validated configuration: targets, filters and sessions, modelled on
/// AWS Traffic Mirroring's objects (SPEC §2). Built by `ConfigLoader` from
/// YAML or by `MirrorConfig.quick` from the `run` flags.
public struct MirrorConfig: Equatable, Sendable {
    public var targets: [TargetConfig]
    public var filters: [FilterConfig]
    public var sessions: [SessionConfig]

    public init(targets: [TargetConfig], filters: [FilterConfig], sessions: [SessionConfig]) {
        self.targets = targets
        self.filters = filters
        self.sessions = sessions
    }

    /// The single unfiltered session the quick flags describe.
    public static func quick(
        interfaces: [String], target: HostPort, vni: UInt32, direction: DirectionSelection,
        packetLength: Int?
    ) -> MirrorConfig {
        MirrorConfig(
            targets: [TargetConfig(name: "default", address: target.host, port: target.port)],
            filters: [],
            sessions: [SessionConfig(
                name: "default", interfaces: interfaces, target: "default", filter: nil, number: 1,
                vni: vni, packetLength: packetLength, direction: direction)])
    }
}

public struct TargetConfig: Equatable, Sendable {
    public var name: String
    /// IPv4, IPv6 or a host name.
    public var address: String
    /// Default: the encapsulation's port (4789 VXLAN, 6081 GENEVE).
    public var port: UInt16?
    public var encapsulation: Encapsulation
    /// Path MTU toward the target; default: the MTU of the route to it.
    public var mtu: Int?

    public init(name: String, address: String, port: UInt16? = nil, encapsulation: Encapsulation = .vxlan, mtu: Int? = nil) {
        self.name = name
        self.address = address
        self.port = port
        self.encapsulation = encapsulation
        self.mtu = mtu
    }

    public var effectivePort: UInt16 { port ?? encapsulation.defaultPort }
}

public enum RuleAction: String, Sendable, Equatable {
    case accept, reject
}

/// A rule's protocol: a number 0...255, or any.
public enum ProtocolMatch: Equatable, Sendable, CustomStringConvertible {
    case all
    case number(UInt8)

    public static let names: [String: UInt8] = ["tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58]

    public var hasPorts: Bool {
        if case .number(let n) = self { n == 6 || n == 17 } else { false }
    }

    public var description: String {
        switch self {
        case .all: "all"
        case .number(let n): Self.names.first { $0.value == n }?.key ?? String(n)
        }
    }
}

/// An inclusive port range.
public struct PortRange: Equatable, Sendable, CustomStringConvertible {
    public var lower: UInt16
    public var upper: UInt16

    public init(_ lower: UInt16, _ upper: UInt16) {
        self.lower = lower
        self.upper = upper
    }

    public func contains(_ port: UInt16) -> Bool { port >= lower && port <= upper }
    public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }
}

public struct RuleConfig: Equatable, Sendable {
    /// 1...32766, unique per direction; lower is evaluated first.
    public var number: Int
    public var action: RuleAction
    public var proto: ProtocolMatch
    public var source: CIDR?
    public var destination: CIDR?
    public var sourcePorts: PortRange?
    public var destinationPorts: PortRange?

    public init(number: Int, action: RuleAction, proto: ProtocolMatch = .all, source: CIDR? = nil,
                destination: CIDR? = nil, sourcePorts: PortRange? = nil, destinationPorts: PortRange? = nil) {
        self.number = number
        self.action = action
        self.proto = proto
        self.source = source
        self.destination = destination
        self.sourcePorts = sourcePorts
        self.destinationPorts = destinationPorts
    }

    /// The family the rule is confined to: from its CIDRs, else both (nil).
    public var family: ParsedPacket.Family? {
        if let c = source ?? destination { return c.isIPv4 ? .ipv4 : .ipv6 }
        return nil
    }
}

public struct FilterConfig: Equatable, Sendable {
    public var name: String
    public var ingress: [RuleConfig]
    public var egress: [RuleConfig]

    public init(name: String, ingress: [RuleConfig], egress: [RuleConfig]) {
        self.name = name
        self.ingress = ingress
        self.egress = egress
    }

    public func rules(_ direction: Direction) -> [RuleConfig] {
        direction == .ingress ? ingress : egress
    }
}

/// Which directions a session mirrors.
public enum DirectionSelection: String, Sendable, Equatable, CaseIterable {
    case ingress, egress, both

    public func includes(_ d: Direction) -> Bool {
        self == .both || rawValue == d.rawValue
    }
}

public struct SessionConfig: Equatable, Sendable {
    public var name: String
    public var interfaces: [String]
    public var target: String
    /// No filter: every frame of the selected directions is mirrored.
    public var filter: String?
    /// 1...32766; lower is evaluated first.
    public var number: Int
    /// 0...16777215.
    public var vni: UInt32
    /// Bytes of the original frame to keep.
    public var packetLength: Int?
    public var direction: DirectionSelection

    public init(name: String, interfaces: [String], target: String, filter: String?, number: Int,
                vni: UInt32, packetLength: Int? = nil, direction: DirectionSelection = .both) {
        self.name = name
        self.interfaces = interfaces
        self.target = target
        self.filter = filter
        self.number = number
        self.vni = vni
        self.packetLength = packetLength
        self.direction = direction
    }
}

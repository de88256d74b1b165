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
        packetLength: Int?, bounds: SessionBounds? = nil
    ) -> MirrorConfig {
        var session = SessionConfig(
            name: "default", interfaces: interfaces, target: "default", filter: nil, number: 1,
            vni: vni, packetLength: packetLength, direction: direction)
        session.bounds = bounds
        return MirrorConfig(
            targets: [TargetConfig(name: "default", address: target.host, port: target.port)],
            filters: [],
            sessions: [session])
    }
}

public struct TargetConfig: Equatable, Sendable {
    public var name: String
    /// The endpoints: one for a plain target (`address`), several for a
    /// group (`endpoints`). A host may carry its own port.
    public var endpoints: [HostPort]
    /// Default port of the endpoints: the encapsulation's (4789 VXLAN,
    /// 6081 GENEVE).
    public var port: UInt16?
    public var encapsulation: Encapsulation
    /// Path MTU toward the target; default: the MTU of the route to it.
    public var mtu: Int?
    public var mode: TargetMode
    public var healthCheck: HealthCheckConfig
    /// GENEVE: carry the origin option (`geneve_origin`), with this host
    /// identifier (`host_id`; nil: from the host name).
    public var geneveOrigin = false
    public var hostID: UInt32?
    /// ERSPAN III: the hardware ID field (`hardware_id`).
    public var hardwareID: UInt8 = 0
    /// How fast copies may leave toward each endpoint (`pacing`); nil:
    /// as fast as they come.
    public var pacing: Pacing?

    public init(name: String, address: String, port: UInt16? = nil, encapsulation: Encapsulation = .vxlan, mtu: Int? = nil) {
        self.init(name: name, endpoints: [HostPort(host: address, port: nil)], port: port, encapsulation: encapsulation, mtu: mtu)
    }

    public init(name: String, endpoints: [HostPort], port: UInt16? = nil, encapsulation: Encapsulation = .vxlan,
                mtu: Int? = nil, mode: TargetMode = .balance, healthCheck: HealthCheckConfig = .init()) {
        self.name = name
        self.endpoints = endpoints
        self.port = port
        self.encapsulation = encapsulation
        self.mtu = mtu
        self.mode = mode
        self.healthCheck = healthCheck
    }

    /// The endpoints' default port; 0 for GRE (ERSPAN), which has none.
    public var effectivePort: UInt16 { port ?? encapsulation.defaultPort ?? 0 }

    /// The encapsulation with its per-target settings; `hostName` gives
    /// the origin option's default host identifier.
    public func tunnel(hostName: String) -> Tunnel {
        Tunnel(encapsulation,
               origin: geneveOrigin ? Tunnel.GeneveOrigin(hostID: hostID ?? Tunnel.GeneveOrigin.hostID(hostName: hostName)) : nil,
               hardwareID: hardwareID)
    }

    /// The first endpoint's host (a plain target's address).
    public var address: String { endpoints.first?.host ?? "" }
}

/// Pacing toward each endpoint of a target: at most `packetsPerSecond`
/// datagrams a second on average, and never more than `burst` back to back
/// (a UDP GSO message carries at most `burst` datagrams). For receivers
/// whose receive ring is small (docs/configuration.md#pacing).
public struct Pacing: Sendable, Equatable {
    public var packetsPerSecond: UInt64
    public var burst: Int

    public static let maxBurst = 4096
    public static let defaultBurst = 32

    public init(packetsPerSecond: UInt64, burst: Int = Pacing.defaultBurst) {
        self.packetsPerSecond = packetsPerSecond
        self.burst = burst
    }

    /// Nanoseconds per datagram.
    public var interval: UInt64 { 1_000_000_000 / max(1, packetsPerSecond) }
}

/// How a target with several endpoints uses them.
public enum TargetMode: String, Sendable, Equatable, CaseIterable {
    /// Each flow to one endpoint, by a symmetric, consistent hash.
    case balance
    /// Every copy to every endpoint, to feed several tools at once.
    case replicate
}

/// How endpoints are checked (docs/configuration.md, "Endpoint health").
public struct HealthCheckConfig: Sendable, Equatable {
    public enum Probe: String, Sendable, Equatable, CaseIterable {
        /// ICMP / ICMPv6 echo to the endpoint.
        case icmp
        /// A TCP connection to `port`.
        case tcp
        /// No probes: every endpoint counts as up.
        case none
    }

    public var probe: Probe
    public var port: UInt16?
    /// Seconds between probes.
    public var interval: Double
    /// Seconds to wait for an answer.
    public var timeout: Double
    /// Failed probes in a row before an endpoint is down.
    public var unhealthyThreshold: Int
    /// Answered probes in a row before a down endpoint is up again.
    public var healthyThreshold: Int
    /// Given in the config: then even a single endpoint is probed.
    public var explicit = false

    public init(probe: Probe = .icmp, port: UInt16? = nil, interval: Double = 1, timeout: Double = 1,
                unhealthyThreshold: Int = 3, healthyThreshold: Int = 2) {
        self.probe = probe
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.unhealthyThreshold = unhealthyThreshold
        self.healthyThreshold = healthyThreshold
    }
}

/// A session's token bucket: packets or bits per second, and the burst.
public struct RateLimit: Sendable, Equatable {
    public enum Unit: String, Sendable, Equatable { case packets, bits }

    public var unit: Unit
    public var perSecond: UInt64
    /// Bucket depth in the same unit; default: one second's worth, at most
    /// `maxBurst`.
    public var burst: UInt64

    /// The deepest bucket: the kernel counts token-nanoseconds, and twice
    /// 4·10⁹ tokens · 10⁹ ns plus a second's refill still fit 64 bits.
    public static let maxBurst: UInt64 = 4_000_000_000
    /// The shallowest bucket in bits: a GSO super-packet (64 KiB) costs its
    /// wire bytes, headers of every segment included, at once.
    public static let minBitBurst = 1 << 20

    public init(unit: Unit, perSecond: UInt64, burst: UInt64? = nil) {
        self.unit = unit
        self.perSecond = perSecond
        self.burst = burst ?? min(perSecond, Self.maxBurst)
    }
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
    /// Mirror 1 of every N selected packets (1: all).
    public var sample: Int
    public var rateLimit: RateLimit?
    /// The ERSPAN session ID (`erspan_session_id`), 0...1023; nil: the VNI.
    public var erspanSessionID: UInt16?
    /// `packet_length: {after: l3|l4, bytes: N}`: headers plus N bytes, per
    /// packet (then `packetLength` is nil).
    public var slice: LayerSlice?
    /// Payload bytes overwritten in the copy.
    public var mask: Mask?
    /// When the session mirrors and how much (nil: always, without limit).
    public var bounds: SessionBounds?
    /// Deduplication window in seconds (nil: off).
    public var deduplicate: Double?
    /// `deduplicate: true`: long enough for a packet to cross a host from
    /// one mirrored interface to the next (measured: docs/configuration.md).
    public static let defaultDedupWindow = 0.001

    /// The session ID its ERSPAN copies carry.
    public var effectiveERSPANSessionID: UInt16 { erspanSessionID ?? UInt16(truncatingIfNeeded: vni & 0x3FF) }

    public init(name: String, interfaces: [String], target: String, filter: String?, number: Int,
                vni: UInt32, packetLength: Int? = nil, direction: DirectionSelection = .both,
                sample: Int = 1, rateLimit: RateLimit? = nil) {
        self.name = name
        self.interfaces = interfaces
        self.target = target
        self.filter = filter
        self.number = number
        self.vni = vni
        self.packetLength = packetLength
        self.direction = direction
        self.sample = sample
        self.rateLimit = rateLimit
    }
}

/// A protocol layer copies can be cut or masked after.
public enum SliceLayer: String, Sendable, Equatable, CaseIterable {
    /// After the IP header (IPv6 extension headers included).
    case l3
    /// After the TCP header (its data offset), UDP's 8 bytes or ICMP's 8.
    case l4
}

/// `packet_length: {after: LAYER, bytes: N}`: each copy keeps the headers up
/// to the end of LAYER, plus N bytes.
public struct LayerSlice: Sendable, Equatable {
    public var after: SliceLayer
    public var bytes: Int

    public init(after: SliceLayer, bytes: Int) {
        self.after = after
        self.bytes = bytes
    }

    /// Bytes kept of a frame without that layer (not IP, a non-first
    /// fragment, another transport for l4).
    public var fallback: Int { Self.fallbackHeaders + bytes }
    public static let fallbackHeaders = 64
    public static let maxBytes = 9000
}

/// `mask: {after: LAYER, offset: N, bytes: M, pattern: 0xNN}`: M bytes from
/// N bytes after LAYER's headers are overwritten with the pattern in the
/// copy (never the original).
public struct Mask: Sendable, Equatable {
    public var after: SliceLayer
    public var offset: Int
    public var bytes: Int
    public var pattern: UInt8

    public init(after: SliceLayer, offset: Int, bytes: Int, pattern: UInt8) {
        self.after = after
        self.offset = offset
        self.bytes = bytes
        self.pattern = pattern
    }

    public static let maxBytes = 65535
}

/// A session that ends by itself: a time window and limits on what it
/// selects, enforced in the kernel.
public struct SessionBounds: Sendable, Equatable {
    /// Seconds from when the session is first put in force (or from
    /// `startAt`).
    public var duration: Double?
    public var maxPackets: UInt64?
    public var maxBytes: UInt64?
    /// Seconds since the epoch.
    public var startAt: Double?
    public var stopAt: Double?

    public init(duration: Double? = nil, maxPackets: UInt64? = nil, maxBytes: UInt64? = nil, startAt: Double? = nil,
                stopAt: Double? = nil) {
        self.duration = duration
        self.maxPackets = maxPackets
        self.maxBytes = maxBytes
        self.startAt = startAt
        self.stopAt = stopAt
    }

    public var isEmpty: Bool { self == SessionBounds() }

    /// Seconds as a number or with a unit: us, ms, s, m, h (`10m`, `1.5s`).
    public static func seconds(_ text: String) -> Double? {
        for (suffix, scale) in [("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)] where text.hasSuffix(suffix) {
            return Double(text.dropLast(suffix.count)).map { $0 * scale }
        }
        return Double(text)
    }
}

/// Why a bounded session stopped mirroring (`traffic_mirror_session_end`).
public enum SessionEnd: String, Sendable, Equatable, CaseIterable {
    case duration, stopAt = "stop_at", maxPackets = "max_packets", maxBytes = "max_bytes"
}

/// Where a session is in its life (`traffic_mirror_session_state`).
public enum SessionState: Sendable, Equatable {
    /// Before its start_at.
    case pending
    case active
    case ended(SessionEnd)

    public var label: String {
        switch self {
        case .pending: "pending"
        case .active: "active"
        case .ended: "ended"
        }
    }

    public static let labels = ["pending", "active", "ended"]
}

/// RFC 3339 date-times (`2026-12-04T21:00:00Z`, `...T21:00:00.5+01:00`).
public enum RFC3339 {
    /// Seconds since the epoch, or nil when `text` is not RFC 3339.
    public static func parse(_ text: String) -> Double? {
        let b = Array(text.utf8)
        func digits(_ at: Int, _ n: Int) -> Int? {
            guard at + n <= b.count else { return nil }
            var v = 0
            for i in at..<(at + n) {
                guard b[i] >= 48 && b[i] <= 57 else { return nil }
                v = v * 10 + Int(b[i] - 48)
            }
            return v
        }
        guard b.count >= 20, let year = digits(0, 4), b[4] == 45, let month = digits(5, 2), b[7] == 45,
              let day = digits(8, 2), b[10] == 84 || b[10] == 116 || b[10] == 32, let hour = digits(11, 2), b[13] == 58,
              let minute = digits(14, 2), b[16] == 58, let second = digits(17, 2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
        var i = 19
        var fraction = 0.0
        if i < b.count && b[i] == 46 {
            i += 1
            var scale = 0.1
            let start = i
            while i < b.count && b[i] >= 48 && b[i] <= 57 {
                fraction += Double(b[i] - 48) * scale
                scale /= 10
                i += 1
            }
            guard i > start else { return nil }
        }
        guard i < b.count else { return nil }
        var offset = 0
        if b[i] == 90 || b[i] == 122 {
            i += 1
        } else if b[i] == 43 || b[i] == 45, let oh = digits(i + 1, 2), i + 3 < b.count, b[i + 3] == 58, let om = digits(i + 4, 2) {
            offset = (oh * 3600 + om * 60) * (b[i] == 45 ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        // Days from the civil date (Howard Hinnant's algorithm).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return Double(days * 86400 + hour * 3600 + minute * 60 + second - offset) + fraction
    }
}

import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// One endpoint of a target, resolved, with its route probed.
public struct ResolvedEndpoint: Sendable {
    /// HOST:PORT as configured (labels its metrics, keys its health).
    public var key: String
    public var address: IPAddress
    public var port: UInt16
    /// The address our packets leave with (the route's preferred source).
    public var source: IPAddress
    /// Path MTU toward the endpoint (configured, or the route's).
    public var mtu: Int
    public var header: OuterHeader
    /// The route's output interface when `source` was taken (0: unknown):
    /// a link-layer path by another interface is not used with this
    /// header, whose source may not be that interface's.
    public var interface: Int32 = 0

    /// Frame bytes that fit the MTU after encapsulation.
    public var innerLimit: Int { header.innerLimit(mtu: mtu) }

    public var endpointDescription: String { HostPort(host: address.description, port: port == 0 ? nil : port).description }
}

/// A target with its endpoints resolved.
public struct ResolvedTarget: Sendable {
    public var name: String
    public var tunnel: Tunnel
    public var encapsulation: Encapsulation { tunnel.encapsulation }
    public var mode: TargetMode
    public var healthCheck: HealthCheckConfig
    public var endpoints: [ResolvedEndpoint]
    /// How fast copies may leave toward each endpoint; nil: unpaced.
    public var pacing: Pacing? = nil

    /// Frame bytes that fit every endpoint's MTU after encapsulation.
    public var innerLimit: Int { endpoints.map(\.innerLimit).min() ?? 0 }

    /// Whether its endpoints are probed: groups by default, a single
    /// endpoint only when asked (a sensor that drops pings should not lose
    /// its copies to a health check nobody wanted).
    public var probed: Bool { healthCheck.probe != .none && (endpoints.count > 1 || healthCheck.explicit) }
}

/// Resolves target names and asks the kernel for the route toward each: a
/// UDP socket connected to the endpoint (with our mark, so policy routing by
/// mark applies as to the mirrored packets) reveals the source address and
/// the path MTU without sending anything.
public enum TargetResolver {
    public static func resolve(_ t: TargetConfig, mark: UInt32) throws(OperationalError) -> ResolvedTarget {
        var endpoints = [ResolvedEndpoint]()
        for e in t.endpoints {
            endpoints.append(try resolve(e, of: t, mark: mark))
        }
        return ResolvedTarget(name: t.name, tunnel: t.tunnel(hostName: hostName), mode: t.mode, healthCheck: t.healthCheck,
                              endpoints: endpoints, pacing: t.pacing)
    }

    /// This host's name, for the GENEVE origin option's default host ID.
    static let hostName: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "" }
        return String(cString: buffer)
    }()

    static func resolve(_ e: HostPort, of t: TargetConfig, mark: UInt32) throws(OperationalError) -> ResolvedEndpoint {
        let port = e.port ?? t.effectivePort
        let what = t.endpoints.count == 1 ? "target \(t.name)" : "target \(t.name) endpoint \(e)"
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        let address: IPAddress
        if let literal = IPAddress(e.host) {
            address = literal
        } else {
            let rc = CMirrorSys_resolve(e.host, &storage, &length)
            guard rc == 0 else {
                throw OperationalError("\(what): cannot resolve host \"\(e.host)\": \(SystemError("getaddrinfo", code: rc)); use an IP address or fix the name (DNS, /etc/hosts)")
            }
            address = Self.address(of: storage)
        }
        // GRE has no port; the route probe's UDP socket needs one.
        length = fill(&storage, address, port: port == 0 ? 9 : port)

        let v4 = address.isIPv4
        let fd = CMirrorSys_socket(v4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else {
            if !v4 && fd == -EAFNOSUPPORT {
                throw noIPv6("\(what) (\(address))", because: "\(SystemError("socket(AF_INET6)", code: fd))")
            }
            throw OperationalError("\(what): \(SystemError("socket", code: fd))")
        }
        defer { _ = CMirrorSys_close(fd) }
        if mark != 0 { _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark)) }
        let rc = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_connect(fd, $0, length) }
        }
        guard rc == 0 else {
            throw OperationalError("\(what) (\(address)): no route: \(SystemError("connect", code: rc)); add a route toward the target or fix its address")
        }
        var local = sockaddr_storage()
        var localLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_getsockname(fd, $0, &localLength) }
        }
        let source = Self.address(of: local)
        var routeMTU: Int32 = 0
        let mrc = v4 ? CMirrorSys_getsockopt_int(fd, IPPROTO_IP_VALUE, IP_MTU_VALUE, &routeMTU)
                     : CMirrorSys_getsockopt_int(fd, IPPROTO_IPV6_VALUE, IPV6_MTU_VALUE, &routeMTU)
        if (mrc != 0 || routeMTU <= 0) && t.mtu == nil {
            throw OperationalError("\(what) (\(address)): cannot read the path MTU of the route (\(SystemError(v4 ? "getsockopt(IP_MTU)" : "getsockopt(IPV6_MTU)", code: mrc == 0 ? -EINVAL : mrc))); set mtu: for the target")
        }
        let mtu = t.mtu ?? Int(routeMTU)
        let header = OuterHeader(source: source.bytes, destination: address.bytes, destinationPort: port,
                                 tunnel: t.tunnel(hostName: hostName))
        guard header.innerLimit(mtu: mtu) >= 14 else {
            throw OperationalError("\(what): mtu \(mtu) leaves no room for a frame after \(header.overhead) bytes of encapsulation")
        }
        var endpoint = ResolvedEndpoint(key: HostPort(host: e.host, port: port == 0 ? nil : port).description, address: address,
                                        port: port, source: source, mtu: mtu, header: header)
        var destination = address.bytes + [UInt8](repeating: 0, count: 16 - address.bytes.count)
        var gateway = [UInt8](repeating: 0, count: 16)
        var oif: Int32 = 0, hasGateway: Int32 = 0, type: Int32 = 0
        if CMirrorSys_route_get(v4 ? AF_INET : AF_INET6, &destination, mark, &oif, &gateway, &hasGateway, &type) == 0 {
            endpoint.interface = oif
        }
        return endpoint
    }

    /// An IPv6 endpoint on a host that gives the agent no IPv6 socket.
    static func noIPv6(_ what: String, because why: String) -> OperationalError {
        OperationalError("\(what): this host cannot send IPv6 (\(why)); enable IPv6 on the host or give the target an IPv4 address")
    }

    static let IPPROTO_IP_VALUE: Int32 = 0
    static let IPPROTO_IPV6_VALUE: Int32 = 41
    static let IP_MTU_VALUE: Int32 = 14
    static let IPV6_MTU_VALUE: Int32 = 24

    /// Writes a sockaddr_in/in6 for `address`; returns its length.
    @discardableResult
    public static func fill(_ storage: inout sockaddr_storage, _ address: IPAddress, port: UInt16) -> socklen_t {
        storage = sockaddr_storage()
        return withUnsafeMutableBytes(of: &storage) { raw in
            switch address {
            case .v4(let b):
                var sin = sockaddr_in()
                sin.sin_family = sa_family_t(AF_INET)
                sin.sin_port = port.bigEndian
                withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: b) }
                raw.storeBytes(of: sin, as: sockaddr_in.self)
                return socklen_t(MemoryLayout<sockaddr_in>.size)
            case .v6(let b):
                var sin6 = sockaddr_in6()
                sin6.sin6_family = sa_family_t(AF_INET6)
                sin6.sin6_port = port.bigEndian
                withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: b) }
                raw.storeBytes(of: sin6, as: sockaddr_in6.self)
                return socklen_t(MemoryLayout<sockaddr_in6>.size)
            }
        }
    }

    public static func address(of storage: sockaddr_storage) -> IPAddress {
        withUnsafeBytes(of: storage) { raw in
            if raw.load(as: sa_family_t.self) == sa_family_t(AF_INET) {
                let sin = raw.load(as: sockaddr_in.self)
                return .v4(withUnsafeBytes(of: sin.sin_addr) { Array($0) })
            }
            let sin6 = raw.load(as: sockaddr_in6.self)
            return .v6(withUnsafeBytes(of: sin6.sin6_addr) { Array($0) })
        }
    }

    /// Port of a sockaddr_in/in6.
    public static func port(of storage: sockaddr_storage) -> UInt16 {
        withUnsafeBytes(of: storage) { raw in
            if raw.load(as: sa_family_t.self) == sa_family_t(AF_INET) {
                return UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
            }
            return UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
        }
    }
}

import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// A target with its address resolved and its route probed.
public struct ResolvedTarget: Sendable {
    public var name: String
    public var host: String
    public var address: IPAddress
    public var port: UInt16
    public var encapsulation: Encapsulation
    /// The address our packets leave with (the route's preferred source).
    public var source: IPAddress
    /// Path MTU toward the target (configured, or the route's).
    public var mtu: Int
    public var header: OuterHeader

    /// Frame bytes that fit the MTU after encapsulation.
    public var innerLimit: Int { header.innerLimit(mtu: mtu) }

    public var endpointDescription: String { HostPort(host: address.description, port: port).description }
}

/// Resolves target names and asks the kernel for the route toward each: a
/// UDP socket connected to the target (with our mark, so policy routing by
/// mark applies as to the mirrored packets) reveals the source address and
/// the path MTU without sending anything.
public enum TargetResolver {
    public static func resolve(_ t: TargetConfig, mark: UInt32) throws(OperationalError) -> ResolvedTarget {
        let port = t.effectivePort
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        let address: IPAddress
        if let literal = IPAddress(t.address) {
            address = literal
            length = fill(&storage, literal, port: port)
        } else {
            let rc = CMirrorSys_resolve(t.address, &storage, &length)
            guard rc == 0 else {
                throw OperationalError("target \(t.name): cannot resolve host \"\(t.address)\": \(SystemError("getaddrinfo", code: rc)); use an IP address or fix the name (DNS, /etc/hosts)")
            }
            address = Self.address(of: storage)
            length = fill(&storage, address, port: port)
        }

        let v4 = address.isIPv4
        let fd = CMirrorSys_socket(v4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else {
            throw OperationalError("target \(t.name): \(SystemError("socket", code: fd))")
        }
        defer { _ = CMirrorSys_close(fd) }
        if mark != 0 { _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark)) }
        let rc = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_connect(fd, $0, length) }
        }
        guard rc == 0 else {
            throw OperationalError("target \(t.name) (\(address)): no route: \(SystemError("connect", code: rc)); add a route toward the target or fix its address")
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
        if mrc != 0 || routeMTU <= 0 { routeMTU = 1500 }
        let mtu = t.mtu ?? Int(routeMTU)
        let header = OuterHeader(source: source.bytes, destination: address.bytes, destinationPort: port)
        guard header.innerLimit(mtu: mtu) >= 14 else {
            throw OperationalError("target \(t.name): mtu \(mtu) leaves no room for a frame after \(header.overhead) bytes of encapsulation")
        }
        return ResolvedTarget(name: t.name, host: t.address, address: address, port: port,
                              encapsulation: t.encapsulation, source: source, mtu: mtu, header: header)
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

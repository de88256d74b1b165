import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// A network namespace that sources live in: the agent's own (no path), one
/// that `ip netns` named (/var/run/netns/NAME), or any namespace file such
/// as /proc/PID/ns/net. Hooks are attached, and links listed and watched,
/// from inside it; the copies always leave from the agent's own namespace.
public struct NetworkNamespace: Sendable, Hashable, CustomStringConvertible {
    /// As written in the configuration; nil for the agent's own.
    public let name: String?

    public static let own = NetworkNamespace(name: nil)

    public init(name: String?) { self.name = name }

    /// The namespace part of a configured source (see InterfacePattern).
    public init(source: String) { self.init(name: InterfacePattern.split(source).namespace) }

    public var path: String? {
        guard let name else { return nil }
        return name.hasPrefix("/") ? name : "/var/run/netns/\(name)"
    }

    public var description: String { name ?? "(the agent's own)" }

    /// The calling thread inside this namespace until `leave()`. Only the
    /// calling thread moves (setns(2)): the agent's other threads, and its
    /// sockets toward the targets, stay where they are.
    public struct Visit {
        fileprivate let home: Int32

        /// Back to the namespace the thread was in.
        public func leave() {
            if home >= 0 {
                // Cannot fail: the thread came from there, and the file stays open.
                _ = CMirrorSys_setns_net(home)
                _ = CMirrorSys_close(home)
            }
        }
    }

    public func enter() throws(OperationalError) -> Visit {
        guard let path else { return Visit(home: -1) }
        let home = CMirrorSys_open_readonly("/proc/thread-self/ns/net")
        guard home >= 0 else { throw OperationalError("cannot open this thread's network namespace: \(SystemError("open", code: home))") }
        let target = CMirrorSys_open_readonly(path)
        guard target >= 0 else {
            _ = CMirrorSys_close(home)
            throw OperationalError("network namespace \(self): cannot open \(path): \(SystemError("open", code: target))")
        }
        let rc = CMirrorSys_setns_net(target)
        _ = CMirrorSys_close(target)
        guard rc == 0 else {
            _ = CMirrorSys_close(home)
            throw OperationalError("network namespace \(self): \(path) is not a network namespace the agent can enter: \(SystemError("setns", code: rc))")
        }
        return Visit(home: home)
    }

    /// Runs `body` inside the namespace.
    public func run<T>(_ body: () throws(OperationalError) -> T) throws(OperationalError) -> T {
        let visit = try enter()
        defer { visit.leave() }
        return try body()
    }

    /// The cookie of the calling thread's namespace (what the hooks see).
    public static func currentCookie() throws(OperationalError) -> UInt64 {
        var cookie: UInt64 = 0
        let rc = CMirrorSys_netns_cookie(&cookie)
        guard rc == 0 else {
            throw OperationalError("cannot read the network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14): \(SystemError("getsockopt", code: rc))")
        }
        return cookie
    }

    /// The interfaces inside, by source name (NAMESPACE/NAME outside the
    /// agent's own namespace).
    public func links() throws(OperationalError) -> [String: Link] {
        try run { () throws(OperationalError) -> [String: Link] in
            let cookie = try Self.currentCookie()
            guard let all = if_nameindex() else { return [:] }
            defer { if_freenameindex(all) }
            var out = [String: Link]()
            var i = all
            while i.pointee.if_index != 0, let n = i.pointee.if_name {
                let interface = String(cString: n)
                out[name.map { "\($0)/\(interface)" } ?? interface] =
                    Link(namespace: self, netns: cookie, ifindex: Int32(bitPattern: i.pointee.if_index))
                i += 1
            }
            return out
        }
    }
}

extension MirrorConfig {
    /// The namespaces the sessions name, the agent's own among them.
    public var namespaces: Set<NetworkNamespace> {
        Set(interfacePatterns.map(NetworkNamespace.init(source:))).union([.own])
    }

    /// The links of every namespace the sessions name, by source name, and
    /// why each namespace that cannot be entered could not be.
    public func links() -> (links: [String: Link], unreachable: [String: String]) {
        var links = [String: Link](), unreachable = [String: String]()
        for ns in namespaces.sorted(by: { ($0.name ?? "") < ($1.name ?? "") }) {
            do {
                links.merge(try ns.links()) { a, _ in a }
            } catch {
                unreachable[ns.description] = error.message
            }
        }
        return (links, unreachable)
    }
}

/// One interface as the kernel knows it: its namespace and index there.
public struct Link: Sendable, Hashable {
    public var namespace: NetworkNamespace
    public var netns: UInt64
    public var ifindex: Int32

    public init(namespace: NetworkNamespace, netns: UInt64, ifindex: Int32) {
        self.namespace = namespace
        self.netns = netns
        self.ifindex = ifindex
    }
}

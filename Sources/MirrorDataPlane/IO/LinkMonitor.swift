import CMirrorSys
import MirrorCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Watches the links of the agent's namespace and of every namespace that
/// sources name, through netlink (RTM_NEWLINK and RTM_DELLINK, which renames
/// and namespace moves also send), and calls `changed` on a thread of its
/// own after each burst of events: the events of one `ip link add` or a
/// container start arrive within microseconds, so they are gathered for
/// `settle` and handled once. Lost events (a socket overran) count as a
/// change: the handler looks at every link. A namespace that cannot be
/// entered yet (a pod not started) is tried again every second. A socket
/// holds its namespace alive, so one whose file went away or now names
/// another namespace (`ip netns del`, the pod's process exited) is closed
/// within a second and the handler called.
public final class LinkMonitor: @unchecked Sendable {
    // @unchecked: `sockets` is behind its mutex; `stopping` is atomic.
    private struct Sockets {
        var open: [NetworkNamespace: Int32] = [:]
        /// Inode of each open namespace's file when its socket opened.
        var inode: [NetworkNamespace: UInt64] = [:]
        var wanted: Set<NetworkNamespace> = [.own]
        var closing: [Int32] = []
        /// Changes with `open`, so the polling thread rebuilds its pollfd
        /// list only then (an idle agent allocates nothing).
        var generation = 0

        mutating func forget(_ ns: NetworkNamespace) {
            guard let fd = open.removeValue(forKey: ns) else { return }
            inode[ns] = nil
            generation += 1
            closing.append(fd) // closed by the polling thread, which may be polling it now
        }
    }
    private let sockets = Mutex(Sockets())
    private let stopping = Atomic<Bool>(false)
    private let thread = DedicatedThread()
    static let settleMilliseconds: Int32 = 10

    public init(changed: @escaping @Sendable () -> Void) throws(SystemError) {
        let fd = try SystemError.check(CMirrorSys_link_events_open(), "netlink link events")
        sockets.withLock { $0.open[.own] = fd }
        let me = self
        do {
            try thread.start { me.run(changed) }
        } catch {
            _ = CMirrorSys_close(fd)
            throw error
        }
    }

    /// Watches exactly these namespaces besides the agent's own. Sockets
    /// open before the caller lists links, so no change falls between.
    public func watch(_ namespaces: Set<NetworkNamespace>) {
        sockets.withLock { s in
            s.wanted = namespaces.union([.own])
            for ns in s.open.keys where !s.wanted.contains(ns) { s.forget(ns) }
            _ = Self.openMissing(&s)
        }
    }

    /// Opens a socket in each wanted namespace that has none; true when
    /// one opened.
    private static func openMissing(_ s: inout Sockets) -> Bool {
        var opened = false
        for ns in s.wanted where s.open[ns] == nil {
            let inode = Self.inode(ns)
            guard ns == .own || inode != nil,
                  let fd = try? ns.run({ () throws(OperationalError) -> Int32 in CMirrorSys_link_events_open() }), fd >= 0
            else { continue }
            s.open[ns] = fd
            s.inode[ns] = inode
            s.generation += 1
            opened = true
        }
        return opened
    }

    /// Closes the sockets of namespaces whose file is gone or replaced;
    /// true when one closed.
    private static func closeVanished(_ s: inout Sockets) -> Bool {
        let gone = s.open.keys.filter { $0 != .own && inode($0) != s.inode[$0] }
        for ns in gone { s.forget(ns) }
        return !gone.isEmpty
    }

    private static func inode(_ ns: NetworkNamespace) -> UInt64? {
        guard let path = ns.path else { return nil }
        var inode: UInt64 = 0
        return CMirrorSys_file_inode(path, &inode) == 0 ? inode : nil
    }

    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread.join()
        sockets.withLock { s in
            for fd in Array(s.open.values) + s.closing { _ = CMirrorSys_close(fd) }
            s.open = [:]
            s.closing = []
        }
    }

    deinit { stop() }

    private func run(_ changed: @Sendable () -> Void) {
        CMirrorSys_set_thread_name("tm-links")
        var lastRetry = CMirrorSys_monotonic_ns()
        var fds = [pollfd](), generation = -1
        while !stopping.load(ordering: .acquiring) {
            var retried = false
            sockets.withLock { s in
                for fd in s.closing { _ = CMirrorSys_close(fd) }
                if !s.closing.isEmpty { s.closing.removeAll(keepingCapacity: true) }
                if s.wanted.count > 1, CMirrorSys_monotonic_ns() - lastRetry > 1_000_000_000 {
                    lastRetry = CMirrorSys_monotonic_ns()
                    retried = Self.closeVanished(&s)
                    retried = Self.openMissing(&s) || retried
                }
                if s.generation != generation {
                    generation = s.generation
                    fds = s.open.values.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                }
            }
            var events = retried ? 1 : 0
            var timeout: Int32 = retried ? Self.settleMilliseconds : 200
            while poll(&fds, nfds_t(fds.count), timeout) > 0 {
                for i in fds.indices where fds[i].revents != 0 {
                    events += Int(CMirrorSys_link_events_drain(fds[i].fd))
                    fds[i].revents = 0
                }
                timeout = Self.settleMilliseconds
            }
            if events > 0 && !stopping.load(ordering: .acquiring) { changed() }
        }
    }
}

import CMirrorSys
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Watches the namespace's links through netlink (RTM_NEWLINK and
/// RTM_DELLINK, which renames and namespace moves also send) and calls
/// `changed` on a thread of its own after each burst of events: the events
/// of one `ip link add` or a container start arrive within microseconds,
/// so they are gathered for `settle` and handled once. Lost events (the
/// socket overran) count as a change: the handler looks at every link.
public final class LinkMonitor: @unchecked Sendable {
    // @unchecked: fd is immutable; `stopping` is atomic.
    private let fd: Int32
    private let stopping = Atomic<Bool>(false)
    private let thread = DedicatedThread()
    static let settleMilliseconds: Int32 = 10

    public init(changed: @escaping @Sendable () -> Void) throws(SystemError) {
        fd = try SystemError.check(CMirrorSys_link_events_open(), "netlink link events")
        let me = self
        do {
            try thread.start { me.run(changed) }
        } catch {
            _ = CMirrorSys_close(fd)
            throw error
        }
    }

    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread.join()
        _ = CMirrorSys_close(fd)
    }

    deinit { stop() }

    private func run(_ changed: @Sendable () -> Void) {
        CMirrorSys_set_thread_name("tm-links")
        while !stopping.load(ordering: .acquiring) {
            guard CMirrorSys_poll1(fd, Int16(POLLIN), 200) > 0 else { continue }
            var events = CMirrorSys_link_events_drain(fd)
            while CMirrorSys_poll1(fd, Int16(POLLIN), Self.settleMilliseconds) > 0 {
                events += CMirrorSys_link_events_drain(fd)
            }
            if events > 0 && !stopping.load(ordering: .acquiring) { changed() }
        }
    }

    /// Every interface of the calling thread's namespace, name -> ifindex.
    public static func links() -> [String: Int32] {
        guard let all = if_nameindex() else { return [:] }
        defer { if_freenameindex(all) }
        var out = [String: Int32]()
        var i = all
        while i.pointee.if_index != 0, let name = i.pointee.if_name {
            out[String(cString: name)] = Int32(bitPattern: i.pointee.if_index)
            i += 1
        }
        return out
    }
}

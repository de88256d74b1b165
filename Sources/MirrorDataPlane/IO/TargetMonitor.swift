import CMirrorSys
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Tells the agent when what its targets' paths depend on may have
/// changed: a route, an address or a link of the agent's namespace
/// (netlink, within `settle` of the event), and every `resolveInterval`
/// seconds in any case, for host names whose answer may have changed and
/// anything netlink does not announce (a path MTU learnt from ICMP).
final class TargetMonitor: @unchecked Sendable {
    // @unchecked: `fd` is read-only after init; `stopping` is atomic.
    private let fd: Int32
    private let stopping = Atomic<Bool>(false)
    private let thread = DedicatedThread()
    /// Events that come together (a route replaced: delete, add) are taken as one.
    static let settleMilliseconds: Int32 = 20

    init(resolveInterval: Double, changed: @escaping @Sendable (_ periodic: Bool) -> Void) throws(SystemError) {
        fd = try SystemError.check(CMirrorSys_route_events_open(), "netlink route and address events")
        let me = self, fd = fd
        do {
            try thread.start { me.run(fd, interval: resolveInterval, changed) }
        } catch {
            _ = CMirrorSys_close(fd)
            throw error
        }
    }

    private func run(_ fd: Int32, interval: Double, _ changed: @Sendable (Bool) -> Void) {
        CMirrorSys_set_thread_name("tm-targets")
        var next = CMirrorSys_monotonic_ns() + UInt64(interval * 1e9)
        while !stopping.load(ordering: .acquiring) {
            if CMirrorSys_poll1(fd, Int16(POLLIN), 200) > 0 {
                usleep(useconds_t(Self.settleMilliseconds) * 1000)
                if CMirrorSys_netlink_drain(fd) > 0 && !stopping.load(ordering: .acquiring) { changed(false) }
            }
            if CMirrorSys_monotonic_ns() >= next {
                next = CMirrorSys_monotonic_ns() + UInt64(interval * 1e9)
                if !stopping.load(ordering: .acquiring) { changed(true) }
            }
        }
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        thread.join()
        _ = CMirrorSys_close(fd)
    }
}

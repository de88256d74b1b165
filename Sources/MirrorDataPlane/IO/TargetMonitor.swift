import CMirrorSys
import MirrorCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Tells the agent when what its targets' paths depend on may have
/// changed: a route, an address or a link of the agent's namespace
/// (netlink, within `settle` of the event), and every `resolveInterval`
/// seconds in any case, for host names whose answer may have changed and
/// anything netlink does not announce; and of ICMP errors that quote
/// copies (a dead target, a smaller path MTU).
final class TargetMonitor: @unchecked Sendable {
    // @unchecked: `fd` is read-only after init; `stopping` is atomic.
    private let fd: Int32
    private let stopping = Atomic<Bool>(false)
    private let thread = DedicatedThread()
    /// Events that come together (a route replaced: delete, add) are taken as one.
    static let settleMilliseconds: Int32 = 20

    /// Raw ICMP and ICMPv6 sockets (-1 when they cannot be had): errors
    /// that quote a copy tell of a target that is not there.
    private let icmp4: Int32
    private let icmp6: Int32
    /// The families whose ICMP errors about copies go unseen (no raw socket).
    var missingICMPFamilies: [String] { (icmp4 < 0 ? ["IPv4"] : []) + (icmp6 < 0 ? ["IPv6"] : []) }

    /// An ICMP error about a datagram to `address`:`port` (0 for GRE).
    struct Unreachable {
        var address: IPAddress
        var port: UInt16
        var type: UInt8
        var code: UInt8
        /// The MTU a "fragmentation needed" or "packet too big" gives, else 0.
        var mtu: Int
    }

    init(resolveInterval: Double, changed: @escaping @Sendable (_ periodic: Bool) -> Void,
         unreachable: @escaping @Sendable (Unreachable) -> Void) throws(SystemError) {
        fd = try SystemError.check(CMirrorSys_route_events_open(), "netlink route and address events")
        icmp4 = CMirrorSys_icmp_errors_open(0)
        icmp6 = CMirrorSys_icmp_errors_open(1)
        let me = self, fd = fd
        do {
            try thread.start { me.run(fd, interval: resolveInterval, changed, unreachable) }
        } catch {
            for f in [fd, icmp4, icmp6] where f >= 0 { _ = CMirrorSys_close(f) }
            throw error
        }
    }

    private func run(_ fd: Int32, interval: Double, _ changed: @Sendable (Bool) -> Void,
                     _ unreachable: @Sendable (Unreachable) -> Void) {
        CMirrorSys_set_thread_name("tm-targets")
        var next = CMirrorSys_monotonic_ns() + UInt64(interval * 1e9)
        var pfds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: icmp4, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: icmp6, events: Int16(POLLIN), revents: 0)]
        var quoted = [UInt8](repeating: 0, count: 16)
        while !stopping.load(ordering: .acquiring) {
            guard poll(&pfds, nfds_t(pfds.count), 200) >= 0 else { continue }
            for k in 1...2 where pfds[k].revents & Int16(POLLIN) != 0 {
                var port: UInt16 = 0, type: UInt8 = 0, code: UInt8 = 0, mtu: UInt32 = 0
                while true {
                    let n = quoted.withUnsafeMutableBufferPointer {
                        CMirrorSys_icmp_error_read(pfds[k].fd, k == 2 ? 1 : 0, $0.baseAddress, &port, &type, &code, &mtu)
                    }
                    if n < 0 { break }
                    if n > 0 {
                        let address: IPAddress = n == 4 ? .v4(Array(quoted[0..<4])) : .v6(quoted)
                        unreachable(Unreachable(address: address, port: port, type: type, code: code, mtu: Int(mtu)))
                    }
                }
            }
            if pfds[0].revents & Int16(POLLIN) != 0 {
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
        for f in [fd, icmp4, icmp6] where f >= 0 { _ = CMirrorSys_close(f) }
    }
}

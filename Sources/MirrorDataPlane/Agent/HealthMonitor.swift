import CMirrorSys
import Logging
import MirrorCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Probes the endpoints of target groups and publishes whether each is up,
/// for the forwarding thread to skip those that are down.
///
/// A probe is an ICMP/ICMPv6 echo (default) or a TCP connection to a port.
/// An endpoint goes down after `unhealthy_threshold` failed probes in a row
/// (no answer within `timeout`, or the kernel refusing to send: no route,
/// no neighbour) and up again after `healthy_threshold` answered ones.
/// Endpoints start up, so copies flow from the first packet. Every probe
/// socket is registered with `OwnOutput`, so no hook mirrors a probe.
public final class HealthMonitor: @unchecked Sendable {
    // @unchecked: `flags` has one writer (the probing thread) and relaxed
    // readers; everything else is behind `state`.

    public static let capacity = 1024

    /// 1 = up, 0 = down, per slot.
    public let flags: UnsafeMutablePointer<UInt32>

    struct Probe {
        var slot: Int
        var target: String
        var key: String
        var address: IPAddress
        var config: HealthCheckConfig
        var ok = 0
        var failed = 0
        var up = true
        var nextAt: UInt64 = 0
        /// An ICMP echo or TCP connection in flight: its sequence number or
        /// socket, and when it times out.
        var seq: UInt16?
        var tcp: Int32 = -1
        var deadline: UInt64 = 0
        var sent: UInt64 = 0
        var failures: UInt64 = 0
    }

    struct State {
        var slots: [String: Int] = [:]
        var probes: [Probe] = []
        var stopped = false
    }

    private let state = Mutex(State())
    private let logger: Logger
    private let mark: UInt32
    private let own: OwnOutput
    private let thread = DedicatedThread()
    private let identifier = UInt16(truncatingIfNeeded: getpid())
    private var sequence: UInt16 = 0
    private let icmp4: Int32
    private let icmp6: Int32

    public init(mark: UInt32, own: OwnOutput, logger: Logger) throws(SystemError) {
        self.logger = logger
        self.mark = mark
        self.own = own
        flags = .allocate(capacity: Self.capacity)
        flags.initialize(repeating: 1, count: Self.capacity)
        let identifier = UInt16(truncatingIfNeeded: getpid())
        func open(_ family: Int32, _ proto: Int32) -> Int32 {
            let fd = CMirrorSys_socket(family, Int32(SOCK_RAW.rawValue), proto)
            if fd >= 0 && mark != 0 { _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark)) }
            // Only our echo replies reach the socket: a raw ICMP socket gets a
            // copy of every ICMP message the host receives, and a flood must
            // not keep the prober busy.
            if fd >= 0 && (CMirrorSys_attach_echo_filter(fd, family == AF_INET6 ? 1 : 0, identifier) != 0
                           || (try? own.register(fd)) == nil) {
                _ = CMirrorSys_close(fd)
                return -1
            }
            return fd
        }
        icmp4 = open(AF_INET, Int32(IPPROTO_ICMP))
        icmp6 = open(AF_INET6, Int32(IPPROTO_ICMPV6))
        guard icmp4 >= 0 else { throw SystemError("socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)", code: icmp4) }
        let me = self
        try thread.start { me.run() }
    }

    deinit {
        stop()
        flags.deallocate()
        closeSocket(icmp4)
        if icmp6 >= 0 { closeSocket(icmp6) }
    }

    public func stop() {
        let first = state.withLock { s in
            defer { s.stopped = true }
            return !s.stopped
        }
        if first { thread.join() }
    }

    /// Probes the endpoints of `targets` that are probed (replacing what it
    /// probed before) and returns their slots by endpoint key. An endpoint
    /// that stays keeps its slot and its state.
    public func configure(_ targets: [ResolvedTarget]) -> [String: Int] {
        state.withLock { s in
            var keep = [Probe]()
            var result = [String: Int]()
            for t in targets where t.probed {
                for e in t.endpoints {
                    let id = "\(t.name)/\(e.key)"
                    let slot: Int
                    if let existing = s.slots[id] {
                        slot = existing
                    } else {
                        slot = s.slots.count < Self.capacity ? s.slots.count : 0
                        s.slots[id] = slot
                        CMirrorSys_store_relaxed_u32(flags + slot, 1)
                    }
                    result[e.key] = slot
                    if var old = s.probes.first(where: { $0.slot == slot }) {
                        old.config = t.healthCheck
                        old.address = e.address
                        keep.append(old)
                    } else {
                        keep.append(Probe(slot: slot, target: t.name, key: e.key, address: e.address, config: t.healthCheck))
                    }
                }
            }
            for p in s.probes where p.tcp >= 0 && !keep.contains(where: { $0.slot == p.slot }) { closeSocket(p.tcp) }
            s.probes = keep
            return result
        }
    }

    public struct EndpointState: Sendable {
        public var target: String
        public var endpoint: String
        public var up: Bool
        public var probes: UInt64
        public var failures: UInt64
    }

    /// The probed endpoints and their state, for metrics.
    public func endpoints() -> [EndpointState] {
        state.withLock { s in
            s.probes.map { EndpointState(target: $0.target, endpoint: $0.key, up: $0.up, probes: $0.sent, failures: $0.failures) }
        }
    }

    // MARK: probing thread

    private func run() {
        CMirrorSys_set_thread_name("tm-health")
        var buf = [UInt8](repeating: 0, count: 2048)
        // Built once: the loop runs every 20 ms for the agent's lifetime.
        var fds = [pollfd(fd: icmp4, events: Int16(POLLIN), revents: 0)]
        if icmp6 >= 0 { fds.append(pollfd(fd: icmp6, events: Int16(POLLIN), revents: 0)) }
        while true {
            let stopped: Bool = state.withLock { s in
                if s.stopped { return true }
                tick(&s)
                return false
            }
            if stopped { break }
            // Wait for replies up to 20 ms, then read what came, at most
            // `Self.repliesPerTick` a socket, so probing keeps its pace.
            if poll(&fds, nfds_t(fds.count), 20) > 0 {
                for f in fds where f.revents & Int16(POLLIN) != 0 {
                    for _ in 0..<Self.repliesPerTick {
                        var from = sockaddr_storage()
                        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
                        let n = withUnsafeMutablePointer(to: &from) {
                            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                                recvfrom(f.fd, &buf, buf.count, Int32(MSG_DONTWAIT), $0, &len)
                            }
                        }
                        if n <= 0 { break }
                        handleReply(Array(buf[0..<n]), v6: f.fd == icmp6, from: TargetResolver.address(of: from))
                    }
                }
            }
        }
        state.withLock { s in for p in s.probes where p.tcp >= 0 { closeSocket(p.tcp) } }
    }

    /// Replies read per socket and 20 ms tick: far more than 1024 probed
    /// endpoints answer, and a bound on the work a flood can cause.
    static let repliesPerTick = 256

    private func closeSocket(_ fd: Int32) {
        own.forget(fd)
        _ = CMirrorSys_close(fd)
    }

    private func tick(_ s: inout State) {
        let now = CMirrorSys_monotonic_ns()
        for i in s.probes.indices {
            var p = s.probes[i]
            defer { s.probes[i] = p }
            if p.tcp >= 0 {
                // A TCP probe answers when the connection completes.
                var err: Int32 = 0
                if CMirrorSys_poll1(p.tcp, Int16(POLLOUT), 0) > 0 {
                    _ = CMirrorSys_getsockopt_int(p.tcp, SOL_SOCKET, SO_ERROR, &err)
                    closeSocket(p.tcp)
                    p.tcp = -1
                    record(&p, ok: err == 0)
                    continue
                }
            }
            if (p.seq != nil || p.tcp >= 0) && now >= p.deadline {
                if p.tcp >= 0 { closeSocket(p.tcp); p.tcp = -1 }
                p.seq = nil
                record(&p, ok: false)
            }
            guard p.seq == nil && p.tcp < 0 && now >= p.nextAt else { continue }
            p.nextAt = now + UInt64(p.config.interval * 1e9)
            p.deadline = now + UInt64(p.config.timeout * 1e9)
            p.sent += 1
            if !send(&p) { record(&p, ok: false) }
        }
    }

    /// Starts a probe; false when the kernel refused to send it.
    private func send(_ p: inout Probe) -> Bool {
        var addr = sockaddr_storage()
        let len = TargetResolver.fill(&addr, p.address, port: p.config.port ?? 0)
        switch p.config.probe {
        case .none:
            return true
        case .tcp:
            let fd = CMirrorSys_socket(p.address.isIPv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { return false }
            if mark != 0 { _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark)) }
            guard (try? own.register(fd)) != nil else {
                _ = CMirrorSys_close(fd)
                return false
            }
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_connect(fd, $0, len) } }
            guard rc == 0 || rc == -EINPROGRESS else {
                closeSocket(fd)
                return false
            }
            p.tcp = fd
            return true
        case .icmp:
            sequence &+= 1
            let v6 = !p.address.isIPv4
            var packet: [UInt8] = [v6 ? 128 : 8, 0, 0, 0, UInt8(identifier >> 8), UInt8(identifier & 0xFF),
                                   UInt8(sequence >> 8), UInt8(sequence & 0xFF)] + Array("tmirror!".utf8)
            if !v6 {
                var c = InternetChecksum()
                c.add(packet)
                packet[2] = UInt8(c.value >> 8)
                packet[3] = UInt8(c.value & 0xFF)
            }
            let fd = v6 ? icmp6 : icmp4
            guard fd >= 0 else { return false }
            let n = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, packet, packet.count, Int32(MSG_DONTWAIT), $0, len) }
            }
            guard n == packet.count else { return false }
            p.seq = sequence
            return true
        }
    }

    /// An echo reply: the probe of that endpoint and sequence succeeded.
    private func handleReply(_ bytes: [UInt8], v6: Bool, from: IPAddress) {
        // Raw IPv4 sockets deliver the IP header; ICMPv6 ones do not.
        let off = v6 ? 0 : Int(bytes.first.map { $0 & 0x0F } ?? 5) * 4
        guard bytes.count >= off + 8, bytes[off] == (v6 ? 129 : 0) else { return }
        let id = UInt16(bytes[off + 4]) << 8 | UInt16(bytes[off + 5])
        let seq = UInt16(bytes[off + 6]) << 8 | UInt16(bytes[off + 7])
        guard id == identifier else { return }
        state.withLock { s in
            for i in s.probes.indices where s.probes[i].seq == seq && s.probes[i].address == from {
                s.probes[i].seq = nil
                record(&s.probes[i], ok: true)
            }
        }
    }

    private func record(_ p: inout Probe, ok: Bool) {
        if ok {
            p.ok += 1
            p.failed = 0
            if !p.up && p.ok >= p.config.healthyThreshold {
                p.up = true
                CMirrorSys_store_relaxed_u32(flags + p.slot, 1)
                logger.notice("endpoint up", metadata: ["target": "\(p.target)", "endpoint": "\(p.key)"])
            }
        } else {
            p.failures += 1
            p.failed += 1
            p.ok = 0
            if p.up && p.failed >= p.config.unhealthyThreshold {
                p.up = false
                CMirrorSys_store_relaxed_u32(flags + p.slot, 0)
                logger.warning("endpoint down: its flows go to the other endpoints", metadata: [
                    "target": "\(p.target)", "endpoint": "\(p.key)", "failed_probes": "\(p.failed)",
                ])
            }
        }
    }
}

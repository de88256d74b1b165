import CMirrorSys
import MirrorCore
import MirrorDataPlane
import Prometheus
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The agent once it runs; the metrics service starts before it.
public final class AgentReference: Sendable {
    private let box = Mutex<Agent?>(nil)
    public init() {}
    public var agent: Agent? { box.withLock { $0 } }
    public func set(_ agent: Agent?) { box.withLock { $0 = agent } }
}

/// Facts about the build for `traffic_mirror_build_info`.
public struct BuildInfo: Sendable {
    public var version: String
    public var libbpf: String
    public var bpfObjectSHA256: String

    public init(version: String, libbpf: String, bpfObjectSHA256: String) {
        self.version = version
        self.libbpf = libbpf
        self.bpfObjectSHA256 = bpfObjectSHA256
    }
}

/// Renders the Prometheus text exposition (docs/metrics.md lists every
/// metric). Kernel per-CPU counters and the forwarder's counters are read
/// when a scrape asks; reading them touches no data-plane state (per-CPU
/// map lookups and relaxed loads of single-writer counters).
public final class MetricsExporter: Sendable {
    let registry = PrometheusCollectorRegistry()
    let agent: AgentReference
    let build: BuildInfo
    private let startTime: Double

    private struct State {
        /// Info gauges set by the previous scrape, to drop the stale ones.
        var infos: [String: Gauge] = [:]
    }

    private let state = Mutex(State())

    public init(agent: AgentReference, build: BuildInfo) {
        self.agent = agent
        self.build = build
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var start = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        // The process start time, from /proc, is what process_start_time_seconds means.
        if let s = Self.processStartTime() { start = s }
        startTime = start
    }

    /// The exposition, in the text format 0.0.4.
    public func render() -> [UInt8] {
        state.withLock { state in
            var infos = [String: Gauge]()
            // The sources keep cumulative counts; only this function emits,
            // under the lock, so setting each counter to its count is exact.
            func counter(_ name: String, _ help: String, _ labels: [(String, String)], _ value: UInt64) {
                let c = registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
                c.reset()
                c.increment(by: Int64(truncatingIfNeeded: value))
            }
            func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = [], _ value: Double) {
                registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels).set(to: value)
            }
            // A gauge whose series exists only while rendered: one that is
            // not rendered again is unregistered below (a hook detached, a
            // pattern no longer configured).
            func current(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double) {
                let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
                let g = registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
                g.set(to: value)
                infos[key] = g
            }
            func info(_ name: String, _ help: String, _ labels: [(String, String)]) { current(name, help, labels, 1) }

            info("traffic_mirror_build_info", "Version of traffic-mirror, of libbpf, and hash of the embedded BPF object.",
                 [("version", build.version), ("libbpf", build.libbpf), ("bpf_object_sha256", build.bpfObjectSHA256)])
            processMetrics(gauge: gauge, counter: counter)

            let a = agent.agent
            let snap = a?.snapshot()
            gauge("traffic_mirror_data_plane_up", "1 while a plan is in force and the forwarding thread drains the rings.",
                  [], snap?.running == true ? 1 : 0)
            if let snap {
                render(snap, counter: counter, gauge: gauge, current: current, info: info)
            }
            for (key, g) in state.infos where infos[key] == nil { registry.unregisterGauge(g) }
            state.infos = infos
            return registry.emitToBuffer()
        }
    }

    private func render(
        _ s: Agent.Snapshot,
        counter: (String, String, [(String, String)], UInt64) -> Void,
        gauge: (String, String, [(String, String)], Double) -> Void,
        current: (String, String, [(String, String)], Double) -> Void,
        info: (String, String, [(String, String)]) -> Void
    ) {
        let ifLabels = MirrorProgram.interfaceOutcomeLabels
        func ifCount(_ c: Agent.Snapshot.InterfaceCounters, _ label: String) -> UInt64 {
            ifLabels.firstIndex(of: label).map { c.counts[$0] } ?? 0
        }
        for c in s.interfaces {
            let l = [("interface", c.interface), ("direction", c.direction.rawValue)]
            counter("traffic_mirror_source_packets_total",
                    "Packets the hooks saw on an interface and direction; a GSO super-packet counts as the segments it becomes.",
                    l, ifCount(c, "seen"))
            counter("traffic_mirror_source_selected_packets_total",
                    "Packets of an interface and direction that a session selected (the sum over its sessions of traffic_mirror_selected_packets_total).",
                    l, ifCount(c, "selected"))
            for reason in ["own_traffic", "no_match", "rejected"] {
                counter("traffic_mirror_unselected_packets_total",
                        "Packets no session selected: the agent's own output, no rule matched, or a rule rejected them.",
                        l + [("reason", reason)], ifCount(c, reason))
            }
            for (label, reason) in [("malformed_ip", "ip_header"), ("l4_truncated", "transport_header")] {
                counter("traffic_mirror_malformed_packets_total",
                        "Packets whose IP header could not be parsed or whose TCP/UDP header was cut short (also counted in the outcomes above).",
                        l + [("reason", reason)], ifCount(c, label))
            }
        }

        let soLabels = MirrorProgram.sessionOutcomeLabels
        let kernelDrops = ["ring_full", "sampled_out", "rate_limited", "capture_error", "gso_unsegmented", "no_ring", "duplicate"]
        let truncations = ["packet_length", "mtu", "capture_max"]
        let names = Set(s.sessions.keys).union(s.forwarder.drops.keys).sorted()
        for name in names {
            let k = s.sessions[name] ?? [:]
            func kernel(_ label: String, _ d: Direction? = nil) -> UInt64 {
                guard let i = soLabels.firstIndex(of: label) else { return 0 }
                return Direction.allCases.filter { d == nil || $0 == d }.reduce(0) { $0 &+ (k[$1]?[i] ?? 0) }
            }
            for d in Direction.allCases {
                counter("traffic_mirror_selected_packets_total", "Packets a session's filter accepted (a GSO super-packet counts as its segments).",
                        [("session", name), ("direction", d.rawValue)], kernel("selected", d))
            }
            let user = s.forwarder.drops[name] ?? [:]
            var drops = [String: UInt64]()
            for r in kernelDrops { drops[r] = kernel(r) }
            for (r, v) in user { drops[r.label, default: 0] &+= v }
            for (r, v) in drops.sorted(by: { $0.key < $1.key }) {
                counter("traffic_mirror_dropped_packets_total",
                        "Packets a session selected but did not send, by reason; selected = sent + dropped once the rings are drained.",
                        [("session", name), ("reason", r)], v)
            }
            let userTruncations = s.forwarder.truncations[name] ?? [:]
            for r in truncations {
                let u = UserTruncation.allCases.first { $0.label == r }.flatMap { userTruncations[$0] } ?? 0
                counter("traffic_mirror_truncated_packets_total",
                        "Copies shortened before sending, by reason: packet_length, the target's mtu, or capture_max (16384 bytes).",
                        [("session", name), ("reason", r)], kernel(r) &+ u)
            }
        }
        for (pair, v) in s.forwarder.sent.sorted(by: { ($0.key.session, $0.key.target) < ($1.key.session, $1.key.target) }) {
            let l = [("session", pair.session), ("target", pair.target)]
            counter("traffic_mirror_sent_packets_total", "Mirrored packets handed to the network.", l, v.packets)
            counter("traffic_mirror_sent_bytes_total", "Bytes of mirrored packets handed to the network: the outer IP packet, encapsulation included.", l, v.bytes)
        }
        let unattributedHelp = "Packets no session's counters could take (a record of no plan in force, or more than 1024 session names over the agent's life): sent, or dropped by reason. Never credited to another session."
        counter("traffic_mirror_unattributed_packets_total", unattributedHelp, [("outcome", "sent")], s.forwarder.unattributedSent)
        for (r, v) in s.forwarder.unattributedDrops.sorted(by: { $0.key.label < $1.key.label }) {
            counter("traffic_mirror_unattributed_packets_total", unattributedHelp, [("outcome", r.label)], v)
        }
        counter("traffic_mirror_send_batches_total", "sendmmsg batches the forwarding thread sent.", [], s.forwarder.batches)
        counter("traffic_mirror_send_backpressure_waits_total", "Times a full socket made the forwarding thread wait (EAGAIN/ENOBUFS).", [], s.forwarder.backpressureWaits)
        let waited = registry.makeCounter(descriptor: Self.descriptor(
            "traffic_mirror_send_backpressure_seconds_total",
            "Time the forwarding thread spent waiting for a full socket: at most the 2 ms budget per batch."), labels: [])
        waited.reset()
        waited.increment(by: Double(s.forwarder.backpressureNanoseconds) / 1e9)

        counter("traffic_mirror_send_gso_fallbacks_total", "UDP GSO messages the kernel refused as such (EIO, EINVAL) and that went as single copies instead.",
                [], s.forwarder.gsoFallbacks)
        gauge("traffic_mirror_own_sockets", "Sockets the agent sends from (copies, health probes), registered with the hooks so that none of their packets is mirrored.",
              [], Double(s.ownSockets))
        gauge("traffic_mirror_ring_size_bytes", "Bytes of each per-CPU ring buffer.", [], Double(s.ringBytes))
        for (cpu, b) in zip(s.ringCPUs, s.ringBacklogBytes) {
            gauge("traffic_mirror_ring_backlog_bytes", "Bytes waiting in a CPU's ring buffer.", [("cpu", "\(cpu)")], Double(b))
        }
        for h in s.hooks {
            info("traffic_mirror_hook_info", "An attached hook: interface, direction and mechanism (xdp, tcx, netlink).",
                 [("interface", h.interface), ("direction", h.direction.rawValue), ("hook", h.kind.rawValue)])
        }
        for e in Agent.InterfaceEvent.allCases {
            counter("traffic_mirror_interface_events_total",
                    "Interface events: attached (an interface got its hooks), detached (it lost them: it went away or left the plan), waiting (a pattern or name began to match nothing), failed (a change of interfaces could not be put in force).",
                    [("event", e.rawValue)], UInt64(s.interfaceEvents[e] ?? 0))
        }
        for (p, n) in s.patternMatches {
            current("traffic_mirror_interface_pattern_matches", "Interfaces a configured pattern or name matches now; 0 while it waits for one to appear.",
                  [("pattern", p)], Double(n))
        }
        counter("traffic_mirror_target_path_changes_total",
                "Times a target endpoint's route, source address, path MTU or address changed and the new paths were put in force (netlink events, and every --resolve-interval).",
                [], UInt64(s.targetPathChanges))
        counter("traffic_mirror_target_resolve_failures_total",
                "Looks at the targets' paths that failed (no route, a name that does not resolve): the paths in force stay.",
                [], UInt64(s.targetResolveFailures))
        for (name, bounded) in s.sessionStates.sorted(by: { $0.key < $1.key }) {
            let state = bounded.state
            if let t = bounded.stopTime {
                gauge("traffic_mirror_session_stop_time_seconds", "When a bounded session's window closes (duration or stop_at), seconds since the epoch.",
                      [("session", name)], t)
            }
            for label in SessionState.labels {
                current("traffic_mirror_session_state", "Where a bounded session is: pending (before start_at), active, or ended; 1 for its state, 0 for the others.",
                        [("session", name), ("state", label)], state.label == label ? 1 : 0)
            }
            if case .ended(let reason) = state {
                info("traffic_mirror_session_end_info", "Why a bounded session ended: duration, stop_at, max_packets or max_bytes.",
                     [("session", name), ("reason", reason.rawValue)])
            }
        }
        let health = Dictionary(s.endpointHealth.map { ("\($0.target)/\($0.endpoint)", $0) }, uniquingKeysWith: { a, _ in a })
        for t in s.targets {
            info("traffic_mirror_target_info", "A target in force: its encapsulation and how it uses its endpoints (balance or replicate).",
                 [("target", t.name), ("encapsulation", t.encapsulation.rawValue), ("mode", t.mode.rawValue)])
            for e in t.endpoints {
                let l = [("target", t.name), ("endpoint", e.key)]
                info("traffic_mirror_endpoint_info", "An endpoint of a target: its address and the source address copies leave with.",
                     l + [("address", e.endpointDescription), ("source", e.source.description)])
                gauge("traffic_mirror_endpoint_mtu_bytes", "Path MTU toward an endpoint: the outer packet never exceeds it.", l, Double(e.mtu))
                counter("traffic_mirror_endpoint_icmp_errors_total", "ICMP errors that quote a copy to an endpoint (port or host unreachable, time exceeded, fragmentation needed, packet too big): the endpoint is not taking them, or a router on the way cannot forward them whole.",
                        l, s.endpointICMPErrors["\(t.name)/\(e.key)"] ?? 0)
                let h = health["\(t.name)/\(e.key)"]
                gauge("traffic_mirror_endpoint_up", "1 while an endpoint gets copies: it answers its health check, or it is not probed.", l, h.map { $0.up ? 1 : 0 } ?? 1)
                counter("traffic_mirror_endpoint_probes_total", "Health probes sent to an endpoint, and those that failed.",
                        l + [("result", "sent")], h?.probes ?? 0)
                counter("traffic_mirror_endpoint_probes_total", "Health probes sent to an endpoint, and those that failed.",
                        l + [("result", "failed")], h?.failures ?? 0)
                let c = s.forwarder.endpoints[ForwarderCounters.Endpoint(target: t.name, endpoint: e.key)]
                counter("traffic_mirror_endpoint_sent_packets_total", "Copies handed to the network for an endpoint (with replicate, one per endpoint).", l, c?.packets ?? 0)
                counter("traffic_mirror_endpoint_sent_bytes_total", "Bytes of those copies, outer IP packet included.", l, c?.bytes ?? 0)
                counter("traffic_mirror_endpoint_send_errors_total", "Copies for an endpoint the network stack refused or a full socket held back.", l, c?.errors ?? 0)
                if t.pacing != nil {
                    counter("traffic_mirror_endpoint_pacing_waits_total", "Times a forwarding thread held copies for a paced endpoint until its schedule had room (target pacing).", l, c?.pacingWaits ?? 0)
                    let held = registry.makeCounter(descriptor: Self.descriptor(
                        "traffic_mirror_endpoint_pacing_wait_seconds_total",
                        "Time forwarding threads held copies for a paced endpoint; meanwhile the rings fill, and what overflows counts as ring_full."), labels: l)
                    held.reset()
                    held.increment(by: Double(c?.pacingNanoseconds ?? 0) / 1e9)
                }
            }
        }
        for (name, target) in s.sessionTargets.sorted(by: { $0.key < $1.key }) {
            info("traffic_mirror_session_info", "A session in force and its target.", [("session", name), ("target", target)])
        }
        counter("traffic_mirror_config_applies_total", "Configurations put in force (at start, on SIGHUP and when the config file changes), and attempts that failed.",
                [("result", "success")], UInt64(s.configsApplied))
        counter("traffic_mirror_config_applies_total", "Configurations put in force (at start, on SIGHUP and when the config file changes), and attempts that failed.",
                [("result", "failure")], UInt64(s.configsFailed))
        gauge("traffic_mirror_config_last_success_timestamp_seconds", "When a configuration was last put in force.", [],
              Double(s.lastAppliedNanoseconds) / 1e9)
    }

    /// The process metrics every Prometheus client exports, same names.
    private func processMetrics(gauge: (String, String, [(String, String)], Double) -> Void,
                                counter: (String, String, [(String, String)], UInt64) -> Void) {
        let cpu = registry.makeCounter(descriptor: Self.descriptor("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."), labels: [])
        cpu.reset()
        cpu.increment(by: CMirrorSys_process_cpu_seconds())
        let page = Double(sysconf(Int32(_SC_PAGESIZE)))
        if let statm = try? String(contentsOfProcFile: "/proc/self/statm") {
            let f = statm.split(separator: " ").compactMap { Double($0) }
            if f.count >= 2 {
                gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", [], f[0] * page)
                gauge("process_resident_memory_bytes", "Resident memory size in bytes.", [], f[1] * page)
            }
        }
        gauge("process_open_fds", "Number of open file descriptors.", [], Double(max(0, CMirrorSys_count_open_fds())))
        var rl = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &rl) == 0 {
            gauge("process_max_fds", "Maximum number of open file descriptors.", [], Double(rl.rlim_cur))
        }
        gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", [], startTime)
    }

    /// Process start time from /proc/self/stat (field 22, in clock ticks
    /// since boot) and the boot time from /proc/stat.
    /// Our names are whole already (unit suffix included).
    static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    static func processStartTime() -> Double? {
        guard let stat = try? String(contentsOfProcFile: "/proc/self/stat"),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command come state (field 3) ... starttime (field 22).
        guard fields.count > 19, let ticks = Double(fields[19]),
              let procStat = try? String(contentsOfProcFile: "/proc/stat"),
              let btime = procStat.split(separator: "\n").first(where: { $0.hasPrefix("btime ") })
                .flatMap({ Double($0.split(separator: " ")[1]) }) else { return nil }
        return btime + ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

import ArgumentParser
import Dispatch
import CMirrorSys
import Logging
import MirrorCore
import MirrorBPFObject
import MirrorDataPlane
import MirrorMetrics
import ServiceLifecycle
import UnixSignals

extension DirectionSelection: ExpressibleByArgument {}
extension HookPolicy.IngressHook: ExpressibleByArgument {}
extension HookPolicy.TCAttach: ExpressibleByArgument {}

/// A byte count with an optional K/M/G suffix (powers of 1024).
struct ByteSize: ExpressibleByArgument, CustomStringConvertible {
    var bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    var description: String {
        for (suffix, scale) in [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] where bytes % scale == 0 {
            return "\(bytes / scale)\(suffix)"
        }
        return "\(bytes)"
    }

    var defaultValueDescription: String { description }

    init?(argument: String) {
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var text = Substring(argument.uppercased())
        var scale = 1
        if let last = text.last, let u = units[last] {
            scale = u
            text = text.dropLast()
        }
        if text.hasSuffix("I") { return nil }
        guard let n = Int(text), n > 0 else { return nil }
        bytes = n * scale
    }
}

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Attach to the interfaces and mirror until SIGINT or SIGTERM.",
        discussion: """
        Either --config FILE, or the quick flags for one unfiltered session: \
        --interface (repeatable) and --target, with --vni, --direction and \
        --packet-length. On stop everything attached is detached and the rings \
        are drained, so every selected packet is sent or counted as dropped.
        """
    )

    @Option(help: ArgumentHelp("YAML config with targets, filters and sessions (docs/configuration.md); SIGHUP reloads it, and so does a change of the file (see --watch-config).", valueName: "file"))
    var config: String?

    @Flag(inversion: .prefixedNo, help: "With --config: reload when what the file holds changes (inotify: written in place, renamed over, a symbolic link changed, Kubernetes' ConfigMap ..data swap), as SIGHUP does; a bad config is rejected and the running plan stays.")
    var watchConfig = true

    @Option(name: .customLong("interface"), help: ArgumentHelp("Source interface to mirror, a name or a shell-style pattern such as 'veth*' (repeatable); interfaces that appear later are attached as they come. NETNS/NAME is one of another network namespace: NETNS under /var/run/netns or a path such as /proc/PID/ns/net.", valueName: "name"))
    var interfaces: [String] = []

    @Option(help: ArgumentHelp("Target as HOST[:PORT]: IPv4, [IPv6] in brackets, or a host name; port 4789 by default.", valueName: "host[:port]"))
    var target: String?

    @Option(help: ArgumentHelp("VXLAN network identifier, 0...16777215 (default 1).", valueName: "n"))
    var vni: UInt32?

    @Option(help: ArgumentHelp("Directions to mirror: ingress, egress or both (default both).", valueName: "direction"))
    var direction: DirectionSelection?

    @Option(help: ArgumentHelp("Keep only the first N bytes of each mirrored frame, 14...65535 (default: the whole frame, up to what the target's MTU allows).", valueName: "n"))
    var packetLength: Int?

    @Option(help: ArgumentHelp("End the quick session after this long (e.g. 30s, 10m, 1h), then exit 0.", valueName: "time"))
    var duration: String?

    @Option(help: ArgumentHelp("End the quick session once it selected N packets, counted in the kernel, then exit 0.", valueName: "n"))
    var count: UInt64?

    @Option(help: ArgumentHelp("End the quick session once it selected this many frame bytes (K/M/G suffix), then exit 0.", valueName: "bytes"))
    var maxBytes: ByteSize?

    @Option(help: ArgumentHelp("Pace the quick target: at most N datagrams a second on average, 1...1000000000 (the target key pacing.packets_per_second; default: unpaced).", valueName: "pps"))
    var pace: UInt64?

    @Option(help: ArgumentHelp("With --pace: the most datagrams sent back to back, 1...\(Pacing.maxBurst) (default \(Pacing.defaultBurst)).", valueName: "n"))
    var paceBurst: Int?

    @Option(help: ArgumentHelp("Where /metrics (Prometheus text format) and /healthz listen, HOST:PORT.", valueName: "host:port"))
    var metricsAddress: String = "127.0.0.1:9781"

    @Option(help: ArgumentHelp("Hook for ingress: tc (default: a tcx link that changes nothing about the device, and sees packets after GRO) or xdp (native XDP only: frames as the driver got them, before GRO; on veth it turns GRO on and takes TSO/GSO off the peer, see docs/operations.md).", valueName: "hook"))
    var ingressHook: HookPolicy.IngressHook = .tc

    @Option(help: ArgumentHelp("How tc programs are attached: auto (tcx links where the kernel has them, else netlink filters), tcx, or netlink.", valueName: "mode"))
    var tcAttach: HookPolicy.TCAttach = .auto

    @Option(help: ArgumentHelp("Ring-buffer memory in all, shared by the CPUs online at start: each ring is the largest power of two within it per CPU, 1M to 64M (K/M/G suffix).", valueName: "bytes"))
    var ringMemory = ByteSize(bytes: RingSizing.defaultTotal)

    @Option(help: ArgumentHelp("Bytes of each CPU's ring instead, a power of two from 4K to 1G (K/M/G suffix).", valueName: "bytes"))
    var ringSize: ByteSize?

    @Option(help: ArgumentHelp("Records per sendmmsg batch, 1...4096.", valueName: "n"))
    var batchSize: Int = 256

    @Option(help: ArgumentHelp("CPUs (rings) per forwarding thread, 1...1024: a host with more CPUs gets one thread per group of this many consecutive CPUs. A connection's copies keep their order when its packets are hooked on CPUs of one group.", valueName: "n"))
    var ringsPerThread: Int = Agent.defaultRingsPerThread

    @Flag(inversion: .prefixedNo, help: "Send runs of one flow's copies as one UDP GSO message each, which the kernel cuts into datagrams (--no-gso: every copy a frame of its own). Copies leave by an AF_PACKET socket on the route's interface, or by a raw IP socket where there is no link-layer path; no UDP port is bound either way.")
    var gso = true

    @Option(help: ArgumentHelp("Seconds between looks at every target's route, source address, path MTU and host name, besides those route and address changes prompt (netlink), 1...3600.", valueName: "seconds"))
    var resolveInterval: Double = 30

    @Option(help: ArgumentHelp("SO_MARK for the agent's sockets, for policy routing of the copies (default: none). The hooks never use marks to recognise the copies; avoid the bits kube-proxy (0x4000, 0x8000), Calico (0xffff0000) and Cilium (0x0f00, 0xffff0000) give meanings.", valueName: "mark"))
    var socketMark: String?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        var problems = [String]()
        if config != nil {
            // The file describes the sessions; the quick flags would say it twice.
            let quick = [("--interface", !interfaces.isEmpty), ("--target", target != nil), ("--vni", vni != nil),
                         ("--direction", direction != nil), ("--packet-length", packetLength != nil),
                         ("--duration", duration != nil), ("--count", count != nil), ("--max-bytes", maxBytes != nil),
                         ("--pace", pace != nil), ("--pace-burst", paceBurst != nil)]
            for (flag, given) in quick where given {
                problems.append("\(flag): the config file describes the sessions; use either --config or the quick-session flags, not both")
            }
        } else {
            if interfaces.isEmpty { problems.append("--interface: at least one source interface is required (or use --config)") }
            if target == nil { problems.append("--target: a target is required (HOST[:PORT]), or use --config") }
        }
        for name in interfaces {
            if let problem = InterfacePattern.problem(name) { problems.append("--interface: \(problem)") }
        }
        if let t = target {
            do { _ = try HostPort(parsing: t) } catch { problems.append("--target: \(error.message)") }
        }
        if let v = vni, v > TunnelHeader.maxVNI {
            problems.append("--vni: \(v) is out of range 0...\(TunnelHeader.maxVNI)")
        }
        if let d = duration, SessionBounds.seconds(d).map({ $0 >= 0.001 && $0 <= 31_622_400 }) != true {
            problems.append("--duration: \"\(d)\" must be a time from 1ms to 366 days, e.g. 30s, 10m, 1h")
        }
        if count == 0 { problems.append("--count: must be at least 1") }
        if let p = pace, !(1...1_000_000_000).contains(p) { problems.append("--pace: \(p) is out of range 1...1000000000 datagrams a second") }
        if let b = paceBurst {
            if pace == nil { problems.append("--pace-burst: only with --pace (the rate it bursts above)") }
            if !(1...Pacing.maxBurst).contains(b) { problems.append("--pace-burst: \(b) is out of range 1...\(Pacing.maxBurst)") }
        }
        if let m = maxBytes, m.bytes < 1 { problems.append("--max-bytes: must be at least 1") }
        if let p = packetLength, !(14...65535).contains(p) {
            problems.append("--packet-length: \(p) is out of range 14...65535 (an Ethernet header is 14 bytes)")
        }
        if let m = try? HostPort(parsing: metricsAddress), m.port != nil {
            if IPAddress(m.host) == nil && m.host != "localhost" {
                problems.append("--metrics-address: \(m.host) must be an IP address (or localhost)")
            }
        } else {
            problems.append("--metrics-address: \"\(metricsAddress)\" must be HOST:PORT, e.g. 127.0.0.1:9781 or [::1]:9781")
        }
        if ringMemory.bytes < RingSizing.minimumRing {
            problems.append("--ring-memory: \(ringMemory) is below one ring of 1M")
        }
        if let ring = ringSize?.bytes, ring < 4096 || ring & (ring - 1) != 0 || ring > 1 << 30 {
            problems.append("--ring-size: \(ring) must be a power of two from 4K to 1G")
        }
        if let m = socketMark, Self.parseMark(m) == nil {
            problems.append("--socket-mark: \"\(m)\" must be a number from 1 to 0xffffffff (decimal or 0x hex)")
        }
        if !(1...4096).contains(batchSize) {
            problems.append("--batch-size: \(batchSize) is out of range 1...4096")
        }
        if !(1...3600).contains(resolveInterval) {
            problems.append("--resolve-interval: \(resolveInterval) is out of range 1...3600 seconds")
        }
        if !(1...1024).contains(ringsPerThread) {
            problems.append("--rings-per-thread: \(ringsPerThread) is out of range 1...1024")
        }
        if !problems.isEmpty {
            throw ValidationError(problems.joined(separator: "\n"))
        }
    }

    static func parseMark(_ text: String) -> UInt32? {
        let v = text.lowercased().hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : UInt32(text)
        return v == 0 ? nil : v
    }

    /// The config and, from a file, the text it was loaded from.
    func makeConfig() throws -> (config: MirrorConfig, text: String?) {
        if let config { return try loadConfig(path: config) }
        let t = try HostPort(parsing: target!)
        let bounds = SessionBounds(duration: duration.flatMap(SessionBounds.seconds), maxPackets: count,
                                   maxBytes: maxBytes.map { UInt64($0.bytes) })
        var quick = MirrorConfig.quick(interfaces: interfaces, target: t, vni: vni ?? 1,
                                       direction: direction ?? .both, packetLength: packetLength,
                                       bounds: bounds.isEmpty ? nil : bounds)
        quick.targets[0].pacing = pace.map { Pacing(packetsPerSecond: $0, burst: paceBurst ?? Pacing.defaultBurst) }
        return (quick, nil)
    }

    func run() async throws {
        // Trap SIGHUP first: its default action ends the process, and a
        // reload asked for during start-up is carried out once it is done.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let logger = logging.bootstrap()
        let (config, text) = try makeConfig()
        let options = Agent.Options(
            program: .init(ringBytes: ringSize.map { UInt32($0.bytes) } ?? MirrorProgram.Settings.automaticRingBytes(total: ringMemory.bytes)),
            forwarder: .init(batchSize: batchSize, gso: gso),
            hooks: HookPolicy(ingress: ingressHook, tcAttach: tcAttach),
            socketMark: socketMark.flatMap(Self.parseMark) ?? 0,
            ringsPerThread: ringsPerThread)
        var agentOptions = options
        agentOptions.resolveInterval = resolveInterval
        let metrics = try HostPort(parsing: metricsAddress)
        let reference = AgentReference()
        let exporter = MetricsExporter(agent: reference, build: BuildInfo(
            version: TrafficMirror.version, libbpf: libbpfVersion, bpfObjectSHA256: MirrorBPFObject.sha256))
        // The group traps SIGTERM/SIGINT before the service attaches
        // anything, so a signal during start-up still ends in a clean stop.
        // Services stop in reverse order: the agent drains first, and the
        // endpoint still answers meanwhile.
        let group = ServiceGroup(configuration: .init(
            services: [
                .init(service: MetricsServer.make(host: metrics.host, port: Int(metrics.port!), exporter: exporter, logger: logger)),
                // A quick session that ends by itself ends the run: the
                // agent stops, then the metrics endpoint.
                .init(service: AgentService(options: agentOptions, config: config, configPath: self.config,
                                            watchedText: watchConfig ? text : nil, hangups: hangups,
                                            reference: reference, logger: logger),
                      successTerminationBehavior: .gracefullyShutdownGroup),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await group.run()
        } catch let error as OperationalError {
            report(error.message)
            throw ExitCode(1)
        } catch let error as MetricsEndpointError {
            report(error.message)
            throw ExitCode(1)
        }
    }
}

/// Starts the agent, keeps it running until graceful shutdown, then stops
/// it. A start-up failure ends the group with the OperationalError.
struct AgentService: Service {
    let options: Agent.Options
    let config: MirrorConfig
    /// The file SIGHUP reloads; nil for the quick flags.
    let configPath: String?
    /// The text the config was loaded from, when changes of the file
    /// reload it (--watch-config).
    let watchedText: String?
    /// SIGHUPs since the process started.
    let hangups: UnixSignalsSequence
    let reference: AgentReference
    /// The text the last reload read (the start's at first). Used on the
    /// reload queue only: a change the watcher reports that a SIGHUP has
    /// already read is not reloaded twice.
    final class LastRead: @unchecked Sendable { var text: String? }
    let lastRead = LastRead()
    let logger: Logger

    func run() async throws {
        let agent = try Agent(options: options, logger: logger)
        do {
            try agent.apply(config)
        } catch {
            agent.shutdown()
            throw error
        }
        reference.set(agent)
        for t in agent.applied?.targets ?? [] {
            for e in t.endpoints {
                logger.info("mirroring", metadata: [
                    "target": "\(t.name)", "endpoint": "\(e.endpointDescription)", "source": "\(e.source)",
                    "mtu": "\(e.mtu)", "frame_limit": "\(t.innerLimit)", "encapsulation": "\(t.encapsulation.rawValue)",
                    "mode": "\(t.mode.rawValue)",
                ])
            }
        }
        // A SIGHUP before `run` trapped it (CMirrorSys notes those).
        lastRead.text = watchedText
        if CMirrorSys_take_early_hangup() != 0 { reload(agent) }
        let (changes, changed) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(1))
        var watcher: ConfigWatcher?
        if let path = configPath, let text = watchedText {
            do {
                watcher = try ConfigWatcher(path: path, text: text) { changed.yield($0) }
                logger.info("watching the config file for changes", metadata: ["config": "\(path)"])
            } catch {
                logger.warning("cannot watch the config file; SIGHUP still reloads it", metadata: ["config": "\(path)", "error": "\(error)"])
            }
        }
        // SIGHUP and changes of the file reload it until graceful shutdown
        // begins, one reload at a time on a queue of their own: a reload
        // waits in the kernel (attaching hooks) for as long as it takes, and
        // must not hold a thread of the concurrency pool, which the metrics
        // endpoint's handlers run on.
        let reloads = DispatchQueue(label: "traffic-mirror.reload")
        func reloadOffPool(_ text: String?) async {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                reloads.async {
                    if let text {
                        if text != lastRead.text {
                            logger.info("the config file changed")
                            reload(agent, text: text)
                        }
                    } else {
                        reload(agent)
                    }
                    done.resume()
                }
            }
        }
        // Runs until graceful shutdown, or until the quick session ended.
        let (ends, end) = AsyncStream.makeStream(of: Void.self)
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await _ in hangups.cancelOnGracefulShutdown() {
                    await reloadOffPool(nil)
                }
            }
            group.addTask {
                for await text in changes.cancelOnGracefulShutdown() {
                    await reloadOffPool(text)
                }
            }
            group.addTask {
                await watchSessions(agent, endsRun: configPath == nil)
                end.yield()
            }
            group.addTask {
                try? await gracefulShutdown()
                end.yield()
            }
            for await _ in ends { break }
            group.cancelAll()
        }
        watcher?.stop()
        logger.info("stopping: detaching hooks and draining the rings")
        agent.shutdown()
        let s = agent.forwarding.counters.snapshot()
        let sent = s.sent.values.reduce(0) { $0 + $1.packets }
        let dropped = s.drops.values.reduce(0) { $0 + $1.values.reduce(0, +) }
        logger.info("stopped", metadata: ["sent_packets": "\(sent)", "user_space_drops": "\(dropped)"])
    }

    /// Logs each bounded session's start and end as it happens; returns when
    /// cancelled, or (`endsRun`: the quick session) once every bounded
    /// session has ended.
    func watchSessions(_ agent: Agent, endsRun: Bool) async {
        var last = [String: SessionState]()
        while !Task.isCancelled {
            let states = agent.sessionStates()
            for (name, now) in states.sorted(by: { $0.key < $1.key }) where last[name] != now.state {
                let meta: Logger.Metadata = ["session": "\(name)", "packets": "\(now.packets)", "bytes": "\(now.bytes)"]
                switch now.state {
                case .pending: logger.info("session waits for its start_at", metadata: meta)
                case .active: if last[name] != nil { logger.info("session started", metadata: meta) }
                case .ended(let reason): logger.notice("session ended", metadata: meta.merging(["reason": "\(reason.rawValue)"]) { a, _ in a })
                }
                last[name] = now.state
            }
            if endsRun && !states.isEmpty && states.values.allSatisfy({ if case .ended = $0.state { true } else { false } }) {
                logger.info("the session has ended; stopping")
                return
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Reads the config file again (or takes the text the watcher read)
    /// and puts it in force; on any problem the running plan stays,
    /// untouched, and the problems are logged.
    func reload(_ agent: Agent, text given: String? = nil) {
        guard let path = configPath else {
            logger.warning("SIGHUP ignored: the agent runs from flags, not a config file")
            return
        }
        logger.info("reloading", metadata: ["config": "\(path)"])
        let text: String
        do {
            text = try given ?? String(contentsOfFile: path, encoding: .utf8)
            lastRead.text = text
        } catch {
            logger.error("reload rejected: cannot read the config; the running plan stays", metadata: ["config": "\(path)", "error": "\(error)"])
            agent.noteRejectedConfig()
            return
        }
        let config: MirrorConfig
        do {
            config = try ConfigLoader.load(yaml: text)
        } catch {
            for p in error.problems {
                logger.error("reload rejected: the running plan stays", metadata: ["config": "\(path)", "problem": "\(p)"])
            }
            agent.noteRejectedConfig()
            return
        }
        do {
            try agent.apply(config)
            logger.info("reloaded", metadata: [
                "config": "\(path)", "sessions": "\(config.sessions.count)",
                "interfaces": "\(agent.interfaces.keys.sorted().joined(separator: ","))",
            ])
        } catch {
            logger.error("reload failed: the running plan stays", metadata: ["config": "\(path)", "error": "\(error.message)"])
        }
    }
}

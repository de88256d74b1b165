import CMirrorSys
import Logging

#if canImport(Glibc)
import Glibc
#endif
import MirrorCore
import Synchronization

/// The running mirror: the loaded program, its rings, the forwarding
/// thread and the hooks, put together in an order that never leaves a
/// hook attached without something draining its ring, and taken apart in
/// the reverse order so every selected packet is accounted for.
public final class Agent: @unchecked Sendable {
    // @unchecked: mutable state is behind `state`; the rest is immutable.

    public struct Options: Sendable {
        public var program: MirrorProgram.Settings
        public var forwarder: Forwarder.Settings
        public var hooks: HookPolicy

        public init(program: MirrorProgram.Settings = .init(), forwarder: Forwarder.Settings = .init(), hooks: HookPolicy = .init()) {
            self.program = program
            self.forwarder = forwarder
            self.hooks = hooks
        }
    }

    /// What one applied configuration consists of.
    public struct Applied: Sendable {
        public var config: MirrorConfig
        public var plan: MirrorPlan
        public var targets: [ResolvedTarget]
        public var bank: Int
    }

    struct State {
        var hooks: [Hook] = []
        /// Interface name -> (ifindex, slot).
        var interfaces: [String: (ifindex: Int32, slot: UInt32)] = [:]
        var freeSlots: [UInt32] = (0..<UInt32(PlanLimits.interfaces)).reversed()
        var applied: Applied?
        /// Ring positions behind which the last retired bank's records lie;
        /// that bank may be rewritten once they are all sent.
        var retiredBankBarrier: [UInt64]?
        /// Kernel counters of sessions whose bank was retired, by session
        /// name and direction, so totals survive reloads.
        var retired: [String: [Direction: [UInt64]]] = [:]
        var stopped = false
        /// Configurations put in force, and attempts that failed.
        var applied_ok = 0
        var applied_failed = 0
        var lastAppliedNanoseconds: UInt64 = 0
    }

    public let options: Options
    public let program: MirrorProgram
    public let rings: RingSet
    public let forwarder: Forwarder
    public let health: HealthMonitor
    let logger: Logger
    private let thread = DedicatedThread()
    private let state = Mutex(State())
    public let startedAt = CMirrorSys_realtime_ns()

    /// Loads the program, creates the rings and starts the forwarding
    /// thread. Nothing is attached yet: see `apply`.
    public init(options: Options, logger: Logger) throws(OperationalError) {
        self.options = options
        self.logger = logger
        // The emitter keeps a UDP socket per source port it sends GSO runs
        // from (up to 16384 per family): take the hard open-file limit.
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        }
        program = try MirrorProgram(settings: options.program)
        do {
            rings = try RingSet(program: program)
        } catch {
            throw OperationalError("cannot create the ring buffers: \(error); raise the memlock limit or lower --ring-size")
        }
        do {
            forwarder = try Forwarder(rings: rings, counters: ForwarderCounters(), mark: options.program.ownMark,
                                      settings: options.forwarder, logger: logger)
        } catch {
            throw OperationalError("cannot open the sending sockets: \(error); the agent needs CAP_NET_RAW")
        }
        do {
            health = try HealthMonitor(mark: options.program.ownMark, logger: logger)
        } catch {
            throw OperationalError("cannot open the health-probe sockets: \(error); the agent needs CAP_NET_RAW")
        }
        let f = forwarder
        do {
            try thread.start { f.run() }
        } catch {
            throw OperationalError("cannot start the forwarding thread: \(error)")
        }
        logger.info("BPF program loaded", metadata: [
            "rings": "\(rings.count)", "ring_bytes": "\(rings.bytesPerRing)",
            "batch": "\(options.forwarder.batchSize)",
        ])
    }

    deinit {
        shutdown()
    }

    /// The configuration in force, if any.
    public var applied: Applied? { state.withLock { $0.applied } }

    /// Interfaces hooked now, with their slots.
    public var interfaces: [String: (ifindex: Int32, slot: UInt32)] { state.withLock { $0.interfaces } }

    /// Attached hooks (interface, direction, kind).
    public var hooks: [(interface: String, direction: Direction, kind: HookKind)] {
        state.withLock { $0.hooks.map { ($0.interface, $0.direction, $0.kind) } }
    }

    /// Puts `config` in force: resolves its targets, writes its plan into
    /// the bank the hooks are not reading, hands the forwarding thread the
    /// matching table, switches the hooks over with one write, then attaches
    /// and detaches hooks for interfaces the change adds or removes. On any
    /// error the previous configuration stays in force, untouched, and
    /// nothing new stays attached.
    public func apply(_ config: MirrorConfig) throws(OperationalError) {
        let plan = MirrorPlan(compiling: config)
        var resolved = [ResolvedTarget]()
        var ifindexes = [String: Int32]()
        do throws(OperationalError) {
            for t in config.targets {
                resolved.append(try TargetResolver.resolve(t, mark: options.program.ownMark))
            }
            for name in plan.interfaces {
                let idx = CMirrorSys_if_nametoindex(name)
                guard idx > 0 else {
                    throw OperationalError("interface \(name) not found: \(SystemError("if_nametoindex", code: idx)); check 'ip link' in the agent's network namespace")
                }
                ifindexes[name] = idx
            }
        } catch {
            noteRejectedConfig()
            throw error
        }
        try state.withLock { (s: inout State) throws(OperationalError) in
            guard !s.stopped else { throw OperationalError("the agent is shutting down") }
            do throws(OperationalError) {
                try apply(config, plan: plan, targets: resolved, ifindexes: ifindexes, state: &s)
                s.applied_ok += 1
                s.lastAppliedNanoseconds = CMirrorSys_realtime_ns()
            } catch {
                s.applied_failed += 1
                throw error
            }
        }
    }

    /// Counts a configuration that was refused before reaching the agent
    /// (an invalid file on reload).
    public func noteRejectedConfig() {
        state.withLock { $0.applied_failed += 1 }
    }

    private func apply(
        _ config: MirrorConfig, plan: MirrorPlan, targets: [ResolvedTarget], ifindexes: [String: Int32], state s: inout State
    ) throws(OperationalError) {
        // Slots for new interfaces (old ones keep theirs and their counters).
        var newSlots = [String]()
        var slots = s.interfaces.mapValues(\.slot)
        for (name, idx) in ifindexes.sorted(by: { $0.key < $1.key }) where s.interfaces[name]?.ifindex != idx {
            guard let slot = s.interfaces[name]?.slot ?? s.freeSlots.popLast() else {
                throw OperationalError("more than \(PlanLimits.interfaces) interfaces")
            }
            slots[name] = slot
            newSlots.append(name)
        }
        func undoSlots() {
            for name in newSlots where s.interfaces[name] == nil { s.freeSlots.append(slots[name]!) }
        }
        do {
            for name in newSlots {
                try program.resetInterfaceCounters(slot: slots[name]!)
                try program.setSlot(ifindex: UInt32(ifindexes[name]!), slot: slots[name]!)
            }
        } catch {
            for name in newSlots where s.interfaces[name] == nil { program.removeSlot(ifindex: UInt32(ifindexes[name]!)) }
            undoSlots()
            throw OperationalError("cannot register interfaces: \(error)")
        }

        // Sessions as the kernel needs them.
        var kernelSessions = [KernelSession]()
        for session in plan.sessions {
            let t = targets[session.target]
            let c = config.sessions.first { $0.name == session.name }
            var limit = UInt32(0)
            if let l = session.packetLength { limit = UInt32(l) }
            kernelSessions.append(KernelSession(
                lengthLimit: limit, mtuLimit: UInt32(t.innerLimit),
                sampleEvery: UInt32(c?.sample ?? 1),
                rate: c?.rateLimit?.perSecond ?? 0, burst: c?.rateLimit?.burst ?? 0,
                rateBits: c?.rateLimit?.unit == .bits,
                tunnelHeader: TunnelHeader.bytes(t.encapsulation, vni: session.vni)))
        }

        let previous = s.applied
        let bank = previous.map { 1 - $0.bank } ?? 0
        // Records written under the bank about to be rewritten must all be
        // sent first, or they would be read with the new plan's sessions.
        if let barrier = s.retiredBankBarrier {
            guard waitReleased(barrier, seconds: 5) else {
                for name in newSlots where s.interfaces[name] == nil { program.removeSlot(ifindex: UInt32(ifindexes[name]!)) }
                undoSlots()
                throw OperationalError("the previous plan's copies are still being sent (the target is slow); try the reload again")
            }
            s.retiredBankBarrier = nil
        }
        do {
            try program.install(plan: plan, sessions: kernelSessions, slots: slots, bank: bank)
        } catch {
            for name in newSlots where s.interfaces[name] == nil { program.removeSlot(ifindex: UInt32(ifindexes[name]!)) }
            undoSlots()
            throw OperationalError("cannot write the plan into the kernel maps: \(error)")
        }
        let healthSlots = health.configure(targets)
        forwarder.install(
            ForwardingTable(targets: targets, sessionNames: plan.sessions.map(\.name),
                            sessionTargets: plan.sessions.map(\.target), packetLengths: plan.sessions.map(\.packetLength),
                            counters: forwarder.counters, health: health.flags, healthSlots: healthSlots),
            bank: bank)

        // Attach what is missing before switching, so a failed attach leaves
        // the old plan in force.
        var added = [Hook]()
        do {
            for name in plan.interfaces {
                let idx = ifindexes[name]!
                for d in plan.directions(of: name) where !s.hooks.contains(where: { $0.interface == name && $0.direction == d && $0.ifindex == idx }) {
                    if s.interfaces[name] == nil {
                        for stale in Hook.removeStaleFilters(interface: name, ifindex: idx) {
                            logger.warning("removed a tc filter left by an earlier traffic-mirror run", metadata: ["filter": "\(stale)"])
                        }
                    }
                    let hook = try Hook.attach(program: program, interface: name, ifindex: idx, direction: d, policy: options.hooks)
                    added.append(hook)
                }
            }
        } catch {
            added.removeAll() // detaches
            for name in newSlots where s.interfaces[name] == nil { program.removeSlot(ifindex: UInt32(ifindexes[name]!)) }
            undoSlots()
            throw error
        }

        do {
            try program.activate(bank: bank)
        } catch {
            added.removeAll()
            for name in newSlots where s.interfaces[name] == nil { program.removeSlot(ifindex: UInt32(ifindexes[name]!)) }
            undoSlots()
            throw OperationalError("cannot switch to the new plan: \(error)")
        }
        for h in added {
            logger.info("attached", metadata: ["interface": "\(h.interface)", "direction": "\(h.direction.rawValue)", "hook": "\(h.kind.rawValue)"])
        }
        s.hooks += added

        // Detach hooks the new plan no longer needs, and forget their slots.
        let keep = Set(plan.interfaces.flatMap { n in plan.directions(of: n).map { "\(n)/\($0.rawValue)" } })
        func kept(_ h: Hook) -> Bool {
            keep.contains("\(h.interface)/\(h.direction.rawValue)") && ifindexes[h.interface] == h.ifindex
        }
        let (stay, go) = (s.hooks.filter(kept), s.hooks.filter { !kept($0) })
        for h in go {
            logger.info("detached", metadata: ["interface": "\(h.interface)", "direction": "\(h.direction.rawValue)"])
        }
        s.hooks = stay
        for (name, old) in s.interfaces where ifindexes[name] != old.ifindex {
            program.removeSlot(ifindex: UInt32(old.ifindex))
            if ifindexes[name] == nil {
                s.freeSlots.append(old.slot)
                s.interfaces[name] = nil
            }
        }
        for (name, idx) in ifindexes { s.interfaces[name] = (idx, slots[name]!) }
        s.applied = Applied(config: config, plan: plan, targets: targets, bank: bank)
        // Hooks that started before the switch may still be writing records
        // of the old bank; wait for them so its counters are final and its
        // records are all in the rings.
        try? program.waitForRunningHooks(ring0: rings.firstRingFD)
        if let previous {
            for (i, session) in previous.plan.sessions.enumerated() {
                for d in Direction.allCases {
                    guard let c = try? program.sessionCounters(bank: previous.bank, session: i, direction: d) else { continue }
                    let old = s.retired[session.name]?[d] ?? [UInt64](repeating: 0, count: c.count)
                    s.retired[session.name, default: [:]][d] = zip(old, c).map { $0 &+ $1 }
                }
            }
            let barrier = rings.producerPositions()
            if !waitReleased(barrier, seconds: 2) { s.retiredBankBarrier = barrier }
        }
    }

    private func waitReleased(_ positions: [UInt64], seconds: Int) -> Bool {
        for _ in 0..<(seconds * 500) {
            if rings.released(upTo: positions) { return true }
            rings.wake()
            usleep(2000)
        }
        return rings.released(upTo: positions)
    }

    /// Kernel counters per session name and direction, labelled by
    /// `MirrorProgram.sessionOutcomeLabels`: retired banks plus the bank
    /// in force.
    public func sessionCounters() -> [String: [Direction: [UInt64]]] {
        state.withLock { s in
            var out = s.retired
            guard let a = s.applied else { return out }
            for (i, session) in a.plan.sessions.enumerated() {
                for d in Direction.allCases {
                    guard let c = try? program.sessionCounters(bank: a.bank, session: i, direction: d) else { continue }
                    let old = out[session.name]?[d] ?? [UInt64](repeating: 0, count: c.count)
                    out[session.name, default: [:]][d] = zip(old, c).map { $0 &+ $1 }
                }
            }
            return out
        }
    }

    /// Everything a scrape reports, read now.
    public struct Snapshot: Sendable {
        public struct InterfaceCounters: Sendable {
            public var interface: String
            public var direction: Direction
            /// By `MirrorProgram.interfaceOutcomeLabels`.
            public var counts: [UInt64]
        }

        public var interfaces: [InterfaceCounters]
        /// Kernel session counters by name and direction, by
        /// `MirrorProgram.sessionOutcomeLabels`.
        public var sessions: [String: [Direction: [UInt64]]]
        public var forwarder: ForwarderCounters.Snapshot
        public var targets: [ResolvedTarget]
        /// Session name -> target name, for the plan in force.
        public var sessionTargets: [String: String]
        public var hooks: [(interface: String, direction: Direction, kind: HookKind)]
        public var endpointHealth: [HealthMonitor.EndpointState]
        public var ringBacklogBytes: [UInt64]
        public var ringBytes: UInt32
        public var configsApplied: Int
        public var configsFailed: Int
        public var lastAppliedNanoseconds: UInt64
        /// The data plane runs: a plan is in force and the thread drains.
        public var running: Bool
    }

    public func snapshot() -> Snapshot {
        let sessions = sessionCounters()
        let forwarderSnapshot = forwarder.counters.snapshot()
        return state.withLock { s in
            var interfaces = [Snapshot.InterfaceCounters]()
            for (name, i) in s.interfaces.sorted(by: { $0.key < $1.key }) {
                for d in Direction.allCases {
                    if let c = try? program.interfaceCounters(slot: i.slot, direction: d) {
                        interfaces.append(.init(interface: name, direction: d, counts: c))
                    }
                }
            }
            var sessionTargets = [String: String]()
            if let a = s.applied {
                for session in a.plan.sessions { sessionTargets[session.name] = a.targets[session.target].name }
            }
            return Snapshot(
                interfaces: interfaces, sessions: sessions, forwarder: forwarderSnapshot,
                targets: s.applied?.targets ?? [], sessionTargets: sessionTargets,
                hooks: s.hooks.map { ($0.interface, $0.direction, $0.kind) },
                endpointHealth: health.endpoints(),
                ringBacklogBytes: rings.backlog(), ringBytes: rings.bytesPerRing,
                configsApplied: s.applied_ok, configsFailed: s.applied_failed,
                lastAppliedNanoseconds: s.lastAppliedNanoseconds,
                running: !s.stopped && s.applied != nil && forwarder.isRunning)
        }
    }

    /// Detaches every hook, waits for hooks still running, lets the
    /// forwarding thread send what the rings hold, and stops it. Idempotent.
    public func shutdown() {
        let hooks: [Hook]? = state.withLock { s in
            guard !s.stopped else { return nil }
            s.stopped = true
            let h = s.hooks
            s.hooks = []
            return h
        }
        guard var detach = hooks else { return }
        let names = detach.map { "\($0.interface)/\($0.direction.rawValue)" }
        detach.removeAll()
        try? program.waitForRunningHooks(ring0: rings.firstRingFD)
        forwarder.stop()
        thread.join()
        health.stop()
        state.withLock { s in
            for (_, i) in s.interfaces { program.removeSlot(ifindex: UInt32(i.ifindex)) }
        }
        if !names.isEmpty { logger.info("detached", metadata: ["hooks": "\(names.joined(separator: ", "))"]) }
    }
}

import CMirrorBPF
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
        /// SO_MARK of every socket the agent sends from, for policy routing
        /// only (0: none, the default). The hooks never look at marks.
        public var socketMark: UInt32
        /// Rings (CPUs) per forwarding thread (ForwardingGroups).
        public var ringsPerThread: Int
        /// Seconds between looks at every target's path (and host name)
        /// besides those netlink events prompt.
        public var resolveInterval: Double = 30

        public init(program: MirrorProgram.Settings = .init(), forwarder: Forwarder.Settings = .init(), hooks: HookPolicy = .init(),
                    socketMark: UInt32 = 0, ringsPerThread: Int = Agent.defaultRingsPerThread) {
            self.program = program
            self.forwarder = forwarder
            self.hooks = hooks
            self.socketMark = socketMark
            self.ringsPerThread = ringsPerThread
        }
    }

    /// One forwarding thread for up to 16 CPUs: the ring merge costs the
    /// same per record up to 16 rings (docs/benchmarks.md).
    public static let defaultRingsPerThread = 16

    /// What one applied configuration consists of.
    public struct Applied: Sendable {
        public var config: MirrorConfig
        public var plan: MirrorPlan
        public var targets: [ResolvedTarget]
        public var bank: Int
    }

    struct State {
        var hooks: [Hook] = []
        /// Source name -> (namespace and ifindex, slot).
        var interfaces: [String: (link: Link, slot: UInt32)] = [:]
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
        /// The configuration as given, interface patterns unresolved.
        var source: MirrorConfig?
        /// Namespaces that sources name but that cannot be entered, and why.
        var namespaceFailures: [String: String] = [:]
        /// Each pattern or name and how many interfaces it matches now (0:
        /// it waits).
        var patternMatches: [(pattern: String, count: Int)] = []
        /// Interface events by kind (InterfaceEvent).
        var events: [InterfaceEvent: Int] = [:]
        /// Why the last change of interfaces failed, until one succeeds.
        var interfaceFailure: String?
        /// Final counters of interfaces that were detached, by name and
        /// direction; an interface back under the same name adds to them.
        var retiredInterfaces: [String: [Direction: [UInt64]]] = [:]
        /// Bounded sessions in force, by name.
        var bounded: [String: BoundedSession] = [:]
        /// Target paths re-resolved because they changed, and looks that failed.
        var targetPathChanges = 0
        var targetResolveFailures = 0
        /// Why the last look at the targets failed, until one succeeds.
        var targetProblem: String?
        /// ICMP errors about copies, by "target/endpoint", and when each was last logged.
        var icmpErrors: [String: UInt64] = [:]
        var icmpLogged: [String: UInt64] = [:]
        /// Path MTUs that ICMP taught ("fragmentation needed", "packet too
        /// big"), by endpoint address, and when each expires (monotonic ns).
        var learnedMTU: [IPAddress: (mtu: Int, expires: UInt64)] = [:]
    }

    /// How long a path MTU learnt from ICMP holds, as the kernel's
    /// net.ipv4.route.mtu_expires: then the route's is tried again.
    static let learnedMTUSeconds: UInt64 = 600

    /// A session with a window or limits: its kernel usage slot and when it
    /// was first put in force, kept across reloads while it is unchanged.
    struct BoundedSession {
        var config: SessionConfig
        var slot: UInt32
        /// CLOCK_MONOTONIC when it was first put in force.
        var since: UInt64
        var startNanoseconds: UInt64
        var stopNanoseconds: UInt64
        /// Which of duration and stop_at sets stopNanoseconds.
        var stopReason: SessionEnd?
    }

    /// A bounded session's window in CLOCK_MONOTONIC (the kernel's clock),
    /// from now: start_at, and the earlier of stop_at and the duration
    /// (counted from start_at, or from now).
    static func window(_ c: SessionConfig, _ b: SessionBounds, slot: UInt32) -> BoundedSession {
        let now = CMirrorSys_monotonic_ns()
        let offset = Double(CMirrorSys_realtime_ns()) - Double(now)
        func monotonic(_ epochSeconds: Double) -> UInt64 {
            let v = epochSeconds * 1e9 - offset
            return v <= 0 ? 0 : v >= Double(UInt64.max) ? .max : UInt64(v)
        }
        let start = b.startAt.map(monotonic) ?? 0
        var stop = UInt64.max
        var reason: SessionEnd?
        if let z = b.stopAt {
            stop = monotonic(z)
            reason = .stopAt
        }
        if let d = b.duration {
            let end = max(start, now) &+ UInt64(d * 1e9)
            if end < stop {
                stop = end
                reason = .duration
            }
        }
        return BoundedSession(config: c, slot: slot, since: now, startNanoseconds: start, stopNanoseconds: stop, stopReason: reason)
    }

    /// Where each bounded session is (sessions without bounds are active
    /// while in force and absent here), with what it selected.
    public func sessionStates() -> [String: BoundedState] {
        let bounded = state.withLock { $0.bounded }
        let now = CMirrorSys_monotonic_ns()
        let offset = Double(CMirrorSys_realtime_ns()) - Double(now)
        var out = [String: BoundedState]()
        for (name, b) in bounded {
            let u = (try? program.usage(slot: b.slot)) ?? (packets: 0, bytes: 0, ended: 0)
            let limits = b.config.bounds
            var st: SessionState = .active
            if u.ended & UInt32(TM_END_MAX_PACKETS.rawValue) != 0 || limits?.maxPackets.map({ u.packets >= $0 }) == true {
                st = .ended(.maxPackets)
            } else if u.ended & UInt32(TM_END_MAX_BYTES.rawValue) != 0 || limits?.maxBytes.map({ u.bytes >= $0 }) == true {
                st = .ended(.maxBytes)
            } else if now >= b.stopNanoseconds {
                st = .ended(b.stopReason ?? .duration)
            } else if now < b.startNanoseconds {
                st = .pending
            }
            out[name] = BoundedState(state: st, packets: u.packets, bytes: u.bytes,
                                     stopTime: b.stopNanoseconds == .max ? nil : (Double(b.stopNanoseconds) + offset) / 1e9)
        }
        return out
    }

    public struct BoundedState: Sendable, Equatable {
        public var state: SessionState
        /// What the session selected so far.
        public var packets: UInt64
        public var bytes: UInt64
        /// When its window closes, seconds since the epoch.
        public var stopTime: Double?
    }

    /// What happens to the interfaces a configuration names.
    public enum InterfaceEvent: String, Sendable, CaseIterable {
        /// An interface got its hooks.
        case attached
        /// An interface lost its hooks (it went away or left the plan).
        case detached
        /// A pattern or name began to match no interface.
        case waiting
        /// A change of interfaces could not be put in force.
        case failed
    }

    /// At most this many detached interface names keep counters of their
    /// own; later ones add to `retiredOverflowName` (pods come and go).
    static let retiredNamesLimit = 4096
    public static let retiredOverflowName = "(detached)"

    public let options: Options
    public let program: MirrorProgram
    /// The rings and the forwarding threads that drain them.
    public let forwarding: ForwardingGroups
    public let health: HealthMonitor
    /// The link-layer path toward each endpoint (AF_PACKET sends).
    public let paths: LinkPaths
    /// What the hooks know of the agent's own output.
    public let own: OwnOutput
    let logger: Logger
    /// What readers (metrics, health) see; held only briefly.
    private let state = Mutex(State())
    /// Serialises plan changes and shutdown; a reload that waits for the
    /// rings holds this, never `state`, so scrapes are answered meanwhile.
    private let changeLock = Mutex(())
    public let startedAt = CMirrorSys_realtime_ns()
    /// Follows links appearing and going; started by the first `apply`.
    private let linkMonitor = Mutex<LinkMonitor?>(nil)
    /// Follows routes and addresses toward the targets; started by the first `apply`.
    private let targetMonitor = Mutex<TargetMonitor?>(nil)

    /// Loads the program, creates the rings and starts the forwarding
    /// thread. Nothing is attached yet: see `apply`.
    public init(options: Options, logger: Logger) throws(OperationalError) {
        var options = options
        let release = KernelRelease.current()
        if options.forwarder.gso && KernelRelease.fragmentsPacketSocketGSO(release) {
            options.forwarder.gso = false
            logger.warning("this kernel sends UDP GSO messages of packet sockets as IP fragments where the device segments UDP (Linux 6.2 to 6.4.5); every copy leaves as a frame of its own, as with --no-gso",
                           metadata: ["kernel": "\(release)"])
        }
        self.options = options
        self.logger = logger
        program = try MirrorProgram(settings: options.program)
        own = OwnOutput(program: program)
        forwarding = try ForwardingGroups(program: program, ringsPerThread: options.ringsPerThread, mark: options.socketMark,
                                          own: own, settings: options.forwarder, logger: logger)
        do {
            health = try HealthMonitor(mark: options.socketMark, own: own, logger: logger)
        } catch {
            throw OperationalError("cannot open the health-probe sockets: \(error); the agent needs CAP_NET_RAW")
        }
        do {
            paths = try LinkPaths(mark: options.socketMark, logger: logger)
        } catch {
            throw OperationalError("cannot start the path monitor: \(error)")
        }
        logger.info("BPF program loaded", metadata: [
            "rings": "\(forwarding.count)", "ring_bytes": "\(forwarding.bytesPerRing)",
            "ring_memory": "\(forwarding.count * Int(forwarding.bytesPerRing))",
            "batch": "\(options.forwarder.batchSize)", "forwarding_threads": "\(forwarding.forwarders.count)",
            "numa_nodes": "\(forwarding.nodeCount)",
        ])
    }

    deinit {
        shutdown()
    }

    /// The configuration in force, if any.
    public var applied: Applied? { state.withLock { $0.applied } }

    /// Interfaces hooked now, with their slots.
    public var interfaces: [String: (link: Link, slot: UInt32)] { state.withLock { $0.interfaces } }

    /// Attached hooks (interface, direction, kind).
    public var hooks: [(interface: String, direction: Direction, kind: HookKind)] {
        state.withLock { $0.hooks.map { ($0.interface, $0.direction, $0.kind) } }
    }

    /// Puts `config` in force: resolves its targets, writes its plan into
    /// the bank the hooks are not reading, hands the forwarding thread the
    /// matching table, switches the hooks over with one write, then attaches
    /// and detaches hooks for interfaces the change adds or removes. On any
    /// error the previous configuration stays in force, untouched, and
    /// nothing new stays attached. Metrics and health are answered from the
    /// previous state while a change runs.
    ///
    /// Interface patterns are matched against the links there are now; a
    /// pattern or name that matches nothing waits, and the link monitor
    /// puts the configuration in force again whenever links change.
    public func apply(_ config: MirrorConfig) throws(OperationalError) {
        // Watching first: a link that appears while this change lists the
        // links is seen by the refresh that follows it.
        startLinkMonitor()
        startTargetMonitor()
        var resolved = [ResolvedTarget]()
        do throws(OperationalError) {
            resolved = try resolve(config.targets)
            try checkFamilies(resolved)
        } catch {
            noteRejectedConfig()
            throw error
        }
        try changeLock.withLock { _ throws(OperationalError) in
            do throws(OperationalError) {
                try applyLocked(config, targets: resolved, links: links(for: config))
            } catch {
                state.withLock { $0.applied_failed += 1 }
                throw error
            }
            state.withLock { $0.applied_ok += 1 }
        }
    }

    /// Matches the configuration in force against the links there are now
    /// and attaches or detaches what changed (the link monitor calls it).
    /// A failure is counted and logged; the next link event tries again.
    public func refreshInterfaces() {
        changeLock.withLock { _ in
            let (source, targets, current, stopped) = state.withLock {
                ($0.source, $0.applied?.targets, $0.interfaces.mapValues(\.link), $0.stopped)
            }
            guard let source, let targets, !stopped else { return }
            let links = links(for: source)
            let wanted = Set(source.resolvingInterfaces(in: links.keys).sessions.flatMap(\.interfaces))
            guard wanted.count != current.count || wanted.contains(where: { current[$0] != links[$0] }) else { return }
            do throws(OperationalError) {
                try applyLocked(source, targets: targets, links: links)
            } catch {
                logger.error("interface change not put in force; the next link event tries again", metadata: ["error": "\(error.message)"])
                state.withLock {
                    $0.events[.failed, default: 0] += 1
                    $0.interfaceFailure = error.message
                }
            }
        }
    }

    /// An IPv6 endpoint needs the IPv6 raw socket: without one every copy
    /// would fail, so the configuration does.
    private func checkFamilies(_ targets: [ResolvedTarget]) throws(OperationalError) {
        guard !forwarding.canSendIPv6 else { return }
        for t in targets {
            if let e = t.endpoints.first(where: { !$0.address.isIPv4 }) {
                let why = forwarding.forwarders.first?.ipv6Problem.map { "\($0)" } ?? "no IPv6 socket"
                throw TargetResolver.noIPv6("target \(t.name) endpoint \(e.endpointDescription)", because: why)
            }
        }
    }

    /// Looks at every target's path again (route, source address, path MTU,
    /// the host name's address) and puts the configuration in force again
    /// with the new paths when any changed, so copies never leave with a
    /// stale source or a limit the path no longer takes. The target
    /// monitor calls it on route, address and link events and every
    /// `resolveInterval`. A look that fails keeps the paths in force.
    public func refreshTargets() {
        changeLock.withLock { _ in
            let (source, applied, stopped) = state.withLock { ($0.source, $0.applied, $0.stopped) }
            guard let source, let applied, !stopped else { return }
            var fresh = [ResolvedTarget]()
            do throws(OperationalError) {
                fresh = try resolve(source.targets)
            } catch {
                let first = state.withLock { s in
                    s.targetResolveFailures += 1
                    defer { s.targetProblem = error.message }
                    return s.targetProblem != error.message
                }
                if first { logger.warning("a target's path is gone; copies keep the last one", metadata: ["error": "\(error.message)"]) }
                return
            }
            state.withLock { $0.targetProblem = nil }
            func paths(_ ts: [ResolvedTarget]) -> [String] {
                ts.flatMap { t in t.endpoints.map { "\(t.name) \($0.key) \($0.address) from \($0.source) via ifindex \($0.interface) mtu \($0.mtu)" } }
            }
            let before = paths(applied.targets), after = paths(fresh)
            guard before != after else { return }
            for (old, new) in zip(before, after) where old != new {
                logger.notice("a target's path changed", metadata: ["was": "\(old)", "now": "\(new)"])
            }
            do throws(OperationalError) {
                try applyLocked(source, targets: fresh, links: links(for: source))
                state.withLock { $0.targetPathChanges += 1 }
            } catch {
                state.withLock { $0.targetResolveFailures += 1 }
                logger.error("the new target paths could not be put in force; the next event tries again", metadata: ["error": "\(error.message)"])
            }
        }
    }

    /// Every target's path (TargetResolver), each endpoint's MTU lowered to
    /// what ICMP taught of its path while that holds.
    private func resolve(_ targets: [TargetConfig]) throws(OperationalError) -> [ResolvedTarget] {
        var resolved = [ResolvedTarget]()
        for t in targets { resolved.append(try TargetResolver.resolve(t, mark: options.socketMark)) }
        let now = CMirrorSys_monotonic_ns()
        let learned = state.withLock { s in
            s.learnedMTU = s.learnedMTU.filter { $0.value.expires > now }
            return s.learnedMTU
        }
        for i in resolved.indices {
            for j in resolved[i].endpoints.indices {
                let e = resolved[i].endpoints[j]
                if let l = learned[e.address], l.mtu < e.mtu, e.header.innerLimit(mtu: l.mtu) >= 14 {
                    resolved[i].endpoints[j].mtu = l.mtu
                }
            }
        }
        return resolved
    }

    /// An ICMP error quoting a datagram to an endpoint: counted, and logged
    /// at most once a minute per endpoint (a target that is not there, or
    /// nothing listening on its port). A "fragmentation needed" or "packet
    /// too big" below the endpoint's MTU lowers it at once, for
    /// `learnedMTUSeconds`: copies are cut to fit the path (DF is set on
    /// every copy, and the kernel learns nothing for a socket that sent
    /// none of them).
    func noteUnreachable(_ u: TargetMonitor.Unreachable) {
        let now = CMirrorSys_monotonic_ns()
        // The kernel's floors (net.ipv4.route.min_pmtu, IPv6's minimum link
        // MTU): a forged ICMP error cannot cut copies shorter than that.
        let minimum = u.address.isIPv4 ? 552 : 1280
        let (logged, lowered): ((String, String)?, Int?) = state.withLock { s in
            guard let targets = s.applied?.targets else { return (nil, nil) }
            for t in targets {
                for e in t.endpoints where e.address == u.address && (u.port == 0 ? t.encapsulation.isERSPAN : e.port == u.port) {
                    let key = "\(t.name)/\(e.key)"
                    s.icmpErrors[key, default: 0] += 1
                    var lowered: Int?
                    if u.mtu >= minimum && u.mtu < e.mtu && u.mtu < s.learnedMTU[u.address]?.mtu ?? .max {
                        s.learnedMTU[u.address] = (u.mtu, now + Self.learnedMTUSeconds * 1_000_000_000)
                        lowered = u.mtu
                    }
                    if now - (s.icmpLogged[key] ?? 0) < 60_000_000_000 && s.icmpLogged[key] != nil { return (nil, lowered) }
                    s.icmpLogged[key] = now
                    return ((t.name, e.endpointDescription), lowered)
                }
            }
            return (nil, nil)
        }
        if let (target, endpoint) = logged {
            let what = u.address.isIPv4
                ? (u.type == 3 ? (u.code == 3 ? "port unreachable: nothing listens there" : u.code == 1 ? "host unreachable"
                                  : u.code == 4 ? "fragmentation needed, MTU \(u.mtu)" : "destination unreachable, code \(u.code)") : "time exceeded")
                : (u.type == 1 ? (u.code == 4 ? "port unreachable: nothing listens there" : "destination unreachable, code \(u.code)")
                   : u.type == 2 ? "packet too big, MTU \(u.mtu)" : "ICMPv6 error type \(u.type)")
            logger.warning(u.mtu > 0 ? "the path to an endpoint answers copies with ICMP errors" : "an endpoint answers copies with ICMP errors", metadata: [
                "target": "\(target)", "endpoint": "\(endpoint)", "error": "\(what)",
            ])
        }
        if let lowered {
            logger.notice("ICMP lowered a target's path MTU; copies are cut to fit it", metadata: [
                "address": "\(u.address)", "mtu": "\(lowered)", "for": "\(Self.learnedMTUSeconds) s",
            ])
            refreshTargets()
        }
    }

    private func startTargetMonitor() {
        targetMonitor.withLock { m in
            guard m == nil else { return }
            do {
                let monitor = try TargetMonitor(resolveInterval: options.resolveInterval,
                                                changed: { [weak self] _ in self?.refreshTargets() },
                                                unreachable: { [weak self] u in self?.noteUnreachable(u) })
                if !monitor.missingICMPFamilies.isEmpty {
                    logger.warning("cannot open a raw ICMP socket: ICMP errors about copies (a dead target, a smaller path MTU) go unseen",
                                   metadata: ["families": "\(monitor.missingICMPFamilies.joined(separator: ", "))"])
                }
                m = monitor
            } catch {
                logger.error("cannot watch routes and addresses: target paths are looked at only on reload", metadata: ["error": "\(error)"])
            }
        }
    }

    private func startLinkMonitor() {
        linkMonitor.withLock { m in
            guard m == nil else { return }
            do {
                m = try LinkMonitor { [weak self] in self?.refreshInterfaces() }
            } catch {
                logger.error("cannot watch links: interfaces that appear later are not attached", metadata: ["error": "\(error)"])
            }
        }
    }

    /// The links of every namespace that `source` names (by source name),
    /// watched from now on. A namespace that cannot be entered has none:
    /// its sources wait, and the monitor tries it again.
    private func links(for source: MirrorConfig) -> [String: Link] {
        linkMonitor.withLock { $0?.watch(source.namespaces) }
        let (out, failures) = source.links()
        let changed = state.withLock { s in
            defer { s.namespaceFailures = failures }
            return s.namespaceFailures != failures
        }
        for (ns, why) in failures.sorted(by: { $0.key < $1.key }) where changed {
            logger.warning("network namespace cannot be entered; its interfaces wait", metadata: ["netns": "\(ns)", "error": "\(why)"])
        }
        return out
    }

    /// Puts `source` in force with its patterns matched against `links`.
    /// The caller holds `changeLock`.
    private func applyLocked(_ source: MirrorConfig, targets: [ResolvedTarget], links: [String: Link]) throws(OperationalError) {
        let config = source.resolvingInterfaces(in: links.keys)
        let plan = MirrorPlan(compiling: config)
        if let problem = plan.kernelLimitProblem { throw OperationalError("\(problem.path): \(problem.message)") }
        var ifindexes = [String: Link]()
        for name in plan.interfaces { ifindexes[name] = links[name] }
        // Work on a copy; readers see the old state until it is in force.
        var s = state.withLock { $0 }
        guard !s.stopped else { throw OperationalError("the agent is shutting down") }
        var change = PlanChange()
        do throws(OperationalError) {
            try apply(config, plan: plan, targets: targets, ifindexes: ifindexes, state: &s, change: &change)
        } catch {
            change.rollBack()
            throw error
        }
        let matched = source.matches(in: links.keys)
        let matches = source.interfacePatterns.map { ($0, matched[$0]?.count ?? 0) }
        let waitedBefore = Set(s.patternMatches.filter { $0.count == 0 }.map(\.pattern))
        for (p, n) in matches where n == 0 && !waitedBefore.contains(p) {
            logger.info("waiting for an interface to match", metadata: ["interface": "\(p)"])
            s.events[.waiting, default: 0] += 1
        }
        s.patternMatches = matches
        s.source = source
        s.interfaceFailure = nil
        s.lastAppliedNanoseconds = CMirrorSys_realtime_ns()
        state.withLock { $0 = s }
        change.commit()
    }

    /// Counts a configuration that was refused before reaching the agent
    /// (an invalid file on reload).
    public func noteRejectedConfig() {
        state.withLock { $0.applied_failed += 1 }
    }

    /// One plan change: the kernel-side steps it took, undone in reverse if
    /// a later step fails (the agent's own state is a copy, dropped then),
    /// and the hooks it attached, which stay only if it commits.
    struct PlanChange {
        private var undo: [() -> Void] = []
        var attached: [Hook] = []

        mutating func onFailure(_ step: @escaping () -> Void) { undo.append(step) }

        mutating func rollBack() {
            attached.removeAll() // detaches
            for step in undo.reversed() { step() }
            undo.removeAll()
        }

        mutating func commit() { undo.removeAll() }
    }

    private func apply(
        _ config: MirrorConfig, plan: MirrorPlan, targets: [ResolvedTarget], ifindexes: [String: Link],
        state s: inout State, change: inout PlanChange
    ) throws(OperationalError) {
        let program = program
        // Slots for new interfaces (old ones keep theirs and their counters;
        // one recreated under its name gets a new slot, the old slot's
        // counters are added to the name's once its hooks are gone).
        var slots = s.interfaces.mapValues(\.slot)
        var free = s.freeSlots
        for (name, link) in ifindexes.sorted(by: { $0.key < $1.key }) where s.interfaces[name]?.link != link {
            guard let slot = free.popLast() else {
                throw OperationalError("\(name) would be interface \(ifindexes.count) of a plan; the kernel holds \(PlanLimits.interfaces): narrow the patterns or namespaces the sessions name")
            }
            slots[name] = slot
            let (netns, idx) = (link.netns, UInt32(link.ifindex))
            do {
                try program.resetInterfaceCounters(slot: slot)
                try program.setSlot(netns: netns, ifindex: idx, slot: slot)
            } catch {
                program.removeSlot(netns: netns, ifindex: idx)
                throw OperationalError("cannot register interface \(name): \(error)")
            }
            change.onFailure { program.removeSlot(netns: netns, ifindex: idx) }
        }

        // Sessions as the kernel needs them. A bounded session keeps its
        // usage and start while it is unchanged; a new or changed one starts
        // from nothing.
        var kernelSessions = [KernelSession]()
        var bounded = [String: BoundedSession]()
        for session in plan.sessions {
            let t = targets[session.target]
            let c = config.sessions.first { $0.name == session.name }
            var limit = UInt32(0)
            if let l = session.packetLength { limit = UInt32(l) }
            var k = KernelSession(
                lengthLimit: limit, mtuLimit: UInt32(t.innerLimit),
                sampleEvery: UInt32(c?.sample ?? 1),
                rate: c?.rateLimit?.perSecond ?? 0, burst: c?.rateLimit?.burst ?? 0,
                rateBits: c?.rateLimit?.unit == .bits,
                tunnelHeader: t.tunnel.ringHeader(vni: session.vni))
            if let slice = c?.slice {
                k.sliceAfter = UInt16(slice.after == .l3 ? TM_SLICE_L3.rawValue : TM_SLICE_L4.rawValue)
                k.sliceBytes = UInt16(slice.bytes)
                k.lengthLimit = UInt32(slice.fallback)
            }
            if let w = c?.deduplicate { k.dedupWindowNanoseconds = UInt64(w * 1e9) }
            if let c, let b = c.bounds {
                var entry: BoundedSession
                if let old = s.bounded[c.name], old.config == c {
                    entry = old
                } else {
                    let used = Set(s.bounded.values.map(\.slot)).union(bounded.values.map(\.slot))
                    guard let slot = (0..<UInt32(TM_MAX_USAGE)).first(where: { !used.contains($0) }) else {
                        throw OperationalError("no room for the usage of bounded session \(c.name)")
                    }
                    do {
                        try program.resetUsage(slot: slot)
                    } catch {
                        throw OperationalError("cannot start bounded session \(c.name): \(error)")
                    }
                    entry = Self.window(c, b, slot: slot)
                }
                bounded[c.name] = entry
                k.bounded = true
                k.usageSlot = entry.slot
                k.startNanoseconds = entry.startNanoseconds
                k.stopNanoseconds = entry.stopNanoseconds
                k.maxPackets = b.maxPackets ?? 0
                k.maxBytes = b.maxBytes ?? 0
            }
            kernelSessions.append(k)
        }

        let previous = s.applied
        let bank = previous.map { 1 - $0.bank } ?? 0
        // Records written under the bank about to be rewritten must all be
        // sent first, or they would be read with the new plan's sessions.
        if let barrier = s.retiredBankBarrier {
            guard waitReleased(barrier, seconds: 5) else {
                throw OperationalError("the previous plan's copies are still being sent (the target is slow); try the reload again")
            }
            s.retiredBankBarrier = nil
        }
        do {
            try program.install(plan: plan, sessions: kernelSessions, slots: slots, bank: bank)
        } catch {
            throw OperationalError("cannot write the plan into the kernel maps: \(error)")
        }
        // The new targets are recognised as own output before any copy goes
        // to them; the old ones stay until the switch.
        do {
            try own.setTargets(targets + (previous?.targets ?? []))
        } catch {
            throw OperationalError("cannot register the targets as the agent's own output: \(error)")
        }
        let own = own
        change.onFailure { try? own.setTargets(previous?.targets ?? []) }
        let healthSlots = health.configure(targets)
        let health = health
        change.onFailure { _ = health.configure(previous?.targets ?? []) }
        // Paths of old and new endpoints until the switch: copies of the old
        // plan may still be in the rings.
        let pathSlots = paths.configure(targets + (previous?.targets ?? []))
        let paths = paths
        change.onFailure { _ = paths.configure(previous?.targets ?? []) }
        forwarding.install(
            ForwardingTable(targets: targets, sessionNames: plan.sessions.map(\.name),
                            sessionTargets: plan.sessions.map(\.target), packetLengths: plan.sessions.map(\.packetLength),
                            sampleEvery: kernelSessions.map { Int($0.sampleEvery) },
                            tunnelIDs: plan.sessions.map { ($0.vni, $0.erspanSessionID) },
                            configs: plan.sessions.map { p in config.sessions.first { $0.name == p.name } },
                            counters: forwarding.counters, health: health.flags, healthSlots: healthSlots,
                            paths: paths, pathSlots: pathSlots),
            bank: bank)

        // Attach what is missing before switching, so a failed attach leaves
        // the old plan in force. Filters a crashed run left are looked for
        // once per interface, before anything of ours is attached to it.
        let hooked = plan.hookedDirections
        struct Hooked: Hashable { var interface: String, ifindex: Int32, direction: Direction? }
        var present = Set<Hooked>()
        for h in s.hooks {
            present.insert(Hooked(interface: h.interface, ifindex: h.ifindex, direction: h.direction))
            present.insert(Hooked(interface: h.interface, ifindex: h.ifindex, direction: nil))
        }
        for name in plan.interfaces {
            let idx = ifindexes[name]!.ifindex
            let missing = (hooked[name] ?? []).filter { !present.contains(Hooked(interface: name, ifindex: idx, direction: $0)) }
            if !missing.isEmpty && !present.contains(Hooked(interface: name, ifindex: idx, direction: nil)) {
                let stale = Hook.removeStaleFilters(interface: name, ifindex: idx)
                for f in stale.removed {
                    logger.warning("removed a tc filter left by an earlier traffic-mirror run", metadata: ["filter": "\(f)"])
                }
                for f in stale.othersRunning {
                    logger.warning("another running traffic-mirror holds a tc filter here; left alone", metadata: ["filter": "\(f)"])
                }
            }
            for d in missing {
                change.attached.append(try Hook.attach(program: program, interface: name, ifindex: idx, direction: d, policy: options.hooks))
            }
        }

        do {
            try program.activate(bank: bank)
        } catch {
            throw OperationalError("cannot switch to the new plan: \(error)")
        }
        for h in change.attached {
            logger.info("attached", metadata: ["interface": "\(h.interface)", "direction": "\(h.direction.rawValue)", "hook": "\(h.kind.rawValue)"])
        }
        s.events[.attached, default: 0] += Set(change.attached.map(\.ifindex)).count
        s.hooks += change.attached
        change.attached = []
        s.freeSlots = free

        // Past the switch nothing fails: detach hooks the new plan no longer
        // needs, and forget their slots.
        func kept(_ h: Hook) -> Bool {
            hooked[h.interface]?.contains(h.direction) == true && ifindexes[h.interface]?.ifindex == h.ifindex
        }
        for h in s.hooks where !kept(h) {
            h.detach()
            logger.info("detached", metadata: ["interface": "\(h.interface)", "direction": "\(h.direction.rawValue)"])
        }
        s.hooks = s.hooks.filter(kept)
        var gone = [(name: String, slot: UInt32)]()
        for (name, old) in s.interfaces where ifindexes[name] != old.link {
            program.removeSlot(netns: old.link.netns, ifindex: UInt32(old.link.ifindex))
            gone.append((name, old.slot))
            s.interfaces[name] = nil
        }
        s.events[.detached, default: 0] += gone.count
        for (name, idx) in ifindexes { s.interfaces[name] = (idx, slots[name]!) }
        s.applied = Applied(config: config, plan: plan, targets: targets, bank: bank)
        s.bounded = bounded
        // Hooks that started before the switch may still be writing records
        // of the old bank; wait for them so its counters are final and its
        // records are all in the rings.
        try? program.waitForRunningHooks(ring0: forwarding.firstRingFD, cpu: forwarding.firstRingCPU)
        for g in gone {
            let key = s.retiredInterfaces[g.name] != nil || s.retiredInterfaces.count < Self.retiredNamesLimit
                ? g.name : Self.retiredOverflowName
            for d in Direction.allCases {
                guard let c = try? program.interfaceCounters(slot: g.slot, direction: d) else { continue }
                let old = s.retiredInterfaces[key]?[d] ?? [UInt64](repeating: 0, count: c.count)
                s.retiredInterfaces[key, default: [:]][d] = zip(old, c).map { $0 &+ $1 }
            }
            s.freeSlots.append(g.slot)
        }
        if let previous {
            for (i, session) in previous.plan.sessions.enumerated() {
                for d in Direction.allCases {
                    guard let c = try? program.sessionCounters(bank: previous.bank, session: i, direction: d) else { continue }
                    let old = s.retired[session.name]?[d] ?? [UInt64](repeating: 0, count: c.count)
                    s.retired[session.name, default: [:]][d] = zip(old, c).map { $0 &+ $1 }
                }
            }
            let barrier = forwarding.producerPositions()
            if !waitReleased(barrier, seconds: 2) { s.retiredBankBarrier = barrier }
        }
        // Copies to targets that are gone may still be in the rings; they
        // leave by the agent's sockets, which the hooks know regardless.
        try? self.own.setTargets(targets)
    }

    private func waitReleased(_ positions: [UInt64], seconds: Int) -> Bool {
        for _ in 0..<(seconds * 500) {
            if forwarding.released(upTo: positions) { return true }
            forwarding.wake()
            usleep(2000)
        }
        return forwarding.released(upTo: positions)
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
        /// The CPU of each ring.
        public var ringCPUs: [Int]
        public var ringBytes: UInt32
        /// Sockets registered as the agent's own (OwnOutput).
        public var ownSockets: Int
        public var configsApplied: Int
        public var configsFailed: Int
        public var lastAppliedNanoseconds: UInt64
        /// Each configured pattern or name and how many interfaces it matches.
        public var patternMatches: [(pattern: String, count: Int)]
        /// Patterns and names that match nothing now.
        public var waiting: [String] { patternMatches.filter { $0.count == 0 }.map(\.pattern) }
        public var interfaceEvents: [InterfaceEvent: Int]
        /// Why the last change of interfaces failed, if it did.
        public var interfaceFailure: String?
        /// Namespaces that sources name but that cannot be entered, and why
        /// (their sources wait).
        public var namespaceFailures: [String: String]
        /// Bounded sessions, by name.
        public var sessionStates: [String: BoundedState]
        /// Target paths put in force again because they changed; looks
        /// that failed; why the last one failed, until one succeeds.
        public var targetPathChanges: Int
        public var targetResolveFailures: Int
        public var targetProblem: String?
        /// ICMP errors about copies, by "target/endpoint key".
        public var endpointICMPErrors: [String: UInt64]
        /// The data plane runs: a plan is in force and the thread drains.
        public var running: Bool
    }

    public func snapshot() -> Snapshot {
        let sessions = sessionCounters()
        let forwarderSnapshot = forwarding.counters.snapshot()
        let bounded = sessionStates()
        return state.withLock { s in
            var counts = s.retiredInterfaces
            for (name, i) in s.interfaces {
                for d in Direction.allCases {
                    guard let c = try? program.interfaceCounters(slot: i.slot, direction: d) else { continue }
                    let old = counts[name]?[d] ?? [UInt64](repeating: 0, count: c.count)
                    counts[name, default: [:]][d] = zip(old, c).map { $0 &+ $1 }
                }
            }
            var interfaces = [Snapshot.InterfaceCounters]()
            for (name, byDirection) in counts.sorted(by: { $0.key < $1.key }) {
                for d in Direction.allCases {
                    if let c = byDirection[d] { interfaces.append(.init(interface: name, direction: d, counts: c)) }
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
                ringBacklogBytes: forwarding.backlog(), ringCPUs: forwarding.cpus, ringBytes: forwarding.bytesPerRing, ownSockets: own.socketCount,
                configsApplied: s.applied_ok, configsFailed: s.applied_failed,
                lastAppliedNanoseconds: s.lastAppliedNanoseconds,
                patternMatches: s.patternMatches,
                interfaceEvents: Dictionary(uniqueKeysWithValues: InterfaceEvent.allCases.map { ($0, s.events[$0] ?? 0) }),
                interfaceFailure: s.interfaceFailure,
                namespaceFailures: s.namespaceFailures,
                sessionStates: bounded,
                targetPathChanges: s.targetPathChanges, targetResolveFailures: s.targetResolveFailures,
                targetProblem: s.targetProblem, endpointICMPErrors: s.icmpErrors,
                running: !s.stopped && s.applied != nil && forwarding.isRunning)
        }
    }

    /// Detaches every hook, waits for hooks still running, lets the
    /// forwarding thread send what the rings hold, and stops it. Idempotent.
    public func shutdown() {
        // Outside the change lock: the monitor may be waiting for it.
        let monitor = linkMonitor.withLock { m in defer { m = nil }; return m }
        monitor?.stop()
        targetMonitor.withLock { m in defer { m = nil }; return m }?.stop()
        changeLock.withLock { _ in shutdownLocked() }
    }

    private func shutdownLocked() {
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
        try? program.waitForRunningHooks(ring0: forwarding.firstRingFD, cpu: forwarding.firstRingCPU)
        forwarding.stop()
        health.stop()
        paths.stop()
        state.withLock { s in
            for (_, i) in s.interfaces { program.removeSlot(netns: i.link.netns, ifindex: UInt32(i.link.ifindex)) }
        }
        // A node with hundreds of pods: the count, and the names while few.
        if !names.isEmpty {
            logger.info("detached", metadata: names.count <= 16 ? ["hooks": "\(names.joined(separator: ", "))"] : ["hooks": "\(names.count)"])
        }
    }
}

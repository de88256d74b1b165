import CMirrorSys
import Logging
import MirrorCore

/// The forwarding threads: the CPUs' rings cut into groups of at most
/// `ringsPerThread` CPUs (of one NUMA node, when there is more than one
/// group: RingSizing.groups), each group with its own RingSet (its memory
/// on that node), its own Forwarder (sockets, emitter, batch) and its own
/// thread, which runs on that node's CPUs where the agent may. One thread merges its group's rings by
/// timestamp, so the merge's cost per record is bounded by the group size
/// however many CPUs the host has, and the groups forward side by side.
/// The copies of a connection keep their order when its packets are hooked
/// on CPUs of one group (every CPU, with one group: the default on hosts of
/// up to 16 CPUs); across groups they may not.
/// The counters are shared (atomic adds once there are two threads).
public final class ForwardingGroups: @unchecked Sendable {
    // @unchecked: everything is set once in init; each part is thread-safe
    // or used by its own thread.

    public let rings: [RingSet]
    public let forwarders: [Forwarder]
    public let counters: ForwarderCounters
    /// NUMA nodes of the rings' CPUs (0 where the host shows none).
    public let nodeCount: Int
    private let threads: [DedicatedThread]

    public init(program: MirrorProgram, ringsPerThread: Int, mark: UInt32, own: OwnOutput,
                settings: Forwarder.Settings, logger: Logger) throws(OperationalError) {
        let cpus = MirrorProgram.onlineCPUs().filter { $0 < program.cpuCount }
        let nodes = MirrorProgram.numaNodes()
        let groups = RingSizing.groups(cpus: cpus, nodes: nodes, perThread: ringsPerThread)
        let online = Set(cpus)
        nodeCount = nodes.filter { !online.isDisjoint(with: $0.cpus) }.count
        do {
            rings = try groups.map { g throws(SystemError) in try RingSet(program: program, cpus: g.cpus, node: g.node) }
        } catch {
            throw OperationalError("cannot create the ring buffers: \(error); raise the memlock limit or lower --ring-size")
        }
        counters = ForwarderCounters(shared: groups.count > 1)
        let counters = counters
        do {
            forwarders = try rings.map { r throws(SystemError) in
                try Forwarder(rings: r, counters: counters, mark: mark, own: own, settings: settings, logger: logger)
            }
        } catch {
            throw OperationalError("cannot open the sending sockets: \(error); the agent needs CAP_NET_RAW")
        }
        threads = forwarders.map { _ in DedicatedThread() }
        // With more than one node, a group's thread keeps to its node's CPUs
        // (those the agent may use; all of them where it may use none); a
        // group of several nodes' CPUs has no node and stays as it is.
        let homes: [[Int32]] = groups.map { g in
            nodeCount > 1 ? (nodes.first { $0.id == g.node }?.cpus ?? []).map { Int32($0) } : []
        }
        for (i, (t, f)) in zip(threads, forwarders).enumerated() {
            let name = forwarders.count == 1 ? "tm-forward" : "tm-forward-\(i)"
            let home = homes[i]
            do {
                try t.start {
                    if !home.isEmpty { _ = home.withUnsafeBufferPointer { CMirrorSys_narrow_thread($0.baseAddress, Int32($0.count)) } }
                    f.run(name: name)
                }
            } catch {
                for (s, g) in zip(threads[..<i], forwarders[..<i]) { g.stop(); s.join() }
                throw OperationalError("cannot start the forwarding thread: \(error)")
            }
        }
    }

    /// Every ring's CPU, in group order.
    public var cpus: [Int] { rings.flatMap(\.cpus) }
    public var count: Int { rings.reduce(0) { $0 + $1.count } }
    public var bytesPerRing: UInt32 { rings[0].bytesPerRing }
    /// The first ring and its CPU (for the RCU barrier of `MirrorProgram`).
    public var firstRingFD: Int32 { rings[0].firstRingFD }
    public var firstRingCPU: UInt32 { rings[0].firstRingCPU }
    public var isRunning: Bool { forwarders.allSatisfy(\.isRunning) }
    /// Whether the host let the forwarders open an IPv6 raw socket.
    public var canSendIPv6: Bool { forwarders.allSatisfy(\.canSendIPv6) }

    /// Hands every thread the table for records of `bank`; returns once all
    /// use it.
    public func install(_ table: ForwardingTable, bank: Int) {
        for f in forwarders { f.install(table, bank: bank) }
    }

    /// Drains every ring and joins the threads (detach the hooks first).
    public func stop() {
        for f in forwarders { f.stop() }
        for t in threads { t.join() }
    }

    public func producerPositions() -> [UInt64] { rings.flatMap { $0.producerPositions() } }

    public func released(upTo positions: [UInt64]) -> Bool {
        var at = 0
        for r in rings {
            guard r.released(upTo: Array(positions[at..<(at + r.count)])) else { return false }
            at += r.count
        }
        return true
    }

    public func wake() { for r in rings { r.wake() } }
    public func backlog() -> [UInt64] { rings.flatMap { $0.backlog() } }
    /// Allocates nothing, in a debug build too (an index loop: iterating
    /// the array itself, or `contains`, does there).
    public var hasPending: Bool {
        for i in 0..<rings.count where rings[i].hasPending { return true }
        return false
    }
}

import CMirrorSys
import Synchronization

/// Why user space did not send a selected packet (the kernel's reasons are
/// in `enum tm_session_outcome`).
public enum UserDropReason: Int, CaseIterable, Sendable {
    /// The network stack refused the packet (no route, message too long...).
    case sendFailed
    /// The socket stayed full (EAGAIN/ENOBUFS) past the back-pressure budget.
    case backpressure
    /// The record names a plan bank the agent does not hold (a record
    /// written while a reload raced); counted rather than sent wrong.
    case noPlan
    /// A GSO super-packet whose headers were too long to rewrite: one
    /// truncated copy went, the other segments count here.
    case gsoUnsegmented
    /// Every endpoint of the target was down.
    case noEndpoint

    /// The label of `traffic_mirror_dropped_packets_total{reason=...}`;
    /// gso_unsegmented is shared with the kernel's reason of that name.
    public var label: String {
        switch self {
        case .sendFailed: "send_failed"
        case .backpressure: "backpressure"
        case .noPlan: "no_plan"
        case .gsoUnsegmented: "gso_unsegmented"
        case .noEndpoint: "no_endpoint"
        }
    }
}

/// Why user space shortened a copy (GSO segments get their limits here).
public enum UserTruncation: Int, CaseIterable, Sendable {
    case packetLength, mtu

    public var label: String { self == .packetLength ? "packet_length" : "mtu" }
}

/// Counters the forwarding thread writes and the metrics endpoint reads.
///
/// Storage is allocated once: one slot per (session, target) pair and per
/// session, named through registries that only grow (a session keeps its
/// counters across reloads, by name). Each slot has a single writer, the
/// forwarding thread, so plain relaxed stores suffice; readers see whole
/// 64-bit values. One more slot of each kind, past the named ones, holds
/// what cannot be attributed (a registry full after many reloads, a record
/// of no plan): it is exported as unattributed, never credited to another
/// session.
public final class ForwarderCounters: @unchecked Sendable {
    // @unchecked: the raw storage follows the single-writer rule above; the
    // registries are behind a Mutex.

    public static let maxPairs = 4096
    public static let maxSessions = 1024
    public static let maxEndpoints = 1024
    /// The slots of what cannot be attributed.
    public static let unattributedPair = maxPairs
    public static let unattributedSession = maxSessions
    public static let unattributedEndpoint = maxEndpoints

    let sentPackets: UnsafeMutablePointer<UInt64>
    let sentBytes: UnsafeMutablePointer<UInt64>
    let drops: UnsafeMutablePointer<UInt64>
    let truncations: UnsafeMutablePointer<UInt64>
    /// Per endpoint: datagrams sent, bytes sent, send errors, pacing
    /// waits and the nanoseconds spent in them.
    let endpointCounts: UnsafeMutablePointer<UInt64>
    static let endpointFields = 5
    /// Per endpoint: when its pacing schedule is next free (monotonic ns),
    /// shared by the forwarding threads and kept across reloads.
    let pacingSchedule: UnsafeMutablePointer<UInt64>
    let batches: UnsafeMutablePointer<UInt64>
    let backpressureWaits: UnsafeMutablePointer<UInt64>
    /// Nanoseconds spent in those waits.
    let backpressureNanoseconds: UnsafeMutablePointer<UInt64>
    let gsoFallbacks: UnsafeMutablePointer<UInt64>
    /// The next GRE sequence number per (session, target endpoint); one
    /// more slot, past the named ones, for what does not fit.
    let sequences: UnsafeMutablePointer<UInt32>
    public static let maxSequences = 4096

    private struct Registry {
        var pairs: [Pair: Int] = [:]
        var sessions: [String: Int] = [:]
        var endpoints: [Endpoint: Int] = [:]
        var sequences: [SequenceKey: Int] = [:]
    }

    struct SequenceKey: Hashable {
        var session: String
        var endpoint: Endpoint
    }

    public struct Endpoint: Hashable, Sendable {
        public var target: String
        public var endpoint: String

        public init(target: String, endpoint: String) {
            self.target = target
            self.endpoint = endpoint
        }
    }

    public struct Pair: Hashable, Sendable {
        public var session: String
        public var target: String
    }

    private let registry = Mutex(Registry())

    /// Added to by more than one forwarding thread (atomic adds), or by one
    /// (plain stores of the sum: cheaper, and still read safely).
    let shared: Bool

    @inline(__always)
    private func bump(_ p: UnsafeMutablePointer<UInt64>, _ v: UInt64) {
        if shared { CMirrorSys_add_shared_u64(p, v) } else { CMirrorSys_add_relaxed_u64(p, v) }
    }

    public init(shared: Bool = false) {
        self.shared = shared
        sentPackets = .allocate(capacity: Self.maxPairs + 1)
        sentPackets.initialize(repeating: 0, count: Self.maxPairs + 1)
        sentBytes = .allocate(capacity: Self.maxPairs + 1)
        sentBytes.initialize(repeating: 0, count: Self.maxPairs + 1)
        let n = (Self.maxSessions + 1) * UserDropReason.allCases.count
        drops = .allocate(capacity: n)
        drops.initialize(repeating: 0, count: n)
        let t = (Self.maxSessions + 1) * UserTruncation.allCases.count
        truncations = .allocate(capacity: t)
        truncations.initialize(repeating: 0, count: t)
        endpointCounts = .allocate(capacity: Self.endpointFields * (Self.maxEndpoints + 1))
        endpointCounts.initialize(repeating: 0, count: Self.endpointFields * (Self.maxEndpoints + 1))
        pacingSchedule = .allocate(capacity: Self.maxEndpoints + 1)
        pacingSchedule.initialize(repeating: 0, count: Self.maxEndpoints + 1)
        batches = .allocate(capacity: 1)
        batches.initialize(to: 0)
        backpressureWaits = .allocate(capacity: 1)
        backpressureWaits.initialize(to: 0)
        backpressureNanoseconds = .allocate(capacity: 1)
        backpressureNanoseconds.initialize(to: 0)
        gsoFallbacks = .allocate(capacity: 1)
        gsoFallbacks.initialize(to: 0)
        sequences = .allocate(capacity: Self.maxSequences + 1)
        sequences.initialize(repeating: 0, count: Self.maxSequences + 1)
    }

    deinit {
        sentPackets.deallocate()
        sentBytes.deallocate()
        drops.deallocate()
        truncations.deallocate()
        endpointCounts.deallocate()
        pacingSchedule.deallocate()
        batches.deallocate()
        backpressureWaits.deallocate()
        backpressureNanoseconds.deallocate()
        gsoFallbacks.deallocate()
        sequences.deallocate()
    }

    /// The slot of a (session, target) pair, created on first use; the
    /// unattributed slot when the table is full.
    public func pairSlot(session: String, target: String) -> Int {
        registry.withLock { Self.slot(Pair(session: session, target: target), in: &$0.pairs, max: Self.maxPairs) }
    }

    public func endpointSlot(target: String, endpoint: String) -> Int {
        registry.withLock { Self.slot(Endpoint(target: target, endpoint: endpoint), in: &$0.endpoints, max: Self.maxEndpoints) }
    }

    /// The GRE sequence slot of a session toward one endpoint of its target.
    public func sequenceSlot(session: String, target: String, endpoint: String) -> Int {
        registry.withLock {
            Self.slot(SequenceKey(session: session, endpoint: Endpoint(target: target, endpoint: endpoint)), in: &$0.sequences,
                      max: Self.maxSequences)
        }
    }

    public func sessionSlot(_ name: String) -> Int {
        registry.withLock { Self.slot(name, in: &$0.sessions, max: Self.maxSessions) }
    }

    /// `key`'s slot, created on first use; `max` (the unattributed slot)
    /// when all `max` are taken.
    private static func slot<K: Hashable>(_ key: K, in table: inout [K: Int], max: Int) -> Int {
        if let s = table[key] { return s }
        guard table.count < max else { return max }
        table[key] = table.count
        return table.count - 1
    }

    // MARK: forwarding thread

    /// A mirrored packet went (at least one copy).
    @inline(__always)
    func addSentPacket(pair: Int) {
        bump(sentPackets + pair, 1)
    }

    /// One copy went to one endpoint.
    @inline(__always)
    func addSentBytes(pair: Int, endpoint: Int, bytes: Int) {
        bump(sentBytes + pair, UInt64(bytes))
        bump(endpointCounts + Self.endpointFields * endpoint, 1)
        bump(endpointCounts + Self.endpointFields * endpoint + 1, UInt64(bytes))
    }

    @inline(__always)
    func addEndpointError(endpoint: Int) {
        bump(endpointCounts + Self.endpointFields * endpoint + 2, 1)
    }

    /// Books `datagrams` on the endpoint's pacing schedule; returns how long
    /// to hold them (ns) so that at most `burst` lie ahead of now.
    @inline(__always)
    func pace(endpoint: Int, datagrams: Int, interval: UInt64, burst: Int, now: UInt64) -> UInt64 {
        CMirrorSys_pace(pacingSchedule + endpoint, now, UInt64(datagrams) &* interval, UInt64(burst) &* interval)
    }

    /// A run leaves at `start`: when that is later than it was booked for,
    /// the schedule moves by as much.
    @inline(__always)
    func paceLate(endpoint: Int, datagrams: Int, interval: UInt64, start: UInt64) {
        CMirrorSys_pace_floor(pacingSchedule + endpoint, start &+ UInt64(datagrams) &* interval)
    }

    @inline(__always)
    func addPacingWait(endpoint: Int, nanoseconds: UInt64) {
        bump(endpointCounts + Self.endpointFields * endpoint + 3, 1)
        bump(endpointCounts + Self.endpointFields * endpoint + 4, nanoseconds)
    }

    @inline(__always)
    func addDrop(session: Int, _ reason: UserDropReason) {
        bump(drops + session * UserDropReason.allCases.count + reason.rawValue, 1)
    }

    @inline(__always)
    func addDrops(session: Int, _ reason: UserDropReason, _ n: Int) {
        bump(drops + session * UserDropReason.allCases.count + reason.rawValue, UInt64(n))
    }

    @inline(__always)
    func addTruncation(session: Int, _ reason: UserTruncation) {
        bump(truncations + session * UserTruncation.allCases.count + reason.rawValue, 1)
    }

    @inline(__always)
    func addBatch() { bump(batches, 1) }

    @inline(__always)
    func addBackpressureWait(nanoseconds: UInt64) {
        bump(backpressureWaits, 1)
        bump(backpressureNanoseconds, nanoseconds)
    }

    /// The next GRE sequence number of `slot`: unique across forwarding
    /// threads (an atomic add when there are several).
    @inline(__always)
    func nextSequence(_ slot: Int) -> UInt32 {
        if shared { return CMirrorSys_fetch_add_shared_u32(sequences + slot, 1) }
        let v = sequences[slot]
        sequences[slot] = v &+ 1
        return v
    }

    /// A UDP GSO message the kernel refused as such went as single copies.
    @inline(__always)
    func addGSOFallback() { bump(gsoFallbacks, 1) }

    // MARK: readers

    /// Batches forwarded so far (reads one counter; allocates nothing).
    public var batchCount: UInt64 { CMirrorSys_load_relaxed_u64(batches) }

    public struct EndpointCounts: Sendable {
        public var packets: UInt64
        public var bytes: UInt64
        public var errors: UInt64
        public var pacingWaits: UInt64
        public var pacingNanoseconds: UInt64
    }

    public struct Snapshot: Sendable {
        public var sent: [Pair: (packets: UInt64, bytes: UInt64)]
        public var drops: [String: [UserDropReason: UInt64]]
        public var truncations: [String: [UserTruncation: UInt64]]
        /// Per endpoint: datagrams and bytes sent, send errors, pacing
        /// waits and their nanoseconds.
        public var endpoints: [Endpoint: EndpointCounts]
        /// What could not be attributed to a session: packets sent, and
        /// dropped by reason.
        public var unattributedSent: UInt64
        public var unattributedDrops: [UserDropReason: UInt64]
        public var batches: UInt64
        public var backpressureWaits: UInt64
        public var backpressureNanoseconds: UInt64
        public var gsoFallbacks: UInt64
    }

    public func snapshot() -> Snapshot {
        let (pairs, sessions, endpoints) = registry.withLock { ($0.pairs, $0.sessions, $0.endpoints) }
        var sent = [Pair: (UInt64, UInt64)]()
        for (p, s) in pairs {
            sent[p] = (CMirrorSys_load_relaxed_u64(sentPackets + s), CMirrorSys_load_relaxed_u64(sentBytes + s))
        }
        var d = [String: [UserDropReason: UInt64]]()
        var t = [String: [UserTruncation: UInt64]]()
        for (name, s) in sessions {
            var m = [UserDropReason: UInt64]()
            for r in UserDropReason.allCases {
                m[r] = CMirrorSys_load_relaxed_u64(drops + s * UserDropReason.allCases.count + r.rawValue)
            }
            d[name] = m
            var tm = [UserTruncation: UInt64]()
            for r in UserTruncation.allCases {
                tm[r] = CMirrorSys_load_relaxed_u64(truncations + s * UserTruncation.allCases.count + r.rawValue)
            }
            t[name] = tm
        }
        var e = [Endpoint: EndpointCounts]()
        for (key, slot) in endpoints {
            let c = endpointCounts + Self.endpointFields * slot
            e[key] = EndpointCounts(packets: CMirrorSys_load_relaxed_u64(c), bytes: CMirrorSys_load_relaxed_u64(c + 1),
                                    errors: CMirrorSys_load_relaxed_u64(c + 2), pacingWaits: CMirrorSys_load_relaxed_u64(c + 3),
                                    pacingNanoseconds: CMirrorSys_load_relaxed_u64(c + 4))
        }
        var unattributed = [UserDropReason: UInt64]()
        for r in UserDropReason.allCases {
            unattributed[r] = CMirrorSys_load_relaxed_u64(drops + Self.unattributedSession * UserDropReason.allCases.count + r.rawValue)
        }
        return Snapshot(sent: sent, drops: d, truncations: t, endpoints: e,
                        unattributedSent: CMirrorSys_load_relaxed_u64(sentPackets + Self.unattributedPair),
                        unattributedDrops: unattributed, batches: CMirrorSys_load_relaxed_u64(batches),
                        backpressureWaits: CMirrorSys_load_relaxed_u64(backpressureWaits),
                        backpressureNanoseconds: CMirrorSys_load_relaxed_u64(backpressureNanoseconds),
                        gsoFallbacks: CMirrorSys_load_relaxed_u64(gsoFallbacks))
    }
}

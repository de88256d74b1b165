import CMirrorSys
import Logging
import MirrorCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the forwarding thread needs to send the records of one plan bank,
/// flattened into trivial values in memory allocated once.
public final class ForwardingTable: @unchecked Sendable {
    // @unchecked: immutable after init.

    struct SessionInfo {
        var target: Int32
        var pair: Int32
        var slot: Int32
        /// Frame bytes a copy may keep (packet_length or the MTU), applied
        /// here to GSO segments; Int32.max for none.
        var limit: Int32
        var limitIsLength: Bool
        /// 1-in-N sampling: of a GSO record's segments, every N-th from its
        /// sampleFirst is kept (1: all).
        var sampleEvery: Int32
        var vni: UInt32
        var erspanSessionID: UInt16
        /// Where the session's GRE sequence slots start in `sequenceSlots`
        /// (one per endpoint of its target, in order), or -1.
        var sequences: Int32
        /// packet_length after a layer: GSO segments get it here.
        var slice: LayerSlice?
        var mask: Mask?
        /// Where the mask's pattern bytes are in `patterns`.
        var patternAt: Int32
    }

    struct TargetInfo {
        var replicate: Bool
        var first: Int32
        var count: Int32
        var tunnel: Tunnel
    }

    struct EndpointInfo {
        var constants: OuterHeader.Constants
        var tunnel: Tunnel
        var addressLength: socklen_t
        var ipv6: Bool
        /// Slot in the health flags, or -1: never probed, always up.
        var health: Int32
        /// Rendezvous-hashing weight seed, from the endpoint's key.
        var seed: UInt32
        /// Slot of the endpoint's counters.
        var counter: Int32
        /// Slot of the endpoint's link-layer path in `paths`, or -1.
        var path: Int32
        /// The interface the header's source was taken for (0: any).
        var interface: Int32
        /// Pacing: nanoseconds per datagram (0: unpaced) and the most
        /// datagrams back to back.
        var pacingInterval: UInt64
        var pacingBurst: Int32
    }

    public let targets: [ResolvedTarget]
    public let sessionNames: [String]
    let sessionCount: Int
    let sessions: UnsafeMutablePointer<SessionInfo>
    /// Slots in ForwarderCounters' GRE sequence numbers.
    let sequenceSlots: UnsafeMutablePointer<Int32>
    /// Mask patterns, each session's as long as its mask.
    let patterns: UnsafeMutableRawPointer
    let targetInfo: UnsafeMutablePointer<TargetInfo>
    let endpointInfo: UnsafeMutablePointer<EndpointInfo>
    let templates: UnsafeMutableRawPointer
    /// Endpoint addresses for the raw sockets (port 0) and for the UDP
    /// sockets of GSO sends (the endpoint's port).
    let addresses: UnsafeMutablePointer<sockaddr_storage>
    let udpAddresses: UnsafeMutablePointer<sockaddr_storage>
    /// Up (1) or down (0) per health slot, written by the HealthMonitor.
    let health: UnsafeMutablePointer<UInt32>
    /// The storage of LinkPaths, which keeps it current.
    let paths: UnsafeMutablePointer<UInt64>

    /// `sessionTargets[i]` is the index in `targets` of session i,
    /// `packetLengths[i]` its packet_length, `tunnelIDs[i]` its VNI and
    /// ERSPAN session ID; `healthSlots` gives each probed endpoint's slot
    /// by key.
    init(targets: [ResolvedTarget], sessionNames: [String], sessionTargets: [Int], packetLengths: [Int?],
         sampleEvery: [Int], tunnelIDs: [(vni: UInt32, erspan: UInt16)], configs: [SessionConfig?] = [], counters: ForwarderCounters,
         health: UnsafeMutablePointer<UInt32>, healthSlots: [String: Int], paths: LinkPaths, pathSlots: [String: Int]) {
        self.targets = targets
        self.sessionNames = sessionNames
        self.health = health
        self.paths = paths.slots
        sessionCount = sessionNames.count
        sessions = .allocate(capacity: max(1, sessionCount))
        var slots = [Int32]()
        let masks = (0..<sessionCount).map { i in i < configs.count ? configs[i]?.mask : nil }
        patterns = .allocate(byteCount: max(1, masks.reduce(0) { $0 + ($1?.bytes ?? 0) }), alignment: 16)
        var patternAt = 0
        for i in 0..<sessionCount {
            let t = sessionTargets[i]
            let pair = counters.pairSlot(session: sessionNames[i], target: targets[t].name)
            let slot = counters.sessionSlot(sessionNames[i])
            let mtuLimit = targets[t].innerLimit
            let length = packetLengths[i] ?? Int(Int32.max)
            // GRE sequence numbers count per (session, endpoint) and survive reloads.
            var sequences: Int32 = -1
            if targets[t].encapsulation.isERSPAN {
                sequences = Int32(slots.count)
                for ep in targets[t].endpoints {
                    slots.append(Int32(counters.sequenceSlot(session: sessionNames[i], target: targets[t].name, endpoint: ep.key)))
                }
            }
            (sessions + i).initialize(to: SessionInfo(
                target: Int32(t), pair: Int32(pair), slot: Int32(slot),
                limit: Int32(min(length, mtuLimit, Int(Int32.max))), limitIsLength: length <= mtuLimit,
                sampleEvery: Int32(max(1, sampleEvery[i])), vni: tunnelIDs[i].vni, erspanSessionID: tunnelIDs[i].erspan,
                sequences: sequences, slice: i < configs.count ? configs[i]?.slice : nil, mask: masks[i],
                patternAt: Int32(patternAt)))
            if let m = masks[i] {
                (patterns + patternAt).initializeMemory(as: UInt8.self, repeating: m.pattern, count: m.bytes)
                patternAt += m.bytes
            }
        }
        sequenceSlots = .allocate(capacity: max(1, slots.count))
        sequenceSlots.initialize(from: slots, count: slots.count)
        let endpointCount = targets.reduce(0) { $0 + $1.endpoints.count }
        targetInfo = .allocate(capacity: max(1, targets.count))
        endpointInfo = .allocate(capacity: max(1, endpointCount))
        templates = .allocate(byteCount: max(1, endpointCount) * 64, alignment: 16)
        addresses = .allocate(capacity: max(1, endpointCount))
        udpAddresses = .allocate(capacity: max(1, endpointCount))
        var e = 0
        for (i, t) in targets.enumerated() {
            (targetInfo + i).initialize(to: TargetInfo(replicate: t.mode == .replicate, first: Int32(e), count: Int32(t.endpoints.count),
                                                       tunnel: t.tunnel))
            for ep in t.endpoints {
                // Port 0: the UDP header is ours; an IPv6 raw socket takes
                // sin6_port as a protocol number and refuses anything > 255.
                var storage = sockaddr_storage()
                let len = TargetResolver.fill(&storage, ep.address, port: 0)
                (addresses + e).initialize(to: storage)
                TargetResolver.fill(&storage, ep.address, port: ep.port)
                (udpAddresses + e).initialize(to: storage)
                let counter = counters.endpointSlot(target: t.name, endpoint: ep.key)
                (endpointInfo + e).initialize(to: EndpointInfo(
                    constants: ep.header.constants, tunnel: t.tunnel, addressLength: len, ipv6: !ep.address.isIPv4,
                    health: t.probed ? Int32(healthSlots[ep.key] ?? -1) : -1,
                    seed: Rendezvous.seed(ep.key), counter: Int32(counter), path: Int32(pathSlots[ep.key] ?? -1), interface: ep.interface,
                    pacingInterval: t.pacing?.interval ?? 0, pacingBurst: Int32(t.pacing?.burst ?? Emitter.maxSegments)))
                ep.header.writeTemplate(to: templates + e * 64)
                e += 1
            }
        }
    }

    deinit {
        sessions.deallocate()
        sequenceSlots.deallocate()
        patterns.deallocate()
        targetInfo.deallocate()
        endpointInfo.deallocate()
        templates.deallocate()
        addresses.deallocate()
        udpAddresses.deallocate()
    }
}

/// The iovecs of one copy's payload: runs of the ring, and bytes from
/// elsewhere (a finished checksum, a mask's pattern) in place of some.
struct Pieces {
    let v: UnsafeMutablePointer<iovec>
    let base: UnsafeMutableRawPointer
    var count = 0
    /// Payload bytes covered so far.
    var at = 0

    /// The ring's bytes up to `end`.
    @inline(__always)
    mutating func ring(to end: Int) {
        if end > at {
            v[count] = iovec(iov_base: base + at, iov_len: end - at)
            count += 1
        }
        at = max(at, end)
    }

    /// The ring up to `offset`, then `n` bytes from `bytes` instead of the ring's.
    @inline(__always)
    mutating func replace(at offset: Int, with bytes: UnsafeMutableRawPointer, count n: Int) {
        ring(to: offset)
        v[count] = iovec(iov_base: bytes, iov_len: n)
        count += 1
        at += n
    }
}

/// The forwarding loop: drains the rings in batches, puts the outer headers
/// in front of each record (tunnel header and frame stay in the ring) and
/// hands the batch to the kernel with sendmmsg, one call per address
/// family. Runs on its own thread; nothing in the loop allocates.
public final class Forwarder: @unchecked Sendable {
    // @unchecked: the mutable state below the Mutex/Atomics is owned by the
    // forwarding thread; other threads only use install/stop/wake.

    public struct Settings: Sendable {
        /// Records per sendmmsg batch.
        public var batchSize: Int
        /// How long a full socket may hold up a batch before its rest is
        /// dropped (counted as backpressure), in nanoseconds.
        public var backpressureBudgetNanoseconds: UInt64
        /// How long the loop sleeps after a partial batch, letting records
        /// gather so that one send carries many (nanoseconds). A full batch
        /// is followed by the next at once.
        public var drainIntervalNanoseconds: UInt64
        /// The longest sleep when nothing comes: empty looks double the
        /// sleep up to this. A backlog of an eighth of a ring wakes the loop
        /// sooner.
        public var idleWaitNanoseconds: UInt64
        /// Whether runs of one flow's copies toward an endpoint with a
        /// link-layer path leave as one UDP GSO message of the packet
        /// socket; off, each copy is a frame of its own.
        public var gso: Bool

        public init(batchSize: Int = 256, backpressureBudgetNanoseconds: UInt64 = 2_000_000,
                    drainIntervalNanoseconds: UInt64 = 1_000_000, idleWaitNanoseconds: UInt64 = 5_000_000,
                    gso: Bool = true) {
            self.batchSize = batchSize
            self.backpressureBudgetNanoseconds = backpressureBudgetNanoseconds
            self.drainIntervalNanoseconds = drainIntervalNanoseconds
            self.idleWaitNanoseconds = idleWaitNanoseconds
            self.gso = gso
        }
    }

    /// Scratch of a packet: a completed checksum at 48, rewritten segment
    /// headers at 64 (the outer headers live in the emitter).
    static let segmentHeadersAt = 64

    public let settings: Settings
    let rings: RingSet
    public let counters: ForwarderCounters
    let logger: Logger

    private let mailbox = Mutex<[Int: ForwardingTable]>([:])
    private let mailboxFull = Atomic<Bool>(false)
    private let applied = Atomic<Int>(0)
    private let requested = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)

    /// Whether the forwarding loop is running.
    public var isRunning: Bool { running.load(ordering: .relaxed) }

    // Forwarding thread only:
    private var table0: ForwardingTable?
    private var table1: ForwardingTable?
    private var batch: RecordBatch
    private let socket4: Int32
    private let socket6: Int32
    private let own: OwnOutput
    private let emitter: Emitter
    /// Endpoints chosen for the packet being built (indexes in the table).
    private let chosen: UnsafeMutablePointer<Int32>
    private var lastErrorLog: UInt64 = 0
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, taken once per batch.
    private var clockOffset: UInt64 = 0

    /// Opens the raw sockets the copies leave by: IPPROTO_RAW takes whole IP
    /// packets, so each copy gets its own UDP source port (SPEC §4.3) from
    /// one socket, and the socket never receives anything.
    /// `mark` is the SO_MARK of the sockets (0: none), for policy routing
    /// only; every socket is registered with `own`, which is how the hooks
    /// know the copies.
    public init(rings: RingSet, counters: ForwarderCounters, mark: UInt32, own: OwnOutput, settings: Settings,
                logger: Logger) throws(SystemError) {
        self.rings = rings
        self.counters = counters
        self.settings = settings
        self.logger = logger
        let b = settings.batchSize
        batch = RecordBatch(capacity: b)
        func open(_ family: Int32) throws(SystemError) -> Int32 {
            let fd = try SystemError.check(CMirrorSys_socket(family, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_RAW)),
                                           "socket(\(family == AF_INET ? "AF_INET" : "AF_INET6"), SOCK_RAW, IPPROTO_RAW)")
            if mark != 0 {
                try SystemError.check(CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark)), "setsockopt(SO_MARK)")
            }
            // A deep send buffer absorbs bursts; FORCE needs CAP_NET_ADMIN,
            // which the agent has; fall back to the capped option.
            if CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20) != 0 {
                _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_SNDBUF, 8 << 20)
            }
            do {
                try own.register(fd)
            } catch {
                _ = CMirrorSys_close(fd)
                throw error
            }
            return fd
        }
        socket4 = try open(AF_INET)
        do {
            socket6 = try open(AF_INET6)
        } catch {
            socket6 = -1
            ipv6Problem = error
        }
        self.own = own
        // Room for a batch of records and the segments of GSO packets.
        emitter = Emitter(capacity: max(4 * b, 256), counters: counters, settings: settings,
                          socket4: socket4, socket6: socket6, mark: mark, own: own)
        chosen = .allocate(capacity: Self.maxEndpoints)
    }

    /// Whether the IPv6 raw socket could be opened (and why not).
    var canSendIPv6: Bool { socket6 >= 0 }
    public private(set) var ipv6Problem: SystemError?

    deinit {
        own.forget(socket4)
        _ = CMirrorSys_close(socket4)
        if socket6 >= 0 { own.forget(socket6); _ = CMirrorSys_close(socket6) }
        chosen.deallocate()
    }

    /// Endpoints of one target (the config allows 64).
    static let maxEndpoints = 64

    // MARK: control (any thread)

    /// Hands the forwarding thread the table for records of `bank` and
    /// returns once it uses it (so the hooks may switch to that bank).
    public func install(_ table: ForwardingTable, bank: Int) {
        let ticket = mailbox.withLock { box in
            box[bank] = table
            return requested.add(1, ordering: .sequentiallyConsistent).newValue
        }
        mailboxFull.store(true, ordering: .releasing)
        rings.wake()
        while applied.load(ordering: .acquiring) < ticket {
            rings.wake()
            usleep(200)
        }
    }

    /// Asks the loop to drain every ring and return. Detach the hooks (and
    /// wait for running ones) first, or it keeps finding new records.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        rings.wake()
    }

    // MARK: forwarding thread

    /// The loop. Returns after `stop()`, with the rings empty.
    public func run(name: String = "tm-forward") {
        CMirrorSys_set_thread_name(name)
        // Sleeps of a fraction of the drain interval should end on time,
        // and a paced endpoint's of a few microseconds too.
        _ = CMirrorSys_set_timer_slack(min(settings.drainIntervalNanoseconds / 20, 2_000))
        running.store(true, ordering: .relaxed)
        defer { running.store(false, ordering: .relaxed) }
        // Adaptive batching: a full batch means a backlog, so the next
        // follows at once; a partial one means the rings are empty, so the
        // loop sleeps a drain interval and lets the next batch gather
        // (cheaper per packet than draining each record as it lands, and
        // the hooks never pay for a wakeup); nothing at all doubles the
        // sleep up to the idle wait.
        var sleep = settings.drainIntervalNanoseconds
        while true {
            if mailboxFull.load(ordering: .acquiring) { applyMailbox() }
            let n = rings.collect(into: &batch, max: settings.batchSize)
            if n > 0 {
                forwardBatch()
                rings.release()
                batch.removeAll()
                if emitter.sendErrorsSinceLog > 0 { logSendErrors(force: false) }
                if n == settings.batchSize { continue }
                sleep = settings.drainIntervalNanoseconds
            } else if stopping.load(ordering: .acquiring) {
                if !rings.hasPending { break }
                continue
            } else {
                sleep = min(sleep * 2, settings.idleWaitNanoseconds)
                logSendErrors(force: false)
            }
            if stopping.load(ordering: .acquiring) { continue }
            rings.wait(nanoseconds: sleep)
        }
        logSendErrors(force: true)
    }

    private func applyMailbox() {
        let (tables, ticket) = mailbox.withLock { box in
            let t = box
            box.removeAll()
            return (t, requested.load(ordering: .sequentiallyConsistent))
        }
        mailboxFull.store(false, ordering: .releasing)
        for (bank, table) in tables {
            if bank == 0 { table0 = table } else { table1 = table }
        }
        applied.store(ticket, ordering: .releasing)
    }

    @inline(__always)
    private func forwardBatch() {
        let count = batch.count
        // The tables change only between batches (applyMailbox).
        let bank0 = table0, bank1 = table1
        // Record times are CLOCK_MONOTONIC (bpf_ktime_get_ns); headers
        // that carry them want the epoch.
        clockOffset = CMirrorSys_realtime_ns() &- CMirrorSys_monotonic_ns()
        for i in 0..<count {
            let r = batch[i]
            guard let table = r.bank == 0 ? bank0 : bank1, r.session < table.sessionCount else {
                counters.addDrop(session: ForwarderCounters.unattributedSession, .noPlan)
                continue
            }
            let s = table.sessions[r.session]
            if r.flags.contains(.gso) {
                forwardSegments(r, table, s)
            } else {
                forwardFrame(r, table, s)
            }
        }
        emitter.flush()
        counters.addBatch()
    }

    /// What per-packet tunnel headers say about record `r` (nothing for
    /// tunnels whose header is the ring's).
    @inline(__always)
    private func origin(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo,
                        truncated: Bool) -> Emitter.Origin {
        guard table.targetInfo[Int(s.target)].tunnel.perPacket else { return .none }
        let frame = r.frame
        var vlan: Int32 = -1
        var cos: UInt8 = 0
        if frame.count >= 18, frame[12] == 0x81 && frame[13] == 0x00 || frame[12] == 0x88 && frame[13] == 0xA8 {
            let tci = UInt16(frame[14]) << 8 | UInt16(frame[15])
            vlan = Int32(tci & 0xFFF)
            cos = UInt8(tci >> 13)
        } else if r.l3Offset + 2 <= frame.count {
            // IP precedence: the top 3 bits of the TOS or traffic class.
            let b0 = frame[r.l3Offset], b1 = frame[r.l3Offset + 1]
            if b0 >> 4 == 4 { cos = b1 >> 5 } else if b0 >> 4 == 6 { cos = (b0 & 0x0F) >> 1 }
        }
        return Emitter.Origin(timestamp: r.timestampNanoseconds &+ clockOffset, ifindex: r.ifindex,
                              egress: r.direction == .egress, truncated: truncated, vlan: vlan, cos: cos)
    }

    /// The endpoints of session `s`'s target that get this packet, into
    /// `chosen`: the flow's rendezvous choice among the up endpoints, or
    /// every up endpoint for a replicating target. Returns how many.
    @inline(__always)
    private func choose(_ table: ForwardingTable, _ s: ForwardingTable.SessionInfo, hash: UInt32) -> Int {
        let t = table.targetInfo[Int(s.target)]
        var n = 0
        var bestWeight: UInt32 = 0
        for i in 0..<Int(t.count) {
            let e = Int(t.first) + i
            let h = table.endpointInfo[e].health
            if h >= 0 && CMirrorSys_load_relaxed_u32(table.health + Int(h)) == 0 { continue }
            if t.replicate {
                chosen[n] = Int32(e)
                n += 1
            } else {
                let w = Rendezvous.weight(hash, table.endpointInfo[e].seed)
                if n == 0 || w > bestWeight {
                    chosen[0] = Int32(e)
                    bestWeight = w
                    n = 1
                }
            }
        }
        return n
    }

    /// One record, one packet: the ring's tunnel header and frame, split
    /// around a completed checksum if there is one.
    @inline(__always)
    private func forwardFrame(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        let copies = choose(table, s, hash: r.flowHash)
        guard copies > 0 else {
            counters.addDrop(session: Int(s.slot), .noEndpoint)
            return
        }
        let (h, v) = emitter.beginPacket(copies: copies, table: table)
        let payload = r.payload
        let frame = r.frame
        let base = UnsafeMutableRawPointer(mutating: payload.baseAddress!)
        var fix: (offset: Int, value: UInt16)?
        if r.flags.contains(.l4Complete) {
            fix = PartialChecksum.completion(frame: frame, l3Offset: r.l3Offset, l4Offset: r.l4Offset, l4Protocol: r.l4Protocol)
        } else if r.flags.contains(.sliced), let sliced = r.slices, sliced.count == 1 {
            // Cut short in the kernel, which summed the payload it left out.
            fix = PartialChecksum.completion(frame: frame, l3Offset: r.l3Offset, l4Offset: r.l4Offset, l4Protocol: r.l4Protocol,
                                             payloadSum: RecordView.payloadSum(sliced.sums, 0))
        }
        var masked: Range<Int>?
        if let m = s.mask, let end = PayloadMask.layerEnd(m.after, frame: frame, l3Offset: r.l3Offset, l4Offset: r.l4Offset,
                                                          l4Protocol: r.l4Protocol),
           let range = PayloadMask.range(m, layerEnd: end, length: frame.count) {
            masked = range
            if let field = PayloadMask.checksumField(l4Offset: r.l4Offset, l4Protocol: r.l4Protocol), field + 2 <= frame.count {
                let current = fix?.value ?? UInt16(frame[field]) << 8 | UInt16(frame[field + 1])
                if let adjusted = PayloadMask.adjustedChecksum(frame: frame, l3Offset: r.l3Offset, l4Offset: r.l4Offset,
                                                              l4Protocol: r.l4Protocol, range: range, pattern: m.pattern,
                                                              current: current) {
                    fix = adjusted
                } else if let f = fix, f.offset < range.upperBound && f.offset + 2 > range.lowerBound {
                    fix = nil // the field is masked
                }
            }
        }
        // Pieces from the read-only ring, with the finished checksum (from
        // scratch) and the mask's pattern sent in place of what they cover.
        var out = Pieces(v: v, base: base)
        let t = TunnelHeader.length
        (h + 48).storeBytes(of: (fix?.value ?? 0).bigEndian, as: UInt16.self)
        let fixAt = fix.map { t + $0.offset } ?? Int.max
        let maskAt = masked.map { t + $0.lowerBound } ?? Int.max
        if fixAt < maskAt { out.replace(at: fixAt, with: h + 48, count: 2) }
        if let range = masked { out.replace(at: maskAt, with: table.patterns + Int(s.patternAt), count: range.count) }
        if fixAt != Int.max && fixAt > maskAt { out.replace(at: fixAt, with: h + 48, count: 2) }
        out.ring(to: payload.count)
        let pieces = out.count
        emitter.addPacket(s, endpoints: chosen, copies: copies, pieces: pieces, length: payload.count, hash: r.flowHash,
                          origin: origin(r, table, s, truncated: r.capturedLength < r.originalLength))
    }

    /// A GSO super-packet becomes the segments the wire carries: rewritten
    /// headers from scratch, payload chunks straight from the ring, the
    /// session's limits applied to each segment. A record the kernel sliced
    /// holds only the first bytes of each kept segment and its payload sum.
    private func forwardSegments(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        let expected = r.gsoSegments
        // The segments sampling kept (the kernel counted the others).
        let step = Int(s.sampleEvery)
        let kept = r.sampleFirst < expected ? (expected - r.sampleFirst - 1) / step + 1 : 0
        let isSliced = r.flags.contains(.sliced)
        let sliced = isSliced ? r.slices : nil
        guard let seg = GSOSegmenter(frame: r.frame, l3Offset: r.l3Offset, l4Offset: r.l4Offset,
                                     l4Protocol: r.l4Protocol, gsoSize: r.gsoSize, whole: !isSliced),
              !isSliced || sliced.map({ seg.headerLength + $0.count * $0.length == r.capturedLength }) == true
        else {
            // Headers too long to rewrite: the first bytes go as one copy.
            forwardTruncated(r, table, s)
            if kept > 1 { counters.addDrops(session: Int(s.slot), .gsoUnsegmented, kept - 1) }
            return
        }
        let copies = choose(table, s, hash: r.flowHash)
        let n = min(seg.segmentCount, expected)
        guard copies > 0 else {
            counters.addDrops(session: Int(s.slot), .noEndpoint, kept)
            return
        }
        let tunnel = UnsafeMutableRawPointer(mutating: r.payload.baseAddress!)
        let frameBase = UnsafeMutableRawPointer(mutating: r.frame.baseAddress!)
        // Each segment keeps its headers plus the slice's bytes.
        var limit = Int(s.limit), limitIsLength = s.limitIsLength
        if let slice = s.slice {
            let end = (slice.after == .l3 ? r.l4Offset : seg.headerLength) + slice.bytes
            if end <= limit {
                limit = end
                limitIsLength = true
            }
        }
        var sentSegments = 0
        for i in stride(from: r.sampleFirst, to: n, by: step) {
            let chunk = seg.payloadRange(i)
            var start = chunk.lowerBound
            var payloadBytes = chunk.count
            var payloadSum: UInt16?
            if let sliced {
                let j = sentSegments
                guard j < sliced.count else { break }
                start = seg.headerLength + j * sliced.length
                payloadBytes = min(payloadBytes, sliced.length, max(0, r.capturedLength - start))
                payloadSum = RecordView.payloadSum(sliced.sums, j)
            }
            sentSegments += 1
            let (h, v) = emitter.beginPacket(copies: copies, table: table)
            let headers = h + Self.segmentHeadersAt
            var headerBytes = seg.headerLength
            if headerBytes + payloadBytes > limit {
                payloadBytes = max(0, limit - headerBytes)
                headerBytes = min(headerBytes, limit)
            }
            // The mask, in segment offsets: over the headers (rewritten in
            // scratch) and the payload (the pattern sent instead).
            var headerMask = 0..<0, payloadMask = 0..<0
            if let m = s.mask {
                let from = (m.after == .l3 ? r.l4Offset : seg.headerLength) + m.offset
                let to = min(from + m.bytes, headerBytes + (headerBytes == seg.headerLength ? payloadBytes : 0))
                if from < min(to, headerBytes) { headerMask = from..<min(to, headerBytes) }
                let p0 = max(from, seg.headerLength) - seg.headerLength, p1 = to - seg.headerLength
                if p0 < p1 {
                    payloadMask = p0..<p1
                    // The segment's checksum covers the pattern, not the payload.
                    var total = InternetChecksum(), old = InternetChecksum(), new = InternetChecksum()
                    if let payloadSum { total.add(word: payloadSum) } else { total.add(UnsafeRawBufferPointer(rebasing: r.frame[chunk])) }
                    if p0 & 1 == 1 { old.add([0]); new.add([0]) }
                    old.add(UnsafeRawBufferPointer(rebasing: r.frame[(start + p0)..<(start + p1)]))
                    PayloadMask.addPattern(&new, m.pattern, count: p1 - p0)
                    total.add(word: ~old.folded)
                    total.add(word: new.folded)
                    payloadSum = total.folded
                }
            }
            seg.writeHeaders(i, to: headers, payloadSum: payloadSum)
            if !headerMask.isEmpty, let m = s.mask {
                (headers + headerMask.lowerBound).initializeMemory(as: UInt8.self, repeating: m.pattern, count: headerMask.count)
            }
            let cut = headerBytes + payloadBytes < seg.headerLength + chunk.count
            if cut {
                counters.addTruncation(session: Int(s.slot), limitIsLength ? .packetLength : .mtu)
            }
            v[0] = iovec(iov_base: tunnel, iov_len: TunnelHeader.length)
            v[1] = iovec(iov_base: headers, iov_len: headerBytes)
            var out = Pieces(v: v + 2, base: frameBase + start)
            if !payloadMask.isEmpty {
                out.replace(at: payloadMask.lowerBound, with: table.patterns + Int(s.patternAt), count: payloadMask.count)
            }
            out.ring(to: payloadBytes)
            emitter.addPacket(s, endpoints: chosen, copies: copies, pieces: 2 + out.count,
                              length: TunnelHeader.length + headerBytes + payloadBytes, hash: r.flowHash,
                              origin: origin(r, table, s, truncated: cut))
        }
        if sentSegments < kept { counters.addDrops(session: Int(s.slot), .gsoUnsegmented, kept - sentSegments) }
    }

    /// The first bytes of a record that cannot be segmented, within the
    /// session's limit.
    private func forwardTruncated(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        let copies = choose(table, s, hash: r.flowHash)
        guard copies > 0 else {
            counters.addDrop(session: Int(s.slot), .noEndpoint)
            return
        }
        let (_, v) = emitter.beginPacket(copies: copies, table: table)
        let length = TunnelHeader.length + min(r.capturedLength, Int(s.limit))
        if r.capturedLength > Int(s.limit) {
            counters.addTruncation(session: Int(s.slot), s.limitIsLength ? .packetLength : .mtu)
        }
        v[0] = iovec(iov_base: UnsafeMutableRawPointer(mutating: r.payload.baseAddress!), iov_len: length)
        emitter.addPacket(s, endpoints: chosen, copies: copies, pieces: 1, length: length, hash: r.flowHash,
                          origin: origin(r, table, s, truncated: true))
    }

    /// Send errors are logged at most once a second, with their count.
    private func logSendErrors(force: Bool) {
        guard emitter.sendErrorsSinceLog > 0 else { return }
        let now = CMirrorSys_monotonic_ns()
        guard force || now - lastErrorLog >= 1_000_000_000 else { return }
        logger.warning("sending mirrored packets failed", metadata: [
            "count": "\(emitter.sendErrorsSinceLog)",
            "error": "\(SystemError("send", errno: emitter.lastSendError))",
        ])
        emitter.sendErrorsSinceLog = 0
        lastErrorLog = now
    }
}

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
    }

    struct TargetInfo {
        var replicate: Bool
        var first: Int32
        var count: Int32
    }

    struct EndpointInfo {
        var constants: OuterHeader.Constants
        var addressLength: socklen_t
        var ipv6: Bool
        /// Slot in the health flags, or -1: never probed, always up.
        var health: Int32
        /// Rendezvous-hashing weight seed, from the endpoint's key.
        var seed: UInt32
        /// Slot of the endpoint's counters.
        var counter: Int32
    }

    public let targets: [ResolvedTarget]
    public let sessionNames: [String]
    let sessionCount: Int
    let sessions: UnsafeMutablePointer<SessionInfo>
    let targetInfo: UnsafeMutablePointer<TargetInfo>
    let endpointInfo: UnsafeMutablePointer<EndpointInfo>
    let templates: UnsafeMutableRawPointer
    let addresses: UnsafeMutablePointer<sockaddr_storage>
    /// Up (1) or down (0) per health slot, written by the HealthMonitor.
    let health: UnsafeMutablePointer<UInt32>

    /// `sessionTargets[i]` is the index in `targets` of session i,
    /// `packetLengths[i]` its packet_length; `healthSlots` gives each
    /// probed endpoint's slot by key.
    init(targets: [ResolvedTarget], sessionNames: [String], sessionTargets: [Int], packetLengths: [Int?],
         counters: ForwarderCounters, health: UnsafeMutablePointer<UInt32>, healthSlots: [String: Int]) {
        self.targets = targets
        self.sessionNames = sessionNames
        self.health = health
        sessionCount = sessionNames.count
        sessions = .allocate(capacity: max(1, sessionCount))
        for i in 0..<sessionCount {
            let t = sessionTargets[i]
            let pair = counters.pairSlot(session: sessionNames[i], target: targets[t].name) ?? 0
            let slot = counters.sessionSlot(sessionNames[i]) ?? 0
            let mtuLimit = targets[t].innerLimit
            let length = packetLengths[i] ?? Int(Int32.max)
            (sessions + i).initialize(to: SessionInfo(
                target: Int32(t), pair: Int32(pair), slot: Int32(slot),
                limit: Int32(min(length, mtuLimit, Int(Int32.max))), limitIsLength: length <= mtuLimit))
        }
        let endpointCount = targets.reduce(0) { $0 + $1.endpoints.count }
        targetInfo = .allocate(capacity: max(1, targets.count))
        endpointInfo = .allocate(capacity: max(1, endpointCount))
        templates = .allocate(byteCount: max(1, endpointCount) * 64, alignment: 16)
        addresses = .allocate(capacity: max(1, endpointCount))
        var e = 0
        for (i, t) in targets.enumerated() {
            (targetInfo + i).initialize(to: TargetInfo(replicate: t.mode == .replicate, first: Int32(e), count: Int32(t.endpoints.count)))
            for ep in t.endpoints {
                // Port 0: the UDP header is ours; an IPv6 raw socket takes
                // sin6_port as a protocol number and refuses anything > 255.
                var storage = sockaddr_storage()
                let len = TargetResolver.fill(&storage, ep.address, port: 0)
                (addresses + e).initialize(to: storage)
                let counter = counters.endpointSlot(target: t.name, endpoint: ep.key) ?? 0
                (endpointInfo + e).initialize(to: EndpointInfo(
                    constants: ep.header.constants, addressLength: len, ipv6: !ep.address.isIPv4,
                    health: t.probed ? Int32(healthSlots[ep.key] ?? -1) : -1,
                    seed: Rendezvous.seed(ep.key), counter: Int32(counter)))
                ep.header.writeTemplate(to: templates + e * 64)
                e += 1
            }
        }
    }

    deinit {
        sessions.deallocate()
        targetInfo.deallocate()
        endpointInfo.deallocate()
        templates.deallocate()
        addresses.deallocate()
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
        /// Empty polls before sleeping on the rings' epoll.
        public var spinIterations: Int

        public init(batchSize: Int = 256, backpressureBudgetNanoseconds: UInt64 = 2_000_000, spinIterations: Int = 2048) {
            self.batchSize = batchSize
            self.backpressureBudgetNanoseconds = backpressureBudgetNanoseconds
            self.spinIterations = spinIterations
        }
    }

    /// One message: its group (the mirrored packet it is a copy of), its
    /// bytes and its endpoint's counters.
    struct Meta {
        var group: Int32
        var bytes: Int32
        var endpoint: Int32
    }

    /// One mirrored packet (record, or segment of one) in the flush: sent
    /// when any of its copies went.
    struct Group {
        var pair: Int32
        var slot: Int32
        var sent: Bool
        var failure: UserDropReason
    }

    /// iovecs per message: outer header, then the payload in up to three
    /// pieces (around a completed checksum, or tunnel header + segment
    /// headers + segment payload).
    static let iovPerMessage = 4
    /// Scratch per message: outer header at 0 (<= 48), a completed checksum
    /// at 48, rewritten segment headers at 64.
    static let scratchPerMessage = 64 + GSOSegmenter.maxHeaderLength
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
    /// Messages built before a flush (a batch of records plus room for
    /// the segments of GSO super-packets).
    private let capacity: Int
    private let scratch: UnsafeMutableRawPointer
    private let iov: UnsafeMutablePointer<iovec>
    private let msgs4: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    private let msgs6: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    private let meta4: UnsafeMutablePointer<Meta>
    private let meta6: UnsafeMutablePointer<Meta>
    private let groups: UnsafeMutablePointer<Group>
    /// Endpoints chosen for the packet being built (indexes in the table).
    private let chosen: UnsafeMutablePointer<Int32>
    /// Messages built since the last flush: k in total, n4 + n6 == k; and
    /// the packets they are copies of.
    private var k = 0, n4 = 0, n6 = 0, g = 0
    private var identification: UInt16 = 0
    private var lastSendError: Int32 = 0
    private var sendErrorsSinceLog = 0
    private var lastErrorLog: UInt64 = 0

    /// Opens the raw sockets the copies leave by: IPPROTO_RAW takes whole IP
    /// packets, so each copy gets its own UDP source port (SPEC §4.3) from
    /// one socket, and the socket never receives anything.
    public init(rings: RingSet, counters: ForwarderCounters, mark: UInt32, settings: Settings, logger: Logger) throws(SystemError) {
        self.rings = rings
        self.counters = counters
        self.settings = settings
        self.logger = logger
        let b = settings.batchSize
        batch = RecordBatch(capacity: b)
        capacity = max(b, 64)
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
            return fd
        }
        socket4 = try open(AF_INET)
        socket6 = (try? open(AF_INET6)) ?? -1
        let c = capacity
        scratch = .allocate(byteCount: c * Self.scratchPerMessage, alignment: 16)
        iov = .allocate(capacity: c * Self.iovPerMessage)
        msgs4 = .allocate(capacity: c)
        msgs6 = .allocate(capacity: c)
        meta4 = .allocate(capacity: c)
        meta6 = .allocate(capacity: c)
        msgs4.initialize(repeating: CMirrorSys_mmsghdr(), count: c)
        msgs6.initialize(repeating: CMirrorSys_mmsghdr(), count: c)
        groups = .allocate(capacity: c)
        chosen = .allocate(capacity: Self.maxEndpoints)
    }

    deinit {
        _ = CMirrorSys_close(socket4)
        if socket6 >= 0 { _ = CMirrorSys_close(socket6) }
        scratch.deallocate()
        iov.deallocate()
        msgs4.deallocate()
        msgs6.deallocate()
        meta4.deallocate()
        meta6.deallocate()
        groups.deallocate()
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
    public func run() {
        CMirrorSys_set_thread_name("tm-forward")
        running.store(true, ordering: .relaxed)
        defer { running.store(false, ordering: .relaxed) }
        var idle = 0
        while true {
            if mailboxFull.load(ordering: .acquiring) { applyMailbox() }
            let n = rings.collect(into: &batch, max: settings.batchSize)
            if n > 0 {
                forwardBatch()
                rings.release()
                batch.removeAll()
                if sendErrorsSinceLog > 0 { logSendErrors(force: false) }
                idle = 0
                continue
            }
            if stopping.load(ordering: .acquiring) {
                if !rings.hasPending { break }
                continue
            }
            // Under load records keep coming: poll a while before paying
            // for a sleep and a wakeup.
            if idle < settings.spinIterations {
                idle += 1
                CMirrorSys_cpu_relax()
                continue
            }
            logSendErrors(force: false)
            rings.wait(timeoutMilliseconds: 200)
            idle = settings.spinIterations / 2
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
        for i in 0..<count {
            let r = batch[i]
            guard let table = r.bank == 0 ? table0 : table1, r.session < table.sessionCount else {
                counters.addDrop(session: 0, .noPlan)
                continue
            }
            let s = table.sessions[r.session]
            if r.flags.contains(.gso) {
                forwardSegments(r, table, s)
            } else {
                forwardFrame(r, table, s)
            }
        }
        flush()
        counters.addBatch()
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

    /// Room for `copies` messages of one packet, built from message k on.
    @inline(__always)
    private func reserve(_ copies: Int) {
        if k + copies > capacity { flush() }
    }

    /// One record, one packet: the ring's tunnel header and frame follow
    /// the outer header, split around a completed checksum if there is one.
    @inline(__always)
    private func forwardFrame(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        let copies = choose(table, s, hash: r.flowHash)
        guard copies > 0 else {
            counters.addDrop(session: Int(s.slot), .noEndpoint)
            return
        }
        reserve(copies)
        let h = scratch + k * Self.scratchPerMessage
        let v = iov + k * Self.iovPerMessage
        let payload = r.payload
        let base = UnsafeMutableRawPointer(mutating: payload.baseAddress!)
        var pieces = 1
        var sum = InternetChecksum()
        let fix: (offset: Int, value: UInt16)? = r.flags.contains(.l4Complete)
            ? PartialChecksum.completion(frame: r.frame, l3Offset: r.l3Offset, l4Offset: r.l4Offset, l4Protocol: r.l4Protocol)
            : nil
        if let fix {
            // Send around the unfinished field, and the finished value from
            // scratch: the ring itself is read-only.
            let at = TunnelHeader.length + fix.offset
            let fixed = h + 48
            fixed.storeBytes(of: fix.value.bigEndian, as: UInt16.self)
            v[1] = iovec(iov_base: base, iov_len: at)
            v[2] = iovec(iov_base: fixed, iov_len: 2)
            v[3] = iovec(iov_base: base + at + 2, iov_len: payload.count - at - 2)
            pieces = 3
        } else {
            v[1] = iovec(iov_base: base, iov_len: payload.count)
        }
        if needsPayloadSum(table, copies) { sum = payloadSum(v, pieces) }
        appendCopies(table, s, copies, pieces: pieces, payloadLength: payload.count, payloadSum: sum.sum, hash: r.flowHash)
    }

    /// A GSO super-packet becomes the segments the wire carries: rewritten
    /// headers from scratch, payload chunks straight from the ring, the
    /// session's limits applied to each segment.
    private func forwardSegments(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        let expected = r.gsoSegments
        guard let seg = GSOSegmenter(frame: r.frame, l3Offset: r.l3Offset, l4Offset: r.l4Offset,
                                     l4Protocol: r.l4Protocol, gsoSize: r.gsoSize) else {
            // Headers too long to rewrite: the first bytes go as one copy.
            forwardTruncated(r, table, s)
            if expected > 1 { counters.addDrops(session: Int(s.slot), .gsoUnsegmented, expected - 1) }
            return
        }
        let copies = choose(table, s, hash: r.flowHash)
        let n = min(seg.segmentCount, expected)
        guard copies > 0 else {
            counters.addDrops(session: Int(s.slot), .noEndpoint, expected)
            return
        }
        let tunnel = UnsafeMutableRawPointer(mutating: r.payload.baseAddress!)
        let frameBase = UnsafeMutableRawPointer(mutating: r.frame.baseAddress!)
        for i in 0..<n {
            reserve(copies)
            let h = scratch + k * Self.scratchPerMessage
            let headers = h + Self.segmentHeadersAt
            let v = iov + k * Self.iovPerMessage
            seg.writeHeaders(i, to: headers)
            let chunk = seg.payloadRange(i)
            var headerBytes = seg.headerLength
            var payloadBytes = chunk.count
            if headerBytes + payloadBytes > Int(s.limit) {
                payloadBytes = max(0, Int(s.limit) - headerBytes)
                headerBytes = min(headerBytes, Int(s.limit))
                counters.addTruncation(session: Int(s.slot), s.limitIsLength ? .packetLength : .mtu)
            }
            v[1] = iovec(iov_base: tunnel, iov_len: TunnelHeader.length)
            v[2] = iovec(iov_base: headers, iov_len: headerBytes)
            v[3] = iovec(iov_base: frameBase + chunk.lowerBound, iov_len: payloadBytes)
            let sum = needsPayloadSum(table, copies) ? payloadSum(v, 3) : InternetChecksum()
            appendCopies(table, s, copies, pieces: 3, payloadLength: TunnelHeader.length + headerBytes + payloadBytes,
                         payloadSum: sum.sum, hash: r.flowHash)
        }
        if n < expected { counters.addDrops(session: Int(s.slot), .gsoUnsegmented, expected - n) }
    }

    /// The first bytes of a record that cannot be segmented, within the
    /// session's limit.
    private func forwardTruncated(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        let copies = choose(table, s, hash: r.flowHash)
        guard copies > 0 else {
            counters.addDrop(session: Int(s.slot), .noEndpoint)
            return
        }
        reserve(copies)
        let v = iov + k * Self.iovPerMessage
        let length = TunnelHeader.length + min(r.capturedLength, Int(s.limit))
        if r.capturedLength > Int(s.limit) {
            counters.addTruncation(session: Int(s.slot), s.limitIsLength ? .packetLength : .mtu)
        }
        v[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: r.payload.baseAddress!), iov_len: length)
        let sum = needsPayloadSum(table, copies) ? payloadSum(v, 1) : InternetChecksum()
        appendCopies(table, s, copies, pieces: 1, payloadLength: length, payloadSum: sum.sum, hash: r.flowHash)
    }

    /// Whether a chosen endpoint is IPv6 (its UDP checksum covers the payload).
    @inline(__always)
    private func needsPayloadSum(_ table: ForwardingTable, _ copies: Int) -> Bool {
        for c in 0..<copies where table.endpointInfo[Int(chosen[c])].ipv6 { return true }
        return false
    }

    @inline(__always)
    private func payloadSum(_ v: UnsafeMutablePointer<iovec>, _ pieces: Int) -> InternetChecksum {
        var sum = InternetChecksum()
        for p in 1...pieces { sum.add(UnsafeRawBufferPointer(start: v[p].iov_base, count: v[p].iov_len)) }
        return sum
    }

    /// Messages k... for the chosen endpoints: each its own outer header
    /// from the endpoint's template, all sharing message k's payload
    /// pieces; one group for the packet.
    @inline(__always)
    private func appendCopies(
        _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo, _ copies: Int, pieces: Int,
        payloadLength: Int, payloadSum: UInt64, hash: UInt32
    ) {
        let group = g
        groups[group] = Group(pair: s.pair, slot: s.slot, sent: false, failure: .sendFailed)
        g += 1
        let first = iov + k * Self.iovPerMessage
        for c in 0..<copies {
            let e = Int(chosen[c])
            let ep = table.endpointInfo[e]
            let h = scratch + k * Self.scratchPerMessage
            let v = iov + k * Self.iovPerMessage
            if c > 0 { for p in 1...pieces { v[p] = first[p] } }
            h.copyMemory(from: table.templates + e * 64, byteCount: ep.constants.length)
            identification &+= 1
            OuterHeader.finish(h, ep.constants, sourcePort: FlowHash.sourcePort(for: hash),
                               payloadLength: payloadLength, identification: identification, payloadSum: payloadSum)
            v[0] = iovec(iov_base: h, iov_len: ep.constants.length)
            var hdr = msghdr()
            hdr.msg_name = UnsafeMutableRawPointer(table.addresses + e)
            hdr.msg_namelen = ep.addressLength
            hdr.msg_iov = v
            hdr.msg_iovlen = pieces + 1
            let meta = Meta(group: Int32(group), bytes: Int32(ep.constants.length + payloadLength), endpoint: ep.counter)
            if ep.ipv6 {
                msgs6[n6] = CMirrorSys_mmsghdr(msg_hdr: hdr, msg_len: 0)
                meta6[n6] = meta
                n6 += 1
            } else {
                msgs4[n4] = CMirrorSys_mmsghdr(msg_hdr: hdr, msg_len: 0)
                meta4[n4] = meta
                n4 += 1
            }
            k += 1
        }
    }

    /// Sends what was built, one sendmmsg per address family, then counts
    /// each packet once: sent if any copy went, else dropped.
    @inline(__always)
    private func flush() {
        if n4 > 0 { send(socket4, msgs4, meta4, n4) }
        if n6 > 0 { send(socket6, msgs6, meta6, n6) }
        for i in 0..<g {
            let grp = groups[i]
            if grp.sent {
                counters.addSentPacket(pair: Int(grp.pair))
            } else {
                counters.addDrop(session: Int(grp.slot), grp.failure)
            }
        }
        k = 0
        n4 = 0
        n6 = 0
        g = 0
    }

    /// Sends `count` messages, resubmitting after partial sends. A full
    /// socket gets a bounded wait; what is still unsent when the budget is
    /// spent fails with backpressure, so the drain never blocks for long.
    @inline(__always)
    private func send(_ fd: Int32, _ msgs: UnsafeMutablePointer<CMirrorSys_mmsghdr>, _ meta: UnsafeMutablePointer<Meta>, _ count: Int) {
        var i = 0
        var deadline: UInt64 = 0
        while i < count {
            let r = CMirrorSys_sendmmsg(fd, msgs + i, UInt32(count - i), Int32(MSG_DONTWAIT))
            if r > 0 {
                for j in i..<(i + Int(r)) {
                    let m = meta[j]
                    groups[Int(m.group)].sent = true
                    counters.addSentBytes(pair: Int(groups[Int(m.group)].pair), endpoint: Int(m.endpoint), bytes: Int(m.bytes))
                }
                i += Int(r)
                continue
            }
            let err = -r
            if err == EAGAIN || err == ENOBUFS {
                counters.addBackpressureWait()
                let now = CMirrorSys_monotonic_ns()
                if deadline == 0 { deadline = now + settings.backpressureBudgetNanoseconds }
                if now >= deadline {
                    for j in i..<count {
                        groups[Int(meta[j].group)].failure = .backpressure
                        counters.addEndpointError(endpoint: Int(meta[j].endpoint))
                    }
                    return
                }
                _ = CMirrorSys_poll1(fd, Int16(POLLOUT), 1)
                continue
            }
            if err == EINTR { continue }
            // This message cannot go (EMSGSIZE, EHOSTUNREACH, ...): note it
            // and go on with the next.
            groups[Int(meta[i].group)].failure = .sendFailed
            counters.addEndpointError(endpoint: Int(meta[i].endpoint))
            lastSendError = err
            sendErrorsSinceLog += 1
            i += 1
        }
    }

    /// Send errors are logged at most once a second, with their count.
    private func logSendErrors(force: Bool) {
        guard sendErrorsSinceLog > 0 else { return }
        let now = CMirrorSys_monotonic_ns()
        guard force || now - lastErrorLog >= 1_000_000_000 else { return }
        logger.warning("sending mirrored packets failed", metadata: [
            "count": "\(sendErrorsSinceLog)",
            "error": "\(SystemError("sendmmsg", errno: lastSendError))",
        ])
        sendErrorsSinceLog = 0
        lastErrorLog = now
    }
}

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
        var constants: OuterHeader.Constants
        var addressLength: socklen_t
        var ipv6: Bool
    }

    public let targets: [ResolvedTarget]
    public let sessionNames: [String]
    let sessionCount: Int
    let sessions: UnsafeMutablePointer<SessionInfo>
    let targetInfo: UnsafeMutablePointer<TargetInfo>
    let templates: UnsafeMutableRawPointer
    let addresses: UnsafeMutablePointer<sockaddr_storage>

    /// `sessionTargets[i]` is the index in `targets` of session i,
    /// `packetLengths[i]` its packet_length.
    init(targets: [ResolvedTarget], sessionNames: [String], sessionTargets: [Int], packetLengths: [Int?],
         counters: ForwarderCounters) {
        self.targets = targets
        self.sessionNames = sessionNames
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
        targetInfo = .allocate(capacity: max(1, targets.count))
        templates = .allocate(byteCount: max(1, targets.count) * 64, alignment: 16)
        addresses = .allocate(capacity: max(1, targets.count))
        for (i, t) in targets.enumerated() {
            var storage = sockaddr_storage()
            let len = TargetResolver.fill(&storage, t.address, port: t.port)
            (addresses + i).initialize(to: storage)
            (targetInfo + i).initialize(to: TargetInfo(constants: t.header.constants, addressLength: len, ipv6: !t.address.isIPv4))
            t.header.writeTemplate(to: templates + i * 64)
        }
    }

    deinit {
        sessions.deallocate()
        targetInfo.deallocate()
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

    struct Meta {
        var pair: Int32
        var slot: Int32
        var bytes: Int32
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
    /// Messages built since the last flush: k in total, n4 + n6 == k.
    private var k = 0, n4 = 0, n6 = 0
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
    }

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

    /// One record, one message: the ring's tunnel header and frame follow
    /// the outer header, split around a completed checksum if there is one.
    @inline(__always)
    private func forwardFrame(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        if k == capacity { flush() }
        let t = table.targetInfo[Int(s.target)]
        let h = scratch + k * Self.scratchPerMessage
        let v = iov + k * Self.iovPerMessage
        let payload = r.payload
        let base = UnsafeMutableRawPointer(mutating: payload.baseAddress!)
        var iovCount = 2
        var payloadSum: UInt64 = 0
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
            iovCount = 4
            if t.ipv6 {
                var sum = InternetChecksum()
                sum.add(UnsafeRawBufferPointer(rebasing: payload[..<at]))
                sum.add(UnsafeRawBufferPointer(start: fixed, count: 2))
                sum.add(UnsafeRawBufferPointer(rebasing: payload[(at + 2)...]))
                payloadSum = sum.sum
            }
        } else {
            v[1] = iovec(iov_base: base, iov_len: payload.count)
            if t.ipv6 {
                var sum = InternetChecksum()
                sum.add(payload)
                payloadSum = sum.sum
            }
        }
        append(table, s, t, h, iovCount, payloadLength: payload.count, payloadSum: payloadSum, hash: r.flowHash)
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
        let t = table.targetInfo[Int(s.target)]
        let n = min(seg.segmentCount, expected)
        let tunnel = UnsafeMutableRawPointer(mutating: r.payload.baseAddress!)
        let frameBase = UnsafeMutableRawPointer(mutating: r.frame.baseAddress!)
        for i in 0..<n {
            if k == capacity { flush() }
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
            var payloadSum: UInt64 = 0
            if t.ipv6 {
                var sum = InternetChecksum()
                sum.add(UnsafeRawBufferPointer(start: tunnel, count: TunnelHeader.length))
                sum.add(UnsafeRawBufferPointer(start: headers, count: headerBytes))
                sum.add(UnsafeRawBufferPointer(start: frameBase + chunk.lowerBound, count: payloadBytes))
                payloadSum = sum.sum
            }
            append(table, s, t, h, 4, payloadLength: TunnelHeader.length + headerBytes + payloadBytes,
                   payloadSum: payloadSum, hash: r.flowHash)
        }
        if n < expected { counters.addDrops(session: Int(s.slot), .gsoUnsegmented, expected - n) }
    }

    /// The first bytes of a record that cannot be segmented, within the
    /// session's limit.
    private func forwardTruncated(_ r: RecordView, _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo) {
        if k == capacity { flush() }
        let t = table.targetInfo[Int(s.target)]
        let h = scratch + k * Self.scratchPerMessage
        let v = iov + k * Self.iovPerMessage
        let length = TunnelHeader.length + min(r.capturedLength, Int(s.limit))
        if r.capturedLength > Int(s.limit) {
            counters.addTruncation(session: Int(s.slot), s.limitIsLength ? .packetLength : .mtu)
        }
        v[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: r.payload.baseAddress!), iov_len: length)
        var payloadSum: UInt64 = 0
        if t.ipv6 {
            var sum = InternetChecksum()
            sum.add(UnsafeRawBufferPointer(start: r.payload.baseAddress!, count: length))
            payloadSum = sum.sum
        }
        append(table, s, t, h, 2, payloadLength: length, payloadSum: payloadSum, hash: r.flowHash)
    }

    /// Completes message k: outer header from the target's template, the
    /// address, the counters' slots.
    @inline(__always)
    private func append(
        _ table: ForwardingTable, _ s: ForwardingTable.SessionInfo, _ t: ForwardingTable.TargetInfo,
        _ h: UnsafeMutableRawPointer, _ iovCount: Int, payloadLength: Int, payloadSum: UInt64, hash: UInt32
    ) {
        let v = iov + k * Self.iovPerMessage
        h.copyMemory(from: table.templates + Int(s.target) * 64, byteCount: t.constants.length)
        identification &+= 1
        OuterHeader.finish(h, t.constants, sourcePort: FlowHash.sourcePort(for: hash),
                           payloadLength: payloadLength, identification: identification, payloadSum: payloadSum)
        v[0] = iovec(iov_base: h, iov_len: t.constants.length)
        var hdr = msghdr()
        hdr.msg_name = UnsafeMutableRawPointer(table.addresses + Int(s.target))
        hdr.msg_namelen = t.addressLength
        hdr.msg_iov = v
        hdr.msg_iovlen = iovCount
        let meta = Meta(pair: s.pair, slot: s.slot, bytes: Int32(t.constants.length + payloadLength))
        if t.ipv6 {
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

    /// Sends what was built, one sendmmsg per address family.
    @inline(__always)
    private func flush() {
        if n4 > 0 { send(socket4, msgs4, meta4, n4) }
        if n6 > 0 { send(socket6, msgs6, meta6, n6) }
        k = 0
        n4 = 0
        n6 = 0
    }

    /// Sends `count` messages, resubmitting after partial sends. A full
    /// socket gets a bounded wait; what is still unsent when the budget is
    /// spent is dropped and counted, so the drain never blocks for long.
    @inline(__always)
    private func send(_ fd: Int32, _ msgs: UnsafeMutablePointer<CMirrorSys_mmsghdr>, _ meta: UnsafeMutablePointer<Meta>, _ count: Int) {
        var i = 0
        var deadline: UInt64 = 0
        while i < count {
            let r = CMirrorSys_sendmmsg(fd, msgs + i, UInt32(count - i), Int32(MSG_DONTWAIT))
            if r > 0 {
                for j in i..<(i + Int(r)) { counters.addSent(pair: Int(meta[j].pair), bytes: Int(meta[j].bytes)) }
                i += Int(r)
                continue
            }
            let err = -r
            if err == EAGAIN || err == ENOBUFS {
                counters.addBackpressureWait()
                let now = CMirrorSys_monotonic_ns()
                if deadline == 0 { deadline = now + settings.backpressureBudgetNanoseconds }
                if now >= deadline {
                    for j in i..<count { counters.addDrop(session: Int(meta[j].slot), .backpressure) }
                    return
                }
                _ = CMirrorSys_poll1(fd, Int16(POLLOUT), 1)
                continue
            }
            if err == EINTR { continue }
            // This message cannot go (EMSGSIZE, EHOSTUNREACH, ...): count it
            // and go on with the next.
            counters.addDrop(session: Int(meta[i].slot), .sendFailed)
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

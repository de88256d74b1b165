import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// Sends the copies the forwarder builds, as cheaply as the kernel allows.
///
/// A copy is a descriptor: an endpoint, its flow (hash and the UDP source
/// port the hash gives) and payload pieces (tunnel header and frame, in the
/// ring or in scratch). At a flush, copies of one flow to one endpoint with
/// the same length are joined into runs, in order; a run of two or more
/// leaves as one UDP GSO
/// message (UDP_SEGMENT) that the kernel cuts into datagrams, from a UDP
/// socket bound to that source port; a single copy leaves by the raw socket
/// of its family, many per sendmmsg. The copies of one flow keep their order;
/// only copies of different flows may pass each other.
///
/// Owned by the forwarding thread; nothing here allocates after init,
/// except opening a port's socket the first time that port is used.
final class Emitter {
    struct Descriptor {
        var endpoint: Int32
        var port: UInt16
        var hash: UInt32
        /// Payload bytes: tunnel header and frame.
        var length: Int32
        var piecesStart: Int32
        var pieces: Int32
        var group: Int32
        /// The next descriptor of the same run, or -1.
        var next: Int32
    }

    struct Run {
        var first: Int32
        var last: Int32
        var count: Int32
        var length: Int32
        var bytes: Int32
        var open: Bool
    }

    /// One mirrored packet (record, or segment of one): sent when any of its
    /// copies went.
    struct Group {
        var pair: Int32
        var slot: Int32
        var sent: Bool
        var failure: UserDropReason
    }

    /// Copies in one flush, and the scratch each packet may use.
    let capacity: Int
    static let scratchPerPacket = 64 + GSOSegmenter.maxHeaderLength
    /// Outer headers of single sends, one slot per descriptor.
    static let outerSlot = 64
    /// The kernel's limit of segments in one UDP GSO message.
    static let maxSegments = 64
    static let maxGSOBytes = 64_000

    let counters: ForwarderCounters
    let settings: Forwarder.Settings
    let socket4: Int32
    let socket6: Int32
    let mark: UInt32
    let own: OwnOutput

    private var table: ForwardingTable?
    private let descriptors: UnsafeMutablePointer<Descriptor>
    private let pieces: UnsafeMutablePointer<iovec>
    let scratch: UnsafeMutableRawPointer
    private let outer: UnsafeMutableRawPointer
    private let groups: UnsafeMutablePointer<Group>
    private let runs: UnsafeMutablePointer<Run>
    /// Open runs by (endpoint, flow hash): a small open-addressing table whose
    /// entries are valid only when their generation is the current one.
    private let runKeys: UnsafeMutablePointer<UInt64>
    private let runIndex: UnsafeMutablePointer<Int32>
    private let runGeneration: UnsafeMutablePointer<UInt32>
    private let tableSize: Int
    private var generation: UInt32 = 1
    private let msgIov: UnsafeMutablePointer<iovec>
    private let msgs4: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    private let msgs6: UnsafeMutablePointer<CMirrorSys_mmsghdr>
    /// Descriptor of each pending single message.
    private let meta4: UnsafeMutablePointer<Int32>
    private let meta6: UnsafeMutablePointer<Int32>
    private let gsoIov: UnsafeMutablePointer<iovec>
    private let gsoControl: UnsafeMutableRawPointer
    /// UDP sockets by source port, per family: -1 not opened, -2 unusable.
    private let gso4: UnsafeMutablePointer<Int32>
    private let gso6: UnsafeMutablePointer<Int32>

    private(set) var descriptorCount = 0
    private var piecesUsed = 0
    private var packets = 0
    private var runCount = 0
    private var n4 = 0, n6 = 0
    private var identification: UInt16 = 0
    /// When the current flush stops waiting for a full socket (0: it has
    /// not waited yet): one back-pressure budget per flush, however many
    /// sends it takes.
    private var deadline: UInt64 = 0
    var lastSendError: Int32 = 0
    var sendErrorsSinceLog = 0

    init(capacity: Int, counters: ForwarderCounters, settings: Forwarder.Settings, socket4: Int32, socket6: Int32, mark: UInt32, own: OwnOutput) {
        self.capacity = capacity
        self.counters = counters
        self.settings = settings
        self.socket4 = socket4
        self.socket6 = socket6
        self.mark = mark
        self.own = own
        descriptors = .allocate(capacity: capacity)
        pieces = .allocate(capacity: capacity * 3)
        scratch = .allocate(byteCount: capacity * Self.scratchPerPacket, alignment: 16)
        outer = .allocate(byteCount: capacity * Self.outerSlot, alignment: 16)
        groups = .allocate(capacity: capacity)
        runs = .allocate(capacity: capacity)
        tableSize = capacity * 2
        runKeys = .allocate(capacity: tableSize)
        runIndex = .allocate(capacity: tableSize)
        runGeneration = .allocate(capacity: tableSize)
        runGeneration.initialize(repeating: 0, count: tableSize)
        msgIov = .allocate(capacity: capacity * 4)
        msgs4 = .allocate(capacity: capacity)
        msgs6 = .allocate(capacity: capacity)
        msgs4.initialize(repeating: CMirrorSys_mmsghdr(), count: capacity)
        msgs6.initialize(repeating: CMirrorSys_mmsghdr(), count: capacity)
        meta4 = .allocate(capacity: capacity)
        meta6 = .allocate(capacity: capacity)
        gsoIov = .allocate(capacity: Self.maxSegments * 3)
        gsoControl = .allocate(byteCount: 64, alignment: 16)
        gso4 = .allocate(capacity: 65536)
        gso4.initialize(repeating: -1, count: 65536)
        gso6 = .allocate(capacity: 65536)
        gso6.initialize(repeating: -1, count: 65536)
    }

    deinit {
        for p in 0..<65536 {
            for fd in [gso4[p], gso6[p]] where fd >= 0 {
                own.forget(fd)
                _ = CMirrorSys_close(fd)
            }
        }
        descriptors.deallocate(); pieces.deallocate(); scratch.deallocate(); outer.deallocate()
        groups.deallocate(); runs.deallocate(); runKeys.deallocate(); runIndex.deallocate(); runGeneration.deallocate()
        msgIov.deallocate(); msgs4.deallocate(); msgs6.deallocate(); meta4.deallocate(); meta6.deallocate()
        gsoIov.deallocate(); gsoControl.deallocate(); gso4.deallocate(); gso6.deallocate()
    }

    // MARK: building

    /// Makes room for one packet of `copies` copies; returns the packet's
    /// scratch and its (up to three) payload pieces to fill.
    @inline(__always)
    func beginPacket(copies: Int, table t: ForwardingTable) -> (scratch: UnsafeMutableRawPointer, pieces: UnsafeMutablePointer<iovec>) {
        if descriptorCount + copies > capacity || piecesUsed + 3 > capacity * 3 { flush() }
        // Assigned only on a change: a store would retain and release the
        // table once per packet.
        if table !== t {
            flush()
            table = t
        }
        return (scratch + packets * Self.scratchPerPacket, pieces + piecesUsed)
    }

    /// Adds the packet begun last: one group, and a copy for each of
    /// `endpoints[0..<copies]`.
    @inline(__always)
    func addPacket(_ s: ForwardingTable.SessionInfo, endpoints: UnsafePointer<Int32>, copies: Int, pieces n: Int,
                   length: Int, hash: UInt32) {
        groups[packets] = Group(pair: s.pair, slot: s.slot, sent: false, failure: .sendFailed)
        let port = FlowHash.sourcePort(for: hash)
        for c in 0..<copies {
            descriptors[descriptorCount] = Descriptor(
                endpoint: endpoints[c], port: port, hash: hash, length: Int32(length), piecesStart: Int32(piecesUsed),
                pieces: Int32(n), group: Int32(packets), next: -1)
            descriptorCount += 1
        }
        piecesUsed += n
        packets += 1
    }

    // MARK: sending

    /// Sends everything built, then counts each packet once.
    func flush() {
        guard descriptorCount > 0, let table else { return }
        deadline = 0
        formRuns()
        for r in 0..<runCount {
            let run = runs[r]
            let d0 = descriptors[Int(run.first)]
            if run.count >= 2, settings.udpGSO, let fd = gsoSocket(table, endpoint: Int(d0.endpoint), port: d0.port) {
                // Copies built before this run may be waiting as singles;
                // send them first so a flow's order holds.
                sendSingles(table)
                sendRun(table, run, fd: fd)
            } else {
                var d = Int(run.first)
                while d >= 0 {
                    addSingle(table, d)
                    d = Int(descriptors[d].next)
                }
            }
        }
        sendSingles(table)
        for i in 0..<packets {
            let grp = groups[i]
            if grp.sent {
                counters.addSentPacket(pair: Int(grp.pair))
            } else {
                counters.addDrop(session: Int(grp.slot), grp.failure)
            }
        }
        descriptorCount = 0
        piecesUsed = 0
        packets = 0
        runCount = 0
        generation &+= 1
        if generation == 0 {
            runGeneration.update(repeating: 0, count: tableSize)
            generation = 1
        }
    }

    /// Joins copies into runs: same endpoint and flow, equal lengths (the
    /// last may be shorter), in order, within the GSO limits.
    private func formRuns() {
        for d in 0..<descriptorCount {
            let desc = descriptors[d]
            let key = UInt64(UInt32(bitPattern: desc.endpoint)) << 32 | UInt64(desc.hash)
            var slot = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 40) % tableSize
            while runGeneration[slot] == generation && runKeys[slot] != key { slot = slot + 1 == tableSize ? 0 : slot + 1 }
            if runGeneration[slot] == generation {
                let r = Int(runIndex[slot])
                var run = runs[r]
                if run.open && run.count < Self.maxSegments && desc.length <= run.length
                    && Int(run.bytes) + Int(desc.length) <= Self.maxGSOBytes {
                    descriptors[Int(run.last)].next = Int32(d)
                    run.last = Int32(d)
                    run.count += 1
                    run.bytes += desc.length
                    // Only the last segment may be shorter.
                    if desc.length < run.length { run.open = false }
                    runs[r] = run
                    continue
                }
            }
            runs[runCount] = Run(first: Int32(d), last: Int32(d), count: 1, length: desc.length, bytes: desc.length, open: true)
            runGeneration[slot] = generation
            runKeys[slot] = key
            runIndex[slot] = Int32(runCount)
            runCount += 1
        }
    }

    /// Queues one copy for its family's raw socket, with an outer header
    /// from the endpoint's template.
    @inline(__always)
    private func addSingle(_ table: ForwardingTable, _ d: Int) {
        let desc = descriptors[d]
        let e = Int(desc.endpoint)
        let ep = table.endpointInfo[e]
        if (ep.ipv6 ? n6 : n4) == capacity { sendSingles(table) }
        let h = outer + d * Self.outerSlot
        h.copyMemory(from: table.templates + e * 64, byteCount: ep.constants.length)
        var sum: UInt64 = 0
        if ep.ipv6 {
            var c = InternetChecksum()
            for p in 0..<Int(desc.pieces) {
                let piece = pieces[Int(desc.piecesStart) + p]
                c.add(UnsafeRawBufferPointer(start: piece.iov_base, count: piece.iov_len))
            }
            sum = c.sum
        }
        identification &+= 1
        OuterHeader.finish(h, ep.constants, sourcePort: desc.port, payloadLength: Int(desc.length),
                           identification: identification, payloadSum: sum)
        let v = msgIov + d * 4
        v[0] = iovec(iov_base: h, iov_len: ep.constants.length)
        for p in 0..<Int(desc.pieces) { v[1 + p] = pieces[Int(desc.piecesStart) + p] }
        var hdr = msghdr()
        hdr.msg_name = UnsafeMutableRawPointer(table.addresses + e)
        hdr.msg_namelen = ep.addressLength
        hdr.msg_iov = v
        hdr.msg_iovlen = Int(desc.pieces) + 1
        if ep.ipv6 {
            msgs6[n6] = CMirrorSys_mmsghdr(msg_hdr: hdr, msg_len: 0)
            meta6[n6] = Int32(d)
            n6 += 1
        } else {
            msgs4[n4] = CMirrorSys_mmsghdr(msg_hdr: hdr, msg_len: 0)
            meta4[n4] = Int32(d)
            n4 += 1
        }
    }

    private func sendSingles(_ table: ForwardingTable) {
        if n4 > 0 { sendSingles(socket4, msgs4, meta4, n4, table) }
        if n6 > 0 { sendSingles(socket6, msgs6, meta6, n6, table) }
        n4 = 0
        n6 = 0
    }

    /// sendmmsg, resubmitting after partial sends. A full socket gets a
    /// bounded wait; what is unsent when the budget is spent fails with
    /// backpressure, so the drain never blocks for long.
    private func sendSingles(_ fd: Int32, _ msgs: UnsafeMutablePointer<CMirrorSys_mmsghdr>, _ meta: UnsafeMutablePointer<Int32>,
                             _ count: Int, _ table: ForwardingTable) {
        var i = 0
        while i < count {
            let r = CMirrorSys_sendmmsg(fd, msgs + i, UInt32(count - i), Int32(MSG_DONTWAIT))
            if r > 0 {
                for j in i..<(i + Int(r)) { sent(table, Int(meta[j])) }
                i += Int(r)
                continue
            }
            let err = -r
            if err == EAGAIN || err == ENOBUFS {
                if waitWritable(fd) { continue }
                for j in i..<count { failed(table, Int(meta[j]), .backpressure) }
                return
            }
            if err == EINTR { continue }
            // This message cannot go (EMSGSIZE, EHOSTUNREACH, ...): note it
            // and go on with the next.
            failed(table, Int(meta[i]), .sendFailed)
            lastSendError = err
            sendErrorsSinceLog += 1
            i += 1
        }
    }

    /// One UDP GSO message for a run: the payloads back to back, cut by the
    /// kernel every `run.length` bytes. A message the kernel refuses as such
    /// (EIO, EINVAL: a device or path that cannot segment it) goes as single
    /// copies instead.
    private func sendRun(_ table: ForwardingTable, _ run: Run, fd: Int32) {
        var n = 0
        var d = Int(run.first)
        while d >= 0 {
            let desc = descriptors[d]
            for p in 0..<Int(desc.pieces) {
                gsoIov[n] = pieces[Int(desc.piecesStart) + p]
                n += 1
            }
            d = Int(desc.next)
        }
        let e = Int(descriptors[Int(run.first)].endpoint)
        let ep = table.endpointInfo[e]
        var hdr = msghdr()
        hdr.msg_name = UnsafeMutableRawPointer(table.udpAddresses + e)
        hdr.msg_namelen = ep.addressLength
        hdr.msg_iov = gsoIov
        hdr.msg_iovlen = n
        // struct cmsghdr { len, level, type } + the u16 segment size.
        let cmsgLength = MemoryLayout<cmsghdr>.size + 2
        gsoControl.initializeMemory(as: UInt8.self, repeating: 0, count: 64)
        gsoControl.storeBytes(of: cmsgLength, as: Int.self)
        gsoControl.storeBytes(of: Self.SOL_UDP_VALUE, toByteOffset: MemoryLayout<Int>.size, as: Int32.self)
        gsoControl.storeBytes(of: Self.UDP_SEGMENT_VALUE, toByteOffset: MemoryLayout<Int>.size + 4, as: Int32.self)
        gsoControl.storeBytes(of: UInt16(run.length), toByteOffset: MemoryLayout<cmsghdr>.size, as: UInt16.self)
        hdr.msg_control = gsoControl
        hdr.msg_controllen = (cmsgLength + 7) & ~7
        while true {
            let r = CMirrorSys_sendmsg(fd, &hdr, Int32(MSG_DONTWAIT))
            if r >= 0 {
                var d = Int(run.first)
                while d >= 0 { sent(table, d); d = Int(descriptors[d].next) }
                return
            }
            let err = -r
            if err == EINTR { continue }
            if (err == EAGAIN || err == ENOBUFS) && waitWritable(fd) { continue }
            if err == EIO || err == EINVAL {
                counters.addGSOFallback()
                var d = Int(run.first)
                while d >= 0 { addSingle(table, d); d = Int(descriptors[d].next) }
                sendSingles(table)
                return
            }
            let reason: UserDropReason = err == EAGAIN || err == ENOBUFS ? .backpressure : .sendFailed
            if reason == .sendFailed {
                lastSendError = err
                sendErrorsSinceLog += 1
            }
            var d = Int(run.first)
            while d >= 0 { failed(table, d, reason); d = Int(descriptors[d].next) }
            return
        }
    }

    /// Waits up to the backpressure budget (from the flush's first wait)
    /// for room.
    @inline(__always)
    private func waitWritable(_ fd: Int32) -> Bool {
        counters.addBackpressureWait()
        let now = CMirrorSys_monotonic_ns()
        if deadline == 0 { deadline = now + settings.backpressureBudgetNanoseconds }
        if now >= deadline { return false }
        _ = CMirrorSys_poll1(fd, Int16(POLLOUT), 1)
        return true
    }

    @inline(__always)
    private func sent(_ table: ForwardingTable, _ d: Int) {
        let desc = descriptors[d]
        let ep = table.endpointInfo[Int(desc.endpoint)]
        groups[Int(desc.group)].sent = true
        counters.addSentBytes(pair: Int(groups[Int(desc.group)].pair), endpoint: Int(ep.counter),
                              bytes: ep.constants.length + Int(desc.length))
    }

    @inline(__always)
    private func failed(_ table: ForwardingTable, _ d: Int, _ reason: UserDropReason) {
        let desc = descriptors[d]
        groups[Int(desc.group)].failure = reason
        counters.addEndpointError(endpoint: Int(table.endpointInfo[Int(desc.endpoint)].counter))
    }

    static let SOL_UDP_VALUE: Int32 = 17
    static let UDP_SEGMENT_VALUE: Int32 = 103

    /// The UDP socket that sends a run from source `port` toward `endpoint`'s
    /// family, opened the first time; nil when the port cannot be had (an
    /// application holds it), and then copies go one by one.
    @inline(__always)
    private func gsoSocket(_ table: ForwardingTable, endpoint e: Int, port: UInt16) -> Int32? {
        let v6 = table.endpointInfo[e].ipv6
        let pool = v6 ? gso6 : gso4
        let existing = pool[Int(port)]
        if existing >= 0 { return existing }
        if existing == -2 { return nil }
        let fd = openGSOSocket(v6: v6, port: port)
        pool[Int(port)] = fd >= 0 ? fd : -2
        return fd >= 0 ? fd : nil
    }

    private func openGSOSocket(v6: Bool, port: UInt16) -> Int32 {
        let fd = CMirrorSys_socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return -1 }
        // Marked like every copy, never fragmented, and never reading.
        if mark != 0 { _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark)) }
        if v6 {
            _ = CMirrorSys_setsockopt_int(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1)
            _ = CMirrorSys_setsockopt_int(fd, Int32(IPPROTO_IPV6), 23 /* IPV6_MTU_DISCOVER */, 3 /* IPV6_PMTUDISC_PROBE */)
        } else {
            _ = CMirrorSys_setsockopt_int(fd, Int32(IPPROTO_IP), 10 /* IP_MTU_DISCOVER */, 3 /* IP_PMTUDISC_PROBE */)
        }
        if CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20) != 0 {
            _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_SNDBUF, 4 << 20)
        }
        _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_RCVBUF, 1)
        var storage = sockaddr_storage()
        let len = TargetResolver.fill(&storage, v6 ? .v6([UInt8](repeating: 0, count: 16)) : .v4([0, 0, 0, 0]), port: port)
        let rc = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_bind(fd, $0, len) } }
        guard rc == 0, (try? own.register(fd)) != nil else {
            _ = CMirrorSys_close(fd)
            return -1
        }
        return fd
    }
}

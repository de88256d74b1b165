import CMirrorBPF
import CMirrorSys
import MirrorCore

/// The per-CPU ring buffers, mapped for consuming without libbpf's callback
/// loop: records are read in place and released only after they are sent,
/// so the sender reads them straight from the ring (no copy), and the
/// kernel counts ring_full as soon as the agent falls behind.
///
/// Single consumer: only the forwarding thread may call `collect`/`release`.
public final class RingSet: @unchecked Sendable {
    // @unchecked: the mappings are touched by the forwarding thread only;
    // `wake()` writes an eventfd, which is thread-safe.

    public let count: Int
    /// The CPU of each ring: those online at start (a CPU that comes online
    /// later has no ring; its hooks count `no_ring`).
    public let cpus: [Int]
    /// The NUMA node of those CPUs, where the rings' memory lives.
    public let node: Int?
    public let bytesPerRing: UInt32
    let rings: UnsafeMutablePointer<CMirrorBPF_ring>
    /// Read position per ring, ahead of the released consumer position.
    let cursor: UnsafeMutablePointer<UInt64>
    let fds: [Int32]
    let epoll: Int32
    let wakeFD: Int32
    /// What epoll reports: ring numbers, UInt32.max for the eventfd.
    let tags: UnsafeMutablePointer<UInt32>
    /// The merge's min-heap of committed heads (stamp, ring) and the rings
    /// whose head is reserved but not committed; allocated once.
    let heapTime: UnsafeMutablePointer<UInt64>
    let heapRing: UnsafeMutablePointer<UInt32>
    let busy: UnsafeMutablePointer<UInt32>
    var heapCount = 0
    var busyCount = 0

    /// Creates one ring per online CPU and puts it in the program's ring
    /// array (indexed by CPU); the hooks may be attached afterwards.
    public convenience init(program: MirrorProgram) throws(SystemError) {
        try self.init(program: program, cpus: MirrorProgram.onlineCPUs().filter { $0 < program.cpuCount })
    }

    /// One ring for each of `cpus` (a CPU may repeat: `tm-bench merge`
    /// simulates a host of many CPUs by giving one CPU many rings, each put
    /// in the program's array in turn with `point(cpu:ring:)`), its memory
    /// on NUMA node `node` when one is given (the node of those CPUs).
    public init(program: MirrorProgram, cpus: [Int], node: Int? = nil) throws(SystemError) {
        self.cpus = cpus
        self.node = node
        count = cpus.count
        bytesPerRing = program.settings.ringBytes
        rings = .allocate(capacity: count)
        rings.initialize(repeating: CMirrorBPF_ring(), count: count)
        cursor = .allocate(capacity: count)
        cursor.initialize(repeating: 0, count: count)
        var fds = [Int32]()
        var ep: Int32 = -1, wk: Int32 = -1
        do throws(SystemError) {
            ep = try SystemError.check(CMirrorSys_epoll_create(), "epoll_create1")
            wk = try SystemError.check(CMirrorSys_eventfd(), "eventfd")
            try SystemError.check(CMirrorSys_epoll_add(ep, wk, UInt32.max), "epoll_ctl(eventfd)")
            for (r, cpu) in cpus.enumerated() {
                let fd = try SystemError.check(CMirrorBPF_ringbuf_create("tm_ring", bytesPerRing, Int32(node ?? -1)), "creating the ring buffer of CPU \(cpu)")
                fds.append(fd)
                var key = UInt32(cpu)
                var value = fd
                try SystemError.check(CMirrorBPF_map_update(program.ringsMap, &key, &value, 0), "tm_rings[\(cpu)]")
                try SystemError.check(CMirrorBPF_ring_map(fd, bytesPerRing, rings + r), "mmap of ring \(cpu)")
                cursor[r] = rings[r].consumer_pos.pointee
                try SystemError.check(CMirrorSys_epoll_add(ep, fd, UInt32(r)), "epoll_ctl(ring \(cpu))")
            }
        } catch {
            for r in 0..<count { CMirrorBPF_ring_unmap(rings + r) }
            for fd in fds { _ = CMirrorSys_close(fd) }
            if ep >= 0 { _ = CMirrorSys_close(ep) }
            if wk >= 0 { _ = CMirrorSys_close(wk) }
            rings.deallocate()
            cursor.deallocate()
            throw error
        }
        self.fds = fds
        epoll = ep
        wakeFD = wk
        tags = .allocate(capacity: 8)
        heapTime = .allocate(capacity: count)
        heapRing = .allocate(capacity: count)
        busy = .allocate(capacity: count)
    }

    deinit {
        for cpu in 0..<count { CMirrorBPF_ring_unmap(rings + cpu) }
        for fd in fds { _ = CMirrorSys_close(fd) }
        _ = CMirrorSys_close(epoll)
        _ = CMirrorSys_close(wakeFD)
        rings.deallocate()
        cursor.deallocate()
        tags.deallocate()
        heapTime.deallocate()
        heapRing.deallocate()
        busy.deallocate()
    }

    /// Makes `cpu`'s hooks write into ring `r`.
    public func point(cpu: Int, ring r: Int, program: MirrorProgram) throws(SystemError) {
        var key = UInt32(cpu)
        var value = fds[r]
        try SystemError.check(CMirrorBPF_map_update(program.ringsMap, &key, &value, 0), "tm_rings[\(cpu)]")
    }

    /// The fd of the first ring and its CPU (for the RCU barrier of
    /// `MirrorProgram`).
    public var firstRingFD: Int32 { fds[0] }
    public var firstRingCPU: UInt32 { UInt32(cpus[0]) }

    /// Appends up to `max` records to `batch` in the order the hooks saw
    /// them: the rings are merged by the timestamp each record carries, so
    /// the copies of one connection keep their order even when its two
    /// directions run on different CPUs. Returns how many it added.
    ///
    /// A hook stamps its record after reserving it, so a record another CPU
    /// has not reserved yet will be stamped later than now: only records
    /// stamped before this call began are taken (later ones wait for the
    /// next call), and while another ring's head is reserved but not yet
    /// committed, its stamp is unknown, so the merge waits for it (a few
    /// microseconds; at most `commitWaitNanoseconds`).
    ///
    /// The heads wait in a min-heap by stamp: each record costs O(log
    /// rings) where the rings interleave record by record and two
    /// comparisons within a run of one ring's records (its next head
    /// replaces it at the top); a call costs O(rings) once, to look at every
    /// head.
    @inline(__always)
    public func collect(into batch: inout RecordBatch, max: Int) -> Int {
        if count == 1 { return collectInOrder(ring: 0, into: &batch, max: max) }
        let horizon = CMirrorSys_monotonic_ns()
        heapCount = 0
        busyCount = 0
        for r in 0..<count { offer(r, horizon: horizon) }
        var waitUntil: UInt64 = 0
        var added = 0
        while added < max && heapCount > 0 {
            if busyCount > 0 {
                // A ring's head is being written: its stamp may be older
                // than every head in the heap.
                var i = 0
                while i < busyCount {
                    let r = Int(busy[i])
                    var stillBusy = false
                    if head(r, busy: &stillBusy) != nil || !stillBusy {
                        busyCount -= 1
                        busy[i] = busy[busyCount]
                        offer(r, horizon: horizon)
                    } else {
                        i += 1
                    }
                }
                if busyCount > 0 {
                    let now = CMirrorSys_monotonic_ns()
                    if waitUntil == 0 { waitUntil = now + Self.commitWaitNanoseconds }
                    if now < waitUntil { continue }
                    busyCount = 0 // order gives way to progress
                }
            }
            let r = Int(heapRing[0])
            take(ring: r, into: &batch)
            added += 1
            // The ring's next head replaces it at the top: while one ring's
            // records come before every other head (a burst of one CPU),
            // that costs two comparisons, not a pop and a push.
            if let t = eligibleHead(r, horizon: horizon) {
                heapTime[0] = t
                siftDown(0)
            } else {
                heapCount -= 1
                if heapCount > 0 {
                    heapRing[0] = heapRing[heapCount]
                    heapTime[0] = heapTime[heapCount]
                    siftDown(0)
                }
            }
        }
        return added
    }

    /// The stamp of ring r's head when it is committed and stamped before
    /// `horizon`; nil otherwise (a head being written goes to the busy list).
    @inline(__always)
    private func eligibleHead(_ r: Int, horizon: UInt64) -> UInt64? {
        var pending = false
        guard let head = head(r, busy: &pending) else {
            if pending {
                busy[busyCount] = UInt32(r)
                busyCount += 1
            }
            return nil
        }
        let t = head.loadUnaligned(fromByteOffset: Int(CMIRRORBPF_RING_HDR_SIZE) + RecordLayout.tstamp, as: UInt64.self)
        return t < horizon ? t : nil
    }

    /// Puts ring r's head in the heap when it is committed and stamped
    /// before `horizon`, or in the busy list when it is being written.
    @inline(__always)
    private func offer(_ r: Int, horizon: UInt64) {
        guard let t = eligibleHead(r, horizon: horizon) else { return }
        var i = heapCount
        heapCount += 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heapTime[parent] > t else { break }
            heapTime[i] = heapTime[parent]
            heapRing[i] = heapRing[parent]
            i = parent
        }
        heapTime[i] = t
        heapRing[i] = UInt32(r)
    }

    @inline(__always)
    private func siftDown(_ start: Int) {
        var i = start
        let t = heapTime[i], r = heapRing[i]
        while true {
            var child = 2 * i + 1
            guard child < heapCount else { break }
            if child + 1 < heapCount && heapTime[child + 1] < heapTime[child] { child += 1 }
            guard heapTime[child] < t else { break }
            heapTime[i] = heapTime[child]
            heapRing[i] = heapRing[child]
            i = child
        }
        heapTime[i] = t
        heapRing[i] = r
    }

    /// How long the merge waits for a record another CPU is writing; past
    /// it (that CPU was preempted mid-hook) order gives way to progress.
    static let commitWaitNanoseconds: UInt64 = 50_000

    /// The header of ring r's next committed record, skipping discarded
    /// ones; nil when there is none yet (`busy` set when one is reserved
    /// but not committed).
    @inline(__always)
    private func head(_ r: Int, busy: inout Bool) -> UnsafeRawPointer? {
        let ring = rings[r]
        let producer = CMirrorBPF_load_acquire_u64(ring.producer_pos)
        while cursor[r] < producer {
            let header = UnsafeRawPointer(ring.data + Int(cursor[r] & ring.mask))
            let word = CMirrorBPF_load_acquire_u32(header)
            if word & CMIRRORBPF_RING_BUSY_BIT != 0 {
                busy = true
                return nil
            }
            if word & CMIRRORBPF_RING_DISCARD_BIT == 0 { return header }
            cursor[r] += Self.advance(word)
        }
        return nil
    }

    @inline(__always)
    private static func advance(_ word: UInt32) -> UInt64 {
        let length = Int(word & ~(CMIRRORBPF_RING_BUSY_BIT | CMIRRORBPF_RING_DISCARD_BIT))
        return UInt64((length + Int(CMIRRORBPF_RING_HDR_SIZE) + 7) & ~7)
    }

    /// Appends ring r's head record (which `head` found) and moves past it.
    @inline(__always)
    private func take(ring r: Int, into batch: inout RecordBatch) {
        let header = UnsafeRawPointer(rings[r].data + Int(cursor[r] & rings[r].mask))
        let word = header.load(as: UInt32.self)
        let length = Int(word & ~(CMIRRORBPF_RING_BUSY_BIT | CMIRRORBPF_RING_DISCARD_BIT))
        // The data area is mapped twice, so a record never wraps.
        batch.append(RecordView(base: header + Int(CMIRRORBPF_RING_HDR_SIZE), length: length))
        cursor[r] += Self.advance(word)
    }

    @inline(__always)
    private func collectInOrder(ring r: Int, into batch: inout RecordBatch, max: Int) -> Int {
        var added = 0
        var busy = false
        while added < max, head(r, busy: &busy) != nil {
            take(ring: r, into: &batch)
            added += 1
        }
        return added
    }

    /// Gives every collected record's space back to the kernel.
    @inline(__always)
    public func release() {
        for r in 0..<count {
            let pos = cursor[r]
            if rings[r].consumer_pos.pointee != pos {
                CMirrorBPF_store_release_u64(rings[r].consumer_pos, pos)
            }
        }
    }

    /// Whether any ring holds records not collected yet.
    public var hasPending: Bool {
        for r in 0..<count where CMirrorBPF_load_acquire_u64(rings[r].producer_pos) != cursor[r] {
            return true
        }
        return false
    }

    /// Where each ring's producer is now: every record committed so far
    /// lies before these positions.
    public func producerPositions() -> [UInt64] {
        (0..<count).map { CMirrorBPF_load_acquire_u64(rings[$0].producer_pos) }
    }

    /// Whether the forwarding thread has sent and released every record
    /// before `positions`.
    public func released(upTo positions: [UInt64]) -> Bool {
        for r in 0..<count where CMirrorBPF_load_acquire_u64(rings[r].consumer_pos) < positions[r] {
            return false
        }
        return true
    }

    /// Sleeps until the timeout, `wake()`, or a ring's backlog reaching
    /// the program's wakeup watermark (records below it wake nobody).
    public func wait(nanoseconds: UInt64) {
        let n = Int(CMirrorSys_epoll_wait(epoll, tags, 8, nanoseconds))
        for i in 0..<max(0, n) where tags[i] == UInt32.max {
            _ = CMirrorSys_eventfd_drain(wakeFD)
        }
    }

    /// Interrupts `wait` from any thread.
    public func wake() {
        _ = CMirrorSys_eventfd_signal(wakeFD)
    }

    /// Bytes waiting in each ring (for metrics).
    public func backlog() -> [UInt64] {
        (0..<count).map { r in
            CMirrorBPF_load_acquire_u64(rings[r].producer_pos) &- CMirrorBPF_load_acquire_u64(rings[r].consumer_pos)
        }
    }
}

/// Records collected for one send: pointers into the rings, allocated once.
public struct RecordBatch: ~Copyable {
    public let capacity: Int
    public private(set) var count = 0
    let records: UnsafeMutablePointer<RecordView>

    public init(capacity: Int) {
        self.capacity = capacity
        records = .allocate(capacity: capacity)
    }

    deinit {
        records.deallocate()
    }

    @inline(__always)
    mutating func append(_ r: RecordView) {
        records.advanced(by: count).initialize(to: r)
        count += 1
    }

    @inline(__always)
    public subscript(i: Int) -> RecordView { records[i] }

    @inline(__always)
    public mutating func removeAll() { count = 0 }
}

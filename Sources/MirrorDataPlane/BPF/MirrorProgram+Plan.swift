import CMirrorBPF
import Glibc
import MirrorCore

/// A session as the kernel needs it: limits already resolved against the
/// target's MTU, the tunnel header already built.
public struct KernelSession: Sendable, Equatable {
    public var lengthLimit: UInt32
    public var mtuLimit: UInt32
    public var sampleEvery: UInt32
    public var rate: UInt64
    public var burst: UInt64
    public var rateBits: Bool
    public var tunnelHeader: [UInt8]
    /// packet_length after a layer (enum tm_slice_after), and its bytes;
    /// lengthLimit is then the fallback.
    public var sliceAfter: UInt16 = 0
    public var sliceBytes: UInt16 = 0
    /// A window of CLOCK_MONOTONIC and limits, counted at `usageSlot`.
    public var bounded = false
    public var startNanoseconds: UInt64 = 0
    public var stopNanoseconds: UInt64 = .max
    public var maxPackets: UInt64 = 0
    public var maxBytes: UInt64 = 0
    public var usageSlot: UInt32 = 0
    public var dedupWindowNanoseconds: UInt64 = 0

    public init(lengthLimit: UInt32 = 0, mtuLimit: UInt32 = 0, sampleEvery: UInt32 = 0, rate: UInt64 = 0,
                burst: UInt64 = 0, rateBits: Bool = false, tunnelHeader: [UInt8]) {
        self.lengthLimit = lengthLimit
        self.mtuLimit = mtuLimit
        self.sampleEvery = sampleEvery
        self.rate = rate
        self.burst = burst
        self.rateBits = rateBits
        self.tunnelHeader = tunnelHeader
    }
}

extension MirrorProgram {
    // MARK: slots

    /// Registers interface `ifindex` of the namespace with cookie `netns`.
    public func setSlot(netns: UInt64, ifindex: UInt32, slot: UInt32) throws(SystemError) {
        var k = tm_slot_key(netns: netns, ifindex: ifindex, pad: 0), v = slot
        try SystemError.check(CMirrorBPF_map_update(slotsMap, &k, &v, 0), "adding interface \(ifindex) to tm_slots")
    }

    public func removeSlot(netns: UInt64, ifindex: UInt32) {
        var k = tm_slot_key(netns: netns, ifindex: ifindex, pad: 0)
        _ = CMirrorBPF_map_delete(slotsMap, &k)
    }

    // MARK: plan banks

    /// The bank the hooks read now.
    public func activeBank() throws(SystemError) -> Int {
        var k: UInt32 = 0
        var c = tm_control()
        try SystemError.check(CMirrorBPF_map_lookup(controlMap, &k, &c), "reading tm_control")
        return Int(c.active_bank & 1)
    }

    /// Points the hooks at `bank` with one map write: each packet reads the
    /// bank once, so none sees half of one plan and half of another.
    public func activate(bank: Int) throws(SystemError) {
        var k: UInt32 = 0
        var c = tm_control()
        _ = CMirrorBPF_map_lookup(controlMap, &k, &c)
        c.active_bank = UInt32(bank)
        c.generation &+= 1
        try SystemError.check(CMirrorBPF_map_update(controlMap, &k, &c, 0), "switching tm_control to bank \(bank)")
    }

    /// Returns once every hook invocation that started before the call has
    /// finished. Updating a map-in-map entry makes the kernel wait for an
    /// RCU grace period (maybe_wait_bpf_programs), and the hooks run inside
    /// RCU read sections; re-storing ring 0 is a no-op otherwise.
    public func waitForRunningHooks(ring0: Int32, cpu: UInt32 = 0) throws(SystemError) {
        var k = cpu
        var fd = ring0
        try SystemError.check(CMirrorBPF_map_update(ringsMap, &k, &fd, 0), "RCU barrier on tm_rings")
    }

    /// Writes sessions, scopes and classifier tables into `bank`, which the
    /// hooks must not be reading. `slots` maps interface names to slots.
    public func install(
        plan: MirrorPlan, sessions: [KernelSession], slots: [String: UInt32], bank: Int
    ) throws(SystemError) {
        precondition(sessions.count == plan.sessions.count && sessions.count <= Int(TM_MAX_SESSIONS))
        // Sessions: write the plan's, deactivate the rest of the bank.
        for i in 0..<Int(TM_MAX_SESSIONS) {
            var key = UInt32(bank * Int(TM_MAX_SESSIONS) + i)
            var v = tm_session()
            if i < sessions.count {
                let s = sessions[i]
                v.flags = UInt32(TM_SESSION_ACTIVE.rawValue) | (plan.sessions[i].filter != nil ? UInt32(TM_SESSION_FILTERED.rawValue) : 0)
                v.length_limit = s.lengthLimit
                v.mtu_limit = s.mtuLimit
                v.sample_every = s.sampleEvery
                v.rate = s.rate
                v.burst = s.burst
                v.rate_bits = s.rateBits ? 1 : 0
                withUnsafeMutableBytes(of: &v.tunnel_hdr) { $0.copyBytes(from: s.tunnelHeader.prefix(8)) }
                v.slice_after = s.sliceAfter
                v.slice_bytes = s.sliceBytes
                if s.bounded { v.flags |= UInt32(TM_SESSION_BOUNDED.rawValue) }
                v.start_ns = s.startNanoseconds
                v.stop_ns = s.stopNanoseconds
                v.max_packets = s.maxPackets
                v.max_bytes = s.maxBytes
                v.usage_slot = s.usageSlot
                v.dedup_window_ns = s.dedupWindowNanoseconds
            }
            try SystemError.check(CMirrorBPF_map_update(sessionsMap, &key, &v, 0), "writing tm_sessions[\(key)]")
        }
        try resetSessionState(bank: bank)

        try profiles.withLock { (t: inout ProfileTable) throws(SystemError) in
            try installProfiles(plan, slots: slots, bank: bank, table: &t)
        }
    }

    /// Which kernel profile holds which compiled profile, and what each
    /// bank's scopes point at. A profile that the other bank (the one the
    /// hooks read) uses is never rewritten.
    struct ProfileTable {
        var index: [MirrorPlan.Profile: UInt32] = [:]
        var content: [UInt32: MirrorPlan.Profile] = [:]
        var free: [UInt32] = (1..<UInt32(TM_MAX_PROFILES)).reversed()
        var scopes: [[UInt32]] = Array(repeating: Array(repeating: 0, count: Int(TM_MAX_SLOTS) * Int(TM_DIR_COUNT.rawValue)),
                                       count: Int(TM_BANKS))

        func used(_ bank: Int) -> Set<UInt32> { Set(scopes[bank]).subtracting([0]) }
    }

    /// Writes `bank`'s scopes, and the profiles they need that the kernel
    /// does not hold yet; frees the profiles that neither bank uses any more.
    private func installProfiles(_ plan: MirrorPlan, slots: [String: UInt32], bank: Int, table t: inout ProfileTable) throws(SystemError) {
        let wanted = Set(plan.profiles.filter { !$0.sessions.isEmpty })
        let inUse = t.used(1 - bank)
        for k in t.used(bank).subtracting(inUse) {
            guard let p = t.content[k], !wanted.contains(p) else { continue }
            var key = k
            for outer in [valueClassesMap, addressBoundsMap, classBitsMap] { _ = CMirrorBPF_map_delete(outer, &key) }
            t.index[p] = nil
            t.content[k] = nil
            t.free.append(k)
        }
        var kernel = [UInt32](repeating: 0, count: plan.profiles.count)
        for (i, p) in plan.profiles.enumerated() where !p.sessions.isEmpty {
            if let k = t.index[p] {
                kernel[i] = k
                continue
            }
            guard let k = t.free.popLast() else {
                throw SystemError("allocating a profile (all \(TM_MAX_PROFILES - 1) of tm_profiles in use)", errno: ENOSPC)
            }
            do throws(SystemError) {
                var key = k
                if let tables = p.tables {
                    try installTables(tables, profile: k)
                } else {
                    for outer in [valueClassesMap, addressBoundsMap, classBitsMap] { _ = CMirrorBPF_map_delete(outer, &key) }
                }
                var bytes = Self.profileBytes(p)
                try SystemError.check(bytes.withUnsafeMutableBytes { CMirrorBPF_map_update(profilesMap, &key, $0.baseAddress, 0) },
                                      "writing tm_profiles[\(k)]")
            } catch {
                t.free.append(k)
                throw error
            }
            t.index[p] = k
            t.content[k] = p
            kernel[i] = k
        }
        var desired = [UInt32](repeating: 0, count: t.scopes[bank].count)
        for scope in plan.scopes {
            guard let slot = slots[scope.interface] else { continue }
            desired[Int(slot) * Int(TM_DIR_COUNT.rawValue) + scope.direction.index] = kernel[scope.profile]
        }
        for (i, v) in desired.enumerated() where t.scopes[bank][i] != v {
            var key = UInt32(bank) * UInt32(t.scopes[bank].count) + UInt32(i)
            var value = v
            try SystemError.check(CMirrorBPF_map_update(scopeProfilesMap, &key, &value, 0), "writing tm_scope_profiles[\(key)]")
            t.scopes[bank][i] = v
        }
    }

    /// Creates one profile's three tables, fills them and stores them in the
    /// outer maps (which hold them from then on: our descriptors close).
    func installTables(_ tables: MirrorPlan.Tables, profile: UInt32) throws(SystemError) {
        // Classes are 16 bits wide (the plan's budget keeps them far below).
        precondition(tables.bitmaps.count <= 1 << 16, "\(tables.bitmaps.count) bitmaps in one profile")
        var classes = Self.valueClasses(tables)
        var bits = [UInt8](repeating: 0, count: MemoryLayout<tm_bits>.size * tables.bitmaps.count)
        bits.withUnsafeMutableBytes { raw in
            let summary = MemoryLayout<tm_bits>.offset(of: \.nonzero)!
            for (c, bitmap) in tables.bitmaps.enumerated() {
                let base = c * MemoryLayout<tm_bits>.size
                for (w, word) in bitmap.enumerated() where word != 0 {
                    raw.storeBytes(of: word, toByteOffset: base + w * 8, as: UInt64.self)
                    let s = base + summary + (w / 64) * 8
                    raw.storeBytes(of: raw.load(fromByteOffset: s, as: UInt64.self) | 1 << UInt64(w % 64), toByteOffset: s, as: UInt64.self)
                }
            }
        }
        var bounds = Self.addressFields.flatMap { tables.intervals[$0] ?? [] }.map { iv in
            tm_addr_bound(hi: UInt64(iv.lower >> 64), lo: UInt64(truncatingIfNeeded: iv.lower), bitmap: UInt32(iv.bitmap), pad: 0)
        }
        var fds: [Int32] = [-1, -1, -1]
        let rc = bits.withUnsafeBytes { b in
            CMirrorBPF_scope_tables_create(&classes, &bounds, UInt32(bounds.count),
                                           b.baseAddress?.assumingMemoryBound(to: tm_bits.self),
                                           UInt32(tables.bitmaps.count), &fds)
        }
        try SystemError.check(rc, "creating the classifier tables (\(tables.bitmaps.count) rule bitmaps of 1 KiB)")
        defer { for fd in fds { close(fd) } }
        var key = profile
        for (outer, fd) in zip([valueClassesMap, addressBoundsMap, classBitsMap], fds) {
            var inner = fd
            try SystemError.check(CMirrorBPF_map_update(outer, &key, &inner, 0), "storing the classifier tables of profile \(profile)")
        }
    }

    /// The value-class array: four 16-bit bitmap indexes per element, at
    /// the field's base plus the value.
    static func valueClasses(_ tables: MirrorPlan.Tables) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: Int(TM_CLASS_ELEMENTS.rawValue))
        let bases: [(MirrorPlan.Field, Int)] = [(.proto, Int(TM_CLASS_PROTO.rawValue)), (.sourcePort, Int(TM_CLASS_SPORT.rawValue)),
                                                (.destinationPort, Int(TM_CLASS_DPORT.rawValue))]
        for (field, base) in bases {
            for iv in tables.intervals[field] ?? [] where iv.bitmap != 0 {
                for v in Int(iv.lower)...Int(iv.upper) {
                    let i = base + v
                    out[i / 4] |= UInt64(iv.bitmap) << UInt64((i % 4) * 16)
                }
            }
        }
        return out
    }

    /// Address fields in the order of tm_profile.addr_start.
    static let addressFields: [MirrorPlan.Field] = [.source4, .destination4, .source6, .destination6]

    static func profileBytes(_ s: MirrorPlan.Profile) -> [UInt8] {
        typealias P = tm_profile
        var b = [UInt8](repeating: 0, count: MemoryLayout<P>.size)
        b.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(s.sessions.count), toByteOffset: MemoryLayout<P>.offset(of: \.session_count)!, as: UInt32.self)
            raw.storeBytes(of: UInt32(s.wordTotal), toByteOffset: MemoryLayout<P>.offset(of: \.word_total)!, as: UInt32.self)
            raw.storeBytes(of: s.filteredMask, toByteOffset: MemoryLayout<P>.offset(of: \.filtered_mask)!, as: UInt32.self)
            let so = MemoryLayout<P>.offset(of: \.session)!
            let wso = MemoryLayout<P>.offset(of: \.word_start)!
            let wco = MemoryLayout<P>.offset(of: \.word_count)!
            for (i, sess) in s.sessions.enumerated() {
                raw.storeBytes(of: UInt16(sess), toByteOffset: so + 2 * i, as: UInt16.self)
                raw.storeBytes(of: UInt16(s.wordStart[i]), toByteOffset: wso + 2 * i, as: UInt16.self)
                raw[wco + i] = UInt8(s.wordCount[i])
            }
            var start = 0
            for (i, field) in addressFields.enumerated() {
                let count = s.tables?.intervals[field]?.count ?? 0
                raw.storeBytes(of: UInt32(start), toByteOffset: MemoryLayout<P>.offset(of: \.addr_start)! + 4 * i, as: UInt32.self)
                raw.storeBytes(of: UInt32(count), toByteOffset: MemoryLayout<P>.offset(of: \.addr_count)! + 4 * i, as: UInt32.self)
                start += count
            }
            let ao = MemoryLayout<P>.offset(of: \.accept)!
            for (w, word) in s.accept.enumerated() { raw.storeBytes(of: word, toByteOffset: ao + 8 * w, as: UInt64.self) }
        }
        return b
    }

    /// Zeroes a bank's session counters, sampling and rate state so a new
    /// plan in it starts from nothing.
    func resetSessionState(bank: Int) throws(SystemError) {
        let cpus = cpuCount
        var zeroCounters = [UInt8](repeating: 0, count: MemoryLayout<tm_session_counters>.stride * cpus)
        var zeroSample = [UInt64](repeating: 0, count: cpus)
        var zeroRate = [UInt8](repeating: 0, count: 32)
        for i in 0..<Int(TM_MAX_SESSIONS) {
            let skey = UInt32(bank * Int(TM_MAX_SESSIONS) + i)
            for d in 0..<Int(TM_DIR_COUNT.rawValue) {
                var k = skey * UInt32(TM_DIR_COUNT.rawValue) + UInt32(d)
                try SystemError.check(CMirrorBPF_map_update(sessionStatsMap, &k, &zeroCounters, 0), "zeroing tm_session_stats")
            }
            var k = skey
            try SystemError.check(CMirrorBPF_map_update(sampleMap, &k, &zeroSample, 0), "zeroing tm_sample")
            try SystemError.check(CMirrorBPF_map_update(rateMap, &k, &zeroRate, 0), "zeroing tm_rate")
        }
    }

    // MARK: bounded sessions

    /// What a bounded session selected so far, and which limits ended it
    /// (`enum tm_session_end`).
    public func usage(slot: UInt32) throws(SystemError) -> (packets: UInt64, bytes: UInt64, ended: UInt32) {
        var k = slot
        var v = tm_session_usage()
        try SystemError.check(CMirrorBPF_map_lookup(usageMap, &k, &v), "reading tm_session_usage[\(slot)]")
        return (v.packets, v.bytes, v.ended)
    }

    /// Starts `slot` from nothing, for a new or changed session.
    public func resetUsage(slot: UInt32) throws(SystemError) {
        var k = slot
        var v = tm_session_usage()
        try SystemError.check(CMirrorBPF_map_update(usageMap, &k, &v, 0), "zeroing tm_session_usage[\(slot)]")
    }

    // MARK: counters

    /// Interface counters of one slot and direction, summed over CPUs,
    /// indexed by `enum tm_if_outcome`.
    public func interfaceCounters(slot: UInt32, direction: Direction) throws(SystemError) -> [UInt64] {
        var k = slot * UInt32(TM_DIR_COUNT.rawValue) + UInt32(direction.index)
        return try perCPUSum(map: ifStatsMap, key: &k, counters: Int(TM_IF_OUTCOME_COUNT.rawValue), what: "tm_if_stats")
    }

    /// Session counters of one bank, session and direction, summed over
    /// CPUs, indexed by `enum tm_session_outcome`.
    public func sessionCounters(bank: Int, session: Int, direction: Direction) throws(SystemError) -> [UInt64] {
        var k = UInt32((bank * Int(TM_MAX_SESSIONS) + session) * Int(TM_DIR_COUNT.rawValue) + direction.index)
        return try perCPUSum(map: sessionStatsMap, key: &k, counters: Int(TM_SESSION_OUTCOME_COUNT.rawValue), what: "tm_session_stats")
    }

    private func perCPUSum(map: Int32, key: inout UInt32, counters: Int, what: String) throws(SystemError) -> [UInt64] {
        // Per-CPU values come back one per possible CPU, each rounded up to 8 bytes.
        var buf = [UInt64](repeating: 0, count: counters * cpuCount)
        try SystemError.check(CMirrorBPF_map_lookup(map, &key, &buf), "reading \(what)")
        var out = [UInt64](repeating: 0, count: counters)
        for cpu in 0..<cpuCount {
            for c in 0..<counters { out[c] &+= buf[cpu * counters + c] }
        }
        return out
    }

    /// Zeroes the counters of one interface slot (a slot that is reused).
    public func resetInterfaceCounters(slot: UInt32) throws(SystemError) {
        var zero = [UInt8](repeating: 0, count: MemoryLayout<tm_if_counters>.stride * cpuCount)
        for d in 0..<UInt32(TM_DIR_COUNT.rawValue) {
            var k = slot * UInt32(TM_DIR_COUNT.rawValue) + d
            try SystemError.check(CMirrorBPF_map_update(ifStatsMap, &k, &zero, 0), "zeroing tm_if_stats")
        }
    }

    /// Labels of the kernel's outcome lists, in index order.
    public static let interfaceOutcomeLabels: [String] = (0..<TM_IF_OUTCOME_COUNT.rawValue).map {
        String(cStringPointer: CMirrorBPF_if_outcome_label($0))
    }
    public static let sessionOutcomeLabels: [String] = (0..<TM_SESSION_OUTCOME_COUNT.rawValue).map {
        String(cStringPointer: CMirrorBPF_session_outcome_label($0))
    }
}

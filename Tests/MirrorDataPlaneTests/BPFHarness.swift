import CMirrorBPF
import MirrorCore
import MirrorDataPlane
import MirrorTestSupport

/// The real BPF program, loaded, with a plan installed for the loopback
/// device (BPF_PROG_TEST_RUN runs XDP and tc programs as if on `lo`), and
/// its rings read back as records.
final class BPFHarness {
    /// A ring record copied out of the ring.
    struct Record: Equatable {
        var ifindex: UInt32
        var originalLength: Int
        var flowHash: UInt32
        var session: Int
        var bank: Int
        var direction: Direction
        var flags: RecordLayout.Flags
        var l4Protocol: UInt8
        var l3Offset: Int
        var l4Offset: Int
        var tunnelHeader: [UInt8]
        var frame: [UInt8]

        static func == (a: Record, b: Record) -> Bool {
            a.frame == b.frame && a.session == b.session && a.direction == b.direction && a.flowHash == b.flowHash
        }
    }

    let program: MirrorProgram
    let rings: RingSet
    let config: MirrorConfig
    let plan: MirrorPlan
    private var batch = RecordBatch(capacity: 65536)
    static let loopback: UInt32 = 1

    /// `config` must name the interface "lo". `mtuLimit` stands in for the
    /// target MTU (frame bytes after encapsulation), 0 for none.
    init(config: MirrorConfig, ringBytes: UInt32 = 1 << 22, mtuLimit: UInt32 = 0,
         sampleEvery: [String: UInt32] = [:], rates: [String: (rate: UInt64, burst: UInt64, bits: Bool)] = [:]) throws {
        try requireRoot("BPF_PROG_TEST_RUN tests")
        program = try MirrorProgram(settings: .init(ringBytes: ringBytes))
        rings = try RingSet(program: program)
        self.config = config
        plan = MirrorPlan(compiling: config)
        try program.setSlot(netns: NetworkNamespace.currentCookie(), ifindex: Self.loopback, slot: 0)
        try program.resetInterfaceCounters(slot: 0)
        let sessions = plan.sessions.map { s in
            KernelSession(
                lengthLimit: UInt32(s.packetLength ?? 0), mtuLimit: mtuLimit,
                sampleEvery: sampleEvery[s.name] ?? 0,
                rate: rates[s.name]?.rate ?? 0, burst: rates[s.name]?.burst ?? 0, rateBits: rates[s.name]?.bits ?? false,
                tunnelHeader: TunnelHeader.bytes(.vxlan, vni: s.vni))
        }
        try program.install(plan: plan, sessions: sessions, slots: ["lo": 0], bank: 0)
        try program.activate(bank: 0)
    }

    /// One unfiltered session on lo, both directions.
    convenience init(packetLength: Int? = nil, direction: DirectionSelection = .both, vni: UInt32 = 7,
                     ringBytes: UInt32 = 1 << 22, mtuLimit: UInt32 = 0) throws {
        try self.init(config: .quick(interfaces: ["lo"], target: HostPort(host: "198.18.9.9", port: nil), vni: vni,
                                     direction: direction, packetLength: packetLength),
                      ringBytes: ringBytes, mtuLimit: mtuLimit)
    }

    enum Hook { case xdp, tcEgress, tcIngress }

    /// Runs the hook's program once on `frame`; returns its verdict.
    @discardableResult
    func run(_ hook: Hook, _ frame: [UInt8], mark: UInt32 = 0, repeat count: UInt32 = 1) throws -> (retval: UInt32, nanoseconds: UInt32) {
        var retval: UInt32 = 0, duration: UInt32 = 0
        let fd: Int32
        switch hook {
        case .xdp: fd = program.xdpIngress
        case .tcEgress: fd = program.tcEgress
        case .tcIngress: fd = program.tcIngress
        }
        let rc: Int32
        if hook == .xdp {
            rc = frame.withUnsafeBytes { CMirrorBPF_prog_test_run(fd, $0.baseAddress, UInt32($0.count), nil, 0, count, &retval, &duration) }
        } else {
            var skb = __sk_buff()
            skb.mark = mark
            rc = frame.withUnsafeBytes {
                CMirrorBPF_prog_test_run(fd, $0.baseAddress, UInt32($0.count), &skb, UInt32(MemoryLayout<__sk_buff>.size), count, &retval, &duration)
            }
        }
        guard rc == 0 else { throw SystemError("BPF_PROG_TEST_RUN (\(hook), \(frame.count) bytes)", code: rc) }
        return (retval, duration)
    }

    /// Every record in the rings now, copied out; the rings are released.
    func records() -> [Record] {
        var out = [Record]()
        while true {
            let n = rings.collect(into: &batch, max: batch.capacity)
            for i in 0..<n {
                let r = batch[i]
                out.append(Record(
                    ifindex: r.ifindex, originalLength: r.originalLength, flowHash: r.flowHash, session: r.session,
                    bank: r.bank, direction: r.direction, flags: r.flags, l4Protocol: r.l4Protocol,
                    l3Offset: r.l3Offset, l4Offset: r.l4Offset,
                    tunnelHeader: Array(UnsafeRawBufferPointer(start: r.base + RecordLayout.tunnelHeader, count: 8)),
                    frame: Array(r.frame)))
            }
            rings.release()
            batch.removeAll()
            if n == 0 { return out }
        }
    }

    func interfaceCounters(_ d: Direction) throws -> [String: UInt64] {
        let v = try program.interfaceCounters(slot: 0, direction: d)
        return Dictionary(uniqueKeysWithValues: zip(MirrorProgram.interfaceOutcomeLabels, v))
    }

    func sessionCounters(_ session: Int = 0, _ d: Direction) throws -> [String: UInt64] {
        let v = try program.sessionCounters(bank: 0, session: session, direction: d)
        return Dictionary(uniqueKeysWithValues: zip(MirrorProgram.sessionOutcomeLabels, v))
    }
}

/// Whether the kernel's skb test run takes the frame: it refuses IPv4
/// frames shorter than an IP header (34 bytes) and IPv6 ones shorter than
/// 54 before the program runs; XDP's test run takes them.
func skbTestRunAccepts(_ f: [UInt8]) -> Bool {
    guard f.count >= 14 else { return false }
    switch UInt16(f[12]) << 8 | UInt16(f[13]) {
    case 0x0800: return f.count >= 34
    case 0x86DD: return f.count >= 54
    default: return true
    }
}

/// XDP_PASS and TC_ACT_UNSPEC (TCX_NEXT): the packet goes on.
let xdpPass: UInt32 = 2
let tcNext = UInt32(bitPattern: -1)

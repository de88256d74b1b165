import ArgumentParser
import CMirrorBPF
import CMirrorSys
import MirrorCore
import MirrorDataPlane
import MirrorFixtures
import MirrorTestSupport

/// What the ring merge costs per record as the rings grow, the way the
/// forwarding thread pays it: the loaded program writes real records
/// (BPF_PROG_TEST_RUN of the tc ingress hook, 64-byte frames;
/// test runs of XDP programs that alternate swap the XDP dispatcher, an
/// RCU grace period each) into N rings, in bursts of
/// `burst` per ring round after round, so their stamps interleave as the
/// CPUs of a busy host do; then `collect` and `release` drain them in
/// batches of 256, timed. This machine has 2 CPUs: the N rings are given to
/// one CPU in turn, which simulates a host of N CPUs for the merge (what it
/// cannot simulate is N CPUs writing at once, which changes nothing the
/// merge reads). A program writes into one ring per CPU, and repointing
/// its ring array waits for an RCU grace period, so each simulated CPU
/// gets a loaded program of its own, pointed at its ring once.
struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Nanoseconds per record of the ring merge for growing ring counts (simulated CPUs).")

    @Option(help: "Ring counts to measure, comma separated.") var rings = "1,2,4,8,16,32,64"
    @Option(help: "Records per measurement.") var records = 131_072
    @Option(help: "Records each ring receives in a row before the next ring's turn.") var burst: UInt32 = 8
    @Option(help: "Measurements per ring count; the median is reported.") var runs = 5
    @Option(help: "Rings per forwarding thread (--rings-per-thread): the rings are merged in groups of this many, one group after another here (side by side in the agent, one thread each). 0: one group.") var group = 0

    func run() throws {
        try requireRoot("tm-bench merge")
        guard CMirrorSys_pin_thread(0) == 0 else { throw Failure("cannot pin to CPU 0") }
        let counts = rings.split(separator: ",").compactMap { Int($0) }
        guard !counts.isEmpty, counts.allSatisfy({ $0 >= 1 && $0 <= 256 }) else {
            throw ValidationError("--rings: ring counts from 1 to 256, comma separated (e.g. 1,8,64)")
        }
        let config = MirrorConfig.quick(interfaces: ["lo"], target: HostPort(host: "198.18.9.9", port: nil), vni: 1,
                                        direction: .both, packetLength: nil)
        let plan = MirrorPlan(compiling: config)
        let frame = MirrorFixtures.Frames.udp4(payload: [UInt8](repeating: 0, count: 18))
        let sessions = plan.sessions.map { s in
            KernelSession(lengthLimit: 0, mtuLimit: 0, sampleEvery: 0, rate: 0, burst: 0, rateBits: false,
                          tunnelHeader: TunnelHeader.bytes(.vxlan, vni: s.vni))
        }
        let most = counts.max()!
        // Each record: the ring's 8-byte header, the record header, the
        // frame: well under 512 bytes.
        let perRingMost = (records + counts.min()! - 1) / counts.min()!
        let bytes = UInt32(1) << UInt32(max(16, Int.bitWidth - (perRingMost * 512 - 1).leadingZeroBitCount))
        var programs = [MirrorProgram]()
        for _ in 0..<most {
            let program = try MirrorProgram(settings: .init(ringBytes: bytes))
            try program.setSlot(netns: NetworkNamespace.currentCookie(), ifindex: 1, slot: 0)
            try program.install(plan: plan, sessions: sessions, slots: ["lo": 0], bank: 0)
            try program.activate(bank: 0)
            programs.append(program)
        }
        var baseline = 0.0
        for n in counts {
            let perRing = (records + n - 1) / n
            let size = group > 0 ? min(group, n) : n
            let sets = try stride(from: 0, to: n, by: size).map { first in
                let set = try RingSet(program: programs[0], cpus: Array(repeating: 0, count: min(size, n - first)))
                for r in 0..<set.count { try set.point(cpu: 0, ring: r, program: programs[first + r]) }
                return set
            }
            var batch = RecordBatch(capacity: 256)
            var ns = [Double]()
            for _ in 0..<runs {
                var written = 0
                while written < perRing * n {
                    for program in programs[0..<n] {
                        var retval: UInt32 = 0, duration: UInt32 = 0
                        var skb = __sk_buff()
                        let rc = frame.withUnsafeBytes {
                            CMirrorBPF_prog_test_run(program.tcIngress, $0.baseAddress, UInt32($0.count), &skb,
                                                     UInt32(MemoryLayout<__sk_buff>.size), burst, &retval, &duration)
                        }
                        guard rc == 0 else { throw Failure("BPF_PROG_TEST_RUN: errno \(-rc)") }
                        written += Int(burst)
                    }
                }
                let start = CMirrorSys_monotonic_ns()
                var taken = 0
                for set in sets {
                    while true {
                        batch.removeAll()
                        let got = set.collect(into: &batch, max: batch.capacity)
                        if got == 0 { break }
                        taken += got
                        set.release()
                    }
                }
                let elapsed = CMirrorSys_monotonic_ns() - start
                guard taken == written else { throw Failure("\(n) rings: wrote \(written) records, merged \(taken)") }
                ns.append(Double(elapsed) / Double(taken))
            }
            let median = Report.median(ns)
            if n == counts[0] { baseline = median }
            print(String(format: "%3d rings: %.1f ns per record (%.2fx the first; runs: %@)", n, median, median / baseline,
                         ns.map { String(format: "%.1f", $0) }.joined(separator: ", ")))
        }
    }
}

import ArgumentParser
import CMirrorBPF
import CMirrorSys
import MirrorCore
import MirrorDataPlane
import MirrorFixtures
import MirrorTestSupport

/// What each broker function adds to the kernel's path per packet
/// (BPF_PROG_TEST_RUN, XDP, one frame many times, one unfiltered session):
/// bounded-session accounting, slicing after l4, deduplication (a new
/// packet: lookup and update; a duplicate: lookup, held back); and, in user
/// space, what masking costs the forwarder per copy.
struct Functions: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Nanoseconds per packet of bounded sessions, layer slicing, deduplication and masking.")

    @Option(help: "Runs of the frame per measurement.") var repeats: UInt32 = 200_000
    @Option(help: "Measurements per variant; the median is reported.") var runs: Int = 7

    func run() throws {
        try requireRoot("tm-bench functions")
        let config = MirrorConfig.quick(interfaces: ["lo"], target: HostPort(host: "198.18.9.9", port: nil), vni: 1,
                                        direction: .both, packetLength: nil)
        let frame = MirrorFixtures.Frames.ethernet(etherType: 0x0800, payload: MirrorFixtures.Frames.ipv4(
            transport: .tcp(sport: 40000, dport: 443, seq: 1, flags: 0x18, payload: [UInt8](repeating: 0xAB, count: 1000))))
        let variants: [(String, (inout KernelSession) -> Void, Bool)] = [
            ("plain copy (1 session, no filter)", { _ in }, false),
            ("bounded: window and max_packets/max_bytes (atomic adds)", {
                $0.bounded = true; $0.maxPackets = .max / 2; $0.maxBytes = .max / 2
            }, false),
            ("packet_length {after: l4, bytes: 64}", { $0.sliceAfter = UInt16(TM_SLICE_L4.rawValue); $0.sliceBytes = 64; $0.lengthLimit = 128 }, false),
            // Every run sees the frame where the last one did: not a duplicate.
            ("deduplicate, a packet not seen elsewhere (hash, lookup, insert)", { $0.dedupWindowNanoseconds = 1_000_000 }, false),
            // Seen on another interface first: every run is held back.
            ("deduplicate, every packet a duplicate (lookup, held back)", { $0.dedupWindowNanoseconds = UInt64.max / 2 }, true),
        ]
        var baseline = 0.0
        for (name, change, seenElsewhere) in variants {
            var k = KernelSession(tunnelHeader: TunnelHeader.bytes(.vxlan, vni: 1))
            change(&k)
            let ns = try (0..<runs).map { _ in try measure(config, k, frame, duplicates: seenElsewhere) }
            let median = Report.median(ns)
            if baseline == 0 { baseline = median }
            print(String(format: "%@: %.0f ns per packet (%+.0f ns; runs: %@)", name, median, median - baseline,
                         ns.map { String(format: "%.0f", $0) }.joined(separator: ", ")))
        }
        maskCost(frame)
    }

    /// Runs the frame through the XDP program under one session `k`.
    /// `duplicates`: the frame was seen on another interface first.
    func measure(_ config: MirrorConfig, _ k: KernelSession, _ frame: [UInt8], duplicates: Bool) throws -> Double {
        let program = try MirrorProgram(settings: .init(ringBytes: 1 << 28))
        let rings = try RingSet(program: program)
        let plan = MirrorPlan(compiling: config)
        let netns = try NetworkNamespace.currentCookie()
        try program.setSlot(netns: netns, ifindex: 1, slot: 0)
        try program.install(plan: plan, sessions: [k], slots: ["lo": 0], bank: 0)
        try program.activate(bank: 0)
        var retval: UInt32 = 0, duration: UInt32 = 0
        if duplicates {
            // One sighting on slot 1 (an interface of its own) first.
            try program.setSlot(netns: netns, ifindex: 1, slot: 1)
            var config1 = config
            config1.sessions[0].interfaces = ["lo1"]
            try program.install(plan: MirrorPlan(compiling: config1), sessions: [k], slots: ["lo1": 1], bank: 1)
            try program.activate(bank: 1)
            _ = frame.withUnsafeBytes {
                CMirrorBPF_prog_test_run(program.xdpIngress, $0.baseAddress, UInt32($0.count), nil, 0, 1, &retval, &duration)
            }
            try program.setSlot(netns: netns, ifindex: 1, slot: 0)
            try program.activate(bank: 0)
        }
        let rc = frame.withUnsafeBytes {
            CMirrorBPF_prog_test_run(program.xdpIngress, $0.baseAddress, UInt32($0.count), nil, 0, repeats, &retval, &duration)
        }
        guard rc == 0 else { throw Failure("BPF_PROG_TEST_RUN: errno \(-rc)") }
        withExtendedLifetime(rings) {}
        return Double(duration)
    }

    /// The forwarder's part of a 64-byte mask on a 1054-byte TCP frame:
    /// where it falls, and the checksum adjusted for the pattern.
    func maskCost(_ frame: [UInt8]) {
        let m = Mask(after: .l4, offset: 0, bytes: 64, pattern: 0)
        var sink = 0
        let n = 2_000_000
        let start = CMirrorSys_monotonic_ns()
        frame.withUnsafeBytes { f in
            for _ in 0..<n {
                guard let end = PayloadMask.layerEnd(.l4, frame: f, l3Offset: 14, l4Offset: 34, l4Protocol: 6),
                      let range = PayloadMask.range(m, layerEnd: end, length: f.count),
                      let c = PayloadMask.adjustedChecksum(frame: f, l3Offset: 14, l4Offset: 34, l4Protocol: 6, range: range,
                                                          pattern: m.pattern, current: UInt16(truncatingIfNeeded: sink))
                else { continue }
                sink &+= Int(c.value)
            }
        }
        let ns = Double(CMirrorSys_monotonic_ns() - start) / Double(n)
        print(String(format: "mask {after: l4, bytes: 64} in the forwarder: %.0f ns per copy (range and checksum; %d)", ns, sink & 1))
    }
}

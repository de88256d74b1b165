import ArgumentParser
import CMirrorBPF
import CMirrorSys
import Foundation
import Logging
import MallocInterposerSwift
import MirrorCore
import MirrorDataPlane
import MirrorFixtures
import MirrorTestSupport

/// Counts what the forwarding path allocates in steady state: the real
/// agent (program, rings, forwarding thread, sockets) mirrors batches of
/// diverse frames, run through its XDP program with BPF_PROG_TEST_RUN, to a
/// target on a veth; malloc-interposer counts every allocation of the
/// process while they go. Exits 1 when the count per batch passes the
/// threshold, so the tests can hold the hot path to it.
struct Allocations: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Count the forwarding path's allocations per batch (runs itself in a namespace of its own, under malloc-interposer).")

    @Option(help: "Rounds of frames to mirror while counting.") var rounds = 2000
    @Option(help: "Frames per round.") var frames = 256
    @Option(help: "Allocations per forwarded batch allowed (fails above).") var threshold = 0.0
    @Flag(help: "Print a stack for every allocation counted (to find one).") var stacks = false
    @Flag(help: .hidden) var inside = false

    func run() throws {
        if inside { return try measure() }
        // Outside: a namespace of our own, where the agent hooks lo and sends
        // to 198.18.9.2 over a veth pair (a0 -> a1) that nothing reads.
        let lab = try Lab()
        defer { lab.teardown() }
        let ns = try lab.namespace("alloc")
        // No IPv6: a link-local address that finishes DAD mid-run is a route
        // and address event, and the agent looks at its targets again then
        // (which allocates, as control-plane work does).
        try lab.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        try lab.veth(ns, "a0", ns, "a1")
        try lab.ip(ns, "addr", "add", "198.18.9.1/24", "dev", "a0")
        try lab.ip(ns, "neigh", "add", "198.18.9.2", "lladdr", "02:00:00:00:09:02", "dev", "a0")
        let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let library = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("libMallocInterposerSwift.so").path
        guard FileManager.default.fileExists(atPath: library) else { throw Failure("\(library) not found: build tm-bench first") }
        let r = try Shell.run(["ip", "netns", "exec", ns, "env", "LD_PRELOAD=\(library)", me, "allocations", "--inside",
                               "--rounds", "\(rounds)", "--frames", "\(frames)", "--threshold", "\(threshold)"]
                               + (stacks ? ["--stacks"] : []), timeout: 300)
        print(r.stdout, terminator: "")
        FileHandle.standardError.write(Data(r.stderr.utf8))
        if !r.ok { throw ExitCode(r.status) }
    }

    /// Inside the namespace, with the interposer preloaded.
    func measure() throws {
        var logger = Logger(label: "traffic-mirror")
        logger.logLevel = .warning
        // The forwarding path is measured: the periodic look at the targets'
        // paths (which resolves, and allocates, once per interval) stays out.
        var options = Agent.Options()
        options.resolveInterval = 3600
        let agent = try Agent(options: options, logger: logger)
        defer { agent.shutdown() }
        try agent.apply(.quick(interfaces: ["lo"], target: HostPort(host: "198.18.9.2", port: nil), vni: 42,
                               direction: .both, packetLength: nil))
        // Diverse frames (both families, VLANs, fragments, malformed), and
        // runs of one flow, as a busy link has them: copies go one by one
        // and as UDP GSO runs.
        var rng = SplitMix64(seed: 7)
        var set = (0..<frames / 2).map { _ in FrameGenerator.frame(&rng) }
        let flow = MirrorFixtures.Frames.udp4(sport: 40000, payload: [UInt8](repeating: 0x5A, count: 1000))
        set += [[UInt8]](repeating: flow, count: frames - set.count)
        let prog = agent.program.xdpIngress
        // The frames back to back in one buffer, so the loop that feeds the
        // program allocates nothing either, in a debug build too.
        let total = set.reduce(0) { $0 + $1.count }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: 8)
        let spans = UnsafeMutablePointer<(offset: Int, length: Int)>.allocate(capacity: set.count)
        let out = UnsafeMutablePointer<UInt32>.allocate(capacity: 2)
        defer { buffer.deallocate(); spans.deallocate(); out.deallocate() }
        var offset = 0
        for (i, f) in set.enumerated() {
            f.withUnsafeBytes { buffer.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: f.count) }
            spans[i] = (offset, f.count)
            offset += f.count
        }
        let count = set.count
        let rings = agent.forwarding

        func round() throws {
            for i in 0..<count {
                let rc = CMirrorBPF_prog_test_run(prog, buffer + spans[i].offset, UInt32(spans[i].length), nil, 0, 1, out, out + 1)
                guard rc == 0 else { throw Failure("BPF_PROG_TEST_RUN: errno \(-rc)") }
            }
            while rings.hasPending { usleep(20) }
        }

        // Warm up: the first use of a source port opens its GSO socket.
        for _ in 0..<20 { try round() }
        usleep(100_000)
        let counters = agent.forwarding.counters
        let batchesBefore = counters.batchCount
        let sentBefore = counters.snapshot().sent.values.reduce(0) { $0 + $1.packets }
        MallocInterposerSwift.initialize()
        if stacks { MallocInterposerSwift.setAllocationHook(printStack) }
        MallocInterposerSwift.hook()
        for _ in 0..<rounds { try round() }
        // The last batch is sent once the rings are empty; let it finish.
        usleep(100_000)
        MallocInterposerSwift.unhook()
        MallocInterposerSwift.setAllocationHook(nil)
        let stats = MallocInterposerSwift.getStatistics()
        let batches = counters.batchCount - batchesBefore
        let sent = counters.snapshot().sent.values.reduce(0) { $0 + $1.packets } - sentBefore
        let perBatch = Double(stats.mallocCount) / Double(max(1, batches))
        print(String(format: "allocations: %d over %d batches (%d frames mirrored): %.4f per batch, threshold %.4f",
                     stats.mallocCount, batches, sent, perBatch, threshold))
        // Frames the program cannot parse are mirrored too (no filter): all
        // of them must have gone, or the count says nothing.
        guard batches > 0, sent == UInt64(rounds * frames) else {
            throw Failure("\(sent) of \(rounds * frames) frames were mirrored in \(batches) batches")
        }
        if perBatch > threshold { throw ExitCode(1) }
    }
}

/// The allocation hook of --stacks: the allocating thread's stack on
/// stderr, written without allocating (a nested call returns at once).
nonisolated(unsafe) private var inHook = false
nonisolated(unsafe) private let stackFrames = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 32)
private func printStack(_ size: Int) {
    if inHook { return }
    inHook = true
    defer { inHook = false }
    let n = c_backtrace(stackFrames, 32)
    c_backtrace_symbols_fd(stackFrames, n, 2)
    _ = write(2, "--\n", 3)
}

// <execinfo.h>, which Glibc's module map leaves out.
@_silgen_name("backtrace")
private func c_backtrace(_ buffer: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ size: Int32) -> Int32
@_silgen_name("backtrace_symbols_fd")
private func c_backtrace_symbols_fd(_ buffer: UnsafePointer<UnsafeMutableRawPointer?>, _ size: Int32, _ fd: Int32)

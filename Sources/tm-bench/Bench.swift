import ArgumentParser
import CMirrorBPF
import CMirrorSys
import Foundation
import MirrorCore

/// scripts/bench's engine: the side-by-side suite, a traffic generator built
/// on BPF_PROG_RUN with live frames, an XDP counter for the target, and a
/// UDP sink for production traffic.
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tm-bench",
        abstract: "Traffic generator and sink for scripts/bench.",
        subcommands: [Suite.self, Generate.self, Count.self, Sink.self, Allocations.self, Classify.self, Functions.self, Merge.self]
    )
}

/// Opens the benchmark's BPF object (scripts/build-bpf --bench), not loaded
/// yet, so its rodata can still be set.
func openBenchObject(_ path: String) throws -> OpaquePointer {
    guard let bytes = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
    var obj: OpaquePointer?
    guard Array(bytes).withUnsafeBytes({ CMirrorBPF_object_open($0.baseAddress, $0.count, "bench", &obj) }) == 0, let obj else {
        throw ValidationError("cannot open \(path)")
    }
    return obj
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send UDP frames out of an interface with BPF_PROG_RUN live frames; print what was sent as JSON.",
        discussion: """
        Where the kernel refuses live frames (EPERM: some sandboxes and hardened kernels), or with \
        --method packet, the frames go out of an AF_PACKET socket with sendmmsg instead: slower \
        (the sending thread's CPU does what the live frames' softirq would), enough for a paced rate.
        """)

    enum Method: String, ExpressibleByArgument, CaseIterable {
        case auto, live, packet
    }

    @Option(help: "Benchmark object (scripts/build-bpf --bench).") var object: String
    @Option(help: "Interface to send out of.") var interface: String
    @Option(help: "Destination MAC (aa:bb:..).") var dstMac: String
    @Option(help: "Source MAC.") var srcMac: String
    @Option(help: "Source IPv4.") var src = "198.18.0.1"
    @Option(help: "Destination IPv4.") var dst = "198.18.0.2"
    @Option(help: "Destination UDP port.") var port: UInt16 = 9999
    @Option(help: "Ethernet frame bytes, without FCS (60...1514).") var frameSize = 64
    @Option(help: "UDP flows (source ports) to rotate through.") var flows: UInt32 = 1
    @Option(help: "Frames per second; 0 for as many as the kernel takes.") var rate = 0
    @Option(help: "Seconds to send.") var duration = 5.0
    @Option(help: "How to send: live (BPF_PROG_RUN live frames), packet (AF_PACKET sendmmsg), auto (live where the kernel allows it).")
    var method = Method.auto

    func run() throws {
        let obj = try openBenchObject(object)
        defer { CMirrorBPF_object_close(obj) }
        var ifindex = UInt32(bitPattern: CMirrorSys_if_nametoindex(interface))
        var nflows = flows
        _ = CMirrorBPF_object_set_rodata(obj, "gen_ifindex", &ifindex, 4)
        _ = CMirrorBPF_object_set_rodata(obj, "gen_flows", &nflows, 4)
        guard CMirrorBPF_object_load(obj, -1) == 0 else { throw ValidationError("cannot load the generator") }
        let prog = CMirrorBPF_object_prog_fd(obj, "tm_xdpgen")

        func mac(_ s: String) -> [UInt8] { s.split(separator: ":").compactMap { UInt8($0, radix: 16) } }
        let payload = max(0, frameSize - 42)
        let frame = Array(Frames(dst: mac(dstMac), src: mac(srcMac), from: IPAddress(src)!.bytes, to: IPAddress(dst)!.bytes,
                                 port: port, payload: payload).bytes)
        var probe: UInt32 = 0
        let live = method == .live
            || method == .auto && frame.withUnsafeBytes { CMirrorBPF_prog_run_live(prog, $0.baseAddress, UInt32($0.count), 1, 1, &probe) } != -EPERM
        guard live else {
            return try sendPackets(frame, ifindex: Int32(bitPattern: ifindex))
        }
        // Each BPF_PROG_RUN call sleeps about a grace period (~25 ms here)
        // when it tears its page pool down, so several threads take turns:
        // one sleeps while another sends. Paced, each call is 20 ms of the
        // schedule, sent when due; at rate 0 calls are 64K frames, back to
        // back. The frames go out in bursts at the CPU's speed; the average
        // is the rate.
        let chunk = UInt32(rate == 0 ? 65536 : max(1024, rate / 50))
        let start = CMirrorSys_monotonic_ns()
        let end = start + UInt64(duration * 1e9)
        let state = Schedule(start: start, rate: rate, chunk: chunk)
        let group = DispatchGroup()
        for _ in 0..<Self.threads {
            group.enter()
            Thread {
                defer { group.leave() }
                var duration32: UInt32 = 0
                while true {
                    let now = CMirrorSys_monotonic_ns()
                    guard now < end, state.failure == 0 else { return }
                    let wait = state.claim(now: now)
                    if wait > 0 { usleep(UInt32(min(2_000, wait / 1000))); continue }
                    let rc = frame.withUnsafeBytes { CMirrorBPF_prog_run_live(prog, $0.baseAddress, UInt32($0.count), chunk, 64, &duration32) }
                    if rc != 0 { state.fail(rc) }
                }
            }.start()
        }
        group.wait()
        if state.failure != 0 { throw ValidationError("BPF_PROG_RUN live frames: errno \(-state.failure)") }
        let sent = state.claimed + (method == .auto ? 1 : 0) // the probe's frame
        let seconds = Double(CMirrorSys_monotonic_ns() - start) / 1e9
        print("{\"sent\": \(sent), \"seconds\": \(seconds), \"method\": \"live\"}")
    }
}

extension Generate {
    static let threads = 4
    static let packetBatch = 64

    /// The AF_PACKET way: one thread, sendmmsg of 64 frames at a time,
    /// each the next flow's (the source port the live program would set).
    func sendPackets(_ frame: [UInt8], ifindex: Int32) throws {
        let fd = CMirrorSys_packet_socket(ifindex)
        guard fd >= 0 else { throw ValidationError("AF_PACKET socket on \(interface): errno \(-fd)") }
        defer { _ = CMirrorSys_close(fd) }
        // The socket takes a virtio_net_hdr before each frame (PACKET_VNET_HDR): zeros, no offload.
        let vnet = MemoryLayout<CMirrorSys_vnet_hdr>.size, stride = vnet + frame.count, nflows = Int(max(1, flows))
        let frames = UnsafeMutableRawPointer.allocate(byteCount: stride * nflows, alignment: 8)
        defer { frames.deallocate() }
        for f in 0..<nflows {
            let at = frames + f * stride
            at.initializeMemory(as: UInt8.self, repeating: 0, count: vnet)
            frame.withUnsafeBytes { (at + vnet).copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
            let sport = UInt16(truncatingIfNeeded: 10000 + f)
            at.storeBytes(of: sport.bigEndian, toByteOffset: vnet + 34, as: UInt16.self)
        }
        let batch = Self.packetBatch
        let iovs = UnsafeMutablePointer<iovec>.allocate(capacity: batch)
        let msgs = UnsafeMutablePointer<CMirrorSys_mmsghdr>.allocate(capacity: batch)
        defer { iovs.deallocate(); msgs.deallocate() }
        let start = CMirrorSys_monotonic_ns()
        let end = start + UInt64(duration * 1e9)
        let schedule = Schedule(start: start, rate: rate, chunk: UInt32(batch))
        var sent: UInt64 = 0, next = 0
        while true {
            let now = CMirrorSys_monotonic_ns()
            guard now < end else { break }
            let wait = schedule.claim(now: now)
            if wait > 0 { usleep(UInt32(min(2_000, wait / 1000))); continue }
            for i in 0..<batch {
                iovs[i] = iovec(iov_base: frames + ((next + i) % nflows) * stride, iov_len: stride)
                var h = msghdr()
                h.msg_iov = iovs + i
                h.msg_iovlen = 1
                msgs[i] = CMirrorSys_mmsghdr(msg_hdr: h, msg_len: 0)
            }
            next = (next + batch) % nflows
            let n = CMirrorSys_sendmmsg(fd, msgs, UInt32(batch), 0)
            if n > 0 { sent += UInt64(n) } else if n != -ENOBUFS && n != -EAGAIN {
                throw ValidationError("AF_PACKET sendmmsg on \(interface): errno \(-n)")
            }
        }
        let seconds = Double(CMirrorSys_monotonic_ns() - start) / 1e9
        print("{\"sent\": \(sent), \"seconds\": \(seconds), \"method\": \"packet\"}")
    }
}

/// The generator's schedule: frames its threads claimed, and the first
/// failure.
final class Schedule: @unchecked Sendable {
    private let lock = NSLock()
    private let start: UInt64, rate: Int, chunk: UInt32
    private var _claimed: UInt64 = 0
    private var _failure: Int32 = 0

    init(start: UInt64, rate: Int, chunk: UInt32) {
        self.start = start
        self.rate = rate
        self.chunk = chunk
    }

    var claimed: UInt64 { lock.withLock { _claimed } }
    var failure: Int32 { lock.withLock { _failure } }

    /// Claims the next chunk if it is due (returns 0), else returns the
    /// nanoseconds until it is.
    func claim(now: UInt64) -> UInt64 {
        lock.withLock {
            if rate > 0 {
                let due = start + UInt64(Double(_claimed) / Double(rate) * 1e9)
                if due > now { return due - now }
            }
            _claimed += UInt64(chunk)
            return 0
        }
    }

    func fail(_ rc: Int32) { lock.withLock { if _failure == 0 { _failure = rc } } }
}

struct Count: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Count and drop the IPv4 UDP datagrams to a port arriving at an interface (tc ingress, or XDP for a 256-slot veth ring); print the total every 50 ms.")

    @Option(help: "Benchmark object (scripts/build-bpf --bench).") var object: String
    @Option(help: "Interface to count at.") var interface: String
    @Option(help: "UDP destination port to count.") var port: UInt16 = 4789
    @Option(help: "Where to count: tc (ingress, no ring) or xdp (a veth's 256-slot NAPI ring).") var hook = "tc"

    func run() throws {
        let obj = try openBenchObject(object)
        defer { CMirrorBPF_object_close(obj) }
        var p = port
        _ = CMirrorBPF_object_set_rodata(obj, "count_port", &p, 2)
        guard CMirrorBPF_object_load(obj, -1) == 0 else { throw ValidationError("cannot load the counter") }
        let ifindex = CMirrorSys_if_nametoindex(interface)
        let link: Int32
        switch hook {
        case "tc": link = CMirrorBPF_tcx_link(CMirrorBPF_object_prog_fd(obj, "tm_count"), ifindex, 0)
        case "xdp": link = CMirrorBPF_xdp_link(CMirrorBPF_object_prog_fd(obj, "tm_count_ring"), ifindex, 0)
        default: throw ValidationError("--hook: tc or xdp, not \(hook)")
        }
        guard link >= 0 else { throw ValidationError("cannot attach to \(interface): errno \(-link)") }
        defer { _ = CMirrorSys_close(link) }
        let map = CMirrorBPF_object_map_fd(obj, "count_frames")
        var values = [UInt64](repeating: 0, count: Int(CMirrorBPF_num_possible_cpus()))
        while true {
            var key: UInt32 = 0
            _ = CMirrorBPF_map_lookup(map, &key, &values)
            FileHandle.standardOutput.write(Data("\(values.reduce(0, +))\n".utf8))
            usleep(50_000)
        }
    }
}

struct Sink: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bind a UDP port and never read: the kernel counts arrivals (InDatagrams + RcvbufErrors).")

    @Option var port: UInt16
    @Option(help: "Seconds to hold the port.") var duration = 3600.0

    func run() throws {
        let fd = CMirrorSys_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_RCVBUF, 4096)
        let rc = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw ValidationError("bind \(port): errno \(-rc)") }
        Thread.sleep(forTimeInterval: duration)
    }
}

/// An Ethernet/IPv4/UDP frame with a zero UDP checksum.
struct Frames {
    let bytes: [UInt8]

    init(dst: [UInt8], src: [UInt8], from: [UInt8], to: [UInt8], port: UInt16, payload: Int) {
        var ip: [UInt8] = [0x45, 0, UInt8((28 + payload) >> 8), UInt8((28 + payload) & 0xFF), 0, 0, 0x40, 0, 64, 17, 0, 0] + from + to
        var c = InternetChecksum()
        c.add(ip)
        ip[10] = UInt8(c.value >> 8)
        ip[11] = UInt8(c.value & 0xFF)
        let udp: [UInt8] = [0x27, 0x10, UInt8(port >> 8), UInt8(port & 0xFF), UInt8((8 + payload) >> 8), UInt8((8 + payload) & 0xFF), 0, 0]
        bytes = dst + src + [0x08, 0x00] + ip + udp + [UInt8](repeating: 0x5A, count: payload)
    }
}

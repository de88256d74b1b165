import CMirrorSys
import Foundation
import MirrorCore

/// Network namespaces a test creates for itself, joined by veth pairs among
/// themselves only, with addresses from 198.18.0.0/15 and fd00::/8. Names
/// carry the PID and a counter, so an aborted run never collides with the
/// next; `teardown` (also run on deinit) deletes them even when a test fails.
public final class Lab: @unchecked Sendable {
    nonisolated(unsafe) private static var counter = 0
    private static let counterLock = NSLock()

    public let prefix: String
    public private(set) var namespaces: [String] = []
    private var background: [Background] = []
    private let lock = NSLock()

    public init() throws {
        try requireRoot("network namespace tests")
        Self.counterLock.lock()
        Self.counter += 1
        let n = Self.counter
        Self.counterLock.unlock()
        prefix = "tm\(getpid())-\(n)"
    }

    deinit { teardown() }

    /// Creates namespace `<prefix>-<name>` with lo up; returns its full name.
    /// Commands run in it with `ip netns exec` see /etc/netns/<name>/ over
    /// /etc: a resolver that asks only the namespace's own loopback (so a
    /// test's lookup never leaves the machine) and a hosts file that tests
    /// can add names to (`addHost`).
    @discardableResult
    public func namespace(_ name: String) throws -> String {
        let full = "\(prefix)-\(name)"
        try Shell.check(["ip", "netns", "add", full])
        lock.lock(); namespaces.append(full); lock.unlock()
        try Shell.check(["ip", "-n", full, "link", "set", "lo", "up"])
        let etc = "/etc/netns/\(full)"
        try FileManager.default.createDirectory(atPath: etc, withIntermediateDirectories: true)
        try "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n".write(toFile: etc + "/resolv.conf", atomically: true, encoding: .utf8)
        try "127.0.0.1 localhost\n".write(toFile: etc + "/hosts", atomically: true, encoding: .utf8)
        return full
    }

    /// Adds `name` for `address` to a namespace's hosts file.
    public func addHost(_ ns: String, _ name: String, _ address: String) throws {
        let path = "/etc/netns/\(ns)/hosts"
        let old = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        try (old + "\(address) \(name)\n").write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// A veth pair between two namespaces, both ends up.
    public func veth(_ a: String, _ aName: String, _ b: String, _ bName: String, mtu: Int? = nil) throws {
        try Shell.check(["ip", "link", "add", aName, "netns", a, "type", "veth", "peer", "name", bName, "netns", b])
        for (ns, dev) in [(a, aName), (b, bName)] {
            if let mtu { try Shell.check(["ip", "-n", ns, "link", "set", dev, "mtu", "\(mtu)"]) }
            try Shell.check(["ip", "-n", ns, "link", "set", dev, "up"])
        }
    }

    /// Runs a command inside a namespace.
    @discardableResult
    public func exec(_ ns: String, _ args: [String], timeout: TimeInterval = 120) throws -> String {
        try Shell.check(["ip", "netns", "exec", ns] + args, timeout: timeout)
    }

    public func ip(_ ns: String, _ args: String...) throws {
        try Shell.check(["ip", "-n", ns] + args)
    }

    /// Starts a command in a namespace; it is killed (by its PID) at teardown.
    public func start(_ ns: String, _ args: [String]) throws -> Background {
        let b = try Background(["ip", "netns", "exec", ns] + args)
        lock.lock(); background.append(b); lock.unlock()
        return b
    }

    /// Runs `body` on a thread that joined the namespace, for creating
    /// sockets there (a socket keeps its namespace when used elsewhere).
    public func inNamespace<T>(_ ns: String, _ body: @escaping () throws -> T) throws -> T {
        let fd = CMirrorSys_open_readonly("/run/netns/\(ns)")
        guard fd >= 0 else { throw Failure("cannot open /run/netns/\(ns): errno \(-fd)") }
        defer { _ = CMirrorSys_close(fd) }
        nonisolated(unsafe) var result: Result<T, Error>?
        // The thread runs `body` and is joined before returning: no sharing.
        nonisolated(unsafe) let work = body
        let done = DispatchSemaphore(value: 0)
        let t = Thread {
            let rc = CMirrorSys_setns_net(fd)
            if rc != 0 {
                result = .failure(Failure("setns(\(ns)): errno \(-rc)"))
            } else {
                result = Result { try work() }
            }
            done.signal()
        }
        t.start()
        done.wait()
        return try result!.get()
    }

    /// The MAC address of a device in a namespace.
    public func mac(_ ns: String, _ dev: String) throws -> [UInt8] {
        try inNamespace(ns) {
            var mac = [UInt8](repeating: 0, count: 6)
            let rc = CMirrorSys_if_hwaddr(dev, &mac)
            guard rc >= 0 else { throw Failure("SIOCGIFHWADDR \(dev): errno \(-rc)") }
            return mac
        }
    }

    /// One of a device's kernel counters (`/sys/class/net/DEV/statistics/NAME`).
    public func statistic(_ ns: String, _ dev: String, _ name: String) throws -> UInt64 {
        let text = try exec(ns, ["cat", "/sys/class/net/\(dev)/statistics/\(name)"])
        guard let value = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw Failure("\(dev) \(name): not a counter: \(text)")
        }
        return value
    }

    public func ifindex(_ ns: String, _ dev: String) throws -> Int32 {
        try inNamespace(ns) { CMirrorSys_if_nametoindex(dev) }
    }

    /// Kills what this lab started and deletes its namespaces.
    public func teardown() {
        lock.lock()
        let bg = background, ns = namespaces
        background = []
        namespaces = []
        lock.unlock()
        for b in bg where b.isRunning { b.stop(signal: SIGKILL, timeout: 5) }
        for n in ns {
            _ = try? Shell.run(["ip", "netns", "del", n])
            try? FileManager.default.removeItem(atPath: "/etc/netns/\(n)")
        }
    }
}

/// An AF_PACKET socket bound to one interface, for sending exact frames.
public final class RawSocket: @unchecked Sendable {
    public let fd: Int32

    /// Opens the socket inside `ns` on `device`.
    public init(lab: Lab, ns: String, device: String) throws {
        fd = try lab.inNamespace(ns) {
            let fd = CMirrorSys_socket(17 /* AF_PACKET */, 3 /* SOCK_RAW */, 0)
            guard fd >= 0 else { throw Failure("AF_PACKET socket: errno \(-fd)") }
            let idx = CMirrorSys_if_nametoindex(device)
            guard idx > 0 else { throw Failure("no device \(device)") }
            var sll = [UInt8](repeating: 0, count: 20) // struct sockaddr_ll
            sll[0] = 17 // sll_family
            withUnsafeBytes(of: idx) { for i in 0..<4 { sll[4 + i] = $0[i] } }
            let rc = sll.withUnsafeBytes {
                CMirrorSys_bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20)
            }
            guard rc == 0 else { throw Failure("bind AF_PACKET to \(device): errno \(-rc)") }
            _ = CMirrorSys_setsockopt_int(fd, 1 /* SOL_SOCKET */, 32 /* SO_SNDBUFFORCE */, 4 << 20)
            return fd
        }
    }

    deinit { _ = CMirrorSys_close(fd) }

    public func send(_ frame: [UInt8]) throws {
        let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        guard n == frame.count else { throw Failure("AF_PACKET send of \(frame.count) bytes: \(n) (errno \(errno))") }
    }
}

/// tcpdump writing a pcap file in a namespace; `stop` returns the frames.
public final class Capture: @unchecked Sendable {
    public let path: String
    private let process: Background

    public init(lab: Lab, ns: String, device: String, filter: [String] = [], snaplen: Int = 262144) throws {
        path = NSTemporaryDirectory() + "\(lab.prefix)-\(ns.hashValue & 0xFFFF)-\(device)-\(UInt32.random(in: 0...UInt32.max)).pcap"
        process = try lab.start(ns, ["tcpdump", "-U", "-n", "-B", "32768", "-s", "\(snaplen)", "-i", device, "-w", path] + filter)
        guard process.waitForStderr(timeout: 20, { $0.contains("listening on") }) else {
            throw Failure("tcpdump on \(device) did not start: \(process.stderr)")
        }
    }

    /// Frames captured so far (the file is flushed per packet).
    public func frames() throws -> [PcapReader.Frame] {
        guard let d = FileManager.default.contents(atPath: path), d.count >= 24 else { return [] }
        // The last record may be half written while tcpdump runs.
        let bytes = Array(d)
        if let whole = try? PcapReader(bytes: bytes) { return whole.frames }
        return try PcapReader(bytes: Array(bytes.prefix(safePrefix(bytes)))).frames
    }

    /// Waits until `count` frames are in the file or the timeout passes.
    public func waitFor(count: Int, timeout: TimeInterval = 20) throws -> [PcapReader.Frame] {
        let deadline = Date().addingTimeInterval(timeout)
        var f = try frames()
        while f.count < count && Date() < deadline {
            usleep(50_000)
            f = try frames()
        }
        return f
    }

    /// Waits until no frame has arrived for `quiet` seconds (at most `timeout`).
    /// The default outlasts tcpdump's 1 s buffer timeout: libpcap gets the
    /// kernel's frames in blocks, and a block that is not full is handed
    /// over only when that timeout retires it.
    public func settle(quiet: TimeInterval = 1.5, timeout: TimeInterval = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var last = try frames().count
        var since = Date()
        while Date() < deadline {
            usleep(100_000)
            let n = try frames().count
            if n != last {
                last = n
                since = Date()
            } else if Date().timeIntervalSince(since) >= quiet {
                return
            }
        }
    }

    public func stop() throws -> [PcapReader.Frame] {
        process.stop(signal: SIGINT, timeout: 10)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try frames()
    }

    /// Stops tcpdump and returns the frames and what it says the kernel
    /// dropped before tcpdump read them (its capture ring was full): those
    /// frames reached the device but are not in the file.
    public func stopCountingDrops() throws -> (frames: [PcapReader.Frame], droppedByKernel: Int) {
        let f = try stop()
        let line = process.stderr.split(separator: "\n").first { $0.hasSuffix("packets dropped by kernel") }
        return (f, line.flatMap { Int($0.split(separator: " ").first ?? "") } ?? 0)
    }

    /// Length of the whole records at the start of a pcap file.
    private func safePrefix(_ b: [UInt8]) -> Int {
        var o = 24
        while o + 16 <= b.count {
            let cap = Int(b[o + 8]) | Int(b[o + 9]) << 8 | Int(b[o + 10]) << 16 | Int(b[o + 11]) << 24
            if o + 16 + cap > b.count { break }
            o += 16 + cap
        }
        return o
    }
}

/// Writes frames to `path` as a pcap file (for tshark), each stamped with
/// its time or 0.
public func writePcap(_ frames: [(timestamp: UInt64, bytes: [UInt8])], to path: String) {
    var file = PcapWriter.fileHeader()
    for f in frames {
        PcapWriter.appendRecordHeader(&file, timestampNanoseconds: f.timestamp, capturedLength: f.bytes.count, originalLength: f.bytes.count)
        file += f.bytes
    }
    FileManager.default.createFile(atPath: path, contents: Data(file))
}

public func writePcap(_ frames: [[UInt8]], to path: String) {
    writePcap(frames.map { (0, $0) }, to: path)
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` (which spawns a child) with no signal blocked on this
/// thread: a child inherits the spawning thread's mask, and the test
/// runner's threads block SIGINT/SIGTERM, which would leave tcpdump or the
/// agent deaf to them.
func withSignalsUnblocked<T>(_ body: () throws -> T) rethrows -> T {
    var all = sigset_t(), old = sigset_t()
    sigfillset(&all)
    pthread_sigmask(SIG_UNBLOCK, &all, &old)
    defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
    return try body()
}

/// Runs commands for tests and tells what they did.
public enum Shell {
    public struct Result: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
        public var ok: Bool { status == 0 }
    }

    /// Runs `arguments` (argv[0] looked up on PATH) to completion.
    @discardableResult
    public static func run(_ arguments: [String], input: Data? = nil, timeout: TimeInterval = 120) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let inPipe = Pipe()
        p.standardInput = input == nil ? FileHandle.nullDevice : inPipe
        try withSignalsUnblocked { try p.run() }
        if let input {
            inPipe.fileHandleForWriting.write(input)
            try? inPipe.fileHandleForWriting.close()
        }
        // Read both pipes while waiting, or a chatty child blocks on a full pipe.
        let group = DispatchGroup()
        nonisolated(unsafe) var o = Data(), e = Data()
        group.enter()
        DispatchQueue.global().async { o = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.enter()
        DispatchQueue.global().async { e = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        if p.isRunning {
            p.terminate()
            usleep(200_000)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        p.waitUntilExit()
        group.wait()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self))
    }

    /// Runs a command and throws with its output when it fails.
    @discardableResult
    public static func check(_ arguments: [String], timeout: TimeInterval = 120) throws -> String {
        let r = try run(arguments, timeout: timeout)
        guard r.ok else { throw Failure("\(arguments.joined(separator: " ")) exited \(r.status): \(r.stderr)\(r.stdout)") }
        return r.stdout
    }
}

public struct Failure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A process started in the background and stopped by PID, only ever the
/// one this object started.
///
/// Its output is read by a thread per pipe with blocking reads, not by
/// FileHandle's readabilityHandler: with many pipes open at once that
/// crashes libdispatch's event loop on Linux (swift-corelibs-foundation
/// issue 3276), which took the whole test process down here once.
public final class Background: @unchecked Sendable {
    public let process = Process()
    private let out = Pipe(), err = Pipe()

    /// What the readers have read; shared with their threads.
    final class Output: @unchecked Sendable {
        let lock = NSLock()
        var out = Data(), err = Data()
        /// Readers that reached end of file.
        var ended = 0
    }
    private let output = Output()

    public init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try withSignalsUnblocked { try process.run() }
        // The child holds the write ends now; ours would keep the pipes open.
        try? out.fileHandleForWriting.close()
        try? err.fileHandleForWriting.close()
        Self.read(out.fileHandleForReading.fileDescriptor, output, stderr: false)
        Self.read(err.fileHandleForReading.fileDescriptor, output, stderr: true)
    }

    private static func read(_ fd: Int32, _ output: Output, stderr: Bool) {
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = Glibc.read(fd, &buffer, buffer.count)
                if n > 0 {
                    output.lock.lock()
                    if stderr { output.err.append(contentsOf: buffer[0..<n]) } else { output.out.append(contentsOf: buffer[0..<n]) }
                    output.lock.unlock()
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            output.lock.lock()
            output.ended += 1
            output.lock.unlock()
        }
        thread.start()
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    public var stdout: String { output.lock.lock(); defer { output.lock.unlock() }; return String(decoding: output.out, as: UTF8.self) }
    public var stderr: String { output.lock.lock(); defer { output.lock.unlock() }; return String(decoding: output.err, as: UTF8.self) }

    /// Waits until `predicate` holds on stderr (the agent logs there).
    public func waitForStderr(timeout: TimeInterval = 30, _ predicate: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if predicate(stderr) { return true }
            if !process.isRunning { return predicate(stderr) }
            usleep(20_000)
        }
        return false
    }

    /// Sends `signal` and waits up to `timeout` for the exit; returns the status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: TimeInterval = 30) -> Int32 {
        if process.isRunning { kill(pid, signal) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        // The readers take the last output, up to end of file.
        let readers = Date().addingTimeInterval(2)
        while Date() < readers {
            output.lock.lock()
            let ended = output.ended
            output.lock.unlock()
            if ended == 2 { break }
            usleep(2000)
        }
        return process.terminationStatus
    }

    /// How the process ended: `.exit` or `.uncaughtSignal`.
    public var terminationReason: Process.TerminationReason { process.terminationReason }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Where the traffic-mirror binary is: $TRAFFIC_MIRROR_BIN, else next to
/// the test bundle (swift build puts products side by side).
public func trafficMirrorBinary() throws -> String {
    if let env = ProcessInfo.processInfo.environment["TRAFFIC_MIRROR_BIN"], !env.isEmpty {
        guard FileManager.default.isExecutableFile(atPath: env) else {
            throw Failure("TRAFFIC_MIRROR_BIN=\(env) is not an executable")
        }
        return env
    }
    return try builtProduct("traffic-mirror")
}

/// A product of this package built next to the test bundle.
public func builtProduct(_ name: String) throws -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent(name).path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    throw Failure("\(name) binary not found next to the tests; run 'swift build' first")
}

/// Fails with what is missing unless the tests run as root (BPF, netns).
public func requireRoot(_ what: String) throws {
    guard geteuid() == 0 else {
        throw Failure("\(what) needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces): run the tests as root, as CI does")
    }
}

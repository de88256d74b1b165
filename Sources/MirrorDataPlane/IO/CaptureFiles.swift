import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// Where `receive` writes frames: pcap (nanosecond) or pcapng, to standard
/// output or to files that rotate like tcpdump's `-G`/`-C`/`-W`.
///
/// Frames are buffered whole and written between frames, so a rotation
/// never splits one, and a file only ever holds complete records: when a
/// write fails (a full disk), the file is cut back to its last complete
/// record before the error is reported.
final class CaptureFiles {
    enum Format: String, Sendable, CaseIterable {
        case pcap, pcapng
    }

    struct Rotation: Sendable, Equatable {
        /// Start a new file after this many seconds (0: never).
        var seconds: Int = 0
        /// Start a new file before one would pass this many bytes (0: never).
        var bytes: Int = 0
        /// Keep at most this many files, removing the oldest (0: all).
        var keep: Int = 0

        var enabled: Bool { seconds > 0 || bytes > 0 }
    }

    /// One capture interface of a pcapng file: a sender and, when the
    /// encapsulation names it, the source interface there (its index: the
    /// sender's interfaces in different namespaces with one index share it).
    struct Interface: Hashable {
        var sender: String
        var ifindex: UInt32?
    }

    /// Interfaces per pcapng file: anyone can send to `receive`, and each
    /// new (sender, interface) would otherwise grow memory and the file.
    static let maxInterfaces = 1024
    /// Where frames of interfaces past `maxInterfaces` go.
    static let otherInterfaces = Interface(sender: "other senders and interfaces")

    let format: Format
    let pattern: String
    let rotation: Rotation
    private var fd: Int32 = -1
    private var buffer = [UInt8]()
    /// Bytes of the current file written (complete records only).
    private var written = 0
    private var opened: UInt64 = 0
    private var interfaces = [Interface: UInt32]()
    private(set) var paths = [String]()
    private var sequence = 0
    /// Frames per file, in the order the files were written.
    private(set) var framesPerFile = [Int]()
    /// Frames written to `otherInterfaces` because a file had
    /// `maxInterfaces` already.
    private(set) var foldedFrames = 0
    /// The reader of standard output went away.
    private(set) var readerGone = false

    var toStandardOutput: Bool { pattern == "-" }

    init(pattern: String, format: Format, rotation: Rotation) throws(OperationalError) {
        self.pattern = pattern
        self.format = format
        self.rotation = rotation
        buffer.reserveCapacity(1 << 20)
        try openNext()
    }

    deinit {
        if fd > 1 { _ = CMirrorSys_close(fd) }
    }

    /// Appends one frame, rotating first when the current file is full or old.
    func append(frame: UnsafeRawBufferPointer, timestamp: UInt64, direction: Direction?, interface: Interface) throws(OperationalError) {
        if rotation.enabled && framesPerFile.last ?? 0 > 0 {
            // A frame of an interface new to this file brings its description block.
            var size = written + buffer.count + recordLength(frame.count, direction: direction)
            if format == .pcapng, case let i = effective(interface), interfaces[i] == nil { size += Self.interfaceBlock(i).count }
            if rotation.bytes > 0 && size > rotation.bytes
                || rotation.seconds > 0 && CMirrorSys_monotonic_ns() - opened >= UInt64(rotation.seconds) * 1_000_000_000 {
                try flush()
                try openNext()
            }
        }
        switch format {
        case .pcap:
            PcapWriter.appendRecordHeader(&buffer, timestampNanoseconds: timestamp, capturedLength: frame.count,
                                          originalLength: frame.count)
            buffer.append(contentsOf: frame)
        case .pcapng:
            let id = interfaceID(interface)
            PcapngWriter.appendPacket(&buffer, interface: id, timestampNanoseconds: timestamp, frame: frame,
                                      originalLength: frame.count, direction: direction)
        }
        framesPerFile[framesPerFile.count - 1] += 1
    }

    private func recordLength(_ length: Int, direction: Direction?) -> Int {
        format == .pcap ? 16 + length : PcapngWriter.packetBlockLength(length, direction: direction != nil)
    }

    /// `i`, or past `maxInterfaces` new to the file, the one for all others.
    private func effective(_ i: Interface) -> Interface {
        interfaces[i] == nil && interfaces.count >= Self.maxInterfaces - 1 ? Self.otherInterfaces : i
    }

    /// The file's number for `i`, writing its description block when new.
    private func interfaceID(_ given: Interface) -> UInt32 {
        let i = effective(given)
        if i != given { foldedFrames += 1 }
        if let id = interfaces[i] { return id }
        let id = UInt32(interfaces.count)
        interfaces[i] = id
        buffer.append(contentsOf: Self.interfaceBlock(i))
        return id
    }

    /// The description block of `i`: named `SENDER[ ifindex N]`.
    private static func interfaceBlock(_ i: Interface) -> [UInt8] {
        var block = [UInt8]()
        PcapngWriter.appendInterface(&block, name: i.ifindex.map { "\(i.sender) ifindex \($0)" } ?? i.sender, description: "copies from traffic-mirror at \(i.sender)"
                                     + (i.ifindex.map { ", source interface index \($0)" } ?? ", source interface not carried"))
        return block
    }

    /// Writes what is buffered.
    func flush() throws(OperationalError) {
        guard !buffer.isEmpty, !readerGone else { return }
        let rc = buffer.withUnsafeBytes { CMirrorSys_write_all(fd, $0.baseAddress, $0.count) }
        if rc == -EPIPE && toStandardOutput {
            readerGone = true
            return
        }
        guard rc == 0 else {
            // Keep the file valid: cut it back to its last complete record.
            if !toStandardOutput { _ = ftruncate(fd, off_t(written)) }
            throw OperationalError("writing \(toStandardOutput ? "standard output" : paths.last ?? pattern): \(SystemError("write", code: rc))"
                                   + (rc == -ENOSPC ? "; the disk is full (the files written so far are complete; free space or set --rotate-bytes with --keep)" : ""))
        }
        written += buffer.count
        buffer.removeAll(keepingCapacity: true)
    }

    private func openNext() throws(OperationalError) {
        if fd > 1 { _ = CMirrorSys_close(fd) }
        interfaces.removeAll()
        written = 0
        opened = CMirrorSys_monotonic_ns()
        framesPerFile.append(0)
        if toStandardOutput {
            fd = 1
        } else {
            let path = nextPath()
            fd = CMirrorSys_open_write(path)
            guard fd >= 0 else { throw OperationalError("--write \(path): \(SystemError("open", code: fd))") }
            paths.append(path)
            if rotation.keep > 0 && paths.count > rotation.keep {
                _ = unlink(paths[paths.count - rotation.keep - 1])
            }
        }
        switch format {
        case .pcap: buffer.append(contentsOf: PcapWriter.fileHeader())
        case .pcapng: PcapngWriter.appendSectionHeader(&buffer, application: "traffic-mirror receive")
        }
        try flush()
    }

    /// The pattern with strftime conversions (UTC) expanded; without any,
    /// the first file is the name itself and the next ones get .1, .2, ...
    /// (tcpdump -C). A name already used in this run gets a number too.
    private func nextPath() -> String {
        defer { sequence += 1 }
        var name = pattern
        if pattern.contains("%") {
            var t = time(nil)
            var tm = tm()
            gmtime_r(&t, &tm)
            var out = [CChar](repeating: 0, count: 4096)
            if strftime(&out, out.count, pattern, &tm) > 0 { name = String(cString: out) }
        } else if sequence > 0 {
            return "\(pattern).\(sequence)"
        }
        var candidate = name
        var n = 1
        while paths.contains(candidate) {
            candidate = "\(name).\(n)"
            n += 1
        }
        return candidate
    }
}

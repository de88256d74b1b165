import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// The built-in target of `traffic-mirror receive`: listens for VXLAN and
/// GENEVE (UDP) and ERSPAN Type II and III (GRE, on a raw socket), takes
/// the inner frames out and writes them as pcap or pcapng, so a user can see
/// end to end what arrives (`--write - | tcpdump -r -`).
///
/// It accepts datagrams from anyone who can reach its sockets: every
/// datagram is bounded (one 64 KiB buffer each, a fixed batch) and parsed
/// with its length checked at every field; what does not parse is counted
/// as malformed.
public final class Receiver {
    public struct Options: Sendable {
        /// UDP addresses (VXLAN, GENEVE).
        public var listen: [HostPort]
        /// Addresses to take GRE (ERSPAN) on, with a raw socket each.
        public var listenGRE: [String]
        /// Keep only VXLAN/GENEVE frames of this VNI, ERSPAN frames of this session ID.
        public var vni: UInt32?
        public var erspanSessionID: UInt32?
        /// Stop after this many frames.
        public var count: Int?
        public var format: String
        public var rotateSeconds: Int
        public var rotateBytes: Int
        public var keep: Int

        public init(listen: [HostPort], listenGRE: [String] = [], vni: UInt32? = nil, erspanSessionID: UInt32? = nil,
                    count: Int?, format: String = "pcap", rotateSeconds: Int = 0, rotateBytes: Int = 0, keep: Int = 0) {
            self.listen = listen
            self.listenGRE = listenGRE
            self.vni = vni
            self.erspanSessionID = erspanSessionID
            self.count = count
            self.format = format
            self.rotateSeconds = rotateSeconds
            self.rotateBytes = rotateBytes
            self.keep = keep
        }
    }

    public struct Stats: Sendable {
        public var datagrams = 0
        public var frames = 0
        public var otherID = 0
        /// No encapsulation we know, or too short for a frame.
        public var malformed = 0
        /// Frames written to each file, in order (the last is the open one).
        public var framesPerFile = [Int]()
        public var files = [String]()
        /// pcapng frames written under one interface for all others: their
        /// file had CaptureFiles.maxInterfaces interfaces already.
        public var foldedFrames = 0
    }

    /// pcapng interfaces a file describes at most (the rest share one).
    public static let maxCaptureInterfaces = CaptureFiles.maxInterfaces
    static let batch = 64
    static let bufferSize = 65536
    static let IPPROTO_GRE_VALUE: Int32 = 47

    struct Socket {
        var fd: Int32
        var gre: Bool
        var ipv4: Bool
    }

    let options: Options
    let sockets: [Socket]
    let files: CaptureFiles
    public private(set) var stats = Stats()
    /// The reader of the output went away (EPIPE): nothing more can be written.
    public var readerGone: Bool { files.readerGone }

    /// Binds every listen address and opens the first output file (`-`:
    /// standard output).
    public init(options: Options, write: String) throws(OperationalError) {
        self.options = options
        var fds = [Socket]()
        func fail(_ message: String) -> OperationalError {
            fds.forEach { _ = CMirrorSys_close($0.fd) }
            return OperationalError(message)
        }
        var binds: [(what: String, address: IPAddress, port: UInt16, gre: Bool)] = []
        for l in options.listen {
            guard let address = IPAddress(l.host) else { throw fail("--listen: \(l.host) must be an IP address (0.0.0.0 or :: for all)") }
            binds.append(("--listen \(HostPort(host: l.host, port: l.port ?? 4789))", address, l.port ?? 4789, false))
        }
        for g in options.listenGRE {
            guard let address = IPAddress(g) else { throw fail("--listen-gre: \(g) must be an IP address (0.0.0.0 or :: for all)") }
            binds.append(("--listen-gre \(g)", address, 0, true))
        }
        for b in binds {
            let fd = b.gre ? CMirrorSys_socket(b.address.isIPv4 ? AF_INET : AF_INET6, Int32(SOCK_RAW.rawValue), Self.IPPROTO_GRE_VALUE)
                           : CMirrorSys_socket(b.address.isIPv4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else {
                throw fail("\(b.what): \(SystemError("socket", code: fd))\(b.gre && fd == -EPERM ? "; a raw socket needs CAP_NET_RAW (run as root)" : "")")
            }
            _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            if CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20) != 0 {
                _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_RCVBUF, 32 << 20)
            }
            _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, Self.SO_TIMESTAMPNS_VALUE, 1)
            if !b.address.isIPv4 && !b.gre { _ = CMirrorSys_setsockopt_int(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
            var storage = sockaddr_storage()
            let len = TargetResolver.fill(&storage, b.address, port: b.port)
            let rc = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_bind(fd, $0, len) } }
            guard rc == 0 else {
                _ = CMirrorSys_close(fd)
                throw fail("\(b.what): \(SystemError("bind", code: rc))\(rc == -EADDRINUSE ? "; another program listens there (a vxlan device on this port?)" : "")")
            }
            fds.append(Socket(fd: fd, gre: b.gre, ipv4: b.address.isIPv4))
        }
        sockets = fds
        do {
            files = try CaptureFiles(pattern: write, format: CaptureFiles.Format(rawValue: options.format) ?? .pcap,
                                     rotation: .init(seconds: options.rotateSeconds, bytes: options.rotateBytes, keep: options.keep))
        } catch {
            throw fail(error.message)
        }
    }

    deinit {
        sockets.forEach { _ = CMirrorSys_close($0.fd) }
    }

    static let SO_TIMESTAMPNS_VALUE: Int32 = 35

    /// Receives until `--count` frames are written, a stop signal
    /// (CMirrorSys_trap_stop_signals) arrives, or the reader of the output
    /// goes away (`readerGone`). Throws when writing fails otherwise.
    public func run() throws(OperationalError) {
        let buffers = UnsafeMutableRawPointer.allocate(byteCount: Self.batch * Self.bufferSize, alignment: 16)
        let controls = UnsafeMutableRawPointer.allocate(byteCount: Self.batch * 64, alignment: 16)
        let iovs = UnsafeMutablePointer<iovec>.allocate(capacity: Self.batch)
        let msgs = UnsafeMutablePointer<CMirrorSys_mmsghdr>.allocate(capacity: Self.batch)
        let names = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: Self.batch)
        defer {
            buffers.deallocate(); controls.deallocate(); iovs.deallocate(); msgs.deallocate(); names.deallocate()
            stats.framesPerFile = files.framesPerFile
            stats.files = files.paths
            stats.foldedFrames = files.foldedFrames
        }
        var pfds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        while CMirrorSys_stop_requested() == 0 && !readerGone {
            if let c = options.count, stats.frames >= c { break }
            // Rotation by time happens at the next frame; a quiet minute
            // still gets its file written out.
            guard poll(&pfds, nfds_t(pfds.count), 100) > 0 else { try files.flush(); continue }
            for (k, p) in pfds.enumerated() where p.revents & Int16(POLLIN) != 0 && !readerGone {
                for i in 0..<Self.batch {
                    iovs[i] = iovec(iov_base: buffers + i * Self.bufferSize, iov_len: Self.bufferSize)
                    var h = msghdr()
                    h.msg_iov = iovs + i
                    h.msg_iovlen = 1
                    h.msg_control = controls + i * 64
                    h.msg_controllen = 64
                    h.msg_name = UnsafeMutableRawPointer(names + i)
                    h.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
                    msgs[i] = CMirrorSys_mmsghdr(msg_hdr: h, msg_len: 0)
                }
                let n = CMirrorSys_recvmmsg(p.fd, msgs, UInt32(Self.batch), 0, -1)
                guard n > 0 else { continue }
                for i in 0..<Int(n) {
                    stats.datagrams += 1
                    // A datagram longer than the buffer is cut: not a frame to trust.
                    if Int32(msgs[i].msg_hdr.msg_flags) & Int32(MSG_TRUNC) != 0 {
                        stats.malformed += 1
                        continue
                    }
                    let payload = UnsafeRawBufferPointer(start: buffers + i * Self.bufferSize, count: Int(msgs[i].msg_len))
                    try handle(payload, socket: sockets[k], sender: TargetResolver.address(of: names[i]).description,
                               arrival: Self.timestamp(msgs[i].msg_hdr))
                    if let c = options.count, stats.frames >= c { break }
                }
                try files.flush()
            }
        }
        try files.flush()
    }

    private func handle(_ datagram: UnsafeRawBufferPointer, socket: Socket, sender: String, arrival: UInt64) throws(OperationalError) {
        guard let (d, range) = DecodedTunnel.datagram(datagram, gre: socket.gre, ipv4: socket.ipv4) else {
            stats.malformed += 1
            return
        }
        if let v = d.encapsulation.isERSPAN ? options.erspanSessionID : options.vni, d.id != v {
            stats.otherID += 1
            return
        }
        try files.append(frame: UnsafeRawBufferPointer(rebasing: datagram[range]), timestamp: d.timestamp ?? arrival,
                         direction: d.direction, interface: .init(sender: sender, ifindex: d.ifindex))
        stats.frames += 1
    }

    /// The kernel's receive time (SO_TIMESTAMPNS), else now.
    static func timestamp(_ h: msghdr) -> UInt64 {
        var c = h.msg_controllen >= MemoryLayout<cmsghdr>.size ? h.msg_control?.assumingMemoryBound(to: cmsghdr.self) : nil
        var remaining = Int(h.msg_controllen)
        while let cm = c, remaining >= MemoryLayout<cmsghdr>.size {
            let len = Int(cm.pointee.cmsg_len)
            if cm.pointee.cmsg_level == SOL_SOCKET && cm.pointee.cmsg_type == SO_TIMESTAMPNS_VALUE && len >= MemoryLayout<cmsghdr>.size + MemoryLayout<timespec>.size {
                let ts = UnsafeRawPointer(cm + 1).loadUnaligned(as: timespec.self)
                return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
            }
            let step = (len + 7) & ~7
            guard step > 0 else { break }
            remaining -= step
            c = UnsafeMutableRawPointer(cm).advanced(by: step).assumingMemoryBound(to: cmsghdr.self)
        }
        return CMirrorSys_realtime_ns()
    }
}

import CMirrorSys
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// The built-in target of `traffic-mirror receive`: listens for VXLAN and
/// GENEVE datagrams, takes the inner frames out and writes them as pcap,
/// so a user can see end to end what arrives (`--write - | tcpdump -r -`).
public final class Receiver {
    public struct Options: Sendable {
        public var listen: [HostPort]
        /// Keep only frames of this VNI.
        public var vni: UInt32?
        /// Stop after this many frames.
        public var count: Int?

        public init(listen: [HostPort], vni: UInt32?, count: Int?) {
            self.listen = listen
            self.vni = vni
            self.count = count
        }
    }

    public struct Stats: Sendable {
        public var datagrams = 0
        public var frames = 0
        public var otherVNI = 0
        /// Neither VXLAN nor GENEVE, or too short for a frame.
        public var malformed = 0
    }

    static let batch = 64
    static let bufferSize = 65536

    let options: Options
    let sockets: [Int32]
    let output: Int32
    public private(set) var stats = Stats()
    /// The reader of the output went away (EPIPE): nothing more can be written.
    public private(set) var readerGone = false

    /// Binds every listen address; `output` is the fd the pcap goes to.
    public init(options: Options, output: Int32) throws(OperationalError) {
        self.options = options
        self.output = output
        var fds = [Int32]()
        for l in options.listen {
            guard let address = IPAddress(l.host) else {
                fds.forEach { _ = CMirrorSys_close($0) }
                throw OperationalError("--listen: \(l.host) must be an IP address (0.0.0.0 or :: for all)")
            }
            let port = l.port ?? Encapsulation.vxlan.defaultPort
            let fd = CMirrorSys_socket(address.isIPv4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw OperationalError("--listen \(l): \(SystemError("socket", code: fd))") }
            _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            if CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20) != 0 {
                _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_RCVBUF, 32 << 20)
            }
            _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, Self.SO_TIMESTAMPNS_VALUE, 1)
            if !address.isIPv4 { _ = CMirrorSys_setsockopt_int(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
            var storage = sockaddr_storage()
            let len = TargetResolver.fill(&storage, address, port: port)
            let rc = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_bind(fd, $0, len) } }
            guard rc == 0 else {
                _ = CMirrorSys_close(fd)
                fds.forEach { _ = CMirrorSys_close($0) }
                throw OperationalError("--listen \(HostPort(host: l.host, port: port)): \(SystemError("bind", code: rc))\(rc == -EADDRINUSE ? "; another program listens there (a vxlan device on this port?)" : "")")
            }
            fds.append(fd)
        }
        sockets = fds
    }

    deinit {
        sockets.forEach { _ = CMirrorSys_close($0) }
    }

    static let SO_TIMESTAMPNS_VALUE: Int32 = 35

    /// Receives until `--count` frames are written, a stop signal
    /// (CMirrorSys_trap_stop_signals) arrives, or the reader of the output
    /// goes away (`readerGone`). Throws when writing fails otherwise.
    public func run() throws(OperationalError) {
        var out = PcapWriter.fileHeader()
        try flush(&out)
        let buffers = UnsafeMutableRawPointer.allocate(byteCount: Self.batch * Self.bufferSize, alignment: 16)
        let controls = UnsafeMutableRawPointer.allocate(byteCount: Self.batch * 64, alignment: 16)
        let iovs = UnsafeMutablePointer<iovec>.allocate(capacity: Self.batch)
        let msgs = UnsafeMutablePointer<CMirrorSys_mmsghdr>.allocate(capacity: Self.batch)
        let names = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: Self.batch)
        defer {
            buffers.deallocate(); controls.deallocate(); iovs.deallocate(); msgs.deallocate(); names.deallocate()
        }
        var pfds = sockets.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while CMirrorSys_stop_requested() == 0 && !readerGone {
            if let c = options.count, stats.frames >= c { break }
            guard poll(&pfds, nfds_t(pfds.count), 100) > 0 else { continue }
            for p in pfds where p.revents & Int16(POLLIN) != 0 && !readerGone {
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
                    let payload = UnsafeRawBufferPointer(start: buffers + i * Self.bufferSize, count: Int(msgs[i].msg_len))
                    handle(payload, timestamp: Self.timestamp(msgs[i].msg_hdr), into: &out)
                    if let c = options.count, stats.frames >= c { break }
                }
                try flush(&out)
            }
        }
        try flush(&out)
    }

    private func handle(_ payload: UnsafeRawBufferPointer, timestamp: UInt64, into out: inout [UInt8]) {
        guard let d = TunnelHeader.decode(payload), payload.count - d.headerLength >= 14 else {
            stats.malformed += 1
            return
        }
        if let v = options.vni, d.vni != v {
            stats.otherVNI += 1
            return
        }
        let frame = UnsafeRawBufferPointer(rebasing: payload[d.headerLength...])
        PcapWriter.appendRecordHeader(&out, timestampNanoseconds: timestamp, capturedLength: frame.count, originalLength: frame.count)
        out.append(contentsOf: frame)
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

    private func flush(_ out: inout [UInt8]) throws(OperationalError) {
        guard !out.isEmpty else { return }
        let rc = out.withUnsafeBytes { CMirrorSys_write_all(output, $0.baseAddress, $0.count) }
        out.removeAll(keepingCapacity: true)
        if rc == -EPIPE {
            readerGone = true
            return
        }
        guard rc == 0 else { throw OperationalError("writing the pcap: \(SystemError("write", code: rc))") }
    }
}

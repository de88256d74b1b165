import CMirrorSys
import Foundation
import MirrorCore

/// A real TCP connection between two namespaces: the client sends
/// `bytes` bytes, the server echoes them, both check what they got. It
/// makes the kernels produce what production traffic looks like (ARP,
/// handshakes, ACKs, unfinished offload checksums).
public enum TCPExchange {
    public static func run(lab: Lab, serverNS: String, serverAddress: IPAddress, port: UInt16,
                           clientNS: String, bytes: Int, timeout: TimeInterval = 30) throws {
        let family = serverAddress.isIPv4 ? AF_INET : AF_INET6
        var addr = sockaddr_storage()
        let len = fill(&addr, serverAddress, port)
        let listener: Int32 = try lab.inNamespace(serverNS) {
            let fd = CMirrorSys_socket(family, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure("socket: \(-fd)") }
            _ = CMirrorSys_setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_bind(fd, $0, len) } }
            guard rc == 0, listen(fd, 4) == 0 else { throw Failure("bind/listen \(serverAddress):\(port): \(-rc)") }
            return fd
        }
        defer { _ = CMirrorSys_close(listener) }
        let client: Int32 = try lab.inNamespace(clientNS) {
            let fd = CMirrorSys_socket(family, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure("socket: \(-fd)") }
            return fd
        }
        defer { _ = CMirrorSys_close(client) }
        let payload = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        nonisolated(unsafe) var serverError: Error?
        let serverDone = DispatchSemaphore(value: 0)
        // Client and server on different CPUs, so the two directions are
        // hooked on different CPUs (and land in different rings).
        let cpus = CMirrorSys_cpu_count()
        Thread {
            defer { serverDone.signal() }
            if cpus > 1 { _ = CMirrorSys_pin_thread(1) }
            guard CMirrorSys_poll1(listener, Int16(POLLIN), Int32(timeout * 1000)) > 0 else {
                serverError = Failure("no connection arrived"); return
            }
            let conn = accept(listener, nil, nil)
            guard conn >= 0 else { serverError = Failure("accept: \(errno)"); return }
            defer { close(conn) }
            var buf = [UInt8](repeating: 0, count: 65536)
            var total = 0
            while total < bytes {
                let n = read(conn, &buf, buf.count)
                if n <= 0 { serverError = Failure("server read ended at \(total)"); return }
                var off = 0
                while off < n {
                    let w = buf.withUnsafeBytes { write(conn, $0.baseAddress! + off, n - off) }
                    if w <= 0 { serverError = Failure("server write"); return }
                    off += w
                }
                total += n
            }
        }.start()
        let serverSockaddr = addr
        nonisolated(unsafe) var clientResult: Result<[UInt8], Error> = .success([])
        let clientDone = DispatchSemaphore(value: 0)
        Thread {
            defer { clientDone.signal() }
            if cpus > 1 { _ = CMirrorSys_pin_thread(0) }
            var target = serverSockaddr
            clientResult = Result { try clientSide(client: client, addr: &target, len: len, payload: payload, timeout: timeout, serverAddress: serverAddress, port: port) }
        }.start()
        clientDone.wait()
        let echoed = try clientResult.get()
        serverDone.wait()
        if let serverError { throw serverError }
        guard echoed == payload else { throw Failure("TCP echo returned \(echoed.count) of \(bytes) bytes, or different bytes") }
    }

    private static func clientSide(client: Int32, addr: inout sockaddr_storage, len: socklen_t, payload: [UInt8],
                                   timeout: TimeInterval, serverAddress: IPAddress, port: UInt16) throws -> [UInt8] {
        let bytes = payload.count
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_connect(client, $0, len) } }
        guard rc == 0 else { throw Failure("connect \(serverAddress):\(port): \(-rc)") }
        var echoed = [UInt8]()
        echoed.reserveCapacity(bytes)
        var sent = 0
        var buf = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(timeout)
        while echoed.count < bytes && Date() < deadline {
            if sent < bytes {
                let chunk = min(8192, bytes - sent)
                let w = payload.withUnsafeBytes { write(client, $0.baseAddress! + sent, chunk) }
                guard w > 0 else { throw Failure("client write: \(errno)") }
                sent += w
            }
            while CMirrorSys_poll1(client, Int16(POLLIN), sent < bytes ? 0 : 200) > 0 {
                let n = read(client, &buf, buf.count)
                if n <= 0 { break }
                echoed += buf[0..<n]
            }
        }
        shutdown(client, Int32(SHUT_WR))
        return echoed
    }

    static func fill(_ s: inout sockaddr_storage, _ a: IPAddress, _ port: UInt16) -> socklen_t {
        withUnsafeMutableBytes(of: &s) { raw in
            switch a {
            case .v4(let b):
                var sin = sockaddr_in()
                sin.sin_family = sa_family_t(AF_INET)
                sin.sin_port = port.bigEndian
                withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: b) }
                raw.storeBytes(of: sin, as: sockaddr_in.self)
                return socklen_t(MemoryLayout<sockaddr_in>.size)
            case .v6(let b):
                var sin6 = sockaddr_in6()
                sin6.sin6_family = sa_family_t(AF_INET6)
                sin6.sin6_port = port.bigEndian
                withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: b) }
                raw.storeBytes(of: sin6, as: sockaddr_in6.self)
                return socklen_t(MemoryLayout<sockaddr_in6>.size)
            }
        }
    }
}

import CMirrorSys
import Foundation

/// A minimal HTTP/1.0 GET inside a namespace, for reading the agent's
/// endpoint and Prometheus's API in tests.
public enum HTTP {
    public struct Response: Sendable {
        public var status: Int
        public var body: String
    }

    public static func get(lab: Lab, ns: String, port: UInt16, path: String, host: String = "127.0.0.1") throws -> Response {
        let fd: Int32 = try lab.inNamespace(ns) {
            let fd = CMirrorSys_socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure("socket: \(-fd)") }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            inet_pton(AF_INET, host, &sin.sin_addr)
            let rc = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { CMirrorSys_connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else {
                _ = CMirrorSys_close(fd)
                throw Failure("connect \(host):\(port) in \(ns): errno \(-rc)")
            }
            return fd
        }
        defer { _ = CMirrorSys_close(fd) }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host)\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        // Read until the body is whole (Content-Length) or the peer closes.
        while CMirrorSys_poll1(fd, Int16(POLLIN), 5000) > 0 {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            data += buf[0..<n]
            if let end = data.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: data[..<end.lowerBound], as: UTF8.self).lowercased()
                if let line = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
                   let length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)),
                   data.count - end.upperBound >= length { break }
            }
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n"),
              let status = Int(text.split(separator: " ").dropFirst().first ?? "") else {
            throw Failure("not an HTTP response from \(host):\(port)\(path): \(text.prefix(200))")
        }
        return Response(status: status, body: String(text[split.upperBound...]))
    }
}

/// Samples of a Prometheus text exposition, by series (name{labels}).
public struct Exposition {
    public var samples: [String: Double] = [:]

    public init(_ text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else { continue }
            samples[String(line[..<space])] = v
        }
    }

    /// The value of `name` with exactly these labels (any order).
    public func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        for (series, v) in samples {
            guard series == name || series.hasPrefix(name + "{") else { continue }
            if Self.labels(of: series) == labels { return v }
        }
        return nil
    }

    /// Every series of `name`, with its labels.
    public func all(_ name: String) -> [([String: String], Double)] {
        samples.filter { $0.key == name || $0.key.hasPrefix(name + "{") }.map { (Self.labels(of: $0.key), $0.value) }
    }

    static func labels(of series: String) -> [String: String] {
        guard let open = series.firstIndex(of: "{") else { return [:] }
        var out = [String: String]()
        let inner = series[series.index(after: open)..<series.index(before: series.endIndex)]
        for pair in inner.split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { continue }
            out[String(kv[0])] = String(kv[1].dropFirst().dropLast())
        }
        return out
    }
}

extension String {
    /// A string from a NUL-terminated C string the callee owns.
    init(cStringPointer p: UnsafePointer<CChar>) {
        let n = strlenCompat(p)
        self = String(decoding: UnsafeRawBufferPointer(start: p, count: n), as: UTF8.self)
    }

    /// A string from a fixed C char array (a tuple) up to its first NUL.
    init<T>(cCharTuple t: T) {
        self = withUnsafeBytes(of: t) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

@inline(__always)
func strlenCompat(_ p: UnsafePointer<CChar>) -> Int {
    var n = 0
    while p[n] != 0 { n += 1 }
    return n
}

#if canImport(Glibc)
import Glibc
#endif

public extension String {
    /// Reads a /proc file (their size is 0 to stat, so read until EOF).
    init(contentsOfProcFile path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError("open \(path)", errno: errno) }
        defer { close(fd) }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        self = String(decoding: out, as: UTF8.self)
    }
}

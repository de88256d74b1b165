#if canImport(Glibc)
import Glibc
#endif

/// Writes to standard error with write(2): no shared FILE state, safe from
/// any thread, one call per line so lines from threads do not interleave.
func writeStderr(_ text: String) {
    var s = text
    s.withUTF8 { buf in
        var off = 0
        while off < buf.count {
            let n = Glibc.write(2, buf.baseAddress! + off, buf.count - off)
            if n <= 0 { break }
            off += n
        }
    }
}

func terminate(_ code: Int32) -> Never {
    Glibc.exit(code)
}

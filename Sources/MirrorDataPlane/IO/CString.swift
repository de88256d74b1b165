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

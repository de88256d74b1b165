/// The compiled BPF program (bpf/mirror.bpf.c), embedded at build time by
/// the BPFObjectBuilder plugin so the binary carries its own kernel side.
public enum MirrorBPFObject {
    /// The ELF object, ready for `bpf_object__open_mem`.
    public static let bytes: [UInt8] = decodeBase64(base64)

    /// Decodes the embedded base64 text. Runs once, at first use.
    static func decodeBase64(_ text: StaticString) -> [UInt8] {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
            table[Int(c)] = UInt8(i)
        }
        return text.withUTF8Buffer { input in
            var out = [UInt8]()
            out.reserveCapacity(input.count / 4 * 3)
            var acc: UInt32 = 0
            var bits = 0
            for c in input where c != UInt8(ascii: "=") {
                let v = table[Int(c)]
                precondition(v != 0xFF, "corrupt embedded BPF object")
                acc = (acc << 6) | UInt32(v)
                bits += 6
                if bits >= 8 {
                    bits -= 8
                    out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
                }
            }
            return out
        }
    }
}

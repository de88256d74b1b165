#if canImport(Glibc)
import Glibc
#endif

/// What the running kernel's release says about how copies may leave.
public enum KernelRelease {
    /// The release of the running kernel (uname -r).
    public static func current() -> String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Major, minor and patch of a release such as "6.4.5-arch1-1" or
    /// "6.18.44-fc-v1300" (a missing patch is 0); nil when it does not start
    /// with numbers.
    public static func version(_ release: String) -> (major: Int, minor: Int, patch: Int)? {
        let numbers = release.prefix { $0.isNumber || $0 == "." }.split(separator: ".").map { Int($0) }
        guard numbers.count >= 2, let major = numbers[0], let minor = numbers[1] else { return nil }
        return (major, minor, numbers.count > 2 ? numbers[2] ?? 0 : 0)
    }

    /// Whether the kernel sends a packet socket's UDP GSO message (its
    /// virtio_net_hdr makes it "dodgy") as IP fragments, not datagrams, out
    /// of a device with UDP segmentation offload: Linux 6.2 up to 6.4.5,
    /// between "udp: allow header check for dodgy GSO_UDP_L4 packets" and
    /// its fix "gso: fix dodgy bit handling for GSO_UDP_L4" (6.5, 6.4.6).
    /// Before 6.2 the kernel refuses such messages (EINVAL), which the
    /// emitter already answers with single copies.
    public static func fragmentsPacketSocketGSO(_ release: String) -> Bool {
        guard let v = version(release), v.major == 6 else { return false }
        return v.minor == 2 || v.minor == 3 || (v.minor == 4 && v.patch < 6)
    }
}

import CMirrorBPF
import MirrorBPFObject
import MirrorCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The loaded BPF object: its programs and maps. Owns the libbpf object;
/// closing it (deinit) releases every program and map the object holds.
/// Attachments hold their own references and are owned separately.
public final class MirrorProgram: @unchecked Sendable {
    // @unchecked: the fds are immutable after load; map updates go through
    // the kernel, which serialises them.

    public struct Settings: Sendable {
        /// Bytes of each per-CPU ring (a power of two, at least one page).
        public var ringBytes: UInt32

        public init(ringBytes: UInt32 = Settings.automaticRingBytes()) {
            self.ringBytes = ringBytes
        }

        /// The default ring size for the CPUs online now (RingSizing).
        public static func automaticRingBytes(total: Int = RingSizing.defaultTotal) -> UInt32 {
            UInt32(RingSizing.perRing(cpus: MirrorProgram.onlineCPUs().count, total: total))
        }
    }

    /// The CPUs online now (/sys/devices/system/cpu/online), else every
    /// possible one.
    public static func onlineCPUs() -> [Int] {
        if let list = try? String(contentsOfProcFile: "/sys/devices/system/cpu/online"), let cpus = RingSizing.cpus(list: list) {
            return cpus
        }
        return Array(0..<max(1, Int(CMirrorBPF_num_possible_cpus())))
    }

    /// The NUMA nodes with CPUs and their CPUs (/sys/devices/system/node);
    /// empty where the kernel shows none (no NUMA support).
    public static func numaNodes() -> [(id: Int, cpus: [Int])] {
        guard let list = try? String(contentsOfProcFile: "/sys/devices/system/node/online"),
              let ids = RingSizing.cpus(list: list) else { return [] }
        return ids.compactMap { id in
            guard let text = try? String(contentsOfProcFile: "/sys/devices/system/node/node\(id)/cpulist"),
                  let cpus = RingSizing.cpus(list: text) else { return nil }
            return (id, cpus)
        }
    }

    private let object: OpaquePointer
    /// Written by `install` only (the agent's change path, one at a time).
    let profiles = Mutex(ProfileTable())
    public let settings: Settings
    public let cpuCount: Int

    public let xdpIngress: Int32
    public let tcEgress: Int32
    public let tcIngress: Int32

    public let controlMap: Int32
    public let slotsMap: Int32
    public let scopeProfilesMap: Int32
    public let profilesMap: Int32
    public let sessionsMap: Int32
    /// The classifier's outer maps: per profile, its tables.
    public let valueClassesMap: Int32
    public let addressBoundsMap: Int32
    public let classBitsMap: Int32
    public let ifStatsMap: Int32
    public let sessionStatsMap: Int32
    public let sampleMap: Int32
    public let usageMap: Int32
    public let rateMap: Int32
    public let ringsMap: Int32
    public let ownSocketsMap: Int32
    public let ownDestsMap: Int32
    public let ownPortsMap: Int32

    /// Opens and loads the embedded object. The error names the cause and
    /// the remedy (privileges, kernel features, verifier refusal).
    public init(settings: Settings = Settings()) throws(OperationalError) {
        self.settings = settings
        let cpus = CMirrorBPF_num_possible_cpus()
        guard cpus > 0 else { throw OperationalError("cannot read the number of possible CPUs: \(SystemError("libbpf_num_possible_cpus", code: cpus))") }
        cpuCount = Int(cpus)
        guard settings.ringBytes >= 4096, settings.ringBytes & (settings.ringBytes - 1) == 0 else {
            throw OperationalError("ring size \(settings.ringBytes) must be a power of two of at least 4096 bytes")
        }

        CMirrorBPF_log_capture(1)
        var obj: OpaquePointer?
        let bytes = MirrorBPFObject.bytes
        var rc = bytes.withUnsafeBytes {
            CMirrorBPF_object_open($0.baseAddress, $0.count, "traffic_mirror", &obj)
        }
        guard rc == 0, let obj else {
            throw OperationalError("cannot open the embedded BPF object: \(SystemError("bpf_object__open_mem", code: rc)); \(Self.takeLog())")
        }
        var template: Int32 = -1
        rc = CMirrorBPF_object_configure(obj, settings.ringBytes, UInt32(cpus), &template)
        if rc == 0 {
            rc = CMirrorBPF_object_load(obj, template)
        } else if template >= 0 {
            close(template)
        }
        if rc != 0 {
            let log = Self.takeLog()
            CMirrorBPF_object_close(obj)
            throw OperationalError(Self.explainLoadFailure(code: rc, log: log))
        }
        CMirrorBPF_log_capture(0)
        object = obj

        func prog(_ name: String) -> Int32 { CMirrorBPF_object_prog_fd(obj, name) }
        func map(_ name: String) -> Int32 { CMirrorBPF_object_map_fd(obj, name) }
        xdpIngress = prog("tm_xdp_ingress")
        tcEgress = prog("tm_tc_egress")
        tcIngress = prog("tm_tc_ingress")
        controlMap = map("tm_control")
        slotsMap = map("tm_slots")
        scopeProfilesMap = map("tm_scope_profiles")
        profilesMap = map("tm_profiles")
        sessionsMap = map("tm_sessions")
        valueClassesMap = map("tm_value_classes")
        addressBoundsMap = map("tm_addr_bounds")
        classBitsMap = map("tm_class_bits")
        ifStatsMap = map("tm_if_stats")
        sessionStatsMap = map("tm_session_stats")
        sampleMap = map("tm_sample_count")
        usageMap = map("tm_session_usage")
        rateMap = map("tm_rate")
        ringsMap = map("tm_rings")
        ownSocketsMap = map("tm_own_sockets")
        ownDestsMap = map("tm_own_dests")
        ownPortsMap = map("tm_own_ports")
        let fds = [xdpIngress, tcEgress, tcIngress, controlMap, slotsMap, scopeProfilesMap, profilesMap, sessionsMap,
                   valueClassesMap, addressBoundsMap, classBitsMap, ifStatsMap, sessionStatsMap, sampleMap, rateMap, ringsMap,
                   ownSocketsMap, ownDestsMap, ownPortsMap]
        guard fds.allSatisfy({ $0 >= 0 }) else {
            CMirrorBPF_object_close(obj)
            throw OperationalError("the embedded BPF object lacks a program or map this agent expects (a build mismatch); rebuild with swift build")
        }
        var zero: UInt32 = 0
        var control = tm_control()
        if let start = Self.startTime(pid: getpid()) {
            control.owner_pid = UInt32(getpid())
            control.owner_start = start
        }
        _ = CMirrorBPF_map_update(controlMap, &zero, &control, 0)
    }

    deinit {
        CMirrorBPF_object_close(object)
    }

    /// When process `pid` started, in clock ticks since boot (it tells the
    /// process from a later one with the same PID); nil when there is none.
    public static func startTime(pid: Int32) -> UInt64? {
        guard let stat = try? String(contentsOfProcFile: "/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after "(comm)": state is field 3, starttime field 22.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let start = UInt64(fields[19]) else { return nil }
        return start
    }

    static func takeLog() -> String {
        var buf = [CChar](repeating: 0, count: 65536)
        let n = CMirrorBPF_log_take(&buf, buf.count)
        return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// One line naming the cause and the remedy; the verifier's own
    /// complaint when the verifier refused.
    static func explainLoadFailure(code: Int32, log: String) -> String {
        let err = SystemError("loading the BPF program", code: code)
        let complaint = verifierComplaint(log)
        switch -code {
        case 1 /* EPERM */:
            return "\(err): the agent needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_NET_RAW (or root); run it as root or with the capabilities of deploy/traffic-mirror.service"
        case 13 /* EACCES */ where log.contains("prohibited for !root") || log.contains("pointer comparison prohibited")
            || log.contains("corrupt spilled pointer"):
            return "\(err): the verifier accepts this program's use of pointers only with CAP_PERFMON (\(complaint)); grant CAP_PERFMON as deploy/traffic-mirror.service does"
        case 13 /* EACCES */:
            return "\(err): the kernel's verifier refused the program: \(complaint); this kernel may be older than the 5.18 the program needs, or this is a bug (please report it with 'traffic-mirror version')"
        case 22 /* EINVAL */, 524 /* ENOTSUPP */, 95 /* EOPNOTSUPP */:
            return "\(err): this kernel lacks a BPF feature the program needs (XDP multi-buffer, bpf_xdp_load_bytes, ring buffers: Linux 5.18 or newer, with BTF); \(complaint)"
        default:
            return "\(err): \(complaint)"
        }
    }

    /// The verifier's reason: the line before its "processed N insns"
    /// summary, else the last lines of the log.
    static func verifierComplaint(_ log: String) -> String {
        let lines = log.split(separator: "\n").map { String($0.drop { $0 == " " || $0 == "\t" }) }.filter { !$0.isEmpty }
        if let i = lines.firstIndex(where: { $0.hasPrefix("processed ") }), i > 0 {
            return lines[i - 1]
        }
        return lastLines(log)
    }

    static func lastLines(_ log: String) -> String {
        let lines = log.split(separator: "\n").map { $0.drop { $0 == " " || $0 == "\t" } }.filter { !$0.isEmpty }
        return lines.suffix(4).joined(separator: " | ")
    }
}

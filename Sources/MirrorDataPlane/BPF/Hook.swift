import CMirrorBPF
import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// How the hook of one direction is attached.
public enum HookKind: String, Sendable, CaseIterable {
    /// XDP through a bpf_link (ingress only).
    case xdp
    /// tc through a tcx link (Linux 6.6+).
    case tcx
    /// tc through a netlink clsact filter (kernels without tcx).
    case netlink
}

/// Which ingress hook and which tc mechanism to use.
///
/// Ingress defaults to tc: a tc program sees the skb the stack built,
/// after GRO, and changes nothing about the device. XDP sees each frame as
/// the driver received it, before GRO, but attaching it is not transparent
/// on every device: on veth it turns on NAPI and GRO for the device and
/// takes the software segmentation offloads (TSO, GSO) off its peer, and a
/// device without native XDP gets generic XDP, which linearises or copies
/// super-packets with allocations that can fail. So XDP is opt-in and only
/// ever native (docs/operations.md).
public struct HookPolicy: Sendable, Equatable {
    public enum IngressHook: String, Sendable, CaseIterable { case xdp, tc }
    public enum TCAttach: String, Sendable, CaseIterable { case auto, tcx, netlink }

    public var ingress: IngressHook
    public var tcAttach: TCAttach

    public init(ingress: IngressHook = .tc, tcAttach: TCAttach = .auto) {
        self.ingress = ingress
        self.tcAttach = tcAttach
    }
}

/// One attached program on one interface and direction. Detaches when it
/// goes away: links by closing their fd (the kernel also does that when the
/// process dies), netlink filters by deleting exactly our filter.
public final class Hook: @unchecked Sendable {
    // @unchecked: immutable after init; deinit runs once.
    public let interface: String
    public let namespace: NetworkNamespace
    public let ifindex: Int32
    public let direction: Direction
    public let kind: HookKind
    private let linkFD: Int32
    private let programID: UInt32

    private init(interface: String, ifindex: Int32, direction: Direction, kind: HookKind, linkFD: Int32, programID: UInt32) {
        self.interface = interface
        self.namespace = NetworkNamespace(source: interface)
        self.ifindex = ifindex
        self.direction = direction
        self.kind = kind
        self.linkFD = linkFD
        self.programID = programID
    }

    private var detached = false

    deinit { detach() }

    /// Detaches now (a hook whose interface left the plan, before its
    /// counters are read for the last time); later calls do nothing.
    /// Callers hold the agent's change lock.
    public func detach() {
        guard !detached else { return }
        detached = true
        if linkFD >= 0 {
            _ = close(linkFD)
        } else if kind == .netlink {
            // Delete the filter only if it still runs our program: another
            // agent may have replaced it after a restart of ours.
            // Netlink speaks to the interface's namespace: go there (a
            // namespace that is gone took the filter with it).
            let (ifindex, programID) = (ifindex, programID)
            let egress: Int32 = direction == .egress ? 1 : 0
            try? namespace.run { () throws(OperationalError) in
                var id: UInt32 = 0
                if CMirrorBPF_tc_query(ifindex, egress, &id) == 0, id == programID {
                    _ = CMirrorBPF_tc_detach(ifindex, egress)
                }
            }
        }
    }

    /// Attaches `program`'s hook for `direction` to `interface` (a source
    /// name: NAMESPACE/NAME for another namespace, entered to attach).
    /// The error is one line naming the cause and the remedy.
    public static func attach(
        program: MirrorProgram, interface: String, ifindex: Int32, direction: Direction, policy: HookPolicy
    ) throws(OperationalError) -> Hook {
        try NetworkNamespace(source: interface).run { () throws(OperationalError) -> Hook in
            try attachHere(program: program, interface: interface, ifindex: ifindex, direction: direction, policy: policy)
        }
    }

    private static func attachHere(
        program: MirrorProgram, interface: String, ifindex: Int32, direction: Direction, policy: HookPolicy
    ) throws(OperationalError) -> Hook {
        if direction == .ingress && policy.ingress == .xdp {
            // Native mode only: generic XDP is never what a user wants here.
            let fd = CMirrorBPF_xdp_link(program.xdpIngress, ifindex, Self.xdpDriverMode)
            guard fd >= 0 else { throw explainXDP(code: fd, interface: interface, ifindex: ifindex) }
            return Hook(interface: interface, ifindex: ifindex, direction: direction, kind: .xdp, linkFD: fd, programID: 0)
        }
        let prog = direction == .egress ? program.tcEgress : program.tcIngress
        let egress: Int32 = direction == .egress ? 1 : 0
        if policy.tcAttach != .netlink {
            let fd = CMirrorBPF_tcx_link(prog, ifindex, egress)
            if fd >= 0 {
                return Hook(interface: interface, ifindex: ifindex, direction: direction, kind: .tcx, linkFD: fd, programID: 0)
            }
            // EINVAL: the kernel does not know the tcx attach types (< 6.6).
            if policy.tcAttach == .tcx || fd != -EINVAL {
                throw OperationalError("cannot attach the tc \(direction) program to \(interface): \(SystemError("tcx link", code: fd))\(remedy(fd))")
            }
        }
        let rc = CMirrorBPF_tc_attach(prog, ifindex, egress)
        guard rc == 0 else {
            if rc == -EEXIST {
                throw OperationalError("cannot attach the tc \(direction) program to \(interface): a filter already holds traffic-mirror's handle 0x\(String(CMIRRORBPF_TC_HANDLE, radix: 16)) and priority \(CMIRRORBPF_TC_PRIORITY) and it is not ours; remove it with 'tc filter del dev \(interface) \(direction) handle 0x\(String(CMIRRORBPF_TC_HANDLE, radix: 16)) prio \(CMIRRORBPF_TC_PRIORITY) bpf'")
            }
            throw OperationalError("cannot attach the tc \(direction) program to \(interface): \(SystemError("netlink tc filter", code: rc))\(remedy(rc))")
        }
        var id: UInt32 = 0
        _ = CMirrorBPF_tc_query(ifindex, egress, &id)
        return Hook(interface: interface, ifindex: ifindex, direction: direction, kind: .netlink, linkFD: -1, programID: id)
    }

    /// XDP_FLAGS_DRV_MODE.
    static let xdpDriverMode: UInt32 = 1 << 2

    /// What `removeStaleFilters` found in traffic-mirror's netlink filter
    /// slot of an interface.
    public struct StaleFilters: Sendable {
        /// Filters of agents that are gone, removed.
        public var removed: [String] = []
        /// Filters of another running agent, left alone.
        public var othersRunning: [String] = []
    }

    /// Removes the netlink tc filters that an earlier, crashed run of
    /// traffic-mirror left on an interface (kernels without tcx): only
    /// filters in our handle and priority slot whose program carries our
    /// name and whose owner (named in its object's tm_control) is no longer
    /// running. Call once per interface, before attaching to it: a filter of
    /// this process or of another running agent is never removed.
    public static func removeStaleFilters(interface: String, ifindex: Int32) -> StaleFilters {
        let found = try? NetworkNamespace(source: interface).run { () throws(OperationalError) -> StaleFilters in
            staleFiltersHere(interface: interface, ifindex: ifindex)
        }
        return found ?? StaleFilters()
    }

    private static func staleFiltersHere(interface: String, ifindex: Int32) -> StaleFilters {
        var found = StaleFilters()
        for direction in Direction.allCases {
            let egress: Int32 = direction == .egress ? 1 : 0
            var id: UInt32 = 0
            guard CMirrorBPF_tc_query(ifindex, egress, &id) == 0, id != 0 else { continue }
            var name = [CChar](repeating: 0, count: 16)
            var type: UInt32 = 0
            guard CMirrorBPF_prog_info_by_id(id, &name, &type) == 0 else { continue }
            let progName = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard progName == "tm_tc_egress" || progName == "tm_tc_ingress" else { continue }
            let what = "\(interface) \(direction) (program id \(id))"
            var owner = tm_control()
            if CMirrorBPF_prog_control(id, &owner) == 0, owner.owner_pid != 0,
               MirrorProgram.startTime(pid: Int32(bitPattern: owner.owner_pid)) == owner.owner_start {
                found.othersRunning.append("\(what), agent PID \(owner.owner_pid)")
                continue
            }
            if CMirrorBPF_tc_detach(ifindex, egress) == 0 { found.removed.append(what) }
        }
        return found
    }

    static func explainXDP(code: Int32, interface: String, ifindex: Int32) -> OperationalError {
        if code == -EBUSY || code == -EEXIST {
            var id: UInt32 = 0
            if CMirrorBPF_xdp_query(ifindex, &id) == 0, id != 0 {
                var name = [CChar](repeating: 0, count: 16)
                var type: UInt32 = 0
                _ = CMirrorBPF_prog_info_by_id(id, &name, &type)
                let progName = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                return OperationalError("interface \(interface) already has XDP program \"\(progName)\" (id \(id)) attached; traffic-mirror never replaces a program it did not attach: detach it, or mirror this interface's ingress with --ingress-hook tc")
            }
        }
        return OperationalError("cannot attach the XDP program to \(interface): \(SystemError("XDP link", code: code))\(remedy(code))")
    }

    static func remedy(_ code: Int32) -> String {
        switch -code {
        case EPERM: "; the agent needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_NET_RAW (run as root or with the capabilities of deploy/traffic-mirror.service)"
        case ENODEV, ENXIO: "; the interface is gone"
        case EOPNOTSUPP: "; the driver has no native XDP, and traffic-mirror never uses generic XDP (use --ingress-hook tc, the default)"
        default: ""
        }
    }
}

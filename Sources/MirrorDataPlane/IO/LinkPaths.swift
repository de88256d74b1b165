import CMirrorBPF
import CMirrorSys
import Logging
import MirrorCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The link-layer path toward each target endpoint: the interface the route
/// leaves by and the Ethernet addresses of a frame on it. With a path, the
/// copies leave by an AF_PACKET socket on that interface, whole frames
/// built by the agent, runs of one flow as one UDP GSO message: no UDP port
/// is bound and the IP stack is not crossed per copy (no route lookup, no
/// netfilter, no conntrack entry). Without one (no route, neighbour not
/// resolved yet, a link that is not Ethernet, a local target) copies go by
/// the raw IP sockets, which resolve the neighbour themselves.
///
/// A thread of its own keeps the paths current: every `interval` it asks
/// the kernel for the route (with the sockets' mark) and the neighbour, and
/// tells the kernel the neighbour is in use (NTF_USE), so the kernel keeps
/// it confirmed as it would for traffic through the stack (and notices a
/// new MAC after a failover). A neighbour not known yet is left to the
/// first copies: they go through the stack, which resolves it. The forwarding
/// thread reads a path without locks: each slot has a sequence number, odd
/// while it is written.
public final class LinkPaths: @unchecked Sendable {
    // @unchecked: `slots` follows the sequence protocol above; the rest is
    // behind `state`.

    public static let capacity = 1024
    /// How often routes and neighbours are looked at again.
    public static let interval: UInt64 = 250_000_000

    /// Per slot four words: sequence, ifindex (0: no path), destination
    /// MAC, source MAC (each in the low 48 bits, first byte lowest).
    let slots: UnsafeMutablePointer<UInt64>

    struct Endpoint {
        var address: IPAddress
        var slot: Int
        /// The address's 4 or 16 bytes, zero-padded, and its family: what
        /// the netlink calls take, made once (the refresh allocates nothing).
        var raw: (UInt64, UInt64) = (0, 0)
        var family: Int32 = AF_INET

        init(address: IPAddress, slot: Int) {
            self.address = address
            self.slot = slot
            family = address.isIPv4 ? AF_INET : AF_INET6
            withUnsafeMutableBytes(of: &raw) { r in
                for (i, b) in address.bytes.enumerated() { r[i] = b }
            }
        }
    }

    struct State {
        var endpoints: [String: Endpoint] = [:]
        var stopped = false
        /// What each slot's last refresh found, to log changes only.
        var last: [Int: Outcome] = [:]
    }

    private let state = Mutex(State())
    private let mark: UInt32
    private let logger: Logger
    private let thread = DedicatedThread()

    public init(mark: UInt32, logger: Logger) throws(SystemError) {
        self.mark = mark
        self.logger = logger
        slots = .allocate(capacity: Self.capacity * 4)
        slots.initialize(repeating: 0, count: Self.capacity * 4)
        let me = self
        try thread.start { me.run() }
    }

    deinit {
        stop()
        slots.deallocate()
    }

    public func stop() {
        let first = state.withLock { s in
            defer { s.stopped = true }
            return !s.stopped
        }
        if first { thread.join() }
    }

    /// Keeps the paths of `targets`' endpoints (an endpoint that stays keeps
    /// its slot) and resolves them once now; returns their slots by key.
    public func configure(_ targets: [ResolvedTarget]) -> [String: Int] {
        let endpoints = state.withLock { s in
            var keep = [String: Endpoint]()
            var used = Set(s.endpoints.values.map(\.slot))
            for t in targets {
                for e in t.endpoints where keep[e.key] == nil {
                    if let old = s.endpoints[e.key], old.address == e.address {
                        keep[e.key] = old
                    } else {
                        guard let slot = (0..<Self.capacity).first(where: { !used.contains($0) }) else { continue }
                        used.insert(slot)
                        keep[e.key] = Endpoint(address: e.address, slot: slot)
                    }
                }
            }
            for (key, old) in s.endpoints where keep[key] == nil { publish(old.slot, nil) }
            s.endpoints = keep
            return keep
        }
        refresh(endpoints)
        return endpoints.mapValues(\.slot)
    }

    /// The path in `slot` of `slots` (a LinkPaths' storage): interface and
    /// MACs, or nil for none, no slot (-1), or while it is being rewritten.
    @inline(__always)
    static func read(_ slots: UnsafeMutablePointer<UInt64>, _ slot: Int) -> Path? {
        guard slot >= 0 else { return nil }
        let p = slots + slot * 4
        let before = CMirrorBPF_load_acquire_u64(p)
        guard before & 1 == 0 else { return nil }
        let ifindex = CMirrorBPF_load_acquire_u64(p + 1)
        let destination = CMirrorBPF_load_acquire_u64(p + 2)
        let source = CMirrorBPF_load_acquire_u64(p + 3)
        guard ifindex != 0, CMirrorBPF_load_acquire_u64(p) == before else { return nil }
        return Path(ifindex: Int32(truncatingIfNeeded: ifindex), destination: destination, source: source)
    }

    /// A link-layer path: where frames go and their Ethernet addresses.
    struct Path: Equatable {
        var ifindex: Int32
        var destination: UInt64
        var source: UInt64
    }

    private func publish(_ slot: Int, _ path: Path?) {
        let p = slots + slot * 4
        let word = path.map { UInt64(UInt32(bitPattern: $0.ifindex)) } ?? 0
        let destination = path?.destination ?? 0, source = path?.source ?? 0
        if CMirrorSys_load_relaxed_u64(p + 1) == word,
           CMirrorSys_load_relaxed_u64(p + 2) == destination, CMirrorSys_load_relaxed_u64(p + 3) == source { return }
        let seq = CMirrorSys_load_relaxed_u64(p)
        CMirrorBPF_store_release_u64(p, seq &+ 1)
        CMirrorBPF_store_release_u64(p + 1, word)
        CMirrorBPF_store_release_u64(p + 2, destination)
        CMirrorBPF_store_release_u64(p + 3, source)
        CMirrorBPF_store_release_u64(p, seq &+ 2)
    }

    private func run() {
        CMirrorSys_set_thread_name("tm-paths")
        while true {
            let (stopped, endpoints) = state.withLock { ($0.stopped, $0.endpoints) }
            if stopped { break }
            refresh(endpoints)
            var slept: UInt64 = 0
            while slept < Self.interval && !state.withLock({ $0.stopped }) {
                usleep(20_000)
                slept += 20_000_000
            }
        }
    }

    static let ARPHRD_ETHER: Int32 = 1
    static let ARPHRD_LOOPBACK: Int32 = 772
    /// NUD_INCOMPLETE, NUD_FAILED and NUD_NONE have no usable address.
    static let NUD_VALID: UInt16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80

    private func refresh(_ endpoints: [String: Endpoint]) {
        for (key, e) in endpoints {
            let found = resolve(e)
            if case .path(let p) = found { publish(e.slot, p) } else { publish(e.slot, nil) }
            note(key, e.slot, found)
        }
    }

    /// What a refresh found (not a Result: its generic == instantiates type
    /// metadata, an allocation, on every comparison).
    enum Outcome: Equatable {
        case path(Path)
        case none(PathError)
    }

    /// Why an endpoint has no link-layer path. Plain values: the refresh
    /// runs all the agent's life and allocates nothing unless a path
    /// changes (the allocation check counts every thread).
    enum PathError: Equatable {
        case noRoute(Int32)
        case loopback
        case notEthernet(Int32)
        case unresolved

        var reason: String {
            switch self {
            case .noRoute(let code): "no route (\(SystemError("RTM_GETROUTE", code: code)))"
            // A frame injected on lo has no route attached, and the input
            // route lookup takes 127/8 from a device for a martian.
            case .loopback: "a local target (loopback)"
            case .notEthernet(let type): type < 0 ? "\(SystemError("SIOCGIFHWADDR", code: type))" : "the interface is not Ethernet (type \(type))"
            case .unresolved: "next hop not resolved yet"
            }
        }
    }

    /// Logs a change of an endpoint's path (once per change).
    private func note(_ key: String, _ slot: Int, _ found: Outcome) {
        let changed = state.withLock { s in
            if s.last[slot] == found { return false }
            s.last[slot] = found
            return true
        }
        guard changed else { return }
        switch found {
        case .path(let p):
            logger.info("copies leave by AF_PACKET", metadata: [
                "endpoint": "\(key)", "interface": "\(p.ifindex)", "next_hop": "\(Self.mac(p.destination))",
            ])
        case .none(let e):
            logger.info("copies leave by the raw IP socket", metadata: ["endpoint": "\(key)", "why": "\(e.reason)"])
        }
    }

    private func resolve(_ e: Endpoint) -> Outcome {
        let family = e.family
        // Fixed-size buffers on the stack: 16 address bytes, 6 MAC bytes.
        var dst = e.raw
        var gateway: (UInt64, UInt64) = (0, 0)
        var oif: Int32 = 0, hasGateway: Int32 = 0, type: Int32 = 0
        let rc = withUnsafeMutableBytes(of: &dst) { d in
            withUnsafeMutableBytes(of: &gateway) { g in
                CMirrorSys_route_get(family, d.baseAddress!.assumingMemoryBound(to: UInt8.self), mark, &oif,
                                     g.baseAddress!.assumingMemoryBound(to: UInt8.self), &hasGateway, &type)
            }
        }
        guard rc == 0 else { return .none(.noRoute(rc)) }
        var mac: UInt64 = 0
        let hw = withUnsafeMutableBytes(of: &mac) { CMirrorSys_if_hwaddr_index(oif, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        if hw == Self.ARPHRD_LOOPBACK { return .none(.loopback) }
        guard hw == Self.ARPHRD_ETHER else { return .none(.notEthernet(hw)) }
        var hop = hasGateway != 0 ? gateway : dst
        var neighbour: UInt64 = 0
        var nud: UInt16 = 0
        let n = withUnsafeMutableBytes(of: &hop) { h -> Int32 in
            let addr = h.baseAddress!.assumingMemoryBound(to: UInt8.self)
            _ = CMirrorSys_neigh_use(oif, family, addr)
            return withUnsafeMutableBytes(of: &neighbour) {
                CMirrorSys_neigh_get(oif, family, addr, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), &nud)
            }
        }
        guard n == 0, nud & Self.NUD_VALID != 0 else { return .none(.unresolved) }
        return .path(Path(ifindex: oif, destination: neighbour & 0xFFFF_FFFF_FFFF, source: mac & 0xFFFF_FFFF_FFFF))
    }

    static func mac(_ v: UInt64) -> String {
        (0..<6).map { String(UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))), radix: 16) }.map { $0.count == 1 ? "0" + $0 : $0 }
            .joined(separator: ":")
    }
}

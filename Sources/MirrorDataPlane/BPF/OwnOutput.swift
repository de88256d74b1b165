import CMirrorBPF
import CMirrorSys
import MirrorCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Tells the hooks what the agent's own output is (bpf/tm_abi.h, "The
/// agent's own output"): the cookies of the sockets it sends from, and the
/// target endpoints its copies go to. Nothing here marks a packet, so no
/// netfilter rule, kube-proxy, Calico or Cilium can make the agent mirror
/// its own copies, or change what it recognises.
public final class OwnOutput: @unchecked Sendable {
    // @unchecked: the map fds are immutable; updates go through the kernel,
    // which serialises them; `registered` is behind the Mutex.
    private let socketsMap: Int32
    private let destsMap: Int32
    private let portsMap: Int32
    private let lock = Mutex<[Int32: UInt64]>([:])
    private let destinations = Mutex<Set<Destination>>([])

    /// A target endpoint: UDP toward it is a copy.
    public struct Destination: Hashable, Sendable {
        public var address: IPAddress
        public var port: UInt16

        public init(address: IPAddress, port: UInt16) {
            self.address = address
            self.port = port
        }
    }

    public init(program: MirrorProgram) {
        socketsMap = program.ownSocketsMap
        destsMap = program.ownDestsMap
        portsMap = program.ownPortsMap
    }

    /// Sockets registered now (for metrics and tests).
    public var socketCount: Int { lock.withLock { $0.count } }

    /// Registers socket `fd`: its packets are never mirrored. Call before
    /// the first send; `forget` before closing it.
    public func register(_ fd: Int32) throws(SystemError) {
        var cookie: UInt64 = 0
        try SystemError.check(CMirrorSys_socket_cookie(fd, &cookie), "getsockopt(SO_COOKIE)")
        var one: UInt32 = 1
        try SystemError.check(CMirrorBPF_map_update(socketsMap, &cookie, &one, 0),
                              "registering socket \(fd) in tm_own_sockets (\(TM_MAX_OWN_SOCKETS) at most)")
        lock.withLock { $0[fd] = cookie }
    }

    /// Forgets socket `fd` (before it is closed; its cookie is never reused).
    public func forget(_ fd: Int32) {
        guard var cookie = lock.withLock({ $0.removeValue(forKey: fd) }) else { return }
        _ = CMirrorBPF_map_delete(socketsMap, &cookie)
    }

    /// Makes the endpoints of `targets` the destinations that the hooks
    /// recognise as the agent's copies; endpoints no longer used are removed.
    public func setTargets(_ targets: [ResolvedTarget]) throws(SystemError) {
        try setDestinations(Set(targets.flatMap { $0.endpoints.map { Destination(address: $0.address, port: $0.port) } }))
    }

    public func setDestinations(_ wanted: Set<Destination>) throws(SystemError) {
        let old = destinations.withLock { $0 }
        for d in wanted.subtracting(old) {
            var key = Self.key(d)
            var one: UInt32 = 1
            try SystemError.check(CMirrorBPF_map_update(destsMap, &key, &one, 0), "adding \(d.address) port \(d.port) to tm_own_dests")
            try setPortBit(d.port)
        }
        for d in old.subtracting(wanted) {
            var key = Self.key(d)
            _ = CMirrorBPF_map_delete(destsMap, &key)
        }
        destinations.withLock { $0 = wanted }
    }

    private func setPortBit(_ port: UInt16) throws(SystemError) {
        var word = UInt32(port / 64)
        var bits: UInt64 = 0
        _ = CMirrorBPF_map_lookup(portsMap, &word, &bits)
        bits |= 1 << UInt64(port % 64)
        try SystemError.check(CMirrorBPF_map_update(portsMap, &word, &bits, 0), "tm_own_ports[\(word)]")
    }

    static func key(_ d: Destination) -> tm_dest_key {
        var k = tm_dest_key()
        withUnsafeMutableBytes(of: &k.addr) { raw in
            raw.initializeMemory(as: UInt8.self, repeating: 0)
            raw.copyBytes(from: d.address.bytes)
        }
        k.port = d.port
        k.family = d.address.isIPv4 ? 4 : 6
        return k
    }
}

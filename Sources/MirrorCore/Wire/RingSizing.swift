/// How much ring-buffer memory the agent takes: one ring per CPU online at
/// start, all of them together within a total.
///
///     per ring = the largest power of two ≤ total / online CPUs,
///                clamped to 1 MiB … 64 MiB
///     memory   = online CPUs × per ring
///
/// So 2 CPUs get 64 MiB each (128 MiB), 16 get 8 MiB, 128 get 1 MiB, and
/// past 128 CPUs the floor of 1 MiB a ring wins over the total. A ring must
/// hold what its CPU's hooks write while the forwarding thread is off the
/// CPU; with many CPUs the load spreads over as many rings.
public enum RingSizing {
    public static let defaultTotal = 128 << 20
    public static let minimumRing = 1 << 20
    public static let maximumRing = 64 << 20

    /// Bytes of each ring for `cpus` online CPUs within `total`.
    public static func perRing(cpus: Int, total: Int = defaultTotal) -> Int {
        let share = total / max(1, cpus)
        var bytes = maximumRing
        while bytes > minimumRing && bytes > share { bytes >>= 1 }
        return bytes
    }

    /// The CPUs in a kernel CPU list such as "0-3,8,10-11"
    /// (/sys/devices/system/cpu/online); nil when it cannot be read.
    public static func cpus(list: String) -> [Int]? {
        var out = [Int]()
        for part in list.split(whereSeparator: { $0 == "," || $0 == "\n" || $0 == " " }) {
            let ends = part.split(separator: "-")
            guard let lo = Int(ends[0]), ends.count <= 2 else { return nil }
            let hi = ends.count == 2 ? Int(ends[1]) : lo
            guard let hi, hi >= lo else { return nil }
            out += Array(lo...hi)
        }
        return out.isEmpty ? nil : out
    }

    /// One line for `check` and the log: the formula with its figures.
    public static func describe(cpus: Int, total: Int = defaultTotal, perRing explicit: Int? = nil) -> String {
        let ring = explicit ?? perRing(cpus: cpus, total: total)
        let how = explicit != nil ? "--ring-size" : "the largest power of two ≤ \(mib(total)) / CPUs, 1 MiB to 64 MiB"
        return "\(cpus) online CPU\(cpus == 1 ? "" : "s") × \(mib(ring)) = \(mib(cpus * ring)) (per ring: \(how))"
    }

    /// The rings one forwarding thread drains: CPUs of one NUMA node
    /// (`node` nil where the host tells none).
    public struct Group: Equatable, Sendable {
        public var node: Int?
        public var cpus: [Int]
        public init(node: Int?, cpus: [Int]) {
            self.node = node
            self.cpus = cpus
        }
    }

    /// Cuts the rings of `cpus` into forwarding groups of at most
    /// `perThread`. When they all fit in one, they are one group (every
    /// connection's copies in order; its node is theirs if they share one).
    /// Otherwise node by node (`nodes`: each NUMA node's id and CPUs, as
    /// /sys/devices/system/node lists them), so a thread never merges
    /// rings of two nodes, then in the order of `cpus` within a node. CPUs
    /// that no node names come last, grouped the same way.
    public static func groups(cpus: [Int], nodes: [(id: Int, cpus: [Int])], perThread: Int) -> [Group] {
        let size = max(1, perThread)
        var nodeOf = [Int: Int]()
        for n in nodes { for c in n.cpus where nodeOf[c] == nil { nodeOf[c] = n.id } }
        if cpus.count <= size {
            let shared = Set(cpus.map { nodeOf[$0] })
            return cpus.isEmpty ? [] : [Group(node: shared.count == 1 ? shared.first! : nil, cpus: cpus)]
        }
        var out = [Group]()
        func cut(_ list: [Int], _ node: Int?) {
            for first in stride(from: 0, to: list.count, by: size) {
                out.append(Group(node: node, cpus: Array(list[first..<min(first + size, list.count)])))
            }
        }
        for id in Set(nodes.map(\.id)).sorted() { cut(cpus.filter { nodeOf[$0] == id }, id) }
        cut(cpus.filter { nodeOf[$0] == nil }, nil)
        return out
    }

    static func mib(_ bytes: Int) -> String {
        bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB" : "\(bytes >> 10) KiB"
    }
}

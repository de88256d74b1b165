import MirrorCore
import Testing

@Suite("Ring sizing")
struct RingSizingTests {
    @Test("per ring: the largest power of two within the total per online CPU, 1 MiB to 64 MiB")
    func perRing() {
        let mib = 1 << 20
        #expect(RingSizing.perRing(cpus: 1) == 64 * mib)
        #expect(RingSizing.perRing(cpus: 2) == 64 * mib)
        #expect(RingSizing.perRing(cpus: 3) == 32 * mib, "128/3 = 42.7 MiB: 32")
        #expect(RingSizing.perRing(cpus: 16) == 8 * mib)
        #expect(RingSizing.perRing(cpus: 128) == 1 * mib)
        #expect(RingSizing.perRing(cpus: 256) == 1 * mib, "the floor wins past 128 CPUs")
        #expect(RingSizing.perRing(cpus: 4, total: 1 << 30) == 64 * mib, "the ceiling")
        for cpus in [1, 2, 7, 64, 100, 128] {
            #expect(cpus * RingSizing.perRing(cpus: cpus) <= RingSizing.defaultTotal, "\(cpus) CPUs stay within the total")
        }
    }

    @Test("kernel CPU lists")
    func cpuLists() {
        #expect(RingSizing.cpus(list: "0-1\n") == [0, 1])
        #expect(RingSizing.cpus(list: "0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11])
        #expect(RingSizing.cpus(list: "5") == [5])
        #expect(RingSizing.cpus(list: "") == nil)
        #expect(RingSizing.cpus(list: "3-1") == nil)
        #expect(RingSizing.cpus(list: "x") == nil)
    }

    @Test("the description names the formula and its figures")
    func description() {
        #expect(RingSizing.describe(cpus: 2) == "2 online CPUs × 64 MiB = 128 MiB (per ring: the largest power of two ≤ 128 MiB / CPUs, 1 MiB to 64 MiB)")
        #expect(RingSizing.describe(cpus: 1, perRing: 1 << 22) == "1 online CPU × 4 MiB = 4 MiB (per ring: --ring-size)")
    }

    @Test("forwarding groups: at most N rings, never two NUMA nodes in one")
    func groups() {
        typealias G = RingSizing.Group
        // No NUMA information: consecutive CPUs, as before.
        #expect(RingSizing.groups(cpus: Array(0..<40), nodes: [], perThread: 16)
                == [G(node: nil, cpus: Array(0..<16)), G(node: nil, cpus: Array(16..<32)), G(node: nil, cpus: Array(32..<40))])
        // Two nodes numbered in blocks, 24 CPUs each: a group never spans
        // the boundary at 24 (plain cutting by 16 would put 16…31 together).
        let blocks = RingSizing.groups(cpus: Array(0..<48), nodes: [(0, Array(0..<24)), (1, Array(24..<48))], perThread: 16)
        #expect(blocks == [G(node: 0, cpus: Array(0..<16)), G(node: 0, cpus: Array(16..<24)),
                           G(node: 1, cpus: Array(24..<40)), G(node: 1, cpus: Array(40..<48))])
        // Interleaved numbering (even CPUs on node 0, odd on node 1).
        let even = Array(stride(from: 0, to: 64, by: 2)), odd = Array(stride(from: 1, to: 64, by: 2))
        let interleaved = RingSizing.groups(cpus: Array(0..<64), nodes: [(1, odd), (0, even)], perThread: 16)
        #expect(interleaved == [G(node: 0, cpus: Array(even[0..<16])), G(node: 0, cpus: Array(even[16..<32])),
                                G(node: 1, cpus: Array(odd[0..<16])), G(node: 1, cpus: Array(odd[16..<32]))])
        // All of them fit in one group: one group, however many nodes (one
        // thread keeps every connection's copies in order), the node named
        // only when they share it.
        #expect(RingSizing.groups(cpus: Array(0..<8), nodes: [(0, Array(0..<4)), (1, Array(4..<8))], perThread: 16)
                == [G(node: nil, cpus: Array(0..<8))])
        #expect(RingSizing.groups(cpus: [0, 1], nodes: [(0, [0, 1])], perThread: 16) == [G(node: 0, cpus: [0, 1])])
        #expect(RingSizing.groups(cpus: Array(0..<48), nodes: [(0, Array(0..<24)), (1, Array(24..<48))], perThread: 48)
                == [G(node: nil, cpus: Array(0..<48))], "--rings-per-thread at the CPU count: one group")
        #expect(RingSizing.groups(cpus: [], nodes: [(0, [0])], perThread: 16).isEmpty)
        // Every ring in exactly one group, whatever the shape; offline CPUs
        // of a node are not in it, and a CPU no node names comes last.
        let some = RingSizing.groups(cpus: [0, 1, 2, 5, 7, 9], nodes: [(0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])], perThread: 3)
        #expect(some == [G(node: 0, cpus: [0, 1, 2]), G(node: 1, cpus: [5, 7]), G(node: nil, cpus: [9])])
        for size in [1, 3, 16, 255] {
            let g = RingSizing.groups(cpus: Array(0..<256), nodes: [(0, Array(0..<128)), (1, Array(128..<256))], perThread: size)
            #expect(g.flatMap(\.cpus).sorted() == Array(0..<256))
            #expect(g.allSatisfy { group in group.cpus.count <= size && group.cpus.allSatisfy { ($0 < 128 ? 0 : 1) == group.node } })
        }
    }
}

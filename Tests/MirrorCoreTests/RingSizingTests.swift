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
}

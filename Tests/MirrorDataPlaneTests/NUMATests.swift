import CMirrorSys
import Foundation
@testable import MirrorDataPlane
import Synchronization
import Testing

@Suite("NUMA placement of the forwarding groups")
struct NUMATests {
    @Test("the nodes the agent reads name every online CPU once, as sysfs lists them")
    func nodesCoverTheCPUs() throws {
        let nodes = MirrorProgram.numaNodes()
        // The oracle: sysfs read here, node directory by node directory.
        let dir = "/sys/devices/system/node"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        let ids = names.compactMap { $0.hasPrefix("node") ? Int($0.dropFirst(4)) : nil }.sorted()
        var expected = [Int: String]()
        for id in ids {
            let list = try String(contentsOfFile: "\(dir)/node\(id)/cpulist", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            if !list.isEmpty { expected[id] = list }
        }
        #expect(Set(nodes.map(\.id)) == Set(expected.keys))
        let all = nodes.flatMap(\.cpus)
        #expect(all.count == Set(all).count, "no CPU in two nodes")
        if !expected.isEmpty {
            #expect(Set(MirrorProgram.onlineCPUs()).isSubset(of: Set(all)), "every online CPU has a node")
        }
    }

    @Test("a forwarding thread narrows to its node's CPUs it may use, and to none it may not")
    func narrowing() throws {
        let result = Mutex<[Int32]>([])
        let thread = DedicatedThread()
        try thread.start {
            // A CPU this thread may run on: the one it runs on.
            let here = CMirrorSys_current_cpu()
            var cpus: [Int32] = [here]
            let one = CMirrorSys_narrow_thread(&cpus, 1)
            var outside: [Int32] = [-1, 100_000]
            let unchanged = CMirrorSys_narrow_thread(&outside, 2)
            var back: [Int32] = [here, here + 1, here - 1]
            let still = CMirrorSys_narrow_thread(&back, 2)
            result.withLock { $0 = [one, unchanged, still] }
        }
        thread.join()
        let r = result.withLock { $0 }
        #expect(r == [1, 1, 1], "narrowed to its CPU; CPUs it may not use leave it there; a wider list does not widen it")
    }
}

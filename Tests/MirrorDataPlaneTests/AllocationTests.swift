import Foundation
import MirrorTestSupport
import Testing

/// The hot path allocates nothing: the real agent mirrors thousands of
/// batches of diverse frames (single copies and UDP GSO runs) while
/// malloc-interposer counts every allocation of the process.
@Suite("Allocations")
struct AllocationTests {
    @Test("steady state: zero allocations per forwarded batch (tm-bench allocations under malloc-interposer)")
    func zeroPerBatch() throws {
        let bench = try builtProduct("tm-bench")
        let r = try Shell.run([bench, "allocations", "--rounds", "400", "--threshold", "0"], timeout: 300)
        #expect(r.ok, "tm-bench allocations failed (exit \(r.status)): \(r.stdout) \(r.stderr)")
        // "allocations: N over B batches (F frames mirrored): ..."
        let words = r.stdout.split(separator: " ")
        let count = words.count > 1 ? Int(words[1]) : nil
        let batches = words.count > 3 ? Int(words[3]) : nil
        #expect(count == 0, "allocations counted: \(r.stdout)")
        #expect((batches ?? 0) >= 100, "enough batches forwarded to mean something: \(r.stdout)")
        #expect(r.stdout.contains("(102400 frames mirrored)"), "every frame mirrored while counting: \(r.stdout)")
    }
}

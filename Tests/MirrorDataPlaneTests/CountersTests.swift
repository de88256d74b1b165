@testable import MirrorDataPlane
import Testing

@Suite("Forwarder counters")
struct CountersTests {
    @Test("session names past the table go to the unattributed slot, never to another session")
    func overflowIsUnattributed() {
        let c = ForwarderCounters()
        for i in 0..<ForwarderCounters.maxSessions {
            #expect(c.sessionSlot("s\(i)") == i)
        }
        let late = c.sessionSlot("one-too-many")
        #expect(late == ForwarderCounters.unattributedSession)
        #expect(c.sessionSlot("s0") == 0, "a known name keeps its slot")
        c.addDrops(session: late, .noEndpoint, 7)
        let pair = c.pairSlot(session: "one-too-many", target: "t")
        c.addSentPacket(pair: pair)
        let s = c.snapshot()
        #expect(s.unattributedDrops[.noEndpoint] == 7)
        #expect(s.drops.values.allSatisfy { ($0[.noEndpoint] ?? 0) == 0 }, "no named session credited")
        #expect(s.drops["one-too-many"] == nil)
        #expect(pair < ForwarderCounters.maxPairs, "pairs have their own, larger table")
    }

    @Test("pairs past the table are sent as unattributed")
    func pairOverflow() {
        let c = ForwarderCounters()
        for i in 0..<ForwarderCounters.maxPairs { _ = c.pairSlot(session: "s\(i % 7)", target: "t\(i)") }
        let late = c.pairSlot(session: "s0", target: "late")
        #expect(late == ForwarderCounters.unattributedPair)
        c.addSentPacket(pair: late)
        c.addSentPacket(pair: late)
        let s = c.snapshot()
        #expect(s.unattributedSent == 2)
        #expect(s.sent.values.allSatisfy { $0.packets == 0 })
    }
}

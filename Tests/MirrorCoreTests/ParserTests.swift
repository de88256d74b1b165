import MirrorCore
import MirrorFixtures
import Testing

@Suite("Reference parser (SPEC §3)")
struct ParserTests {
    @Test("IPv4 UDP through one and two VLAN tags")
    func vlans() {
        for vlans in [[], [Frames.VLAN(tci: 10)], [Frames.VLAN(tpid: 0x88A8, tci: 100), Frames.VLAN(tci: 10)]] {
            let p = ParsedPacket(frame: Frames.udp4(sport: 1234, dport: 53, vlans: vlans))
            #expect(p.isIP && p.family == .ipv4 && p.proto == 17)
            #expect(p.hasPorts && p.sourcePort == 1234 && p.destinationPort == 53)
            #expect(p.l3Offset == 14 + 4 * vlans.count)
            #expect(p.transportComplete)
        }
    }

    @Test("three tags or a tag in metadata plus two: not looked through")
    func tooManyTags() {
        let three = Frames.udp4(vlans: [Frames.VLAN(tpid: 0x88A8, tci: 1), Frames.VLAN(tci: 2), Frames.VLAN(tci: 3)])
        #expect(!ParsedPacket(frame: three).isIP)
        let two = Frames.udp4(vlans: [Frames.VLAN(tpid: 0x88A8, tci: 1), Frames.VLAN(tci: 2)])
        #expect(ParsedPacket(frame: two).isIP)
        #expect(!ParsedPacket(frame: two, tagsInMetadata: 1).isIP)
    }

    @Test("IPv6 extension headers are walked to the transport header")
    func extensionHeaders() {
        let f = Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(
            transport: .tcp(sport: 7, dport: 443, seq: 1, flags: 2, payload: []),
            extensions: [.hopByHop(), .destination(2), Frames.ExtensionHeader(type: 43, body: [UInt8](repeating: 0, count: 6))]))
        let p = ParsedPacket(frame: f)
        #expect(p.family == .ipv6 && p.proto == 6 && p.hasPorts && p.destinationPort == 443)
        #expect(p.l4Offset == 14 + 40 + 8 + 16 + 8)
    }

    @Test("more than eight extension headers: protocol unknown, no ports")
    func longChain() {
        let f = Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(
            transport: .udp(sport: 1, dport: 2, payload: []), extensions: Array(repeating: .destination(), count: 9)))
        let p = ParsedPacket(frame: f)
        #expect(p.isIP && p.proto == ParsedPacket.protocolUnknown && !p.hasPorts)
        let eight = ParsedPacket(frame: Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(
            transport: .udp(sport: 1, dport: 2, payload: []), extensions: Array(repeating: .destination(), count: 8))))
        #expect(eight.proto == ParsedPacket.protocolUnknown, "eight headers use up the budget before the transport")
        let seven = ParsedPacket(frame: Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(
            transport: .udp(sport: 1, dport: 2, payload: []), extensions: Array(repeating: .destination(), count: 7))))
        #expect(seven.proto == 17 && seven.hasPorts)
    }

    @Test("fragments: the first has ports, later ones do not")
    func fragments() {
        let first4 = ParsedPacket(frame: Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .udp(sport: 5, dport: 53, payload: [1]), fragment: 0x2000)))
        #expect(first4.fragment && !first4.nonFirstFragment && first4.hasPorts && !first4.transportComplete)
        let later4 = ParsedPacket(frame: Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(transport: .raw(proto: 17, bytes: [0, 5, 0, 53, 0, 9]), fragment: 0x0003)))
        #expect(later4.nonFirstFragment && !later4.hasPorts && later4.proto == 17)
        let later6 = ParsedPacket(frame: Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(
            transport: .raw(proto: 6, bytes: [UInt8](repeating: 0, count: 24)), extensions: [.fragment(offset: 10, more: false)])))
        #expect(later6.nonFirstFragment && later6.proto == 6 && !later6.hasPorts)
        let first6 = ParsedPacket(frame: Frames.ethernet(etherType: 0x86DD, payload: Frames.ipv6(
            transport: .tcp(sport: 1, dport: 22, seq: 0, flags: 2, payload: []), extensions: [.fragment(offset: 0, more: true)])))
        #expect(first6.fragment && !first6.nonFirstFragment && first6.hasPorts && first6.destinationPort == 22)
    }

    @Test("malformed IP headers match nothing; short transport headers have no ports")
    func malformed() {
        func v4(_ b: [UInt8]) -> ParsedPacket { ParsedPacket(frame: Frames.ethernet(etherType: 0x0800, payload: b)) }
        let good = Frames.ipv4(transport: .udp(sport: 1, dport: 2, payload: [1, 2, 3, 4]))
        #expect(v4(Frames.ipv4(transport: .udp(sport: 1, dport: 2, payload: []), ihl: 4)).malformed, "IHL below 5")
        #expect(v4(Frames.ipv4(transport: .udp(sport: 1, dport: 2, payload: []), totalLength: 200)).malformed, "length beyond the frame")
        #expect(v4(Frames.ipv4(transport: .udp(sport: 1, dport: 2, payload: []), totalLength: 12)).malformed, "length below the header")
        #expect(v4(Array(good.prefix(19))).malformed, "header cut short")
        var v6 = Frames.ipv6(transport: .udp(sport: 1, dport: 2, payload: []))
        v6[0] = 0x40
        #expect(ParsedPacket(frame: Frames.ethernet(etherType: 0x86DD, payload: v6)).malformed, "IPv6 ethertype, version 4")
        let shortTCP = v4(Frames.ipv4(transport: .raw(proto: 6, bytes: [0, 80, 1, 187, 0, 0, 0, 0, 0, 0])))
        #expect(shortTCP.isIP && shortTCP.transportTruncated && !shortTCP.hasPorts)
        let padded = v4(good + [0, 0, 0, 0, 0, 0])
        #expect(padded.isIP && padded.hasPorts, "Ethernet padding after the IP packet is fine")
        #expect(!ParsedPacket(frame: [UInt8](repeating: 0, count: 10)).isIP, "shorter than an Ethernet header")
        #expect(!ParsedPacket(frame: Frames.ethernet(etherType: 0x0806, payload: [UInt8](repeating: 0, count: 28))).isIP)
    }
}

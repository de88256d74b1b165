import MirrorCore
import Testing

@Suite("Addresses and targets")
struct AddressTests {
    @Test("IPv6 text forms parse and print canonically (RFC 5952)")
    func ipv6() throws {
        let cases: [(String, String)] = [
            ("fd00::2", "fd00::2"), ("FD00:0:0:0:0:0:0:2", "fd00::2"), ("::", "::"), ("::1", "::1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("::ffff:198.18.0.1", "::ffff:c612:1"),
            ("fd00:1:2:3:4:5:6:7", "fd00:1:2:3:4:5:6:7"),
        ]
        for (text, canonical) in cases {
            let a = try #require(IPAddress(text), "\(text) parses")
            #expect(a.description == canonical)
            #expect(!a.isIPv4)
        }
        for bad in ["fd00:::1", "1:2:3:4:5:6:7:8:9", "fd00::g", "12345::", "1.2.3", "256.1.1.1", "01.2.3.4", ""] {
            #expect(IPAddress(bad) == nil, "\(bad) is refused")
        }
        #expect(IPAddress("198.18.0.1") == .v4([198, 18, 0, 1]))
    }

    @Test("CIDRs: family, containment, host bits refused")
    func cidr() throws {
        let c = try CIDR(parsing: "198.18.1.0/24")
        #expect(c.isIPv4 && c.contains([198, 18, 1, 200]) && !c.contains([198, 18, 2, 1]))
        let all = try CIDR(parsing: "0.0.0.0/0")
        #expect(all.contains([1, 2, 3, 4]))
        let v6 = try CIDR(parsing: "fd00::/8")
        #expect(!v6.isIPv4 && v6.contains([0xFD] + [UInt8](repeating: 9, count: 15)))
        #expect(try CIDR(parsing: "198.18.0.7").prefixLength == 32)
        #expect(throws: CIDRError.self) { try CIDR(parsing: "198.18.1.1/24") }
        #expect(throws: CIDRError.self) { try CIDR(parsing: "198.18.1.0/33") }
        #expect(throws: CIDRError.self) { try CIDR(parsing: "fd00::/129") }
        #expect(throws: CIDRError.self) { try CIDR(parsing: "banana/8") }
    }

    @Test("HOST[:PORT] for --target")
    func hostPort() throws {
        #expect(try HostPort(parsing: "198.18.2.2") == HostPort(host: "198.18.2.2", port: nil))
        #expect(try HostPort(parsing: "198.18.2.2:4790") == HostPort(host: "198.18.2.2", port: 4790))
        #expect(try HostPort(parsing: "[fd00::2]:6081") == HostPort(host: "fd00::2", port: 6081))
        #expect(try HostPort(parsing: "[fd00::2]") == HostPort(host: "fd00::2", port: nil))
        #expect(try HostPort(parsing: "fd00::2") == HostPort(host: "fd00::2", port: nil))
        #expect(try HostPort(parsing: "ids.example:4789") == HostPort(host: "ids.example", port: 4789))
        for bad in ["198.18.2.2:0", "198.18.2.2:70000", "[fd00::2", "[fd00::zz]:1", "a b", ":4789", "[fd00::2]x"] {
            #expect(throws: HostPortError.self, "\(bad)") { try HostPort(parsing: bad) }
        }
    }
}

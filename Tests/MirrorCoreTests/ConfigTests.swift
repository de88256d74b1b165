import Foundation
import MirrorCore
import MirrorFixtures
import Testing

@Suite("Config")
struct ConfigTests {
    static let valid = """
    targets:
      ids: {address: 198.18.2.2}
    filters:
      web:
        ingress:
          - {rule: 100, action: accept, protocol: tcp, destination: 198.18.1.0/24, destination_ports: 443}
    sessions:
      - {name: web, interfaces: [eth0], target: ids, filter: web, number: 1, vni: 42}
    """

    func problems(_ yaml: String) -> [String] {
        do {
            _ = try ConfigLoader.load(yaml: yaml)
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test("the SPEC example and deploy/traffic-mirror.yaml load")
    func examples() throws {
        let c = try ConfigLoader.load(yaml: Self.valid)
        #expect(c.targets == [TargetConfig(name: "ids", address: "198.18.2.2")])
        #expect(c.filters[0].ingress[0] == RuleConfig(number: 100, action: .accept, proto: .number(6),
                                                       destination: try CIDR(parsing: "198.18.1.0/24"), destinationPorts: PortRange(443, 443)))
        #expect(c.sessions[0] == SessionConfig(name: "web", interfaces: ["eth0"], target: "ids", filter: "web", number: 1, vni: 42))
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/traffic-mirror.yaml")
        let deploy = try ConfigLoader.load(yaml: String(contentsOf: file, encoding: .utf8))
        #expect(deploy.sessions.count == 4 && deploy.targets.count == 3)
        let group = try #require(deploy.targets.first { $0.name == "sensors" })
        #expect(group.endpoints.count == 2 && group.mode == .balance && group.healthCheck.explicit)
        #expect(deploy.sessions.contains { $0.sample == 10 && $0.rateLimit == RateLimit(unit: .bits, perSecond: 200_000_000, burst: 20_000_000) })
    }

    static let targets = "targets:\n  ids: {address: 198.18.2.2}"
    static let filters = "filters:\n  web:\n    ingress:\n      - {rule: 100, action: accept}"
    static let sessions = "sessions:\n  - {name: web, interfaces: [eth0], target: ids, filter: web, number: 1}"

    /// Each class of mistake: the section it replaces, and the message it
    /// must produce.
    static let cases: [(name: String, section: String, message: String)] = [
        ("unknown key", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, vnii: 3}", "sessions[0].vnii: unknown key"),
        ("unknown top key", "targetz: {}", "targetz: unknown key"),
        ("repeated key", "targets:\n  ids: {address: 198.18.2.2, address: 198.18.2.3}", "key \"address\" appears twice in one mapping at line 2"),
        ("bad CIDR", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: accept, source: 198.18.300.0/24}", "filters.web.ingress[0].source: \"198.18.300.0/24\" is not an IPv4 or IPv6 CIDR"),
        ("host bits", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: accept, source: 198.18.1.7/24}", "did you mean 198.18.1.0/24?"),
        ("ports without ports", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: accept, protocol: icmp, source_ports: 80}", "filters.web.ingress[0].source_ports: ports need protocol tcp or udp; protocol icmp has no ports"),
        ("ports on all", "filters:\n  web:\n    egress:\n      - {rule: 1, action: accept, destination_ports: 80}", "filters.web.egress[0].destination_ports: ports need protocol tcp or udp; protocol all has no ports"),
        ("backwards range", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: accept, protocol: udp, destination_ports: 90-80}", "range 90-80 runs backwards"),
        ("bad port", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: accept, protocol: udp, destination_ports: 70000}", "\"70000\" is not a port"),
        ("repeated rule", "filters:\n  web:\n    ingress:\n      - {rule: 5, action: accept}\n      - {rule: 5, action: reject}", "filters.web.ingress[1].rule: rule number 5 is already used by filters.web.ingress[0]"),
        ("rule out of range", "filters:\n  web:\n    ingress:\n      - {rule: 32767, action: accept}", "filters.web.ingress[0].rule: 32767 is out of range 1...32766"),
        ("mixed families", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: accept, source: 198.18.0.0/15, destination: fd00::/8}", "a rule matches one family"),
        ("bad action", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: allow}", "filters.web.ingress[0].action: \"allow\" is not one of accept, reject"),
        ("bad protocol", "filters:\n  web:\n    ingress:\n      - {rule: 1, action: accept, protocol: sctpp}", "\"sctpp\" is not a protocol"),
        ("vni range", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, vni: 16777216}", "sessions[0].vni: 16777216 is out of range 0...16777215"),
        ("vni type", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, vni: many}", "sessions[0].vni: expected an integer 0...16777215, got \"many\""),
        ("unknown target", "sessions:\n  - {name: a, interfaces: [e], target: idz, number: 1}", "sessions[0].target: no target named \"idz\"; targets: ids"),
        ("unknown filter", "sessions:\n  - {name: a, interfaces: [e], target: ids, filter: nope, number: 1}", "sessions[0].filter: no filter named \"nope\""),
        ("repeated session number", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1}\n  - {name: b, interfaces: [e], target: ids, number: 1}", "sessions[1].number: session number 1 is already used by sessions[0]"),
        ("repeated session name", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1}\n  - {name: a, interfaces: [e], target: ids, number: 2}", "sessions[1].name: session name \"a\" is already used by sessions[0]"),
        ("missing interfaces", "sessions:\n  - {name: a, target: ids, number: 1}", "sessions[0].interfaces: required"),
        ("bad interface", "sessions:\n  - {name: a, interfaces: ['eth0:1'], target: ids, number: 1}", "sessions[0].interfaces[0]: \"eth0:1\" is not an interface name"),
        ("bad namespace", "sessions:\n  - {name: a, interfaces: [a/b/c], target: ids, number: 1}", "sessions[0].interfaces[0]: \"a/b/c\": the network namespace before the '/' must be a name under /var/run/netns"),
        ("packet_length", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, packet_length: 10}", "sessions[0].packet_length: 10 is out of range 14...65535"),
        ("bad direction", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, direction: up}", "sessions[0].direction: \"up\" is not one of ingress, egress, both"),
        ("bad address", "targets:\n  ids: {address: 'not an address'}", "targets.ids.address: \"not an address\" is not an IPv4 address, IPv6 address or host name"),
        ("bad encapsulation", "targets:\n  ids: {address: 198.18.2.2, encapsulation: gre}", "targets.ids.encapsulation: \"gre\" is not one of vxlan, geneve, erspan2, erspan3"),
        ("slice layer", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, packet_length: {after: l7, bytes: 16}}", "sessions[0].packet_length.after: \"l7\" is not one of l3, l4"),
        ("slice bytes", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, packet_length: {after: l4}}", "sessions[0].packet_length.bytes: required: the bytes kept after those headers"),
        ("slice key", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, packet_length: {after: l4, bytes: 1, before: 2}}", "sessions[0].packet_length.before"),
        ("mask bytes", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, mask: {after: l4, bytes: 0}}", "sessions[0].mask.bytes: 0 is out of range 1...65535"),
        ("mask pattern", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, mask: {after: l4, bytes: 4, pattern: 0x100}}", "sessions[0].mask.pattern: \"0x100\" must be a byte"),
        ("duration", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, duration: forever}", "sessions[0].duration: \"forever\": the duration must be"),
        ("max_packets", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, max_packets: 0}", "sessions[0].max_packets: 0 is out of range"),
        ("max_bytes", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, max_bytes: 1Q}", "sessions[0].max_bytes: \"1Q\" must be a byte count"),
        ("start_at", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, start_at: tomorrow}", "sessions[0].start_at: \"tomorrow\" is not an RFC 3339 date-time"),
        ("window order", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, start_at: '2026-12-04T10:00:00Z', stop_at: '2026-12-04T09:00:00Z'}", "sessions[0].stop_at: stop_at is not after start_at"),
        ("dedup window", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, deduplicate: 2s}", "sessions[0].deduplicate: \"2s\": true, false or the window, which must be 1e-06 to 1.0 seconds, as a number or with a unit (us, ms, s, m, h), e.g. 1ms"),
        ("erspan port", "targets:\n  ids: {address: 198.18.2.2, encapsulation: erspan2, port: 4789}", "targets.ids.port: erspan2 runs over GRE (IP protocol 47), which has no port; remove port"),
        ("erspan endpoint port", "targets:\n  ids: {endpoints: ['198.18.2.2:9'], encapsulation: erspan3}", "targets.ids.endpoints: 198.18.2.2:9: erspan3 runs over GRE, which has no port"),
        ("hardware_id range", "targets:\n  ids: {address: 198.18.2.2, encapsulation: erspan3, hardware_id: 64}", "targets.ids.hardware_id: 64 is out of range 0...63"),
        ("hardware_id not erspan3", "targets:\n  ids: {address: 198.18.2.2, encapsulation: erspan2, hardware_id: 1}", "targets.ids.hardware_id: only ERSPAN Type III carries a hardware ID"),
        ("pacing without rate", "targets:\n  ids: {address: 198.18.2.2, pacing: {burst: 8}}", "targets.ids.pacing.packets_per_second: required"),
        ("pacing rate range", "targets:\n  ids: {address: 198.18.2.2, pacing: {packets_per_second: 0}}", "targets.ids.pacing.packets_per_second: 0 is out of range 1...1000000000"),
        ("pacing burst range", "targets:\n  ids: {address: 198.18.2.2, pacing: {packets_per_second: 10, burst: 5000}}", "targets.ids.pacing.burst: 5000 is out of range 1...4096"),
        ("pacing unknown key", "targets:\n  ids: {address: 198.18.2.2, pacing: {rate: 10}}", "targets.ids.pacing.rate:"),
        ("origin not geneve", "targets:\n  ids: {address: 198.18.2.2, geneve_origin: true}", "targets.ids.geneve_origin: the origin option is a GENEVE option"),
        ("origin not boolean", "targets:\n  ids: {address: 198.18.2.2, encapsulation: geneve, geneve_origin: maybe}", "targets.ids.geneve_origin: expected true or false, got \"maybe\""),
        ("host_id without origin", "targets:\n  ids: {address: 198.18.2.2, encapsulation: geneve, host_id: 7}", "targets.ids.host_id: host_id is carried by the GENEVE origin option"),
        ("erspan session id on vxlan", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, erspan_session_id: 3}", "sessions[0].erspan_session_id: target ids is vxlan, not ERSPAN"),
        ("wrong shape", "sessions: {name: a}", "sessions: expected a list of sessions"),
        ("address and endpoints", "targets:\n  ids: {address: 198.18.2.2, endpoints: [198.18.2.3]}", "targets.ids.endpoints: give either address (one endpoint) or endpoints (a group), not both"),
        ("address with port", "targets:\n  ids: {address: '198.18.2.2:4789'}", "targets.ids.address: \"198.18.2.2:4789\": an address takes no port; set port: instead"),
        ("bad endpoint", "targets:\n  ids: {endpoints: [198.18.2.2, '[fd00::zz]:1']}", "targets.ids.endpoints[1]:"),
        ("repeated endpoint", "targets:\n  ids: {endpoints: [198.18.2.2, 198.18.2.2]}", "targets.ids.endpoints[1]: 198.18.2.2 is listed twice"),
        ("bad mode", "targets:\n  ids: {endpoints: [198.18.2.2], mode: roundrobin}", "targets.ids.mode: \"roundrobin\" is not one of balance, replicate"),
        ("tcp probe without port", "targets:\n  ids: {endpoints: [198.18.2.2], health_check: {probe: tcp}}", "targets.ids.health_check.port: required with probe: tcp"),
        ("bad interval", "targets:\n  ids: {endpoints: [198.18.2.2], health_check: {interval: 1h}}", "targets.ids.health_check.interval: \"1h\" must be seconds"),
        ("timeout over interval", "targets:\n  ids: {endpoints: [198.18.2.2], health_check: {interval: 1, timeout: 2}}", "is longer than the interval"),
        ("sample range", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, sample: 0}", "sessions[0].sample: 0 is out of range 1...1000000"),
        ("rate both", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, rate_limit: {packets_per_second: 10, bits_per_second: 10000}}", "sessions[0].rate_limit: give packets_per_second or bits_per_second, not both"),
        ("rate none", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, rate_limit: {burst: 10}}", "sessions[0].rate_limit: needs packets_per_second or bits_per_second"),
        ("small bit burst", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, rate_limit: {bits_per_second: 1000000, burst: 1000}}", "cannot hold one GSO super-packet"),
        ("huge burst", "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, rate_limit: {bits_per_second: 1000000000000, burst: 1000000000000}}", "sessions[0].rate_limit.burst: 1000000000000 is out of range"),
        ("no sessions", "sessions: []", "sessions: at least one session is required"),
        ("syntax", "sessions: [", "config: not valid YAML"),
    ]

    @Test("each class of mistake has its message, with the path in the file")
    func invalid() {
        for c in Self.cases {
            let key = String(c.section.prefix { $0 != ":" })
            let sections = [("targets", Self.targets), ("filters", Self.filters), ("sessions", Self.sessions)]
                .map { $0.0 == key ? c.section : $0.1 }
            let extra = ["targets", "filters", "sessions"].contains(key) ? [] : [c.section]
            let p = problems((sections + extra).joined(separator: "\n") + "\n")
            #expect(p.contains { $0.contains(c.message) }, "\(c.name): expected \"\(c.message)\" in \(p)")
        }
        #expect(problems([Self.targets, Self.filters, Self.sessions].joined(separator: "\n")).isEmpty)
    }

    @Test("ERSPAN session IDs: 0...1023, defaulting to the VNI, which must then fit")
    func erspanSessionIDs() throws {
        let target = "targets:\n  ids: {address: 198.18.2.2, encapsulation: erspan3}\n"
        #expect(problems(target + "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, erspan_session_id: 1024}\n")
            .contains { $0.contains("sessions[0].erspan_session_id: 1024 is out of range 0...1023") })
        #expect(problems(target + "sessions:\n  - {name: a, interfaces: [e], target: ids, number: 1, vni: 5000}\n")
            .contains { $0.contains("sessions[0].erspan_session_id: required: target ids is erspan3, whose session ID (0...1023) defaults to the VNI, and vni 5000 is larger; set erspan_session_id") })
        let c = try ConfigLoader.load(yaml: target + """
        sessions:
          - {name: a, interfaces: [e], target: ids, number: 1, vni: 5000, erspan_session_id: 9}
          - {name: b, interfaces: [e], target: ids, number: 2, vni: 700}
        """)
        #expect(c.sessions.map(\.effectiveERSPANSessionID) == [9, 700])
        #expect(MirrorPlan(compiling: c).sessions.map(\.erspanSessionID) == [9, 700])
        let g = try ConfigLoader.load(yaml: "targets:\n  g: {address: 198.18.2.2, encapsulation: geneve, geneve_origin: true}\n"
                                      + "sessions:\n  - {name: a, interfaces: [e], target: g, number: 1}\n")
        #expect(g.targets[0].tunnel(hostName: "node-1") == Tunnel(.geneve, origin: .init(hostID: Tunnel.GeneveOrigin.hostID(hostName: "node-1"))))
        #expect(Tunnel.GeneveOrigin.hostID(hostName: "a") == 0xE40C_292C) // FNV-1a 32 of "a"
    }

    @Test("pacing loads per target, with the default burst; check shows it")
    func pacingKeys() throws {
        let c = try ConfigLoader.load(yaml: """
        targets:
          p: {address: 198.18.2.2, pacing: {packets_per_second: 400000, burst: 16}}
          d: {address: 198.18.2.3, pacing: {packets_per_second: 1000}}
          u: {address: 198.18.2.4}
        sessions:
          - {name: a, interfaces: [e], target: p, number: 1}
        """)
        #expect(c.targets.map(\.pacing) == [Pacing(packetsPerSecond: 400000, burst: 16), Pacing(packetsPerSecond: 1000, burst: 32), nil])
        #expect(c.targets[0].pacing?.interval == 2500)
        #expect(PlanDescription.render(c).contains("p: 198.18.2.2:4789 vxlan, paced at 400000 packets/s per endpoint (burst 16)"))
    }

    @Test("broker keys load: layer slices, masks, bounds in every unit, RFC 3339 times, deduplication windows")
    func brokerKeys() throws {
        let c = try ConfigLoader.load(yaml: """
        targets:
          t: {address: 198.18.2.2}
        sessions:
          - {name: a, interfaces: [e], target: t, number: 1, packet_length: {after: l3, bytes: 0}, mask: {after: l4, offset: 2, bytes: 8, pattern: 0xaa},
             duration: 10m, max_packets: 5, max_bytes: 1G, start_at: '2026-12-04T21:00:00.5+01:00', stop_at: '2026-12-04T20:30:00Z', deduplicate: true}
          - {name: b, interfaces: [e], target: t, number: 2, packet_length: 100, deduplicate: 250us, duration: 1.5}
        """)
        let a = c.sessions[0], b = c.sessions[1]
        #expect(a.slice == LayerSlice(after: .l3, bytes: 0) && a.packetLength == nil && a.slice?.fallback == 64)
        #expect(a.mask == Mask(after: .l4, offset: 2, bytes: 8, pattern: 0xAA))
        #expect(a.bounds == SessionBounds(duration: 600, maxPackets: 5, maxBytes: 1 << 30, startAt: 1_796_414_400.5, stopAt: 1_796_416_200))
        #expect(a.deduplicate == SessionConfig.defaultDedupWindow && b.deduplicate == 0.000_25)
        #expect(b.packetLength == 100 && b.slice == nil && b.bounds == SessionBounds(duration: 1.5) && b.mask == nil)
        #expect(RFC3339.parse("1970-01-01T00:00:00Z") == 0 && RFC3339.parse("2000-02-29T12:00:00-00:30") == 951_825_600 + 1800)
        #expect(RFC3339.parse("2026-13-01T00:00:00Z") == nil && RFC3339.parse("2026-12-04T21:00:00") == nil)
    }

    @Test("every problem is reported at once")
    func allAtOnce() {
        let yaml = """
        targets:
          ids: {address: 198.18.2.2, port: 0}
        filters:
          f:
            ingress:
              - {rule: 1, action: accept, protocol: icmp, source_ports: 1}
              - {rule: 1, action: maybe}
        sessions:
          - {name: a, interfaces: [e], target: idz, filter: f, number: 1, vni: -1}
          - {name: a, interfaces: [e], target: ids, number: 1}
        """
        let p = problems(yaml)
        #expect(p.count == 8, "\(p.joined(separator: "\n"))")
        #expect(p.allSatisfy { $0.contains("(line ") })
    }

    @Test("interface patterns: accepted, matched like fnmatch, resolved per session without repeats")
    func interfacePatterns() throws {
        let c = try ConfigLoader.load(yaml: """
            targets: {t: {address: 198.18.9.9}}
            sessions:
              - {name: pods, interfaces: ['veth*', 'cali[0-9]?', eth0], target: t, number: 1}
              - {name: lone, interfaces: ['lxc*'], target: t, number: 2}
            """)
        #expect(c.interfacePatterns == ["veth*", "cali[0-9]?", "eth0", "lxc*"])
        let links = ["lo", "eth0", "veth1", "vethab", "cali12", "cali1", "calix2", "eth1"]
        let m = c.matches(in: links)
        #expect(m["veth*"] == ["veth1", "vethab"])
        #expect(m["cali[0-9]?"] == ["cali12"])
        #expect(m["eth0"] == ["eth0"] && m["lxc*"] == [])
        let r = c.resolvingInterfaces(in: links)
        #expect(r.sessions[0].interfaces == ["veth1", "vethab", "cali12", "eth0"])
        #expect(r.sessions[1].interfaces.isEmpty)
        #expect(MirrorPlan(compiling: r).interfaces == ["veth1", "vethab", "cali12", "eth0"])
        // A literal name never matches as a pattern would.
        #expect(c.matches(in: ["eth00"])["eth0"] == [])

        let p = problems("targets: {t: {address: 198.18.9.9}}\nsessions:\n  - {name: s, interfaces: ['veth*/x', 'abcdefghijklmnop'], target: t, number: 1}\n")
        #expect(p.contains { $0.contains("sessions[0].interfaces[0]") && $0.contains("\"veth*/x\": the network namespace before the '/' must be") }, "\(p)")
        #expect(p.contains { $0.contains("sessions[0].interfaces[1]") && $0.contains("(1 to 15 characters)") }, "\(p)")
        #expect(problems("targets: {t: {address: 198.18.9.9}}\nsessions:\n  - {name: s, interfaces: ['abcdefghijklmnop*'], target: t, number: 1}\n").isEmpty)
    }

    @Test("limits: 32 sessions per interface, 256 rules per filter direction")
    func limits() throws {
        var rng = SplitMix64(seed: 3)
        let ok = ConfigGenerator.config(&rng, interfaces: ["eth0"], sessions: 32, maxRules: 3)
        #expect(MirrorPlan(compiling: ok).profiles.allSatisfy { $0.sessions.count <= 32 })
        var yaml = "targets:\n  t: {address: 198.18.9.9}\nfilters:\n  f:\n    ingress:\n"
        for i in 1...257 { yaml += "      - {rule: \(i), action: accept}\n" }
        yaml += "sessions:\n"
        for i in 1...33 { yaml += "  - {name: s\(i), interfaces: [eth0], target: t, filter: f, number: \(i)}\n" }
        let p = problems(yaml)
        #expect(p.contains { $0.contains("filters.f.ingress: 257 rules; at most 256 per direction") })
        #expect(p.contains { $0.contains("interface eth0 has 33 sessions; at most 32 per interface") })
    }

    @Test("a plan beyond the kernel's bitmap budget is refused, with the count and the remedy")
    func bitmapBudget() {
        // 32 sessions x 256 rules each way on two interfaces, every rule with
        // its own source port (a bitmap of one rule per value) and a
        // destination port range shared with its neighbour (one of two).
        var yaml = "targets:\n  t: {address: 198.18.9.9}\nfilters:\n"
        for f in 0..<32 {
            yaml += "  f\(f):\n"
            for direction in ["ingress", "egress"] {
                yaml += "    \(direction):\n"
                for r in 0..<256 {
                    let u = f * 256 + r
                    yaml += "      - {rule: \(r + 1), action: accept, protocol: udp, source: 198.18.\(u / 256).\(u % 256)/32, "
                        + "destination: 198.19.\(u / 256).\(u % 256)/32, source_ports: \(u + 1), destination_ports: \(u + 1)-\(u + 2)}\n"
                }
            }
        }
        yaml += "sessions:\n"
        for i in 0..<32 { yaml += "  - {name: s\(i), interfaces: [eth0, eth1], target: t, filter: f\(i), number: \(i + 1)}\n" }
        let p = problems(yaml)
        #expect(p.count == 1 && p[0].contains("rule bitmaps; the kernel holds 32768: use fewer distinct CIDRs and port ranges"),
                "\(p.joined(separator: "\n"))")
    }

    @Test("thousands of mangled documents never crash the loader")
    func fuzz() {
        var rng = SplitMix64(seed: 0xF022)
        let seeds = [Self.valid, (try? String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("deploy/traffic-mirror.yaml"), encoding: .utf8)) ?? ""]
        let tokens = ["{", "}", "[", "]", ":", "-", " ", "\n", "\t", "\"", "'", "&a", "*a", "!!str", "~", "null", "0x1f",
                      "-1", "99999999999999999999", "198.18.0.0/15", "fd00::/8", "1-2", "rule", "sessions", "<<:"]
        var valid = 0
        for i in 0..<4000 {
            var b = Array(seeds[i % seeds.count].utf8)
            for _ in 0..<Int.random(in: 1...6, using: &rng) where !b.isEmpty {
                let at = Int.random(in: 0..<b.count, using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: b.remove(at: at)
                case 1: b.insert(contentsOf: tokens.randomElement(using: &rng)!.utf8, at: at)
                case 2: b[at] = UInt8.random(in: 0...127, using: &rng)
                default:
                    let n = min(b.count - at, Int.random(in: 1...40, using: &rng))
                    b.insert(contentsOf: b[at..<(at + n)], at: min(b.count, at + Int.random(in: 0...40, using: &rng)))
                }
            }
            if (try? ConfigLoader.load(yaml: String(decoding: b, as: UTF8.self))) != nil { valid += 1 }
        }
        #expect(valid < 4000, "most mangled documents are refused (\(valid) were still valid)")
    }
}

import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// The built binary between network namespaces, with the kernel's own
/// vxlan device and tcpdump/tshark as the receivers.
@Suite("End to end", .serialized)
struct MirrorEndToEndTests {
    /// Frames of a capture as a multiset of byte strings.
    static func multiset(_ frames: [[UInt8]]) -> [[UInt8]: Int] {
        frames.reduce(into: [:]) { $0[$1, default: 0] += 1 }
    }

    /// What the mirror promises to carry for a frame seen on the wire: the
    /// same bytes, with an unfinished offload checksum finished.
    static func onTheWire(_ f: [UInt8]) -> [UInt8] {
        let p = ParsedPacket(frame: f)
        guard p.transportComplete else { return f }
        let fix = f.withUnsafeBytes {
            PartialChecksum.completion(frame: $0, l3Offset: p.l3Offset, l4Offset: p.l4Offset, l4Protocol: UInt8(p.proto))
        }
        guard let fix else { return f }
        var out = f
        out[fix.offset] = UInt8(fix.value >> 8)
        out[fix.offset + 1] = UInt8(fix.value & 0xFF)
        return out
    }

    /// A copy cut at `limit` by the tc hook: the first bytes, with an
    /// unfinished checksum finished when the TCP/UDP header fits and there
    /// is payload (the kernel then sends the payload's sum).
    static func cutOnTheWire(_ f: [UInt8], _ limit: Int) -> [UInt8] {
        let p = ParsedPacket(frame: f)
        let header = p.proto == 6 && p.l4Offset + 13 <= f.count ? p.l4Offset + Int(f[p.l4Offset + 12] >> 4) * 4 : p.l4Offset + 8
        guard p.transportComplete, p.proto == 6 || p.proto == 17, header < limit, p.l4End > header else {
            return Array(f.prefix(limit))
        }
        return Array(onTheWire(f).prefix(limit))
    }

    /// Outer IPv4/UDP/VXLAN of a datagram captured on the target's link.
    struct Outer {
        var dontFragment: Bool
        var ttl: UInt8
        var sourcePort: UInt16
        var destinationPort: UInt16
        var udpChecksum: UInt16
        /// Whether a non-zero UDP checksum verifies over the pseudo header,
        /// header and payload (RFC 7348 §5: zero, or correct).
        var udpChecksumValid: Bool
        var vni: UInt32
        var inner: [UInt8]
    }

    static func outer(_ f: [UInt8]) -> Outer? {
        guard f.count >= 14 + 20 + 8 + 8, f[12] == 0x08, f[13] == 0x00, f[23] == 17 else { return nil }
        let ihl = Int(f[14] & 0x0F) * 4
        let u = 14 + ihl
        let vx = u + 8
        let udpLength = Int(UInt16(f[u + 4]) << 8 | UInt16(f[u + 5]))
        guard u + udpLength <= f.count else { return nil }
        let valid = f.withUnsafeBytes { b in
            var c = PseudoHeader.sumIPv4(source: UnsafeRawBufferPointer(rebasing: b[26..<30]),
                                         destination: UnsafeRawBufferPointer(rebasing: b[30..<34]),
                                         protocol: 17, length: udpLength)
            c.add(UnsafeRawBufferPointer(rebasing: b[u..<(u + udpLength)]))
            return c.folded == 0xFFFF
        }
        return Outer(
            dontFragment: f[20] & 0x40 != 0, ttl: f[22],
            sourcePort: UInt16(f[u]) << 8 | UInt16(f[u + 1]), destinationPort: UInt16(f[u + 2]) << 8 | UInt16(f[u + 3]),
            udpChecksum: UInt16(f[u + 6]) << 8 | UInt16(f[u + 7]), udpChecksumValid: valid,
            vni: UInt32(f[vx + 4]) << 16 | UInt32(f[vx + 5]) << 8 | UInt32(f[vx + 6]),
            inner: Array(f[(vx + 8)...]))
    }

    /// Whether an untagged IP frame ends inside its IP header (the vxlan
    /// device looks at the outer ethertype only).
    static func ipHeaderCutShort(_ f: [UInt8]) -> Bool {
        guard f.count >= 14 else { return false }
        let type = UInt16(f[12]) << 8 | UInt16(f[13])
        let need = type == 0x0800 ? 20 : type == 0x86DD ? 40 : 0
        return f.count < 14 + need
    }

    /// Both lists hold the same frames, as multisets; names what differs.
    static func expectSameFrames(_ got: [[UInt8]], _ want: [[UInt8]], _ what: String,
                                 sourceLocation: SourceLocation = #_sourceLocation) throws {
        let w = multiset(want), g = multiset(got)
        let missing = w.filter { g[$0.key, default: 0] < $0.value }
        let extra = g.filter { w[$0.key, default: 0] < $0.value }
        func show(_ m: [[UInt8]: Int]) -> String {
            m.keys.prefix(4).map { f in f.prefix(48).map { String(format: "%02x", $0) }.joined() + "… (\(f.count) bytes)" }
                .joined(separator: "\n")
        }
        #expect(got.count == want.count && missing.isEmpty && extra.isEmpty,
                "\(what): \(got.count) of \(want.count); missing \(missing.count):\n\(show(missing))\nunexpected \(extra.count):\n\(show(extra))",
                sourceLocation: sourceLocation)
    }

    @Test("≥1000 diverse frames, both directions: every one arrives byte for byte with its VNI; production is unchanged; SIGTERM leaves nothing attached")
    func mirrorsEveryFrame() throws {
        let topo = try Topology(vni: 42)
        let lab = topo.lab
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")

        let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--vni", "42", "--log-format", "json"])
        let attached = try topo.attachments(topo.mon, "m0")
        #expect(!attached.xdp && attached.tcxIngress == 1 && attached.tcxEgress == 1, "tcx ingress and egress attached, no XDP: \(attached)")

        let srcOut = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "out"])
        let srcIn = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "in"])
        let monIn = try Capture(lab: lab, ns: topo.mon, device: "m0", filter: ["-Q", "in"])
        let monOut = try Capture(lab: lab, ns: topo.mon, device: "m0", filter: ["-Q", "out"])
        let decoded = try Capture(lab: lab, ns: topo.tgt, device: "vx0", filter: ["-Q", "in"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])

        // Raw frames both ways: every family, protocol, tag depth,
        // fragments, extension headers, broken headers, sizes to 1514.
        var rng = SplitMix64(seed: 0xE2E)
        let fromSrc = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        let fromMon = try RawSocket(lab: lab, ns: topo.mon, device: "m0")
        var sent = 0
        for i in 0..<1100 {
            var f = FrameGenerator.frame(&rng)
            if i % 50 == 0 { f = Frames.udp4(sport: UInt16(i), payload: [UInt8](repeating: UInt8(i & 0xFF), count: 1472)) }
            if i % 3 == 0 {
                f.replaceSubrange(0..<12, with: s0 + m0)
                try fromMon.send(f)
            } else {
                f.replaceSubrange(0..<12, with: m0 + s0)
                try fromSrc.send(f)
            }
            sent += 1
            if i % 20 == 0 { usleep(2000) }
        }
        // The kernels' own traffic: ARP, a TCP exchange, UDP to a closed
        // port and the ICMP errors it draws. The client sends from both
        // CPUs (from its thread, and from the softirq of the ACKs it gets),
        // and without XDP veth hands each packet to the backlog of the CPU
        // that sent it: RPS steers m0's receive to CPU 0, so the order of
        // m0's ingress is one order, the same for tcpdump and the hook.
        try lab.exec(topo.mon, ["sh", "-c", "echo 1 > /sys/class/net/m0/queues/rx-0/rps_cpus"])
        try TCPExchange.run(lab: lab, serverNS: topo.mon, serverAddress: .v4([198, 18, 0, 2]), port: 18080,
                            clientNS: topo.src, bytes: 200_000)
        try lab.exec(topo.src, ["bash", "-c", "for i in $(seq 1 20); do echo probe > /dev/udp/198.18.0.2/9; done"])

        // Wait for the mirror to catch up with the wire.
        let expectedCount = try srcOut.frames().count + srcIn.frames().count
        _ = try wire.waitFor(count: expectedCount, timeout: 30)
        #expect(agent.stop() == 0, "agent exits 0 on SIGTERM: \(agent.stderr)")
        // The last copies may still be crossing the veth pairs.
        try wire.settle()
        try decoded.settle()
        #expect(agent.stderr.contains("\"message\":\"stopped\""), "JSON log of the stop")

        let outFrames = try srcOut.stop().map(\.bytes), inFrames = try srcIn.stop().map(\.bytes)
        let monInFrames = try monIn.stop().map(\.bytes), monOutFrames = try monOut.stop().map(\.bytes)
        let mirrored = try decoded.stop().map(\.bytes)
        let datagrams = try wire.stop().map(\.bytes)

        // Production traffic: what one end sent is what the other got.
        #expect(Self.multiset(outFrames) == Self.multiset(monInFrames), "the monitored host received exactly what was sent")
        #expect(Self.multiset(monOutFrames) == Self.multiset(inFrames), "the source received exactly what the monitored host sent")
        #expect(outFrames.count >= 700 && inFrames.count >= 400, "traffic both ways (\(outFrames.count) in, \(inFrames.count) out)")

        // The mirror: every frame received and sent, byte for byte, as the
        // datagrams on the target's wire carry them (checked by tshark below).
        let expected = (outFrames + inFrames).map(Self.onTheWire)
        let outers = datagrams.compactMap(Self.outer)
        try Self.expectSameFrames(outers.map(\.inner), expected, "datagrams on the target's wire")
        let completed = zip(outFrames + inFrames, expected).filter { $0 != $1 }.count
        #expect(completed > 10, "unfinished TCP/UDP checksums were completed (\(completed))")
        // The kernel's vxlan device decodes all of them but the frames whose
        // inner IP header is cut short: its ECN decapsulation needs that
        // header and drops the frame.
        let decodable = expected.filter { !Self.ipHeaderCutShort($0) }
        try Self.expectSameFrames(mirrored, decodable, "frames the vxlan device decoded")

        // Outer headers on the target's wire, decoded by hand and by tshark.
        #expect(outers.count == datagrams.count)
        #expect(outers.allSatisfy { $0.vni == 42 && $0.destinationPort == 4789 && $0.dontFragment && $0.ttl == 64 })
        // Single copies leave with a zero UDP checksum; runs sent as one UDP
        // GSO message carry the kernel's (it refuses GSO without one).
        #expect(outers.allSatisfy { $0.udpChecksum == 0 || $0.udpChecksumValid }, "outer UDP checksums are zero or correct")
        #expect(outers.contains { $0.udpChecksum == 0 }, "single copies leave with a zero UDP checksum")
        #expect(outers.allSatisfy { $0.sourcePort >= 49152 })
        var portsByFlow = [UInt32: Set<UInt16>]()
        for o in outers {
            let p = ParsedPacket(frame: o.inner)
            guard p.isIP, p.proto == 6, p.hasPorts, p.sourcePort == 18080 || p.destinationPort == 18080 else { continue }
            portsByFlow[FlowHash.hash(p), default: []].insert(o.sourcePort)
        }
        #expect(portsByFlow.count == 1 && portsByFlow.values.first?.count == 1,
                "both directions of the TCP connection leave with one source port: \(portsByFlow)")

        // Order: the copies of the connection arrive in the order each
        // direction had on m0, and the handshake comes first, though
        // its two directions are hooked on different CPUs.
        func conversation(_ frames: [[UInt8]], toServer: Bool) -> [[UInt8]] {
            frames.filter { f in
                let p = ParsedPacket(frame: f)
                return p.isIP && p.proto == 6 && (toServer ? p.destinationPort == 18080 : p.sourcePort == 18080)
            }
        }
        let mirroredInOrder = outers.map(\.inner)
        for toServer in [true, false] {
            let got = conversation(mirroredInOrder, toServer: toServer)
            // As m0 carried them: what the hooks see. A capture at the far
            // end may differ, since veth hands each CPU's packets to that
            // CPU's backlog, and two backlogs drain independently.
            let want = conversation(toServer ? monInFrames : monOutFrames, toServer: toServer).map(Self.onTheWire)
            let inOrder = got == want
            #expect(inOrder, "\(toServer ? "client to server" : "server to client"): \(got.count) copies in the order of the \(want.count) frames on m0; first difference at \(zip(got, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(got.count, want.count))")
        }
        let flags = mirroredInOrder.compactMap { f -> UInt8? in
            let p = ParsedPacket(frame: f)
            guard p.isIP, p.proto == 6, p.sourcePort == 18080 || p.destinationPort == 18080 else { return nil }
            return f[p.l4Offset + 13]
        }
        #expect(Array(flags.prefix(3)) == [0x02, 0x12, 0x10], "SYN, SYN-ACK, ACK first: \(flags.prefix(3))")
        try checkWithTshark(datagrams: datagrams, vni: 42)

        let after = try topo.attachments(topo.mon, "m0")
        #expect(after.none, "nothing attached after SIGTERM: \(after)")
    }

    @Test("runs of a TCP flow's copies leave as UDP GSO messages of the packet socket, --no-gso sends each alone; no UDP port is bound either way")
    func gsoSwitch() throws {
        for gso in [true, false] {
            let topo = try Topology(vni: 42)
            let lab = topo.lab
            defer { lab.teardown() }
            let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
            // The target's neighbour known, so the packet socket sends from
            // the first copy (a new neighbour's first copies go by the raw
            // socket, which resolves it).
            try lab.exec(topo.mon, ["ping", "-c", "1", "198.18.1.2"])
            let agent = try topo.startAgent(["--interface", "m0", "--target", "198.18.1.2", "--vni", "42"]
                                            + (gso ? [] : ["--no-gso"]))
            #expect(agent.stderr.contains("copies leave by AF_PACKET"), "\(agent.stderr)")
            try TCPExchange.run(lab: lab, serverNS: topo.mon, serverAddress: .v4([198, 18, 0, 2]), port: 18080,
                                clientNS: topo.src, bytes: 2_000_000)
            try wire.settle()
            // The agent's UDP sockets, while it runs.
            let sockets = try lab.exec(topo.mon, ["ss", "-u", "-a", "-n", "-p"])
            let bound = sockets.split(separator: "\n").filter { $0.contains("traffic-mirror") }
            #expect(agent.stop() == 0)
            let outers = try wire.stop().map(\.bytes).compactMap(Self.outer)
            #expect(outers.count > 1000, "copies of the exchange (\(outers.count))")
            #expect(outers.allSatisfy { $0.udpChecksum == 0 || $0.udpChecksumValid })
            let summed = outers.filter { $0.udpChecksum != 0 }.count
            #expect(bound.isEmpty, "no UDP port bound: \(bound)")
            if gso {
                #expect(summed > 0, "some copies left in GSO runs (they carry the kernel's checksum)")
            } else {
                #expect(summed == 0, "every copy left alone, with a zero checksum (\(summed) did not)")
            }
        }
    }

    @Test("one forwarding thread per CPU (--rings-per-thread 1): traffic hooked on both CPUs, every frame mirrored once, each flow's copies in order, invariants exact")
    func forwardingThreads() throws {
        let topo = try Topology()
        let lab = topo.lab
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        try lab.exec(topo.mon, ["ping", "-c", "1", "198.18.1.2"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "udp", "port", "4789"])
        let agent = try topo.startAgent(["--interface", "m0", "--direction", "ingress", "--target", "198.18.1.2",
                                         "--rings-per-thread", "1", "--metrics-address", "127.0.0.1:\(MetricsEndToEndTests.port)"])
        #expect(agent.stderr.contains("forwarding_threads=\(cpus)"), "\(agent.stderr)")
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(agent.pid)/task"))?.compactMap {
            try? String(contentsOfFile: "/proc/\(agent.pid)/task/\($0)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } ?? []
        #expect(Set(threads.filter { $0.hasPrefix("tm-forward") }) == Set((0..<cpus).map { "tm-forward-\($0)" }), "\(threads)")

        // The source's neighbour resolved first: datagrams sent while ARP
        // runs may be dropped before the wire, where no hook sees them.
        try lab.exec(topo.src, ["ping", "-c", "1", "198.18.0.2"])
        // One sender per CPU: a veth's receive side runs on the sending CPU,
        // so each CPU's hook (and ring, and thread) takes one flow.
        // A frame the veth drops before m0's receive path (its backlog full
        // on a busy CPU) reaches no hook; the kernel counts it as s0's
        // tx_dropped, and only those may be missing.
        let per = 30000
        let droppedBefore = try lab.statistic(topo.src, "s0", "tx_dropped")
        let senders = try (0..<cpus).map { cpu in
            try lab.start(topo.src, ["taskset", "-c", "\(cpu)", "python3", "-c", """
                import socket, struct
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(\(per)): s.sendto(struct.pack("!I", i) + b"t" * 60, ("198.18.0.2", \(7100 + cpu)))
                """])
        }
        // waitForStderr returns when the process exits.
        for s in senders { _ = s.waitForStderr(timeout: 30) { _ in false } }
        _ = try wire.waitFor(count: per * cpus, timeout: 20)
        try wire.settle()
        var byPort = [Int: [UInt32]]()
        for o in try wire.stop().compactMap({ Self.outer($0.bytes) }) {
            let f = o.inner
            guard f.count >= 46, f[23] == 17 else { continue }
            let port = Int(f[36]) << 8 | Int(f[37])
            byPort[port, default: []].append(UInt32(f[42]) << 24 | UInt32(f[43]) << 16 | UInt32(f[44]) << 8 | UInt32(f[45]))
        }
        let dropped = Int(try lab.statistic(topo.src, "s0", "tx_dropped") - droppedBefore)
        let m = try MetricsEndToEndTests.scrape(topo)
        // Each thread forwarded (its CPU time, in clock ticks of 10 ms).
        let ticks = (0..<cpus).map { HostSafetyEndToEndTests.threadTicks(agent.pid, "tm-forward-\($0)") ?? 0 }
        #expect(ticks.allSatisfy { $0 > 0 }, "CPU ticks per forwarding thread: \(ticks)")
        #expect(agent.stop() == 0)
        var missing = 0
        for cpu in 0..<cpus {
            let seen = byPort[7100 + cpu] ?? []
            missing += per - seen.count
            #expect(zip(seen, seen.dropFirst()).allSatisfy { $0 < $1 } && (seen.last ?? 0) < per,
                    "flow of CPU \(cpu): \(seen.count) copies, in order and once each")
        }
        #expect(missing == dropped, "\(missing) frames without a copy; the veth dropped \(dropped) before m0")
        MetricsEndToEndTests.checkInvariants(m, sessions: ["default"], interfaces: ["m0"])
    }

    /// tshark decodes our datagrams as VXLAN with the right VNI.
    func checkWithTshark(datagrams: [[UInt8]], vni: UInt32) throws {
        let path = NSTemporaryDirectory() + "tm-tshark-\(getpid()).pcap"
        writePcap(datagrams, to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let out = try Shell.check(["tshark", "-n", "-r", path, "-T", "fields", "-e", "vxlan.vni", "-e", "eth.type"])
        let lines = out.split(separator: "\n")
        #expect(lines.count == datagrams.count)
        let bad = lines.filter { $0.split(separator: "\t").first?.split(separator: ",").first.map(String.init) != "\(vni)" }
        #expect(bad.isEmpty, "tshark reads VNI \(vni) in every datagram; not in: \(bad.prefix(5))")
    }
}

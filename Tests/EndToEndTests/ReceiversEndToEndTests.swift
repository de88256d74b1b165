import Foundation
import MirrorCore
import MirrorFixtures
import MirrorTestSupport
import Testing

/// ERSPAN II and III and GENEVE with the origin option, decoded by tshark
/// and by hand from the bytes on the target's wire; `receive` writing
/// pcapng across rotations.
@Suite("Receivers end to end", .serialized)
struct ReceiversEndToEndTests {
    /// One mirrored datagram as the target's wire has it, decoded by byte
    /// offsets (draft-foschiano-erspan-03, RFC 8926), not by the product.
    struct Copy {
        var kind: String
        var id: UInt32
        var sequence: UInt32?
        var truncated: Bool?
        var egress: Bool?
        var hardwareID: UInt8?
        var timestamp: UInt64?
        var ifindex: UInt32?
        var hostID: UInt32?
        var inner: [UInt8]
    }

    static func be32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) << 24 | UInt32(b[o + 1]) << 16 | UInt32(b[o + 2]) << 8 | UInt32(b[o + 3])
    }

    static func decode(_ f: [UInt8]) -> Copy? {
        guard f.count > 34, f[12] == 0x08, f[13] == 0x00 else { return nil }
        let ip = 14, ihl = Int(f[ip] & 0xF) * 4
        let l4 = ip + ihl
        if f[ip + 9] == 47 {
            let proto = UInt16(f[l4 + 2]) << 8 | UInt16(f[l4 + 3])
            guard f[l4] == 0x10 else { return nil } // S bit only
            let seq = be32(f, l4 + 4)
            let e = l4 + 8
            let word = UInt16(f[e + 2]) << 8 | UInt16(f[e + 3])
            if proto == 0x88BE {
                return Copy(kind: "II", id: UInt32(word & 0x3FF), sequence: seq, truncated: word & 0x400 != 0,
                            ifindex: be32(f, e + 4) & 0xFFFFF, inner: Array(f[(e + 8)...]))
            }
            guard proto == 0x22EB else { return nil }
            let low = UInt16(f[e + 10]) << 8 | UInt16(f[e + 11])
            let nanos = UInt64(be32(f, e + 4)), seconds = UInt64(be32(f, e + 16))
            return Copy(kind: "III", id: UInt32(word & 0x3FF), sequence: seq, truncated: word & 0x400 != 0,
                        egress: low & 0x8 != 0, hardwareID: UInt8((low >> 4) & 0x3F),
                        timestamp: seconds * 1_000_000_000 + nanos, ifindex: be32(f, e + 12) & 0x3FFF,
                        inner: Array(f[(e + 20)...]))
        }
        guard f[ip + 9] == 17, UInt16(f[l4 + 2]) << 8 | UInt16(f[l4 + 3]) == 6081 else { return nil }
        let g = l4 + 8
        let options = Int(f[g] & 0x3F) * 4
        var c = Copy(kind: "GENEVE", id: be32(f, g + 4) >> 8, inner: Array(f[(g + 8 + options)...]))
        if options == 24, f[g + 8] == 0xFF, f[g + 9] == 0xF0, f[g + 10] == 0x01 {
            let o = g + 12
            c.timestamp = UInt64(be32(f, o)) << 32 | UInt64(be32(f, o + 4))
            c.ifindex = be32(f, o + 8)
            c.hostID = be32(f, o + 12)
            c.egress = be32(f, o + 16) & 1 != 0
            c.truncated = be32(f, o + 16) & 2 != 0
        }
        return c
    }

    static func le32(_ b: [UInt8], _ o: Int) -> Int {
        Int(b[o]) | Int(b[o + 1]) << 8 | Int(b[o + 2]) << 16 | Int(b[o + 3]) << 24
    }

    /// The if_name of every interface description block of a pcapng file,
    /// by walking its blocks (little-endian, as the section header says).
    static func interfaceNames(_ b: [UInt8]) -> [String]? {
        guard b.count >= 28, le32(b, 0) == 0x0A0D0D0A, le32(b, 8) == 0x1A2B3C4D else { return nil }
        var names = [String](), o = 0
        while o + 12 <= b.count {
            let type = le32(b, o), length = le32(b, o + 4)
            guard length >= 12, o + length <= b.count else { return nil }
            if type == 1 {
                var p = o + 16
                while p + 4 <= o + length - 4 {
                    let code = Int(b[p]) | Int(b[p + 1]) << 8, l = Int(b[p + 2]) | Int(b[p + 3]) << 8
                    if code == 0 || p + 4 + l > o + length { break }
                    if code == 2 { names.append(String(decoding: b[(p + 4)..<(p + 4 + l)], as: UTF8.self)) }
                    p += 4 + (l + 3) & ~3
                }
            }
            o += length
        }
        return names
    }

    @Test("ERSPAN II/III and GENEVE with origin: tshark decodes them; session IDs, sequences per session across a reload, T and D bits, hook times; receive writes pcapng with one interface per source interface across rotations")
    func erspanGenevePcapng() throws {
        let topo = try Topology()
        let lab = topo.lab
        let dir = NSTemporaryDirectory() + "\(lab.prefix)-rx"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = """
        targets:
          e3: {address: 198.18.1.2, encapsulation: erspan3, hardware_id: 42}
          e2: {address: 198.18.1.2, encapsulation: erspan2}
          gn: {address: 198.18.1.2, encapsulation: geneve, geneve_origin: true, host_id: 7}
        filters:
          icmp:
            ingress: [{rule: 1, action: accept, protocol: icmp}]
            egress: [{rule: 1, action: accept, protocol: icmp}]
          udp:
            ingress: [{rule: 1, action: accept, protocol: udp}]
          tcp:
            ingress: [{rule: 1, action: accept, protocol: tcp}]
        sessions:
          - {name: icmp, interfaces: [m0], target: e3, filter: icmp, number: 1, vni: 5}
          - {name: udp, interfaces: [m0], target: e2, filter: udp, number: 2, erspan_session_id: 100, packet_length: 60, direction: ingress}
          - {name: tcp, interfaces: [m0], target: gn, filter: tcp, number: 3, vni: 900, direction: ingress, packet_length: 80}
          - {name: loop, interfaces: [lo], target: e3, filter: icmp, number: 4, vni: 6, packet_length: 60}
        """
        let check = try Shell.run([try trafficMirrorBinary(), "check", "--config", try topo.writeConfig(config, name: "check")])
        #expect(check.status == 0 && check.stdout.contains("erspan3 session id 5") && check.stdout.contains("erspan2 session id 100"),
                "check shows the session IDs: \(check.stdout)\(check.stderr)")
        let receiver = try lab.start(topo.tgt, [try trafficMirrorBinary(), "receive", "--listen", "0.0.0.0:6081",
                                                "--listen-gre", "0.0.0.0", "--format", "pcapng",
                                                "--write", dir + "/rx-%Y%m%dT%H%M%S.pcapng", "--rotate-bytes", "30000"])
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config), "--no-watch-config"])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "(ip proto 47) or (udp port 6081)"])
        let s0out = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "out", "ip"])
        let s0in = try Capture(lab: lab, ns: topo.src, device: "s0", filter: ["-Q", "in", "ip"])
        _ = try lab.exec(topo.src, ["ping", "-c", "1", "-W", "2", "198.18.0.2"])

        // Kernel traffic both ways (ICMP echo, on m0 and on the monitored
        // host's loopback, whose copies are cut at 60 bytes), with a reload
        // halfway that must not restart the sequence numbers; frames of
        // every length (UDP, many cut by packet_length 60), TCP segments
        // (cut at 80).
        for half in 0..<2 {
            _ = try lab.exec(topo.src, ["ping", "-c", "75", "-i", "0.005", "-s", "200", "-q", "198.18.0.2"], timeout: 30)
            _ = try lab.exec(topo.mon, ["ping", "-c", "20", "-i", "0.005", "-s", "200", "-q", "127.0.0.1"], timeout: 30)
            if half == 0 {
                kill(agent.pid, SIGHUP)
                #expect(agent.waitForStderr(timeout: 10) { $0.contains("reloaded") }, "reloaded: \(agent.stderr)")
            }
        }
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        var frames = [[UInt8]]()
        for i in 0..<150 {
            var u = Frames.udp4(sport: UInt16(30000 + i), dport: 7, payload: [UInt8](repeating: UInt8(i), count: i * 3))
            u.replaceSubrange(0..<12, with: m0 + s0)
            frames.append(u)
            var t = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(
                transport: .tcp(sport: UInt16(40000 + i), dport: 80, seq: UInt32(i), flags: 0x18, payload: [UInt8](repeating: 0xAB, count: i))))
            t.replaceSubrange(0..<12, with: m0 + s0)
            frames.append(t)
        }
        try TargetsEndToEndTests.send(lab, try RawSocket(lab: lab, ns: topo.src, device: "s0"), frames)
        try wire.settle()
        #expect(agent.stop() == 0)
        receiver.stop(signal: SIGINT)
        let datagrams = try wire.stop()
        let sent = try s0out.stop(), back = try s0in.stop()
        let m0index = UInt32(try lab.ifindex(topo.mon, "m0")), loIndex = UInt32(try lab.ifindex(topo.mon, "lo"))

        let copies = datagrams.compactMap { d in Self.decode(d.bytes).map { (d, $0) } }
        #expect(copies.count == datagrams.count, "every datagram decodes by hand")
        let all3 = copies.filter { $0.1.kind == "III" }, two = copies.filter { $0.1.kind == "II" }
        let three = all3.filter { $0.1.id == 5 }, loop = all3.filter { $0.1.id == 6 }
        let geneve = copies.filter { $0.1.kind == "GENEVE" }
        #expect(three.count >= 300 && loop.count >= 160 && loop.count + three.count == all3.count && two.count == 150 && geneve.count == 150,
                "ERSPAN III \(three.count) (ICMP both ways on m0), \(loop.count) (lo), II \(two.count), GENEVE \(geneve.count)")

        // Sequence numbers: consecutive per session (two share target e3),
        // from the first, across the reload.
        for (name, group) in [("III session 5", three), ("III session 6", loop), ("II", two)] {
            let seqs = group.map { $0.1.sequence ?? 0 }
            #expect(seqs == Array(seqs.first!..<(seqs.first! + UInt32(seqs.count))), "\(name): sequences consecutive: \(seqs.prefix(8))")
        }
        // Inner frames are the wire's (whole, or cut: T set); direction
        // from the side captured.
        func wireFrame(_ inner: [UInt8]) -> (frame: PcapReader.Frame, egress: Bool)? {
            if let f = sent.first(where: { $0.bytes.starts(with: inner) }) { return (f, false) }
            if let f = back.first(where: { $0.bytes.starts(with: inner) }) { return (f, true) }
            return nil
        }
        var worst: UInt64 = 0
        for (_, c) in three + geneve {
            guard let (w, egress) = wireFrame(c.inner) else {
                Issue.record("\(c.kind) copy of \(c.inner.count) bytes matches no frame on s0")
                continue
            }
            let limit = c.kind == "GENEVE" ? 80 : Int.max
            #expect(c.egress == egress, "\(c.kind): direction bit")
            #expect(c.ifindex == m0index && c.inner.count == min(w.bytes.count, limit) && c.truncated == (w.bytes.count > limit),
                    "\(c.kind): a copy of \(c.inner.count) bytes of a \(w.bytes.count)-byte frame, truncated \(c.truncated.map(String.init) ?? "-")")
            let t = c.timestamp ?? 0
            let skew = t > w.timestampNanoseconds ? t - w.timestampNanoseconds : w.timestampNanoseconds - t
            worst = max(worst, skew)
        }
        #expect(worst < 1_000_000, "hook times within 1 ms of the wire's capture times (worst \(worst) ns)")
        #expect(three.allSatisfy { $0.1.id == 5 && $0.1.hardwareID == 42 }, "ERSPAN III: session ID from the VNI, hardware ID 42")
        #expect(three.contains { $0.1.egress == true } && three.contains { $0.1.egress == false })
        #expect(geneve.contains { $0.1.truncated == true } && geneve.contains { $0.1.truncated == false })
        // Loopback: every echo leaves and enters lo; cut at 60 bytes, T set.
        #expect(loop.allSatisfy { $0.1.ifindex == loIndex && $0.1.inner.count == 60 && $0.1.truncated == true && $0.1.hardwareID == 42 },
                "lo copies: index \(loIndex), 60 bytes, T set")
        #expect(loop.filter { $0.1.egress == true }.count == loop.filter { $0.1.egress == false }.count, "lo: as many egress as ingress copies")
        #expect(geneve.allSatisfy { $0.1.id == 900 && $0.1.hostID == 7 && $0.1.egress == false })
        for (_, c) in two {
            guard let original = sent.first(where: { $0.bytes.starts(with: c.inner) && $0.bytes.count >= c.inner.count }) else {
                Issue.record("ERSPAN II copy matches no frame's first bytes")
                continue
            }
            #expect(c.inner == Array(original.bytes.prefix(60)) && c.truncated == (original.bytes.count > 60) && c.id == 100
                    && c.ifindex == m0index, "ERSPAN II: first 60 bytes, T bit iff cut, session 100, index of m0")
        }

        // tshark's own dissectors read the same fields.
        let wirePath = dir + "/wire.pcap"
        writePcap(datagrams.map { ($0.timestampNanoseconds, $0.bytes) }, to: wirePath)
        let out = try Shell.check(["tshark", "-n", "-r", wirePath, "-Y", "erspan", "-T", "fields", "-e", "erspan.version",
                                   "-e", "erspan.spanid", "-e", "gre.sequence_number", "-e", "erspan.truncated",
                                   "-e", "erspan.direction", "-e", "erspan.hw", "-e", "erspan.gra", "-e", "erspan.pid3.port_index"])
        let rows = out.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.count == all3.count + two.count, "tshark decodes \(rows.count) ERSPAN packets")
        for (row, (_, c)) in zip(rows, copies.filter { $0.1.kind != "GENEVE" }) where row.count >= 8 {
            #expect(row[0] == (c.kind == "II" ? "1" : "2") && row[1] == "\(c.id)" && row[2] == "\(c.sequence ?? 0)"
                    && (row[3] == "1" || row[3] == "True") == c.truncated, "tshark: \(row) for \(c.kind) seq \(c.sequence ?? 0)")
            if c.kind == "III" {
                #expect((row[4] == "1" || row[4] == "True") == c.egress && row[5] == "42" && row[6] == "2"
                        && row[7] == "\(c.ifindex ?? 0)",
                        "tshark ERSPAN III fields: \(row)")
            }
        }

        // receive: pcapng files that together hold every copy.
        #expect(receiver.stderr.contains("frames written in"), "receive rotated: \(receiver.stderr)")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("rx-") }.sorted()
        #expect(files.count >= 2, "rotated into \(files.count) files")
        var total = 0
        var interfacesSeen = Set<String>()
        for name in files {
            let path = dir + "/" + name
            // One description block per (sender, source interface) the file uses.
            let content = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(content.count <= 30000, "\(name): \(content.count) bytes, within --rotate-bytes 30000")
            let names = Self.interfaceNames(content)
            let fields = try Shell.check(["tshark", "-n", "-r", path, "-T", "fields", "-e", "frame.interface_name",
                                          "-e", "frame.packet_flags_direction", "-e", "frame.time_epoch"])
            let lines = fields.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
            let converted = dir + "/converted.pcap"
            _ = try Shell.check(["tshark", "-r", path, "-F", "nsecpcap", "-w", converted])
            let bytes = try PcapReader(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: converted)))).frames
            #expect(lines.count == bytes.count)
            let used = Set(lines.compactMap(\.first))
            #expect(names != nil && names!.count == Set(names!).count && Set(names!) == used,
                    "\(name): description blocks \(names ?? []) for the interfaces its frames use \(used.sorted())")
            interfacesSeen.formUnion(used)
            total += bytes.count
            for (line, f) in zip(lines, bytes) where line.count >= 3 {
                if line[0] == "198.18.1.1 ifindex \(loIndex)" {
                    #expect(f.bytes.count == 60 && (line[1] == "0x00000002" || line[1] == "0x00000001" || line[1] == "2" || line[1] == "1"),
                            "a lo copy: cut, with its direction: \(line)")
                    continue
                }
                #expect(line[0] == "198.18.1.1 ifindex \(m0index)", "the sender and m0: \(line[0])")
                let isTwo = two.contains { $0.1.inner == f.bytes }
                guard let (w, egress) = wireFrame(f.bytes) else {
                    Issue.record("a frame of \(f.bytes.count) bytes in \(name) matches no frame on s0")
                    continue
                }
                if isTwo {
                    #expect(line[1].isEmpty)
                } else {
                    #expect(line[1] == (egress ? "0x00000002" : "0x00000001") || line[1] == (egress ? "2" : "1"),
                            "direction \(line[1]) of a frame seen \(egress ? "leaving" : "entering") m0")
                    let skew = f.timestampNanoseconds > w.timestampNanoseconds ? f.timestampNanoseconds - w.timestampNanoseconds
                                                                               : w.timestampNanoseconds - f.timestampNanoseconds
                    #expect(skew < 1_000_000, "pcapng time is the hook's: \(skew) ns from the wire's")
                }
            }
        }
        #expect(total == copies.count, "files hold \(total) frames; \(copies.count) copies arrived")
        #expect(interfacesSeen == ["198.18.1.1 ifindex \(m0index)", "198.18.1.1 ifindex \(loIndex)"], "interfaces: \(interfacesSeen.sorted())")
        print("receivers: ERSPAN III \(three.count) + \(loop.count) on lo, II \(two.count) (\(two.filter { $0.1.truncated == true }.count) cut), GENEVE \(geneve.count); "
              + "tshark rows \(rows.count); worst hook-to-wire skew \(worst) ns; \(files.count) pcapng files, \(total) frames; \(receiver.stderr)")
    }

    @Test("ERSPAN II and III over IPv6, decoded by hand and by tshark; GENEVE origin copies of one flow in UDP GSO runs; receive rotates by time and keeps the newest files")
    func ipv6RunsAndRotation() throws {
        let topo = try Topology()
        let lab = topo.lab
        try topo.enableIPv6(link: 1, targetNS: topo.tgt)
        let dir = NSTemporaryDirectory() + "\(lab.prefix)-rot"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = """
        targets:
          e6: {address: 'fd00:1::2', encapsulation: erspan3}
          e26: {address: 'fd00:1::2', encapsulation: erspan2}
          g4: {address: 198.18.1.2, encapsulation: geneve, geneve_origin: true}
        filters:
          udp:
            ingress: [{rule: 1, action: accept, protocol: udp}]
          tcp:
            ingress: [{rule: 1, action: accept, protocol: tcp}]
          icmp:
            ingress: [{rule: 1, action: accept, protocol: icmp}]
        sessions:
          - {name: flow, interfaces: [m0], target: g4, filter: udp, number: 1, vni: 33, direction: ingress}
          - {name: tcp, interfaces: [m0], target: e6, filter: tcp, number: 2, vni: 6, direction: ingress}
          - {name: icmp, interfaces: [m0], target: e26, filter: icmp, number: 3, erspan_session_id: 77, direction: ingress}
        """
        let receiver = try lab.start(topo.tgt, [try trafficMirrorBinary(), "receive", "--listen", "0.0.0.0:6081", "--listen-gre", "::",
                                                "--write", dir + "/rx.pcap", "--rotate-seconds", "1", "--keep", "2"])
        let agent = try topo.startAgent(["--config", try topo.writeConfig(config)])
        let wire = try Capture(lab: lab, ns: topo.tgt, device: "t0", filter: ["-Q", "in", "(ip6 proto 47) or (udp port 6081)"])
        _ = try lab.exec(topo.mon, ["ping", "-c", "1", "-W", "2", "198.18.1.2"])
        _ = try lab.exec(topo.mon, ["ping", "-c", "1", "-W", "2", "fd00:1::2"])
        let m0 = try lab.mac(topo.mon, "m0"), s0 = try lab.mac(topo.src, "s0")
        let socket = try RawSocket(lab: lab, ns: topo.src, device: "s0")
        // Four rounds 1.2 s apart, a file each: one UDP flow of equal
        // frames in bursts (runs the emitter joins into GSO messages) and
        // TCP frames of every length.
        var flow = [[UInt8]](), other = [[UInt8]]()
        for round in 0..<4 {
            for i in 0..<100 {
                var u = Frames.udp4(sport: 5555, dport: 5556, payload: [UInt8](repeating: UInt8((round * 100 + i) & 0xFF), count: 300))
                u.replaceSubrange(0..<12, with: m0 + s0)
                flow.append(u)
                try socket.send(u)
                if i % 25 == 24 {
                    var t = Frames.ethernet(etherType: 0x0800, payload: Frames.ipv4(
                        transport: .tcp(sport: UInt16(41000 + round * 4 + i / 25), dport: 80, seq: 1, flags: 0x18,
                                        payload: [UInt8](repeating: 0xCD, count: round * 100 + i))))
                    t.replaceSubrange(0..<12, with: m0 + s0)
                    other.append(t)
                    try socket.send(t)
                    usleep(2000)
                }
            }
            usleep(1_200_000)
        }
        _ = try lab.exec(topo.src, ["ping", "-c", "20", "-i", "0.01", "-q", "198.18.0.2"], timeout: 30)
        _ = try wire.waitFor(count: flow.count + other.count + 20, timeout: 10)
        try wire.settle()
        #expect(agent.stop() == 0)
        receiver.stop(signal: SIGINT)
        let datagrams = try wire.stop()
        let copies = datagrams.compactMap { d -> (Bool, Copy)? in
            let f = d.bytes
            if f.count > 54, f[12] == 0x86, f[13] == 0xDD, f[20] == 47 {
                // Rewrite as IPv4 framing for the decoder: ERSPAN after a 40-byte IPv6 header.
                var v4 = Array(f[0..<14]) + [0x45, 0, 0, 0, 0, 0, 0, 0, 64, 47, 0, 0] + [UInt8](repeating: 0, count: 8)
                v4[12] = 0x08; v4[13] = 0x00
                return Self.decode(v4 + f[54...]).map { (true, $0) }
            }
            return Self.decode(f).map { (false, $0) }
        }
        let erspan = copies.filter { $0.0 && $0.1.kind == "III" }.map(\.1), geneve = copies.filter { !$0.0 }.map(\.1)
        let two = copies.filter { $0.0 && $0.1.kind == "II" }.map(\.1)
        #expect(erspan.count == other.count && erspan.map(\.inner) == other, "ERSPAN III over IPv6: \(erspan.count) of \(other.count), in order")
        #expect(erspan.allSatisfy { $0.id == 6 } && erspan.map { $0.sequence ?? 0 } == Array(0..<UInt32(erspan.count)))
        #expect(two.count == 20 && two.allSatisfy { $0.id == 77 && $0.truncated == false && $0.inner.count == 98 }
                && two.map { $0.sequence ?? 0 } == Array(0..<20), "ERSPAN II over IPv6: the 20 echo requests whole, session 77, in sequence")
        // tshark's dissectors on the IPv6 wire: GRE sequence and ERSPAN versions and session IDs.
        let wirePath = dir + "/wire6.pcap"
        writePcap(datagrams.filter { $0.bytes.count > 54 && $0.bytes[12] == 0x86 }.map { ($0.timestampNanoseconds, $0.bytes) }, to: wirePath)
        let rows = try Shell.check(["tshark", "-n", "-r", wirePath, "-Y", "erspan", "-T", "fields", "-e", "erspan.version",
                                    "-e", "erspan.spanid", "-e", "gre.sequence_number"])
            .split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.filter { $0.first == "1" }.map { $0.dropFirst().joined(separator: " ") } == (0..<20).map { "77 \($0)" },
                "tshark: ERSPAN II over IPv6")
        #expect(rows.filter { $0.first == "2" }.map { $0.dropFirst().joined(separator: " ") } == (0..<erspan.count).map { "6 \($0)" },
                "tshark: ERSPAN III over IPv6")
        try? FileManager.default.removeItem(atPath: wirePath)
        #expect(geneve.count == flow.count && geneve.map(\.inner) == flow, "GENEVE: every copy of the flow, whole and in order (\(geneve.count))")
        let times = geneve.compactMap(\.timestamp)
        #expect(times.count == flow.count && zip(times, times.dropFirst()).allSatisfy { $0 <= $1 }, "an origin option on every copy, times in order")

        // Rotation: the stderr tally per file adds up; only the newest two stay.
        let tally = receiver.stderr.split(separator: "(").last?.split(separator: ")").first?
            .split(separator: "+").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } ?? []
        #expect(tally.count >= 4 && tally.reduce(0, +) == copies.count, "per-file counts \(tally) add up to \(copies.count): \(receiver.stderr)")
        let kept = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(kept == ["rx.pcap.\(tally.count - 2)", "rx.pcap.\(tally.count - 1)"], "kept \(kept)")
        for (k, name) in kept.enumerated() {
            let frames = try PcapReader(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name)))).frames
            #expect(frames.count == tally[tally.count - 2 + k], "\(name): \(frames.count) frames")
        }
        print("rotation: \(tally) frames per file, kept \(kept); ERSPAN III/IPv6 \(erspan.count), II/IPv6 \(two.count), GENEVE \(geneve.count)")
    }
}

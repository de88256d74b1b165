import ArgumentParser
import Foundation
import MirrorTestSupport

/// The side-by-side benchmark (scripts/bench): no mirroring, `tc mirred` to
/// a kernel vxlan device, and traffic-mirror, measured in one run on one
/// namespace topology:
///
///     gen: g0 198.18.0.1 --- m0 198.18.0.2 :mon: m1 198.18.1.1 --- t0 198.18.1.2 :tgt
///
/// The generator (CPU 0) sends UDP to a sink in mon, whose kernel counts
/// what production receives (UDP InDatagrams + InErrors). Every frame m0
/// sees is mirrored to 198.18.1.2:4789, where a program on t0 counts and
/// drops each datagram that arrives, like the NIC of a separate host: a
/// batched or segmented send counts once per datagram on the wire.
///
/// Placements: `separate`, the monitored host's receive work (m0's NAPI)
/// on CPU 0 with the generator and the agent on CPU 1 of its own;
/// `shared`, m0's receive work steered to CPU 1 by RPS (the tc hooks,
/// tc mirred and the sink run there) and the agent pinned to CPU 1 too, a
/// host whose production CPU is also the agent's; `shared-threaded`, the
/// same with m0's NAPI in a kernel thread on CPU 1 instead of RPS.
/// Receivers: `socket`, counted at t0's tc ingress (no ring to overflow);
/// `uso`, the same with UDP GSO messages crossing m1 whole, as a NIC with
/// UDP segmentation offload sends them (counted by the datagrams they
/// carry); and `ring`, counted at XDP on t0, whose veth ring has 256 slots
/// and is drained by a NAPI thread on CPU 0, like a sensor's small receive
/// ring.
struct Suite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suite",
        abstract: "Run the benchmark: no mirroring, tc mirred, traffic-mirror; print the results as Markdown.")

    @Option(help: "The traffic-mirror binary (a release build).") var agent: String
    @Option(help: "Benchmark object (scripts/build-bpf --bench).") var object: String
    @Option(help: "Repetitions; figures are medians over them.") var runs = 3
    @Option(help: "Seconds of traffic per trial.") var duration = 4.0
    @Option(help: "Seconds of traffic per CPU trial (a difference of small CPU figures wants longer).") var cpuDuration = 10.0
    @Option(parsing: .upToNextOption, help: "Frame sizes in bytes, without FCS.") var sizes: [Int] = [64, 1400]
    @Option(help: "Seconds of iperf3 per trial (0 skips TCP).") var tcpDuration = 5.0
    @Option(help: "Arguments added to traffic-mirror run (quoted, split on spaces).") var agentArguments = ""
    @Option(help: "traffic-mirror's ingress hook for the UDP rounds: tc (its default) or xdp. TCP rounds use tc.") var ingressHook = "tc"
    @Option(help: "CPUs traffic-mirror runs on in the separate placement (a taskset list; empty: anywhere). The generator and the hooks take CPU 0.")
    var agentCPUs = "1"
    @Option(parsing: .upToNextOption, help: "Placements: separate (the agent on a CPU of its own), shared (the agent on the CPU that takes the traffic, by RPS) and shared-threaded (the same CPU, m0's NAPI in a kernel thread there).")
    var placements: [Placement] = [.separate, .shared]
    @Option(parsing: .upToNextOption, help: "Receivers: socket (counted at tc, no ring, UDP GSO cut into datagrams before the link), uso (the same, GSO crossing the link whole as a NIC with UDP segmentation offload sends it) and ring (XDP on a 256-slot veth ring, GSO cut).")
    var receivers: [Receiver] = [.uso, .ring]
    @Option(help: "Also write the Markdown results to this file.") var output: String?

    func run() throws {
        Suite.trapSignals()
        let machine = try Report.machine()
        var text = ""
        var first = true
        for placement in placements {
            for receiver in receivers {
                text += try section(placement, receiver, machine: machine, tcp: first && tcpDuration > 0)
                first = false
                if let output { try text.write(toFile: output, atomically: true, encoding: .utf8) }
            }
        }
        print(text)
    }

    /// One placement and receiver: every size, `runs` times (and TCP).
    func section(_ placement: Placement, _ receiver: Receiver, machine: String, tcp: Bool) throws -> String {
        let bench = try BenchNet(agent: agent, object: object, agentArguments: agentArguments.split(separator: " ").map(String.init),
                                 agentCPUs: placement == .separate ? agentCPUs : "1", ingressHook: ingressHook,
                                 placement: placement, receiver: receiver)
        Suite.current = bench
        defer { bench.lab.teardown() }
        var report = Report(machine: machine, duration: duration, runs: runs, placement: placement, receiver: receiver,
                            agentCPUs: bench.agentCPUs)
        report.agentSetup = (["--ingress-hook \(ingressHook)"] + (agentArguments.isEmpty ? [] : [agentArguments])).joined(separator: " ")
        for size in sizes {
            for r in 0..<runs {
                note("== \(placement.rawValue) placement, \(receiver.rawValue) receiver, \(size)-byte frames, run \(r + 1) of \(runs)\n")
                report.add(size: size, try bench.round(size: size, duration: duration, cpuDuration: cpuDuration))
            }
        }
        report.generatorMethods = bench.generatorMethods
        if tcp {
            for r in 0..<runs {
                note("== iperf3 TCP, run \(r + 1) of \(runs)\n")
                report.addTCP(try bench.tcpRound(duration: tcpDuration))
            }
        }
        return report.markdown()
    }

    nonisolated(unsafe) static var current: BenchNet?

    /// SIGINT/SIGTERM tear the namespaces down before exiting.
    static func trapSignals() {
        for s in [SIGINT, SIGTERM] {
            signal(s) { _ in
                Suite.current?.lab.teardown()
                _exit(130)
            }
        }
    }
}

enum Placement: String, CaseIterable, ExpressibleByArgument {
    case separate, shared
    /// Shared, with m0's NAPI in a kernel thread (`threaded`) on CPU 1
    /// instead of RPS: the traffic's receive work is a task the scheduler
    /// shares with the agent.
    case threaded = "shared-threaded"
}

enum Receiver: String, CaseIterable, ExpressibleByArgument {
    /// Counted at t0's tc ingress, UDP GSO cut into datagrams on m1.
    case socket
    /// Counted at t0's tc ingress, UDP GSO crossing whole (m1's default
    /// offloads, like a NIC with UDP segmentation offload).
    case uso
    /// Counted at XDP behind t0's 256-slot veth ring, GSO cut on m1.
    case ring
}

enum Scenario: String, CaseIterable {
    case none = "no mirroring"
    case mirred = "tc mirred"
    case agent = "traffic-mirror"
}

/// One trial's counts, all from the kernels involved.
struct Trial {
    var scenario: Scenario
    /// The rate asked of the generator (0: as fast as it goes).
    var requested: Double = 0
    var offered: Double = 0
    var seconds: Double = 0
    /// Datagrams the production sink's kernel received.
    var production: Double = 0
    /// Datagrams the target's kernel received.
    var mirrored: Double = 0
    /// Frames the monitored interface carried, both directions: what
    /// "every packet mirrored" asks for.
    var expected: Double = 0
    /// CPU seconds, all CPUs, busy.
    var busy: Double = 0
    /// The agent's own drop counters, by reason.
    var drops: [String: Double] = [:]
    /// CPU seconds the agent's forwarding threads ran (tm-forward*).
    var forwarding: Double = 0
    /// CPU seconds CPU 1 (the agent's CPU in the shared placement) spent
    /// in softirq.
    var softirqCPU1: Double = 0

    var offeredRate: Double { offered / seconds }
    var productionRate: Double { production / seconds }
    var mirroredRate: Double { mirrored / seconds }
    var mirrorLoss: Double { scenario == .none || expected == 0 ? 0 : max(0, expected - mirrored) / expected }
    /// The rate was carried (within 1%), and nothing was lost on the way to
    /// production or to the target.
    var lossFree: Bool {
        offeredRate >= requested * 0.99 && production >= offered && (scenario == .none || mirrored >= expected)
    }
}

/// One size's figures in one repetition.
struct Round {
    var saturation: [Scenario: Trial] = [:]
    /// The highest offered rate (pps) without any loss, found by bisection.
    var lossFreeRate: [Scenario: Double] = [:]
    /// traffic-mirror at 1.5x tc mirred's loss-free rate.
    var agentAtOneAndAHalf: Trial?
    /// CPU per mirrored packet at a rate every scenario carries without loss.
    var cpuRate: Double = 0
    var cpu: [Scenario: Trial] = [:]

    /// Extra CPU seconds per mirrored packet, over no mirroring at the same
    /// production: (busy - busy_none/production_none * production) / mirrored.
    static func cpuPerMirrored(_ t: Trial, none: Trial) -> Double {
        guard t.mirrored > 0, none.production > 0 else { return .nan }
        return (t.busy - none.busy / none.production * t.production) / t.mirrored
    }
}

struct TCPRound {
    var trials: [Scenario: Trial] = [:]
    var bitsPerSecond: [Scenario: Double] = [:]
    /// traffic-mirror with iperf3 paced at tc mirred's throughput.
    var agentAtMirred: Trial?
    var agentAtMirredBitsPerSecond: Double = 0
}

/// The namespaces and the three ways to run them.
final class BenchNet: @unchecked Sendable {
    /// How the generator sent (tm-bench generate's "method"): live, packet.
    var generatorMethods = Set<String>()
    let lab: Lab
    let gen: String, mon: String, tgt: String
    let agent: String, object: String, agentArguments: [String]
    /// `taskset -c` list for the agent, or empty.
    let agentCPUs: String
    var counter: Background?
    let benchBinary: String
    var g0MAC = "", m0MAC = ""

    /// The agent's ingress hook in the UDP rounds.
    let ingressHook: String

    init(agent: String, object: String, agentArguments: [String], agentCPUs: String, ingressHook: String,
         placement: Placement, receiver: Receiver) throws {
        self.ingressHook = ingressHook
        lab = try Lab()
        self.agent = agent
        self.agentCPUs = agentCPUs
        self.object = object
        self.agentArguments = agentArguments
        benchBinary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        gen = try lab.namespace("gen")
        mon = try lab.namespace("mon")
        tgt = try lab.namespace("tgt")
        for ns in [gen, mon, tgt] {
            try lab.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        }
        try lab.veth(gen, "g0", mon, "m0")
        try lab.veth(mon, "m1", tgt, "t0")
        try lab.ip(gen, "addr", "add", "198.18.0.1/24", "dev", "g0")
        try lab.ip(mon, "addr", "add", "198.18.0.2/24", "dev", "m0")
        try lab.ip(mon, "addr", "add", "198.18.1.1/24", "dev", "m1")
        try lab.ip(tgt, "addr", "add", "198.18.1.2/24", "dev", "t0")
        // veth takes redirected XDP frames only into a NAPI context: GRO on
        // gives m0 one even without an XDP program.
        try lab.exec(mon, ["ethtool", "-K", "m0", "gro", "on"])
        // The link to the target behaves like a wire: what leaves is cut to
        // datagrams before the peer, for both kinds of mirror; with the
        // uso receiver, m1 keeps its default offloads and a UDP GSO message
        // crosses whole, as a NIC with UDP segmentation offload takes it
        // (the target counts its datagrams).
        if receiver != .uso {
            try lab.exec(mon, ["ethtool", "-K", "m1", "tx-udp-segmentation", "off", "tx-udp_tnl-segmentation", "off",
                               "tx-udp_tnl-csum-segmentation", "off"])
        }
        g0MAC = Self.format(try lab.mac(gen, "g0"))
        m0MAC = Self.format(try lab.mac(mon, "m0"))
        _ = try lab.start(mon, [benchBinary, "sink", "--port", "9999"])
        counter = try lab.start(tgt, [benchBinary, "count", "--object", object, "--interface", "t0", "--port", "4789",
                                      "--hook", receiver == .ring ? "xdp" : "tc"])
        _ = try targetCount()
        if placement == .shared {
            // RPS: m0's NAPI takes the frames off the ring on CPU 0, and
            // the stack (tc hooks, tc mirred, the sink) runs on CPU 1.
            try lab.exec(mon, ["sh", "-c", "echo 2 > /sys/class/net/m0/queues/rx-0/rps_cpus"])
        }
        if placement == .threaded { try pinNAPI(mon, "m0", cpu: 1) }
        if receiver == .ring { try pinNAPI(tgt, "t0", cpu: 0) }
        // Resolve the neighbours once so no trial waits for ARP.
        try lab.exec(gen, ["ping", "-c", "1", "-W", "1", "198.18.0.2"])
        try lab.exec(mon, ["ping", "-c", "1", "-W", "1", "198.18.1.2"])
    }

    /// Moves a veth's NAPI into kernel threads (`threaded`) pinned to `cpu`.
    func pinNAPI(_ ns: String, _ dev: String, cpu: Int) throws {
        let before = Set(Self.napiThreads(dev))
        try lab.exec(ns, ["sh", "-c", "echo 1 > /sys/class/net/\(dev)/threaded"])
        let threads = Self.napiThreads(dev).filter { !before.contains($0) }
        guard !threads.isEmpty else { throw Failure("no NAPI thread for \(dev) after threaded=1") }
        for pid in threads { _ = try Shell.check(["taskset", "-p", "-c", "\(cpu)", "\(pid)"]) }
    }

    /// Kernel threads named napi/DEV-ID.
    static func napiThreads(_ dev: String) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = Int32(entry),
                  let comm = try? String(contentsOfFile: "/proc/\(entry)/comm", encoding: .utf8),
                  comm.hasPrefix("napi/\(dev)-") else { return nil }
            return pid
        }
    }

    static func format(_ mac: [UInt8]) -> String { mac.map { String(format: "%02x", $0) }.joined(separator: ":") }

    // MARK: rounds

    func round(size: Int, duration: Double, cpuDuration: Double) throws -> Round {
        var round = Round()
        for s in Scenario.allCases {
            round.saturation[s] = try trial(s, size: size, rate: 0, duration: duration)
            note("   saturation \(s.rawValue): \(Self.describe(round.saturation[s]!))\n")
        }
        let top = round.saturation[.none]!.offeredRate
        // tc mirred's loss-free rate, then traffic-mirror's, both by
        // bisection; traffic-mirror also at 1.5x tc mirred's.
        let mirred = try lossFreeRate(.mirred, size: size, duration: duration, low: 0, high: top * 1.1)
        round.lossFreeRate[.mirred] = mirred
        let target = (mirred * 1.5).rounded()
        round.agentAtOneAndAHalf = try trial(.agent, size: size, rate: target, duration: duration)
        note("   traffic-mirror at 1.5x tc mirred's loss-free rate: \(Self.describe(round.agentAtOneAndAHalf!))\n")
        let ownLow = round.agentAtOneAndAHalf!.lossFree ? target : 0
        round.lossFreeRate[.agent] = try lossFreeRate(.agent, size: size, duration: duration, low: ownLow, high: top * 1.1)
        // CPU at a rate all three carry: 80% of tc mirred's loss-free rate.
        round.cpuRate = (mirred * 0.8).rounded()
        for s in Scenario.allCases {
            round.cpu[s] = try trial(s, size: size, rate: round.cpuRate, duration: cpuDuration)
            note("   at \(Int(round.cpuRate)) pps \(s.rawValue): \(Self.describe(round.cpu[s]!))\n")
        }
        return round
    }

    /// Bisection over offered rates: `low` is taken as loss-free (0 always
    /// is), `high` as lossy; six steps.
    func lossFreeRate(_ s: Scenario, size: Int, duration: Double, low: Double, high: Double) throws -> Double {
        var lo = low, hi = high
        for _ in 0..<6 {
            let mid = ((lo + hi) / 2).rounded()
            let t = try trial(s, size: size, rate: mid, duration: duration)
            note("   \(s.rawValue) at \(Int(mid)) pps: \(Self.describe(t))\n")
            if t.lossFree { lo = mid } else { hi = mid }
        }
        return lo
    }

    static func describe(_ t: Trial) -> String {
        var s = String(format: "offered %.0f, production %.0f, mirrored %.0f pps, mirror loss %.4f%%, busy %.2f CPU",
                       t.offeredRate, t.productionRate, t.mirroredRate, t.mirrorLoss * 100, t.busy / t.seconds)
        if !t.drops.isEmpty { s += ", agent drops \(t.drops)" }
        return s
    }

    // MARK: one trial

    func trial(_ s: Scenario, size: Int, rate: Double, duration: Double) throws -> Trial {
        var t = Trial(scenario: s, requested: rate)
        let agentProcess = try setUp(s)
        defer { tearDown(s, agentProcess) }
        let monBefore = try Snmp(lab, mon), tgtBefore = try targetCount()
        let cpuBefore = try CPUTime.read()
        let forwardingBefore = agentProcess.map { CPUTime.forwarding(pid: $0.pid) } ?? 0
        let softirqBefore = try CPUTime.softirq(cpu: 1)
        let out = try Shell.check(["taskset", "-c", "0", "ip", "netns", "exec", gen, benchBinary, "generate",
                                   "--object", object, "--interface", "g0", "--dst-mac", m0MAC, "--src-mac", g0MAC,
                                   "--frame-size", "\(size)", "--rate", "\(Int(rate))", "--duration", "\(duration)"],
                                  timeout: duration + 60)
        // What the threads ran while the generator did (the drain after it
        // is not saturation).
        t.forwarding = (agentProcess.map { CPUTime.forwarding(pid: $0.pid) } ?? 0) - forwardingBefore
        t.softirqCPU1 = try CPUTime.softirq(cpu: 1) - softirqBefore
        try settle()
        let cpuAfter = try CPUTime.read()
        let monAfter = try Snmp(lab, mon), tgtAfter = try targetCount()
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] ?? [:]
        t.offered = (json["sent"] as? NSNumber)?.doubleValue ?? 0
        t.seconds = (json["seconds"] as? NSNumber)?.doubleValue ?? duration
        if let method = json["method"] as? String { generatorMethods.insert(method) }
        t.production = monAfter.udpIn - monBefore.udpIn
        // The monitored host only receives: what m0 carried is production.
        t.expected = t.production
        t.mirrored = s == .none ? 0 : tgtAfter - tgtBefore
        t.busy = cpuAfter - cpuBefore
        if let agentProcess { t.drops = try agentDrops(agentProcess) }
        return t
    }

    /// Waits until the target's count stops moving (the agent drains its
    /// rings after the generator stops), at most 5 s.
    func settle() throws {
        var last = try targetCount()
        for _ in 0..<50 {
            usleep(150_000)
            let now = try targetCount()
            if now == last { return }
            last = now
        }
    }

    /// Datagrams counted at the target so far (the counter prints its total
    /// every 50 ms).
    func targetCount() throws -> Double {
        usleep(60_000)
        guard let c = counter, c.isRunning else { throw Failure("the target's counter stopped: \(counter?.stderr ?? "")") }
        let lines = c.stdout.split(separator: "\n")
        guard let last = lines.last, let v = Double(last) else { throw Failure("no count from the target's counter") }
        return v
    }

    func setUp(_ s: Scenario, ingressHook: String? = nil) throws -> Background? {
        let ingressHook = ingressHook ?? self.ingressHook
        switch s {
        case .none:
            return nil
        case .mirred:
            try lab.ip(mon, "link", "add", "vxm", "type", "vxlan", "id", "42", "remote", "198.18.1.2", "local", "198.18.1.1",
                       "dstport", "4789", "dev", "m1")
            try lab.ip(mon, "link", "set", "vxm", "up")
            try lab.exec(mon, ["tc", "qdisc", "add", "dev", "m0", "clsact"])
            for dir in ["ingress", "egress"] {
                // u32 matching every frame: this kernel has no matchall.
                try lab.exec(mon, ["tc", "filter", "add", "dev", "m0", dir, "protocol", "all", "prio", "1", "u32",
                                   "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "vxm"])
            }
            return nil
        case .agent:
            // Deployed as the unit's CPUAffinity= would: away from the CPU
            // that takes the traffic (tc mirred has no choice: it runs there).
            let pin = agentCPUs.isEmpty ? [] : ["taskset", "-c", agentCPUs]
            let p = try lab.start(mon, pin + [agent, "run", "--interface", "m0", "--target", "198.18.1.2", "--vni", "42",
                                              "--ingress-hook", ingressHook] + agentArguments)
            guard p.waitForStderr(timeout: 30, { $0.contains("mirroring") }) else {
                p.stop()
                throw Failure("traffic-mirror did not start: \(p.stderr)")
            }
            return p
        }
    }

    func tearDown(_ s: Scenario, _ p: Background?) {
        switch s {
        case .none: break
        case .mirred:
            _ = try? lab.exec(mon, ["tc", "qdisc", "del", "dev", "m0", "clsact"])
            _ = try? lab.ip(mon, "link", "del", "vxm")
        case .agent:
            p?.stop()
        }
    }

    /// The agent's dropped_packets_total by reason, from its /metrics.
    func agentDrops(_ p: Background) throws -> [String: Double] {
        let text = try lab.exec(mon, ["curl", "-s", "--max-time", "5", "http://127.0.0.1:9781/metrics"])
        var drops = [String: Double]()
        for line in text.split(separator: "\n") where line.hasPrefix("traffic_mirror_dropped_packets_total{") {
            guard let r = line.range(of: "reason=\""), let v = Double(line.split(separator: " ").last ?? "") else { continue }
            let reason = line[r.upperBound...].prefix { $0 != "\"" }
            if v > 0 { drops[String(reason), default: 0] += v }
        }
        return drops
    }

    // MARK: TCP

    /// iperf3 from gen to mon, every packet mirrored; ingress at tc, where
    /// the agent sees GRO-merged packets as tc mirred does. Each scenario
    /// unpaced, then traffic-mirror again with iperf3 paced at the
    /// throughput tc mirred reached: the same production rate, and what
    /// the mirror loses there.
    func tcpRound(duration: Double) throws -> TCPRound {
        var round = TCPRound()
        for s in Scenario.allCases {
            (round.trials[s], round.bitsPerSecond[s]) = try tcpTrial(s, duration: duration, bitrate: nil)
        }
        let paced = round.bitsPerSecond[.mirred] ?? 0
        if paced > 0 {
            (round.agentAtMirred, round.agentAtMirredBitsPerSecond) = try tcpTrial(.agent, duration: duration, bitrate: paced)
        }
        return round
    }

    func tcpTrial(_ s: Scenario, duration: Double, bitrate: Double?) throws -> (Trial, Double) {
        let agentProcess = try setUp(s, ingressHook: "tc")
        defer { tearDown(s, agentProcess) }
        let server = try lab.start(mon, ["iperf3", "-s", "-1", "-p", "5201"])
        defer { server.stop(signal: SIGKILL) }
        usleep(300_000)
        let genBefore = try Snmp(lab, gen), monBefore = try Snmp(lab, mon), tgtBefore = try targetCount()
        let cpuBefore = try CPUTime.read()
        let pacing = bitrate.map { ["-b", "\(Int($0))"] } ?? []
        let out = try Shell.check(["ip", "netns", "exec", gen, "iperf3", "-c", "198.18.0.2", "-p", "5201",
                                   "-t", "\(Int(duration))", "-J"] + pacing, timeout: duration + 60)
        try settle()
        let cpuAfter = try CPUTime.read()
        let genAfter = try Snmp(lab, gen), monAfter = try Snmp(lab, mon), tgtAfter = try targetCount()
        var t = Trial(scenario: s)
        t.seconds = duration
        // Wire segments both ways: what every-packet mirroring owes.
        t.expected = (genAfter.tcpOut - genBefore.tcpOut) + (monAfter.tcpOut - monBefore.tcpOut)
        t.production = t.expected
        t.offered = t.expected
        t.mirrored = s == .none ? 0 : tgtAfter - tgtBefore
        t.busy = cpuAfter - cpuBefore
        if let agentProcess { t.drops = try agentDrops(agentProcess) }
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        let end = json?["end"] as? [String: Any]
        let received = end?["sum_received"] as? [String: Any]
        let bps = received?["bits_per_second"] as? Double ?? 0
        let label = bitrate.map { String(format: "%@ paced at %.2f Gbit/s", s.rawValue, $0 / 1e9) } ?? s.rawValue
        note(String(format: "   %@: %.2f Gbit/s, ", label, bps / 1e9) + Self.describe(t) + "\n")
        return (t, bps)
    }
}

/// UDP and TCP counters of one namespace (/proc/net/snmp is per namespace).
struct Snmp {
    var udpIn: Double = 0, tcpOut: Double = 0

    init(_ lab: Lab, _ ns: String) throws {
        let text = try lab.exec(ns, ["cat", "/proc/net/snmp"])
        var headers = [String: [Substring]]()
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard let key = parts.first else { continue }
            if let h = headers[String(key)] {
                var row = [String: Double]()
                for (name, value) in zip(h.dropFirst(), parts.dropFirst()) { row[String(name)] = Double(value) }
                if key == "Udp:" {
                    udpIn = (row["InDatagrams"] ?? 0) + (row["InErrors"] ?? 0)
                } else if key == "Tcp:" {
                    tcpOut = row["OutSegs"] ?? 0
                }
            } else {
                headers[String(key)] = parts
            }
        }
    }
}

/// Busy CPU seconds over all CPUs, from /proc/stat.
enum CPUTime {
    static func read() throws -> Double {
        let text = try String(contentsOfFile: "/proc/stat", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { throw Failure("no cpu line in /proc/stat") }
        let v = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        // user nice system idle iowait irq softirq steal: steal is time the
        // hypervisor gave other guests, not work of this machine's.
        guard v.count >= 7 else { throw Failure("short cpu line in /proc/stat") }
        let busy = v[0] + v[1] + v[2] + v[5] + v[6]
        return busy / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Softirq CPU seconds of one CPU, from /proc/stat.
    static func softirq(cpu: Int) throws -> Double {
        let text = try String(contentsOfFile: "/proc/stat", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu\(cpu) ") }) else { return 0 }
        let v = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        return v.count >= 7 ? v[6] / Double(sysconf(Int32(_SC_CLK_TCK))) : 0
    }

    /// CPU seconds (user and system) the threads of `pid` named tm-forward…
    /// have run, from /proc/PID/task/*/stat.
    static func forwarding(pid: Int32) -> Double {
        let dir = "/proc/\(pid)/task"
        var ticks = 0.0
        for tid in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard let stat = try? String(contentsOfFile: "\(dir)/\(tid)/stat", encoding: .utf8),
                  let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")"),
                  stat[stat.index(after: open)..<close].hasPrefix("tm-forward") else { continue }
            // After "(comm)": state is field 3, utime 14, stime 15.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { continue }
            ticks += user + system
        }
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// Progress on stderr; the results go to stdout.
func note(_ s: String) {
    FileHandle.standardError.write(Data(s.utf8))
}

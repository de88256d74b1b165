import Foundation
import MirrorTestSupport

/// The benchmark's results as Markdown: medians over the repetitions, and
/// traffic-mirror's ratio to tc mirred in each repetition.
struct Report {
    let machine: String
    let duration: Double
    let runs: Int
    let placement: Placement
    let receiver: Receiver
    let agentCPUs: String
    /// traffic-mirror's ingress hook and extra arguments in the UDP rounds.
    var agentSetup = ""
    var generatorMethods = Set<String>()
    var rounds: [(size: Int, round: Round)] = []
    var tcp: [TCPRound] = []

    init(machine: String, duration: Double, runs: Int, placement: Placement, receiver: Receiver, agentCPUs: String) {
        self.machine = machine
        self.placement = placement
        self.receiver = receiver
        self.duration = duration
        self.runs = runs
        self.agentCPUs = agentCPUs
    }

    mutating func add(size: Int, _ r: Round) { rounds.append((size, r)) }
    mutating func addTCP(_ r: TCPRound) { tcp.append(r) }

    static func machine() throws -> String {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        let memory = Double(ProcessInfo.processInfo.physicalMemory) / Double(1 << 30)
        let kernel = try Shell.check(["uname", "-r"]).trimmingCharacters(in: .whitespacesAndNewlines)
        return String(format: "%@, %d CPUs, %.0f GiB, Linux %@", model, cpus, memory, kernel)
    }

    static func median(_ v: [Double]) -> Double {
        let s = v.filter { !$0.isNaN }.sorted()
        guard !s.isEmpty else { return .nan }
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func pps(_ v: Double) -> String {
        v.isNaN ? "–" : v >= 1e6 ? String(format: "%.2f M", v / 1e6) : String(format: "%.0f k", v / 1e3)
    }

    static func ratio(_ v: Double) -> String { v.isNaN || v.isInfinite ? "–" : String(format: "%.2f×", v) }

    /// "1.62× (1.60, 1.62, 1.71)": median, then each run's.
    static func ratios(_ v: [Double]) -> String {
        "**\(ratio(median(v)))** (" + v.map { ratio($0) }.joined(separator: ", ") + ")"
    }

    func markdown() -> String {
        var out = "## \(placement.rawValue) placement, \(receiver.rawValue) receiver\n\n"
        out += "Machine: \(machine). \(runs) runs of every trial, \(Int(duration)) s of traffic each (CPU trials longer); "
        out += "figures are medians, ratios are traffic-mirror over tc mirred, median first, then each run's. "
        switch placement {
        case .separate:
            out += "The generator and the hooks run on CPU 0; traffic-mirror runs on "
            out += agentCPUs.isEmpty ? "any CPU" : "CPU \(agentCPUs) (taskset)"
        case .shared:
            out += "The generator runs on CPU 0; m0's receive work (RPS: the tc hooks, tc mirred, the sink) and traffic-mirror share CPU 1"
        case .threaded:
            out += "The generator runs on CPU 0; m0's receive work (its NAPI in a kernel thread pinned to CPU 1: the tc hooks, tc mirred, the sink) and traffic-mirror share CPU 1"
        }
        switch receiver {
        case .socket: out += "; the target counts at tc ingress, UDP GSO cut into datagrams on m1"
        case .uso: out += "; the target counts at tc ingress, UDP GSO crossing m1 whole (as with a NIC's segmentation offload)"
        case .ring: out += "; the target counts at XDP behind a 256-slot veth ring drained on CPU 0"
        }
        out += agentSetup.isEmpty ? "." : ", with \(agentSetup)."
        out += generatorMethods.contains("packet")
            ? " The generator sent from AF_PACKET (the kernel refused live frames): saturation figures do not compare with live-frame runs.\n" : "\n"
        for size in Set(rounds.map(\.size)).sorted() {
            let rs = rounds.filter { $0.size == size }.map(\.round)
            out += "\n### \(size)-byte frames\n\n"
            out += "At saturation (the generator as fast as it goes):\n\n"
            out += "| | offered pps | production pps | mirrored pps | mirror loss | agent drops |\n|---|---|---|---|---|---|\n"
            for s in Scenario.allCases {
                let ts = rs.compactMap { $0.saturation[s] }
                let drops = s == .agent ? ts.map { $0.drops.isEmpty ? "0" : $0.drops.map { "\($0.key) \(Int($0.value))" }.sorted().joined(separator: ", ") }.joined(separator: "; ") : ""
                out += "| \(s.rawValue) | \(Self.pps(Self.median(ts.map(\.offeredRate)))) | \(Self.pps(Self.median(ts.map(\.productionRate)))) | "
                out += s == .none ? "– | – | |\n" : "\(Self.pps(Self.median(ts.map(\.mirroredRate)))) | \(String(format: "%.2f%%", Self.median(ts.map(\.mirrorLoss)) * 100)) | \(drops) |\n"
            }
            let mirroredRatio = rs.map { $0.saturation[.agent]!.mirroredRate / $0.saturation[.mirred]!.mirroredRate }
            let productionRatio = rs.map { $0.saturation[.agent]!.productionRate / $0.saturation[.mirred]!.productionRate }
            out += "\n- mirrored pps at saturation: \(Self.ratios(mirroredRatio)) tc mirred's\n"
            out += "- production pps at saturation: \(Self.ratios(productionRatio)) tc mirred's\n"
            let agentSat = rs.map { $0.saturation[.agent]! }, mirredSat = rs.map { $0.saturation[.mirred]! }
            func share(_ v: [Double]) -> String {
                v.map { String(format: "%.0f %%", $0 * 100) }.joined(separator: ", ")
            }
            out += "- at saturation, share of the generator's time: CPU 1 in softirq (/proc/stat) with traffic-mirror "
            out += share(agentSat.map { $0.softirqCPU1 / $0.seconds })
            out += ", with tc mirred " + share(mirredSat.map { $0.softirqCPU1 / $0.seconds })
            out += "; traffic-mirror's forwarding threads on a CPU (user and system, /proc/PID/task, which includes softirq run in their context) "
            out += share(agentSat.map { $0.forwarding / $0.seconds }) + "\n"

            let cpuAgent = rs.map { Round.cpuPerMirrored($0.cpu[.agent]!, none: $0.cpu[.none]!) }
            let cpuMirred = rs.map { Round.cpuPerMirrored($0.cpu[.mirred]!, none: $0.cpu[.none]!) }
            let cpuRatio = zip(cpuAgent, cpuMirred).map { $0 / $1 }
            out += String(format: "- CPU per mirrored packet at %@ pps offered (80%% of tc mirred's loss-free rate), over no mirroring: ",
                          Self.pps(Self.median(rs.map(\.cpuRate))))
            out += String(format: "tc mirred %.2f µs, traffic-mirror %.2f µs: ", Self.median(cpuMirred) * 1e6, Self.median(cpuAgent) * 1e6)
            out += "\(Self.ratios(cpuRatio))\n"

            let freeMirred = rs.map { $0.lossFreeRate[.mirred]! }, freeAgent = rs.map { $0.lossFreeRate[.agent]! }
            out += "- highest offered rate without loss (production and mirror): tc mirred \(Self.pps(Self.median(freeMirred))), "
            out += "traffic-mirror \(Self.pps(Self.median(freeAgent))): \(Self.ratios(zip(freeAgent, freeMirred).map { $0 / $1 }))\n"
            let at = rs.compactMap(\.agentAtOneAndAHalf)
            out += "- traffic-mirror at 1.5× tc mirred's loss-free rate: mirror loss "
            out += at.map { String(format: "%.0f of %.0f at %@ pps", max(0, $0.expected - $0.mirrored), $0.expected, Self.pps($0.offeredRate)) }.joined(separator: "; ")
            out += "\n"
        }
        if !tcp.isEmpty {
            out += "\n### iperf3 TCP, every packet mirrored (ingress at tc)\n\n"
            out += "| | throughput | mirrored pps | mirror loss |\n|---|---|---|---|\n"
            for s in Scenario.allCases {
                let bps = Self.median(tcp.map { $0.bitsPerSecond[s] ?? .nan })
                let ts = tcp.compactMap { $0.trials[s] }
                out += String(format: "| %@ | %.2f Gbit/s | ", s.rawValue, bps / 1e9)
                out += s == .none ? "– | – |\n" : "\(Self.pps(Self.median(ts.map(\.mirroredRate)))) | \(String(format: "%.3f%%", Self.median(ts.map(\.mirrorLoss)) * 100)) |\n"
            }
            let r = tcp.map { ($0.bitsPerSecond[.agent] ?? .nan) / ($0.bitsPerSecond[.mirred] ?? .nan) }
            out += "\n- TCP throughput, unpaced: \(Self.ratios(r)) tc mirred's\n"
            let paced = tcp.compactMap(\.agentAtMirred)
            out += "- traffic-mirror with iperf3 paced at tc mirred's throughput: "
            out += zip(tcp, paced).map { round, t in
                String(format: "%.2f Gbit/s, mirror loss %.0f of %.0f", round.agentAtMirredBitsPerSecond / 1e9,
                       max(0, t.expected - t.mirrored), t.expected)
            }.joined(separator: "; ")
            out += "\n"
        }
        return out
    }
}

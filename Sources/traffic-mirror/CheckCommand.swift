import ArgumentParser
import Foundation
import MirrorCore
import MirrorDataPlane

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a config and print the compiled plan and what its interface patterns match now; attaches nothing.",
        discussion: "Exit 0 when the config is valid, 2 with every problem listed (each with its path in the file) when it is not."
    )

    @Option(help: ArgumentHelp("YAML config (docs/configuration.md).", valueName: "file"))
    var config: String

    func run() throws {
        let loaded = try loadConfig(path: config).config
        print("\(config): valid\n")
        print(PlanDescription.render(loaded))
        let (links, unreachable) = loaded.links()
        print("interfaces now:")
        for (pattern, names) in loaded.matches(in: links.keys).sorted(by: { $0.key < $1.key }) {
            var line = "  \(pattern): " + (names.isEmpty ? "matches nothing yet (run waits and attaches when one appears)" : names.joined(separator: ", "))
            if let why = unreachable[NetworkNamespace(source: pattern).description] { line += "; \(why)" }
            print(line)
        }
        print("")
        let cpus = (try? String(contentsOfFile: "/sys/devices/system/cpu/online", encoding: .utf8)).flatMap(RingSizing.cpus(list:))?.count
            ?? ProcessInfo.processInfo.activeProcessorCount
        print("ring buffers (run's default): \(RingSizing.describe(cpus: cpus))")
    }
}

/// Reads and validates a config file; on problems prints them all and
/// exits 2 (SPEC §1).
func loadConfig(path: String) throws -> (config: MirrorConfig, text: String) {
    guard let data = FileManager.default.contents(atPath: path) else {
        writeStderr("traffic-mirror: error: \(path): cannot read the config file (missing or not readable)\n")
        throw ExitCode(2)
    }
    guard let text = String(data: data, encoding: .utf8) else {
        writeStderr("traffic-mirror: error: \(path): not UTF-8 text\n")
        throw ExitCode(2)
    }
    do {
        return (try ConfigLoader.load(yaml: text), text)
    } catch {
        writeStderr("traffic-mirror: error: \(path): \(error.problems.count) problem\(error.problems.count == 1 ? "" : "s"):\n")
        for p in error.problems { writeStderr("  \(p)\n") }
        throw ExitCode(2)
    }
}

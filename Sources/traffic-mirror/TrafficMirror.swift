import ArgumentParser
import MirrorDataPlane

#if canImport(Glibc)
import Glibc
#endif

/// `traffic-mirror`: copies selected packets of chosen interfaces, wraps
/// each copy in VXLAN or GENEVE and sends it to analysis targets.
@main
struct TrafficMirror: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "traffic-mirror",
        abstract: "Mirror selected packets of Linux interfaces to analysis targets over VXLAN.",
        discussion: """
        The kernel side (XDP for ingress, tc for egress) selects packets; the agent \
        encapsulates them and sends them to targets such as Suricata, Zeek or a packet \
        recorder, without touching the production traffic.

        Exit codes: 0 clean stop, 1 runtime failure, 2 usage or config error.
        """,
        version: version,
        subcommands: [RunCommand.self, CheckCommand.self, ReceiveCommand.self, VersionCommand.self]
    )

    /// Parses and runs a command with the exit codes of SPEC §1: usage and
    /// validation errors exit 2 (ArgumentParser's own default is 64).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            let message = fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { print(message) }
                terminate(0)
            }
            if !message.isEmpty {
                writeStderr("\(message)\n")
            }
            if error is ExitCode {
                terminate(code.rawValue)
            }
            terminate(code == .validationFailure ? 2 : code.rawValue)
        }
    }
}

/// A runtime failure (exit 1) that was already reported.
struct RuntimeFailure: Error {}

/// Prints one line for a failure that ends the process.
func report(_ message: String) {
    writeStderr("traffic-mirror: error: \(message)\n")
}

import ArgumentParser
import CMirrorSys
import MirrorCore
import MirrorDataPlane

struct ReceiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "A built-in target: receive VXLAN and GENEVE, write the inner frames as pcap.",
        discussion: """
        Each datagram's header says whether it is VXLAN or GENEVE. The frames are \
        written in the pcap format tcpdump and Wireshark read, stamped with the \
        kernel's receive time; see them live with \
        'traffic-mirror receive --write - | tcpdump -n -r -'. Stops on SIGINT or \
        SIGTERM, after --count frames, or when the reader of --write - goes away; \
        prints what it received on stderr.
        """
    )

    @Option(help: ArgumentHelp("Address to listen on, HOST:PORT, repeatable (GENEVE's port is 6081).", valueName: "host:port"))
    var listen: [String] = ["0.0.0.0:4789"]

    @Option(help: ArgumentHelp("Where the pcap goes: a file, or - for standard output.", valueName: "file"))
    var write: String

    @Option(help: ArgumentHelp("Keep only frames of this VNI, 0...16777215.", valueName: "n"))
    var vni: UInt32?

    @Option(help: ArgumentHelp("Stop after this many frames.", valueName: "n"))
    var count: Int?

    func validate() throws {
        var problems = [String]()
        for l in listen {
            do {
                let hp = try HostPort(parsing: l)
                if IPAddress(hp.host) == nil { problems.append("--listen: \(hp.host) must be an IP address (0.0.0.0 or [::] for all)") }
            } catch {
                problems.append("--listen: \(error.message)")
            }
        }
        if let v = vni, v > TunnelHeader.maxVNI { problems.append("--vni: \(v) is out of range 0...\(TunnelHeader.maxVNI)") }
        if let c = count, c < 1 { problems.append("--count: must be at least 1") }
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "\n")) }
    }

    func run() throws {
        CMirrorSys_trap_stop_signals()
        let fd: Int32
        if write == "-" {
            fd = 1
        } else {
            fd = CMirrorSys_open_write(write)
            guard fd >= 0 else {
                report("--write \(write): \(SystemError("open", code: fd))")
                throw ExitCode(1)
            }
        }
        defer { if fd != 1 { _ = CMirrorSys_close(fd) } }
        let receiver: Receiver
        do {
            receiver = try Receiver(options: .init(listen: try listen.map { try HostPort(parsing: $0) }, vni: vni, count: count), output: fd)
            try receiver.run()
        } catch let error as OperationalError {
            report(error.message)
            throw ExitCode(1)
        }
        let s = receiver.stats
        writeStderr("traffic-mirror receive: \(s.datagrams) datagrams, \(s.frames) frames written, \(s.otherVNI) of other VNIs, \(s.malformed) malformed\(receiver.readerGone ? "; stopped: the reader of the output went away" : "")\n")
    }
}

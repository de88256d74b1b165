import ArgumentParser
import CMirrorSys
import MirrorCore
import MirrorDataPlane

struct ReceiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "A built-in target: receive VXLAN, GENEVE and ERSPAN, write the inner frames as pcap or pcapng.",
        discussion: """
        Each UDP datagram's header says whether it is VXLAN or GENEVE; --listen-gre \
        takes ERSPAN Type II and III from GRE on a raw socket. Frames are written as \
        pcap (nanosecond) or, with --format pcapng, with one interface per sender \
        and source interface and each frame's direction where the encapsulation \
        carries them. A frame is stamped with the time the sender's hook saw it \
        when the encapsulation carries that (ERSPAN III, the GENEVE origin option), \
        else with the kernel's receive time. See frames live with \
        'traffic-mirror receive --write - | tcpdump -n -r -'. \
        --rotate-seconds and --rotate-bytes start new files between frames (never \
        splitting one); FILE may hold strftime conversions (UTC), else the next \
        files are FILE.1, FILE.2, ... It listens on all addresses by default: give \
        --listen the address of one interface to take copies only there. Stops on \
        SIGINT or SIGTERM, after --count frames, or when the reader of --write - goes \
        away; prints what it received on stderr.
        """
    )

    @Option(help: ArgumentHelp("UDP address to listen on for VXLAN or GENEVE, HOST:PORT, repeatable (GENEVE's port is 6081).", valueName: "host:port"))
    var listen: [String] = ["0.0.0.0:4789"]

    @Option(name: .customLong("listen-gre"), help: ArgumentHelp("Address to take ERSPAN (GRE, IP protocol 47) on, repeatable: 0.0.0.0, :: or one address. Needs CAP_NET_RAW.", valueName: "address"))
    var listenGRE: [String] = []

    @Option(help: ArgumentHelp("Where the frames go: a file (with strftime conversions when rotating), or - for standard output.", valueName: "file"))
    var write: String

    @Option(help: ArgumentHelp("pcap (nanosecond timestamps) or pcapng (interfaces and directions).", valueName: "format"))
    var format: String = "pcap"

    @Option(help: ArgumentHelp("Keep only VXLAN and GENEVE frames of this VNI, 0...16777215.", valueName: "n"))
    var vni: UInt32?

    @Option(name: .customLong("erspan-session-id"), help: ArgumentHelp("Keep only ERSPAN frames of this session ID, 0...1023.", valueName: "n"))
    var erspanSessionID: UInt32?

    @Option(help: ArgumentHelp("Stop after this many frames.", valueName: "n"))
    var count: Int?

    @Option(name: .customLong("rotate-seconds"), help: ArgumentHelp("Start a new file every N seconds (tcpdump -G).", valueName: "n"))
    var rotateSeconds: Int = 0

    @Option(name: .customLong("rotate-bytes"), help: ArgumentHelp("Start a new file before one passes N bytes (tcpdump -C, in bytes).", valueName: "n"))
    var rotateBytes: Int = 0

    @Option(help: ArgumentHelp("With rotation, keep only the newest N files (tcpdump -W).", valueName: "n"))
    var keep: Int = 0

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
        for g in listenGRE where IPAddress(g) == nil {
            problems.append("--listen-gre: \(g) must be an IP address (0.0.0.0 or :: for all), without a port: GRE has none")
        }
        if !["pcap", "pcapng"].contains(format) { problems.append("--format: \"\(format)\" is not one of pcap, pcapng") }
        if let v = vni, v > TunnelHeader.maxVNI { problems.append("--vni: \(v) is out of range 0...\(TunnelHeader.maxVNI)") }
        if let v = erspanSessionID, v > UInt32(Tunnel.maxSessionID) {
            problems.append("--erspan-session-id: \(v) is out of range 0...\(Tunnel.maxSessionID)")
        }
        if let c = count, c < 1 { problems.append("--count: must be at least 1") }
        if rotateSeconds < 0 { problems.append("--rotate-seconds: must be at least 1 (0: no rotation by time)") }
        if rotateBytes < 0 || (1..<4096).contains(rotateBytes) { problems.append("--rotate-bytes: must be at least 4096 (0: no rotation by size)") }
        if keep < 0 { problems.append("--keep: must be at least 1 (0: keep every file)") }
        if write == "-" && (rotateSeconds > 0 || rotateBytes > 0) {
            problems.append("--rotate-seconds, --rotate-bytes: standard output cannot rotate; give --write a file")
        }
        if keep > 0 && rotateSeconds == 0 && rotateBytes == 0 {
            problems.append("--keep: only with --rotate-seconds or --rotate-bytes")
        }
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "\n")) }
    }

    func run() throws {
        CMirrorSys_trap_stop_signals()
        let receiver: Receiver
        do {
            receiver = try Receiver(
                options: .init(listen: try listen.map { try HostPort(parsing: $0) }, listenGRE: listenGRE, vni: vni,
                               erspanSessionID: erspanSessionID, count: count, format: format, rotateSeconds: rotateSeconds,
                               rotateBytes: rotateBytes, keep: keep),
                write: write)
            try receiver.run()
        } catch let error as OperationalError {
            report(error.message)
            throw ExitCode(1)
        }
        let s = receiver.stats
        let files = s.files.count > 1 ? " in \(s.files.count) files (\(s.framesPerFile.map(String.init).joined(separator: " + ")))" : ""
        writeStderr("traffic-mirror receive: \(s.datagrams) datagrams, \(s.frames) frames written\(files), \(s.otherID) of other VNIs or sessions, \(s.malformed) malformed\(s.foldedFrames > 0 ? ", \(s.foldedFrames) under \"other senders and interfaces\" (a file describes \(Receiver.maxCaptureInterfaces) interfaces at most)" : "")\(receiver.readerGone ? "; stopped: the reader of the output went away" : "")\n")
    }
}

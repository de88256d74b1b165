import MirrorCore

#if canImport(Glibc)
import Glibc
#endif

/// Fuzz targets for what takes untrusted input: the config loader, the
/// decoder of `receive` (every encapsulation it accepts) and the pcap and
/// pcapng writers. TM_FUZZ_TARGET picks one: config, decode, capture.
///
/// Built with `-sanitize=fuzzer -DFUZZING` (scripts/fuzz), libFuzzer calls
/// LLVMFuzzerTestOneInput. Built plainly, as `swift build` does, the same
/// code replays the files it is given: a regression run of a corpus.
/// A target traps (fatalError) when an output does not read back as what
/// went in; libFuzzer reports that, with the input, as a crash.
enum Fuzz {
    static let target: String = {
        guard let t = getenv("TM_FUZZ_TARGET") else { return "decode" }
        return String(cString: t)
    }()

    static func one(_ data: UnsafeRawBufferPointer) {
        switch target {
        case "config": config(data)
        case "capture": capture(data)
        default: decode(data)
        }
    }

    /// Any text: loads or lists problems, never crashes; a config that loads
    /// compiles and renders.
    static func config(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        guard let c = try? ConfigLoader.load(yaml: text) else { return }
        let plan = MirrorPlan(compiling: c)
        _ = plan.kernelLimitProblem
        _ = PlanDescription.render(c)
    }

    /// The first byte picks the socket (UDP, raw GRE over IPv4 with its IP
    /// header, raw GRE over IPv6); the rest is the datagram. What decodes is
    /// written as pcap and pcapng and must read back as the same frame.
    static func decode(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        let kind = data[0] % 3
        let datagram = UnsafeRawBufferPointer(rebasing: data[1...])
        guard let (d, range) = DecodedTunnel.datagram(datagram, gre: kind != 0, ipv4: kind == 1) else { return }
        guard range.lowerBound >= 0, range.upperBound <= datagram.count, range.count >= 14 else {
            fatalError("frame range \(range) outside a datagram of \(datagram.count) bytes")
        }
        let frame = UnsafeRawBufferPointer(rebasing: datagram[range])
        roundTrip(frame, timestamp: d.timestamp ?? 1, direction: d.direction, name: "fuzz ifindex \(d.ifindex ?? 0)")
    }

    /// Frames of any length and content, any time and direction, through
    /// both writers and back.
    static func capture(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 9 else { return }
        var t: UInt64 = 0
        for i in 0..<8 { t = t << 8 | UInt64(data[i]) }
        let direction: Direction? = data[8] % 3 == 0 ? nil : data[8] % 3 == 1 ? .ingress : .egress
        roundTrip(UnsafeRawBufferPointer(rebasing: data[9...]), timestamp: t, direction: direction,
                  name: String(decoding: data.prefix(40), as: UTF8.self))
    }

    static func roundTrip(_ frame: UnsafeRawBufferPointer, timestamp: UInt64, direction: Direction?, name: String) {
        var pcap = PcapWriter.fileHeader()
        PcapWriter.appendRecordHeader(&pcap, timestampNanoseconds: timestamp, capturedLength: frame.count, originalLength: frame.count)
        pcap.append(contentsOf: frame)
        // Classic pcap keeps 32 bits of seconds.
        let stamp = (timestamp / 1_000_000_000 & 0xFFFF_FFFF) * 1_000_000_000 + timestamp % 1_000_000_000
        guard let read = try? PcapReader(bytes: pcap), read.frames.count == 1, read.frames[0].bytes.elementsEqual(frame),
              read.frames[0].timestampNanoseconds == stamp
        else { fatalError("pcap does not read back: \(frame.count) bytes at \(timestamp)") }

        var ng = [UInt8]()
        PcapngWriter.appendSectionHeader(&ng, application: "tm-fuzz")
        PcapngWriter.appendInterface(&ng, name: name, description: name)
        let before = ng.count
        PcapngWriter.appendPacket(&ng, interface: 0, timestampNanoseconds: timestamp, frame: frame, originalLength: frame.count,
                                  direction: direction)
        guard ng.count - before == PcapngWriter.packetBlockLength(frame.count, direction: direction != nil) else {
            fatalError("pcapng packet block of \(ng.count - before) bytes, expected \(PcapngWriter.packetBlockLength(frame.count, direction: direction != nil))")
        }
        // Walk the blocks: every length is a multiple of 4, repeated at the end.
        var o = 0
        var blocks = 0
        while o < ng.count {
            guard o + 12 <= ng.count else { fatalError("pcapng ends inside a block header") }
            let length = Int(le32(ng, o + 4))
            guard length >= 12, length % 4 == 0, o + length <= ng.count, le32(ng, o + length - 4) == UInt32(length) else {
                fatalError("pcapng block at \(o): length \(length)")
            }
            if le32(ng, o) == PcapngWriter.enhancedPacketType {
                guard Int(le32(ng, o + 20)) == frame.count, ng[(o + 28)..<(o + 28 + frame.count)].elementsEqual(frame),
                      UInt64(le32(ng, o + 12)) << 32 | UInt64(le32(ng, o + 16)) == timestamp
                else { fatalError("pcapng packet does not read back") }
            }
            o += length
            blocks += 1
        }
        guard blocks == 3 else { fatalError("\(blocks) pcapng blocks") }
    }

    static func le32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
    }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    Fuzz.one(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// libFuzzer's driver, for an executable whose main is SwiftPM's
/// (`tm_fuzz_main`) rather than libFuzzer's.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@_cdecl("tm_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, fuzzOne)
}
#else
/// Replays corpus files: tm-fuzz FILE...
@main
struct Replay {
    static func main() {
        var n = 0
        for path in CommandLine.arguments.dropFirst() {
            guard let f = fopen(path, "rb") else { continue }
            var bytes = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let r = fread(&buffer, 1, buffer.count, f)
                if r <= 0 { break }
                bytes += buffer[0..<r]
            }
            fclose(f)
            bytes.withUnsafeBytes { Fuzz.one($0) }
            n += 1
        }
        print("tm-fuzz \(Fuzz.target): \(n) inputs replayed")
    }
}
#endif

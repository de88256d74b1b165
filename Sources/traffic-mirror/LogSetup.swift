import ArgumentParser
import Logging

#if canImport(Glibc)
import Glibc
#endif

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

enum LogLevelOption: String, ExpressibleByArgument, CaseIterable {
    case trace, debug, info, notice, warning, error, critical

    var level: Logger.Level { Logger.Level(rawValue: rawValue)! }
}

/// Logs to stderr, one line per event: `text` for people, `json` for
/// collectors (one object per line: time, level, message, metadata).
struct StderrLogHandler: LogHandler {
    let label: String
    let format: LogFormat
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let m = event.metadata { all.merge(m) { _, new in new } }
        let time = Self.timestamp()
        let line: String
        switch format {
        case .text:
            let meta = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            line = "\(time) \(event.level.rawValue.uppercased()) \(event.message)\(meta.isEmpty ? "" : " " + meta)"
        case .json:
            var fields = ["\"time\":\(Self.quote(time))", "\"level\":\(Self.quote(event.level.rawValue))",
                          "\"message\":\(Self.quote("\(event.message)"))"]
            for (k, v) in all.sorted(by: { $0.key < $1.key }) {
                fields.append("\(Self.quote(k)):\(Self.quote("\(v)"))")
            }
            line = "{" + fields.joined(separator: ",") + "}"
        }
        writeStderr(line + "\n")
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = tm()
        var secs = ts.tv_sec
        gmtime_r(&secs, &t)
        func pad(_ v: Int32, _ n: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, n - s.count)) + s
        }
        return "\(pad(t.tm_year + 1900, 4))-\(pad(t.tm_mon + 1, 2))-\(pad(t.tm_mday, 2))T\(pad(t.tm_hour, 2)):\(pad(t.tm_min, 2)):\(pad(t.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}

struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: \(LogLevelOption.allCases.map(\.rawValue).joined(separator: ", ")).")
    var logLevel: LogLevelOption = .info

    @Option(help: "Log format: text or json (one JSON object per line).")
    var logFormat: LogFormat = .text

    func bootstrap() -> Logger {
        let format = logFormat, level = logLevel.level
        LoggingSystem.bootstrap { label in
            StderrLogHandler(label: label, format: format, logLevel: level)
        }
        var logger = Logger(label: "traffic-mirror")
        logger.logLevel = level
        return logger
    }
}

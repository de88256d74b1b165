import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// Serves `/metrics` (Prometheus text format) and `/healthz` (200 while the
/// data plane runs, else 503; 503 too while a change of interfaces failed;
/// the body lists interface patterns that wait for a match) with Hummingbird; a ServiceLifecycle service.
public enum MetricsServer {
    public static func make(host: String, port: Int, exporter: MetricsExporter, logger: Logger) -> some Service {
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            let body = exporter.render()
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
        router.get("/healthz") { _, _ -> Response in
            let snapshot = exporter.agent.agent?.snapshot()
            let up = snapshot?.running == true && snapshot?.interfaceFailure == nil
            var body = snapshot?.running == true ? "" : "data plane not running\n"
            if let f = snapshot?.interfaceFailure { body += "failed: \(f)\n" }
            if let t = snapshot?.targetProblem { body += "target path: \(t)\n" }
            for p in snapshot?.waiting ?? [] { body += "waiting: \(p) matches no interface yet\n" }
            for (ns, why) in (snapshot?.namespaceFailures ?? [:]).sorted(by: { $0.key < $1.key }) {
                body += "waiting: network namespace \(ns) cannot be entered: \(why)\n"
            }
            if up { body = "ok\n" + body }
            return Response(
                status: up ? .ok : .serviceUnavailable,
                headers: [.contentType: "text/plain; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        return Endpoint(host: host, port: port, app: Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "traffic-mirror"),
            logger: quiet))
    }

    /// Runs the application; a failure to listen ends the agent with one
    /// line that names the address and the remedy.
    struct Endpoint<A: Service>: Service {
        let host: String
        let port: Int
        let app: A

        func run() async throws {
            do {
                try await app.run()
            } catch is CancellationError {
                return
            } catch {
                throw MetricsEndpointError(message: "the metrics endpoint cannot listen on \(host):\(port): \(error); choose another with --metrics-address")
            }
        }
    }
}

public struct MetricsEndpointError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

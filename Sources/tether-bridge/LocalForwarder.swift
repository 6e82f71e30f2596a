import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOPosix
import TetherHTTP
import TetherTunnel

/// Serves streams against the local service with one shared AsyncHTTPClient (its pool keeps
/// keep-alive connections to the target). Bodies are streamed both ways, chunk by chunk.
final class LocalForwarder: Sendable {
    let router: Router
    let client: HTTPClient
    private let logger: Logger

    init(targets: [LocalTarget], idleTimeout: TimeAmount, connectTimeout: TimeAmount, maxConnections: Int,
         logger: Logger) {
        router = Router(targets: targets)
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,  // a redirect is the web client's business, not ours
            timeout: .init(connect: connectTimeout, read: idleTimeout),  // `read` is an idle timeout
            decompression: .disabled)
        // Up to one connection per concurrent stream (the default of 8 would queue LLM answers).
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = max(1, maxConnections)
        // A local service that is down must fail the stream at once (LOCAL_SERVICE_ERROR), not
        // be retried until a deadline.
        configuration.connectionPool.retryConnectionEstablishment = false
        client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration,
                            backgroundActivityLogger: logger)
        self.logger = logger
    }

    func shutdown() async {
        do {
            try await client.shutdown()
        } catch {
            logger.debug("HTTP client shutdown: \(error)")
        }
    }

    /// Runs one stream to its end. Every exit reports to `io` exactly once (`end` on success,
    /// `fail` or `cancelled` otherwise).
    func serve(route: Router.Route, head: TunnelRequestHead, body: RequestBody?, io: StreamIO) async {
        var request = HTTPClientRequest(url: route.url)
        request.method = .init(rawValue: head.method)
        var fields: [(name: String, value: String)] = []
        for field in head.headers { fields.append((field.name, field.value)) }
        for field in HopByHop.requestHeaders(fields) { request.headers.add(name: field.name, value: field.value) }
        request.headers.replaceOrAdd(name: "Host", value: route.target.hostHeader)
        let declaredLength = head.headers.first(name: "Content-Length")
            .flatMap { Int64($0.trimmingWhitespace()) }.flatMap { $0 >= 0 ? $0 : nil }
        if let body {
            request.body = .stream(body, length: declaredLength.map { .known($0) } ?? .unknown)
        } else if declaredLength != nil {
            // END_STREAM on OPEN with an explicit length (0): keep the framing the client sent.
            request.body = .bytes(ByteBuffer())
        }

        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, deadline: .distantFuture, logger: logger)
        } catch {
            report(error, io: io, phase: "request")
            return
        }
        let status = Int(response.status.code)
        guard (200...599).contains(status) else {
            io.fail(.localServiceError, reason: "local service answered \(status)")
            return
        }
        var responseFields: [(name: String, value: String)] = []
        for field in response.headers { responseFields.append((field.name, field.value)) }
        var headers = TetherHTTP.HTTPHeaders()
        for field in HopByHop.responseHeaders(responseFields) { headers.add(name: field.name, value: field.value) }

        do {
            try await io.respond(TunnelResponseHead(status: status, headers: headers))
            // One chunk in flight at a time: the next local read waits until the tunnel took
            // this one (flow control), so nothing accumulates here.
            for try await chunk in response.body where chunk.readableBytes > 0 {
                try await io.send(chunk)
            }
            try await io.end()
        } catch {
            report(error, io: io, phase: "response")
        }
    }

    private func report(_ error: Error, io: StreamIO, phase: String) {
        if error is StreamGone || error is CancellationError || Task.isCancelled {
            io.cancelled()
            return
        }
        let (code, reason) = Self.classify(error)
        logger.debug("stream \(io.id): \(phase) failed: \(error)")
        io.fail(code, reason: reason)
    }

    /// Maps a client error onto the RESET code the relay turns into the web client's status.
    static func classify(_ error: Error) -> (TunnelErrorCode, String) {
        if let e = error as? HTTPClientError {
            switch e {
            case .readTimeout, .deadlineExceeded:
                return (.localTimeout, "local service idle timeout")
            case .connectTimeout:
                return (.localServiceError, "connect to local service timed out")
            case .remoteConnectionClosed:
                return (.localServiceError, "local service closed the connection")
            case .cancelled:
                return (.internalError, "local request cancelled")
            default:
                return (.localServiceError, "local service error: \(e)")
            }
        }
        return (.localServiceError, "local service error: \(error)")
    }
}

/// Thrown to a stream's task when its stream is gone (reset by the relay, or the tunnel closed).
struct StreamGone: Error {}

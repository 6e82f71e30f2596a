import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import TetherHTTP
import TetherTunnel

/// Serves streams against the local service with one shared AsyncHTTPClient (its pool keeps
/// keep-alive connections to the target). Bodies are streamed both ways, chunk by chunk.
///
/// A stream runs entirely on its tunnel's event loop: the request is executed with the
/// EventLoop-future/delegate API with its callbacks on the tunnel's loop, which the pool also
/// prefers for the local connection (so the local connection, the response callbacks and the
/// tunnel share one thread: no Swift task, no hop between threads per request).
/// `.delegate(on:)`, not `.delegateAndChannel(on:)`: connections the pool opens for a *required*
/// loop count as overflow and are closed as soon as no request waits for them, i.e. after
/// every request here.
final class LocalForwarder: Sendable {
    let router: Router
    let client: HTTPClient
    private let logger: Logger
    /// Handed to AsyncHTTPClient per request only when its debug/trace output can be seen.
    private let requestLogger: Logger?

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
        // No request spans: building them (attributes, a no-op span) costs more per request
        // than the rest of the client's bookkeeping, and the bridge bootstraps no tracer.
        configuration.tracing.tracer = nil
        client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration,
                            backgroundActivityLogger: logger)
        self.logger = logger
        requestLogger = logger.logLevel <= .debug ? logger : nil
    }

    func shutdown() async {
        do {
            try await client.shutdown()
        } catch {
            logger.debug("HTTP client shutdown: \(error)")
        }
    }

    /// Starts the stream's local request (on the tunnel's loop). Every outcome reaches the
    /// tunnel exactly once: `localEnd` on success, `localFailed` otherwise (a no-op for a
    /// stream that is gone already).
    func start(route: Router.Route, head: TunnelRequestHead, hasBody: Bool, tunnel: TunnelConnection,
               context: StreamContext) {
        let id = context.id
        var headers = NIOHTTP1.HTTPHeaders()
        HopByHop.forEachRequestHeader(head.headers) { headers.add(name: $0, value: $1) }
        headers.replaceOrAdd(name: "Host", value: route.hostHeader)
        let declaredLength = head.headers.first(name: "Content-Length")
            .flatMap { Int64($0.trimmingWhitespace()) }.flatMap { $0 >= 0 ? $0 : nil }
        var body: HTTPClient.Body?
        if hasBody {
            body = .stream(contentLength: declaredLength) { [tunnel] writer in
                if tunnel.loop.inEventLoop { return tunnel.startRequestBody(id, writer) }
                return tunnel.loop.flatSubmit { tunnel.startRequestBody(id, writer) }
            }
        } else if declaredLength != nil {
            // END_STREAM on OPEN with an explicit length (0): keep the framing the client sent.
            body = .byteBuffer(ByteBuffer())
        }
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(
                url: route.url, method: HTTPMethod(rawValue: head.method), headers: headers, body: body)
        } catch {
            tunnel.localFailed(id, error)
            return
        }
        let task = client.execute(
            request: request, delegate: LocalExchange(tunnel: tunnel, id: id),
            eventLoop: .delegate(on: tunnel.loop), deadline: nil, logger: requestLogger)
        context.localTask = task
        task.futureResult.whenFailure { [tunnel] error in tunnel.localFailed(id, error) }
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

/// The response side of one stream's local request. AsyncHTTPClient calls it on the tunnel's
/// loop (the task is pinned there), and reads the next part from the local connection only once
/// the future of the previous one completed: that is the flow control towards the tunnel.
final class LocalExchange: HTTPClientResponseDelegate, Sendable {
    typealias Response = Void
    let tunnel: TunnelConnection
    let id: StreamID

    init(tunnel: TunnelConnection, id: StreamID) {
        self.tunnel = tunnel
        self.id = id
    }

    func didReceiveHead(task: HTTPClient.Task<Void>, _ head: NIOHTTP1.HTTPResponseHead) -> EventLoopFuture<Void> {
        tunnel.localHead(id, head)
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Void>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        tunnel.localBodyPart(id, buffer)
    }

    func didReceiveError(task: HTTPClient.Task<Void>, _ error: Error) {
        // The task's future fails with it as well; `localFailed` handles it there.
    }

    func didFinishRequest(task: HTTPClient.Task<Void>) throws {
        tunnel.localEnd(id)
    }
}

/// Fails a stream's local request when its stream is gone (reset by the relay, or the tunnel closed).
struct StreamGone: Error {}

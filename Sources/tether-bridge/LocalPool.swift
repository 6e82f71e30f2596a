import NIOCore
import NIOPosix
import NIOSSL

/// The keep-alive connections one event loop holds to the local service. Loop-confined like
/// the tunnels it serves (`@unchecked Sendable` only so the forwarder can hand it out).
///
/// At most `maxConnections` exist at once (idle, busy and connecting); a stream that finds none
/// free waits in line for the next one released. Idle connections are reused newest first, so
/// the oldest age out after `poolIdleTimeout`.
final class LocalPool: @unchecked Sendable {
    let loop: any EventLoop
    let idleTimeout: TimeAmount
    private let configuration: LocalForwarder.Configuration
    /// Newest last.
    private var idle: [LocalConnection] = []
    /// Every connection not yet closed, connecting ones included.
    private var count = 0
    private var waiting = CircularBuffer<StreamContext>()
    private var sweep: Scheduled<Void>?
    private var shutDown = false

    init(loop: any EventLoop, configuration: LocalForwarder.Configuration) {
        self.loop = loop
        self.configuration = configuration
        idleTimeout = configuration.idleTimeout
    }

    /// Runs `stream`'s exchange on an idle connection, a new one, or the next one free.
    /// `fresh`: not on an idle connection (a retry after a reused one died).
    func acquire(_ stream: StreamContext, fresh: Bool = false) {
        if !fresh, let connection = idle.popLast() {
            connection.start(stream)
        } else if count < configuration.maxConnections {
            connect(for: stream)
        } else {
            stream.phase = .waiting
            waiting.append(stream)
        }
    }

    /// An exchange finished and the connection can carry another.
    func release(_ connection: LocalConnection) {
        guard !shutDown else {
            connection.close()
            return
        }
        if let stream = nextWaiting() {
            connection.start(stream)
            return
        }
        connection.markIdle()
        idle.append(connection)
        scheduleSweep()
    }

    func connectionClosed(_ connection: LocalConnection) {
        count -= 1
        if let i = idle.lastIndex(where: { $0 === connection }) { idle.remove(at: i) }
        if count < configuration.maxConnections, let stream = nextWaiting() { connect(for: stream) }
    }

    /// Bridge shutdown: closes every idle connection now and the others as their exchange ends.
    func closeAll() {
        shutDown = true
        sweep?.cancel()
        sweep = nil
        let connections = idle
        idle = []
        for connection in connections { connection.close() }
    }

    private func nextWaiting() -> StreamContext? {
        while let stream = waiting.popFirst() {
            if stream.phase == .waiting { return stream }  // else it was reset meanwhile
        }
        return nil
    }

    private func connect(for stream: StreamContext) {
        count += 1
        stream.phase = .connecting
        let connection = LocalConnection(pool: self)
        let target = configuration.target
        let tls = configuration.tls
        ClientBootstrap(group: loop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                do {
                    if let tls {
                        // SNI must be a DNS name; for an IP literal NIOSSL checks the address instead.
                        let sni = target.host.isIPAddress ? nil : target.host
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: sni))
                    }
                    try channel.pipeline.syncOperations.addHandler(connection)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: target.host, port: target.port)
            .assumeIsolated()  // we are on `loop`, and so is the channel
            .whenComplete { [self] result in
                switch result {
                case .success:
                    guard stream.phase == .connecting else {
                        // Reset while we connected: the connection serves the next stream instead.
                        if !connection.isClosed { release(connection) }
                        return
                    }
                    connection.start(stream)
                case .failure(let error):
                    connection.connectFailed()
                    guard stream.phase == .connecting else { return }
                    stream.tunnel.localFailed(stream, .localServiceError, Self.describe(connectError: error))
                }
            }
    }

    private static func describe(connectError error: any Error) -> String {
        if case ChannelError.connectTimeout = error { return "connect to local service timed out" }
        return "cannot connect to local service: \(error)"
    }

    /// Closes connections idle for `poolIdleTimeout`; one timer for the whole pool, due when
    /// the oldest idle connection expires.
    private func scheduleSweep() {
        guard sweep == nil, let oldest = idle.first?.idleSince else { return }
        sweep = loop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: oldest + configuration.poolIdleTimeout) { [self] in
            sweep = nil
            let cutoff = NIODeadline.now() - configuration.poolIdleTimeout
            let expired = idle.prefix { ($0.idleSince ?? cutoff) <= cutoff }
            idle.removeFirst(expired.count)
            for connection in expired { connection.close() }
            scheduleSweep()
        }
    }
}

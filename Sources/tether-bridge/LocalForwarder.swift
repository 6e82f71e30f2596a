import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// Where streams go and how: the router, and one pool of keep-alive connections to the local
/// service per event loop (a tunnel, its streams and their local connections share one thread,
/// so nothing in a request's path crosses threads or takes a lock).
final class LocalForwarder: Sendable {
    struct Configuration: Sendable {
        /// The only destination (the router never picks another; see Router).
        var target: LocalTarget
        /// For an https:// target.
        var tls: NIOSSLContext?
        var connectTimeout: TimeAmount
        /// How long the local service may stay silent while it owes us bytes (LOCAL_TIMEOUT).
        var idleTimeout: TimeAmount
        /// How long an unused keep-alive connection stays open.
        var poolIdleTimeout: TimeAmount
        /// Connections per event loop, idle and busy together.
        var maxConnections: Int
    }

    let router: Router
    let configuration: Configuration
    private let pools = NIOLockedValueBox<[ObjectIdentifier: LocalPool]>([:])

    init(targets: [LocalTarget], configuration: Configuration) {
        router = Router(targets: targets)
        self.configuration = configuration
    }

    /// The loop's pool, created on first use (once per tunnel, not per request).
    func pool(for loop: any EventLoop) -> LocalPool {
        pools.withLockedValue { pools in
            if let pool = pools[ObjectIdentifier(loop)] { return pool }
            let pool = LocalPool(loop: loop, configuration: configuration)
            pools[ObjectIdentifier(loop)] = pool
            return pool
        }
    }

    /// Closes the idle connections of every pool (busy ones close as their exchange ends).
    func shutdown() async {
        let all = pools.withLockedValue { Array($0.values) }
        for pool in all {
            try? await pool.loop.submit { pool.closeAll() }.get()
        }
    }
}

import ArgumentParser
import Glibc
import TetherAuth
import TetherIO
import TetherTLS

/// Options every bridge scenario shares.
struct RelayOptions: ParsableArguments {
    @Option(help: "Relay address (loopback only), HOST:PORT: its plaintext port, or its TLS port with --tls.")
    var target: String
    @Flag(help: "Connect over TLS (needs --ca).") var tls = false
    @Option(help: "CA certificate (PEM) that verifies the relay's certificate (TLS).") var ca: String?
    @Option(help: "Name the relay's certificate must carry (TLS), also sent as SNI.") var serverName = "localhost"
    @Option(help: "Driver threads, each with its own io_uring loop.") var workers = 1
    @Option(help: "Spread connections over this many source addresses 127.0.0.2... (each adds ~28k ephemeral ports).")
    var sources = 1
    @Option(help: "HS256 secret the relay verifies tokens with (default: $TETHER_JWT_SECRET).") var jwtSecret: String?
    @Option(help: "iss claim of the minted tokens (if the relay requires one).") var jwtIssuer: String?
    @Option(help: "aud claim of the minted tokens (if the relay requires one).") var jwtAudience: String?
    @Option(help: "Write the figures (and the parameters) as JSON to this file.") var json: String?
    @Option(help: "Provided receive buffers (16 KiB) per driver loop (power of two).") var receiveBuffers = 512
    @Option(help: "Longest a driver loop sleeps, in microseconds: bounds the lateness of open-loop arrivals, token emission and churn.") var tickUs = 200

    func validate() throws {
        if tls && ca == nil { throw ValidationError("--tls needs --ca FILE") }
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1...64") }
        guard (1...250).contains(sources) else { throw ValidationError("--sources must be 1...250") }
        guard (20...100_000).contains(tickUs) else { throw ValidationError("--tick-us must be 20...100000") }
        guard (16...32768).contains(receiveBuffers), receiveBuffers & (receiveBuffers - 1) == 0 else {
            throw ValidationError("--receive-buffers must be a power of two in 16...32768")
        }
    }
}

/// Resolved shared configuration: loopback target, TLS context, token minting.
struct Setup: Sendable {
    let target: SocketAddress
    let sources: [SocketAddress?]
    let tls: TLSContext?
    let serverName: String
    let workers: Int
    let tickNanoseconds: UInt64
    let receiveBuffers: Int
    let json: String?
    private let secret: String?
    private let issuer: String?
    private let audience: String?
    let options: RelayOptionsSummary

    init(_ o: RelayOptions) throws {
        target = try parseLoopbackTarget(o.target)
        sources = sourceAddresses(count: o.sources)
        tls = try o.tls ? o.ca.map { try TLSContext(configuration: .client(trustRootsFile: $0)) } : nil
        serverName = o.serverName
        workers = o.workers
        tickNanoseconds = UInt64(o.tickUs) * 1000
        receiveBuffers = o.receiveBuffers
        json = o.json
        secret = o.jwtSecret ?? getenv("TETHER_JWT_SECRET").map { String(cString: $0) }
        issuer = o.jwtIssuer
        audience = o.jwtAudience
        options = RelayOptionsSummary(target: o.target, tls: o.tls, workers: o.workers, sources: o.sources, tickMicroseconds: o.tickUs)
    }

    /// HS256 tokens for users `<prefix><first>` ... (subjects "lt-0", "lt-1", ...), valid a day.
    func tokens(prefix: String = "lt-", first: Int = 0, count: Int) throws -> [String] {
        guard let secret, !secret.isEmpty else {
            throw LoadTestError.failed("bridges need tokens: give the relay's HS256 secret with --jwt-secret or TETHER_JWT_SECRET")
        }
        let minter = TokenMinter(secret: secret, issuer: issuer, audience: audience)
        let now = Double(time(nil))
        return try (0..<count).map { try minter.mint(subject: "\(prefix)\(first + $0)", ttlSeconds: 86_400, now: now) }
    }

    var hostHeader: String { target.description }

    func bridgeEndpoint() -> BridgeEndpoint {
        BridgeEndpoint(target: target, sources: sources, tls: tls, hostHeader: hostHeader, serverName: serverName)
    }

    func clientEndpoint(timeoutSeconds: Double) -> ClientEndpoint {
        ClientEndpoint(target: target, sources: sources, tls: tls, hostHeader: hostHeader, serverName: serverName,
                       timeoutMilliseconds: UInt64(max(0.001, timeoutSeconds) * 1000))
    }

    /// Fails early, with a clear message, when nothing listens at the target.
    func checkRelay() throws {
        try BlockingHTTP.checkReachable(target)
    }

    /// After the report: a relay that died during the run makes the run a failure too.
    func checkRelayStillUp() throws {
        switch BlockingHTTP.connect(target) {
        case .success(let fd):
            close(fd)
        case .failure(let error):
            throw LoadTestError.failed("the relay went away during the run (\(error)); the figures above are not a measurement")
        }
    }
}

struct RelayOptionsSummary: Sendable {
    let target: String
    let tls: Bool
    let workers: Int
    let sources: Int
    let tickMicroseconds: Int

    func add(to p: inout JSONReport) {
        p.set("target", target)
        p.set("tls", tls)
        p.set("workers", workers)
        p.set("sources", sources)
        p.set("tick_us", tickMicroseconds)
    }
}

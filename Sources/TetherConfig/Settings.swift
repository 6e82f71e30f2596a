import Logging
import TetherIsolation
import TetherQuota
import TetherRelay

/// The registry: every relay setting, in the order of the docs. Flags keep the names they had
/// before the file existed; environment variables are TETHER_ + the flag in upper snake case.
public enum Settings {
    public static let all: [Setting] = listen + tls + admin + auth + jwks + tunnel + limits + sessions + quotas + log + other
        + isolation

    static let byKey: [String: Setting] = Dictionary(uniqueKeysWithValues: all.map { ($0.key, $0) })
    static let byFlag: [String: Setting] = Dictionary(uniqueKeysWithValues: all.map { ($0.flag, $0) })
    static let byEnvironment: [String: Setting] = Dictionary(uniqueKeysWithValues: all.map { ($0.environment, $0) })

    public static func setting(key: String) -> Setting? { byKey[key] }

    /// Every key and every section ("listen", "quotas.default"): candidates for "did you mean".
    static let filePaths: [String] = {
        var paths = Set<String>()
        for s in all {
            let parts = s.key.split(separator: ".")
            for n in 1...parts.count { paths.insert(parts[0..<n].joined(separator: ".")) }
        }
        return paths.sorted()
    }()

    /// Section names in file order, with a line of doc each.
    public static let sections: [(name: String, doc: String)] = [
        ("listen", "Listeners and worker threads"),
        ("tls", "TLS listener"),
        ("admin", "Admin listener: GET /metrics, /healthz, /readyz and the /admin API"),
        ("auth", "Token validation"),
        ("jwks", "JWT keys from a JWKS file or URL"),
        ("tunnel", "Bridge tunnels (docs/PROTOCOL.md)"),
        ("limits", "HTTP and WebSocket limits, capacity and per-address limits"),
        ("sessions", "Sessions (docs/SESSIONS.md)"),
        ("quotas", "Quota profiles (docs/SESSIONS.md); the quotas.default.* keys override the default profile"),
        ("log", "Logging"),
        ("drain", "Graceful shutdown"),
        ("audit", "Audit log"),
        ("isolation", "Session isolation: in the relay process, or one locked-down Docker container per session (docs/ISOLATION.md); every key takes effect at restart"),
    ]

    private static let d = RelayConfiguration()
    private static let day: ClosedRange<Double> = 0...86_400
    private static let maxWindow = Int(Int32.max)

    static let listen: [Setting] = [
        Setting("listen.host", flag: "host", .string(allowEmpty: false), default: d.host, reload: .restart,
                "Address of the listeners (plaintext and TLS).") { c, v in
            if case .string(let s) = v { c.relay.host = s }
        },
        Setting("listen.port", flag: "port", .port(allowOff: false), default: "\(d.port)", reload: .restart,
                "Port of the plaintext HTTP listener (0 picks a free one).") { c, v in
            if case .port(let p?) = v { c.relay.port = p }
        },
        Setting("listen.workers", flag: "workers", .integer(1...256), default: "one per core", reload: .restart,
                "Worker threads, one io_uring each.") { c, v in
            if case .integer(let n) = v { c.relay.workers = n }
        },
    ]

    static let tls: [Setting] = [
        Setting("tls.port", flag: "tls-port", .port(allowOff: true), default: "off", reload: .restart,
                "Port of the TLS listener on listen.host (TLS 1.2/1.3, ALPN http/1.1); needs tls.cert and tls.key.") { c, v in
            if case .port(let p) = v { c.relay.tlsPort = p }
        },
        Setting("tls.cert", flag: "tls-cert", .path, default: "none",
                "PEM certificate chain (leaf first) for the TLS listener.") { c, v in
            if case .string(let s) = v { c.relay.tlsCertificateFile = s }
        },
        Setting("tls.key", flag: "tls-key", .path, default: "none",
                "PEM private key for the TLS listener.") { c, v in
            if case .string(let s) = v { c.relay.tlsKeyFile = s }
        },
    ]

    static let admin: [Setting] = [
        Setting("admin.enabled", flag: "admin-enabled", .bool, default: "true", reload: .restart,
                "Run the admin listener at all (false is the same as admin.port off).") { c, v in
            if case .bool(let b) = v { c.adminEnabled = b }
        },
        Setting("admin.host", flag: "admin-host", .string(allowEmpty: false), default: d.adminHost, reload: .restart,
                "Address of the admin listener (keep it private: loopback or an internal network).") { c, v in
            if case .string(let s) = v { c.relay.adminHost = s }
        },
        Setting("admin.port", flag: "admin-port", .port(allowOff: true), default: d.adminPort.map { "\($0)" } ?? "off",
                reload: .restart, "Port of the admin listener (0 picks a free one, off disables it).") { c, v in
            if case .port(let p) = v { c.relay.adminPort = p }
        },
        Setting("admin.token", flag: "admin-token", .string(allowEmpty: false), default: "none (every /admin call gets 401)",
                secret: true, "Bearer token for /admin/* (prefer admin.token_file; never logged).") { c, v in
            if case .string(let s) = v { c.relay.adminToken = s }
        },
        Setting("admin.token_file", flag: "admin-token-file", .path, default: "none",
                "File holding the admin token (whitespace around it ignored), re-read on reload; admin.token from a higher-precedence source wins.") { c, v in
            if case .string(let s) = v { c.adminTokenFile = s }
        },
        Setting("admin.metrics_on_main", flag: "metrics-on-main", .bool, default: "\(d.metricsOnMainListener)",
                "Also serve GET /metrics on the main listeners (they are public: off by default).") { c, v in
            if case .bool(let b) = v { c.relay.metricsOnMainListener = b }
        },
    ]

    static let auth: [Setting] = [
        Setting("auth.jwt_secret", flag: "jwt-secret", .string(allowEmpty: false), default: "none", secret: true,
                "HS256 shared secret for bridge and client tokens (at least 16 bytes; 32 recommended).") { c, v in
            if case .string(let s) = v { c.relay.auth.hs256Secret = s }
        },
        Setting("auth.jwt_secret_file", flag: "jwt-secret-file", .path, default: "none",
                "File holding the HS256 secret (whitespace around it ignored), re-read on reload; auth.jwt_secret from a higher-precedence source wins.") { c, v in
            if case .string(let s) = v { c.jwtSecretFile = s }
        },
        Setting("auth.issuer", flag: "jwt-issuer", .string(allowEmpty: true), default: "any",
                "Required `iss` claim (and the issuer of tokens minted by `tether-relay token`).") { c, v in
            if case .string(let s) = v { c.relay.auth.issuer = s.isEmpty ? nil : s }
        },
        Setting("auth.audience", flag: "jwt-audience", .string(allowEmpty: true), default: "any",
                "Required `aud` claim (and the audience of minted tokens).") { c, v in
            if case .string(let s) = v { c.relay.auth.audience = s.isEmpty ? nil : s }
        },
        Setting("auth.leeway", flag: "jwt-leeway", .integer(0...3600), default: "\(d.auth.leewaySeconds)",
                "Seconds of clock skew tolerated on `exp` and `nbf`.") { c, v in
            if case .integer(let n) = v { c.relay.auth.leewaySeconds = n }
        },
    ]

    static let jwks: [Setting] = [
        Setting("jwks.file", flag: "jwks-file", .path, default: "none",
                "Local JWKS file with RS256/ES256 public keys, chosen by `kid` (re-read every refresh interval).") { c, v in
            if case .string(let s) = v { c.relay.auth.jwksFile = s }
        },
        Setting("jwks.url", flag: "jwks-url", .string(allowEmpty: false), default: "none",
                "JWKS over HTTPS, e.g. https://<tenant>.auth0.com/.well-known/jwks.json (http:// only to loopback).") { c, v in
            if case .string(let s) = v { c.relay.auth.jwksURL = s }
        },
        Setting("jwks.ca_file", flag: "jwks-ca-file", .path, default: "the system's roots",
                "PEM CA bundle that verifies the JWKS server.") { c, v in
            if case .string(let s) = v { c.relay.auth.jwksCAFile = s }
        },
        Setting("jwks.refresh_interval", flag: "jwks-refresh-interval", .seconds(1...86_400, minExclusive: false),
                default: format(d.auth.jwksRefreshSeconds),
                "Seconds between re-reads of jwks.file and re-fetches of jwks.url.") { c, v in
            if case .number(let s) = v { c.relay.auth.jwksRefreshSeconds = s }
        },
        Setting("jwks.min_refresh_interval", flag: "jwks-min-refresh-interval", .seconds(1...86_400, minExclusive: false),
                default: format(d.auth.jwksMinRefreshSeconds),
                "Least seconds between refreshes caused by tokens with an unknown `kid`.") { c, v in
            if case .number(let s) = v { c.relay.auth.jwksMinRefreshSeconds = s }
        },
    ]

    static let tunnel: [Setting] = [
        Setting("tunnel.stream_window", flag: "stream-window", .bytes(65_536...maxWindow), default: "1MiB",
                "Flow-control window per stream advertised to bridges (bandwidth × RTT: 8 MiB moves 100 MB/s over 50 ms).") { c, v in
            if case .integer(let n) = v { c.relay.tunnel.streamWindow = n }
        },
        Setting("tunnel.window", flag: "tunnel-window", .bytes(65_536...maxWindow), default: "8MiB",
                "Flow-control window per tunnel (all streams of one bridge); at least tunnel.stream_window.") { c, v in
            if case .integer(let n) = v { c.relay.tunnel.tunnelWindow = n }
        },
        Setting("tunnel.max_streams", flag: "tunnel-max-streams", .integer(1...65_535), default: "\(d.tunnel.maxStreams)",
                "Most concurrent streams the relay opens on one tunnel (the bridge may allow fewer).") { c, v in
            if case .integer(let n) = v { c.relay.tunnel.maxStreams = n }
        },
        Setting("tunnel.stream_idle_timeout", flag: "stream-idle-timeout", .seconds(day, minExclusive: true),
                default: seconds(d.streamIdleTimeoutMilliseconds),
                "Seconds a proxied stream may stay idle (no head, no bytes either way) before it fails; no total limit.") { c, v in
            if case .number(let s) = v { c.relay.streamIdleTimeoutMilliseconds = milliseconds(s) }
        },
        Setting("tunnel.ping_interval", flag: "tunnel-ping-interval", .seconds(day, minExclusive: true),
                default: seconds(d.tunnelPingIntervalMilliseconds),
                "Seconds between pings on a tunnel; two unanswered pings drop the bridge.") { c, v in
            if case .number(let s) = v {
                c.relay.tunnelPingIntervalMilliseconds = milliseconds(s)
                c.relay.tunnel.pingIntervalMilliseconds = Int(milliseconds(s))
            }
        },
        Setting("tunnel.legacy_ping_interval", flag: "legacy-ping-interval", .seconds(day, minExclusive: true),
                default: seconds(d.legacyPingIntervalMilliseconds),
                "Seconds between pings on a legacy JSON bridge (/ws/bridge); two silent intervals drop it.") { c, v in
            if case .number(let s) = v { c.relay.legacyPingIntervalMilliseconds = milliseconds(s) }
        },
        Setting("tunnel.handshake_timeout", flag: "bridge-handshake-timeout", .seconds(day, minExclusive: true),
                default: seconds(d.bridgeHandshakeTimeoutMilliseconds),
                "Seconds a bridge has to send its HELLO after the WebSocket upgrade (else close 1008).") { c, v in
            if case .number(let s) = v { c.relay.bridgeHandshakeTimeoutMilliseconds = milliseconds(s) }
        },
    ]

    static let limits: [Setting] = [
        Setting("limits.max_body_size", flag: "max-body-size", .bytes(0...Int(Int64.max)), default: "10MiB",
                "Largest HTTP request body, proxied ones included (bigger: 413); tiers may allow more.") { c, v in
            if case .integer(let n) = v { c.relay.httpLimits.maxBodySize = n }
        },
        Setting("limits.ws_max_message", flag: "ws-max-message", .bytes(1...Int(Int32.max)), default: "16MiB",
                "Largest WebSocket message (bigger: close 1009).") { c, v in
            if case .integer(let n) = v { c.relay.webSocketMaxMessage = n }
        },
        Setting("limits.header_timeout", flag: "header-timeout", .seconds(day, minExclusive: true),
                default: seconds(d.headerTimeoutMilliseconds),
                "Seconds a client has to send a complete request head (slow clients get 408).") { c, v in
            if case .number(let s) = v { c.relay.headerTimeoutMilliseconds = milliseconds(s) }
        },
        Setting("limits.idle_timeout", flag: "idle-timeout", .seconds(day, minExclusive: true),
                default: seconds(d.idleTimeoutMilliseconds),
                "Seconds an idle keep-alive connection or a stalled request body is kept.") { c, v in
            if case .number(let s) = v { c.relay.idleTimeoutMilliseconds = milliseconds(s) }
        },
        Setting("limits.ws_idle_timeout", flag: "ws-idle-timeout", .seconds(day, minExclusive: true),
                default: seconds(d.webSocketIdleTimeoutMilliseconds),
                "Seconds a WebSocket connection may stay silent before it is closed (1001).") { c, v in
            if case .number(let s) = v { c.relay.webSocketIdleTimeoutMilliseconds = milliseconds(s) }
        },
        Setting("limits.max_sessions", flag: "max-sessions", .integer(1...10_000_000), default: "\(d.maxSessions)",
                "Most sessions on this relay; more get 503 CAPACITY_EXCEEDED (bridges: close 1013).") { c, v in
            if case .integer(let n) = v { c.relay.maxSessions = n }
        },
        Setting("limits.max_connections", flag: "max-connections", .integer(1...Int(Int32.max)),
                default: "descriptor limit − 2%",
                "Most open connections; more get 503 CAPACITY_EXCEEDED.") { c, v in
            if case .integer(let n) = v { c.relay.maxConnections = n }
        },
        Setting("limits.handshake_rate", flag: "handshake-rate", .number(0...1e9), default: format(d.handshakesPerSecondPerAddress),
                "Bridge handshakes per second per client address (0 = no limit; over: close 4029).") { c, v in
            if case .number(let n) = v { c.relay.handshakesPerSecondPerAddress = n }
        },
        Setting("limits.handshake_burst", flag: "handshake-burst", .number(0...1e9), default: format(d.handshakeBurstPerAddress),
                "Burst of bridge handshakes per client address.") { c, v in
            if case .number(let n) = v { c.relay.handshakeBurstPerAddress = n }
        },
        Setting("limits.auth_failure_rate", flag: "auth-failure-rate", .number(0...1e9),
                default: format(d.authFailuresPerSecondPerAddress),
                "Failed authentications per second per client address (0 = no limit; over: 429 AUTH_RATE_LIMITED / close 4029).") { c, v in
            if case .number(let n) = v { c.relay.authFailuresPerSecondPerAddress = n }
        },
        Setting("limits.auth_failure_burst", flag: "auth-failure-burst", .number(0...1e9),
                default: format(d.authFailureBurstPerAddress),
                "Burst of failed authentications per client address.") { c, v in
            if case .number(let n) = v { c.relay.authFailureBurstPerAddress = n }
        },
        Setting("limits.limit_loopback", flag: "limit-loopback", .bool, default: "\(!d.addressLimitsExemptLoopback)",
                "Apply the per-address limits to loopback clients too (a local reverse proxy shares one address).") { c, v in
            if case .bool(let b) = v { c.relay.addressLimitsExemptLoopback = !b }
        },
        Setting("limits.ipv6_prefix", flag: "limit-ipv6-prefix", .integer(1...128), default: "\(d.addressLimitsIPv6PrefixLength)",
                "IPv6 clients share a per-address bucket per prefix of this length (64: one per /64, which one host usually holds whole; 128: per address).") { c, v in
            if case .integer(let n) = v { c.relay.addressLimitsIPv6PrefixLength = n }
        },
        Setting("limits.trusted_proxies", flag: "trusted-proxies", .prefixes, default: "none",
                "Reverse proxies or load balancers whose X-Forwarded-For (and X-Forwarded-Proto) the relay believes: from these peers, the client is the nearest untrusted address in X-Forwarded-For, for per-address limits, audit lines and what the bridge sees. Empty: every peer is the client.") { c, v in
            if case .prefixes(let p) = v { c.relay.trustedProxies = p }
        },
    ]

    static let sessions: [Setting] = [
        Setting("sessions.idle_timeout", flag: "session-idle-timeout", .seconds(day, minExclusive: true),
                default: seconds(d.sessionIdleTimeoutMilliseconds),
                "Seconds without stream traffic before a session is parked (bridges kept) or, without bridges, removed.") { c, v in
            if case .number(let s) = v { c.relay.sessionIdleTimeoutMilliseconds = milliseconds(s) }
        },
    ]

    private static let p = QuotaProfile()

    static let quotas: [Setting] = [
        Setting("quotas.file", flag: "quota-file", .path, default: "embedded defaults",
                "JSON file of quota profiles: the default profile and one per tier (docs/SESSIONS.md).") { c, v in
            if case .string(let s) = v { c.quotaFile = s }
        },
        Setting("quotas.tier_claim", flag: "tier-claim", .string(allowEmpty: false), default: "tier",
                "JWT claim naming the caller's tier (overrides the quota file's tier_claim).") { c, v in
            if case .string(let s) = v { c.tierClaim = s }
        },
        Setting("quotas.default.max_bridges", flag: "max-bridges", .integer(1...1000), default: "\(p.maxBridges)",
                "Bridges one session may connect at once (over: close 4008).") { c, v in
            if case .integer(let n) = v { c.profile.maxBridges = n }
        },
        Setting("quotas.default.max_streams", flag: "max-streams", .integer(1...65_535), default: "\(p.maxStreams)",
                "Concurrent streams per session (over: 429 TOO_MANY_STREAMS).") { c, v in
            if case .integer(let n) = v { c.profile.maxStreams = n }
        },
        Setting("quotas.default.requests_per_second", flag: "rate-limit", .number(0...1e9), default: format(p.requestsPerSecond),
                "Requests per second per session, token bucket (0 = unlimited; over: 429 RATE_LIMITED).") { c, v in
            if case .number(let n) = v { c.profile.requestsPerSecond = n }
        },
        Setting("quotas.default.request_burst", flag: "rate-burst", .integer(1...1_000_000_000), default: "\(p.requestBurst)",
                "Request burst per session.") { c, v in
            if case .integer(let n) = v { c.profile.requestBurst = n }
        },
        Setting("quotas.default.bandwidth_bytes_per_second", flag: "bandwidth-limit", .bytes(0...Int(Int64.max)),
                default: "50MiB", "Bytes per second per session and direction, shaped, never cut (0 = unlimited).") { c, v in
            if case .integer(let n) = v { c.profile.bandwidthBytesPerSecond = n }
        },
        Setting("quotas.default.memory_bytes", flag: "session-memory", .bytes(262_144...Int(Int64.max)), default: "8MiB",
                "Bytes the relay may hold for one session at once (sizes its flow-control windows).") { c, v in
            if case .integer(let n) = v { c.profile.memoryBytes = n }
        },
    ]

    static let log: [Setting] = [
        Setting("log.level", flag: "log-level", .choice(Logger.Level.allCases.map(\.rawValue)), default: "\(d.logging.level)",
                "Level of every logger without its own in log.levels.") { c, v in
            if case .string(let s) = v, let level = Logger.Level(rawValue: s) { c.relay.logging.level = level }
        },
        Setting("log.format", flag: "log-format", .choice(LogConfiguration.Format.allCases.map(\.rawValue)),
                default: d.logging.format.rawValue,
                "text (one line per record) or json (one object per line: ts, level, logger, msg, metadata).") { c, v in
            if case .string(let s) = v, let f = LogConfiguration.Format(rawValue: s) { c.relay.logging.format = f }
        },
        Setting("log.levels", flag: "log-module-level", .levels, default: "none",
                "Level per logger label, e.g. tether.tunnel=debug (flag repeatable; sources merge per label).") { c, v in
            if case .levels(let levels) = v { c.relay.logging.moduleLevels.merge(levels) { _, new in new } }
        },
    ]

    static let other: [Setting] = [
        Setting("drain.timeout", flag: "drain-timeout", .seconds(day, minExclusive: false), default: format(d.drainTimeoutSeconds),
                "Seconds SIGTERM waits for streams in flight (after GOAWAY to every bridge) before exiting.") { c, v in
            if case .number(let s) = v { c.relay.drainTimeoutSeconds = s }
        },
        Setting("audit.log", flag: "audit-log", .string(allowEmpty: true), default: "-", reload: .restart,
                "Audit log, JSON lines: - for stdout, off, or a file path (appended).") { c, v in
            if case .string(let s) = v { c.auditLog = s }
        },
    ]

    private static let i = IsolationSettings()

    static let isolation: [Setting] = [
        Setting("isolation.mode", flag: "isolation", .choice(IsolationSettings.Mode.allCases.map(\.rawValue)),
                default: i.mode.rawValue, reload: .restart,
                "process: sessions run in the relay; docker: each session's tunnel frames, streams and quotas run in its own container.") { c, v in
            if case .string(let s) = v, let mode = IsolationSettings.Mode(rawValue: s) { c.relay.isolation.mode = mode }
        },
        Setting("isolation.docker_socket", flag: "docker-socket", .string(allowEmpty: false), default: i.dockerSocket,
                reload: .restart, "Docker Engine API socket (API 1.41, or older down to 1.25, negotiated).") { c, v in
            if case .string(let s) = v { c.relay.isolation.dockerSocket = s }
        },
        Setting("isolation.image", flag: "isolation-image", .string(allowEmpty: false), default: i.image, reload: .restart,
                "Image of the session containers (built from the relay binary by deploy/docker/build-image.sh).") { c, v in
            if case .string(let s) = v { c.relay.isolation.image = s }
        },
        Setting("isolation.run_dir", flag: "isolation-run-dir", .string(allowEmpty: false), default: i.runDirectory,
                reload: .restart,
                "Host directory of the per-session socket directories (at most \(IsolationSettings.maxRunDirectoryLength) bytes: socket paths must fit 107).") { c, v in
            if case .string(let s) = v { c.relay.isolation.runDirectory = s }
        },
        Setting("isolation.instance", flag: "isolation-instance", .string(allowEmpty: false), default: "the host name",
                reload: .restart,
                "Value of the tether.relay label: a restarted relay removes the containers carrying its own; relays sharing an engine need different ones.") { c, v in
            if case .string(let s) = v { c.relay.isolation.instance = s }
        },
        Setting("isolation.user", flag: "isolation-user", .string(allowEmpty: false), default: i.user, reload: .restart,
                "uid:gid (numeric) the worker runs as inside the container.") { c, v in
            if case .string(let s) = v { c.relay.isolation.user = s }
        },
        Setting("isolation.memory", flag: "isolation-memory", .bytes((6 << 20)...Int(Int64.max)), default: "512MiB",
                reload: .restart, "Memory limit of each container (no swap); the kernel kills a worker above it.") { c, v in
            if case .integer(let n) = v { c.relay.isolation.memoryBytes = n }
        },
        Setting("isolation.cpus", flag: "isolation-cpus", .number(0.01...1024), default: format(i.cpus), reload: .restart,
                "CPUs each container may use (NanoCpus).") { c, v in
            if case .number(let n) = v { c.relay.isolation.cpus = n }
        },
        Setting("isolation.pids_limit", flag: "isolation-pids-limit", .integer(8...1_000_000), default: "\(i.pidsLimit)",
                reload: .restart, "Processes and threads per container.") { c, v in
            if case .integer(let n) = v { c.relay.isolation.pidsLimit = n }
        },
        Setting("isolation.file_limit", flag: "isolation-file-limit", .integer(64...1_048_576), default: "\(i.fileLimit)",
                reload: .restart, "Open files per container (RLIMIT_NOFILE).") { c, v in
            if case .integer(let n) = v { c.relay.isolation.fileLimit = n }
        },
        Setting("isolation.read_only", flag: "isolation-read-only", .bool, default: "\(i.readOnlyRootFilesystem)",
                reload: .restart, "Read-only root filesystem in the containers.") { c, v in
            if case .bool(let b) = v { c.relay.isolation.readOnlyRootFilesystem = b }
        },
        Setting("isolation.cap_drop", flag: "isolation-cap-drop", .string(allowEmpty: true), default: "ALL", reload: .restart,
                "Capabilities dropped in the containers, comma separated (empty: none).") { c, v in
            if case .string(let s) = v {
                c.relay.isolation.capDrop = s.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
            }
        },
        Setting("isolation.no_new_privileges", flag: "isolation-no-new-privileges", .bool, default: "\(i.noNewPrivileges)",
                reload: .restart, "Run the containers with no-new-privileges.") { c, v in
            if case .bool(let b) = v { c.relay.isolation.noNewPrivileges = b }
        },
        Setting("isolation.seccomp_profile", flag: "isolation-seccomp-profile", .path, default: "the engine's default",
                reload: .restart,
                "Seccomp profile (JSON) for the containers; needed where the engine's default blocks io_uring (Docker 25 and later).") { c, v in
            if case .string(let s) = v { c.relay.isolation.seccompProfileFile = s }
        },
        Setting("isolation.max_containers", flag: "isolation-max-containers", .integer(1...1_000_000),
                default: "\(i.maxContainers)", reload: .restart,
                "Session containers at once; a session beyond gets 503 ISOLATION_UNAVAILABLE.") { c, v in
            if case .integer(let n) = v { c.relay.isolation.maxContainers = n }
        },
        Setting("isolation.max_concurrent_starts", flag: "isolation-max-starts", .integer(1...10_000),
                default: "\(i.maxConcurrentStarts)", reload: .restart,
                "Container starts in flight at once (a reconnect storm waits in the start queue).") { c, v in
            if case .integer(let n) = v { c.relay.isolation.maxConcurrentStarts = n }
        },
        Setting("isolation.start_queue", flag: "isolation-start-queue", .integer(0...1_000_000), default: "\(i.startQueue)",
                reload: .restart, "Container starts waiting for a slot; beyond, 503 ISOLATION_UNAVAILABLE (queue_full).") { c, v in
            if case .integer(let n) = v { c.relay.isolation.startQueue = n }
        },
        Setting("isolation.start_timeout", flag: "isolation-start-timeout", .seconds(1...600, minExclusive: false),
                default: seconds(i.startTimeoutMilliseconds), reload: .restart,
                "Seconds for create, start and the worker's socket to answer.") { c, v in
            if case .number(let s) = v { c.relay.isolation.startTimeoutMilliseconds = milliseconds(s) }
        },
        Setting("isolation.retry_initial", flag: "isolation-retry-initial", .seconds(0...3600, minExclusive: true),
                default: seconds(i.retryInitialMilliseconds), reload: .restart,
                "After a failed start, seconds of 503s before the next attempt; doubles per consecutive failure.") { c, v in
            if case .number(let s) = v { c.relay.isolation.retryInitialMilliseconds = milliseconds(s) }
        },
        Setting("isolation.retry_max", flag: "isolation-retry-max", .seconds(0...86_400, minExclusive: true),
                default: seconds(i.retryMaxMilliseconds), reload: .restart, "Longest wait between start attempts.") { c, v in
            if case .number(let s) = v { c.relay.isolation.retryMaxMilliseconds = milliseconds(s) }
        },
        Setting("isolation.worker_log_level", flag: "isolation-worker-log-level", .choice(Logger.Level.allCases.map(\.rawValue)),
                default: i.workerLogLevel, reload: .restart, "Log level of the session workers (their stderr: docker logs).") { c, v in
            if case .string(let s) = v { c.relay.isolation.workerLogLevel = s }
        },
        Setting("isolation.engine_timeout", flag: "isolation-engine-timeout", .seconds(1...600, minExclusive: false),
                default: "\(i.engineTimeoutSeconds)", reload: .restart, "Seconds each Docker Engine API call may take.") { c, v in
            if case .number(let s) = v { c.relay.isolation.engineTimeoutSeconds = Int(s.rounded(.up)) }
        },
    ]

    static func milliseconds(_ seconds: Double) -> UInt64 { UInt64((seconds * 1000).rounded()) }
    static func seconds(_ milliseconds: UInt64) -> String { format(Double(milliseconds) / 1000) }
}

// swift-tools-version:6.0
import PackageDescription

// The io_uring core (TetherIO) and everything above it are Linux-only; the sans-I/O codecs
// (TetherHTTP, TetherWebSocket) are portable and have no dependencies.
let package = Package(
    name: "tether",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tether-relay", targets: ["tether-relay"]),
        .executable(name: "tether-loadtest", targets: ["tether-loadtest"]),
        .executable(name: "tether-bridge", targets: ["tether-bridge"]),
        .library(name: "TetherHTTP", targets: ["TetherHTTP"]),
        .library(name: "TetherWebSocket", targets: ["TetherWebSocket"]),
        .library(name: "TetherIO", targets: ["TetherIO"]),
        .library(name: "TetherTunnel", targets: ["TetherTunnel"]),
        .library(name: "TetherAuth", targets: ["TetherAuth"]),
        .library(name: "TetherQuota", targets: ["TetherQuota"]),
        .library(name: "TetherMetrics", targets: ["TetherMetrics"]),
        .library(name: "TetherIsolation", targets: ["TetherIsolation"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.0.0"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.7.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // System libraries (Debian: liburing-dev, libssl-dev, libjemalloc-dev).
        .systemLibrary(name: "CURing", path: "Sources/CURing", pkgConfig: "liburing",
                       providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CJemalloc", path: "Sources/CJemalloc",
                       providers: [.apt(["libjemalloc-dev"])]),

        // Sans-I/O codecs: bytes in, events out. No I/O, no dependencies.
        .target(name: "TetherHTTP"),
        .target(name: "TetherWebSocket", dependencies: ["TetherHTTP"]),
        // The tunnel protocol (docs/PROTOCOL.md): frame codec and stream multiplexer with
        // flow control. Shared by relay, bridge and load driver.
        .target(name: "TetherTunnel", dependencies: ["TetherHTTP"]),

        // Identity: JWT verification (jwt-kit), token extraction, session naming, JWKS fetching
        // (blocking, for a background thread: our TLS engine and HTTP decoder, no client stack).
        .target(name: "TetherAuth", dependencies: [
            "TetherHTTP", "TetherTLS",
            .product(name: "JWTKit", package: "jwt-kit"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),

        // Quotas: token buckets, per-tier limits (JSON), per-address handshake limits.
        // Pure Swift, no I/O on the data path, no dependencies.
        .target(name: "TetherQuota"),

        // Prometheus text exposition and lock-free per-worker histograms. Pure Swift.
        .target(name: "TetherMetrics"),

        // TLS engine over OpenSSL memory BIOs (sans-I/O as well: ciphertext in/out).
        .target(name: "TetherTLS", dependencies: ["COpenSSL"]),

        // io_uring I/O core: rings, provided buffers, sockets, timers, TLS streams.
        .target(name: "TetherIO", dependencies: ["CURing", "TetherTLS"]),

        // The Docker isolation mode's wire formats and engine client: the relay ↔ session-worker
        // preamble and control messages (sans-I/O) and a blocking Docker Engine API client.
        .target(name: "TetherIsolation", dependencies: ["TetherHTTP", "TetherTunnel", "TetherQuota", "TetherIO", "TetherMetrics"]),

        // The relay: HTTP routing, WebSocket endpoints, sessions, quotas and tunnels.
        .target(name: "TetherRelay", dependencies: [
            "TetherIO", "TetherHTTP", "TetherWebSocket", "TetherTLS", "TetherTunnel", "TetherAuth", "TetherQuota",
            "TetherMetrics", "TetherIsolation",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The relay's settings: one registry of every key (file, environment, flag), the YAML
        // loader, validation, --help and docs/CONFIGURATION.md are all derived from it.
        .target(name: "TetherConfig", dependencies: [
            "TetherRelay", "TetherAuth", "TetherQuota", "TetherTLS", "TetherIsolation",
            .product(name: "Yams", package: "Yams"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "tether-relay", dependencies: [
            "TetherConfig", "TetherRelay", "TetherQuota", "TetherAuth", "TetherIO", "CJemalloc",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The desktop side: portable (Linux and macOS), so SwiftNIO rather than io_uring.
        .executableTarget(name: "tether-bridge", dependencies: [
            "TetherTunnel", "TetherWebSocket", "TetherHTTP",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "tether-loadtest", dependencies: [
            "TetherIO", "TetherHTTP", "TetherWebSocket", "TetherTLS", "TetherTunnel", "TetherAuth",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Histogram", package: "hdrhistogram-swift"),
        ], path: "loadtest/Sources/tether-loadtest"),

        .testTarget(name: "TetherHTTPTests", dependencies: ["TetherHTTP"]),
        .testTarget(name: "TetherWebSocketTests", dependencies: ["TetherWebSocket", "TetherHTTP"]),
        .testTarget(name: "TetherTLSTests", dependencies: ["TetherTLS"]),
        .testTarget(name: "TetherIOTests", dependencies: ["TetherIO", "TetherTLS"]),
        .testTarget(name: "TetherTunnelTests", dependencies: ["TetherTunnel", "TetherHTTP"]),
        .testTarget(name: "TetherAuthTests", dependencies: [
            "TetherAuth", "TetherHTTP", "TetherTLS",
            .product(name: "JWTKit", package: "jwt-kit"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "CryptoExtras", package: "swift-crypto"),
        ]),
        .testTarget(name: "TetherQuotaTests", dependencies: ["TetherQuota"]),
        .testTarget(name: "TetherMetricsTests", dependencies: ["TetherMetrics"]),
        .testTarget(name: "TetherIsolationTests", dependencies: [
            "TetherIsolation", "TetherTunnel", "TetherQuota", "TetherHTTP", "TetherIO",
        ]),
        .testTarget(name: "TetherConfigTests", dependencies: [
            "TetherConfig", "TetherRelay", "TetherQuota",
            .product(name: "Logging", package: "swift-log"),
        ]),
    ]
)

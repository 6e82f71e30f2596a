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
        .library(name: "TetherHTTP", targets: ["TetherHTTP"]),
        .library(name: "TetherWebSocket", targets: ["TetherWebSocket"]),
        .library(name: "TetherIO", targets: ["TetherIO"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
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

        // TLS engine over OpenSSL memory BIOs (sans-I/O as well: ciphertext in/out).
        .target(name: "TetherTLS", dependencies: ["COpenSSL"]),

        // io_uring I/O core: rings, provided buffers, sockets, timers, TLS streams.
        .target(name: "TetherIO", dependencies: ["CURing", "TetherTLS"]),

        // The relay: HTTP routing, WebSocket endpoints, (later) sessions and tunnels.
        .target(name: "TetherRelay", dependencies: [
            "TetherIO", "TetherHTTP", "TetherWebSocket", "TetherTLS",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "tether-relay", dependencies: [
            "TetherRelay", "CJemalloc",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "tether-loadtest", dependencies: [
            "TetherIO", "TetherHTTP", "TetherWebSocket", "TetherTLS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "loadtest/Sources/tether-loadtest"),

        .testTarget(name: "TetherHTTPTests", dependencies: ["TetherHTTP"]),
        .testTarget(name: "TetherWebSocketTests", dependencies: ["TetherWebSocket", "TetherHTTP"]),
        .testTarget(name: "TetherTLSTests", dependencies: ["TetherTLS"]),
        .testTarget(name: "TetherIOTests", dependencies: ["TetherIO", "TetherTLS"]),
    ]
)

// swift-tools-version:6.1
import PackageDescription

// Benchmarks for Tether, kept out of the root package so that swift-nio and package-benchmark
// are never dependencies of the relay itself. Build with:
//   swift build -c release --scratch-path .build
// Micro-benchmarks (package-benchmark, sources in Benchmarks/<target>/), all of them:
//   swift package --disable-sandbox benchmark
// or one target: add `--target HTTPBenchmarks`. See README.md.
let package = Package(
    name: "tether-benchmarks",
    dependencies: [
        .package(name: "tether", path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        // Already in the graph through TetherAuth; named here so AuthBenchmarks can sign its
        // tokens with swift-crypto directly (independently of jwt-kit, which verifies them).
        .package(url: "https://github.com/apple/swift-crypto", from: "4.0.0"),
        // Only the malloc interposer trait: the default set also enables RuntimeInterposer, whose
        // package (swift-runtime-interposer) is not among the packages this project builds with.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1",
                 traits: ["MallocInterposer"]),
    ],
    targets: [
        // Echo server on Tether's io_uring core (TetherIO).
        .executableTarget(
            name: "echo-server-tether",
            dependencies: [.product(name: "TetherIO", package: "tether")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // The idiomatic SwiftNIO echo server (NIOEchoServer), as the comparison baseline.
        .executableTarget(
            name: "echo-server-nio",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // Quota checks and session lookup on the request path (docs/ARCHITECTURE.md, TetherQuota).
        .executableTarget(
            name: "QuotaBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TetherQuota", package: "tether"),
                .product(name: "TetherAuth", package: "tether"),
            ],
            path: "Benchmarks/QuotaBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // HTTP/1.1 request and response head decoding, head encoding (TetherHTTP).
        .executableTarget(
            name: "HTTPBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TetherHTTP", package: "tether"),
            ],
            path: "Benchmarks/HTTPBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // WebSocket frame decode/encode with and without masking, UTF-8 validation (TetherWebSocket).
        .executableTarget(
            name: "WebSocketBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TetherWebSocket", package: "tether"),
            ],
            path: "Benchmarks/WebSocketBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Tunnel frame codec and stream multiplexer bookkeeping (TetherTunnel).
        .executableTarget(
            name: "TunnelBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TetherTunnel", package: "tether"),
                .product(name: "TetherHTTP", package: "tether"),
            ],
            path: "Benchmarks/TunnelBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // JWT verification cold and cached, token extraction (TetherAuth).
        .executableTarget(
            name: "AuthBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TetherAuth", package: "tether"),
                .product(name: "TetherHTTP", package: "tether"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            path: "Benchmarks/AuthBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Metrics: a histogram observation on the data path, merging the workers' histograms,
        // and rendering a scrape of the relay's size (TetherMetrics).
        .executableTarget(
            name: "MetricsBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "TetherMetrics", package: "tether"),
            ],
            path: "Benchmarks/MetricsBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)

// swift-tools-version:6.1
import PackageDescription

// Benchmarks for Tether, kept out of the root package so that swift-nio and package-benchmark
// are never dependencies of the relay itself. Build with:
//   swift build -c release --scratch-path .build
// Micro-benchmarks (package-benchmark, sources in Benchmarks/<target>/):
//   swift package --disable-sandbox benchmark --target QuotaBenchmarks
let package = Package(
    name: "tether-benchmarks",
    dependencies: [
        .package(name: "tether", path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
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
    ]
)

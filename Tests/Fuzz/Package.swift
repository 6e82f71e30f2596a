// swift-tools-version:6.0
import PackageDescription

// libFuzzer harnesses for the sans-I/O codecs. Build and run with Tests/Fuzz/run.sh
// (needs -sanitize=fuzzer, so it lives outside the main package).
let package = Package(
    name: "tether-fuzz",
    dependencies: [.package(name: "tether", path: "../..")],
    targets: [
        .executableTarget(name: "fuzz-http-request", dependencies: [.product(name: "TetherHTTP", package: "tether")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "fuzz-http-response", dependencies: [.product(name: "TetherHTTP", package: "tether")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "fuzz-websocket", dependencies: [.product(name: "TetherWebSocket", package: "tether")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "fuzz-isolation", dependencies: [.product(name: "TetherIsolation", package: "tether"),
                                                               .product(name: "TetherTunnel", package: "tether"),
                                                               .product(name: "TetherWebSocket", package: "tether")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "fuzz-tunnel", dependencies: [.product(name: "TetherTunnel", package: "tether"),
                                                            .product(name: "TetherHTTP", package: "tether")],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
    ]
)

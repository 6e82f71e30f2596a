// swift-tools-version:6.0
import PackageDescription

// Benchmarks for Tether, kept out of the root package so that swift-nio is never a dependency
// of the relay itself. Build with:
//   swift build -c release --scratch-path .build
let package = Package(
    name: "tether-benchmarks",
    dependencies: [
        .package(name: "tether", path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
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
    ]
)

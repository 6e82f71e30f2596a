import ArgumentParser
import Glibc
import TetherIO

struct LoadTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether-loadtest",
        abstract: "Load driver for Tether: plays many bridges (with an embedded fake local service) and many web clients against a relay on loopback.",
        discussion: "See loadtest/README.md for the scenarios, the relay settings a load test needs, and the output.",
        subcommands: [Idle.self, Connect.self, RPS.self, Stream.self, Bulk.self, Churn.self, Echo.self]
    )
}

struct Echo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Closed-loop TCP echo: each connection sends a message and waits for it to come back.")
    @Option(help: "Server address (loopback only), HOST:PORT.") var target: String
    @Option(help: "Concurrent connections.") var connections = 1000
    @Option(help: "Message size in bytes.") var messageSize = 64
    @Option(help: "Measured seconds.") var duration = 10.0
    @Option(help: "Seconds before measuring.") var warmup = 2.0
    @Option(help: "Driver worker threads.") var workers = 1
    @Option(help: "Server process id: its CPU time over the measured window is reported.") var serverPid: Int32?
    @Option(help: "Open loop: total messages per second, paced every 10 ms (default: closed loop, as fast as echoes return).") var rate: Int?
    @Option(help: "Write the results as JSON to this file.") var json: String?

    func validate() throws {
        if let rate, rate <= 0 { throw ValidationError("--rate must be positive") }
    }

    func run() throws {
        raiseFileLimit()
        try EchoScenario.run(.init(target: try parseLoopbackTarget(target), connections: connections,
                                   messageSize: messageSize, duration: duration, warmup: warmup,
                                   workers: max(1, workers), serverPID: serverPid, rate: rate, json: json))
    }
}

// A scenario's own errors are in its counts; this is for "could not run at all".
do {
    var command = try LoadTest.parseAsRoot()
    try command.run()
} catch let error as LoadTestError {
    log("tether-loadtest: error: \(error)")
    exit(1)
} catch {
    LoadTest.exit(withError: error)
}

import ArgumentParser
import Glibc
import TetherIO

struct LoadTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether-loadtest",
        abstract: "Load driver for Tether: plays bridges and web clients against a relay on loopback.",
        subcommands: [Echo.self, Idle.self]
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

struct Idle: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open N WebSocket connections, hold them, report the relay's memory per connection.")
    @Option(help: "Relay address (loopback only), HOST:PORT.") var target: String
    @Option(help: "WebSocket path.") var path = "/ws/echo"
    @Option(help: "Connections to open.") var connections = 1000
    @Option(help: "Seconds to hold them once established.") var hold = 5.0
    @Option(help: "Driver worker threads.") var workers = 1
    @Option(help: "Handshakes in progress at once, per worker.") var concurrency = 256
    @Option(help: "Local source addresses 127.0.0.2... to spread over (each adds ~28k ports).") var sources = 1
    @Option(help: "Relay process id, to read its RSS.") var relayPid: Int32?
    @Flag(help: "Connect with TLS (needs --ca).") var tls = false
    @Option(help: "CA certificate file to verify the relay (TLS).") var ca: String?
    @Option(help: "Write the results as JSON to this file.") var json: String?

    func validate() throws {
        if tls && ca == nil { throw ValidationError("--tls needs --ca") }
    }

    func run() throws {
        raiseFileLimit()
        try IdleScenario.run(.init(target: try parseLoopbackTarget(target), connections: connections, path: path,
                                   hold: hold, workers: max(1, workers), concurrency: max(1, concurrency),
                                   sources: max(1, sources), relayPID: relayPid, tlsCA: tls ? ca : nil, json: json))
    }
}

LoadTest.main()

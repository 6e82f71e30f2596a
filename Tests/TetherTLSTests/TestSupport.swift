import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import TetherTLS

// MARK: - Throwaway PKI made with the openssl CLI

struct FixtureError: Error, CustomStringConvertible {
    var description: String
}

/// Certificates and keys generated once per test process into a temp dir removed at exit.
struct Fixtures: Sendable {
    let dir: String
    var caCert: String { dir + "/ca.pem" }
    var otherCACert: String { dir + "/other-ca.pem" }
    /// EC P-256 leaf for CN=localhost (SAN DNS:localhost, IP:127.0.0.1) + CA, leaf first.
    var serverChain: String { dir + "/server-chain.pem" }
    var serverKey: String { dir + "/server.key" }
    /// RSA-2048 leaf for CN=reloaded.localhost (SAN DNS:localhost), same CA.
    var reloadChain: String { dir + "/reload-chain.pem" }
    var reloadKey: String { dir + "/reload.key" }
    var garbledKey: String { dir + "/garbled.key" }
    var otherKey: String { dir + "/other.key" }

    static let shared: Result<Fixtures, any Error> = Result { try Fixtures.make() }

    static func get() throws -> Fixtures { try shared.get() }

    private static func make() throws -> Fixtures {
        let dir = fixtureDirectory()
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: Fixtures.fixtureDirectory()) }
        let f = Fixtures(dir: dir)
        let ecKey = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]
        try write("""
            [req]
            distinguished_name = dn
            prompt = no
            [dn]
            CN = Tether Test CA
            [v3_ca]
            basicConstraints = critical,CA:TRUE
            keyUsage = critical,keyCertSign,cRLSign
            subjectKeyIdentifier = hash
            """, to: dir + "/ca.cnf")
        for name in ["ca", "other-ca"] {
            try openssl(ecKey + ["\(name).key"], in: dir)
            try openssl(["req", "-x509", "-new", "-key", "\(name).key", "-config", "ca.cnf", "-extensions", "v3_ca",
                         "-days", "2", "-sha256", "-out", "\(name).pem"], in: dir)
        }
        try write("""
            subjectAltName = DNS:localhost, IP:127.0.0.1
            basicConstraints = CA:FALSE
            keyUsage = critical,digitalSignature,keyEncipherment
            extendedKeyUsage = serverAuth
            """, to: dir + "/leaf.ext")
        try openssl(ecKey + ["server.key"], in: dir)
        try openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "reload.key"], in: dir)
        try openssl(ecKey + ["other.key"], in: dir)
        for (name, subject) in [("server", "/CN=localhost/O=Tether"), ("reload", "/CN=reloaded.localhost/O=Tether")] {
            try openssl(["req", "-new", "-key", "\(name).key", "-subj", subject, "-out", "\(name).csr"], in: dir)
            try openssl(["x509", "-req", "-in", "\(name).csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                         "-days", "2", "-sha256", "-extfile", "leaf.ext", "-out", "\(name).pem"], in: dir)
            let leaf = try String(contentsOfFile: "\(dir)/\(name).pem", encoding: .utf8)
            let ca = try String(contentsOfFile: "\(dir)/ca.pem", encoding: .utf8)
            try write(leaf + ca, to: "\(dir)/\(name)-chain.pem")
        }
        try write("-----BEGIN PRIVATE KEY-----\nthis is not base64 !!!\n-----END PRIVATE KEY-----\n", to: f.garbledKey)
        return f
    }

    private static func fixtureDirectory() -> String {
        NSTemporaryDirectory() + "tether-tls-tests-\(getpid())"
    }

    private static func write(_ text: String, to path: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    private static func openssl(_ arguments: [String], in dir: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw FixtureError(description: "openssl \(arguments.joined(separator: " ")) failed: \(stderr)")
        }
    }
}

// MARK: - In-memory peers

/// One end of an in-memory connection: collects plaintext and the last non-data read result.
final class Peer {
    let tls: TLSConnection
    var received: [UInt8] = []
    var state: TLSReadResult = .wantMoreCiphertext
    /// Feed incoming ciphertext in pieces of at most this many bytes.
    var feedChunk = Int.max
    /// Use the zero-copy `withCiphertext` API instead of `feedCiphertext`.
    var borrowed = false
    private var scratch = [UInt8](repeating: 0, count: 5_000)  // odd size on purpose

    init(_ tls: TLSConnection) {
        self.tls = tls
    }

    var failure: String? {
        if case .failed(let message) = state { return message }
        return nil
    }

    func receive(_ ciphertext: [UInt8]) {
        var offset = 0
        repeat {
            let end = min(ciphertext.count, offset + max(1, min(feedChunk, ciphertext.count - offset)))
            ciphertext[offset..<end].withUnsafeBytes { piece in
                if borrowed {
                    tls.withCiphertext(piece) { drain() }
                } else {
                    tls.feedCiphertext(piece)
                    drain()
                }
            }
            offset = end
        } while offset < ciphertext.count
    }

    func drain() {
        while true {
            let result = scratch.withUnsafeMutableBytes { tls.readPlaintext(into: $0) }
            guard case .bytes(let n) = result, n > 0 else {
                state = result
                return
            }
            received.append(contentsOf: scratch[0..<n])
        }
    }

    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { tls.writePlaintext($0) }
    }

    @discardableResult
    func write(_ text: String) -> Bool {
        write(Array(text.utf8))
    }
}

/// Moves ciphertext both ways until neither side has anything more to send.
@discardableResult
func pump(_ a: Peer, _ b: Peer, maxRounds: Int = 100_000, file: StaticString = #filePath, line: UInt = #line) -> Int {
    for round in 0..<maxRounds {
        var moved = false
        if a.tls.hasOutboundCiphertext {
            b.receive(a.tls.takeOutboundCiphertext())
            moved = true
        }
        if b.tls.hasOutboundCiphertext {
            a.receive(b.tls.takeOutboundCiphertext())
            moved = true
        }
        if !moved { return round }
    }
    XCTFail("pump did not settle", file: file, line: line)
    return maxRounds
}

func makeServerContext(_ f: Fixtures, min: TLSVersion = .tls12, max: TLSVersion = .tls13,
                       alpn: [String] = ["http/1.1"], tickets: Bool = true) throws -> TLSContext {
    var config = TLSConfiguration.server(certificateChainFile: f.serverChain, privateKeyFile: f.serverKey)
    config.minimumVersion = min
    config.maximumVersion = max
    config.alpn = alpn
    config.sessionTickets = tickets
    return try TLSContext(configuration: config)
}

func makeClientContext(_ f: Fixtures, roots: String? = nil, verify: Bool = true, min: TLSVersion = .tls12,
                       max: TLSVersion = .tls13, alpn: [String] = ["http/1.1"]) throws -> TLSContext {
    var config = TLSConfiguration.client(trustRootsFile: roots ?? f.caCert, verifyPeer: verify)
    config.minimumVersion = min
    config.maximumVersion = max
    config.alpn = alpn
    return try TLSContext(configuration: config)
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed | 1
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        out[i] = UInt8(truncatingIfNeeded: state >> 24)
    }
    return out
}

// MARK: - Loopback sockets (blocking, with timeouts)

enum Loopback {
    static func makeAddress(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    static func socketFD() -> Int32 {
        socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    }

    static func setTimeout(_ fd: Int32, milliseconds: Int) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func boundPort(_ fd: Int32) -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// A listening socket on 127.0.0.1 with a kernel-chosen port.
    static func listen() throws -> (fd: Int32, port: UInt16) {
        let fd = socketFD()
        guard fd >= 0 else { throw FixtureError(description: "socket: \(errno)") }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = makeAddress(port: 0)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, Glibc.listen(fd, 8) == 0 else {
            close(fd)
            throw FixtureError(description: "bind/listen: \(errno)")
        }
        return (fd, boundPort(fd))
    }

    /// A free port number (bound then released; a tiny race is acceptable in tests).
    static func freePort() throws -> UInt16 {
        let (fd, port) = try listen()
        close(fd)
        return port
    }

    static func accept(_ listener: Int32, timeoutMilliseconds: Int32) -> Int32? {
        var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeoutMilliseconds) == 1 else { return nil }
        let fd = Glibc.accept(listener, nil, nil)
        return fd >= 0 ? fd : nil
    }

    /// Connects, retrying while the server is still starting.
    static func connect(port: UInt16, deadline: Date) -> Int32? {
        while Date() < deadline {
            let fd = socketFD()
            var address = makeAddress(port: port)
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if rc == 0 { return fd }
            close(fd)
            usleep(50_000)
        }
        return nil
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    enum Received {
        case bytes([UInt8])
        case eof
        case timeout
        case error(Int32)
    }

    static func receive(_ fd: Int32, max: Int = 16_384) -> Received {
        var buffer = [UInt8](repeating: 0, count: max)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { return .bytes(Array(buffer[0..<n])) }
        if n == 0 { return .eof }
        let e = errno
        return e == EAGAIN || e == EWOULDBLOCK || e == EINTR ? .timeout : .error(e)
    }
}

// MARK: - Child processes

/// Runs `openssl` with the given arguments; output is captured for later inspection.
final class OpenSSLProcess {
    let process = Process()
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()

    init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
    }

    func writeStdin(_ text: String) {
        stdin.fileHandleForWriting.write(Data(text.utf8))
    }

    func closeStdin() {
        try? stdin.fileHandleForWriting.close()
    }

    /// Waits up to `seconds` for exit, then kills. Returns (stdout, stderr).
    @discardableResult
    func finish(within seconds: Double) -> (out: String, err: String) {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
        }
        process.waitUntilExit()
        closeStdin()
        let out = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let err = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (out, err)
    }
}

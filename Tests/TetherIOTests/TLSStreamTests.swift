import Foundation
import Glibc
import TetherIO
import TetherTLS
import XCTest

/// Throwaway CA and two server certificates (A, B) made with the openssl CLI at test time.
struct TestPKI {
    let dir: String
    var ca: String { dir + "/ca.pem" }
    func cert(_ name: String) -> String { dir + "/\(name).pem" }
    func key(_ name: String) -> String { dir + "/\(name).key" }

    static func make() throws -> TestPKI {
        let dir = NSTemporaryDirectory() + "tether-io-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        func openssl(_ args: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            p.arguments = args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw NSError(domain: "openssl \(args)", code: Int(p.terminationStatus)) }
        }
        try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                     "-subj", "/CN=Tether Test CA", "-keyout", dir + "/ca.key", "-out", dir + "/ca.pem"])
        for name in ["A", "B"] {
            try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                         "-subj", "/CN=server-\(name)", "-keyout", dir + "/\(name).key", "-out", dir + "/\(name).csr"])
            try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(toFile: dir + "/ext.cnf", atomically: true, encoding: .utf8)
            try openssl(["x509", "-req", "-in", dir + "/\(name).csr", "-CA", dir + "/ca.pem", "-CAkey", dir + "/ca.key",
                         "-CAcreateserial", "-days", "2", "-extfile", dir + "/ext.cnf", "-out", dir + "/\(name).pem"])
        }
        return TestPKI(dir: dir)
    }

    func remove() { try? FileManager.default.removeItem(atPath: dir) }
}

/// Client that records the server certificate it saw, then echoes a payload through TLS.
final class TLSPayloadClient: ConnectionHandler {
    let payload: [UInt8]
    var received: [UInt8] = []
    let result: Box<(subject: String?, ok: Bool?, alpn: String?)>
    var keepOpen: Bool
    var connectionRef: Connection?

    init(payload: [UInt8], keepOpen: Bool, result: Box<(subject: String?, ok: Bool?, alpn: String?)>) {
        self.payload = payload
        self.keepOpen = keepOpen
        self.result = result
    }

    func connectionDidOpen(_ connection: Connection) {
        connectionRef = connection
        connection.write(payload)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        received.append(contentsOf: bytes)
        if received.count >= payload.count {
            let subject = connection.tlsConnection?.peerCertificateSubject
            let alpn = connection.tlsConnection?.negotiatedALPN
            let ok = received == payload
            result.with { $0 = (subject, ok, alpn) }
            received = []
            if !keepOpen { connection.close() }
        }
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        connectionRef = nil
        if let error { result.with { if $0.ok == nil { $0.ok = false; $0.subject = "\(error)" } } }
    }
}

final class TLSStreamTests: XCTestCase {
    func testTLSEchoAndCertificateSwapKeepsOldConnections() throws {
        let pki = try TestPKI.make()
        defer { pki.remove() }
        let box = TLSContextBox(try TLSContext(configuration: .server(certificateChainFile: pki.cert("A"), privateKeyFile: pki.key("A"))))
        let server = try TestServer.start(workers: 2, tls: box) { EchoHandler() }
        defer { server.group.shutdown() }
        let client = try TLSContext(configuration: .client(trustRootsFile: pki.ca))
        let clients = try EventLoopGroup(configuration: { var c = IOConfiguration(); c.workers = 1; return c }())
        try clients.start { _ in }
        defer { clients.shutdown() }

        // An old connection on certificate A, kept open.
        var rng = SplitMix64(state: 3)
        let big = rng.bytes(1 << 20)
        let old = Box<(subject: String?, ok: Bool?, alpn: String?)>((nil, nil, nil))
        let oldHandler = LoopLocalRef<TLSPayloadClient?>(nil)
        let address = server.address
        clients.handles[0].execute { loop in
            let h = TLSPayloadClient(payload: big, keepOpen: true, result: old)
            oldHandler.value = h
            loop.connect(to: address, tls: client, serverName: "localhost", handler: h)
        }
        XCTAssertTrue(waitUntil { old.get.ok != nil })
        XCTAssertEqual(old.get.ok, true)
        XCTAssertEqual(old.get.alpn, "http/1.1")
        XCTAssertTrue(old.get.subject?.contains("server-A") ?? false, "\(old.get.subject ?? "nil")")

        // Reload: new connections see certificate B.
        box.current = try TLSContext(configuration: .server(certificateChainFile: pki.cert("B"), privateKeyFile: pki.key("B")))
        let fresh = Box<(subject: String?, ok: Bool?, alpn: String?)>((nil, nil, nil))
        let small = rng.bytes(3000)
        clients.handles[0].execute { loop in
            loop.connect(to: address, tls: client, serverName: "localhost",
                         handler: TLSPayloadClient(payload: small, keepOpen: false, result: fresh))
        }
        XCTAssertTrue(waitUntil { fresh.get.ok != nil })
        XCTAssertEqual(fresh.get.ok, true)
        XCTAssertTrue(fresh.get.subject?.contains("server-B") ?? false, "\(fresh.get.subject ?? "nil")")

        // The old connection, still on A's context, keeps working after the swap.
        old.with { $0 = (nil, nil, nil) }
        clients.handles[0].execute { _ in oldHandler.value?.resend() }
        XCTAssertTrue(waitUntil { old.get.ok != nil })
        XCTAssertEqual(old.get.ok, true)
        XCTAssertTrue(old.get.subject?.contains("server-A") ?? false)
    }

    func testUntrustedServerCertificateFailsHandshake() throws {
        let pki = try TestPKI.make()
        defer { pki.remove() }
        let other = try TestPKI.make()
        defer { other.remove() }
        let box = TLSContextBox(try TLSContext(configuration: .server(certificateChainFile: pki.cert("A"), privateKeyFile: pki.key("A"))))
        let server = try TestServer.start(workers: 1, tls: box) { EchoHandler() }
        defer { server.group.shutdown() }
        let wrongCA = try TLSContext(configuration: .client(trustRootsFile: other.ca))
        let clients = try EventLoopGroup(configuration: { var c = IOConfiguration(); c.workers = 1; return c }())
        try clients.start { _ in }
        defer { clients.shutdown() }
        let result = Box<(subject: String?, ok: Bool?, alpn: String?)>((nil, nil, nil))
        let address = server.address
        clients.handles[0].execute { loop in
            loop.connect(to: address, tls: wrongCA, serverName: "localhost",
                         handler: TLSPayloadClient(payload: [1, 2, 3], keepOpen: false, result: result))
        }
        XCTAssertTrue(waitUntil { result.get.ok != nil })
        XCTAssertEqual(result.get.ok, false, "a certificate from an untrusted CA must be refused")
    }
}

/// Loop-confined reference passed through Sendable job closures.
final class LoopLocalRef<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

extension TLSPayloadClient {
    /// Sends the payload again on the same (still open) connection.
    func resend() { connectionRef?.write(payload) }
}

/// Sends `prefix + data`, expects `data` back (the server consumes the prefix line).
final class PrefixedTLSClient: ConnectionHandler {
    let prefix: [UInt8]
    let data: [UInt8]
    var received: [UInt8] = []
    let result: Box<Bool?>
    init(prefix: [UInt8], data: [UInt8], result: Box<Bool?>) {
        self.prefix = prefix
        self.data = data
        self.result = result
    }
    func connectionDidOpen(_ connection: Connection) { connection.write(prefix + data) }
    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        received.append(contentsOf: bytes)
        if received.count >= data.count {
            let ok = received == data
            result.with { $0 = ok }
            connection.close()
        }
    }
    func connectionDidClose(_ connection: Connection, error: IOError?) {
        result.with { if $0 == nil { $0 = false } }
    }
}

extension TLSStreamTests {
    /// A TLS connection moves to another worker with the plaintext its first handler left
    /// unread and the ciphertext that arrived meanwhile, in order.
    func testTLSHandOffCarriesUnreadPlaintextAndHeldCiphertext() throws {
        let pki = try TestPKI.make()
        defer { pki.remove() }
        let box = TLSContextBox(try TLSContext(configuration: .server(certificateChainFile: pki.cert("A"), privateKeyFile: pki.key("A"))))
        let seen = Box<[Int]>([])
        let server = try TestServer.start(workers: 2, tls: box) { handles in HandOffAcceptor(targets: handles, seen: seen) }
        let address = server.address
        defer { server.group.shutdown() }
        let client = try TLSContext(configuration: .client(trustRootsFile: pki.ca))
        let clients = try EventLoopGroup(configuration: { var c = IOConfiguration(); c.workers = 1; return c }())
        try clients.start { _ in }
        defer { clients.shutdown() }
        var rng = SplitMix64(state: 11)
        for _ in 0..<10 {
            let data = rng.bytes(300_000)
            let result = Box<Bool?>(nil)
            let target = address
            clients.handles[0].execute { loop in
                loop.connect(to: target, tls: client, serverName: "localhost",
                             handler: PrefixedTLSClient(prefix: Array("hello\n".utf8), data: data, result: result))
            }
            XCTAssertTrue(waitUntil(timeout: 30) { result.get != nil })
            XCTAssertEqual(result.get, true)
        }
        XCTAssertEqual(seen.get.filter { $0 >= 100 }.count, 10, "every connection was served after a hand-off")
    }
}

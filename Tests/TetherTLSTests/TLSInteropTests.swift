import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import TetherTLS

/// Our engine against a real, independent TLS peer (the openssl CLI) over loopback TCP.
/// Blocking sockets with timeouts; every child process is bounded and reaped.
final class TLSInteropTests: XCTestCase {
    /// Moves bytes between `tls` and socket `fd` until `done` or the deadline.
    /// Returns the last non-data read result.
    private func run(_ tls: TLSConnection, fd: Int32, seconds: Double,
                     onPlaintext: ([UInt8]) -> Void, done: () -> Bool) -> TLSReadResult {
        let deadline = Date().addingTimeInterval(seconds)
        var scratch = [UInt8](repeating: 0, count: 16_384)
        var last = TLSReadResult.wantMoreCiphertext
        func drain() {
            while true {
                let result = scratch.withUnsafeMutableBytes { tls.readPlaintext(into: $0) }
                guard case .bytes(let n) = result, n > 0 else {
                    last = result
                    return
                }
                onPlaintext(Array(scratch[0..<n]))
            }
        }
        Loopback.setTimeout(fd, milliseconds: 100)
        while Date() < deadline {
            if tls.hasOutboundCiphertext, !Loopback.sendAll(fd, tls.takeOutboundCiphertext()) {
                break
            }
            if done() { break }
            switch last {
            case .closed, .failed: return last
            default: break
            }
            switch Loopback.receive(fd) {
            case .bytes(let bytes):
                bytes.withUnsafeBytes { raw in tls.withCiphertext(raw) { drain() } }
            case .eof:
                tls.feedEOF()
                drain()
                if tls.hasOutboundCiphertext { _ = Loopback.sendAll(fd, tls.takeOutboundCiphertext()) }
                return last
            case .timeout:
                drain()
            case .error:
                return .failed("socket error")
            }
        }
        return last
    }

    private func clientAgainstSServer(version: TLSVersion, flag: String) throws {
        let f = try Fixtures.get()
        let port = try Loopback.freePort()
        let server = try OpenSSLProcess(["s_server", "-accept", "127.0.0.1:\(port)", "-cert", f.serverChain,
                                         "-key", f.serverKey, "-www", "-naccept", "1", "-alpn", "http/1.1", flag])
        defer { server.finish(within: 0) }
        let fd = try XCTUnwrap(Loopback.connect(port: port, deadline: Date().addingTimeInterval(10)), "s_server did not start")
        defer { close(fd) }

        let context = try makeClientContext(f, min: version, max: version)
        let tls = try TLSConnection(context: context, serverName: "localhost")
        tls.startHandshake()
        let request = Array("GET / HTTP/1.0\r\n\r\n".utf8)
        XCTAssertTrue(request.withUnsafeBytes { tls.writePlaintext($0) })
        var response: [UInt8] = []
        let end = run(tls, fd: fd, seconds: 15, onPlaintext: { response += $0 }, done: { false })
        let text = String(decoding: response, as: UTF8.self)
        // s_server -www just closes the socket after the page (no close_notify): EOF is expected.
        XCTAssertTrue(end == .closed || (end.failureMessage ?? "").contains("unexpected eof"), "ended with \(end)")
        XCTAssertTrue(text.hasPrefix("HTTP/1.0 200 ok"), text)
        XCTAssertTrue(text.contains(version == .tls13 ? "TLSv1.3" : "TLSv1.2"), text)
        XCTAssertTrue(tls.isHandshakeComplete)
        XCTAssertEqual(tls.negotiatedALPN, "http/1.1")
        XCTAssertEqual(tls.peerCertificateSubject, "/CN=localhost/O=Tether")
    }

    func testClientAgainstOpenSSLServerTLS13() throws {
        try clientAgainstSServer(version: .tls13, flag: "-tls1_3")
    }

    func testClientAgainstOpenSSLServerTLS12() throws {
        try clientAgainstSServer(version: .tls12, flag: "-tls1_2")
    }

    private func serverAgainstSClient(flag: String, expectVersion: String) throws {
        let f = try Fixtures.get()
        let (listener, port) = try Loopback.listen()
        defer { close(listener) }
        let client = try OpenSSLProcess(["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost",
                                         "-CAfile", f.caCert, "-verify_return_error", "-verify_hostname", "localhost",
                                         "-alpn", "http/1.1", "-brief", "-ign_eof", flag])
        var finished = false
        defer { if !finished { client.finish(within: 0) } }
        client.writeStdin("hello from s_client\n")
        client.closeStdin()

        let fd = try XCTUnwrap(Loopback.accept(listener, timeoutMilliseconds: 10_000), "s_client did not connect")
        defer { close(fd) }
        let tls = try TLSConnection(context: makeServerContext(f))
        var received: [UInt8] = []
        let greeting = "hello from s_client\n"
        let end = run(tls, fd: fd, seconds: 15, onPlaintext: { received += $0 },
                      done: { received.count >= greeting.utf8.count })
        XCTAssertEqual(end, .wantMoreCiphertext)
        XCTAssertEqual(String(decoding: received, as: UTF8.self), greeting)
        XCTAssertEqual(tls.negotiatedVersion, expectVersion)
        XCTAssertEqual(tls.negotiatedALPN, "http/1.1")

        XCTAssertTrue(Array("hello from tether\n".utf8).withUnsafeBytes { tls.writePlaintext($0) })
        tls.shutdown()
        XCTAssertTrue(Loopback.sendAll(fd, tls.takeOutboundCiphertext()))
        // s_client answers close_notify and exits; read until it closes.
        let final = run(tls, fd: fd, seconds: 10, onPlaintext: { _ in }, done: { false })
        XCTAssertTrue(final == .closed || final.failureMessage != nil, "\(final)")
        finished = true
        let (out, err) = client.finish(within: 10)
        XCTAssertTrue(out.contains("hello from tether"), "stdout: \(out)\nstderr: \(err)")
        XCTAssertTrue(err.contains("Verification: OK"), err)
        XCTAssertTrue(err.contains("Protocol version: \(expectVersion)"), err)
    }

    func testServerAgainstOpenSSLClientTLS13() throws {
        try serverAgainstSClient(flag: "-tls1_3", expectVersion: "TLSv1.3")
    }

    func testServerAgainstOpenSSLClientTLS12() throws {
        try serverAgainstSClient(flag: "-tls1_2", expectVersion: "TLSv1.2")
    }
}

extension TLSReadResult {
    var failureMessage: String? {
        if case .failed(let message) = self { return message }
        return nil
    }
}

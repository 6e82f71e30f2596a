import COpenSSL  // SSL_key_update, to act as a peer that rotates keys
import XCTest
@testable import TetherTLS

final class TLSEngineTests: XCTestCase {
    private func pair(server: TLSContext, client: TLSContext, serverName: String? = "localhost") throws -> (Peer, Peer) {
        (Peer(try TLSConnection(context: client, serverName: serverName)), Peer(try TLSConnection(context: server)))
    }

    private func handshake(_ client: Peer, _ server: Peer) {
        client.tls.startHandshake()
        pump(client, server)
    }

    private func assertHandshake(version: String, min: TLSVersion, max: TLSVersion) throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f, min: min, max: max),
                                        client: makeClientContext(f, min: min, max: max))
        handshake(client, server)
        XCTAssertNil(client.failure)
        XCTAssertNil(server.failure)
        XCTAssertTrue(client.tls.isHandshakeComplete)
        XCTAssertTrue(server.tls.isHandshakeComplete)
        XCTAssertEqual(client.tls.negotiatedVersion, version)
        XCTAssertEqual(server.tls.negotiatedVersion, version)
        XCTAssertEqual(client.tls.negotiatedALPN, "http/1.1")
        XCTAssertEqual(server.tls.negotiatedALPN, "http/1.1")
        XCTAssertEqual(client.tls.peerCertificateSubject, "/CN=localhost/O=Tether")

        client.write("GET / HTTP/1.1\r\n\r\n")
        server.write("HTTP/1.1 200 OK\r\n\r\n")
        pump(client, server)
        XCTAssertEqual(String(decoding: server.received, as: UTF8.self), "GET / HTTP/1.1\r\n\r\n")
        XCTAssertEqual(String(decoding: client.received, as: UTF8.self), "HTTP/1.1 200 OK\r\n\r\n")
        // Idle and drained: nothing buffered on our side.
        for peer in [client, server] {
            XCTAssertEqual(peer.tls.bufferedCiphertextCount, 0)
            XCTAssertFalse(peer.tls.hasOutboundCiphertext)
            XCTAssertEqual(peer.state, .wantMoreCiphertext)
        }
    }

    func testHandshakeTLS13() throws {
        try assertHandshake(version: "TLSv1.3", min: .tls13, max: .tls13)
    }

    func testHandshakeTLS12() throws {
        try assertHandshake(version: "TLSv1.2", min: .tls12, max: .tls12)
    }

    func testDefaultRangeNegotiatesTLS13() throws {
        try assertHandshake(version: "TLSv1.3", min: .tls12, max: .tls13)
    }

    func testVersionMismatchFails() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f, max: .tls12), client: makeClientContext(f, min: .tls13))
        handshake(client, server)
        XCTAssertNotNil(client.failure)
        XCTAssertNotNil(server.failure)
        XCTAssertFalse(server.tls.isHandshakeComplete)
    }

    func testMegabyteBothWaysInOddPieces() throws {
        let f = try Fixtures.get()
        for (min, max) in [(TLSVersion.tls13, TLSVersion.tls13), (.tls12, .tls12)] {
            let (client, server) = try pair(server: makeServerContext(f, min: min, max: max),
                                            client: makeClientContext(f, min: min, max: max))
            server.feedChunk = 997
            server.borrowed = true
            client.feedChunk = 4_093
            let up = pseudoRandomBytes(1 << 20, seed: 7)
            let down = pseudoRandomBytes(1 << 20, seed: 11)
            let sizes = [1, 7, 333, 4_099, 16_385, 65_537, 2, 12_345]
            // Client writes before the handshake even started: buffered, then sent.
            var offset = 0, turn = 0
            while offset < up.count {
                let n = Swift.min(sizes[turn % sizes.count], up.count - offset)
                XCTAssertTrue(client.write(Array(up[offset..<(offset + n)])))
                offset += n
                turn += 1
                if turn % 5 == 0 { pump(client, server) }
            }
            offset = 0
            while offset < down.count {
                let n = Swift.min(sizes[(turn + 3) % sizes.count], down.count - offset)
                XCTAssertTrue(server.write(Array(down[offset..<(offset + n)])))
                offset += n
                turn += 1
                if turn % 3 == 0 { pump(client, server) }
            }
            pump(client, server)
            XCTAssertNil(client.failure)
            XCTAssertNil(server.failure)
            XCTAssertTrue(server.received == up, "client->server bytes differ (\(server.received.count) bytes)")
            XCTAssertTrue(client.received == down, "server->client bytes differ (\(client.received.count) bytes)")
            XCTAssertEqual(server.tls.bufferedCiphertextCount, 0)
        }
    }

    func testByteByByteFeeding() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f))
        client.feedChunk = 1
        server.feedChunk = 1
        server.borrowed = true
        handshake(client, server)
        XCTAssertTrue(client.tls.isHandshakeComplete)
        client.write("ping")
        server.write("pong")
        pump(client, server)
        XCTAssertEqual(server.received, Array("ping".utf8))
        XCTAssertEqual(client.received, Array("pong".utf8))
    }

    func testPartialRecordStaysInSmallBufferUntilComplete() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f))
        handshake(client, server)
        client.write(pseudoRandomBytes(1_000, seed: 3))
        let record = client.tls.takeOutboundCiphertext()
        record[0..<600].withUnsafeBytes { server.tls.feedCiphertext($0) }
        server.drain()
        XCTAssertEqual(server.state, .wantMoreCiphertext)
        XCTAssertEqual(server.received.count, 0)
        XCTAssertEqual(server.tls.bufferedCiphertextCount, 600)
        record[600...].withUnsafeBytes { piece in server.tls.withCiphertext(piece) { server.drain() } }
        XCTAssertEqual(server.received, pseudoRandomBytes(1_000, seed: 3))
        XCTAssertEqual(server.tls.bufferedCiphertextCount, 0)
    }

    func testServerWritesBeforeHandshakeAreBuffered() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f))
        server.write("early from server")
        client.write("early from client")  // also starts the client handshake
        XCTAssertTrue(client.tls.hasOutboundCiphertext)
        pump(client, server)
        XCTAssertEqual(String(decoding: server.received, as: UTF8.self), "early from client")
        XCTAssertEqual(String(decoding: client.received, as: UTF8.self), "early from server")
    }

    func testKeyUpdateReplyIsProducedWhileReading() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f, min: .tls13), client: makeClientContext(f))
        handshake(client, server)
        XCTAssertEqual(SSL_key_update(client.tls.ssl, SSL_KEY_UPDATE_REQUESTED), 1)
        client.write("rotate")  // the KeyUpdate goes out ahead of this record
        server.receive(client.tls.takeOutboundCiphertext())
        XCTAssertEqual(String(decoding: server.received, as: UTF8.self), "rotate")
        XCTAssertTrue(server.tls.hasOutboundCiphertext, "the server's own KeyUpdate must be queued by the read")
        pump(client, server)
        client.write("new keys")
        server.write("both ways")
        pump(client, server)
        XCTAssertEqual(String(decoding: server.received, as: UTF8.self), "rotatenew keys")
        XCTAssertEqual(String(decoding: client.received, as: UTF8.self), "both ways")
        XCTAssertNil(server.failure)
        XCTAssertNil(client.failure)
    }

    func testFeedInsideBorrowedScopeKeepsOrder() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f))
        handshake(client, server)
        client.write("first ")
        let first = client.tls.takeOutboundCiphertext()
        client.write("second")
        let second = client.tls.takeOutboundCiphertext()
        // Lend `first`, consume nothing, then queue `second` from inside the scope.
        first.withUnsafeBytes { a in
            server.tls.withCiphertext(a) {
                second.withUnsafeBytes { server.tls.feedCiphertext($0) }
            }
        }
        XCTAssertEqual(server.tls.bufferedCiphertextCount, first.count + second.count)
        server.drain()
        XCTAssertEqual(String(decoding: server.received, as: UTF8.self), "first second")
        XCTAssertEqual(server.tls.bufferedCiphertextCount, 0)
    }

    // MARK: Verification

    func testWrongCAFails() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f, roots: f.otherCACert))
        handshake(client, server)
        let message = try XCTUnwrap(client.failure)
        XCTAssertTrue(message.contains("certificate verify failed"), message)
        // The served chain includes its (untrusted) root.
        XCTAssertTrue(message.contains("self-signed certificate in certificate chain"), message)
        XCTAssertFalse(client.tls.isHandshakeComplete)
        XCTAssertNotNil(server.failure, "server should see the client's alert")
        XCTAssertFalse(client.write("x"))
    }

    func testWrongHostnameFails() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f), serverName: "wrong.example")
        handshake(client, server)
        let message = try XCTUnwrap(client.failure)
        XCTAssertTrue(message.contains("hostname mismatch"), message)
    }

    func testIPAddressVerification() throws {
        let f = try Fixtures.get()
        let (good, goodServer) = try pair(server: makeServerContext(f), client: makeClientContext(f), serverName: "127.0.0.1")
        handshake(good, goodServer)
        XCTAssertNil(good.failure)
        XCTAssertTrue(good.tls.isHandshakeComplete)
        let (bad, badServer) = try pair(server: makeServerContext(f), client: makeClientContext(f), serverName: "127.0.0.2")
        handshake(bad, badServer)
        let message = try XCTUnwrap(bad.failure)
        XCTAssertTrue(message.contains("IP address mismatch"), message)
    }

    func testVerifyPeerOffAcceptsUnknownCA() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f),
                                        client: makeClientContext(f, roots: f.otherCACert, verify: false),
                                        serverName: "wrong.example")
        handshake(client, server)
        XCTAssertNil(client.failure)
        XCTAssertTrue(client.tls.isHandshakeComplete)
    }

    func testInvalidServerNameThrows() throws {
        let f = try Fixtures.get()
        XCTAssertThrowsError(try TLSConnection(context: makeClientContext(f), serverName: "a\u{0}b"))
        XCTAssertThrowsError(try TLSConnection(context: makeClientContext(f), serverName: ""))
    }

    func testALPNWithoutOverlapContinuesWithoutProtocol() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f, alpn: ["h2"]))
        handshake(client, server)
        XCTAssertTrue(client.tls.isHandshakeComplete)
        XCTAssertNil(client.tls.negotiatedALPN)
        XCTAssertNil(server.tls.negotiatedALPN)
    }

    func testALPNPicksServerPreference() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f, alpn: ["http/1.1", "h2"]),
                                        client: makeClientContext(f, alpn: ["h2", "http/1.1"]))
        handshake(client, server)
        XCTAssertEqual(server.tls.negotiatedALPN, "http/1.1")
        XCTAssertEqual(client.tls.negotiatedALPN, "http/1.1")
    }

    // MARK: Bad input

    func testGarbageCiphertextFailsWithoutCrashing() throws {
        let f = try Fixtures.get()
        let serverContext = try makeServerContext(f)
        let clientContext = try makeClientContext(f)
        for seed in UInt64(1)...200 {
            let garbage = pseudoRandomBytes(Int(seed * 37 % 20_000) + 5, seed: seed)
            let server = Peer(try TLSConnection(context: serverContext))
            server.receive(garbage)
            let client = Peer(try TLSConnection(context: clientContext, serverName: "localhost"))
            client.tls.startHandshake()
            _ = client.tls.takeOutboundCiphertext()
            client.receive(garbage)
            for peer in [server, client] {
                // Random bytes may happen to look like the start of a record: then we wait.
                XCTAssertTrue(peer.failure != nil || peer.state == .wantMoreCiphertext)
            }
        }
        // Plausible record header with a garbage body: a definite failure.
        let server = Peer(try TLSConnection(context: serverContext))
        server.receive([22, 3, 1, 0, 64] + pseudoRandomBytes(64, seed: 99))
        XCTAssertNotNil(server.failure)
        // Obvious non-TLS (plain HTTP on the TLS port).
        let http = Peer(try TLSConnection(context: serverContext))
        http.receive(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        XCTAssertNotNil(http.failure)
        XCTAssertTrue(http.failure?.contains("http request") ?? false, http.failure ?? "")
        XCTAssertFalse(http.write("nope"))
    }

    func testBitFlipsInHandshakeAndRecordsFail() throws {
        let f = try Fixtures.get()
        let serverContext = try makeServerContext(f)
        let clientContext = try makeClientContext(f)
        // Corrupted ClientHello bytes at many positions: never a crash.
        let probe = try TLSConnection(context: clientContext, serverName: "localhost")
        probe.startHandshake()
        let hello = probe.takeOutboundCiphertext()
        for position in stride(from: 0, to: hello.count, by: 7) {
            var corrupted = hello
            corrupted[position] ^= 0x5A
            let server = Peer(try TLSConnection(context: serverContext))
            server.receive(corrupted)
            XCTAssertTrue(server.failure != nil || server.state == .wantMoreCiphertext)
        }
        // A flipped bit in an application-data record: bad record MAC.
        let (client, server) = try pair(server: serverContext, client: clientContext)
        handshake(client, server)
        client.write("secret")
        var record = client.tls.takeOutboundCiphertext()
        record[record.count - 3] ^= 1
        server.receive(record)
        let message = try XCTUnwrap(server.failure)
        XCTAssertTrue(message.contains("bad record mac") || message.contains("decryption failed"), message)
        XCTAssertTrue(server.tls.hasOutboundCiphertext, "a fatal alert should be queued")
        XCTAssertEqual(server.tls.readPlaintextResult(), .failed(message))
    }

    func testUnexpectedEOF() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f))
        handshake(client, server)
        server.tls.feedEOF()
        server.drain()
        let message = try XCTUnwrap(server.failure)
        XCTAssertTrue(message.contains("unexpected eof"), message)
    }

    // MARK: Close

    func testCloseNotify() throws {
        let f = try Fixtures.get()
        for max in [TLSVersion.tls12, .tls13] {
            let (client, server) = try pair(server: makeServerContext(f, max: max), client: makeClientContext(f))
            handshake(client, server)
            client.write("last words")
            client.tls.shutdown()
            XCTAssertFalse(client.write("too late"))
            pump(client, server)
            XCTAssertEqual(String(decoding: server.received, as: UTF8.self), "last words")
            XCTAssertEqual(server.state, .closed)
            XCTAssertTrue(server.tls.isClosedByPeer)
            server.tls.shutdown()
            pump(client, server)
            XCTAssertEqual(client.state, .closed)
            XCTAssertEqual(server.tls.readPlaintextResult(), .closed)
        }
    }

    func testShutdownBeforeHandshakeCompletesIsDeferred() throws {
        let f = try Fixtures.get()
        let (client, server) = try pair(server: makeServerContext(f), client: makeClientContext(f))
        client.write("bye")
        client.tls.shutdown()
        pump(client, server)
        XCTAssertEqual(String(decoding: server.received, as: UTF8.self), "bye")
        XCTAssertEqual(server.state, .closed)
    }

    // MARK: Configuration errors

    func testMissingAndBadFilesThrowNamingTheFile() throws {
        let f = try Fixtures.get()
        func message(_ config: TLSConfiguration) -> String {
            do {
                _ = try TLSContext(configuration: config)
                return "no error"
            } catch {
                return error.message
            }
        }
        let missingKey = message(.server(certificateChainFile: f.serverChain, privateKeyFile: f.dir + "/nope.key"))
        XCTAssertTrue(missingKey.contains(f.dir + "/nope.key"), missingKey)
        let garbled = message(.server(certificateChainFile: f.serverChain, privateKeyFile: f.garbledKey))
        XCTAssertTrue(garbled.contains(f.garbledKey), garbled)
        let missingChain = message(.server(certificateChainFile: f.dir + "/nope.pem", privateKeyFile: f.serverKey))
        XCTAssertTrue(missingChain.contains(f.dir + "/nope.pem"), missingChain)
        XCTAssertTrue(missingChain.lowercased().contains("no such file"), missingChain)
        let keyAsChain = message(.server(certificateChainFile: f.serverKey, privateKeyFile: f.serverKey))
        XCTAssertTrue(keyAsChain.contains(f.serverKey), keyAsChain)
        let mismatch = message(.server(certificateChainFile: f.serverChain, privateKeyFile: f.otherKey))
        XCTAssertTrue(mismatch.contains(f.otherKey) && mismatch.contains("mismatch"), mismatch)
        let roots = message(.client(trustRootsFile: f.dir + "/no-roots.pem"))
        XCTAssertTrue(roots.contains(f.dir + "/no-roots.pem"), roots)
        var noKey = TLSConfiguration(role: .server)
        noKey.certificateChainFile = f.serverChain
        XCTAssertTrue(message(noKey).contains("privateKeyFile"))
        var badALPN = TLSConfiguration.client()
        badALPN.alpn = [""]
        XCTAssertTrue(message(badALPN).contains("ALPN"))
        var inverted = TLSConfiguration.client()
        inverted.minimumVersion = .tls13
        inverted.maximumVersion = .tls12
        XCTAssertNotEqual(message(inverted), "no error")
        // The error queue was drained: a good context right after works.
        XCTAssertNoThrow(try makeServerContext(f))
    }

    func testSystemDefaultRootsLoad() throws {
        XCTAssertNoThrow(try TLSContext(configuration: .client()))
    }

    // MARK: Reload

    func testContextReload() throws {
        let f = try Fixtures.get()
        let clientContext = try makeClientContext(f)
        var oldContext: TLSContext? = try makeServerContext(f)
        weak let weakOld = oldContext
        let oldClient = Peer(try TLSConnection(context: clientContext, serverName: "localhost"))
        var oldServer: Peer? = Peer(try TLSConnection(context: try XCTUnwrap(oldContext)))
        // Second connection on the old context whose handshake runs only after the reload.
        var lateServer: Peer? = Peer(try TLSConnection(context: try XCTUnwrap(oldContext)))
        handshake(oldClient, try XCTUnwrap(oldServer))

        let newContext = try TLSContext(configuration: .server(certificateChainFile: f.reloadChain, privateKeyFile: f.reloadKey))
        oldContext = nil
        XCTAssertNotNil(weakOld, "live connections keep their context")

        let newClient = Peer(try TLSConnection(context: clientContext, serverName: "localhost"))
        let newServer = Peer(try TLSConnection(context: newContext))
        handshake(newClient, newServer)
        XCTAssertEqual(newClient.tls.peerCertificateSubject, "/CN=reloaded.localhost/O=Tether")
        XCTAssertEqual(newServer.tls.negotiatedALPN, "http/1.1")

        // The old connection keeps working.
        oldClient.write("still here?")
        try XCTUnwrap(oldServer).write("yes")
        pump(oldClient, try XCTUnwrap(oldServer))
        XCTAssertEqual(String(decoding: try XCTUnwrap(oldServer).received, as: UTF8.self), "still here?")
        XCTAssertEqual(String(decoding: oldClient.received, as: UTF8.self), "yes")
        XCTAssertEqual(oldClient.tls.peerCertificateSubject, "/CN=localhost/O=Tether")

        // And a handshake on the released context (ALPN callback state included) still works.
        let lateClient = Peer(try TLSConnection(context: clientContext, serverName: "localhost"))
        handshake(lateClient, try XCTUnwrap(lateServer))
        XCTAssertEqual(lateClient.tls.peerCertificateSubject, "/CN=localhost/O=Tether")
        XCTAssertEqual(try XCTUnwrap(lateServer).tls.negotiatedALPN, "http/1.1")

        oldServer = nil
        lateServer = nil
        XCTAssertNil(weakOld, "context is freed with its last connection")
    }

    // MARK: Output API

    func testTakeOutboundIntoExistingBuffer() throws {
        let f = try Fixtures.get()
        let client = try TLSConnection(context: makeClientContext(f), serverName: "localhost")
        client.startHandshake()
        XCTAssertTrue(client.hasOutboundCiphertext)
        var buffer: [UInt8] = [1, 2, 3]
        client.takeOutboundCiphertext(into: &buffer)
        XCTAssertEqual(Array(buffer.prefix(3)), [1, 2, 3])
        XCTAssertEqual(buffer[3], 22, "a handshake record follows the existing bytes")
        XCTAssertFalse(client.hasOutboundCiphertext)
        var empty: [UInt8] = []
        client.takeOutboundCiphertext(into: &empty)
        XCTAssertTrue(empty.isEmpty)
    }

    func testServerStartHandshakeIsNoOp() throws {
        let f = try Fixtures.get()
        let server = try TLSConnection(context: makeServerContext(f))
        server.startHandshake()
        XCTAssertFalse(server.hasOutboundCiphertext)
        XCTAssertFalse(server.isHandshakeComplete)
        XCTAssertNil(server.negotiatedVersion)
        XCTAssertNil(server.peerCertificateSubject)
    }
}

extension TLSConnection {
    /// One read into a throwaway buffer (for asserting on sticky states).
    func readPlaintextResult() -> TLSReadResult {
        var scratch = [UInt8](repeating: 0, count: 64)
        return scratch.withUnsafeMutableBytes { readPlaintext(into: $0) }
    }
}

#if os(Linux)
import Foundation
import Glibc
import Testing
import TetherTLS
@testable import TetherAuth

@Suite struct JWKSURLTests {
    @Test func accepted() throws {
        let auth0 = try JWKSURL("https://tenant.eu.auth0.com/.well-known/jwks.json")
        #expect(auth0.isTLS && auth0.host == "tenant.eu.auth0.com" && auth0.port == 443)
        #expect(auth0.target == "/.well-known/jwks.json" && auth0.hostHeader == "tenant.eu.auth0.com")

        let full = try JWKSURL("HTTPS://idp.example:8443/keys?tenant=a#frag")
        #expect(full.port == 8443 && full.target == "/keys?tenant=a" && full.hostHeader == "idp.example:8443")
        #expect(try JWKSURL("https://idp.example").target == "/")
        #expect(try JWKSURL("https://idp.example?x=1").target == "/?x=1")

        let v6 = try JWKSURL("https://[2001:db8::1]:444/jwks")
        #expect(v6.host == "2001:db8::1" && v6.port == 444 && v6.hostHeader == "[2001:db8::1]:444")

        for loopback in ["http://127.0.0.1:9000/jwks", "http://localhost/jwks", "http://[::1]:80/jwks", "http://127.1.2.3/"] {
            #expect(try !JWKSURL(loopback).isTLS)
        }
    }

    @Test func refused() {
        let cases: [(String, String)] = [
            ("http://idp.example/jwks", "only allowed for loopback"),
            ("http://10.0.0.1/jwks", "only allowed for loopback"),
            ("http://[::2]/jwks", "only allowed for loopback"),
            ("ftp://127.0.0.1/jwks", "must start with https://"),
            ("idp.example/jwks", "must start with https://"),
            ("https://user:pw@idp.example/jwks", "user info"),
            ("https:///jwks", "missing or invalid host"),
            ("https://idp.example:0/", "invalid port"),
            ("https://idp.example:65536/", "invalid port"),
            ("https://idp.example:x/", "invalid port"),
            ("https://[::1/", "bad IPv6 literal"),
            ("https://idp.example/a b", "percent-encoded"),
        ]
        for (url, message) in cases {
            do {
                _ = try JWKSURL(url)
                Issue.record("accepted \(url)")
            } catch {
                #expect(error.message.contains(message), "\(url): \(error.message)")
            }
        }
    }
}

/// The blocking fetcher against servers on loopback: plaintext (http:// is allowed there) for
/// the HTTP handling, TetherTLS's server side for HTTPS and certificate checks.
@Suite(.serialized) struct JWKSFetcherTests {
    static let jwks = Array(#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"AA","y":"AA"}]}"#.utf8)

    func fetch(_ response: [UInt8], timeout: Double = 5) throws -> (body: [UInt8], request: String) {
        let server = try LoopbackServer(response: response)
        var fetcher = try JWKSFetcher(url: "http://127.0.0.1:\(server.port)/.well-known/jwks.json")
        fetcher.timeoutSeconds = timeout
        let body = try fetcher.fetch()
        return (body, server.request())
    }

    func fetchError(_ response: [UInt8], timeout: Double = 5, maxBody: Int = 1 << 20, hangUp: Bool = true) -> String {
        do {
            let server = try LoopbackServer(response: response, hangUp: hangUp)
            var fetcher = try JWKSFetcher(url: "http://localhost:\(server.port)/jwks")
            fetcher.timeoutSeconds = timeout
            fetcher.maxBodyBytes = maxBody
            _ = try fetcher.fetch()
            return "fetched"
        } catch {
            return String(describing: error)
        }
    }

    @Test func contentLength() throws {
        let (body, request) = try fetch(Array("HTTP/1.1 200 OK\r\nContent-Length: \(Self.jwks.count)\r\n\r\n".utf8) + Self.jwks)
        #expect(body == Self.jwks)
        #expect(request.hasPrefix("GET /.well-known/jwks.json HTTP/1.1\r\n"))
        #expect(request.contains("\r\nHost: 127.0.0.1:"))
        #expect(request.contains("\r\nConnection: close\r\n"))
    }

    @Test func chunkedAndInterimAndUntilClose() throws {
        let chunked = Array("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"key\r\n6\r\ns\":[]}\r\n0\r\n\r\n".utf8)
        #expect(try fetch(chunked).body == Array(#"{"keys":[]}"#.utf8))
        let untilClose = Array("HTTP/1.0 200 OK\r\n\r\n".utf8) + Self.jwks
        #expect(try fetch(untilClose).body == Self.jwks)
    }

    @Test func failures() {
        #expect(fetchError(Array("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".utf8)).contains("HTTP 404"))
        let redirect = fetchError(Array("HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.example/jwks\r\nContent-Length: 0\r\n\r\n".utf8))
        #expect(redirect.contains("HTTP 301") && redirect.contains("redirects are not followed"))
        #expect(fetchError(Array("HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".utf8) + [UInt8](repeating: 32, count: 2000),
                           maxBody: 1000).contains("larger than 1000 bytes"))
        // Without a length, the cap applies as the bytes arrive.
        #expect(fetchError(Array("HTTP/1.0 200 OK\r\n\r\n".utf8) + [UInt8](repeating: 32, count: 5000),
                           maxBody: 1000).contains("larger than 1000 bytes"))
        #expect(fetchError(Array("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"keys\"".utf8)).contains("closed before"))
        #expect(fetchError(Array("garbage\r\n\r\n".utf8)).contains("bad HTTP response"))
        #expect(fetchError([], timeout: 0.5, hangUp: false).contains("timed out"))
    }

    @Test func cancellation() throws {
        let server = try LoopbackServer(response: [], hangUp: false)
        var fetcher = try JWKSFetcher(url: "http://127.0.0.1:\(server.port)/jwks")
        fetcher.timeoutSeconds = 30
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { for fd in fds { close(fd) } }
        let cancelWrite = fds[1]
        Thread {
            usleep(200_000)
            var one: UInt8 = 1
            _ = write(cancelWrite, &one, 1)
        }.start()
        let start = Date()
        do {
            _ = try fetcher.fetch(cancelFD: fds[0])
            Issue.record("fetched")
        } catch {
            #expect(error.message.contains("cancelled"))
        }
        #expect(Date().timeIntervalSince(start) < 5)
    }

    @Test func connectionRefused() throws {
        let port = try LoopbackServer.unusedPort()
        let fetcher = try JWKSFetcher(url: "http://127.0.0.1:\(port)/jwks")
        #expect(throws: JWKSFetchError.self) { try fetcher.fetch() }
    }

    @Test func https() throws {
        let pki = try TestPKI.shared.get()
        let context = try TLSContext(configuration: .server(certificateChainFile: pki.serverChain, privateKeyFile: pki.serverKey))
        for host in ["localhost", "127.0.0.1"] {
            let server = try LoopbackServer(response: Array("HTTP/1.1 200 OK\r\nContent-Length: \(Self.jwks.count)\r\n\r\n".utf8) + Self.jwks,
                                            tls: context)
            let fetcher = try JWKSFetcher(url: "https://\(host):\(server.port)/jwks", caFile: pki.caCert)
            #expect(try fetcher.fetch() == Self.jwks)
            #expect(server.request().hasPrefix("GET /jwks HTTP/1.1\r\n"))
        }
    }

    @Test func httpsVerifiesTheServer() throws {
        let pki = try TestPKI.shared.get()
        func error(chain: String, key: String, caFile: String?) throws -> String {
            let context = try TLSContext(configuration: .server(certificateChainFile: chain, privateKeyFile: key))
            let server = try LoopbackServer(response: Array("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8), tls: context)
            do {
                _ = try JWKSFetcher(url: "https://localhost:\(server.port)/jwks", caFile: caFile).fetch()
                return "fetched"
            } catch {
                return error.message
            }
        }
        // The system roots do not know the test CA.
        #expect(try error(chain: pki.serverChain, key: pki.serverKey, caFile: nil).contains("certificate verify failed"))
        // Right CA, wrong name.
        #expect(try error(chain: pki.wrongNameChain, key: pki.wrongNameKey, caFile: pki.caCert).contains("certificate verify failed"))
    }
}

// MARK: - Test servers

/// Accepts one connection on 127.0.0.1, reads the request head, writes `response` (through TLS
/// when given a context), then closes, unless `hangUp` is false (to test timeouts).
final class LoopbackServer: @unchecked Sendable {
    let port: Int
    private let listenFD: Int32
    private let lock = NSLock()
    private var received: [UInt8] = []
    private let done = DispatchSemaphore(value: 0)

    init(response: [UInt8], tls: TLSContext? = nil, hangUp: Bool = true) throws {
        (listenFD, port) = try Self.listen()
        let fd = listenFD
        let thread = Thread { [self] in
            defer { done.signal() }
            let conn = accept(fd, nil, nil)
            guard conn >= 0 else { return }
            defer { close(conn) }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if let tls {
                serveTLS(conn, tls, response, hangUp: hangUp)
            } else {
                serve(conn, response, hangUp: hangUp)
            }
        }
        thread.start()
    }

    deinit {
        shutdown(listenFD, Int32(SHUT_RDWR))  // wakes an accept that never got a client
        close(listenFD)
    }

    /// The request head, once the exchange is over.
    func request() -> String {
        _ = done.wait(timeout: .now() + 10)
        return lock.withLock { String(decoding: received, as: UTF8.self) }
    }

    private func gotHead(_ bytes: [UInt8]) -> Bool {
        lock.withLock {
            received += bytes
            return received.count >= 4 && String(decoding: received, as: UTF8.self).contains("\r\n\r\n")
        }
    }

    private func serve(_ conn: Int32, _ response: [UInt8], hangUp: Bool) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(conn, &buffer, buffer.count, 0)
            guard n > 0 else { return }
            if gotHead(Array(buffer[..<n])) { break }
        }
        sendAll(conn, response)
        if !hangUp { _ = recv(conn, &buffer, buffer.count, 0) }  // until the client gives up
    }

    private func serveTLS(_ conn: Int32, _ context: TLSContext, _ response: [UInt8], hangUp: Bool) {
        guard let tls = try? TLSConnection(context: context) else { return }
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var plain = [UInt8](repeating: 0, count: 16 * 1024)
        var head = false
        while !head {
            let n = recv(conn, &buffer, buffer.count, 0)
            guard n > 0 else { return }
            buffer.withUnsafeBytes { tls.feedCiphertext(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            reading: while true {
                switch plain.withUnsafeMutableBytes({ tls.readPlaintext(into: $0) }) {
                case .bytes(let k) where k > 0:
                    if gotHead(Array(plain[..<k])) { head = true }
                case .bytes, .wantMoreCiphertext:
                    break reading
                case .closed, .failed:
                    sendAll(conn, tls.takeOutboundCiphertext())  // an alert, maybe
                    return
                }
            }
            sendAll(conn, tls.takeOutboundCiphertext())
        }
        response.withUnsafeBytes { _ = tls.writePlaintext($0) }
        tls.shutdown()
        sendAll(conn, tls.takeOutboundCiphertext())
    }

    private func sendAll(_ conn: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(conn, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return }
            offset += n
        }
    }

    private static func listen() throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureFailure("socket: \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, length) == 0 && Glibc.listen(fd, 8) == 0 && getsockname(fd, sa, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            throw FixtureFailure("bind/listen: \(errno)")
        }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    /// A port nothing listens on (bound, then closed).
    static func unusedPort() throws -> Int {
        let (fd, port) = try listen()
        close(fd)
        return port
    }
}

struct FixtureFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A CA, a server certificate for localhost / 127.0.0.1 and one for another name, made with the
/// openssl CLI into a temporary directory.
struct TestPKI: Sendable {
    let dir: String
    var caCert: String { dir + "/ca.pem" }
    var serverChain: String { dir + "/server.pem" }
    var serverKey: String { dir + "/server.key" }
    var wrongNameChain: String { dir + "/wrong.pem" }
    var wrongNameKey: String { dir + "/wrong.key" }

    static let shared: Result<TestPKI, any Error> = Result { try TestPKI.make() }

    private static func make() throws -> TestPKI {
        let dir = NSTemporaryDirectory() + "tether-auth-pki-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + "tether-auth-pki-\(getpid())") }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try openssl(["req", "-x509", "-new"] + ec + ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                     "-subj", "/CN=Tether Auth Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign"], in: dir)
        for (name, san) in [("server", "DNS:localhost,IP:127.0.0.1"), ("wrong", "DNS:wrong.example")] {
            try "subjectAltName=\(san)\nextendedKeyUsage=serverAuth\n".write(toFile: "\(dir)/\(name).ext", atomically: true, encoding: .utf8)
            try openssl(["req", "-new"] + ec + ["-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(name)"], in: dir)
            try openssl(["x509", "-req", "-in", "\(name).csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                         "-days", "2", "-sha256", "-extfile", "\(name).ext", "-out", "\(name).pem"], in: dir)
        }
        return TestPKI(dir: dir)
    }

    private static func openssl(_ args: [String], in dir: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl"] + args
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw FixtureFailure("openssl \(args.joined(separator: " ")) failed (\(process.terminationStatus))")
        }
    }
}
#endif

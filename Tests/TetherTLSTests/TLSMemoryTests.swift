import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
import COpenSSL  // tether_malloc_* (glibc malloc statistics)
@testable import TetherTLS

/// The relay must hold 10,000 idle TLS connections at < 24 KiB RSS each, all-in.
/// Measures heap growth per idle server connection after handshake + a request and a 20 KB
/// response (mallinfo2 in-use bytes: exact, unlike RSS, which is printed for the pair as well).
final class TLSMemoryTests: XCTestCase {
    private static let connections = 500
    /// mallinfo2 counts chunks parked in glibc's per-thread caches (and one-time global
    /// allocations) as in use: up to ~200 KB of noise, i.e. a few hundred bytes per connection
    /// here. A real per-connection leak (an SSL, a buffer) would be kilobytes.
    private static let leakNoise = 1_024

    /// malloc'd bytes in use (main arena + mmapped chunks).
    private func heapInUse() -> Int {
        Int(tether_malloc_bytes_in_use())
    }

    private func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Minimal pump with one shared scratch buffer, so the test itself adds no per-connection cost.
    private func exchange(_ client: TLSConnection, _ server: TLSConnection, scratch: inout [UInt8]) -> Int {
        var plaintext = 0
        for _ in 0..<32 {
            var moved = false
            for (from, to) in [(client, server), (server, client)] where from.hasOutboundCiphertext {
                let bytes = from.takeOutboundCiphertext()
                bytes.withUnsafeBytes { raw in
                    to.withCiphertext(raw) {
                        while case .bytes(let n) = scratch.withUnsafeMutableBytes({ to.readPlaintext(into: $0) }) {
                            plaintext += n
                        }
                    }
                }
                moved = true
            }
            if !moved { break }
        }
        return plaintext
    }

    private struct Measurement {
        var serverHeapPerConnection: Int
        var clientHeapPerConnection: Int
        var pairRSSPerConnection: Int
        var leakedPerConnection: Int
    }

    private func measure(server serverContext: TLSContext, client clientContext: TLSContext) throws -> Measurement {
        let n = Self.connections
        var scratch = [UInt8](repeating: 0, count: 16_384)
        let request = Array("GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        // Larger than one record: OpenSSL's full-size read and write buffers get allocated (and
        // must be released again).
        let response = Array("HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n".utf8) + pseudoRandomBytes(20_000, seed: 5)
        func makePair() throws -> (TLSConnection, TLSConnection) {
            let client = try TLSConnection(context: clientContext, serverName: "localhost")
            let server = try TLSConnection(context: serverContext)
            client.startHandshake()
            _ = request.withUnsafeBytes { client.writePlaintext($0) }
            XCTAssertEqual(exchange(client, server, scratch: &scratch), request.count)
            _ = response.withUnsafeBytes { server.writePlaintext($0) }
            XCTAssertEqual(exchange(client, server, scratch: &scratch), response.count)
            XCTAssertTrue(server.isHandshakeComplete && !server.hasOutboundCiphertext && server.bufferedCiphertextCount == 0)
            return (client, server)
        }
        // Warm up OpenSSL's lazily built global tables (error strings, provider caches, ...).
        for _ in 0..<20 { _ = try makePair() }
        _ = tether_malloc_trim()

        var clients: [TLSConnection] = []
        var servers: [TLSConnection] = []
        clients.reserveCapacity(n)
        servers.reserveCapacity(n)
        let heapBase = heapInUse()
        let rssBase = residentBytes()
        for _ in 0..<n {
            let (client, server) = try makePair()
            clients.append(client)
            servers.append(server)
        }
        let heapBoth = heapInUse()
        guard heapBoth > heapBase else {
            // e.g. under AddressSanitizer, whose allocator does not feed mallinfo2.
            throw XCTSkip("glibc malloc statistics unavailable")
        }
        let rssBoth = residentBytes()
        clients.removeAll(keepingCapacity: true)
        let heapServers = heapInUse()
        servers.removeAll(keepingCapacity: true)
        let heapNone = heapInUse()
        return Measurement(serverHeapPerConnection: (heapServers - heapBase) / n,
                           clientHeapPerConnection: (heapBoth - heapServers) / n,
                           pairRSSPerConnection: (rssBoth - rssBase) / n,
                           leakedPerConnection: (heapNone - heapBase) / n)
    }

    private func report(_ label: String, _ m: Measurement) {
        print("""
            [TetherTLS memory] \(label): server \(m.serverHeapPerConnection) B/conn (\(m.serverHeapPerConnection / 1024) KiB), \
            client \(m.clientHeapPerConnection) B/conn, RSS growth per server+client pair \(m.pairRSSPerConnection) B, \
            leaked after free \(m.leakedPerConnection) B/conn (\(Self.connections) pairs)
            """)
    }

    func testIdleServerConnectionMemory() throws {
        let f = try Fixtures.get()
        let client = try makeClientContext(f)
        let tls13 = try measure(server: makeServerContext(f), client: client)
        report("TLS 1.3, tickets on", tls13)
        XCTAssertLessThan(tls13.serverHeapPerConnection, 20 * 1024)
        XCTAssertLessThan(tls13.leakedPerConnection, Self.leakNoise)

        let noTickets = try measure(server: makeServerContext(f, tickets: false), client: client)
        report("TLS 1.3, tickets off", noTickets)
        XCTAssertLessThan(noTickets.serverHeapPerConnection, 20 * 1024)

        let tls12 = try measure(server: makeServerContext(f, max: .tls12), client: client)
        report("TLS 1.2, tickets on", tls12)
        XCTAssertLessThan(tls12.serverHeapPerConnection, 20 * 1024)
        XCTAssertLessThan(tls12.leakedPerConnection, Self.leakNoise)
    }
}

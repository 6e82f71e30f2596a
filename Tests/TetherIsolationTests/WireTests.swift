import TetherHTTP
@testable import TetherIsolation
import TetherQuota
import TetherTunnel
import XCTest

final class PreambleTests: XCTestCase {
    let session = String(repeating: "ab", count: 32)

    func samples() -> [WorkerPreamble] {
        var settings = WorkerSettings()
        settings.httpLimits.maxBodySize = 123_456_789
        settings.streamIdleTimeoutMilliseconds = 4_321
        settings.tunnel.streamWindow = 65_536
        settings.tunnel.pingIntervalMilliseconds = 5_000
        var profile = QuotaProfile()
        profile.requestsPerSecond = 2.5
        profile.maxStreams = 7
        profile.memoryBytes = 1 << 30
        let tier = WorkerTier(name: "pro", profile: profile)
        var local = TunnelSettings()
        local.tunnelWindow = 2_000_000
        let snapshot = TunnelSnapshot(localSettings: local, peerSettings: TunnelSettings(), tunnelSendWindow: 12_345,
                                      tunnelReceiveWindow: 1_999_000, tunnelUnreturned: 1_000, highestStreamID: 99,
                                      goAwaySent: nil, goAwayReceived: 98)
        return [
            .control(session: session, settings: settings),
            .client(session: session, tier: tier, peer: WorkerPeer(host: "2001:db8::1", port: 443, tls: true)),
            .bridge(session: session, attachID: 1 << 40, tier: tier, peer: WorkerPeer(host: "127.0.0.1", port: 5, tls: false),
                    state: .tunnel(snapshot)),
            .bridge(session: session, attachID: 2, tier: WorkerTier(name: "default", profile: QuotaProfile()),
                    peer: WorkerPeer(host: "", port: 0, tls: false), state: .legacy(bridgeID: "b-1")),
        ]
    }

    func testRoundTripAndTrailingBytesBelongToTheConnection() throws {
        for preamble in samples() {
            let wire = preamble.encoded() + Array("GET / HTTP/1.1\r\n".utf8)
            let parsed = try XCTUnwrap(try WorkerPreamble.parse(wire[...]))
            XCTAssertEqual(parsed.0, preamble)
            XCTAssertEqual(parsed.consumed, preamble.encoded().count)
            XCTAssertEqual(parsed.0.session, session)
        }
    }

    /// Split anywhere: incomplete is nil (wait for more), never an error and never a crash.
    func testEveryPrefixIsIncomplete() throws {
        for preamble in samples() {
            let wire = preamble.encoded()
            for cut in 0..<wire.count {
                XCTAssertNil(try WorkerPreamble.parse(wire[0..<cut]), "cut at \(cut)")
            }
        }
    }

    func testDamageIsAnErrorNotACrash() throws {
        let wire = samples()[2].encoded()
        XCTAssertThrowsError(try WorkerPreamble.parse([0x47, 0x45, 0x54][...])) { XCTAssertEqual($0 as? WireError, .badMagic) }
        var version = wire
        version[3] = 2
        XCTAssertThrowsError(try WorkerPreamble.parse(version[...])) { XCTAssertEqual($0 as? WireError, .unsupportedVersion(2)) }
        var huge = wire
        huge[4] = 0x7F
        XCTAssertThrowsError(try WorkerPreamble.parse(huge[...])) { XCTAssertEqual($0 as? WireError, .tooLarge(0x7F00_0000 | Int(wire[5]) << 16 | Int(wire[6]) << 8 | Int(wire[7]))) }
        // Every single-byte change either parses to something valid or is refused.
        var rng = SystemRandomNumberGenerator()
        for position in WorkerPreamble.headerSize..<wire.count {
            for _ in 0..<8 {
                var damaged = wire
                damaged[position] = UInt8.random(in: 0...255, using: &rng)
                _ = try? WorkerPreamble.parse(damaged[...])
            }
        }
        // A session that is not 64 lowercase hex digits.
        let bad = WorkerPreamble.control(session: String(repeating: "A", count: 64), settings: WorkerSettings()).encoded()
        XCTAssertThrowsError(try WorkerPreamble.parse(bad[...]))
        // A snapshot that no tunnel could be in (receive credit inflated).
        guard case .bridge(let s, let id, let tier, let peer, .tunnel(var snapshot)) = samples()[2] else { return XCTFail() }
        snapshot.tunnelReceiveWindow += 1
        let inconsistent = WorkerPreamble.bridge(session: s, attachID: id, tier: tier, peer: peer, state: .tunnel(snapshot)).encoded()
        XCTAssertThrowsError(try WorkerPreamble.parse(inconsistent[...]))
    }

    func testControlMessagesSurviveAnySplit() throws {
        var settings = WorkerSettings()
        settings.idleTimeoutMilliseconds = 7
        guard case .bridge(_, _, _, _, let state) = samples()[2] else { return XCTFail() }
        let messages: [ControlMessage] = [
            .ready(version: 1), .attached(attachID: 42), .parkReady, .parkBusy(streams: 3),
            .snapshot(attachID: 42, state: state), .snapshot(attachID: 43, state: .legacy(bridgeID: "x")),
            .parkFailed(attachID: 44, reason: "mid-message"), .configure(settings), .park, .goAway(attachID: 0),
            .close(attachID: 9, code: 1001, reason: "relay shutting down"),
            .counters([]), .counters([0, 3, .max, 12]),
        ]
        let stream = messages.flatMap { $0.encoded() }
        for step in [1, 2, 3, 7, 64, stream.count] {
            var decoder = ControlMessageDecoder()
            var out: [ControlMessage] = []
            var i = 0
            while i < stream.count {
                decoder.feed(Array(stream[i..<min(stream.count, i + step)]))
                while let m = try decoder.next() { out.append(m) }
                i += step
            }
            XCTAssertEqual(out, messages, "step \(step)")
        }
        var decoder = ControlMessageDecoder()
        decoder.feed([0, 0, 0, 1, 99])
        XCTAssertThrowsError(try decoder.next())
        XCTAssertThrowsError(try decoder.next(), "a broken link stays broken")
        var oversized = ControlMessageDecoder()
        oversized.feed([0, 1, 0, 0])
        XCTAssertThrowsError(try oversized.next()) { XCTAssertEqual($0 as? WireError, .tooLarge(65_536)) }
    }

    func testCounterReportsAreBounded() throws {
        // The encoder never writes more than the decoder takes.
        let many = ControlMessage.counters(Array(repeating: 1, count: ControlMessage.maxCounters + 5)).encoded()
        var decoder = ControlMessageDecoder()
        decoder.feed(many)
        XCTAssertEqual(try decoder.next(), .counters(Array(repeating: 1, count: ControlMessage.maxCounters)))
        // A worker claiming more is refused, as is a count its bytes do not cover.
        var body: [UInt8] = [7, 0, UInt8(ControlMessage.maxCounters + 1)]
        body += Array(repeating: 0, count: 8 * (ControlMessage.maxCounters + 1))
        var refused = ControlMessageDecoder()
        refused.feed([0, 0, UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body)
        XCTAssertThrowsError(try refused.next())
        var short = ControlMessageDecoder()
        short.feed([0, 0, 0, 11, 7, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1])
        XCTAssertThrowsError(try short.next())
    }
}

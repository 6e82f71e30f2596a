@_spi(Testing) @testable import TetherTunnel
import TetherHTTP
import Testing

private let get = TunnelRequestHead(method: "GET", target: "/")
private let post = TunnelRequestHead(method: "POST", target: "/upload")

/// The Docker isolation mode moves an idle tunnel between processes (container → relay →
/// next container): the bridge must not be able to tell.
@Suite struct SnapshotTests {
    /// Streams with body both ways, partial credit returns, then idle: the relay's state goes
    /// through the wire format into a fresh multiplexer that carries on with the same bridge.
    @Test func idleTunnelContinuesInAnotherMultiplexer() throws {
        var p = try Pair(relay: settings(stream: 100_000, tunnel: 300_000), bridge: settings(stream: 70_000, tunnel: 150_000))
        for round in 0..<3 {
            let id = try p.open(post, endStream: false)
            let upload = randomBytes(50_000 + round, seed: UInt64(round))
            #expect(p.relay.sendData(id, upload, endStream: true) == upload.count)
            let events = try p.toBridge()
            #expect(bodies(events).bytes[id] == upload)
            p.bridge.consumed(id, bytes: upload.count)
            p.bridge.sendResponse(id, TunnelResponseHead(status: 200), endStream: false)
            let answer = randomBytes(90_000 + round, seed: 100 + UInt64(round))
            #expect(p.bridge.sendData(id, answer, endStream: true) == answer.count)
            let back = try p.toRelay()
            #expect(bodies(back).bytes[id] == answer)
            // Only part of the answer has left the relay when it goes idle: the rest of the
            // credit is owed (unreturned) and must survive the move.
            p.relay.consumed(id, bytes: answer.count / 3)
            p.relay.reset(id, code: .noError)  // the client finished: drop what it did not take
            _ = try p.toBridge()
        }
        p.expectInvariants()
        let snapshot = try #require(p.relay.snapshot())
        #expect(snapshot.highestStreamID == 3)
        #expect(snapshot.tunnelReceiveWindow + snapshot.tunnelUnreturned == 300_000)
        let wire = snapshot.encoded()
        #expect(wire.count == TunnelSnapshot.encodedSize)
        let decoded = try TunnelSnapshot.decode(wire[...])
        #expect(decoded == snapshot)

        let restored = TunnelMultiplexer(role: .relay, restoring: decoded)
        #expect(!restored.hasOutbound, "no second HELLO")
        #expect(restored.isReady && restored.canOpenStream)
        #expect(restored.peerSettings == p.relay.peerSettings && restored.localSettings == p.relay.localSettings)
        #expect(restored.tunnelSendWindow == p.relay.tunnelSendWindow)
        restored.expectInvariants()
        p.relay = restored

        // The bridge keeps its state: ids keep growing, windows agree, credit keeps flowing.
        let id = try p.open(get, endStream: true)
        #expect(id == 4)
        _ = try p.toBridge()
        p.bridge.sendResponse(id, TunnelResponseHead(status: 200), endStream: false)
        let big = randomBytes(140_000, seed: 9)
        var sent = 0
        var received: [UInt8] = []
        while sent < big.count {
            let n = p.bridge.sendData(id, big[sent...], endStream: true)
            #expect(n > 0, "the bridge ran out of credit: the restored relay lost some")
            sent += n
            let events = try p.toRelay()
            for case let .data(_, slice, _) in events { received += slice }
            p.relay.consumed(id, bytes: n)
            _ = try p.toBridge()
        }
        #expect(received == big)
        p.expectInvariants()
    }

    @Test func noSnapshotWhileAnythingIsInFlight() throws {
        let fresh = TunnelMultiplexer(role: .relay)
        #expect(fresh.snapshot() == nil, "no peer HELLO yet, and our HELLO is still queued")

        var p = try Pair()
        let id = try p.open(get, endStream: true)
        #expect(p.relay.snapshot() == nil, "a stream is open and its OPEN is queued")
        _ = try p.toBridge()
        #expect(p.relay.snapshot() == nil, "a stream is open")
        p.bridge.sendResponse(id, TunnelResponseHead(status: 200), endStream: true)
        _ = try p.toRelay()
        #expect(p.relay.snapshot() != nil)
        p.relay.ping(7)
        #expect(p.relay.snapshot() == nil, "a PING is queued")
        _ = try p.toBridge()
        _ = p.bridge.takeAll()
        #expect(p.relay.snapshot() != nil)

        var dead = try Pair()
        _ = dead.relay.expectFailure(frame(.data, stream: 0, [1]))
        #expect(dead.relay.snapshot() == nil)
    }

    /// DATA of a finished stream that the caller still holds (not consumed) belongs to nobody
    /// once the process goes away: its credit is owed to the bridge.
    @Test func heldDataOfFinishedStreamsIsCreditedInTheSnapshot() throws {
        var p = try Pair(relay: settings(stream: 100_000, tunnel: 400_000))
        let id = try p.open(get, endStream: true)
        _ = try p.toBridge()
        p.bridge.sendResponse(id, TunnelResponseHead(status: 200), endStream: false)
        #expect(p.bridge.sendData(id, randomBytes(10_000, seed: 1), endStream: true) == 10_000)
        _ = try p.toRelay()
        #expect(!p.relay.isOpen(id))
        let snapshot = try #require(p.relay.snapshot())
        #expect(snapshot.tunnelReceiveWindow == 390_000 && snapshot.tunnelUnreturned == 10_000)
        var restored = TunnelMultiplexer(role: .relay, restoring: snapshot)
        restored.expectInvariants()
        // Further credit returns push the owed bytes out with the next WINDOW_UPDATE (a
        // quarter of the tunnel window: 100,000).
        let opened = restored.openStream(get, endStream: true)
        let next = try #require(opened)
        p.relay = restored
        _ = try p.toBridge()
        p.bridge.sendResponse(next, TunnelResponseHead(status: 200), endStream: false)
        #expect(p.bridge.sendData(next, randomBytes(250_000, seed: 2), endStream: true) == 100_000)
        _ = try p.toRelay()
        p.relay.consumed(next, bytes: 100_000)
        let updates = p.relay.takeFrames().filter { $0.type == .windowUpdate && $0.stream == 0 }
        #expect(updates.map(\.payload) == [u32(110_000)])
    }

    @Test func bridgeSideRoundTripsToo() throws {
        var p = try Pair()
        p.relay.goAway(code: .noError, reason: "draining")
        _ = try p.toBridge()
        let snapshot = try #require(p.bridge.snapshot())
        #expect(snapshot.goAwayReceived == 0)
        let decoded = try TunnelSnapshot.decode(snapshot.encoded()[...])
        let restored = TunnelMultiplexer(role: .bridge, restoring: decoded)
        #expect(restored.goAwayReceived == 0 && restored.isReady)
    }

    /// A snapshot can come from an untrusted process: any damage is an error, never a
    /// multiplexer with impossible windows.
    @Test func damagedSnapshotsAreRefused() throws {
        let p = try Pair(relay: settings(tunnel: 500_000))
        let wire = try #require(p.relay.snapshot()).encoded()
        for cut in 0..<wire.count {
            #expect(throws: TunnelSnapshotError.truncated) { try TunnelSnapshot.decode(wire[0..<cut]) }
        }
        #expect(throws: TunnelSnapshotError.invalid("1 trailing bytes")) { try TunnelSnapshot.decode((wire + [0])[...]) }
        var version = wire
        version[0] = 9
        #expect(throws: TunnelSnapshotError.unsupportedVersion(9)) { try TunnelSnapshot.decode(version[...]) }
        // Receive window (offset 1 + 48 + 4) grown: credit the tunnel never had.
        var inflated = wire
        inflated[1 + 48 + 4 + 3] &+= 1
        #expect(throws: TunnelSnapshotError.self) { try TunnelSnapshot.decode(inflated[...]) }
        // A send window above 2^31−1.
        var send = wire
        send[1 + 48] = 0xFF
        #expect(throws: TunnelSnapshotError.self) { try TunnelSnapshot.decode(send[...]) }
        // An optional id with a flag other than 0/1.
        var flag = wire
        flag[wire.count - 10] = 2
        #expect(throws: TunnelSnapshotError.invalid("bad flag")) { try TunnelSnapshot.decode(flag[...]) }
    }
}

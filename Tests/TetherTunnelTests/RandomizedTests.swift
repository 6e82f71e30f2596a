@_spi(Testing) @testable import TetherTunnel
import TetherHTTP
import Testing

/// Relay and bridge driven by a seeded RNG: streams opened, bodies sent in random chunks,
/// credit returned in random amounts, messages delivered in random batches, occasional
/// cancels and bridge resets and pings. Every completed exchange must be byte-exact, the
/// bookkeeping invariants must hold after every step, and at the end all credit is back.
@Suite struct RandomizedTests {
    private struct Exchange {
        var request: [UInt8]
        var response: [UInt8]
        var requestSent = 0
        var requestEndSent = false
        var responded = false
        var responseSent = 0
        var responseEndSent = false
        var requestReceived: [UInt8] = []
        var requestEnded = false
        var responseReceived: [UInt8] = []
        var responseEnded = false
        var aborted = false  // cancelled by the relay or reset by the bridge
    }

    @Test(arguments: Array(1 ... 24) as [UInt64])
    func randomInterleavings(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        func randomSettings() -> TunnelSettings {
            let stream = Int.random(in: 1 ... 48, using: &rng) * 1024 + Int.random(in: 0 ... 1023, using: &rng)
            return settings(stream: stream, tunnel: stream * Int.random(in: 1 ... 6, using: &rng),
                            maxStreams: Int.random(in: 1 ... 12, using: &rng), maxMessage: Int.random(in: 1024 ... 20_000, using: &rng))
        }
        var p = try Pair(relay: randomSettings(), bridge: randomSettings())
        let total = 40
        let abortRate = Int.random(in: 0 ... 4, using: &rng)  // percent per step
        var exchanges: [StreamID: Exchange] = [:]
        var relayActive: Set<StreamID> = []   // the relay's caller still works on these
        var bridgeActive: Set<StreamID> = []
        var relayHeld: [StreamID: Int] = [:]  // delivered DATA not yet passed on
        var bridgeHeld: [StreamID: Int] = [:]
        var pings: [UInt64] = []

        func retireRelay(_ id: StreamID) {
            guard let e = exchanges[id] else { return }
            if e.responseEnded && (e.requestEndSent || e.request.isEmpty) { relayActive.remove(id) }
        }
        func retireBridge(_ id: StreamID) {
            guard let e = exchanges[id] else { return }
            if e.requestEnded && e.responseEndSent { bridgeActive.remove(id) }
        }
        func handleBridge(_ events: [TunnelEvent]) {
            for event in events {
                switch event {
                case let .streamOpened(id, head, end):
                    #expect(head.target == "/\(id)")
                    bridgeActive.insert(id)
                    exchanges[id]?.requestEnded = end
                case let .data(id, bytes, end):
                    #expect(bridgeActive.contains(id))
                    exchanges[id]?.requestReceived += bytes
                    if end { exchanges[id]?.requestEnded = true }
                    bridgeHeld[id, default: 0] += bytes.count
                    retireBridge(id)
                case let .streamReset(id, code, _):
                    #expect(code == .cancel, "bridge: unexpected reset \(code) of \(id)")
                    bridgeActive.remove(id)
                    bridgeHeld[id] = nil  // dropped
                    exchanges[id]?.aborted = true
                case .ping(let v), .pong(let v):
                    #expect(pings.contains(v))
                case .windowAvailable:
                    break
                default:
                    Issue.record("unexpected bridge event \(event)")
                }
            }
        }
        func handleRelay(_ events: [TunnelEvent]) {
            for event in events {
                switch event {
                case let .response(id, head, end):
                    #expect(head.status == 200 && relayActive.contains(id))
                    if end { exchanges[id]?.responseEnded = true }
                    retireRelay(id)
                case let .data(id, bytes, end):
                    #expect(relayActive.contains(id))
                    exchanges[id]?.responseReceived += bytes
                    if end { exchanges[id]?.responseEnded = true }
                    relayHeld[id, default: 0] += bytes.count
                    retireRelay(id)
                case let .streamReset(id, code, _):
                    #expect(code == .localServiceError, "relay: unexpected reset \(code) of \(id)")
                    relayActive.remove(id)
                    relayHeld[id] = nil
                    exchanges[id]?.aborted = true
                case .ping(let v), .pong(let v):
                    #expect(pings.contains(v))
                case .windowAvailable:
                    break
                default:
                    Issue.record("unexpected relay event \(event)")
                }
            }
        }
        func consume(_ held: inout [StreamID: Int], _ mux: inout TunnelMultiplexer) {
            guard let (id, n) = held.randomElement(using: &rng) else { return }
            let k = Int.random(in: 1 ... n, using: &rng)
            mux.consumed(id, bytes: k)
            held[id] = n == k ? nil : n - k
        }

        var steps = 0
        while true {
            steps += 1
            try #require(steps < 200_000, "no progress")
            let done = exchanges.count == total && relayActive.isEmpty && bridgeActive.isEmpty
                && relayHeld.isEmpty && bridgeHeld.isEmpty && !p.relay.hasOutbound && !p.bridge.hasOutbound
            if done { break }
            switch Int.random(in: 0 ..< 100, using: &rng) {
            case 0 ..< 8:
                guard exchanges.count < total, p.relay.canOpenStream else { break }
                let request = rng.bytes(Int.random(in: 0 ... 3, using: &rng) == 0 ? 0 : Int.random(in: 1 ... 30_000, using: &rng))
                let response = rng.bytes(Int.random(in: 0 ... 3, using: &rng) == 0 ? 0 : Int.random(in: 1 ... 30_000, using: &rng))
                let next = p.relay.highestStreamID + 1
                let id = try p.open(TunnelRequestHead(method: "POST", target: "/\(next)"), endStream: request.isEmpty)
                #expect(id == next)
                exchanges[id] = Exchange(request: request, response: response)
                relayActive.insert(id)
            case 8 ..< 22:
                guard let id = relayActive.filter({ exchanges[$0].map { !$0.requestEndSent && !$0.request.isEmpty } ?? false })
                    .randomElement(using: &rng), var e = exchanges[id] else { break }
                let end = min(e.request.count, e.requestSent + Int.random(in: 1 ... 20_000, using: &rng))
                let n = p.relay.sendData(id, e.request[e.requestSent ..< end], endStream: end == e.request.count)
                #expect(n <= p.relay.peerSettings?.streamWindow ?? 0)
                e.requestSent += n
                e.requestEndSent = e.requestSent == e.request.count && end == e.request.count
                exchanges[id] = e
                retireRelay(id)
            case 22 ..< 28:
                guard let id = bridgeActive.filter({ exchanges[$0]?.responded == false }).randomElement(using: &rng) else { break }
                let empty = exchanges[id]?.response.isEmpty ?? true
                p.bridge.sendResponse(id, TunnelResponseHead(status: 200), endStream: empty)
                exchanges[id]?.responded = true
                exchanges[id]?.responseEndSent = empty
                retireBridge(id)
            case 28 ..< 42:
                guard let id = bridgeActive.filter({ exchanges[$0].map { $0.responded && !$0.responseEndSent } ?? false })
                    .randomElement(using: &rng), var e = exchanges[id] else { break }
                let end = min(e.response.count, e.responseSent + Int.random(in: 1 ... 20_000, using: &rng))
                let n = p.bridge.sendData(id, e.response[e.responseSent ..< end], endStream: end == e.response.count)
                e.responseSent += n
                e.responseEndSent = e.responseSent == e.response.count && end == e.response.count
                exchanges[id] = e
                retireBridge(id)
            case 42 ..< 54:
                consume(&relayHeld, &p.relay)
            case 54 ..< 66:
                consume(&bridgeHeld, &p.bridge)
            case 66 ..< 82:
                handleBridge(try p.toBridge(limit: Int.random(in: 1 ... 3, using: &rng)))
            case 82 ..< 98:
                handleRelay(try p.toRelay(limit: Int.random(in: 1 ... 3, using: &rng)))
            case 98:
                let v = rng.next()
                pings.append(v)
                if Bool.random(using: &rng) { p.relay.ping(v) } else { p.bridge.ping(v) }
            default:
                guard Int.random(in: 0 ..< 100, using: &rng) < abortRate * 25 else { break }
                if Bool.random(using: &rng), let id = relayActive.randomElement(using: &rng) {
                    p.relay.reset(id, code: .cancel, reason: "client gone")
                    relayActive.remove(id)
                    relayHeld[id] = nil
                    exchanges[id]?.aborted = true
                } else if let id = bridgeActive.randomElement(using: &rng) {
                    p.bridge.reset(id, code: .localServiceError, reason: "local service failed")
                    bridgeActive.remove(id)
                    bridgeHeld[id] = nil
                    exchanges[id]?.aborted = true
                }
            }
            // Stop at the first broken invariant rather than spinning on.
            try #require(p.relay.invariantViolation() == nil)
            try #require(p.bridge.invariantViolation() == nil)
        }

        #expect(exchanges.count == total)
        for (id, e) in exchanges.sorted(by: { $0.key < $1.key }) where !e.aborted {
            #expect(e.requestReceived == e.request, "request body of stream \(id)")
            #expect(e.responseReceived == e.response, "response body of stream \(id)")
            #expect(e.requestEnded && e.responseEnded)
        }
        #expect(p.relay.activeStreamCount == 0 && p.bridge.activeStreamCount == 0)
        // All credit is back: each side's send window is exactly what the other grants, and
        // nothing is held.
        #expect(p.relay.tunnelSendWindow == p.bridge.tunnelReceiveWindow)
        #expect(p.bridge.tunnelSendWindow == p.relay.tunnelReceiveWindow)
        #expect(p.relay.tunnelReceiveWindow > p.relay.localSettings.tunnelWindow * 3 / 4 - 1)
        #expect(p.bridge.tunnelReceiveWindow > p.bridge.localSettings.tunnelWindow * 3 / 4 - 1)
        #expect(p.relay.retainedCapacity == 0 && p.bridge.retainedCapacity == 0)
    }
}

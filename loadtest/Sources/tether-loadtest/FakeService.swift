import TetherHTTP
import TetherIO
import TetherTunnel

/// A stream the embedded service is serving on one bridge.
enum ServiceStream {
    /// Consuming a request body; answered with its length once it ends.
    case upload(received: Int)
    /// A response body still to send (waits for window or for the socket).
    case sending(remaining: Int)
    /// Emitting records on the token schedule.
    case tokens(sent: UInt32, total: UInt32, size: Int)
}

/// What answers the streams a bridge's tunnel carries: the embedded fake service, or a real
/// local service (`--forward`). Called on the bridge's loop.
protocol BridgeService: AnyObject {
    func open(_ bridge: BridgeClient, _ id: StreamID, _ head: TunnelRequestHead, endStream: Bool)
    /// Request body bytes (a slice of the received message, valid during the call).
    func requestBody(_ bridge: BridgeClient, _ id: StreamID, _ bytes: ArraySlice<UInt8>, endStream: Bool)
    func reset(_ bridge: BridgeClient, _ id: StreamID)
    /// The stream (or, from `pumpAll`, every stream) may send again: window or socket space.
    func pump(_ bridge: BridgeClient, _ id: StreamID)
    func pumpAll(_ bridge: BridgeClient)
}

/// The fake local service behind every bridge of one worker: answers OPENs in-process (no
/// sockets), from static buffers, with no allocation per body byte. Streams of tokens are
/// driven by the worker's tick through a heap ordered by due time.
final class FakeService: BridgeService {
    let counters: WorkerCounters
    let results: WorkerResults
    /// Response body bytes, shared by every stream (never written after init).
    private let payload: UnsafeMutableRawBufferPointer
    private static let payloadSize = 1 << 20
    private let record: UnsafeMutableRawBufferPointer
    private var heap = TokenHeap()
    private var dirty: [BridgeClient] = []
    private var smallHeads: [Int: TunnelResponseHead] = [:]

    init(counters: WorkerCounters, results: WorkerResults) {
        self.counters = counters
        self.results = results
        payload = .allocate(byteCount: FakeService.payloadSize, alignment: 64)
        payload.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "x"))
        record = .allocate(byteCount: 4096, alignment: 64)
        record.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit {
        payload.deallocate()
        record.deallocate()
    }

    var activeTokenStreams: Int { heap.count }

    // MARK: streams from the bridges

    func open(_ bridge: BridgeClient, _ id: StreamID, _ head: TunnelRequestHead, endStream: Bool) {
        counters.serviceStreams.addFromOwner()
        switch FakeRoute.parse(head.target) {
        case .small(let size):
            respond(bridge, id, status: 200, length: size)
        case .bulk(let size):
            respond(bridge, id, status: 200, length: size)
        case .stream(let tokens, let rate, let size):
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/x-ndjson")
            let total = UInt32(clamping: tokens)
            bridge.mux.sendResponse(id, TunnelResponseHead(status: 200, headers: headers), endStream: total == 0)
            if total > 0 {
                bridge.streams[id] = .tokens(sent: 0, total: total, size: size)
                let interval = UInt64(1e9 / rate)
                heap.push(TokenEntry(bridge: bridge, id: id, due: nowNanoseconds() &+ interval, interval: interval))
            }
            bridge.flush()
        case .upload:
            if endStream {
                respondCount(bridge, id, 0)
            } else {
                bridge.streams[id] = .upload(received: 0)
            }
        case .notFound:
            respond(bridge, id, status: 404, length: 0)
        }
    }

    func requestBody(_ bridge: BridgeClient, _ id: StreamID, _ bytes: ArraySlice<UInt8>, endStream: Bool) {
        let count = bytes.count
        // Passed on at once: the credit goes back now.
        bridge.mux.consumed(id, bytes: count)
        if case .upload(let received)? = bridge.streams[id] {
            let total = received + count
            if endStream {
                respondCount(bridge, id, total)
            } else {
                bridge.streams[id] = .upload(received: total)
            }
        }
        bridge.flush()
    }

    func reset(_ bridge: BridgeClient, _ id: StreamID) {
        bridge.streams[id] = nil
    }

    // MARK: responses

    private func respond(_ bridge: BridgeClient, _ id: StreamID, status: Int, length: Int) {
        let head: TunnelResponseHead
        if status == 200, let cached = smallHeads[length] {
            head = cached
        } else {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(length))
            headers.add(name: "Content-Type", value: "application/octet-stream")
            head = TunnelResponseHead(status: status, headers: headers)
            if status == 200, smallHeads.count < 64 { smallHeads[length] = head }
        }
        bridge.mux.sendResponse(id, head, endStream: length == 0)
        if length > 0 {
            bridge.streams[id] = .sending(remaining: length)
            pump(bridge, id)
        }
        bridge.flush()
    }

    private func respondCount(_ bridge: BridgeClient, _ id: StreamID, _ count: Int) {
        let body = Array(String(count).utf8)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: String(body.count))
        bridge.mux.sendResponse(id, TunnelResponseHead(status: 200, headers: headers), endStream: false)
        _ = bridge.mux.sendData(id, body, endStream: true)
        bridge.streams[id] = nil
        bridge.flush()
    }

    /// Sends as much of a response body as the windows and the socket allow.
    func pump(_ bridge: BridgeClient, _ id: StreamID) {
        guard case .sending(var remaining)? = bridge.streams[id] else { return }
        // 256 KiB per call: at most one socket high-watermark's worth between checks.
        while remaining > 0, bridge.canWrite {
            let n = min(remaining, FakeService.payloadSize, 256 * 1024)
            let taken = bridge.mux.sendData(id, UnsafeRawBufferPointer(rebasing: payload[0..<n]), endStream: n == remaining)
            if taken == 0 { break }
            remaining -= taken
            bridge.flush()
        }
        if remaining == 0 {
            bridge.streams[id] = nil
            if let i = bridge.pumping.firstIndex(of: id) { bridge.pumping.remove(at: i) }
        } else {
            bridge.streams[id] = .sending(remaining: remaining)
            if !bridge.pumping.contains(id) { bridge.pumping.append(id) }
        }
    }

    func pumpAll(_ bridge: BridgeClient) {
        guard !bridge.pumping.isEmpty else { return }
        let waiting = bridge.pumping
        bridge.pumping = []
        for id in waiting { pump(bridge, id) }
    }

    // MARK: tokens

    /// Emits every record that is due, then flushes each bridge that got one (several records
    /// of one tunnel leave in one WebSocket message).
    func emitDueTokens(now: UInt64) {
        while let top = heap.top, top.due <= now {
            var entry = heap.pop()
            switch emit(entry.bridge, entry.id) {
            case .more:
                entry.due &+= entry.interval
                heap.push(entry)
            case .stalled:
                results.tokenStalls += 1
                entry.due = now &+ 1_000_000
                heap.push(entry)
            case .done:
                break
            }
        }
        for bridge in dirty {
            bridge.flushQueued = false
            bridge.flush()
        }
        dirty.removeAll(keepingCapacity: true)
    }

    private enum Emission { case more, stalled, done }

    private func emit(_ bridge: BridgeClient, _ id: StreamID) -> Emission {
        guard bridge.isReady, case .tokens(let sent, let total, let size)? = bridge.streams[id] else { return .done }
        guard bridge.mux.sendWindow(for: id) >= size, bridge.canWrite else { return .stalled }
        let out = UnsafeMutableRawBufferPointer(rebasing: record[0..<size])
        StreamRecord.encode(emittedAt: nowNanoseconds(), sequence: sent, into: out)
        let last = sent + 1 == total
        _ = bridge.mux.sendData(id, UnsafeRawBufferPointer(out), endStream: last)
        counters.chunksSent.addFromOwner()
        if !bridge.flushQueued {
            bridge.flushQueued = true
            dirty.append(bridge)
        }
        if last {
            bridge.streams[id] = nil
            return .done
        }
        bridge.streams[id] = .tokens(sent: sent + 1, total: total, size: size)
        return .more
    }
}

struct TokenEntry {
    let bridge: BridgeClient
    let id: StreamID
    var due: UInt64
    let interval: UInt64
}

/// Min-heap of token streams by due time.
struct TokenHeap {
    private var items: [TokenEntry] = []

    var count: Int { items.count }
    var top: TokenEntry? { items.first }

    mutating func push(_ e: TokenEntry) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].due < items[parent].due else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> TokenEntry {
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count, items[l].due < items[m].due { m = l }
                if r < items.count, items[r].due < items[m].due { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}

import TetherHTTP

/// Sans-I/O tether.v1 endpoint (docs/PROTOCOL.md): one per tunnel, on either side. Feed whole
/// binary WebSocket messages to `receive(message:)`, drain `nextEvent()`, call the sending
/// methods, and send every `takeOutboundMessage()` as one binary message.
///
/// Flow control (§5) is enforced both ways: sends never exceed the peer's windows, and the
/// peer exceeding ours is fatal. Received DATA holds credit until the caller reports it with
/// `consumed`; frames the caller never sees (ignored streams, DATA crossing a RESET) are
/// credited back automatically, and so are the unconsumed bytes of a stream that is reset.
///
/// A stream leaves the bookkeeping as soon as both directions ended or it was reset, and
/// buffers are released when drained, so an idle tunnel holds no heap storage (see
/// `retainedCapacity`).
public struct TunnelMultiplexer: Sendable {
    public enum Role: Sendable { case relay, bridge }

    public let role: Role
    /// Our settings, as announced in our HELLO (after clamping to what the wire can carry).
    public let localSettings: TunnelSettings
    /// The peer's settings; nil until its HELLO.
    public private(set) var peerSettings: TunnelSettings?
    /// What we may still send on the tunnel as a whole (every stream draws from it).
    public private(set) var tunnelSendWindow = 0
    /// What the peer may still send us on the tunnel as a whole.
    public private(set) var tunnelReceiveWindow: Int

    /// Highest stream id opened (relay) or seen in an OPEN (bridge).
    public private(set) var highestStreamID: StreamID = 0
    /// Last stream id of the GOAWAY we sent / received, if any.
    public private(set) var goAwaySent: StreamID?
    public private(set) var goAwayReceived: StreamID?
    /// The fatal error, once `receive` has thrown.
    public private(set) var failure: TunnelProtocolError?

    private var streams: [StreamID: Stream] = [:]
    /// Finished streams whose DATA the caller still holds: their tunnel credit returns with
    /// `consumed` (or `reset`).
    private var lingering: [StreamID: Int] = [:]
    /// Consumed bytes whose tunnel credit is not yet returned (batched).
    private var tunnelUnreturned = 0
    private var events: [TunnelEvent] = []
    private var eventIndex = 0
    private var outbound: [[UInt8]] = []
    private var outboundIndex = 0

    private struct Stream: Sendable {
        /// One direction: waiting for its head (only the response, on the relay), carrying
        /// body, or ended.
        enum Half: UInt8, Sendable { case head, body, ended }
        var inbound: Half
        var outbound: Half
        var sendWindow: Int
        var receiveWindow: Int
        /// Delivered in `.data` events, not yet reported by `consumed`.
        var unconsumed = 0
        /// Consumed, not yet returned with a stream WINDOW_UPDATE (batched).
        var unreturned = 0
    }

    /// Queues our HELLO at once.
    public init(role: Role, settings: TunnelSettings = TunnelSettings(), agent: String = "") {
        self.role = role
        let settings = settings.sanitized
        localSettings = settings
        tunnelReceiveWindow = settings.tunnelWindow
        queueFrame(.hello, [], 0, TunnelFrameCodec.encodeHello(settings: settings, agent: agent))
    }

    /// Continues a tunnel from a snapshot taken by `snapshot()` (possibly in another process):
    /// both HELLOs were exchanged long ago, so nothing is queued.
    public init(role: Role, restoring snapshot: TunnelSnapshot) {
        self.role = role
        localSettings = snapshot.localSettings.sanitized
        peerSettings = snapshot.peerSettings.sanitized
        tunnelSendWindow = snapshot.tunnelSendWindow
        tunnelReceiveWindow = snapshot.tunnelReceiveWindow
        tunnelUnreturned = snapshot.tunnelUnreturned
        highestStreamID = snapshot.highestStreamID
        goAwaySent = snapshot.goAwaySent
        goAwayReceived = snapshot.goAwayReceived
    }

    /// The tunnel's whole state while it is idle: HELLOs exchanged, no stream in flight, no
    /// event or message waiting to be taken (drain both first). nil otherwise. Credit of
    /// finished streams whose DATA the caller still holds counts as consumed: the caller is
    /// about to go away with it.
    public func snapshot() -> TunnelSnapshot? {
        guard failure == nil, let peer = peerSettings, streams.isEmpty, !hasOutbound, pendingEventCount == 0 else {
            return nil
        }
        let held = lingering.values.reduce(0, +)
        return TunnelSnapshot(localSettings: localSettings, peerSettings: peer, tunnelSendWindow: tunnelSendWindow,
                              tunnelReceiveWindow: tunnelReceiveWindow, tunnelUnreturned: tunnelUnreturned + held,
                              highestStreamID: highestStreamID, goAwaySent: goAwaySent, goAwayReceived: goAwayReceived)
    }

    /// Peer HELLO received and no fatal error.
    public var isReady: Bool { peerSettings != nil && failure == nil }

    public var activeStreamCount: Int { streams.count }

    /// True while the stream is in the bookkeeping: not reset, and not both directions ended.
    public func isOpen(_ stream: StreamID) -> Bool { streams[stream] != nil }

    // MARK: - Receiving

    /// One whole binary WebSocket message. Throws on tunnel-level errors, after which the
    /// multiplexer is dead: events and outbound are dropped and every call is a no-op (this
    /// one rethrows). Close the WebSocket with the error's code and reason.
    public mutating func receive(message: [UInt8]) throws(TunnelProtocolError) {
        if let failure { throw failure }
        do throws(TunnelProtocolError) {
            guard message.count <= localSettings.maxMessageSize else { throw .messageTooBig }
            try TunnelFrameCodec.forEachFrame(in: message[...]) { (type, flags, stream, payload) throws(TunnelProtocolError) in
                try self.handle(type, flags, stream, payload)
            }
        } catch {
            fail(error)
            throw error
        }
    }

    /// Next event, or nil.
    public mutating func nextEvent() -> TunnelEvent? {
        guard eventIndex < events.count else { return nil }
        let event = events[eventIndex]
        // Drop the queue's reference so a DATA slice is the caller's alone.
        events[eventIndex] = .ping(0)
        eventIndex += 1
        if eventIndex == events.count {
            events = []
            eventIndex = 0
        }
        return event
    }

    public var pendingEventCount: Int { events.count - eventIndex }

    private mutating func handle(_ type: TunnelFrameType?, _ flags: TunnelFlags, _ id: StreamID,
                                 _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        guard let peer = peerSettings else {
            guard type == .hello else { throw .protocolError("first frame is not HELLO") }
            try handleHello(id, payload)
            return
        }
        guard let type else { return }  // unknown types are ignored (extensibility)
        switch type {
        case .hello: throw .protocolError("duplicate HELLO")
        case .open: try handleOpen(id, flags, payload, peer)
        case .response: try handleResponse(id, flags, payload)
        case .data: try handleData(id, flags, payload)
        case .reset: try handleReset(id, payload)
        case .windowUpdate: try handleWindowUpdate(id, payload)
        case .ping: try handlePing(id, flags, payload)
        case .goAway: try handleGoAway(id, payload)
        }
    }

    private mutating func handleHello(_ id: StreamID, _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        guard id == 0 else { throw .protocolError("HELLO on stream \(id)") }
        let hello = try TunnelFrameCodec.decodeHello(payload)
        peerSettings = hello.settings
        tunnelSendWindow = hello.settings.tunnelWindow
        emit(.hello(version: hello.version, settings: hello.settings, agent: hello.agent))
    }

    private mutating func handleOpen(_ id: StreamID, _ flags: TunnelFlags, _ payload: ArraySlice<UInt8>,
                                     _ peer: TunnelSettings) throws(TunnelProtocolError) {
        guard role == .bridge else { throw .protocolError("OPEN sent by the bridge") }
        guard id > highestStreamID else { throw .protocolError("OPEN with non-increasing stream id \(id)") }
        highestStreamID = id
        // Stream errors, not fatal: the relay learns from the RESET and can retry elsewhere.
        // The caller never hears of these streams; their later frames are ignored.
        if goAwaySent != nil || goAwayReceived.map({ id > $0 }) == true {
            queueReset(id, .refusedStream, "going away")
            return
        }
        guard streams.count < localSettings.maxStreams else {
            queueReset(id, .refusedStream, "too many streams")
            return
        }
        guard payload.count <= localSettings.maxHeadSize else {
            queueReset(id, .headTooLarge, "request head over \(localSettings.maxHeadSize) bytes")
            return
        }
        let head: TunnelRequestHead
        do {
            head = try TunnelFrameCodec.decodeRequestHead(payload)
        } catch {
            queueReset(id, .protocolError, error.reason)
            return
        }
        let end = flags.contains(.endStream)
        streams[id] = Stream(inbound: end ? .ended : .body, outbound: .head,
                             sendWindow: peer.streamWindow, receiveWindow: localSettings.streamWindow)
        emit(.streamOpened(id, head, endStream: end))
    }

    private mutating func handleResponse(_ id: StreamID, _ flags: TunnelFlags,
                                         _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        guard role == .relay else { throw .protocolError("RESPONSE sent by the relay") }
        guard var stream = try knownStream(id) else { return }
        switch stream.inbound {
        case .head: break
        case .body: return streamError(id, .protocolError, "second RESPONSE")
        case .ended: return streamError(id, .streamClosed, "RESPONSE after end of stream")
        }
        guard payload.count <= localSettings.maxHeadSize else {
            return streamError(id, .headTooLarge, "response head over \(localSettings.maxHeadSize) bytes")
        }
        let head: TunnelResponseHead
        do {
            head = try TunnelFrameCodec.decodeResponseHead(payload)
        } catch {
            return streamError(id, .protocolError, error.reason)
        }
        guard head.status >= 200 else { return streamError(id, .protocolError, "informational response") }
        let end = flags.contains(.endStream)
        stream.inbound = end ? .ended : .body
        store(id, stream)
        emit(.response(id, head, endStream: end))
    }

    private mutating func handleData(_ id: StreamID, _ flags: TunnelFlags,
                                     _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        let n = payload.count
        // Every DATA byte counts against the tunnel window, even on a stream we then ignore.
        guard n <= tunnelReceiveWindow else { throw .flowControl }
        guard var stream = try knownStream(id) else {
            tunnelReceiveWindow -= n
            returnTunnelCredit(n)  // nobody will consume it
            return
        }
        tunnelReceiveWindow -= n
        switch stream.inbound {
        case .body: break
        case .head:
            returnTunnelCredit(n)
            return streamError(id, .protocolError, "DATA before RESPONSE")
        case .ended:
            returnTunnelCredit(n)
            return streamError(id, .streamClosed, "DATA after END_STREAM")
        }
        guard n <= stream.receiveWindow else { throw .flowControl }
        let end = flags.contains(.endStream)
        guard n > 0 || end else { return }  // empty DATA is only meaningful with END_STREAM
        stream.receiveWindow -= n
        stream.unconsumed += n
        if end { stream.inbound = .ended }
        store(id, stream)
        emit(.data(id, payload, endStream: end))
    }

    private mutating func handleReset(_ id: StreamID, _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        guard let (code, reason) = TunnelFrameCodec.decodeReset(payload) else { throw .protocolError("malformed RESET") }
        guard try knownStream(id) != nil else { return }
        remove(id)
        emit(.streamReset(id, code.normalized, reason: reason))
    }

    private mutating func handleWindowUpdate(_ id: StreamID, _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        var r = PayloadReader(payload)
        guard let raw = r.u32(), r.remaining == 0 else { throw .protocolError("malformed WINDOW_UPDATE") }
        let increment = Int(raw)
        guard increment >= 1, increment <= TunnelProtocol.maxWindow else {
            throw .protocolError("WINDOW_UPDATE increment \(increment)")
        }
        if id == 0 {
            let old = tunnelSendWindow
            guard increment <= TunnelProtocol.maxWindow - old else { throw .flowControl }
            tunnelSendWindow = old + increment
            if old == 0 { emit(.windowAvailable(0)) }
            return
        }
        guard var stream = try knownStream(id), stream.outbound != .ended else { return }
        let old = stream.sendWindow
        guard increment <= TunnelProtocol.maxWindow - old else { throw .flowControl }
        stream.sendWindow = old + increment
        streams[id] = stream
        // While the tunnel window is 0, the tunnel's own update will announce it.
        if old == 0, tunnelSendWindow > 0 { emit(.windowAvailable(id)) }
    }

    private mutating func handlePing(_ id: StreamID, _ flags: TunnelFlags, _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        var r = PayloadReader(payload)
        guard id == 0, let value = r.u64(), r.remaining == 0 else { throw .protocolError("malformed PING") }
        if flags.contains(.ack) {
            emit(.pong(value))
        } else {
            queuePing(value, ack: true)
            emit(.ping(value))
        }
    }

    private mutating func handleGoAway(_ id: StreamID, _ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) {
        guard id == 0, let (last, code, reason) = TunnelFrameCodec.decodeGoAway(payload) else {
            throw .protocolError("malformed GOAWAY")
        }
        goAwayReceived = min(goAwayReceived ?? last, last)
        emit(.goAway(lastStreamID: last, code: code.normalized, reason: reason))
        // Streams above the bridge's last id were not processed (it refuses them): safe to retry.
        if role == .relay {
            for stream in streams.keys.sorted() where stream > last {
                streamError(stream, .refusedStream, "not processed before GOAWAY")
            }
        }
    }

    /// The stream if it is in the bookkeeping; nil for one that is gone (its frames are
    /// ignored); throws for ids that were never opened.
    private func knownStream(_ id: StreamID) throws(TunnelProtocolError) -> Stream? {
        guard id != 0 else { throw .protocolError("stream frame on stream 0") }
        if let stream = streams[id] { return stream }
        guard id <= highestStreamID else { throw .protocolError("frame on unopened stream \(id)") }
        return nil
    }

    // MARK: - Sending

    /// Relay: ready, no GOAWAY either way, and under the bridge's MAX_STREAMS.
    public var canOpenStream: Bool {
        guard role == .relay, failure == nil, let peer = peerSettings else { return false }
        return goAwaySent == nil && goAwayReceived == nil && streams.count < peer.maxStreams
            && highestStreamID < StreamID.max
    }

    /// Relay: opens a stream with the next id. Nil if `!canOpenStream`, or the head can't be
    /// encoded (invalid, or over the bridge's MAX_HEAD_SIZE).
    public mutating func openStream(_ head: TunnelRequestHead, endStream: Bool) -> StreamID? {
        guard canOpenStream, let peer = peerSettings,
              let payload = try? TunnelFrameCodec.encodeRequestHead(head),
              payload.count <= headLimit(peer)
        else { return nil }
        highestStreamID += 1
        let id = highestStreamID
        streams[id] = Stream(inbound: .head, outbound: endStream ? .ended : .body,
                             sendWindow: peer.streamWindow, receiveWindow: localSettings.streamWindow)
        queueFrame(.open, endStream ? .endStream : [], id, payload)
        return id
    }

    /// Bridge: answers an open stream (once). A head that can't be sent (over the relay's
    /// MAX_HEAD_SIZE, or invalid) resets the stream instead and reports `.streamReset`.
    public mutating func sendResponse(_ id: StreamID, _ head: TunnelResponseHead, endStream: Bool) {
        guard role == .bridge, failure == nil, let peer = peerSettings,
              var stream = streams[id], stream.outbound == .head else { return }
        let payload: [UInt8]
        do {
            payload = try TunnelFrameCodec.encodeResponseHead(head)
        } catch {
            return streamError(id, .internalError, error.reason)
        }
        guard payload.count <= headLimit(peer) else {
            return streamError(id, .headTooLarge, "response head over \(headLimit(peer)) bytes")
        }
        stream.outbound = endStream ? .ended : .body
        queueFrame(.response, endStream ? .endStream : [], id, payload)
        store(id, stream)
    }

    /// min(stream send window, tunnel send window); 0 for unknown streams or ended directions.
    public func sendWindow(for id: StreamID) -> Int {
        guard failure == nil, let stream = streams[id], stream.outbound != .ended else { return 0 }
        return min(stream.sendWindow, tunnelSendWindow)
    }

    /// Queues DATA frames for as many bytes as the windows allow (split to fit the peer's
    /// MAX_MESSAGE_SIZE); returns how many it took. END_STREAM is set only if every byte was
    /// taken. Empty bytes with `endStream` send an empty DATA with END_STREAM. Takes nothing
    /// before the head went out, after the end, or for unknown streams.
    public mutating func sendData(_ id: StreamID, _ bytes: UnsafeRawBufferPointer, endStream: Bool) -> Int {
        guard failure == nil, let peer = peerSettings, var stream = streams[id], stream.outbound == .body else { return 0 }
        let count = min(bytes.count, stream.sendWindow, tunnelSendWindow)
        let finishing = endStream && count == bytes.count
        guard count > 0 || finishing else { return 0 }
        let maxPayload = peer.maxMessageSize - TunnelProtocol.frameHeaderSize
        var offset = 0
        repeat {
            let n = min(maxPayload, count - offset)
            let last = offset + n == count
            queueFrame(.data, last && finishing ? .endStream : [], id,
                       UnsafeRawBufferPointer(rebasing: bytes[offset ..< offset + n]))
            offset += n
        } while offset < count
        stream.sendWindow -= count
        tunnelSendWindow -= count
        if finishing { stream.outbound = .ended }
        store(id, stream)
        return count
    }

    public mutating func sendData(_ id: StreamID, _ bytes: ArraySlice<UInt8>, endStream: Bool) -> Int {
        bytes.withUnsafeBytes { sendData(id, $0, endStream: endStream) }
    }

    public mutating func sendData(_ id: StreamID, _ bytes: [UInt8], endStream: Bool) -> Int {
        bytes.withUnsafeBytes { sendData(id, $0, endStream: endStream) }
    }

    /// Resets the stream (both directions, at once) and returns the tunnel credit of its
    /// unconsumed DATA: drop whatever of it you still hold. For a finished stream whose DATA
    /// you still hold it only returns that credit; for unknown streams it does nothing.
    public mutating func reset(_ id: StreamID, code: TunnelErrorCode, reason: String = "") {
        guard failure == nil else { return }
        if streams[id] != nil {
            remove(id)
            queueReset(id, code, reason)
        } else if let held = lingering.removeValue(forKey: id) {
            if lingering.isEmpty { lingering = [:] }
            returnTunnelCredit(held)
        }
    }

    /// The caller passed `bytes` of this stream's DATA on (to a socket, to the local
    /// service): return the credit. WINDOW_UPDATEs are batched, per stream and for the
    /// tunnel, until a quarter of the respective window is owed. Works for streams that
    /// finished meanwhile (tunnel credit); ignored after a reset (credit already returned).
    public mutating func consumed(_ id: StreamID, bytes: Int) {
        guard failure == nil, bytes > 0 else { return }
        if var stream = streams[id] {
            let n = min(bytes, stream.unconsumed)
            guard n > 0 else { return }
            stream.unconsumed -= n
            // Once the peer's direction ended it sends no more: stream credit is moot.
            if stream.inbound == .body {
                stream.unreturned += n
                if stream.unreturned >= Self.batchThreshold(localSettings.streamWindow) {
                    queueWindowUpdate(id, stream.unreturned)
                    stream.receiveWindow += stream.unreturned
                    stream.unreturned = 0
                }
            }
            streams[id] = stream
            returnTunnelCredit(n)
        } else if let held = lingering[id] {
            let n = min(bytes, held)
            if n == held {
                lingering[id] = nil
                if lingering.isEmpty { lingering = [:] }
            } else {
                lingering[id] = held - n
            }
            returnTunnelCredit(n)
        }
    }

    public mutating func ping(_ payload: UInt64) {
        guard failure == nil else { return }
        queuePing(payload, ack: false)
    }

    /// No new streams on this tunnel: the relay stops opening, the bridge refuses OPENs above
    /// the last id (REFUSED_STREAM). Streams already open finish normally.
    public mutating func goAway(code: TunnelErrorCode = .noError, reason: String = "") {
        guard failure == nil else { return }
        let last = min(goAwaySent ?? highestStreamID, highestStreamID)
        goAwaySent = last
        queueFrame(.goAway, [], 0, TunnelFrameCodec.encodeGoAway(lastStreamID: last, code: code, reason: reason))
    }

    // MARK: - Outbound

    public var hasOutbound: Bool { outboundIndex < outbound.count }

    /// One WebSocket message's worth of queued frames, or nil. Never above the peer's
    /// MAX_MESSAGE_SIZE (before its HELLO: 1,024, the smallest a peer may announce).
    public mutating func takeOutboundMessage() -> [UInt8]? {
        guard outboundIndex < outbound.count else { return nil }
        let message = outbound[outboundIndex]
        outbound[outboundIndex] = []
        outboundIndex += 1
        if outboundIndex == outbound.count {
            outbound = []
            outboundIndex = 0
        }
        return message
    }

    /// Heap bytes held by the multiplexer's own buffers and tables (events, outbound,
    /// streams). Zero for an idle tunnel; for memory accounting and tests.
    public var retainedCapacity: Int {
        var n = events.capacity * MemoryLayout<TunnelEvent>.stride + outbound.capacity * MemoryLayout<[UInt8]>.stride
        for message in outbound { n += message.capacity }
        n += streams.capacity * (MemoryLayout<StreamID>.stride + MemoryLayout<Stream>.stride)
        n += lingering.capacity * (MemoryLayout<StreamID>.stride + MemoryLayout<Int>.stride)
        return n
    }

    // MARK: - Internals

    private var messageLimit: Int { peerSettings?.maxMessageSize ?? TunnelProtocol.minMessageSize }

    /// A head must fit both MAX_HEAD_SIZE and a single message.
    private func headLimit(_ peer: TunnelSettings) -> Int {
        min(peer.maxHeadSize, peer.maxMessageSize - TunnelProtocol.frameHeaderSize)
    }

    private static func batchThreshold(_ window: Int) -> Int { max(1, window / 4) }

    private mutating func emit(_ event: TunnelEvent) { events.append(event) }

    /// Writes back a stream's state, or retires it once both directions ended (DATA the
    /// caller still holds then lingers until consumed).
    private mutating func store(_ id: StreamID, _ stream: Stream) {
        guard stream.inbound == .ended, stream.outbound == .ended else {
            streams[id] = stream
            return
        }
        streams[id] = nil
        if streams.isEmpty { streams = [:] }  // release the table's storage
        if stream.unconsumed > 0 { lingering[id] = stream.unconsumed }
    }

    /// Drops a reset stream; the caller discards its DATA, so its credit returns now.
    private mutating func remove(_ id: StreamID) {
        guard let stream = streams.removeValue(forKey: id) else { return }
        if streams.isEmpty { streams = [:] }
        returnTunnelCredit(stream.unconsumed)
    }

    /// A stream-level protocol error: reset it, tell the peer and the caller.
    private mutating func streamError(_ id: StreamID, _ code: TunnelErrorCode, _ reason: String) {
        remove(id)
        queueReset(id, code, reason)
        emit(.streamReset(id, code, reason: reason))
    }

    private mutating func returnTunnelCredit(_ n: Int) {
        tunnelUnreturned += n
        guard tunnelUnreturned > 0, tunnelUnreturned >= Self.batchThreshold(localSettings.tunnelWindow) else { return }
        queueWindowUpdate(0, tunnelUnreturned)
        tunnelReceiveWindow += tunnelUnreturned
        tunnelUnreturned = 0
    }

    private mutating func fail(_ error: TunnelProtocolError) {
        failure = error
        streams = [:]
        lingering = [:]
        events = []
        eventIndex = 0
        outbound = []
        outboundIndex = 0
    }

    private mutating func queueReset(_ id: StreamID, _ code: TunnelErrorCode, _ reason: String) {
        queueFrame(.reset, [], id, TunnelFrameCodec.encodeReset(code: code, reason: reason))
    }

    private mutating func queueWindowUpdate(_ id: StreamID, _ increment: Int) {
        var payload: [UInt8] = []
        payload.appendU32(UInt32(truncatingIfNeeded: increment))
        queueFrame(.windowUpdate, [], id, payload)
    }

    private mutating func queuePing(_ value: UInt64, ack: Bool) {
        var payload: [UInt8] = []
        payload.appendU64(value)
        queueFrame(.ping, ack ? .ack : [], 0, payload)
    }

    private mutating func queueFrame(_ type: TunnelFrameType, _ flags: TunnelFlags, _ id: StreamID, _ payload: [UInt8]) {
        payload.withUnsafeBytes { queueFrame(type, flags, id, $0) }
    }

    /// Appends the frame to the last queued message if it fits the peer's limit, else starts
    /// a new message sized for it (a full-size DATA frame is then copied exactly once).
    private mutating func queueFrame(_ type: TunnelFrameType, _ flags: TunnelFlags, _ id: StreamID,
                                     _ payload: UnsafeRawBufferPointer) {
        let size = TunnelProtocol.frameHeaderSize + payload.count
        let limit = messageLimit
        if outboundIndex < outbound.count, outbound[outbound.count - 1].count + size <= limit {
            let last = outbound.count - 1
            let needed = outbound[last].count + size
            if outbound[last].capacity < needed {
                // Geometric growth, capped at the limit, so many small frames stay linear.
                outbound[last].reserveCapacity(max(needed, min(outbound[last].capacity * 2, limit)))
            }
            TunnelFrameCodec.encode(type: type, flags: flags, stream: id, payload: payload, into: &outbound[last])
        } else {
            var message: [UInt8] = []
            message.reserveCapacity(size)
            TunnelFrameCodec.encode(type: type, flags: flags, stream: id, payload: payload, into: &message)
            outbound.append(message)
        }
    }

    // MARK: - Testing

    /// Flow-control bookkeeping checks for tests and fuzzers; nil if everything holds.
    @_spi(Testing)
    public func invariantViolation() -> String? {
        let maxWindow = TunnelProtocol.maxWindow
        guard (0 ... maxWindow).contains(tunnelSendWindow) else { return "tunnel send window \(tunnelSendWindow)" }
        guard (0 ... maxWindow).contains(tunnelReceiveWindow) else { return "tunnel receive window \(tunnelReceiveWindow)" }
        guard failure == nil else { return nil }
        // Every byte of tunnel credit is either still grantable, with the caller, or owed.
        var held = tunnelUnreturned
        for (id, stream) in streams {
            guard id != 0, id <= highestStreamID else { return "stream id \(id) above highest \(highestStreamID)" }
            guard (0 ... maxWindow).contains(stream.sendWindow) else { return "stream \(id) send window \(stream.sendWindow)" }
            guard stream.receiveWindow >= 0, stream.unconsumed >= 0, stream.unreturned >= 0 else {
                return "stream \(id) negative receive bookkeeping"
            }
            guard !(stream.inbound == .ended && stream.outbound == .ended) else { return "stream \(id) finished but kept" }
            if stream.inbound == .body,
               stream.receiveWindow + stream.unconsumed + stream.unreturned != localSettings.streamWindow {
                return "stream \(id) receive credit leaked"
            }
            held += stream.unconsumed
        }
        for (id, bytes) in lingering {
            guard bytes > 0, streams[id] == nil else { return "lingering stream \(id) bytes \(bytes)" }
            held += bytes
        }
        guard tunnelReceiveWindow + held == localSettings.tunnelWindow else {
            return "tunnel receive credit leaked: window \(tunnelReceiveWindow) + held \(held) != \(localSettings.tunnelWindow)"
        }
        return nil
    }
}

/// Sans-I/O RFC 6455 connection (after the HTTP upgrade), in the spirit of Python's wsproto:
/// feed received bytes with `receive`, drain `nextEvent()`, queue messages with `send`, and
/// write whatever `takeOutbound()` / `appendOutbound(into:)` hands back.
///
/// Parsing is eager and streaming: `receive` copies payload bytes once, from the caller's
/// buffer into the message being assembled, and unmasks/validates that region while it is
/// still in cache (nothing is re-scanned later). `maxMessageSize` is enforced from frame
/// headers before any payload is buffered; automatic replies (pong, close) are queued at once.
/// Only a partial frame header (≤14 bytes) is kept between calls, inline, so an idle
/// connection holds no heap storage at all (see `retainedCapacity`).
public struct WebSocketConnection: Sendable {
    public let role: WebSocketRole
    /// Upper bound on a whole message (sum of its fragments); larger ones fail with 1009.
    public let maxMessageSize: Int
    public let autoReplyPing: Bool
    public let autoReplyClose: Bool
    public private(set) var state: WebSocketState = .open

    // Parser state.
    private enum Phase: UInt8, Sendable { case header, payload, stopped }
    private var phase: Phase = .header
    /// Partial frame header, inline so splitting headers across reads never allocates.
    private var header: (UInt64, UInt64) = (0, 0)
    private var headerCount = 0
    private var frameOpcode: WebSocketOpcode = .continuation
    private var frameFin = false
    private var frameMasked = false
    private var frameMaskKey: UInt32 = 0
    private var frameRemaining = 0
    private var frameOffset = 0
    // Message being assembled.
    private var inMessage = false
    private var messageIsText = false
    private var message: [UInt8] = []
    private var utf8 = UTF8Validator()
    /// Payload of the current control frame (≤125 bytes).
    private var control: [UInt8] = []
    // Event queue, drained by nextEvent(); storage released when empty.
    private var events: [WebSocketEvent] = []
    private var eventIndex = 0
    private var outbound: [UInt8] = []

    /// - Parameters:
    ///   - autoReplyPing: answer pings with a pong echoing the payload.
    ///   - autoReplyClose: answer the peer's close with a close echoing its code (1000 if it had
    ///     none). When false the state becomes `.closeReceived` and the caller must `close()`.
    public init(role: WebSocketRole, maxMessageSize: Int = 16 * 1024 * 1024, autoReplyPing: Bool = true,
                autoReplyClose: Bool = true) {
        self.role = role
        self.maxMessageSize = max(0, maxMessageSize)
        self.autoReplyPing = autoReplyPing
        self.autoReplyClose = autoReplyClose
    }

    /// True once the closing handshake is complete or the connection failed (a protocol-error
    /// close is queued): flush outbound, then close the transport. RFC 6455 §7.1.1 wants the
    /// server to close TCP first; a client may wait briefly for the server's FIN.
    public var shouldCloseTransport: Bool { state == .closed }

    // MARK: - Receiving

    public mutating func receive<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let done: Void? = bytes.withContiguousStorageIfAvailable { receive(UnsafeRawBufferPointer($0)) }
        if done == nil {
            let copy = Array(bytes)
            copy.withUnsafeBytes { receive($0) }
        }
    }

    /// Parses as much as possible; resulting events are queued for `nextEvent()`. Input after
    /// the peer's close or after a protocol error is ignored.
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        let end = bytes.count
        var pos = 0
        while pos < end {
            switch phase {
            case .header:
                pos += consumeHeader(UnsafeRawBufferPointer(start: base + pos, count: end - pos))
            case .payload:
                let n = min(frameRemaining, end - pos)
                consumePayload(UnsafeRawBufferPointer(start: base + pos, count: n))
                pos += n
            case .stopped:
                return
            }
        }
    }

    /// Next event, or nil when more bytes are needed (or the connection is closed).
    public mutating func nextEvent() -> WebSocketEvent? {
        guard eventIndex < events.count else { return nil }
        let event = events[eventIndex]
        // Drop the queue's reference so the caller owns the payload uniquely (no COW copy).
        events[eventIndex] = .pong([])
        eventIndex += 1
        if eventIndex == events.count {
            events = []
            eventIndex = 0
        }
        return event
    }

    /// Number of events waiting in `nextEvent()`.
    public var pendingEventCount: Int { events.count - eventIndex }

    /// No frame or fragmented message is half received: the byte stream could continue in a
    /// fresh connection (see `WebSocketFrameScanner`).
    public var isAtMessageBoundary: Bool { phase == .header && headerCount == 0 && !inMessage }

    /// Copies header bytes into the inline buffer; validates as soon as enough is known.
    /// Returns the number of bytes consumed.
    private mutating func consumeHeader(_ input: UnsafeRawBufferPointer) -> Int {
        var used = 0
        if headerCount < 2 {
            used = fillHeader(upTo: 2, from: input)
            if headerCount < 2 { return used }
            // Fail fast on the first two bytes, before waiting for length and key.
            guard checkFirstTwoBytes() else { return used }
        }
        let needed = headerLength
        if headerCount < needed {
            used += fillHeader(upTo: needed, from: UnsafeRawBufferPointer(rebasing: input[used...]))
            if headerCount < needed { return used }
        }
        finishHeader()
        return used
    }

    private mutating func fillHeader(upTo count: Int, from input: UnsafeRawBufferPointer) -> Int {
        let take = min(count - headerCount, input.count)
        guard take > 0, let src = input.baseAddress else { return 0 }
        let at = headerCount
        withUnsafeMutableBytes(of: &header) { h in
            (h.baseAddress.unsafelyUnwrapped + at).copyMemory(from: src, byteCount: take)
        }
        headerCount += take
        return take
    }

    private func headerByte(_ i: Int) -> UInt8 {
        withUnsafeBytes(of: header) { $0[i] }
    }

    /// 2 + extended length (0/2/8) + mask key (0/4), known once the first two bytes are in.
    private var headerLength: Int {
        let len7 = headerByte(1) & 0x7F
        return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (frameMasked ? 4 : 0)
    }

    private mutating func checkFirstTwoBytes() -> Bool {
        let b0 = headerByte(0), b1 = headerByte(1)
        // No extension is ever negotiated, so any RSV bit is a violation.
        guard b0 & 0x70 == 0 else { return fail(.protocolError, "reserved bits set") }
        guard let opcode = WebSocketOpcode(rawValue: b0 & 0x0F) else {
            return fail(.protocolError, "unknown opcode \(b0 & 0x0F)")
        }
        let fin = b0 & 0x80 != 0
        let masked = b1 & 0x80 != 0
        let len7 = b1 & 0x7F
        switch role {
        case .server: guard masked else { return fail(.protocolError, "client frame not masked") }
        case .client: guard !masked else { return fail(.protocolError, "server frame masked") }
        }
        if opcode.isControl {
            guard fin else { return fail(.protocolError, "fragmented control frame") }
            guard len7 <= 125 else { return fail(.protocolError, "control frame too long") }
            guard !(opcode == .close && len7 == 1) else { return fail(.protocolError, "close payload of 1 byte") }
        } else if opcode == .continuation {
            guard inMessage else { return fail(.protocolError, "continuation without a message") }
        } else {
            guard !inMessage else { return fail(.protocolError, "new message inside a fragmented one") }
        }
        if !opcode.isControl, len7 < 126, Int(len7) > maxMessageSize - message.count {
            return fail(.messageTooBig, "message too big")
        }
        frameOpcode = opcode
        frameFin = fin
        frameMasked = masked
        return true
    }

    private mutating func finishHeader() {
        headerCount = 0
        let (length, keyOffset): (UInt64, Int) = withUnsafeBytes(of: header) { h in
            switch h[1] & 0x7F {
            case 126: return (UInt64(UInt16(bigEndian: h.loadUnaligned(fromByteOffset: 2, as: UInt16.self))), 4)
            case 127: return (UInt64(bigEndian: h.loadUnaligned(fromByteOffset: 2, as: UInt64.self)), 10)
            case let len7: return (UInt64(len7), 2)
            }
        }
        if keyOffset == 4, length < 126 { fail(.protocolError, "non-minimal length encoding"); return }
        if keyOffset == 10 {
            guard length >> 63 == 0 else { fail(.protocolError, "length with high bit set"); return }
            guard length > 0xFFFF else { fail(.protocolError, "non-minimal length encoding"); return }
        }
        if !frameOpcode.isControl, length > UInt64(maxMessageSize - message.count) {
            fail(.messageTooBig, "message too big")
            return
        }
        frameMaskKey = frameMasked
            ? withUnsafeBytes(of: header) { UInt32(bigEndian: $0.loadUnaligned(fromByteOffset: keyOffset, as: UInt32.self)) }
            : 0
        frameRemaining = Int(length)  // bounded by maxMessageSize or 125 above
        frameOffset = 0
        if frameOpcode.isControl {
            control = []
            control.reserveCapacity(frameRemaining)
        } else {
            if !inMessage {
                inMessage = true
                messageIsText = frameOpcode == .text
                utf8 = UTF8Validator()
            }
            reserveMessageCapacity(forFrame: frameRemaining)
        }
        if frameRemaining == 0 {
            completeFrame()
        } else {
            phase = .payload
        }
    }

    private mutating func consumePayload(_ chunk: UnsafeRawBufferPointer) {
        let n = chunk.count
        let masked = frameMasked, key = frameMaskKey, offset = frameOffset
        if frameOpcode.isControl {
            let start = control.count
            control.append(contentsOf: chunk)
            if masked {
                control.withUnsafeMutableBytes {
                    WebSocketFrameCodec.applyMask(UnsafeMutableRawBufferPointer(rebasing: $0[start...]), key: key, offset: offset)
                }
            }
        } else {
            let start = message.count
            message.append(contentsOf: chunk)
            let valid: Bool = message.withUnsafeMutableBytes {
                let region = UnsafeMutableRawBufferPointer(rebasing: $0[start...])
                if masked { WebSocketFrameCodec.applyMask(region, key: key, offset: offset) }
                return !messageIsText || utf8.validate(UnsafeRawBufferPointer(region))
            }
            guard valid else { fail(.invalidPayloadData, "invalid UTF-8 in text message"); return }
        }
        frameOffset += n
        frameRemaining -= n
        if frameRemaining == 0 { completeFrame() }
    }

    /// Reserves room for a data frame's whole payload when its header arrives (bounded by
    /// `maxMessageSize`), so a message is allocated once at its final size instead of being
    /// regrown and copied as reads arrive: large fresh allocations cost page faults, which
    /// dominate the data path. Untouched pages are never faulted in, so a header that claims
    /// more than is sent costs address space, not resident memory. Across fragments capacity
    /// grows geometrically so many small fragments don't reallocate quadratically.
    private mutating func reserveMessageCapacity(forFrame length: Int) {
        let needed = message.count + length
        guard message.capacity < needed else { return }
        message.reserveCapacity(frameFin ? needed : max(needed, min(message.capacity * 2, maxMessageSize)))
    }

    private mutating func completeFrame() {
        phase = .header
        switch frameOpcode {
        case .continuation, .text, .binary:
            guard frameFin else { return }
            if messageIsText {
                guard utf8.isComplete else { fail(.invalidPayloadData, "truncated UTF-8 in text message"); return }
                events.append(.text(String(decoding: message, as: UTF8.self)))
            } else {
                events.append(.binary(message))
            }
            message = []
            inMessage = false
        case .ping:
            let payload = control
            control = []
            events.append(.ping(payload))
            if autoReplyPing, canSend { queueFrame(.pong, payload) }
        case .pong:
            events.append(.pong(control))
            control = []
        case .close:
            handleClose()
        }
    }

    private mutating func handleClose() {
        let payload = control
        control = []
        var code: WebSocketCloseCode?
        var reason = ""
        if payload.count >= 2 {
            let c = WebSocketCloseCode(rawValue: UInt16(payload[0]) << 8 | UInt16(payload[1]))
            guard c.isValidOnWire else { fail(.protocolError, "invalid close code \(c.rawValue)"); return }
            let valid = payload.withUnsafeBytes { UTF8Validator.isValid(UnsafeRawBufferPointer(rebasing: $0[2...])) }
            guard valid else { fail(.invalidPayloadData, "invalid UTF-8 in close reason"); return }
            code = c
            reason = String(decoding: payload[2...], as: UTF8.self)
        }
        // Nothing may follow a close frame; a half-received message is dropped.
        stopParsing()
        switch state {
        case .open:
            if autoReplyClose {
                queueClose(code ?? .normalClosure, reason: "")
                state = .closed
            } else {
                state = .closeReceived
            }
        case .closeSent:
            state = .closed
        case .closeReceived, .closed:
            break
        }
        events.append(.close(code: code, reason: reason))
    }

    /// Fails the connection: queue a close with `code` (if we haven't sent one), report it, and
    /// ignore all further input. Returns false so header checks can `return fail(...)`.
    @discardableResult
    private mutating func fail(_ code: WebSocketCloseCode, _ reason: String) -> Bool {
        guard phase != .stopped else { return false }
        stopParsing()
        if state == .open || state == .closeReceived { queueClose(code, reason: reason) }
        state = .closed
        events.append(.protocolError(code, reason: reason))
        return false
    }

    private mutating func stopParsing() {
        phase = .stopped
        headerCount = 0
        inMessage = false
        message = []
        control = []
    }

    // MARK: - Sending

    /// True while messages may still be queued (before our close frame).
    public var canSend: Bool { state == .open || state == .closeReceived }

    public mutating func send(text: String) { send(text: text, fragmentSize: 0) }

    /// Sends `text` split into frames of at most `fragmentSize` payload bytes (0: one frame).
    /// Splits may fall inside a UTF-8 sequence; that is legal (validation is per message).
    public mutating func send(text: String, fragmentSize: Int) {
        var text = text
        text.withUTF8 { sendMessage(.text, UnsafeRawBufferPointer($0), fragmentSize: fragmentSize) }
    }

    public mutating func send(binary: [UInt8]) { send(binary: binary, fragmentSize: 0) }

    public mutating func send(binary: [UInt8], fragmentSize: Int) {
        binary.withUnsafeBytes { sendMessage(.binary, $0, fragmentSize: fragmentSize) }
    }

    public mutating func send(binary: UnsafeRawBufferPointer) { sendMessage(.binary, binary, fragmentSize: 0) }

    public mutating func send(binary: UnsafeRawBufferPointer, fragmentSize: Int) {
        sendMessage(.binary, binary, fragmentSize: fragmentSize)
    }

    /// Control payloads are limited to 125 bytes; longer ones are truncated.
    public mutating func send(ping payload: [UInt8] = []) {
        guard canSend else { return }
        queueFrame(.ping, payload)
    }

    public mutating func send(pong payload: [UInt8] = []) {
        guard canSend else { return }
        queueFrame(.pong, payload)
    }

    /// Starts (or, after the peer's close with `autoReplyClose: false`, completes) the closing
    /// handshake. Later sends are ignored. The reason is cut to 123 bytes at a character
    /// boundary; a code that can't go on the wire (e.g. 1005) is sent as an empty close payload.
    public mutating func close(code: WebSocketCloseCode = .normalClosure, reason: String = "") {
        switch state {
        case .open:
            queueClose(code, reason: reason)
            state = .closeSent
        case .closeReceived:
            queueClose(code, reason: reason)
            state = .closed
        case .closeSent, .closed:
            break
        }
    }

    private mutating func sendMessage(_ opcode: WebSocketOpcode, _ payload: UnsafeRawBufferPointer, fragmentSize: Int) {
        guard canSend else { return }
        let n = payload.count
        guard fragmentSize > 0, n > fragmentSize, let base = payload.baseAddress else {
            encodeFrame(opcode, payload, fin: true)
            return
        }
        let frames = (n + fragmentSize - 1) / fragmentSize
        if outbound.isEmpty { outbound.reserveCapacity(n + frames * WebSocketFrameCodec.maxHeaderSize) }
        var pos = 0
        var op = opcode
        while pos < n {
            let size = min(fragmentSize, n - pos)
            encodeFrame(op, UnsafeRawBufferPointer(start: base + pos, count: size), fin: pos + size == n)
            op = .continuation
            pos += size
        }
    }

    private mutating func queueFrame(_ opcode: WebSocketOpcode, _ payload: [UInt8]) {
        payload.withUnsafeBytes { encodeFrame(opcode, UnsafeRawBufferPointer(rebasing: $0.prefix(125)), fin: true) }
    }

    private mutating func queueClose(_ code: WebSocketCloseCode, reason: String) {
        guard code.isValidOnWire else {
            encodeFrame(.close, UnsafeRawBufferPointer(start: nil, count: 0), fin: true)
            return
        }
        var payload: [UInt8] = [UInt8(truncatingIfNeeded: code.rawValue >> 8), UInt8(truncatingIfNeeded: code.rawValue)]
        var utf8 = Array(reason.utf8)
        if utf8.count > 123 {
            // Cut before a continuation byte so the reason stays valid UTF-8.
            var cut = 123
            while cut > 0, utf8[cut] & 0xC0 == 0x80 { cut -= 1 }
            utf8.removeSubrange(cut...)
        }
        payload += utf8
        payload.withUnsafeBytes { encodeFrame(.close, $0, fin: true) }
    }

    private mutating func encodeFrame(_ opcode: WebSocketOpcode, _ payload: UnsafeRawBufferPointer, fin: Bool) {
        let key: UInt32? = role == .client ? Self.randomMaskKey() : nil
        WebSocketFrameCodec.encode(opcode: opcode, payload: payload, fin: fin, maskKey: key, into: &outbound)
    }

    /// RFC 6455 §5.3 wants unpredictable mask keys, hence the system CSPRNG.
    private static func randomMaskKey() -> UInt32 {
        var rng = SystemRandomNumberGenerator()
        return UInt32(truncatingIfNeeded: rng.next())
    }

    // MARK: - Outbound

    /// Heap bytes currently reserved by the codec's own buffers (partial message, control
    /// payload, event queue, outbound). Zero for an idle connection; for memory accounting.
    public var retainedCapacity: Int {
        message.capacity + control.capacity + outbound.capacity + events.capacity * MemoryLayout<WebSocketEvent>.stride
    }

    public var hasOutbound: Bool { !outbound.isEmpty }
    public var outboundCount: Int { outbound.count }

    /// Bytes to write to the transport, in order. Hands over the storage (no copy); the
    /// connection keeps nothing.
    public mutating func takeOutbound() -> [UInt8] {
        let bytes = outbound
        outbound = []
        return bytes
    }

    /// Appends pending bytes to the caller's write buffer and releases ours. When `buffer` is
    /// empty it simply takes over our storage (no copy).
    public mutating func appendOutbound(into buffer: inout [UInt8]) {
        if buffer.isEmpty {
            buffer = outbound
        } else {
            buffer.append(contentsOf: outbound)
        }
        outbound = []
    }
}

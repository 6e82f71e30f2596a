import TetherHTTP

/// Stateless frame and payload encoding/decoding (§2–§4). `TunnelMultiplexer` builds on it;
/// tools, tests and fuzzers use it directly, e.g. to produce invalid input.
public enum TunnelFrameCodec {
    // MARK: Frames

    /// Appends one frame (10-byte header, then `payload`) to `out`.
    public static func encode(type: TunnelFrameType, flags: TunnelFlags = [], stream: StreamID,
                              payload: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        encode(rawType: type.rawValue, flags: flags, stream: stream, payload: payload, into: &out)
    }

    public static func encode(type: TunnelFrameType, flags: TunnelFlags = [], stream: StreamID,
                              payload: [UInt8], into out: inout [UInt8]) {
        payload.withUnsafeBytes { encode(rawType: type.rawValue, flags: flags, stream: stream, payload: $0, into: &out) }
    }

    public static func encode(type: TunnelFrameType, flags: TunnelFlags = [], stream: StreamID,
                              payload: ArraySlice<UInt8>, into out: inout [UInt8]) {
        payload.withUnsafeBytes { encode(rawType: type.rawValue, flags: flags, stream: stream, payload: $0, into: &out) }
    }

    /// Any type byte, including ones this version doesn't know (for extensibility tests).
    public static func encode(rawType: UInt8, flags: TunnelFlags, stream: StreamID,
                              payload: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        // Header built on the stack and appended in one go.
        var header: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &header) { h in
            h.storeBytes(of: UInt32(truncatingIfNeeded: payload.count).bigEndian, toByteOffset: 0, as: UInt32.self)
            h[4] = rawType
            h[5] = flags.rawValue
            h.storeBytes(of: stream.bigEndian, toByteOffset: 6, as: UInt32.self)
        }
        withUnsafeBytes(of: &header) { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[0 ..< TunnelProtocol.frameHeaderSize])) }
        if !payload.isEmpty { out.append(contentsOf: payload) }
    }

    /// Walks the frames of one message. `type` is nil for a type this version doesn't know
    /// (the multiplexer ignores those). A message that ends inside a frame is an error (4003);
    /// frames before it have already been passed to `body`.
    public static func forEachFrame(
        in message: ArraySlice<UInt8>,
        _ body: (TunnelFrameType?, TunnelFlags, StreamID, ArraySlice<UInt8>) throws(TunnelProtocolError) -> Void
    ) throws(TunnelProtocolError) {
        var reader = PayloadReader(message)
        while reader.remaining > 0 {
            guard reader.remaining >= TunnelProtocol.frameHeaderSize,
                  let length = reader.u32(), let type = reader.u8(), let flags = reader.u8(), let stream = reader.u32(),
                  let payload = reader.take(Int(length))
            else { throw .protocolError("truncated frame") }
            try body(TunnelFrameType(rawValue: type), TunnelFlags(rawValue: flags), stream, payload)
        }
    }

    // MARK: HELLO

    /// HELLO payload (§3): every setting, then the agent cut to 256 bytes.
    public static func encodeHello(version: UInt16 = TunnelProtocol.version, settings: TunnelSettings,
                                   agent: String) -> [UInt8] {
        let values: [(TunnelSettings.ID, Int)] = [
            (.streamWindow, settings.streamWindow), (.tunnelWindow, settings.tunnelWindow),
            (.maxStreams, settings.maxStreams), (.maxMessageSize, settings.maxMessageSize),
            (.maxHeadSize, settings.maxHeadSize), (.pingInterval, settings.pingIntervalMilliseconds),
        ]
        var out: [UInt8] = []
        out.reserveCapacity(4 + 6 * values.count + TunnelProtocol.maxAgentSize)
        out.appendU16(version)
        out.appendU16(UInt16(values.count))
        for (id, value) in values {
            out.appendU16(id.rawValue)
            out.appendU32(UInt32(clamping: value))
        }
        out.append(contentsOf: utf8Prefix(agent, maxBytes: TunnelProtocol.maxAgentSize))
        return out
    }

    /// Decodes a HELLO payload. A version other than 1 throws 4002 before anything else is
    /// looked at (a later version may lay out the rest differently); malformed settings,
    /// windows above 2^31−1, MAX_MESSAGE_SIZE below 1,024 or an agent over 256 bytes throw 4003.
    public static func decodeHello(_ payload: ArraySlice<UInt8>) throws(TunnelProtocolError)
        -> (version: UInt16, settings: TunnelSettings, agent: String) {
        var r = PayloadReader(payload)
        guard let version = r.u16() else { throw .protocolError("malformed HELLO") }
        guard version == TunnelProtocol.version else { throw .unsupportedVersion }
        guard let count = r.u16(), Int(count) * 6 <= r.remaining else { throw .protocolError("malformed HELLO") }
        var settings = TunnelSettings()
        for _ in 0 ..< count {
            guard let rawID = r.u16(), let raw = r.u32() else { throw .protocolError("malformed HELLO") }
            let value = Int(raw)
            switch TunnelSettings.ID(rawValue: rawID) {
            case .streamWindow?:
                guard value <= TunnelProtocol.maxWindow else { throw .protocolError("window above 2^31-1 in HELLO") }
                settings.streamWindow = value
            case .tunnelWindow?:
                guard value <= TunnelProtocol.maxWindow else { throw .protocolError("window above 2^31-1 in HELLO") }
                settings.tunnelWindow = value
            case .maxStreams?: settings.maxStreams = value
            case .maxMessageSize?:
                guard value >= TunnelProtocol.minMessageSize else { throw .protocolError("MAX_MESSAGE_SIZE below 1024") }
                settings.maxMessageSize = value
            case .maxHeadSize?: settings.maxHeadSize = value
            case .pingInterval?: settings.pingIntervalMilliseconds = value
            case nil: break  // unknown settings are ignored
            }
        }
        let agent = r.rest()
        guard agent.count <= TunnelProtocol.maxAgentSize else { throw .protocolError("HELLO agent over 256 bytes") }
        return (version, settings, String(decoding: agent, as: UTF8.self))
    }

    public static func decodeHello(_ payload: [UInt8]) throws(TunnelProtocolError)
        -> (version: UInt16, settings: TunnelSettings, agent: String) {
        try decodeHello(payload[...])
    }

    // MARK: Heads

    /// OPEN payload (§4). Throws (4003) if a field does not fit its length prefix or is not
    /// valid HTTP (method and names must be tokens; target and values free of CTLs), so we
    /// never send what the peer must reject.
    public static func encodeRequestHead(_ head: TunnelRequestHead) throws(TunnelProtocolError) -> [UInt8] {
        var out: [UInt8] = []
        try encodeRequestHead(head, into: &out)
        return out
    }

    public static func encodeRequestHead(_ head: TunnelRequestHead, into out: inout [UInt8]) throws(TunnelProtocolError) {
        let method = head.method.utf8, target = head.target.utf8
        guard method.count <= 0xFF, target.count <= 0xFFFF else { throw .protocolError("request head field too long") }
        guard isToken(method) else { throw .protocolError("invalid method") }
        guard isValidTarget(target) else { throw .protocolError("invalid target") }
        try checkHeaders(head.headers)
        out.reserveCapacity(out.count + 5 + method.count + target.count + headersSize(head.headers))
        out.append(UInt8(method.count))
        out.append(contentsOf: method)
        out.appendU16(UInt16(target.count))
        out.append(contentsOf: target)
        appendHeaders(head.headers, into: &out)
    }

    public static func decodeRequestHead(_ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) -> TunnelRequestHead {
        var r = PayloadReader(payload)
        guard let methodCount = r.u8(), let method = r.take(Int(methodCount)),
              let targetCount = r.u16(), let target = r.take(Int(targetCount))
        else { throw .protocolError("truncated request head") }
        guard isToken(method) else { throw .protocolError("invalid method") }
        guard isValidTarget(target) else { throw .protocolError("invalid target") }
        let headers = try readHeaders(&r)
        return TunnelRequestHead(method: String(decoding: method, as: UTF8.self),
                                 target: String(decoding: target, as: UTF8.self), headers: headers)
    }

    public static func decodeRequestHead(_ payload: [UInt8]) throws(TunnelProtocolError) -> TunnelRequestHead {
        try decodeRequestHead(payload[...])
    }

    /// RESPONSE payload (§4). Throws (4003) for a status outside 100…599 or invalid headers.
    public static func encodeResponseHead(_ head: TunnelResponseHead) throws(TunnelProtocolError) -> [UInt8] {
        var out: [UInt8] = []
        try encodeResponseHead(head, into: &out)
        return out
    }

    public static func encodeResponseHead(_ head: TunnelResponseHead, into out: inout [UInt8]) throws(TunnelProtocolError) {
        guard (100 ... 599).contains(head.status) else { throw .protocolError("invalid status \(head.status)") }
        try checkHeaders(head.headers)
        out.reserveCapacity(out.count + 2 + headersSize(head.headers))
        out.appendU16(UInt16(head.status))
        appendHeaders(head.headers, into: &out)
    }

    public static func decodeResponseHead(_ payload: ArraySlice<UInt8>) throws(TunnelProtocolError) -> TunnelResponseHead {
        var r = PayloadReader(payload)
        guard let status = r.u16() else { throw .protocolError("truncated response head") }
        guard (100 ... 599).contains(status) else { throw .protocolError("invalid status \(status)") }
        return TunnelResponseHead(status: Int(status), headers: try readHeaders(&r))
    }

    public static func decodeResponseHead(_ payload: [UInt8]) throws(TunnelProtocolError) -> TunnelResponseHead {
        try decodeResponseHead(payload[...])
    }

    // MARK: Control payloads

    /// RESET payload: u32 code, reason cut to 256 bytes.
    static func encodeReset(code: TunnelErrorCode, reason: String) -> [UInt8] {
        var out: [UInt8] = []
        out.appendU32(code.rawValue)
        out.append(contentsOf: utf8Prefix(reason, maxBytes: TunnelProtocol.maxReasonSize))
        return out
    }

    static func decodeReset(_ payload: ArraySlice<UInt8>) -> (TunnelErrorCode, String)? {
        var r = PayloadReader(payload)
        guard let code = r.u32() else { return nil }
        return (TunnelErrorCode(rawValue: code), String(decoding: r.rest(), as: UTF8.self))
    }

    /// GOAWAY payload: u32 last stream id, u32 code, reason cut to 256 bytes.
    static func encodeGoAway(lastStreamID: StreamID, code: TunnelErrorCode, reason: String) -> [UInt8] {
        var out: [UInt8] = []
        out.appendU32(lastStreamID)
        out.appendU32(code.rawValue)
        out.append(contentsOf: utf8Prefix(reason, maxBytes: TunnelProtocol.maxReasonSize))
        return out
    }

    static func decodeGoAway(_ payload: ArraySlice<UInt8>) -> (StreamID, TunnelErrorCode, String)? {
        var r = PayloadReader(payload)
        guard let last = r.u32(), let code = r.u32() else { return nil }
        return (last, TunnelErrorCode(rawValue: code), String(decoding: r.rest(), as: UTF8.self))
    }

    // MARK: Helpers

    private static func headersSize(_ headers: HTTPHeaders) -> Int {
        var n = 2
        for field in headers { n += 4 + field.name.utf8.count + field.value.utf8.count }
        return n
    }

    private static func checkHeaders(_ headers: HTTPHeaders) throws(TunnelProtocolError) {
        guard headers.count <= 0xFFFF else { throw .protocolError("too many headers") }
        for field in headers {
            let name = field.name.utf8, value = field.value.utf8
            guard name.count <= 0xFFFF, value.count <= 0xFFFF else { throw .protocolError("header field too long") }
            guard isToken(name) else { throw .protocolError("invalid header name") }
            guard isValidValue(value) else { throw .protocolError("invalid header value") }
        }
    }

    private static func appendHeaders(_ headers: HTTPHeaders, into out: inout [UInt8]) {
        out.appendU16(UInt16(truncatingIfNeeded: headers.count))
        for field in headers {
            out.appendU16(UInt16(truncatingIfNeeded: field.name.utf8.count))
            out.append(contentsOf: field.name.utf8)
            out.appendU16(UInt16(truncatingIfNeeded: field.value.utf8.count))
            out.append(contentsOf: field.value.utf8)
        }
    }

    /// Header list, which must end the payload exactly.
    private static func readHeaders(_ r: inout PayloadReader) throws(TunnelProtocolError) -> HTTPHeaders {
        // Each header takes at least 4 bytes: check before reserving for a hostile count.
        guard let count = r.u16(), Int(count) * 4 <= r.remaining else { throw .protocolError("truncated head") }
        var headers = HTTPHeaders()
        headers.reserveCapacity(Int(count))
        for _ in 0 ..< count {
            guard let nameCount = r.u16(), let name = r.take(Int(nameCount)),
                  let valueCount = r.u16(), let value = r.take(Int(valueCount))
            else { throw .protocolError("truncated head") }
            guard isToken(name) else { throw .protocolError("invalid header name") }
            guard isValidValue(value) else { throw .protocolError("invalid header value") }
            headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
        }
        guard r.remaining == 0 else { throw .protocolError("trailing bytes after head") }
        return headers
    }

    /// Non-empty, all tchar (RFC 9110 §5.6.2).
    static func isToken<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        !bytes.isEmpty && bytes.allSatisfy { b in
            if b < 64 { return (0x03FF_6CFA_0000_0000 as UInt64) &>> UInt64(b) & 1 != 0 }
            if b < 128 { return (0x57FF_FFFF_C7FF_FFFE as UInt64) &>> UInt64(b &- 64) & 1 != 0 }
            return false
        }
    }

    /// Field value bytes: no CTL but HTAB, no DEL (so no CR/LF smuggling into HTTP).
    static func isValidValue<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        bytes.allSatisfy { $0 >= 0x20 ? $0 != 0x7F : $0 == 0x09 }
    }

    /// Request target: non-empty, no CTL, space or DEL.
    static func isValidTarget<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        !bytes.isEmpty && bytes.allSatisfy { $0 > 0x20 && $0 != 0x7F }
    }

    /// The UTF-8 of `s` cut to `maxBytes` without splitting a character.
    static func utf8Prefix(_ s: String, maxBytes: Int) -> ArraySlice<UInt8> {
        let bytes = Array(s.utf8)
        guard bytes.count > maxBytes else { return bytes[...] }
        var cut = maxBytes
        while cut > 0, bytes[cut] & 0xC0 == 0x80 { cut -= 1 }
        return bytes[..<cut]
    }
}

/// Bounds-checked big-endian reads from a payload slice; nil when too short.
struct PayloadReader {
    private let bytes: ArraySlice<UInt8>
    private var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    var remaining: Int { bytes.endIndex - position }

    mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { position += 2 }
        return UInt16(bytes[position]) << 8 | UInt16(bytes[position + 1])
    }

    mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        defer { position += 4 }
        return UInt32(bytes[position]) << 24 | UInt32(bytes[position + 1]) << 16
            | UInt32(bytes[position + 2]) << 8 | UInt32(bytes[position + 3])
    }

    mutating func u64() -> UInt64? {
        guard let high = u32(), let low = u32() else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }

    mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, remaining >= n else { return nil }
        defer { position += n }
        return bytes[position ..< position + n]
    }

    mutating func rest() -> ArraySlice<UInt8> {
        defer { position = bytes.endIndex }
        return bytes[position...]
    }
}

extension [UInt8] {
    mutating func appendU16(_ v: UInt16) {
        append(UInt8(truncatingIfNeeded: v >> 8))
        append(UInt8(truncatingIfNeeded: v))
    }

    mutating func appendU32(_ v: UInt32) {
        append(UInt8(truncatingIfNeeded: v >> 24))
        append(UInt8(truncatingIfNeeded: v >> 16))
        append(UInt8(truncatingIfNeeded: v >> 8))
        append(UInt8(truncatingIfNeeded: v))
    }

    mutating func appendU64(_ v: UInt64) {
        appendU32(UInt32(truncatingIfNeeded: v >> 32))
        appendU32(UInt32(truncatingIfNeeded: v))
    }
}

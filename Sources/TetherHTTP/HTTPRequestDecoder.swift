public enum HTTPRequestEvent: Equatable, Sendable {
    case head(HTTPRequestHead)
    /// A piece of the body, delivered as soon as it arrives (never empty).
    case body([UInt8])
    case end
}

/// Server-side, sans-I/O HTTP/1.1 request decoder (RFC 9112).
///
/// Feed bytes as they arrive, then call `next()` until it returns nil. Pipelined requests
/// are decoded one after another. The decoder holds only a partial line or unread body
/// bytes, and releases its buffer whenever it is drained.
public struct HTTPRequestDecoder: Sendable {
    enum Phase {
        case requestLine
        case fieldLines
        case body
        /// The caller took over the byte stream (upgrade / CONNECT) or the peer closed.
        case detached
        case failed(HTTPParseError)
    }

    /// May be changed at any time, e.g. to lower maxBodySize for a route after `.head`:
    /// the body limit is re-checked before any further body bytes are delivered.
    public var limits: HTTPLimits
    var core = MessageCore(isResponse: false)
    var phase = Phase.requestLine
    var method = ""
    var target = ""
    var version = HTTPVersion.http1_1

    public init(limits: HTTPLimits = HTTPLimits()) {
        self.limits = limits
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        core.append(bytes)
    }

    @inlinable
    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let done: Void? = bytes.withContiguousStorageIfAvailable { feed(UnsafeRawBufferPointer($0)) }
        if done == nil { Array(bytes).withUnsafeBytes { feed($0) } }
    }

    /// Unconsumed bytes held by the decoder.
    public var bufferedByteCount: Int { core.pending }

    /// True between messages: no part of a request has been received (blank lines aside).
    public var isIdle: Bool {
        guard case .requestLine = phase else { return false }
        return core.buf[core.readIndex...].allSatisfy { $0 == asciiCR || $0 == asciiLF }
    }

    /// Next event, or nil when more bytes are needed. Throws once on a protocol violation;
    /// after that the decoder is dead and keeps throwing the same error.
    /// After `.end` the next call continues with the next (pipelined) request.
    public mutating func next() throws(HTTPParseError) -> HTTPRequestEvent? {
        do {
            let event = try step()
            core.releaseIfDrained()
            return event
        } catch {
            fail(error)
            throw error
        }
    }

    /// Returns the unconsumed bytes and detaches the decoder (`next()` then returns nil).
    /// Use after a `.head` that the caller turns into an upgrade (101) or a CONNECT tunnel.
    public mutating func takeBufferedBytes() -> [UInt8] {
        let bytes = core.takeAll()
        core.releaseIfDrained()
        if case .failed = phase {} else { phase = .detached }
        return bytes
    }

    /// The client closed its sending side. Returns an error if a request was in progress
    /// (truncated); nil if the connection closed cleanly between requests. Call after
    /// `next()` has returned nil.
    public mutating func finish() -> HTTPParseError? {
        core.eof = true
        switch phase {
        case .failed(let error):
            return error
        case .detached:
            return nil
        case .requestLine:
            if isIdle {
                phase = .detached
                core.buf = []
                core.readIndex = 0
                return nil
            }
        case .fieldLines:
            break
        case .body:
            if core.bodyComplete { return nil }
        }
        let error = HTTPParseError.badRequest(reason: "connection closed before the request was complete")
        fail(error)
        return error
    }

    private mutating func fail(_ error: HTTPParseError) {
        phase = .failed(error)
        core.buf = []
        core.readIndex = 0
        core.fields = []
    }

    private mutating func step() throws(HTTPParseError) -> HTTPRequestEvent? {
        while true {
            switch phase {
            case .failed(let error):
                throw error
            case .detached:
                return nil

            case .requestLine:
                switch core.takeLine(maxLength: limits.maxRequestLineLength) {
                case .incomplete:
                    return nil
                case .tooLong:
                    throw .uriTooLong
                case .line(let range):
                    // RFC 9112 2.2: ignore empty lines before a request line.
                    if range.isEmpty { continue }
                    let line = try core.buf.withUnsafeBufferPointer { (p) throws(HTTPParseError) in
                        try parseRequestLine(UnsafeBufferPointer(rebasing: p[range]))
                    }
                    method = line.method
                    target = line.target
                    version = line.version
                    core.beginMessage()
                    phase = .fieldLines
                }

            case .fieldLines:
                guard try core.parseFieldSection(limits: limits, keep: true) else { return nil }
                let head = HTTPRequestHead(
                    method: method, target: target, version: version,
                    headers: HTTPHeaders(storage: core.fields))
                core.fields = []
                method = ""
                target = ""
                core.body = try requestBodyFraming(version: head.version)
                phase = .body
                return .head(head)

            case .body:
                switch try core.nextBodyEvent(limits: limits) {
                case nil:
                    return nil
                case .bytes(let bytes):
                    return .body(bytes)
                case .end:
                    phase = core.eof ? .detached : .requestLine
                    return .end
                }
            }
        }
    }

    /// RFC 9112 6.3, strict: TE and CL together are rejected (request smuggling), as is
    /// TE on HTTP/1.0; chunked must be the only coding we are asked to decode.
    private func requestBodyFraming(version: HTTPVersion) throws(HTTPParseError) -> BodyState {
        let f = core.framing
        if version >= .http1_1 && f.hostCount == 0 { throw .badRequest(reason: "missing Host header") }
        if f.hostCount > 1 { throw .badRequest(reason: "multiple Host headers") }
        if f.hasTransferEncoding {
            if f.contentLength != nil {
                throw .badRequest(reason: "both Content-Length and Transfer-Encoding")
            }
            if version < .http1_1 { throw .badRequest(reason: "Transfer-Encoding on HTTP/1.0") }
            if f.otherCodingCount > 0 { throw .notImplemented(reason: "unsupported transfer coding") }
            guard f.chunkedCount == 1, f.lastCodingIsChunked else {
                throw .badRequest(reason: "invalid Transfer-Encoding")
            }
            return .chunkSize
        }
        if let length = f.contentLength {
            if length > limits.maxBodySize { throw .payloadTooLarge }
            return .length(remaining: length)
        }
        return .length(remaining: 0)
    }

    #if DEBUG
    /// Test hook: capacity of the internal buffer.
    var bufferCapacity: Int { core.buf.capacity }
    #endif
}

/// method SP request-target SP HTTP-version (single SPs, RFC 9112 3).
func parseRequestLine(
    _ p: UnsafeBufferPointer<UInt8>
) throws(HTTPParseError) -> (method: String, target: String, version: HTTPVersion) {
    let n = p.count
    var i = 0
    while i < n && isTokenChar(p[i]) { i += 1 }
    let methodEnd = i
    guard i < n, p[i] == asciiSP, methodEnd > 0 else {
        if i < n && p[i] == asciiCR { throw .badRequest(reason: "bare CR in request line") }
        throw .badRequest(reason: "invalid method")
    }
    i += 1
    let targetStart = i
    // Printable ASCII only: no whitespace, CTLs, DEL or raw non-ASCII.
    while i < n && p[i] &- 0x21 < 0x5E { i += 1 }
    let targetEnd = i
    guard i < n, p[i] == asciiSP, targetEnd > targetStart else {
        if i == n { throw .badRequest(reason: "missing HTTP version") }
        if p[i] == asciiCR { throw .badRequest(reason: "bare CR in request line") }
        throw .badRequest(reason: "invalid request target")
    }
    i += 1
    guard let version = parseVersion(UnsafeBufferPointer(rebasing: p[i...])) else {
        throw .badRequest(reason: "invalid HTTP version")
    }
    guard version.major == 1 else { throw .versionNotSupported }
    return (makeString(p, 0..<methodEnd), makeString(p, targetStart..<targetEnd), version)
}

/// "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 2.3).
@inline(__always)
func parseVersion(_ p: UnsafeBufferPointer<UInt8>) -> HTTPVersion? {
    guard p.count == 8,
          p[0] == UInt8(ascii: "H"), p[1] == UInt8(ascii: "T"), p[2] == UInt8(ascii: "T"),
          p[3] == UInt8(ascii: "P"), p[4] == UInt8(ascii: "/"), isDigit(p[5]),
          p[6] == UInt8(ascii: "."), isDigit(p[7])
    else { return nil }
    return HTTPVersion(major: Int(p[5] &- 0x30), minor: Int(p[7] &- 0x30))
}

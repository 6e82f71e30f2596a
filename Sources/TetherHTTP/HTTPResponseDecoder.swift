public enum HTTPResponseEvent: Equatable, Sendable {
    case head(HTTPResponseHead)
    /// A piece of the body, delivered as soon as it arrives (never empty).
    case body([UInt8])
    case end
}

/// Client-side, sans-I/O HTTP/1.1 response decoder (RFC 9112).
///
/// Interim (1xx) responses are delivered as `.head` without `.end`, followed by the final
/// response to the same request. After a 101, or a 2xx to CONNECT, `.head` is the last
/// event: the rest of the stream belongs to the new protocol (`takeBufferedBytes()`).
/// Malformed input is reported as `.invalidResponse`; limit breaches keep their own cases
/// (a too-long status line is `.invalidResponse` as well).
public struct HTTPResponseDecoder: Sendable {
    enum Phase {
        case statusLine
        case fieldLines
        case body
        /// 101 / CONNECT tunnel established, or closed: no further HTTP events.
        case detached
        case failed(HTTPParseError)
    }

    /// What the request being answered implies for the response body.
    enum RequestKind {
        case normal
        case head
        case connect
    }

    public var limits: HTTPLimits
    var core = MessageCore(isResponse: true)
    var phase = Phase.statusLine
    var version = HTTPVersion.http1_1
    var status = 0
    var reason = ""
    /// FIFO of requests awaiting responses; `expectedHead` indexes the oldest.
    var expected: [RequestKind] = []
    var expectedHead = 0
    /// An interim (1xx) response was seen; EOF before the final response is truncation.
    var awaitingFinal = false

    public init(limits: HTTPLimits = HTTPLimits()) {
        self.limits = limits
    }

    /// Registers the method of the next request sent on this connection (call in the order
    /// requests are sent). Without a registration the response is decoded as if to GET.
    public mutating func expectResponse(toMethod method: String) {
        let kind: RequestKind
        switch method {
        case "HEAD": kind = .head
        case "CONNECT": kind = .connect
        default: kind = .normal
        }
        expected.append(kind)
    }

    /// Requests registered with `expectResponse` whose final response has not started yet.
    public var outstandingRequestCount: Int { expected.count - expectedHead }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        core.append(bytes)
    }

    @inlinable
    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let done: Void? = bytes.withContiguousStorageIfAvailable { feed(UnsafeRawBufferPointer($0)) }
        if done == nil { Array(bytes).withUnsafeBytes { feed($0) } }
    }

    public var bufferedByteCount: Int { core.pending }

    /// Next event, or nil when more bytes are needed. Throws once on a protocol violation;
    /// after that the decoder is dead and keeps throwing the same error.
    public mutating func next() throws(HTTPParseError) -> HTTPResponseEvent? {
        do {
            let event = try step()
            core.releaseIfDrained()
            return event
        } catch {
            fail(error)
            throw error
        }
    }

    /// Returns the unconsumed bytes (after a 101 or CONNECT: the tunnelled stream) and
    /// detaches the decoder.
    public mutating func takeBufferedBytes() -> [UInt8] {
        let bytes = core.takeAll()
        core.releaseIfDrained()
        if case .failed = phase {} else { phase = .detached }
        return bytes
    }

    /// The connection reached EOF. A read-until-close body then ends: `next()` delivers
    /// `.end`. Returns an error if a response was cut short; nil otherwise. Call after
    /// `next()` has returned nil.
    public mutating func finish() -> HTTPParseError? {
        core.eof = true
        switch phase {
        case .failed(let error):
            return error
        case .detached:
            return nil
        case .statusLine:
            let idle = core.buf[core.readIndex...].allSatisfy { $0 == asciiCR || $0 == asciiLF }
            if idle && !awaitingFinal {
                phase = .detached
                core.buf = []
                core.readIndex = 0
                return nil
            }
        case .fieldLines:
            break
        case .body:
            if core.body == .untilEOF || core.bodyComplete { return nil }
        }
        let error = HTTPParseError.invalidResponse(reason: "connection closed before the response was complete")
        fail(error)
        return error
    }

    private mutating func fail(_ error: HTTPParseError) {
        phase = .failed(error)
        core.buf = []
        core.readIndex = 0
        core.fields = []
    }

    private mutating func step() throws(HTTPParseError) -> HTTPResponseEvent? {
        while true {
            switch phase {
            case .failed(let error):
                throw error
            case .detached:
                return nil

            case .statusLine:
                switch core.takeLine(maxLength: limits.maxRequestLineLength) {
                case .incomplete:
                    return nil
                case .tooLong:
                    throw .invalidResponse(reason: "status line too long")
                case .line(let range):
                    // Tolerate stray blank lines between responses, as for requests.
                    if range.isEmpty { continue }
                    let line = try core.buf.withUnsafeBufferPointer { (p) throws(HTTPParseError) in
                        try parseStatusLine(UnsafeBufferPointer(rebasing: p[range]))
                    }
                    version = line.version
                    status = line.status
                    reason = line.reason
                    core.beginMessage()
                    phase = .fieldLines
                }

            case .fieldLines:
                guard try core.parseFieldSection(limits: limits, keep: true) else { return nil }
                let head = HTTPResponseHead(
                    status: status, reason: reason,
                    headers: HTTPHeaders(storage: core.fields), version: version)
                core.fields = []
                reason = ""
                if status < 200 && status != 101 {
                    // Interim response: the final one for the same request follows.
                    phase = .statusLine
                    awaitingFinal = true
                    return .head(head)
                }
                awaitingFinal = false
                var kind = RequestKind.normal
                if expectedHead < expected.count {
                    kind = expected[expectedHead]
                    expectedHead += 1
                    if expectedHead == expected.count {
                        expected = []
                        expectedHead = 0
                    }
                }
                if status == 101 || (kind == .connect && status / 100 == 2) {
                    phase = .detached
                    return .head(head)
                }
                core.body = try responseBodyFraming(kind: kind)
                phase = .body
                return .head(head)

            case .body:
                switch try core.nextBodyEvent(limits: limits) {
                case nil:
                    return nil
                case .bytes(let bytes):
                    return .body(bytes)
                case .end:
                    phase = core.eof ? .detached : .statusLine
                    return .end
                }
            }
        }
    }

    /// RFC 9112 6.3 for responses. TE together with CL, or TE on HTTP/1.0, is treated as an
    /// error rather than "TE wins": this decoder feeds a bridge, and such messages are
    /// response-splitting attempts.
    private func responseBodyFraming(kind: RequestKind) throws(HTTPParseError) -> BodyState {
        if kind == .head || status == 204 || status == 304 {
            return .length(remaining: 0)
        }
        let f = core.framing
        if f.hasTransferEncoding {
            if f.contentLength != nil {
                throw .invalidResponse(reason: "both Content-Length and Transfer-Encoding")
            }
            if version < .http1_1 { throw .invalidResponse(reason: "Transfer-Encoding on HTTP/1.0") }
            if f.lastCodingIsChunked {
                guard f.chunkedCount == 1 else { throw .invalidResponse(reason: "chunked applied twice") }
                return .chunkSize
            }
            // Final coding is not chunked: the body runs until the connection closes.
            return .untilEOF
        }
        if let length = f.contentLength {
            if length > limits.maxBodySize { throw .payloadTooLarge }
            return .length(remaining: length)
        }
        return .untilEOF
    }

    #if DEBUG
    var bufferCapacity: Int { core.buf.capacity }
    #endif
}

/// HTTP-version SP 3DIGIT SP [ reason-phrase ]; the SP before an empty reason may be
/// missing (common in the wild).
func parseStatusLine(
    _ p: UnsafeBufferPointer<UInt8>
) throws(HTTPParseError) -> (version: HTTPVersion, status: Int, reason: String) {
    let n = p.count
    guard n >= 12, p[8] == asciiSP,
          let version = parseVersion(UnsafeBufferPointer(rebasing: p[0..<8]))
    else { throw .invalidResponse(reason: "invalid status line") }
    guard version.major == 1 else { throw .versionNotSupported }
    guard isDigit(p[9]), isDigit(p[10]), isDigit(p[11]), p[9] != UInt8(ascii: "0") else {
        throw .invalidResponse(reason: "invalid status code")
    }
    let status = Int(p[9] &- 0x30) * 100 + Int(p[10] &- 0x30) * 10 + Int(p[11] &- 0x30)
    guard n > 12 else { return (version, status, "") }
    guard p[12] == asciiSP else { throw .invalidResponse(reason: "invalid status code") }
    for i in 13..<n where !isFieldValueByte(p[i]) {
        throw .invalidResponse(reason: p[i] == asciiCR ? "bare CR in status line" : "control character in reason phrase")
    }
    return (version, status, makeString(p, 13..<n))
}

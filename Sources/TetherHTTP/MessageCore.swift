// Machinery shared by the request and response decoders: the input buffer, line
// scanning, field-section parsing and body framing. Start lines are parsed by the
// decoders themselves.

/// How the body of the current message is delimited, and how far we are into it.
enum BodyState: Equatable {
    /// Content-Length framing (also used with 0 for "no body").
    case length(remaining: Int)
    /// Expecting a chunk-size line.
    case chunkSize
    case chunkData(remaining: Int)
    /// Expecting the CRLF that ends a chunk's data.
    case chunkDataEnd
    /// After the last chunk: trailer fields up to an empty line.
    case trailers
    /// Response without framing: everything until the connection closes.
    case untilEOF
}

enum BodyEvent {
    case bytes([UInt8])
    case end
}

/// Framing-relevant facts collected while the field lines are parsed, so the decoders
/// never re-scan headers by name.
struct FramingFields {
    var contentLength: Int?
    var hasTransferEncoding = false
    var chunkedCount = 0
    var otherCodingCount = 0
    var lastCodingIsChunked = false
    var hostCount = 0
}

enum LineResult {
    /// Content range in `buf`, excluding the terminator (which has been consumed).
    case line(Range<Int>)
    case incomplete
    case tooLong
}

struct MessageCore {
    /// Input bytes; `buf[readIndex...]` is not yet consumed.
    var buf: [UInt8] = []
    var readIndex = 0
    /// Bytes after `readIndex` already scanned for LF, so a line arriving in many small
    /// pieces is scanned once (no quadratic rescans).
    var scanned = 0
    /// Size and number of field lines so far in this message (head plus trailers).
    var sectionBytes = 0
    var sectionFields = 0
    /// Fields of the head being parsed.
    var fields: [(name: String, value: String)] = []
    var framing = FramingFields()
    var body = BodyState.length(remaining: 0)
    /// Body bytes declared or delivered so far (checked against maxBodySize).
    var bodyTotal = 0
    var eof = false
    let isResponse: Bool

    init(isResponse: Bool) {
        self.isResponse = isResponse
    }

    @inline(__always)
    var pending: Int { buf.count - readIndex }

    @inline(__always)
    func malformed(_ reason: String) -> HTTPParseError {
        isResponse ? .invalidResponse(reason: reason) : .badRequest(reason: reason)
    }

    // MARK: Buffer

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        if readIndex > 0 {
            if readIndex == buf.count {
                buf.removeAll(keepingCapacity: true)
                readIndex = 0
            } else if readIndex >= buf.count - readIndex {
                // Compact only when the move costs no more than what was consumed (amortised O(1)).
                buf.removeSubrange(0..<readIndex)
                readIndex = 0
            }
        }
        buf.append(contentsOf: bytes)
    }

    /// Drops the storage once everything is consumed, so idle connections hold no buffer.
    @inline(__always)
    mutating func releaseIfDrained() {
        if readIndex == buf.count {
            if buf.capacity != 0 { buf = [] }
            readIndex = 0
            scanned = 0
        }
    }

    mutating func takeAll() -> [UInt8] {
        take(pending)
    }

    /// Removes and returns the next `n` bytes; hands over the storage itself when the
    /// whole buffer is requested (the common case for streamed bodies).
    mutating func take(_ n: Int) -> [UInt8] {
        let end = readIndex + n
        if readIndex == 0 && end == buf.count {
            let out = buf
            buf = []
            return out
        }
        let out = Array(buf[readIndex..<end])
        readIndex = end
        return out
    }

    /// Finds the next LF-terminated line (CR before LF is stripped). Scans at most
    /// `maxLength` + 2 bytes so oversized lines are rejected as soon as that much arrived.
    mutating func takeLine(maxLength: Int) -> LineResult {
        let maxLength = max(0, min(maxLength, 1 << 40))
        let start = readIndex
        let windowEnd = min(buf.count, start + maxLength + 2)
        let from = start + scanned
        var lf = -1
        if from < windowEnd {
            lf = buf.withUnsafeBufferPointer { firstLF(in: $0, from: from, to: windowEnd) }
        }
        guard lf >= 0 else {
            scanned = max(0, windowEnd - start)
            return windowEnd - start >= maxLength + 2 ? .tooLong : .incomplete
        }
        scanned = 0
        readIndex = lf + 1
        var end = lf
        if end > start && buf[end - 1] == asciiCR { end -= 1 }
        return end - start > maxLength ? .tooLong : .line(start..<end)
    }

    /// Begins a new message: resets per-message counters.
    mutating func beginMessage() {
        sectionBytes = 0
        sectionFields = 0
        framing = FramingFields()
        bodyTotal = 0
    }

    // MARK: Field sections

    /// Parses field lines until the empty line ending the section. Returns true when the
    /// section is complete, false when more bytes are needed. With `keep`, fields are
    /// stored in `fields` and framing facts collected; otherwise (trailers) they are only
    /// validated and counted.
    mutating func parseFieldSection(limits: HTTPLimits, keep: Bool) throws(HTTPParseError) -> Bool {
        while true {
            // A non-empty line costs at least content + LF, hence the - 1.
            switch takeLine(maxLength: limits.maxHeaderBytes - sectionBytes - 1) {
            case .incomplete:
                return false
            case .tooLong:
                throw .headersTooLarge
            case .line(let range):
                if range.isEmpty { return true }
                sectionBytes += readIndex - range.lowerBound
                sectionFields += 1
                if sectionBytes > limits.maxHeaderBytes || sectionFields > limits.maxHeaderCount {
                    throw .headersTooLarge
                }
                try parseFieldLine(range, keep: keep)
            }
        }
    }

    private mutating func parseFieldLine(_ range: Range<Int>, keep: Bool) throws(HTTPParseError) {
        let isResponse = self.isResponse
        let parsed = try buf.withUnsafeBufferPointer { (all) throws(HTTPParseError) -> ParsedField? in
            let p = UnsafeBufferPointer(rebasing: all[range])
            let n = p.count
            let malformed: (String) -> HTTPParseError = {
                isResponse ? .invalidResponse(reason: $0) : .badRequest(reason: $0)
            }
            // A leading SP/HT is obs-fold (or whitespace before the first field): rejected
            // (RFC 9112 5.2) because intermediaries disagree on how to unfold it.
            if isOWS(p[0]) { throw malformed("obsolete line folding") }
            var i = 0
            while i < n && isTokenChar(p[i]) { i += 1 }
            guard i < n, p[i] == asciiColon else {
                if i == n { throw malformed("field line without colon") }
                if isOWS(p[i]) { throw malformed("whitespace between field name and colon") }
                if p[i] == asciiCR { throw malformed("bare CR in field line") }
                throw malformed("invalid character in field name")
            }
            guard i > 0 else { throw malformed("empty field name") }
            let nameEnd = i
            var vs = i + 1
            var ve = n
            while vs < ve && isOWS(p[vs]) { vs += 1 }
            while ve > vs && isOWS(p[ve - 1]) { ve -= 1 }
            if let j = firstInvalidValueByte(in: p, from: vs, to: ve) {
                throw malformed(p[j] == asciiCR ? "bare CR in field value" : "control character in field value")
            }
            guard keep else { return nil }

            let name = UnsafeBufferPointer(rebasing: p[0..<nameEnd])
            let value = UnsafeBufferPointer(rebasing: p[vs..<ve])
            var kind = FieldKind.other
            switch nameEnd {
            case 4 where bytesEqualLowercase(name, "host"):
                kind = .host
            case 14 where bytesEqualLowercase(name, "content-length"):
                kind = .contentLength(try parseContentLength(value, malformed: malformed))
            case 17 where bytesEqualLowercase(name, "transfer-encoding"):
                kind = .transferEncoding(parseCodings(value))
            default:
                break
            }
            return ParsedField(
                name: makeString(p, 0..<nameEnd),
                value: makeString(p, vs..<ve),
                kind: kind)
        }
        guard let parsed else { return }
        switch parsed.kind {
        case .other:
            break
        case .host:
            framing.hostCount += 1
        case .contentLength(let length):
            if let existing = framing.contentLength, existing != length {
                throw malformed("conflicting Content-Length values")
            }
            framing.contentLength = length
        case .transferEncoding(let codings):
            framing.hasTransferEncoding = true
            framing.chunkedCount += codings.chunked
            framing.otherCodingCount += codings.other
            if codings.chunked + codings.other > 0 { framing.lastCodingIsChunked = codings.lastIsChunked }
        }
        // Most heads have a handful of fields: skip the 1-2-4-8 growth steps.
        if fields.capacity == 0 { fields.reserveCapacity(16) }
        fields.append((name: parsed.name, value: parsed.value))
    }

    // MARK: Body

    /// Next body event, or nil when more bytes are needed.
    mutating func nextBodyEvent(limits: HTTPLimits) throws(HTTPParseError) -> BodyEvent? {
        while true {
            switch body {
            case .length(let remaining):
                if remaining == 0 { return .end }
                // Re-checked here because the caller may lower maxBodySize after the head.
                if bodyTotal + remaining > limits.maxBodySize { throw .payloadTooLarge }
                guard pending > 0 else { return nil }
                let n = min(pending, remaining)
                bodyTotal += n
                body = .length(remaining: remaining - n)
                return .bytes(take(n))

            case .chunkData(let remaining):
                guard pending > 0 else { return nil }
                let n = min(pending, remaining)
                body = n == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - n)
                return .bytes(take(n))

            case .chunkDataEnd:
                guard pending > 0 else { return nil }
                let b = buf[readIndex]
                if b == asciiLF {
                    readIndex += 1
                } else if b == asciiCR {
                    guard pending > 1 else { return nil }
                    guard buf[readIndex + 1] == asciiLF else { throw malformed("bare CR after chunk data") }
                    readIndex += 2
                } else {
                    throw malformed("chunk data longer than chunk size")
                }
                body = .chunkSize

            case .chunkSize:
                switch takeLine(maxLength: limits.maxChunkLineLength) {
                case .incomplete:
                    return nil
                case .tooLong:
                    throw malformed("chunk size line too long")
                case .line(let range):
                    let isResponse = self.isResponse
                    let size = try buf.withUnsafeBufferPointer { (p) throws(HTTPParseError) -> Int in
                        try parseChunkSizeLine(UnsafeBufferPointer(rebasing: p[range]), isResponse: isResponse)
                    }
                    if size == 0 {
                        body = .trailers
                    } else {
                        if size > limits.maxBodySize - bodyTotal { throw .payloadTooLarge }
                        bodyTotal += size
                        body = .chunkData(remaining: size)
                    }
                }

            case .trailers:
                // Trailer fields are validated, counted against the header limits, and dropped.
                guard try parseFieldSection(limits: limits, keep: false) else { return nil }
                body = .length(remaining: 0)
                return .end

            case .untilEOF:
                if pending > 0 {
                    if pending > limits.maxBodySize - bodyTotal { throw .payloadTooLarge }
                    bodyTotal += pending
                    return .bytes(takeAll())
                }
                if eof {
                    body = .length(remaining: 0)
                    return .end
                }
                return nil
            }
        }
    }

    /// Whether the body is fully read except for the `.end` event.
    var bodyComplete: Bool { body == .length(remaining: 0) }
}

// MARK: - Field value parsers

enum FieldKind {
    case other
    case host
    case contentLength(Int)
    case transferEncoding(CodingSummary)
}

struct ParsedField {
    var name: String
    var value: String
    var kind: FieldKind
}

struct CodingSummary {
    var chunked = 0
    var other = 0
    var lastIsChunked = false
}

/// 1*DIGIT, possibly repeated as an identical comma-separated list (RFC 9110 8.6).
/// Values beyond Int.max saturate: they exceed any body limit anyway.
func parseContentLength(
    _ p: UnsafeBufferPointer<UInt8>, malformed: (String) -> HTTPParseError
) throws(HTTPParseError) -> Int {
    var result: Int?
    var i = 0
    let n = p.count
    while true {
        while i < n && isOWS(p[i]) { i += 1 }
        var value = 0
        let start = i
        while i < n && isDigit(p[i]) {
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(Int(p[i] &- 0x30))
            value = (o1 || o2) ? Int.max : s
            i += 1
        }
        guard i > start else { throw malformed("invalid Content-Length") }
        while i < n && isOWS(p[i]) { i += 1 }
        if let r = result, r != value { throw malformed("conflicting Content-Length values") }
        result = value
        if i == n { return value }
        guard p[i] == 0x2C else { throw malformed("invalid Content-Length") }
        i += 1
    }
}

/// Summarises a Transfer-Encoding list: how many "chunked" and other codings, and
/// whether the last one is chunked. Parameters make a coding "other".
func parseCodings(_ p: UnsafeBufferPointer<UInt8>) -> CodingSummary {
    var summary = CodingSummary()
    _ = anyListElement(p) { coding in
        if bytesEqualLowercase(coding, "chunked") {
            summary.chunked += 1
            summary.lastIsChunked = true
        } else {
            summary.other += 1
            summary.lastIsChunked = false
        }
        return false
    }
    return summary
}

/// chunk-size [ chunk-ext ] with chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
/// (RFC 9112 7.1.1). Extensions are validated and ignored; trailing OWS is tolerated.
func parseChunkSizeLine(_ p: UnsafeBufferPointer<UInt8>, isResponse: Bool) throws(HTTPParseError) -> Int {
    func bad(_ reason: String) -> HTTPParseError {
        isResponse ? .invalidResponse(reason: reason) : .badRequest(reason: reason)
    }
    let n = p.count
    var i = 0
    var size = 0
    while i < n, let d = hexValue(p[i]) {
        guard size <= Int.max >> 4 else { throw bad("chunk size overflow") }
        size = size << 4 | d
        i += 1
    }
    guard i > 0 else { throw bad("invalid chunk size") }
    while true {
        while i < n && isOWS(p[i]) { i += 1 }
        if i == n { return size }
        guard p[i] == UInt8(ascii: ";") else { throw bad("invalid chunk size") }
        i += 1
        while i < n && isOWS(p[i]) { i += 1 }
        let nameStart = i
        while i < n && isTokenChar(p[i]) { i += 1 }
        guard i > nameStart else { throw bad("invalid chunk extension") }
        while i < n && isOWS(p[i]) { i += 1 }
        guard i < n, p[i] == UInt8(ascii: "=") else { continue }
        i += 1
        while i < n && isOWS(p[i]) { i += 1 }
        if i < n && p[i] == UInt8(ascii: "\"") {
            // quoted-string: qdtext / quoted-pair
            i += 1
            var closed = false
            while i < n {
                let b = p[i]
                if b == UInt8(ascii: "\"") { closed = true; i += 1; break }
                if b == UInt8(ascii: "\\") {
                    guard i + 1 < n, isFieldValueByte(p[i + 1]) else { throw bad("invalid chunk extension") }
                    i += 2
                    continue
                }
                guard isFieldValueByte(b) else { throw bad("invalid chunk extension") }
                i += 1
            }
            guard closed else { throw bad("invalid chunk extension") }
        } else {
            let valueStart = i
            while i < n && isTokenChar(p[i]) { i += 1 }
            guard i > valueStart else { throw bad("invalid chunk extension") }
        }
    }
}

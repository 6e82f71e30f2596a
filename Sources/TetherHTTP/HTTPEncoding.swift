// Head and chunk encoders. They write straight into the caller's buffer.
//
// Injection safety: the encoders never emit bytes that would end a line or a field early.
// Instead of throwing on the hot path they sanitize:
//   - method and field names: any non-token byte becomes "-";
//   - request target: CTLs, SP, DEL and non-ASCII bytes are percent-encoded;
//   - field values and reason phrase: CTLs other than HT (including CR and LF) and DEL
//     become SP.
// Callers that need strictness should validate before encoding.

extension HTTPRequestHead {
    /// Appends the encoded request line, header fields and the terminating empty line.
    public func encode(into buffer: inout [UInt8]) {
        buffer.reserveCapacity(buffer.count + method.utf8.count + target.utf8.count + 14 + headers.encodedSizeEstimate)
        appendToken(method, into: &buffer)
        buffer.append(asciiSP)
        appendTarget(target, into: &buffer)
        buffer.append(asciiSP)
        appendVersion(version, into: &buffer)
        buffer.append(asciiCR)
        buffer.append(asciiLF)
        headers.encodeFields(into: &buffer)
        buffer.append(asciiCR)
        buffer.append(asciiLF)
    }

    /// The encoded head as a fresh array.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }
}

extension HTTPResponseHead {
    /// Appends the encoded status line, header fields and the terminating empty line.
    /// A status outside 0...999 is clamped to 500 so the status line stays well-formed.
    public func encode(into buffer: inout [UInt8]) {
        buffer.reserveCapacity(buffer.count + reason.utf8.count + 17 + headers.encodedSizeEstimate)
        appendVersion(version, into: &buffer)
        buffer.append(asciiSP)
        let code = (0...999).contains(status) ? status : 500
        buffer.append(UInt8(truncatingIfNeeded: 0x30 + code / 100))
        buffer.append(UInt8(truncatingIfNeeded: 0x30 + code / 10 % 10))
        buffer.append(UInt8(truncatingIfNeeded: 0x30 + code % 10))
        buffer.append(asciiSP)
        appendSanitized(reason, into: &buffer, allowed: isFieldValueByte, replacement: asciiSP)
        buffer.append(asciiCR)
        buffer.append(asciiLF)
        headers.encodeFields(into: &buffer)
        buffer.append(asciiCR)
        buffer.append(asciiLF)
    }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }
}

extension HTTPHeaders {
    /// Appends "name: value\r\n" for every field (no terminating empty line).
    public func encodeFields(into buffer: inout [UInt8]) {
        for field in storage {
            appendToken(field.name, into: &buffer)
            buffer.append(asciiColon)
            buffer.append(asciiSP)
            appendSanitized(field.value, into: &buffer, allowed: isFieldValueByte, replacement: asciiSP)
            buffer.append(asciiCR)
            buffer.append(asciiLF)
        }
    }

    var encodedSizeEstimate: Int {
        var n = 0
        for field in storage { n &+= field.name.utf8.count &+ field.value.utf8.count &+ 4 }
        return n
    }
}

/// Chunked transfer-coding framing (RFC 9112 7.1).
public enum HTTPChunkedEncoding {
    /// Appends one chunk. An empty `body` appends nothing, because a zero-size chunk
    /// would terminate the message; use `encodeLastChunk` for that.
    public static func encodeChunk(_ body: UnsafeRawBufferPointer, into buffer: inout [UInt8]) {
        guard !body.isEmpty else { return }
        buffer.reserveCapacity(buffer.count + body.count + 20)
        appendHex(body.count, into: &buffer)
        buffer.append(asciiCR)
        buffer.append(asciiLF)
        buffer.append(contentsOf: body)
        buffer.append(asciiCR)
        buffer.append(asciiLF)
    }

    public static func encodeChunk(_ body: [UInt8], into buffer: inout [UInt8]) {
        body.withUnsafeBytes { encodeChunk($0, into: &buffer) }
    }

    /// Appends "0\r\n\r\n": the last chunk and an empty trailer section.
    public static func encodeLastChunk(into buffer: inout [UInt8]) {
        buffer.append(contentsOf: [0x30, asciiCR, asciiLF, asciiCR, asciiLF])
    }

    /// Appends the last chunk followed by trailer fields.
    public static func encodeLastChunk(trailers: HTTPHeaders, into buffer: inout [UInt8]) {
        buffer.append(contentsOf: [0x30, asciiCR, asciiLF])
        trailers.encodeFields(into: &buffer)
        buffer.append(asciiCR)
        buffer.append(asciiLF)
    }
}

// MARK: - Helpers

@inline(__always)
func appendHex(_ value: Int, into buffer: inout [UInt8]) {
    let digits: StaticString = "0123456789abcdef"
    var shift = (Int.bitWidth - (value | 1).leadingZeroBitCount - 1) / 4 * 4
    while shift >= 0 {
        buffer.append(digits.utf8Start[(value &>> shift) & 0xF])
        shift -= 4
    }
}

@inline(__always)
func appendDecimal(_ value: Int, into buffer: inout [UInt8]) {
    if value >= 0 && value < 10 {
        buffer.append(UInt8(truncatingIfNeeded: 0x30 + value))
    } else {
        buffer.append(contentsOf: String(value).utf8)
    }
}

@inline(__always)
func appendVersion(_ version: HTTPVersion, into buffer: inout [UInt8]) {
    buffer.append(contentsOf: [0x48, 0x54, 0x54, 0x50, 0x2F])  // "HTTP/"
    appendDecimal(version.major, into: &buffer)
    buffer.append(0x2E)
    appendDecimal(version.minor, into: &buffer)
}

@inline(__always)
func appendToken(_ s: String, into buffer: inout [UInt8]) {
    appendSanitized(s, into: &buffer, allowed: isTokenChar, replacement: UInt8(ascii: "-"))
}

/// Copies `s` in one go when every byte is allowed (the common case), else byte by byte
/// with disallowed bytes replaced.
@inline(__always)
func appendSanitized(_ s: String, into buffer: inout [UInt8], allowed: (UInt8) -> Bool, replacement: UInt8) {
    withUTF8Bytes(s) { p in
        var clean = true
        for b in p where !allowed(b) {
            clean = false
            break
        }
        if clean {
            buffer.append(contentsOf: p)
        } else {
            for b in p { buffer.append(allowed(b) ? b : replacement) }
        }
    }
}

@inline(__always)
func appendTarget(_ s: String, into buffer: inout [UInt8]) {
    withUTF8Bytes(s) { p in
        var clean = true
        for b in p where b <= 0x20 || b >= 0x7F {
            clean = false
            break
        }
        if clean {
            buffer.append(contentsOf: p)
            return
        }
        let hex: StaticString = "0123456789ABCDEF"
        for b in p {
            if b <= 0x20 || b >= 0x7F {
                buffer.append(UInt8(ascii: "%"))
                buffer.append(hex.utf8Start[Int(b >> 4)])
                buffer.append(hex.utf8Start[Int(b & 0xF)])
            } else {
                buffer.append(b)
            }
        }
    }
}

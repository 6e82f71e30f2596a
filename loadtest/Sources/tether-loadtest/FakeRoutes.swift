/// What the embedded local service answers (the path after the relay's `/api/ollama` prefix).
///
///   GET  /small?size=N                     200, N bytes (Content-Length)
///   GET  /bulk?size=N                      200, N bytes sent as fast as the windows allow
///   GET  /stream?tokens=N&rate=R&size=S    200, chunked: N records of S bytes, R per second
///   POST /upload                           consumes the body, 200 with its length in decimal
///   anything else                          404
enum FakeRoute: Equatable {
    case small(size: Int)
    case bulk(size: Int)
    case stream(tokens: Int, rate: Double, size: Int)
    case upload
    case notFound

    static let maxBody = 1 << 40

    static func parse(_ target: String) -> FakeRoute {
        var path = Substring(target)
        var query: Substring = ""
        if let q = target.firstIndex(of: "?") {
            path = target[..<q]
            query = target[target.index(after: q)...]
        }
        func int(_ name: String, _ fallback: Int) -> Int {
            guard let v = parameter(name, in: query), let n = Int(v), n >= 0 else { return fallback }
            return min(n, maxBody)
        }
        switch path {
        case "/small": return .small(size: int("size", 64))
        case "/bulk": return .bulk(size: int("size", 1 << 20))
        case "/stream":
            let rate = parameter("rate", in: query).flatMap { Double($0) }.flatMap { $0 > 0 && $0 <= 1e6 ? $0 : nil } ?? 20
            return .stream(tokens: int("tokens", 100), rate: rate, size: max(StreamRecord.minimumSize, min(int("size", 32), 4096)))
        case "/upload": return .upload
        default: return .notFound
        }
    }

    private static func parameter(_ name: String, in query: Substring) -> Substring? {
        for pair in query.split(separator: "&") {
            guard let eq = pair.firstIndex(of: "=") else { continue }
            if pair[..<eq] == name { return pair[pair.index(after: eq)...] }
        }
        return nil
    }
}

/// A stream chunk as the embedded service emits it: fixed size, self-delimiting, text:
/// 16 hex digits of emission time (CLOCK_MONOTONIC ns), a space, 8 hex digits of sequence
/// number, padding, newline. The web client reads records across arbitrary read boundaries.
enum StreamRecord {
    static let minimumSize = 32

    static func encode(emittedAt ns: UInt64, sequence: UInt32, into out: UnsafeMutableRawBufferPointer) {
        let hex: StaticString = "0123456789abcdef"
        let digits = hex.utf8Start
        for i in 0..<16 { out[i] = digits[Int((ns >> UInt64(60 - 4 * i)) & 0xF)] }
        out[16] = 0x20
        for i in 0..<8 { out[17 + i] = digits[Int((sequence >> UInt32(28 - 4 * i)) & 0xF)] }
        for i in 25..<(out.count - 1) { out[i] = 0x2E }  // "."
        out[out.count - 1] = 0x0A
    }

    /// (emission ns, sequence), or nil if the bytes are not a record of this size.
    static func decode(_ p: UnsafeRawBufferPointer) -> (UInt64, UInt32)? {
        guard p.count >= minimumSize, p[16] == 0x20, p[p.count - 1] == 0x0A else { return nil }
        var ns: UInt64 = 0
        for i in 0..<16 {
            guard let d = hexValue(p[i]) else { return nil }
            ns = ns << 4 | UInt64(d)
        }
        var seq: UInt32 = 0
        for i in 17..<25 {
            guard let d = hexValue(p[i]) else { return nil }
            seq = seq << 4 | UInt32(d)
        }
        return (ns, seq)
    }

    @inline(__always)
    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 0x30...0x39: return b - 0x30
        case 0x61...0x66: return b - 0x61 + 10
        default: return nil
        }
    }
}

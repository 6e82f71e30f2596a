/// Finds message boundaries in a raw WebSocket byte stream without decoding or copying
/// payloads: frame headers are read, payloads skipped. A boundary is the end of a frame that
/// leaves no message half received (a final data frame, or a control frame outside a
/// fragmented message).
///
/// Used where a byte stream changes hands mid-connection (the Docker isolation mode moves a
/// bridge's WebSocket between the relay and a container): only at a boundary can the next
/// owner start with a fresh `WebSocketConnection`.
public struct WebSocketFrameScanner: Sendable {
    /// Largest message (the sum of its fragments); a longer one is an error before its payload
    /// is held anywhere.
    public let maxMessageSize: Int
    private var header: (UInt64, UInt64) = (0, 0)
    private var headerCount = 0
    private var payloadRemaining = 0
    private var frameIsFinalData = false
    private var frameIsControl = false
    /// Bytes of the fragmented data message in progress; nil outside one.
    private var messageBytes: Int?
    private var inFrame = false

    public init(maxMessageSize: Int) {
        self.maxMessageSize = max(0, maxMessageSize)
    }

    /// True when every byte scanned so far belongs to complete messages.
    public var isAtMessageBoundary: Bool { !inFrame && headerCount == 0 && messageBytes == nil }

    /// Scans `bytes`. Returns how many were scanned (all of them, unless `stopAtFirstBoundary`
    /// and a boundary was found: then the bytes up to it) and the offset just after the last
    /// boundary within them (nil if none).
    public mutating func scan(_ bytes: UnsafeRawBufferPointer,
                              stopAtFirstBoundary: Bool = false) throws(WebSocketScanError) -> (scanned: Int, lastBoundary: Int?) {
        if stopAtFirstBoundary && isAtMessageBoundary { return (0, 0) }
        var position = 0
        var last: Int?
        while position < bytes.count {
            if inFrame {
                let n = min(payloadRemaining, bytes.count - position)
                position += n
                payloadRemaining -= n
                if payloadRemaining == 0 { finishFrame() }
            } else {
                position += try readHeader(UnsafeRawBufferPointer(rebasing: bytes[position...]))
            }
            if isAtMessageBoundary {
                last = position
                if stopAtFirstBoundary { return (position, position) }
            }
        }
        return (position, last)
    }

    public mutating func scan(_ bytes: [UInt8], stopAtFirstBoundary: Bool = false) throws(WebSocketScanError) -> (scanned: Int, lastBoundary: Int?) {
        let result = bytes.withUnsafeBytes { raw -> Result<(scanned: Int, lastBoundary: Int?), WebSocketScanError> in
            do throws(WebSocketScanError) {
                return .success(try scan(raw, stopAtFirstBoundary: stopAtFirstBoundary))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private func byte(_ i: Int) -> UInt8 { withUnsafeBytes(of: header) { $0[i] } }

    /// Consumes header bytes; starts the frame once the header is complete.
    private mutating func readHeader(_ input: UnsafeRawBufferPointer) throws(WebSocketScanError) -> Int {
        var used = 0
        func fill(upTo count: Int) -> Bool {
            let take = min(count - headerCount, input.count - used)
            if take > 0, let src = input.baseAddress {
                let at = headerCount
                withUnsafeMutableBytes(of: &header) { h in
                    for i in 0..<take { h[at + i] = src.load(fromByteOffset: used + i, as: UInt8.self) }
                }
                headerCount += take
                used += take
            }
            return headerCount >= count
        }
        guard fill(upTo: 2) else { return used }
        let lengthCode = Int(byte(1) & 0x7F)
        let extra = lengthCode == 126 ? 2 : lengthCode == 127 ? 8 : 0
        let masked = byte(1) & 0x80 != 0
        let total = 2 + extra + (masked ? 4 : 0)
        guard fill(upTo: total) else { return used }
        var length: UInt64 = UInt64(lengthCode)
        if extra > 0 {
            length = 0
            for i in 0..<extra { length = length << 8 | UInt64(byte(2 + i)) }
        }
        let opcode = byte(0) & 0x0F
        let final = byte(0) & 0x80 != 0
        frameIsControl = opcode >= 8
        frameIsFinalData = !frameIsControl && final
        let limit = UInt64(maxMessageSize)
        let sofar = UInt64(frameIsControl ? 0 : (messageBytes ?? 0))
        guard length <= limit, sofar + length <= limit else { throw .messageTooBig }
        if !frameIsControl { messageBytes = Int(sofar + length) }
        headerCount = 0
        header = (0, 0)
        payloadRemaining = Int(length)
        inFrame = true
        if payloadRemaining == 0 { finishFrame() }
        return used
    }

    private mutating func finishFrame() {
        inFrame = false
        if frameIsFinalData { messageBytes = nil }
    }
}

public enum WebSocketScanError: Error, Sendable, Equatable {
    /// A frame or message over `maxMessageSize` (close 1009).
    case messageTooBig
}

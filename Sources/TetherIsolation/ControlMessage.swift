/// Messages on the control link between the relay and a session worker, after the control
/// preamble. Each is framed as u32 length (of what follows), u8 type, payload.
public enum ControlMessage: Sendable, Equatable {
    // Worker → relay.
    /// The worker took the settings and serves the session.
    case ready(version: UInt16)
    /// A resumed bridge is registered in the session: requests may use it.
    case attached(attachID: UInt64)
    /// No stream in flight: the relay may now stop feeding the bridges (then half-closes them).
    case parkReady
    /// Streams are in flight: try later.
    case parkBusy(streams: UInt32)
    /// A bridge's state after the relay half-closed it while parking.
    case snapshot(attachID: UInt64, state: BridgeState)
    /// A bridge could not be parked (it was mid-message, or broke the protocol): the relay
    /// closes it.
    case parkFailed(attachID: UInt64, reason: String)
    /// The worker's running totals of the counters only it can see (quota refusals, bridge
    /// protocol errors...), in the order the relay defines; the relay adds the increase to its
    /// own metrics. Totals rather than deltas, so a lost or repeated message cannot skew them.
    case counters([UInt64])

    // Relay → worker.
    /// New limits and timeouts (a reload).
    case configure(WorkerSettings)
    /// The session is idle: get ready to hand the bridges back.
    case park
    /// GOAWAY on one bridge (0: every bridge), for a drain.
    case goAway(attachID: UInt64)
    /// Close one bridge with a WebSocket close code and reason (drain deadline, admin kick).
    case close(attachID: UInt64, code: UInt16, reason: String)

    public static let maxSize = 16 * 1024
    public static let maxCounters = 64
    /// 2: COUNTERS. The relay and its workers must come from the same build (their counter
    /// order is the relay's); a mismatch is refused at READY.
    public static let protocolVersion: UInt16 = 2

    private var type: UInt8 {
        switch self {
        case .ready: return 1
        case .attached: return 2
        case .parkReady: return 3
        case .parkBusy: return 4
        case .snapshot: return 5
        case .parkFailed: return 6
        case .counters: return 7
        case .configure: return 20
        case .park: return 21
        case .goAway: return 22
        case .close: return 23
        }
    }

    public func encoded() -> [UInt8] {
        var body = WireWriter()
        body.u8(type)
        switch self {
        case .ready(let version): body.u16(version)
        case .attached(let id): body.u64(id)
        case .parkReady, .park: break
        case .parkBusy(let streams): body.u32(streams)
        case .snapshot(let id, let state):
            body.u64(id)
            state.encode(into: &body)
        case .parkFailed(let id, let reason):
            body.u64(id)
            body.string(reason)
        case .counters(let values):
            let count = min(values.count, ControlMessage.maxCounters)
            body.u16(UInt16(count))
            for value in values.prefix(count) { body.u64(value) }
        case .configure(let settings): settings.encode(into: &body)
        case .goAway(let id): body.u64(id)
        case .close(let id, let code, let reason):
            body.u64(id)
            body.u16(code)
            body.string(reason)
        }
        var out = WireWriter()
        out.u32(UInt32(body.bytes.count))
        out.bytes += body.bytes
        return out.bytes
    }

    static func decode(_ bytes: ArraySlice<UInt8>) throws(WireError) -> ControlMessage {
        var r = WireReader(bytes)
        let message: ControlMessage
        switch try r.u8() {
        case 1: message = .ready(version: try r.u16())
        case 2: message = .attached(attachID: try r.u64())
        case 3: message = .parkReady
        case 4: message = .parkBusy(streams: try r.u32())
        case 5: message = .snapshot(attachID: try r.u64(), state: try BridgeState.decode(&r))
        case 6: message = .parkFailed(attachID: try r.u64(), reason: try r.string(maxBytes: 1024))
        case 7:
            let count = Int(try r.u16())
            guard count <= ControlMessage.maxCounters else { throw .invalid("\(count) counters") }
            var values: [UInt64] = []
            values.reserveCapacity(count)
            for _ in 0..<count { values.append(try r.u64()) }
            message = .counters(values)
        case 20: message = .configure(try WorkerSettings.decode(&r))
        case 21: message = .park
        case 22: message = .goAway(attachID: try r.u64())
        case 23: message = .close(attachID: try r.u64(), code: try r.u16(), reason: try r.string(maxBytes: 1024))
        case let other: throw .invalid("control message type \(other)")
        }
        try r.expectEnd()
        return message
    }
}

/// Splits a control link's byte stream into messages. Bytes are copied once into a buffer
/// that is emptied as messages are taken (control traffic is a few messages per session).
public struct ControlMessageDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var offset = 0
    public private(set) var failure: WireError?

    public init() {}

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard failure == nil else { return }
        buffer.append(contentsOf: bytes)
    }

    public mutating func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// The next whole message, nil when more bytes are needed; throws (for good) on a
    /// malformed stream.
    public mutating func next() throws(WireError) -> ControlMessage? {
        if let failure { throw failure }
        do throws(WireError) {
            guard buffer.count - offset >= 4 else { return nil }
            var r = WireReader(buffer[offset...])
            let length = Int(try r.u32())
            guard length >= 1 else { throw WireError.invalid("empty control message") }
            guard length <= ControlMessage.maxSize else { throw WireError.tooLarge(length) }
            guard buffer.count - offset - 4 >= length else { return nil }
            let message = try ControlMessage.decode(buffer[(offset + 4)..<(offset + 4 + length)])
            offset += 4 + length
            if offset == buffer.count {
                buffer = []
                offset = 0
            }
            return message
        } catch {
            failure = error
            buffer = []
            offset = 0
            throw error
        }
    }
}

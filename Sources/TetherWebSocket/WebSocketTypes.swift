/// Which side of the connection this codec plays. Decides masking rules (RFC 6455 §5.1):
/// clients mask everything they send, servers never do.
public enum WebSocketRole: Sendable {
    case server
    case client
}

public enum WebSocketOpcode: UInt8, Sendable {
    case continuation = 0
    case text = 1
    case binary = 2
    case close = 8
    case ping = 9
    case pong = 10

    /// Control frames (close/ping/pong) may interleave fragments but can't be fragmented.
    @inlinable public var isControl: Bool { rawValue & 0x8 != 0 }
}

/// A close status code (RFC 6455 §7.4). Any value can be represented; `isValidOnWire` tells
/// whether it may appear in a close frame.
public struct WebSocketCloseCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let normalClosure = WebSocketCloseCode(rawValue: 1000)
    public static let goingAway = WebSocketCloseCode(rawValue: 1001)
    public static let protocolError = WebSocketCloseCode(rawValue: 1002)
    public static let unsupportedData = WebSocketCloseCode(rawValue: 1003)
    /// Reserved: reported when a close frame had no code; never sent.
    public static let noStatusReceived = WebSocketCloseCode(rawValue: 1005)
    /// Reserved: the transport went away without a close frame; never sent.
    public static let abnormalClosure = WebSocketCloseCode(rawValue: 1006)
    public static let invalidPayloadData = WebSocketCloseCode(rawValue: 1007)
    public static let policyViolation = WebSocketCloseCode(rawValue: 1008)
    public static let messageTooBig = WebSocketCloseCode(rawValue: 1009)
    public static let mandatoryExtension = WebSocketCloseCode(rawValue: 1010)
    public static let internalError = WebSocketCloseCode(rawValue: 1011)
    public static let serviceRestart = WebSocketCloseCode(rawValue: 1012)
    public static let tryAgainLater = WebSocketCloseCode(rawValue: 1013)
    public static let badGateway = WebSocketCloseCode(rawValue: 1014)

    /// Application-private code (4000-4999); nil outside that range.
    public static func application(_ code: UInt16) -> WebSocketCloseCode? {
        (4000 ... 4999).contains(code) ? WebSocketCloseCode(rawValue: code) : nil
    }

    /// True for codes that may be sent/received in a close frame: 1000-1003, 1007-1014
    /// (the IANA-registered ones) and 3000-4999 (libraries/apps). 1004-1006, 1015, 1016-2999
    /// and everything below 1000 or from 5000 up are rejected with 1002.
    public var isValidOnWire: Bool {
        switch rawValue {
        case 1000 ... 1003, 1007 ... 1014, 3000 ... 4999: return true
        default: return false
        }
    }

    public var description: String { String(rawValue) }
}

/// One wire frame, payload unmasked. Used by the low-level codec (load driver, tests).
public struct WebSocketFrame: Equatable, Sendable {
    public var fin: Bool
    public var rsv1: Bool
    public var rsv2: Bool
    public var rsv3: Bool
    public var opcode: WebSocketOpcode
    public var payload: [UInt8]

    public init(fin: Bool = true, rsv1: Bool = false, rsv2: Bool = false, rsv3: Bool = false,
                opcode: WebSocketOpcode, payload: [UInt8] = []) {
        self.fin = fin
        self.rsv1 = rsv1
        self.rsv2 = rsv2
        self.rsv3 = rsv3
        self.opcode = opcode
        self.payload = payload
    }
}

public enum WebSocketEvent: Equatable, Sendable {
    /// A whole text message, UTF-8 validated.
    case text(String)
    /// A whole binary message.
    case binary([UInt8])
    /// Ping from the peer; with `autoReplyPing` the pong is already queued.
    case ping([UInt8])
    case pong([UInt8])
    /// The peer sent a close frame (`code` nil when its payload was empty). With
    /// `autoReplyClose` our reply is already queued (if we had not sent a close ourselves).
    case close(code: WebSocketCloseCode?, reason: String)
    /// We detected a protocol violation: a close frame with this code is queued (unless we had
    /// already sent one), the connection is `.closed` and further input is ignored.
    case protocolError(WebSocketCloseCode, reason: String)
}

public enum WebSocketState: Sendable {
    /// Both directions open.
    case open
    /// We queued a close frame and wait for the peer's; incoming messages are still delivered.
    case closeSent
    /// The peer's close arrived and we have not replied yet (only with `autoReplyClose: false`).
    case closeReceived
    /// Closing handshake done or the connection failed: flush outbound, then close the transport.
    case closed
}

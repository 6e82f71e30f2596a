import TetherHTTP

// The vocabulary of tether.v1 (docs/PROTOCOL.md): constants, frame types, settings, heads,
// errors and the events the multiplexer reports.

/// Stream id within one tunnel; 0 is the tunnel itself.
public typealias StreamID = UInt32

public enum TunnelProtocol {
    public static let subprotocol = "tether.v1"
    public static let version: UInt16 = 1
    public static let frameHeaderSize = 10
    /// Largest flow-control window (2^31−1), as in HTTP/2.
    public static let maxWindow = Int(Int32.max)
    /// Longest agent string in HELLO, in UTF-8 bytes.
    public static let maxAgentSize = 256
    /// RESET and GOAWAY reasons we send are cut to this many UTF-8 bytes.
    public static let maxReasonSize = 256
    /// Smallest MAX_MESSAGE_SIZE a peer may announce: every control frame (HELLO with its
    /// agent, RESET/GOAWAY with a reason) fits.
    public static let minMessageSize = 1024

    /// WebSocket close codes for tunnels (§8).
    public enum CloseCode {
        public static let normal: UInt16 = 1000
        public static let goingAway: UInt16 = 1001
        public static let messageTooBig: UInt16 = 1009
        public static let authenticationFailed: UInt16 = 4001
        public static let unsupportedVersion: UInt16 = 4002
        public static let protocolError: UInt16 = 4003
    }
}

public enum TunnelFrameType: UInt8, Sendable {
    case hello = 1, open, response, data, reset, windowUpdate, ping, goAway
}

public struct TunnelFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// On OPEN, RESPONSE, DATA: this direction of the stream ends here.
    public static let endStream = TunnelFlags(rawValue: 0x01)
    /// On PING: this is the answer.
    public static let ack = TunnelFlags(rawValue: 0x02)
}

/// RESET / GOAWAY error code (§7). Unknown codes received from a peer are reported as
/// `internalError`, as the spec requires.
public struct TunnelErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let noError = TunnelErrorCode(rawValue: 0)
    public static let protocolError = TunnelErrorCode(rawValue: 1)
    public static let internalError = TunnelErrorCode(rawValue: 2)
    public static let flowControlError = TunnelErrorCode(rawValue: 3)
    public static let streamClosed = TunnelErrorCode(rawValue: 4)
    public static let refusedStream = TunnelErrorCode(rawValue: 5)
    public static let cancel = TunnelErrorCode(rawValue: 6)
    public static let localServiceError = TunnelErrorCode(rawValue: 7)
    public static let localTimeout = TunnelErrorCode(rawValue: 8)
    public static let destinationRefused = TunnelErrorCode(rawValue: 9)
    public static let headTooLarge = TunnelErrorCode(rawValue: 10)

    private static let names = [
        "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "STREAM_CLOSED", "REFUSED_STREAM",
        "CANCEL", "LOCAL_SERVICE_ERROR", "LOCAL_TIMEOUT", "DESTINATION_REFUSED", "HEAD_TOO_LARGE",
    ]

    public var isKnown: Bool { rawValue < Self.names.count }

    /// The spec's name (`LOCAL_TIMEOUT`), or `UNKNOWN_<n>`.
    public var name: String { isKnown ? Self.names[Int(rawValue)] : "UNKNOWN_\(rawValue)" }
    public var description: String { name }

    /// How a received code is treated: unknown codes are INTERNAL_ERROR (§7).
    var normalized: TunnelErrorCode { isKnown ? self : .internalError }
}

/// What a side is willing to receive (§3). The multiplexer clamps values to what the wire
/// can carry (windows to 2^31−1, MAX_MESSAGE_SIZE to at least 1,024).
public struct TunnelSettings: Sendable, Equatable {
    public var streamWindow: Int = 1 << 20
    public var tunnelWindow: Int = 8 << 20
    public var maxStreams: Int = 256
    public var maxMessageSize: Int = 1_048_586
    public var maxHeadSize: Int = 65_536
    public var pingIntervalMilliseconds: Int = 30_000

    public init() {}

    /// Wire setting ids.
    enum ID: UInt16 {
        case streamWindow = 1, tunnelWindow, maxStreams, maxMessageSize, maxHeadSize, pingInterval
    }

    /// Values representable on the wire and usable by the multiplexer.
    var sanitized: TunnelSettings {
        var s = self
        let u32 = Int(UInt32.max)
        s.streamWindow = min(max(streamWindow, 0), TunnelProtocol.maxWindow)
        s.tunnelWindow = min(max(tunnelWindow, 0), TunnelProtocol.maxWindow)
        s.maxStreams = min(max(maxStreams, 0), u32)
        s.maxMessageSize = min(max(maxMessageSize, TunnelProtocol.minMessageSize), u32)
        s.maxHeadSize = min(max(maxHeadSize, 0), u32)
        s.pingIntervalMilliseconds = min(max(pingIntervalMilliseconds, 0), u32)
        return s
    }
}

/// The request head carried by OPEN (§4): origin-form target, hop-by-hop headers removed.
public struct TunnelRequestHead: Sendable, Equatable {
    public var method: String
    public var target: String
    public var headers: HTTPHeaders

    public init(method: String, target: String, headers: HTTPHeaders = HTTPHeaders()) {
        self.method = method
        self.target = target
        self.headers = headers
    }
}

/// The response head carried by RESPONSE (§4).
public struct TunnelResponseHead: Sendable, Equatable {
    public var status: Int
    public var headers: HTTPHeaders

    public init(status: Int, headers: HTTPHeaders = HTTPHeaders()) {
        self.status = status
        self.headers = headers
    }
}

/// Tunnel-level failure: the caller closes the WebSocket with `closeCode` and `reason`.
public struct TunnelProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 4002 unsupported version, 4003 protocol or flow-control error, 1009 message too big.
    public var closeCode: UInt16
    public var reason: String

    public init(closeCode: UInt16, reason: String) {
        self.closeCode = closeCode
        self.reason = reason
    }

    public var description: String { "\(closeCode) \(reason)" }

    public static func protocolError(_ reason: String) -> TunnelProtocolError {
        TunnelProtocolError(closeCode: TunnelProtocol.CloseCode.protocolError, reason: reason)
    }

    public static let unsupportedVersion = TunnelProtocolError(closeCode: TunnelProtocol.CloseCode.unsupportedVersion,
                                                               reason: "unsupported version")
    public static let flowControl = TunnelProtocolError(closeCode: TunnelProtocol.CloseCode.protocolError,
                                                        reason: "flow control")
    public static let messageTooBig = TunnelProtocolError(closeCode: TunnelProtocol.CloseCode.messageTooBig,
                                                          reason: "message too big")
}

public enum TunnelEvent: Sendable, Equatable {
    /// The peer's HELLO (always the first event).
    case hello(version: UInt16, settings: TunnelSettings, agent: String)
    /// Bridge side only: the relay opened a stream.
    case streamOpened(StreamID, TunnelRequestHead, endStream: Bool)
    /// Relay side only: the bridge answered a stream.
    case response(StreamID, TunnelResponseHead, endStream: Bool)
    /// Body bytes: a slice of the received message (no copy). Report them with `consumed`
    /// once passed on, or flow control stalls.
    case data(StreamID, ArraySlice<UInt8>, endStream: Bool)
    /// The peer reset the stream, or the multiplexer did for a stream error (then the RESET
    /// frame is already queued). Either way the stream is gone.
    case streamReset(StreamID, TunnelErrorCode, reason: String)
    /// The send window of this stream grew from 0; StreamID 0: the tunnel window did (every
    /// blocked stream may send).
    case windowAvailable(StreamID)
    /// The peer pinged; the answer is already queued.
    case ping(UInt64)
    case pong(UInt64)
    /// The peer will open (relay) or accept (bridge) no new streams; streams up to
    /// `lastStreamID` finish normally.
    case goAway(lastStreamID: StreamID, code: TunnelErrorCode, reason: String)
}

import COpenSSL

public enum TLSRole: Sendable {
    case server
    case client
}

public enum TLSVersion: Sendable {
    case tls12
    case tls13

    var openSSLValue: Int32 {
        switch self {
        case .tls12: return TLS1_2_VERSION
        case .tls13: return TLS1_3_VERSION
        }
    }
}

/// Everything needed to build a `TLSContext`. Plain values only, so it can cross threads.
public struct TLSConfiguration: Sendable {
    public var role: TLSRole
    /// PEM certificate chain, leaf first (server).
    public var certificateChainFile: String?
    /// PEM private key (server). Encrypted keys are rejected rather than prompting on stdin.
    public var privateKeyFile: String?
    /// Client: CA file used to verify the server; nil = the system's default roots.
    public var trustRootsFile: String?
    /// Client: verify the server's chain and (when a server name is given) its hostname.
    public var verifyPeer: Bool = true
    /// Server: protocols it accepts, in preference order. Client: protocols it offers.
    public var alpn: [String] = ["http/1.1"]
    public var minimumVersion: TLSVersion = .tls12
    public var maximumVersion: TLSVersion = .tls13
    /// Server: issue session tickets (stateless resumption). They cost no per-connection memory
    /// once sent (measured in the tests), so they stay on by default.
    public var sessionTickets: Bool = true

    public init(role: TLSRole,
                certificateChainFile: String? = nil,
                privateKeyFile: String? = nil,
                trustRootsFile: String? = nil,
                verifyPeer: Bool = true,
                alpn: [String] = ["http/1.1"],
                minimumVersion: TLSVersion = .tls12,
                maximumVersion: TLSVersion = .tls13,
                sessionTickets: Bool = true) {
        self.role = role
        self.certificateChainFile = certificateChainFile
        self.privateKeyFile = privateKeyFile
        self.trustRootsFile = trustRootsFile
        self.verifyPeer = verifyPeer
        self.alpn = alpn
        self.minimumVersion = minimumVersion
        self.maximumVersion = maximumVersion
        self.sessionTickets = sessionTickets
    }

    public static func server(certificateChainFile: String, privateKeyFile: String) -> Self {
        Self(role: .server, certificateChainFile: certificateChainFile, privateKeyFile: privateKeyFile)
    }

    public static func client(trustRootsFile: String? = nil, verifyPeer: Bool = true) -> Self {
        Self(role: .client, trustRootsFile: trustRootsFile, verifyPeer: verifyPeer)
    }
}

public struct TLSError: Error, Sendable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { "TLSError: \(message)" }

    /// `context` followed by the thread's OpenSSL error queue, which is cleared.
    static func openSSL(_ context: String) -> TLSError {
        TLSError(withOpenSSLErrors(context))
    }
}

/// Drains this thread's OpenSSL error queue into `context: err1; err2`. Draining matters: a stale
/// entry would otherwise be blamed on the next, unrelated connection handled by this thread.
func withOpenSSLErrors(_ context: String) -> String {
    var details: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buffer = [CChar](repeating: 0, count: 256)
        buffer.withUnsafeMutableBufferPointer { ptr in
            ERR_error_string_n(code, ptr.baseAddress, ptr.count)
        }
        details.append(stringFromCChars(buffer))
    }
    return details.isEmpty ? context : "\(context): \(details.joined(separator: "; "))"
}

/// NUL-terminated C buffer -> String, without the deprecated `String(cString: [CChar])`.
func stringFromCChars(_ chars: [CChar]) -> String {
    let bytes = chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

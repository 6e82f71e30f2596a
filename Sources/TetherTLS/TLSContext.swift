import COpenSSL

/// An OpenSSL `SSL_CTX`. Immutable after `init`, so connections may be created from several
/// threads at once (OpenSSL 3 makes `SSL_new` on a shared context thread-safe).
///
/// Certificate reload: build a new `TLSContext` from the new files and use it for new
/// connections. Each `TLSConnection` keeps a strong reference to the context it was made
/// with, so an old context (and its ALPN list) lives exactly as long as its last connection.
public final class TLSContext: @unchecked Sendable {
    let ctx: OpaquePointer
    public let configuration: TLSConfiguration
    /// Server ALPN list in wire format (length-prefixed), handed to the capture-free select
    /// callback as its `arg`. Owned here; freed in deinit.
    private let alpnWire: UnsafeMutableRawBufferPointer?

    public init(configuration: TLSConfiguration) throws(TLSError) {
        ERR_clear_error()
        let method = configuration.role == .server ? TLS_server_method() : TLS_client_method()
        guard let ctx = SSL_CTX_new(method) else {
            throw TLSError.openSSL("SSL_CTX_new failed")
        }
        var alpnWire: UnsafeMutableRawBufferPointer?
        do throws(TLSError) {
            try Self.configureCommon(ctx, configuration)
            switch configuration.role {
            case .server:
                try Self.configureServer(ctx, configuration)
                if !configuration.alpn.isEmpty {
                    // Terminated by a 0-length entry: the callback is not told the list's size.
                    let wire = try Self.encodeALPN(configuration.alpn) + [0]
                    let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: wire.count, alignment: 1)
                    storage.copyBytes(from: wire)
                    alpnWire = storage
                    SSL_CTX_set_alpn_select_cb(ctx, tetherALPNSelect, storage.baseAddress)
                }
            case .client:
                try Self.configureClient(ctx, configuration)
            }
        } catch {
            SSL_CTX_free(ctx)
            alpnWire?.deallocate()
            throw error
        }
        self.ctx = ctx
        self.configuration = configuration
        self.alpnWire = alpnWire
    }

    deinit {
        // SSL_CTX is reference counted by OpenSSL: live SSL objects keep their own count.
        SSL_CTX_free(ctx)
        alpnWire?.deallocate()
    }

    // MARK: - Setup

    private static func configureCommon(_ ctx: OpaquePointer, _ config: TLSConfiguration) throws(TLSError) {
        if config.minimumVersion == .tls13 && config.maximumVersion == .tls12 {
            throw TLSError("minimumVersion (TLS 1.3) is above maximumVersion (TLS 1.2)")
        }
        guard tether_SSL_CTX_set_min_proto_version(ctx, config.minimumVersion.openSSLValue) == 1,
              tether_SSL_CTX_set_max_proto_version(ctx, config.maximumVersion.openSSLValue) == 1 else {
            throw TLSError.openSSL("cannot set protocol version range")
        }
        // RELEASE_BUFFERS: OpenSSL frees its ~17 KiB read/write record buffers whenever they are
        // empty, which is what keeps idle connections small. MOVING_WRITE_BUFFER: a retried write
        // may come from a different buffer (see TLSConnection.encrypt).
        _ = tether_SSL_CTX_set_mode(ctx, Int(SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        // No renegotiation: it is a DoS vector and would make SSL_write need reads.
        _ = SSL_CTX_set_options(ctx, tether_SSL_OP_NO_RENEGOTIATION() | tether_SSL_OP_NO_COMPRESSION())
        // Never let OpenSSL prompt on the terminal for a PEM pass phrase.
        SSL_CTX_set_default_passwd_cb(ctx, tetherNoPassword)
        _ = try encodeALPN(config.alpn)
    }

    private static func configureServer(_ ctx: OpaquePointer, _ config: TLSConfiguration) throws(TLSError) {
        guard let chain = config.certificateChainFile else {
            throw TLSError("server configuration needs certificateChainFile")
        }
        guard let key = config.privateKeyFile else {
            throw TLSError("server configuration needs privateKeyFile")
        }
        guard SSL_CTX_use_certificate_chain_file(ctx, chain) == 1 else {
            throw TLSError.openSSL("cannot load certificate chain from '\(chain)'")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 else {
            throw TLSError.openSSL("cannot load private key from '\(key)'")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw TLSError.openSSL("private key '\(key)' does not match certificate '\(chain)'")
        }
        _ = SSL_CTX_set_options(ctx, tether_SSL_OP_CIPHER_SERVER_PREFERENCE())
        // No server-side session cache: it would hold every TLS 1.2 session for hours. Tickets
        // are stateless (the state travels with the client), so resumption still works.
        _ = tether_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
        if !config.sessionTickets {
            _ = SSL_CTX_set_options(ctx, tether_SSL_OP_NO_TICKET())
            _ = SSL_CTX_set_num_tickets(ctx, 0)
        }
    }

    private static func configureClient(_ ctx: OpaquePointer, _ config: TLSConfiguration) throws(TLSError) {
        _ = tether_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
        if config.verifyPeer {
            if let roots = config.trustRootsFile {
                guard SSL_CTX_load_verify_locations(ctx, roots, nil) == 1 else {
                    throw TLSError.openSSL("cannot load trust roots from '\(roots)'")
                }
            } else {
                guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
                    throw TLSError.openSSL("cannot load the system's default trust roots")
                }
            }
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        } else {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        }
        if !config.alpn.isEmpty {
            let wire = try encodeALPN(config.alpn)
            // Note the inverted convention: 0 means success here.
            let rc = wire.withUnsafeBufferPointer { SSL_CTX_set_alpn_protos(ctx, $0.baseAddress, UInt32($0.count)) }
            guard rc == 0 else { throw TLSError.openSSL("cannot set ALPN protocols") }
        }
    }

    /// ["http/1.1"] -> "\u{8}http/1.1" (RFC 7301 wire format).
    static func encodeALPN(_ protocols: [String]) throws(TLSError) -> [UInt8] {
        var wire: [UInt8] = []
        for name in protocols {
            let bytes = Array(name.utf8)
            guard !bytes.isEmpty, bytes.count <= 255 else {
                throw TLSError("invalid ALPN protocol name '\(name)' (must be 1...255 bytes)")
            }
            wire.append(UInt8(bytes.count))
            wire.append(contentsOf: bytes)
        }
        return wire
    }
}

// MARK: - Capture-free C callbacks

/// PEM pass-phrase callback: no pass phrase, so encrypted keys fail to load instead of blocking.
private let tetherNoPassword: @convention(c) (UnsafeMutablePointer<CChar>?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = { _, _, _, _ in
    0
}

/// Server ALPN selection: the first server protocol (in server preference order) that the
/// client offered. `arg` is the context's wire-format list. Parses the client list defensively:
/// it comes straight off the network.
private let tetherALPNSelect: @convention(c) (
    OpaquePointer?,
    UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
    UnsafeMutablePointer<UInt8>?,
    UnsafePointer<UInt8>?,
    UInt32,
    UnsafeMutableRawPointer?
) -> Int32 = { _, out, outLength, clientList, clientLength, arg in
    guard let out, let outLength, let clientList, let arg else { return SSL_TLSEXT_ERR_NOACK }
    let client = UnsafeBufferPointer(start: clientList, count: Int(clientLength))
    // The server list ends with a 0-length entry (see init).
    var s = UnsafePointer(arg.assumingMemoryBound(to: UInt8.self))
    while s.pointee != 0 {
        let sLen = Int(s.pointee)
        let sName = UnsafeBufferPointer(start: s + 1, count: sLen)
        var i = 0
        while i < client.count {
            let cLen = Int(client[i])
            let start = i + 1
            guard cLen > 0, start + cLen <= client.count else { break }
            if cLen == sLen && sName.elementsEqual(client[start..<(start + cLen)]) {
                out.pointee = clientList + start
                outLength.pointee = UInt8(cLen)
                return SSL_TLSEXT_ERR_OK
            }
            i = start + cLen
        }
        s += 1 + sLen
    }
    // No overlap: continue without ALPN rather than failing the handshake.
    return SSL_TLSEXT_ERR_NOACK
}

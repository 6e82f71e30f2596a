import COpenSSL

public enum TLSReadResult: Equatable, Sendable {
    /// This many plaintext bytes were written at the start of the caller's buffer.
    case bytes(Int)
    /// Nothing more can be done until more ciphertext is fed (check `hasOutboundCiphertext`).
    case wantMoreCiphertext
    /// The peer sent close_notify. Call `shutdown()` to answer it, send the output, close.
    case closed
    /// Fatal; the message includes OpenSSL's error queue. Send any outbound (it may hold an
    /// alert), then close.
    case failed(String)
}

/// One TLS session driven by bytes: feed it ciphertext from the socket, read plaintext out,
/// write plaintext in, and send whatever `takeOutboundCiphertext` returns. No I/O of its own.
///
/// Not thread-safe: use it from one thread (the event loop that owns the socket).
/// After every call that can make progress (start, read, write, shutdown) the caller should
/// check `hasOutboundCiphertext`: handshake messages, session tickets, key-update replies and
/// alerts are produced while *reading*.
public final class TLSConnection {
    /// Kept alive by this connection, so a reloaded (replaced) context stays valid for it.
    public let context: TLSContext
    let ssl: OpaquePointer

    // Ciphertext input; see CiphertextBIO.swift.
    var inbound: [UInt8] = []
    var inboundOffset = 0
    var borrowed = UnsafeRawBufferPointer(start: nil, count: 0)
    var borrowedOffset = 0
    var recordRemaining = 0
    var framing = true
    var inputEOF = false

    /// Ciphertext produced by OpenSSL, waiting to be taken by the caller.
    var outbound: [UInt8] = []
    /// Plaintext accepted before the handshake finished (or while a write had to wait).
    private var pendingPlaintext: [UInt8] = []

    private let isServer: Bool
    private var handshakeStarted = false
    private var handshakeDone = false
    private var peerClosed = false
    private var shutdownRequested = false
    private var closeNotifySent = false
    public private(set) var failure: String?

    /// - Parameter serverName: client only: sent as SNI (unless it is an IP address) and, when
    ///   the configuration has `verifyPeer`, checked against the server certificate. With
    ///   `verifyPeer` and no name, only the chain is verified.
    public init(context: TLSContext, serverName: String? = nil) throws(TLSError) {
        ERR_clear_error()
        guard let method = TetherBIOMethod.shared.method else {
            throw TLSError.openSSL("cannot create the ciphertext BIO method")
        }
        guard let ssl = SSL_new(context.ctx) else {
            throw TLSError.openSSL("SSL_new failed")
        }
        guard let bio = BIO_new(method) else {
            SSL_free(ssl)
            throw TLSError.openSSL("BIO_new failed")
        }
        self.ssl = ssl
        self.context = context
        self.isServer = context.configuration.role == .server
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        SSL_set_bio(ssl, bio, bio)  // SSL owns the BIO from here on (freed by SSL_free)

        if isServer {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName {
                try configureServerName(serverName)
            }
        }
    }

    deinit {
        // Detach first: nothing inside SSL_free may call back into a half-destroyed object.
        if let bio = SSL_get_rbio(ssl) { BIO_set_data(bio, nil) }
        SSL_free(ssl)
    }

    private func configureServerName(_ name: String) throws(TLSError) {
        guard !name.isEmpty, !name.utf8.contains(0) else {
            throw TLSError("invalid server name '\(name)'")
        }
        // IP literals: verified against the certificate's IP SANs and never sent as SNI
        // (RFC 6066 forbids it). X509_VERIFY_PARAM_set1_ip_asc fails for non-IP text.
        let verify = context.configuration.verifyPeer
        if let param = SSL_get0_param(ssl), X509_VERIFY_PARAM_set1_ip_asc(param, name) == 1 {
            if !verify { _ = X509_VERIFY_PARAM_set1_ip(param, nil, 0) }
            return
        }
        ERR_clear_error()
        guard tether_SSL_set_tlsext_host_name(ssl, name) == 1 else {
            throw TLSError.openSSL("cannot set SNI server name '\(name)'")
        }
        if verify {
            guard SSL_set1_host(ssl, name) == 1 else {
                throw TLSError.openSSL("cannot set expected host name '\(name)'")
            }
        }
    }

    // MARK: - Driving

    /// Client: produces the ClientHello into the outbound ciphertext. Server: no-op.
    public func startHandshake() {
        guard !isServer, !handshakeStarted, failure == nil else { return }
        _ = driveHandshake()
    }

    /// Queues received ciphertext (copied). Then call `readPlaintext` until `.wantMoreCiphertext`.
    public func feedCiphertext(_ bytes: UnsafeRawBufferPointer) {
        spillBorrowed()
        guard bytes.count > 0 else { return }
        if inboundOffset > 0 {
            inbound.removeFirst(inboundOffset)
            inboundOffset = 0
        }
        inbound.append(contentsOf: bytes)
    }

    /// Zero-copy variant of `feedCiphertext`: `bytes` is lent for the duration of `body`, in which
    /// the caller calls `readPlaintext`; OpenSSL decrypts straight out of it. Only the unconsumed
    /// tail (normally part of one record) is copied when `body` returns.
    public func withCiphertext<Result, E: Error>(_ bytes: UnsafeRawBufferPointer,
                                                 _ body: () throws(E) -> Result) throws(E) -> Result {
        spillBorrowed()
        borrowed = bytes
        borrowedOffset = 0
        defer { spillBorrowed() }
        return try body()
    }

    /// The peer closed its side of the transport (read returned 0). Pending reads then fail with
    /// "unexpected EOF" unless close_notify was received first.
    public func feedEOF() {
        inputEOF = true
    }

    /// Drives the handshake as needed, then decrypts into `buffer`. Call repeatedly until it
    /// returns `.wantMoreCiphertext` (or `.closed` / `.failed`). An empty buffer yields `.bytes(0)`
    /// once the handshake is done.
    public func readPlaintext(into buffer: UnsafeMutableRawBufferPointer) -> TLSReadResult {
        if let failure { return .failed(failure) }
        if peerClosed { return .closed }
        if !handshakeDone, let result = driveHandshake() { return result }
        guard let base = buffer.baseAddress, buffer.count > 0 else { return .bytes(0) }
        ERR_clear_error()
        var count = 0
        let rc = SSL_read_ex(ssl, base, buffer.count, &count)
        if rc == 1 {
            sendPendingKeyUpdate()
            return .bytes(count)
        }
        let result = classify(rc)
        guard result == .wantMoreCiphertext else { return result }
        // A completed post-handshake exchange may unblock plaintext that had to wait.
        if !pendingPlaintext.isEmpty, !flushPending() {
            return .failed(failure ?? "write failed")
        }
        sendPendingKeyUpdate()
        releaseIdleBuffers()
        return result
    }

    /// Accepts all of `bytes`: encrypts now, or buffers until the handshake completes (a client
    /// that has not started its handshake starts it). Returns false only if the connection has
    /// failed or was shut down.
    @discardableResult
    public func writePlaintext(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard failure == nil, !shutdownRequested else { return false }
        guard bytes.count > 0 else { return true }
        if !handshakeDone || !pendingPlaintext.isEmpty {
            pendingPlaintext.append(contentsOf: bytes)
            if !isServer && !handshakeStarted { _ = driveHandshake() }
            return failure == nil
        }
        return encrypt(bytes)
    }

    /// Queues close_notify (after any plaintext still waiting for the handshake). Idempotent.
    public func shutdown() {
        guard failure == nil, !shutdownRequested else { return }
        shutdownRequested = true
        if handshakeDone { sendCloseNotify() }
        // Otherwise sent when the handshake completes.
    }

    // MARK: - Output

    public var hasOutboundCiphertext: Bool { !outbound.isEmpty }

    /// Appends all pending ciphertext to `buffer` and releases the internal storage.
    public func takeOutboundCiphertext(into buffer: inout [UInt8]) {
        if buffer.isEmpty && buffer.capacity == 0 {
            buffer = outbound  // hand the storage over instead of copying
        } else {
            buffer.append(contentsOf: outbound)
        }
        outbound = []
    }

    /// All pending ciphertext, without a copy; the connection keeps no storage.
    public func takeOutboundCiphertext() -> [UInt8] {
        defer { outbound = [] }
        return outbound
    }

    // MARK: - State

    public var isHandshakeComplete: Bool { handshakeDone && SSL_is_init_finished(ssl) == 1 }

    public var negotiatedALPN: String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// "TLSv1.3" / "TLSv1.2" once the handshake is complete.
    public var negotiatedVersion: String? {
        guard handshakeDone, let version = SSL_get_version(ssl) else { return nil }
        return String(cString: version)
    }

    /// Subject of the peer's certificate ("/CN=..." form); in practice the client side's view.
    public var peerCertificateSubject: String? {
        guard let certificate = SSL_get0_peer_certificate(ssl),
              let name = X509_get_subject_name(certificate) else { return nil }
        var buffer = [CChar](repeating: 0, count: 512)
        let ok = buffer.withUnsafeMutableBufferPointer { X509_NAME_oneline(name, $0.baseAddress, Int32($0.count)) != nil }
        return ok ? stringFromCChars(buffer) : nil
    }

    /// True once close_notify has been received from the peer.
    public var isClosedByPeer: Bool { peerClosed }

    // MARK: - Internals

    /// Runs SSL_do_handshake. Returns nil when the handshake has completed, else the result to
    /// hand to the reader.
    private func driveHandshake() -> TLSReadResult? {
        handshakeStarted = true
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        guard rc == 1 else {
            let result = classify(rc)
            if result == .wantMoreCiphertext { releaseIdleBuffers() }
            return result
        }
        handshakeDone = true
        guard flushPending() else { return .failed(failure ?? "write failed") }
        if shutdownRequested { sendCloseNotify() }
        return nil
    }

    /// A peer's KeyUpdate(update_requested) makes OpenSSL owe a KeyUpdate of its own, which it
    /// would only send with our next SSL_write; a quiet side would never answer it. Sending it now
    /// keeps "everything produced while reading is in outbound" true.
    private func sendPendingKeyUpdate() {
        guard SSL_get_key_update_type(ssl) != SSL_KEY_UPDATE_NONE else { return }
        ERR_clear_error()
        // SSL_do_handshake alone does nothing outside init; SSL_key_update re-arms the same
        // (not-requested) update and enters init, so the handshake call writes it out.
        if SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) == 1 {
            _ = SSL_do_handshake(ssl)
        }
        ERR_clear_error()
    }

    /// RELEASE_BUFFERS misses one path in OpenSSL 3.0: after a post-handshake message (TLS 1.3
    /// session ticket, KeyUpdate) the ~17 KiB read buffer stays allocated (measured). Idle here
    /// means OpenSSL holds no partial record (the BIO only hands over whole records), so
    /// SSL_free_buffers can always drop it; it refuses by itself if anything is pending.
    private func releaseIdleBuffers() {
        _ = SSL_free_buffers(ssl)
    }

    private func classify(_ rc: Int32) -> TLSReadResult {
        let code = SSL_get_error(ssl, rc)
        switch code {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantMoreCiphertext
        case SSL_ERROR_ZERO_RETURN:
            peerClosed = true
            ERR_clear_error()
            return .closed
        default:
            return .failed(fail(code))
        }
    }

    /// Records a fatal error with OpenSSL's error queue (and the certificate verification
    /// result, which the queue only reports as "certificate verify failed").
    @discardableResult
    private func fail(_ code: Int32) -> String {
        var context: String
        switch code {
        case SSL_ERROR_SSL: context = "TLS error"
        case SSL_ERROR_SYSCALL: context = "TLS transport error (unexpected EOF)"
        default: context = "TLS error (SSL_get_error \(code))"
        }
        if !isServer {
            let verify = SSL_get_verify_result(ssl)
            if verify != Int(X509_V_OK), let text = X509_verify_cert_error_string(verify) {
                context += " [certificate verification: \(String(cString: text))]"
            }
        }
        let message = withOpenSSLErrors(context)
        failure = message
        pendingPlaintext = []
        return message
    }

    /// Encrypts `bytes` into `outbound`. The BIO accepts every write, so SSL_write_ex writes all
    /// of it in one call; a WANT_* (not expected without renegotiation) keeps it for later.
    private func encrypt(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        ERR_clear_error()
        var written = 0
        let rc = SSL_write_ex(ssl, base, bytes.count, &written)
        if rc == 1 { return true }
        let code = SSL_get_error(ssl, rc)
        if code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE {
            // Retried with the same bytes (possibly more appended) on the next read.
            pendingPlaintext.append(contentsOf: bytes)
            return true
        }
        fail(code)
        return false
    }

    private func flushPending() -> Bool {
        guard !pendingPlaintext.isEmpty else { return true }
        // Move out first: encrypt() may append to pendingPlaintext (exclusive access).
        let data = pendingPlaintext
        pendingPlaintext = []
        return data.withUnsafeBytes { encrypt($0) }
    }

    private func sendCloseNotify() {
        guard !closeNotifySent, failure == nil else { return }
        closeNotifySent = true
        _ = flushPending()
        ERR_clear_error()
        _ = SSL_shutdown(ssl)  // 0 = sent, waiting for the peer's; fine for us
        ERR_clear_error()
    }
}

/// Owned by one event-loop thread; the C callbacks reach it without synchronisation.
@available(*, unavailable)
extension TLSConnection: Sendable {}

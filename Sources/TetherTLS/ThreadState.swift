import COpenSSL

/// Frees OpenSSL's state for the calling thread (its random generators, error queue). OpenSSL
/// does this itself from a thread-exit destructor, which races with process exit for a thread
/// still winding down then (LeakSanitizer reports the generators); a helper thread that used
/// TLS calls this as its last step instead.
public func releaseOpenSSLThreadState() {
    OPENSSL_thread_stop()
}

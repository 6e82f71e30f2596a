import Foundation
import TetherAuth
import TetherIsolation
import TetherQuota
import TetherRelay
import TetherTLS

/// Checks that involve several keys or the files settings point at, and the final assembly
/// (quota table, secrets read from files, audit destination).
struct ConfigurationBuilder {
    var draft: ConfigurationDraft
    let values: [String: ResolvedSetting]
    let verifyFiles: Bool
    var issues: [ConfigurationIssue] = []
    var warnings: [ConfigurationIssue] = []

    /// Secrets and tokens read from files: a few hundred bytes at most.
    static let maxSecretFileBytes = 64 * 1024

    init(draft: ConfigurationDraft, values: [String: ResolvedSetting], verifyFiles: Bool) {
        self.draft = draft
        self.values = values
        self.verifyFiles = verifyFiles
    }

    private mutating func fail(_ key: String, _ problem: String) {
        issues.append(ConfigurationIssue(key: key, source: values[key]?.source, problem: problem))
    }

    private mutating func warn(_ key: String, _ problem: String) {
        warnings.append(ConfigurationIssue(key: key, source: values[key]?.source, problem: problem))
    }

    private func isSet(_ key: String) -> Bool { values[key] != nil }

    mutating func build() -> RelayConfiguration {
        checkListeners()
        checkAdmin()
        checkAuth()
        checkTunnel()
        checkIsolation()
        buildQuotas()
        buildAudit()
        return draft.relay
    }

    private mutating func checkListeners() {
        let c = draft.relay
        if c.tlsPort != nil {
            if c.tlsCertificateFile == nil || c.tlsKeyFile == nil {
                fail("tls.port", "a TLS listener needs tls.cert and tls.key (--tls-cert, --tls-key)")
            } else if verifyFiles, let cert = c.tlsCertificateFile, let key = c.tlsKeyFile {
                let certReadable = checkReadable("tls.cert", cert)
                let keyReadable = checkReadable("tls.key", key)
                if certReadable && keyReadable {
                    do {
                        _ = try TLSContext(configuration: .server(certificateChainFile: cert, privateKeyFile: key))
                    } catch {
                        fail("tls.cert", "cannot load the certificate \(cert) with the key \(key): \(error.message)")
                    }
                }
            }
        } else if c.tlsCertificateFile != nil || c.tlsKeyFile != nil {
            warn(isSet("tls.cert") ? "tls.cert" : "tls.key", "ignored: tls.port is not set, so there is no TLS listener")
        }
        if c.host == c.adminHost, let adminPort = c.adminPort, adminPort != 0, draft.adminEnabled {
            if adminPort == c.port { fail("admin.port", "is also listen.port (\(adminPort))") }
            if adminPort == c.tlsPort { fail("admin.port", "is also tls.port (\(adminPort))") }
        }
        if let tlsPort = c.tlsPort, tlsPort != 0, tlsPort == c.port {
            fail("tls.port", "is also listen.port (\(tlsPort))")
        }
    }

    private mutating func checkAdmin() {
        if !draft.adminEnabled { draft.relay.adminPort = nil }
        if let path = draft.adminTokenFile, prefersFile("admin.token_file", over: "admin.token"),
           let token = readSecret("admin.token_file", path) {
            draft.relay.adminToken = token
        }
        if let token = draft.relay.adminToken, token.utf8.count < 16 {
            warn(isSet("admin.token_file") ? "admin.token_file" : "admin.token",
                 "the admin token is \(token.utf8.count) bytes; use at least 16 random bytes")
        }
    }

    private mutating func checkAuth() {
        if let path = draft.jwtSecretFile, prefersFile("auth.jwt_secret_file", over: "auth.jwt_secret"),
           let secret = readSecret("auth.jwt_secret_file", path) {
            draft.relay.auth.hs256Secret = secret
        }
        if let secret = draft.relay.auth.hs256Secret, secret.utf8.count < 16 {
            fail(isSet("auth.jwt_secret_file") ? "auth.jwt_secret_file" : "auth.jwt_secret",
                 "the HS256 secret must be at least 16 bytes, got \(secret.utf8.count)")
        }
        let auth = draft.relay.auth
        if let url = auth.jwksURL {
            do {
                _ = try JWKSURL(url)
            } catch {
                fail("jwks.url", error.message)
            }
        }
        if let ca = auth.jwksCAFile {
            if auth.jwksURL == nil {
                fail("jwks.ca_file", "needs jwks.url (it verifies the JWKS server)")
            } else if verifyFiles {
                _ = checkReadable("jwks.ca_file", ca)
            }
        }
        if verifyFiles, let file = auth.jwksFile, checkReadable("jwks.file", file) {
            var only = AuthConfiguration()
            only.jwksFile = file
            do {
                _ = try TokenVerifier(configuration: only)
            } catch {
                fail("jwks.file", "\(error)")
            }
        }
    }

    private mutating func checkTunnel() {
        let t = draft.relay.tunnel
        if t.tunnelWindow < t.streamWindow {
            let key = isSet("tunnel.window") || !isSet("tunnel.stream_window") ? "tunnel.window" : "tunnel.stream_window"
            fail(key, "tunnel.window (\(t.tunnelWindow)) must be at least tunnel.stream_window (\(t.streamWindow))")
        }
    }

    private mutating func checkIsolation() {
        let iso = draft.relay.isolation
        if iso.retryMaxMilliseconds < iso.retryInitialMilliseconds {
            fail("isolation.retry_max", "must be at least isolation.retry_initial")
        }
        guard iso.isDocker else { return }
        if !iso.runDirectory.hasPrefix("/") {
            fail("isolation.run_dir", "must be an absolute path, got \(iso.runDirectory)")
        } else if iso.runDirectory.utf8.count > IsolationSettings.maxRunDirectoryLength {
            fail("isolation.run_dir", "must be at most \(IsolationSettings.maxRunDirectoryLength) bytes (the session sockets under it must fit a 107-byte unix socket path), got \(iso.runDirectory.utf8.count)")
        }
        if iso.userIDs == nil {
            fail("isolation.user", "must be a numeric uid:gid such as 1001:1001, got \(iso.user)")
        } else if iso.userIDs?.uid == 0 {
            warn("isolation.user", "runs the session workers as root inside their containers")
        }
        if !iso.dockerSocket.hasPrefix("/") {
            fail("isolation.docker_socket", "must be the absolute path of the engine's unix socket")
        }
        if verifyFiles, let file = iso.seccompProfileFile {
            _ = checkReadable("isolation.seccomp_profile", file)
        }
    }

    /// The quota file (or the embedded defaults), the quotas.default.* overrides, and the
    /// relay-wide HTTP limits it must agree with.
    private mutating func buildQuotas() {
        var table: TierTable
        if let file = draft.quotaFile {
            do {
                table = try TierTable.load(file: file)
            } catch {
                if error.key == "file" {
                    fail("quotas.file", error.problem)
                } else {
                    fail("quotas.file", "\(file): \(error.key): \(error.problem)")
                }
                return
            }
        } else {
            table = TierTable()
            table.defaultProfile.maxBodyBytes = draft.relay.httpLimits.maxBodySize
        }
        if let claim = draft.tierClaim { table.claim = claim }
        table = draft.profile.applied(to: table)
        do {
            try table.validate()
        } catch {
            // Name the setting that caused it when there is one (quotas.default.max_bridges).
            let key = "quotas.\(error.key)"
            if Settings.byKey[key] != nil, isSet(key) {
                fail(key, error.problem)
            } else {
                fail(draft.quotaFile != nil ? "quotas.file" : "quotas", "\(error.key): \(error.problem)")
            }
            return
        }
        // Per-tier header limits can only lower the relay-wide one.
        let headerLimit = draft.relay.httpLimits.maxHeaderBytes
        table.defaultProfile.maxHeaderBytes = min(table.defaultProfile.maxHeaderBytes, headerLimit)
        for (name, profile) in table.tiers {
            table.tiers[name]?.maxHeaderBytes = min(profile.maxHeaderBytes, headerLimit)
        }
        // The decoder's body cap must admit the most generous tier; each request is then held to
        // its own tier's limit.
        let largestBody = ([table.defaultProfile] + Array(table.tiers.values)).map(\.maxBodyBytes).max() ?? 0
        draft.relay.httpLimits.maxBodySize = max(draft.relay.httpLimits.maxBodySize, largestBody)
        draft.relay.tiers = table
        draft.relay.auth.tierClaim = table.claim
    }

    private mutating func buildAudit() {
        switch draft.auditLog {
        case "-":
            draft.relay.auditLog = .standardOutput
        case "off", "":
            draft.relay.auditLog = .off
        default:
            let path = draft.auditLog
            draft.relay.auditLog = .file(path)
            guard verifyFiles else { return }
            if access(path, F_OK) == 0 {
                if access(path, W_OK) != 0 { fail("audit.log", "cannot write \(path): \(String(cString: strerror(errno)))") }
            } else {
                let directory = (path as NSString).deletingLastPathComponent
                let dir = directory.isEmpty ? "." : directory
                if access(dir, W_OK) != 0 {
                    fail("audit.log", "cannot create \(path): \(dir): \(String(cString: strerror(errno)))")
                }
            }
        }
    }

    /// A secret given both directly and as a file: the higher-precedence source wins (an
    /// environment variable overrides the file's token_file); both from one source is an error.
    private mutating func prefersFile(_ fileKey: String, over valueKey: String) -> Bool {
        guard let value = values[valueKey] else { return true }
        let fileRank = values[fileKey]?.source.rank ?? 0
        if value.source.rank == fileRank {
            fail(fileKey, "set either \(valueKey) or \(fileKey), not both (\(valueKey) from \(value.source))")
            return false
        }
        return fileRank > value.source.rank
    }

    /// A secret held in a file: whitespace around it is ignored (editors add a newline).
    private mutating func readSecret(_ key: String, _ path: String) -> String? {
        switch readTextFile(path, maxBytes: Self.maxSecretFileBytes) {
        case .success(let text):
            let secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !secret.isEmpty else {
                fail(key, "\(path) is empty")
                return nil
            }
            return secret
        case .failure(let problem):
            fail(key, problem.message)
            return nil
        }
    }

    private mutating func checkReadable(_ key: String, _ path: String) -> Bool {
        switch readTextFile(path, maxBytes: 16 << 20) {
        case .success: return true
        case .failure(let problem):
            fail(key, problem.message)
            return false
        }
    }
}

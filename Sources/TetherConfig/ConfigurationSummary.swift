import TetherRelay

extension LoadedConfiguration {
    /// check-config's report: what will run, where values came from. Never a secret's value.
    public func summary() -> [String] {
        let c = relay
        var lines: [String] = []
        var listen = "\(c.host):\(c.port), \(c.workers) worker\(c.workers == 1 ? "" : "s")"
        if let tls = c.tlsPort {
            listen += "; TLS :\(tls) (cert \(c.tlsCertificateFile ?? "?"), key \(c.tlsKeyFile ?? "?"))"
        }
        lines.append("listen   \(listen)")
        var admin = c.adminPort.map { "\(c.adminHost):\($0)" } ?? "off"
        if c.adminPort != nil {
            admin += c.adminToken == nil ? ", no token (admin calls get 401)" : ", token set\(origin(of: "admin.token_file", "admin.token"))"
        }
        if c.metricsOnMainListener { admin += ", /metrics on the main listeners" }
        lines.append("admin    \(admin)")
        var auth: [String] = []
        if c.auth.hs256Secret != nil {
            auth.append("HS256 secret set\(origin(of: "auth.jwt_secret_file", "auth.jwt_secret"))")
        }
        if let file = c.auth.jwksFile { auth.append("JWKS file \(file)") }
        if let url = c.auth.jwksURL { auth.append("JWKS URL \(url)") }
        if auth.isEmpty { auth.append("no keys (every token is refused)") }
        if let iss = c.auth.issuer { auth.append("issuer \(iss)") }
        if let aud = c.auth.audience { auth.append("audience \(aud)") }
        lines.append("auth     " + auth.joined(separator: "; "))
        let tiers = c.tiers.tiers.keys.sorted()
        let profiles = tiers.isEmpty ? "default profile only" : "default profile + tiers \(tiers.joined(separator: ", "))"
        let d = c.tiers.defaultProfile
        lines.append("quotas   \(profiles) (claim \"\(c.tiers.claim)\"); default: \(d.maxBridges) bridges, \(d.maxStreams) streams, "
                     + "\(format(d.requestsPerSecond)) req/s, burst \(d.requestBurst)")
        lines.append("limits   body \(c.httpLimits.maxBodySize) B, WebSocket message \(c.webSocketMaxMessage) B, "
                     + "\(c.maxSessions) sessions, \(c.maxConnections.map(String.init) ?? "fd limit − 2%") connections")
        if c.isolation.isDocker {
            let i = c.isolation
            lines.append("isolate  docker: image \(i.image) via \(i.dockerSocket); per container \(i.memoryBytes) B, "
                         + "\(format(i.cpus)) CPU, \(i.pidsLimit) pids, user \(i.user); at most \(i.maxContainers) containers, "
                         + "\(i.maxConcurrentStarts) starting at once")
        }
        var log = "\(c.logging.level), \(c.logging.format.rawValue)"
        for label in c.logging.moduleLevels.keys.sorted() {
            log += ", \(label)=\(c.logging.moduleLevels[label].map { "\($0)" } ?? "")"
        }
        lines.append("log      \(log)")
        lines.append("sources  \(sourceCounts)")
        return lines
    }

    /// "3 from the file, 1 from the environment, 2 from flags; 49 at their defaults".
    public var sourceCounts: String {
        var counts = [0, 0, 0]
        for resolved in values.values {
            switch resolved.source {
            case .file: counts[0] += 1
            case .environment: counts[1] += 1
            case .flag: counts[2] += 1
            case .defaultValue: break
            }
        }
        return "\(counts[0]) from the file, \(counts[1]) from the environment, \(counts[2]) from flags; "
            + "\(Settings.all.count - values.count) at their defaults"
    }

    /// Where a secret given as a value or a file came from: the higher-precedence one.
    private func origin(of keys: String...) -> String {
        let winner = keys.compactMap { values[$0] }.max { $0.source.rank < $1.source.rank }
        return winner.map { " (from \($0.source))" } ?? ""
    }
}

import Foundation
import Logging
import Testing
import TetherQuota
import TetherRelay
@testable import TetherConfig

@Suite struct DefaultsTests {
    @Test func noSourcesGiveTheEmbeddedDefaults() throws {
        let loaded = try load()
        let c = loaded.relay
        let d = RelayConfiguration()
        #expect(loaded.values.isEmpty)
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.configFile == nil)
        #expect(c.host == d.host && c.port == d.port && c.tlsPort == nil && c.workers == d.workers)
        #expect(c.adminHost == d.adminHost && c.adminPort == d.adminPort && c.adminToken == nil)
        #expect(c.metricsOnMainListener == d.metricsOnMainListener)
        #expect(c.httpLimits == d.httpLimits && c.webSocketMaxMessage == d.webSocketMaxMessage)
        #expect(c.headerTimeoutMilliseconds == d.headerTimeoutMilliseconds)
        #expect(c.idleTimeoutMilliseconds == d.idleTimeoutMilliseconds)
        #expect(c.webSocketIdleTimeoutMilliseconds == d.webSocketIdleTimeoutMilliseconds)
        #expect(c.tunnel == d.tunnel)
        #expect(c.streamIdleTimeoutMilliseconds == d.streamIdleTimeoutMilliseconds)
        #expect(c.sessionIdleTimeoutMilliseconds == d.sessionIdleTimeoutMilliseconds)
        #expect(c.maxSessions == d.maxSessions && c.maxConnections == nil)
        #expect(c.handshakesPerSecondPerAddress == d.handshakesPerSecondPerAddress)
        #expect(c.authFailuresPerSecondPerAddress == d.authFailuresPerSecondPerAddress)
        #expect(c.addressLimitsExemptLoopback == d.addressLimitsExemptLoopback)
        #expect(c.auditLog == .standardOutput)
        #expect(c.drainTimeoutSeconds == d.drainTimeoutSeconds)
        #expect(c.logging == d.logging)
        #expect(c.auth.hs256Secret == nil && c.auth.jwksFile == nil && c.auth.jwksURL == nil)
        var tiers = TierTable()
        tiers.defaultProfile.maxBodyBytes = d.httpLimits.maxBodySize
        tiers.defaultProfile.maxHeaderBytes = d.httpLimits.maxHeaderBytes
        #expect(c.tiers == tiers)
    }

    @Test(arguments: ["", "# comments only\n", "---\n", "listen:\n"])
    func anEmptyFileGivesTheDefaults(text: String) throws {
        let scratch = try Scratch()
        let file = try scratch.write("relay.yaml", text)
        let loaded = try load(file: file)
        #expect(loaded.configFile == file)
        #expect(loaded.values.isEmpty)
        #expect(loaded.relay.port == RelayConfiguration().port)
    }

    @Test func theRegistryIsConsistent() {
        let all = Settings.all
        #expect(Set(all.map(\.key)).count == all.count)
        #expect(Set(all.map(\.flag)).count == all.count)
        #expect(Set(all.map(\.environment)).count == all.count)
        for s in all {
            #expect(s.environment.hasPrefix("TETHER_"))
            #expect(s.key == s.key.lowercased() && !s.key.contains("-"), "file keys are snake_case: \(s.key)")
            #expect(Settings.sections.contains { $0.name == s.section }, "\(s.key) has no documented section")
            #expect(!s.doc.isEmpty && !s.defaultText.isEmpty)
        }
        // Names people and scripts already use.
        #expect(Settings.byEnvironment["TETHER_JWT_SECRET"]?.key == "auth.jwt_secret")
        #expect(Settings.byEnvironment["TETHER_JWKS_URL"]?.key == "jwks.url")
        let flagsBefore = ["host", "port", "tls-port", "tls-cert", "tls-key", "workers", "ws-max-message", "max-body-size",
                           "header-timeout", "idle-timeout", "ws-idle-timeout", "log-level", "jwt-secret", "jwks-file",
                           "jwt-issuer", "jwt-audience", "jwt-leeway", "jwks-url", "jwks-ca-file", "jwks-refresh-interval",
                           "jwks-min-refresh-interval", "drain-timeout", "stream-window", "tunnel-window",
                           "tunnel-max-streams", "stream-idle-timeout", "tunnel-ping-interval", "legacy-ping-interval",
                           "quota-file", "tier-claim", "max-bridges", "max-streams", "rate-limit", "rate-burst",
                           "bandwidth-limit", "session-memory", "session-idle-timeout", "max-sessions", "max-connections",
                           "bridge-handshake-timeout", "handshake-rate", "handshake-burst", "auth-failure-rate",
                           "auth-failure-burst", "limit-loopback", "audit-log"]
        for flag in flagsBefore { #expect(Settings.byFlag[flag] != nil, "--\(flag) must keep working") }
    }
}

@Suite struct PrecedenceTests {
    @Test func flagsOverrideTheEnvironmentWhichOverridesTheFile() throws {
        let scratch = try Scratch()
        let file = try scratch.write("relay.yaml", """
            listen:
              port: 1111
            limits:
              max_body_size: 1KiB
              limit_loopback: false
            log:
              level: error
            """)
        let env = ["TETHER_PORT": "2222", "TETHER_MAX_BODY_SIZE": "2048", "TETHER_LOG_LEVEL": "warning"]
        let flags = ["--port", "3333", "--log-level=debug"]

        let fileOnly = try load(file: file)
        #expect(fileOnly.relay.port == 1111)
        #expect(fileOnly.relay.httpLimits.maxBodySize == 1024)
        #expect(fileOnly.relay.logging.level == .error)
        #expect(fileOnly.values["listen.port"]?.source == .file(path: file, line: 2))

        let withEnv = try load(file: file, env: env)
        #expect(withEnv.relay.port == 2222)
        #expect(withEnv.relay.httpLimits.maxBodySize == 2048)
        #expect(withEnv.relay.logging.level == .warning)
        #expect(withEnv.values["listen.port"]?.source == .environment("TETHER_PORT"))
        #expect(withEnv.values["limits.limit_loopback"]?.source == .file(path: file, line: 5))

        let withFlags = try load(file: file, env: env, flags: flags)
        #expect(withFlags.relay.port == 3333)
        #expect(withFlags.relay.httpLimits.maxBodySize == 2048)  // no flag: the environment's
        #expect(withFlags.relay.logging.level == .debug)
        #expect(withFlags.values["listen.port"]?.source == .flag("--port"))
        #expect(withFlags.values["log.level"]?.source == .flag("--log-level"))
    }

    @Test func theFileComesFromTheFlagOrTheEnvironment() throws {
        let scratch = try Scratch()
        let a = try scratch.write("a.yaml", "listen: {port: 4001}\n")
        let b = try scratch.write("b.yaml", "listen: {port: 4002}\n")
        #expect(try load(env: ["TETHER_CONFIG": a]).relay.port == 4001)
        #expect(try load(env: ["TETHER_CONFIG": a], flags: ["--config", b]).relay.port == 4002)
        #expect(try load(env: ["TETHER_CONFIG": a], flags: ["--config=\(b)"]).configFile == b)
    }

    /// Every setting can be given by each of the three sources, under its own names.
    @Test func everySettingIsReadFromEverySource() throws {
        let scratch = try Scratch()
        let secretFile = try scratch.write("secret", "0123456789abcdef0123456789abcdef\n")
        let quotaFile = try scratch.write("quotas.json", "{}")
        func sample(_ s: Setting) -> String {
            switch s.key {
            case "jwks.url": return "https://example.com/jwks.json"
            case "admin.token_file", "auth.jwt_secret_file": return secretFile
            case "quotas.file": return quotaFile
            case "audit.log": return "off"
            case "log.levels": return "tether.tunnel=debug"
            default: break
            }
            switch s.kind {
            case .string, .path: return "sample-value-of-16-bytes"
            case .integer(let r), .bytes(let r): return "\(max(r.lowerBound, min(r.upperBound, 70_000)))"
            case .seconds: return "5"
            case .number: return "1.5"
            case .bool: return "true"
            case .choice(let options): return options[1]
            case .port: return "4321"
            case .levels: return "a=debug"
            case .prefixes: return "10.0.0.0/8"
            }
        }
        // Keys that only make sense with another one.
        let companions: [String: [String]] = [
            "jwks.ca_file": ["--jwks-url", "https://example.com/jwks.json"],
            "tls.port": ["--tls-cert", secretFile, "--tls-key", secretFile],
            "tunnel.window": ["--stream-window", "65536"],
        ]
        for s in Settings.all {
            let value = sample(s)
            let extra = companions[s.key] ?? []
            var parts = s.key.split(separator: ".").map(String.init)
            let leaf = parts.removeLast()
            var yaml = ""
            for (depth, part) in parts.enumerated() { yaml += String(repeating: "  ", count: depth) + "\(part):\n" }
            let indent = String(repeating: "  ", count: parts.count)
            if case .levels = s.kind {
                yaml += indent + "\(leaf):\n" + indent + "  tether.tunnel: debug\n"
            } else {
                yaml += indent + "\(leaf): \"\(value)\"\n"
            }
            let file = try scratch.write("one.yaml", yaml)
            let sources: [(LoadedConfiguration, SettingSource)] = [
                (try load(file: file, flags: extra, verify: false), .file(path: file, line: parts.count + 1)),
                (try load(env: [s.environment: value], flags: extra, verify: false), .environment(s.environment)),
                (try load(flags: ["--\(s.flag)", value] + extra, verify: false), .flag("--\(s.flag)")),
            ]
            for (loaded, source) in sources {
                #expect(loaded.values[s.key]?.source == source, "\(s.key) from \(source)")
            }
        }
    }

    @Test func moduleLevelsMergePerLabel() throws {
        let scratch = try Scratch()
        let file = try scratch.write("relay.yaml", """
            log:
              levels:
                a: debug
                b: info
            """)
        let loaded = try load(file: file, env: ["TETHER_LOG_MODULE_LEVEL": "b=trace,c=error"],
                              flags: ["--log-module-level", "a=warning", "--log-module-level", "d=critical"])
        #expect(loaded.relay.logging.moduleLevels == ["a": .warning, "b": .trace, "c": .error, "d": .critical])
        #expect(loaded.relay.logging.level(for: "b") == .trace)
        #expect(loaded.relay.logging.level(for: "other") == .info)
    }

    @Test func valuesWithUnits() throws {
        let loaded = try load(flags: ["--header-timeout", "250ms", "--idle-timeout", "2m", "--ws-idle-timeout", "1h",
                                      "--max-body-size", "3MiB", "--ws-max-message", "64KiB", "--stream-window", "2MiB",
                                      "--tunnel-window", "1GiB", "--drain-timeout", "0"])
        let c = loaded.relay
        #expect(c.headerTimeoutMilliseconds == 250)
        #expect(c.idleTimeoutMilliseconds == 120_000)
        #expect(c.webSocketIdleTimeoutMilliseconds == 3_600_000)
        #expect(c.httpLimits.maxBodySize == 3 << 20)
        #expect(c.webSocketMaxMessage == 64 << 10)
        #expect(c.tunnel.streamWindow == 2 << 20 && c.tunnel.tunnelWindow == 1 << 30)
        #expect(c.drainTimeoutSeconds == 0)
    }

    @Test func booleanFlags() throws {
        let bare = try load(flags: ["--metrics-on-main", "--port", "1234"])
        #expect(bare.relay.metricsOnMainListener && bare.relay.port == 1234)
        let explicit = try load(flags: ["--limit-loopback", "true", "--metrics-on-main", "false"])
        #expect(!explicit.relay.addressLimitsExemptLoopback && !explicit.relay.metricsOnMainListener)
        #expect(try load(flags: ["--limit-loopback=yes"]).relay.addressLimitsExemptLoopback == false)
    }

    @Test func trustedProxiesFromAListCommasOrNothing() throws {
        let scratch = try Scratch()
        let file = try scratch.write("relay.yaml", """
            limits:
              trusted_proxies:
                - 10.0.0.0/8
                - "fd00::/64"
                - 192.0.2.7
            """)
        let fromFile = try load(file: file).relay.trustedProxies
        #expect(fromFile.map(\.description) == ["10.0.0.0/8", "fd00:0:0:0:0:0:0:0/64", "192.0.2.7/32"])
        let fromEnv = try load(env: ["TETHER_TRUSTED_PROXIES": "127.0.0.1, ::1"]).relay.trustedProxies
        #expect(fromEnv.map(\.description) == ["127.0.0.1/32", "0:0:0:0:0:0:0:1/128"])
        // A flag overrides the file, even with nothing (trust no one).
        #expect(try load(file: file, flags: ["--trusted-proxies", ""]).relay.trustedProxies.isEmpty)
        #expect(try load().relay.trustedProxies.isEmpty)
        // The network is masked: 10.1.2.3/8 is 10.0.0.0/8.
        #expect(try load(flags: ["--trusted-proxies", "10.1.2.3/8"]).relay.trustedProxies.map(\.description) == ["10.0.0.0/8"])
        for bad in ["10.0.0.0/33", "fd00::/129", "proxy.example.com", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/08x"] {
            let found = issues(flags: ["--trusted-proxies", "127.0.0.1,\(bad)"])
            #expect(found.count == 1 && found.first?.key == "limits.trusted_proxies", "\(bad): \(found)")
            #expect(found.first?.problem.contains(bad) == true, "\(bad): \(found)")
        }
        let listOfMaps = try scratch.write("bad.yaml", "limits:\n  trusted_proxies:\n    - a: b\n")
        #expect(issues(file: listOfMaps).first?.key == "limits.trusted_proxies")
    }

    @Test func theAdminListenerCanBeTurnedOff() throws {
        #expect(try load(flags: ["--admin-port", "off"]).relay.adminPort == nil)
        #expect(try load(flags: ["--admin-port", "0"]).relay.adminPort == 0)
        #expect(try load(env: ["TETHER_ADMIN_ENABLED": "false"]).relay.adminPort == nil)
        let scratch = try Scratch()
        #expect(try load(file: try scratch.write("a.yaml", "admin: {port: off}\n")).relay.adminPort == nil)
        #expect(try load(file: try scratch.write("b.yaml", "admin: {enabled: false, port: 9999}\n")).relay.adminPort == nil)
    }

    @Test func secretsFromFiles() throws {
        let scratch = try Scratch()
        let token = try scratch.write("token", "  admin-token-0123456789\n")
        let secret = try scratch.write("secret", "jwt-secret-0123456789abcdef\n")
        let loaded = try load(flags: ["--admin-token-file", token, "--jwt-secret-file", secret])
        #expect(loaded.relay.adminToken == "admin-token-0123456789")
        #expect(loaded.relay.auth.hs256Secret == "jwt-secret-0123456789abcdef")
        // The value or the file, whichever comes from the higher-precedence source.
        let yaml = try scratch.write("relay.yaml", "admin: {token_file: \(token)}\nauth: {jwt_secret: from-the-file-0123456789}\n")
        let overridden = try load(file: yaml, env: ["TETHER_ADMIN_TOKEN": "from-the-environment-0123", "TETHER_JWT_SECRET_FILE": secret])
        #expect(overridden.relay.adminToken == "from-the-environment-0123")
        #expect(overridden.relay.auth.hs256Secret == "jwt-secret-0123456789abcdef")
        #expect(try load(file: yaml).relay.adminToken == "admin-token-0123456789")
    }

    @Test func flagsOverrideTheQuotaFile() throws {
        let scratch = try Scratch()
        let quotas = try scratch.write("quotas.json", """
            {"tier_claim": "plan", "default": {"max_bridges": 2, "max_body_bytes": 20971520},
             "tiers": {"pro": {"max_streams": 300}, "solo": {"max_bridges": 1}}}
            """)
        let loaded = try load(flags: ["--quota-file", quotas, "--max-bridges", "7"])
        let t = loaded.relay.tiers
        #expect(t.claim == "plan" && loaded.relay.auth.tierClaim == "plan")
        #expect(t.defaultProfile.maxBridges == 7)
        #expect(t.tiers["pro"]?.maxBridges == 7)      // inherited, so overridden too
        #expect(t.tiers["solo"]?.maxBridges == 1)     // its own value stays
        #expect(t.tiers["pro"]?.maxStreams == 300)
        // The decoder admits the largest tier body.
        #expect(loaded.relay.httpLimits.maxBodySize == 20_971_520)
        let yaml = try scratch.write("relay.yaml", "quotas:\n  tier_claim: level\n  default:\n    requests_per_second: 0\n")
        let fromFile = try load(file: yaml, flags: ["--quota-file", quotas])
        #expect(fromFile.relay.tiers.claim == "level")
        #expect(fromFile.relay.tiers.defaultProfile.requestsPerSecond == 0)
    }
}

@Suite struct ValidationTests {
    @Test func anOutOfRangeVariableNamesTheKeyAndTheVariable() {
        let found = issues(env: ["TETHER_PORT": "70000"])
        #expect(found.map(\.description) == ["listen.port (from TETHER_PORT): must be 0...65535, got 70000"])
    }

    @Test func everyErrorIsReportedWithItsSource() throws {
        let scratch = try Scratch()
        let file = try scratch.write("relay.yaml", """
            listen:
              port: eighty
            limits:
              header_timeout: -1
              limit_loopback: maybe
            """)
        let found = issues(file: file, env: ["TETHER_WORKERS": "0"], flags: ["--max-body-size", "lots", "--log-format", "xml"])
        let text = found.map(\.description)
        #expect(found.count == 6, "\(text)")
        #expect(text.contains("listen.port (from \(file):2): must be a port 0...65535, got \"eighty\""))
        #expect(text.contains { $0.hasPrefix("limits.header_timeout (from \(file):4): must be above 0") })
        #expect(text.contains("limits.limit_loopback (from \(file):5): must be true or false, got \"maybe\""))
        #expect(text.contains("listen.workers (from TETHER_WORKERS): must be 1...256, got 0"))
        #expect(text.contains { $0.hasPrefix("limits.max_body_size (from --max-body-size): must be a byte count") })
        #expect(text.contains("log.format (from --log-format): must be one of text, json, got \"xml\""))
    }

    @Test func anOverriddenBadValueIsStillAnError() {
        let found = issues(env: ["TETHER_PORT": "x"], flags: ["--port", "80"])
        #expect(found.map(\.key) == ["listen.port"])
    }

    @Test func unknownKeysAreErrorsWithASuggestion() throws {
        let scratch = try Scratch()
        let file = try scratch.write("relay.yaml", """
            listen:
              prot: 8080
            limts:
              max_body_size: 1
            quotas:
              default:
                max_bridge: 3
            """)
        let found = issues(file: file)
        #expect(found.map(\.description) == [
            "listen.prot (from \(file):2): unknown key (did you mean listen.port?)",
            "limts (from \(file):3): unknown key (did you mean limits?)",
            "quotas.default.max_bridge (from \(file):7): unknown key (did you mean quotas.default.max_bridges?)",
        ])
    }

    @Test func unknownFlagsAreErrorsAndUnknownVariablesWarnings() throws {
        #expect(issues(flags: ["--prot", "1"]).map(\.description) == ["--prot: unknown flag (did you mean --port?)"])
        #expect(issues(flags: ["--port"]).map(\.description) == ["listen.port (from --port): needs a value"])
        #expect(issues(flags: ["8080"]).map(\.description) == ["8080: unexpected argument"])
        let loaded = try load(env: ["TETHER_PROT": "1", "TETHER_RELAY": "/bin/x", "TETHER_TEST_LOG_LEVEL": "debug"])
        #expect(loaded.warnings.map(\.description) == ["TETHER_PROT: unknown variable, ignored (did you mean TETHER_PORT?)"])
    }

    @Test func typeErrorsInTheFile() throws {
        let scratch = try Scratch()
        let cases: [(String, String)] = [
            ("listen: [1, 2]\n", "listen (from FILE:1): expected a mapping of settings, found a list"),
            ("listen:\n  port: {a: 1}\n", "listen.port (from FILE:2): expected a port 0...65535, found a mapping"),
            ("log:\n  levels:\n    tether.tunnel: loud\n",
             "log.levels.tether.tunnel (from FILE:3): must be one of trace, debug, info, notice, warning, error, critical, got \"loud\""),
            ("log:\n  levels: debug\n", "log.levels (from FILE:2): expected a mapping of logger label to level, found a value"),
            ("- listen\n", "config (from FILE:1): expected a mapping of sections (listen:, tls:, …), found a list"),
        ]
        for (yaml, expected) in cases {
            let file = try scratch.write("relay.yaml", yaml)
            #expect(issues(file: file).map(\.description) == [expected.replacingOccurrences(of: "FILE", with: file)])
        }
    }

    @Test func invalidYAMLAndDuplicateKeys() throws {
        let scratch = try Scratch()
        let broken = try scratch.write("broken.yaml", "listen: {port: 1\n")
        let found = issues(file: broken)
        #expect(found.count == 1 && found[0].key == "config" && found[0].problem.hasPrefix("not valid YAML"))
        let duplicate = try scratch.write("dup.yaml", "listen:\n  port: 1\n  port: 2\n")
        #expect(issues(file: duplicate).first?.problem.contains("duplicate key port") == true)
        let missing = scratch.path("missing.yaml")
        #expect(issues(file: missing).map(\.description) == ["config (from \(missing)): cannot read \(missing): No such file or directory"])
    }

    @Test func secretsAreNeverPrinted() throws {
        let scratch = try Scratch()
        let tokenFile = try scratch.write("token", "file-token-abcdefghijklmnop\n")
        let found = issues(env: ["TETHER_JWT_SECRET": "tiny-secret"],
                           flags: ["--admin-token", "flag-token-abcdefghijklmnop", "--admin-token-file", tokenFile])
        let text = found.map(\.description).joined(separator: "\n")
        #expect(found.map(\.key).sorted() == ["admin.token_file", "auth.jwt_secret"])
        #expect(text.contains("auth.jwt_secret (from TETHER_JWT_SECRET): the HS256 secret must be at least 16 bytes, got 11"))
        for secret in ["tiny-secret", "flag-token", "file-token"] { #expect(!text.contains(secret)) }

        let loaded = try load(flags: ["--admin-token", "flag-token-abcdefghijklmnop", "--jwt-secret", "jwt-secret-abcdefghijklmnop"])
        let summary = loaded.summary().joined(separator: "\n")
        #expect(summary.contains("token set (from --admin-token)"))
        #expect(!summary.contains("flag-token") && !summary.contains("jwt-secret-abc"))
        #expect(!ConfigurationDoc.help().contains("flag-token"))
    }

    @Test func crossChecks() throws {
        let scratch = try Scratch()
        #expect(issues(flags: ["--tls-port", "8443"]).map(\.description)
                == ["tls.port (from --tls-port): a TLS listener needs tls.cert and tls.key (--tls-cert, --tls-key)"])
        let missing = scratch.path("nope.pem")
        let tls = issues(flags: ["--tls-port", "8443", "--tls-cert", missing, "--tls-key", missing])
        #expect(tls.map(\.key) == ["tls.cert", "tls.key"])
        #expect(tls[0].description == "tls.cert (from --tls-cert): cannot read \(missing): No such file or directory")
        let garbage = try scratch.write("garbage.pem", "not a certificate\n")
        let bad = issues(flags: ["--tls-port", "8443", "--tls-cert", garbage, "--tls-key", garbage])
        #expect(bad.map(\.key) == ["tls.cert"] && bad[0].problem.hasPrefix("cannot load the certificate"))
        #expect(issues(flags: ["--stream-window", "4MiB", "--tunnel-window", "2MiB"]).map(\.key) == ["tunnel.window"])
        #expect(issues(flags: ["--jwks-ca-file", garbage]).map(\.description)
                == ["jwks.ca_file (from --jwks-ca-file): needs jwks.url (it verifies the JWKS server)"])
        #expect(issues(env: ["TETHER_JWKS_URL": "ftp://x/"]).first?.description.hasPrefix("jwks.url (from TETHER_JWKS_URL): ") == true)
        let jwks = try scratch.write("jwks.json", "{\"keys\": 5}")
        #expect(issues(flags: ["--jwks-file", jwks]).first?.key == "jwks.file")
        #expect(issues(flags: ["--admin-port", "8080"]).map(\.key) == ["admin.port"])
        #expect(issues(flags: ["--audit-log", "/nonexistent-dir/audit.log"]).map(\.key) == ["audit.log"])
        let warned = try load(flags: ["--tls-cert", garbage])
        #expect(warned.warnings.map(\.key) == ["tls.cert"])
    }

    @Test func quotaFileErrorsNameTheJSONKey() throws {
        let scratch = try Scratch()
        let quotas = try scratch.write("quotas.json", "{\"default\": {\"max_bridgez\": 1}}")
        #expect(issues(flags: ["--quota-file", quotas]).map(\.description)
                == ["quotas.file (from --quota-file): \(quotas): default.max_bridgez: unknown key"])
        let missing = scratch.path("none.json")
        #expect(issues(flags: ["--quota-file", missing]).first?.problem.contains("No such file") == true)
    }
}

@Suite struct ReloadTests {
    @Test func aReloadReadsTheFileAgainAndRefusesABrokenOne() throws {
        let scratch = try Scratch()
        let file = try scratch.write("relay.yaml", "listen: {port: 7001}\nlimits: {max_body_size: 1KiB}\n")
        let loader = ConfigurationLoader(arguments: ["--config", file, "--log-level", "debug"], environment: [:])
        let first = try loader.load()
        #expect(first.relay.httpLimits.maxBodySize == 1024 && first.relay.logging.level == .debug)

        try scratch.write("relay.yaml", "listen: {port: 7002}\nlimits: {max_body_size: 2KiB, idle_timout: 3}\n")
        do {
            _ = try loader.load()
            Issue.record("a file with an unknown key was accepted")
        } catch {
            #expect(error.issues.map(\.key) == ["limits.idle_timout"])
        }

        try scratch.write("relay.yaml", "listen: {port: 7002}\nlimits: {max_body_size: 2KiB}\nlog: {level: error}\n")
        let second = try loader.load()
        #expect(second.relay.httpLimits.maxBodySize == 2048)
        #expect(second.relay.logging.level == .debug)  // the original flag still wins
        #expect(second.restartOnlyChanges(since: first) == ["listen.port"])
    }

    @Test func theExampleFileIsValid() throws {
        let scratch = try Scratch()
        let secret = try scratch.write("secret", "0123456789abcdef0123456789abcdef\n")
        let example = repositoryRoot.appendingPathComponent("deploy/tether-relay.yaml").path
        let loaded = try load(file: example, flags: ["--admin-token-file", secret, "--jwt-secret-file", secret],
                              verify: false)
        #expect(loaded.relay.port == 8080 && loaded.relay.host == "0.0.0.0")
        #expect(loaded.relay.logging.format == .json)
        #expect(loaded.relay.tunnel.streamWindow == 1 << 20)
        #expect(loaded.values["tls.port"]?.source == .file(path: example, line: 13))
    }
}

@Suite struct DocumentationTests {
    @Test func theCommittedDocIsTheGeneratedOne() throws {
        let path = repositoryRoot.appendingPathComponent("docs/CONFIGURATION.md").path
        let committed = try String(contentsOfFile: path, encoding: .utf8)
        #expect(committed == ConfigurationDoc.markdown(),
                "docs/CONFIGURATION.md is out of date: run `tether-relay config-doc > docs/CONFIGURATION.md`")
    }

    @Test func theDocAndHelpListEverySetting() {
        let doc = ConfigurationDoc.markdown()
        let help = ConfigurationDoc.help()
        for s in Settings.all {
            #expect(doc.contains("| `\(s.key)` | `--\(s.flag)` | `\(s.environment)` |"))
            #expect(help.contains("--\(s.flag) ") && help.contains("[\(s.key), \(s.environment); default "))
        }
    }
}

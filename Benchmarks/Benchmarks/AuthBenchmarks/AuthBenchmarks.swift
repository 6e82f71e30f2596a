// JWT verification (TetherAuth): cold (`TokenVerifier`: JSON decoding + signature check) and
// cached (`TokenCache` hit), per algorithm, and token extraction from a request head.
// Run from Benchmarks/:
//   swift package --disable-sandbox benchmark --target AuthBenchmarks
// Cold verification is one operation per measured iteration (scalingFactor .one: each takes
// tens of microseconds), everything else 1,000 (.kilo); the reported figures are per
// operation. Results: Benchmarks/results/micro.md.
//
// Tokens are signed here with swift-crypto directly (HMAC-SHA256, P-256 ECDSA, RSA-2048 PKCS#1
// v1.5), independently of the jwt-kit code that verifies them; keys are made fresh per run.

import Benchmark
import Crypto
import CryptoExtras
import Foundation
import Synchronization
import TetherAuth
import TetherHTTP

/// Unix seconds used as "now" for every verification; tokens expire an hour later.
let now: Double = 1_767_225_600

func base64URL(_ bytes: some DataProtocol) -> String {
    Data(bytes).base64EncodedString()
        .replacingOccurrences(of: "+", with: "-")
        .replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

/// Claims as an identity provider issues them (Auth0-like: audience, issuer, scope, tier).
func claims(subject: String) -> String {
    #"{"iss":"https://auth.cloudtolocalllm.online/","sub":"\#(subject)","aud":["https://api.cloudtolocalllm.online","https://auth.cloudtolocalllm.online/userinfo"],"iat":\#(Int(now) - 60),"exp":\#(Int(now) + 3600),"scope":"openid profile email","azp":"hVq3Rj8sKp2LwX9mZt4NcE7bYa1UdGf0","tier":"pro"}"#
}

/// The keys and one token per algorithm.
struct Fixture: Sendable {
    let secret = "bench-secret-0123456789abcdef0123456789abcdef"
    let hs256Token: String
    let es256Token: String
    let rs256Token: String
    /// `{"keys":[...]}` with the EC and RSA public keys (kid "e1", "r1").
    let jwks: [UInt8]

    init() throws {
        let hsInput = base64URL(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8)) + "." + base64URL(Array(claims(subject: "auth0|653f2a9b1c4d8e0012ab34cd").utf8))
        let mac = HMAC<SHA256>.authenticationCode(for: Array(hsInput.utf8), using: SymmetricKey(data: Array(secret.utf8)))
        hs256Token = hsInput + "." + base64URL(Array(mac))

        let ec = P256.Signing.PrivateKey()
        let esInput = base64URL(Array(#"{"alg":"ES256","typ":"JWT","kid":"e1"}"#.utf8)) + "." + base64URL(Array(claims(subject: "auth0|653f2a9b1c4d8e0012ab34ce").utf8))
        es256Token = esInput + "." + base64URL(try ec.signature(for: Array(esInput.utf8)).rawRepresentation)
        let xy = ec.publicKey.rawRepresentation
        let x = base64URL(xy.prefix(32)), y = base64URL(xy.suffix(32))

        let rsa = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let rsInput = base64URL(Array(#"{"alg":"RS256","typ":"JWT","kid":"r1"}"#.utf8)) + "." + base64URL(Array(claims(subject: "auth0|653f2a9b1c4d8e0012ab34cf").utf8))
        rs256Token = rsInput + "." + base64URL(try rsa.signature(for: Array(rsInput.utf8), padding: .insecurePKCS1v1_5).rawRepresentation)
        let primitives = try rsa.publicKey.getKeyPrimitives()

        let keys = #"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"e1","x":"\#(x)","y":"\#(y)"},"#
            + #"{"kty":"RSA","alg":"RS256","use":"sig","kid":"r1","n":"\#(base64URL(primitives.modulus))","e":"\#(base64URL(primitives.publicExponent))"}]}"#
        jwks = Array(keys.utf8)
    }
}

/// Built by the async setup hook (jwt-kit loads keys through an actor), read by the benchmarks.
final class Loaded: Sendable {
    let fixture: Fixture
    let verifier: TokenVerifier
    /// Request heads carrying the HS256 token: in Authorization, in ?token=, and as a
    /// Sec-WebSocket-Protocol entry (the bridge's upgrade request, as browsers must send it).
    let headerHead: HTTPRequestHead
    let queryHead: HTTPRequestHead
    let subprotocolHead: HTTPRequestHead

    init(fixture: Fixture, verifier: TokenVerifier) {
        self.fixture = fixture
        self.verifier = verifier
        let common: [(String, String)] = [
            ("Host", "relay.cloudtolocalllm.online"),
            ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"),
            ("Accept", "application/json, text/plain, */*"),
            ("Origin", "https://app.cloudtolocalllm.online"),
            ("Accept-Language", "en-US,en;q=0.9"),
        ]
        let token = fixture.hs256Token
        headerHead = HTTPRequestHead(method: "POST", target: "/api/ollama/api/chat",
                                     headers: HTTPHeaders(common + [("Content-Type", "application/json"), ("Authorization", "Bearer \(token)")]))
        queryHead = HTTPRequestHead(method: "GET", target: "/api/ollama/api/tags?stream=false&token=\(token)",
                                    headers: HTTPHeaders(common))
        subprotocolHead = HTTPRequestHead(method: "GET", target: "/ws/tunnel", headers: HTTPHeaders(common + [
            ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "tether.v1, token-\(token)"),
        ]))
    }
}

let loaded = Mutex<Loaded?>(nil)

func setUp() async throws {
    guard loaded.withLock({ $0 == nil }) else { return }
    let fixture = try Fixture()
    var configuration = AuthConfiguration()
    configuration.hs256Secret = fixture.secret
    configuration.issuer = "https://auth.cloudtolocalllm.online/"
    configuration.audience = "https://api.cloudtolocalllm.online"
    let verifier = try await TokenVerifier.load(configuration: configuration, remoteJWKS: fixture.jwks)
    let ready = Loaded(fixture: fixture, verifier: verifier)
    // A token that does not verify would measure the failure path: refuse to run instead.
    for token in [fixture.hs256Token, fixture.es256Token, fixture.rs256Token] {
        if case .failure(let failure) = verifier.verify(Substring(token), now: now) {
            throw AuthConfigurationError("benchmark token does not verify: \(failure)")
        }
    }
    loaded.withLock { $0 = ready }
}

func withLoaded(_ benchmark: Benchmark, _ body: (Loaded) -> Void) {
    guard let ready = loaded.withLock({ $0 }) else {
        benchmark.error("setup did not run")
        return
    }
    body(ready)
}

/// Cold: every operation parses the token, decodes its JSON and checks the signature.
func verifyCold(_ benchmark: Benchmark, _ token: (Fixture) -> String) {
    withLoaded(benchmark) { ready in
        let token = Substring(token(ready.fixture))
        var ok = 0
        for _ in benchmark.scaledIterations {
            if case .success(let verified) = ready.verifier.verify(identity(token), now: now) {
                ok += 1
                blackHole(verified)
            }
        }
        if ok != benchmark.scaledIterations.count { benchmark.error("verification failed") }
    }
}

/// Cached: one verification fills the cache (outside the measurement), then every operation is
/// a hit (SHA-256 of the token, a dictionary lookup, expiry and nbf re-checked).
func verifyCached(_ benchmark: Benchmark, _ token: (Fixture) -> String) {
    withLoaded(benchmark) { ready in
        let token = Substring(token(ready.fixture))
        let cache = TokenCache()
        _ = cache.verify(token, with: ready.verifier, now: now)
        var ok = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            if case .success(let verified) = cache.verify(identity(token), with: ready.verifier, now: now) {
                ok += 1
                blackHole(verified)
            }
        }
        benchmark.stopMeasurement()
        if ok != benchmark.scaledIterations.count { benchmark.error("cached verification failed") }
    }
}

func extract(_ benchmark: Benchmark, _ head: (Loaded) -> HTTPRequestHead, expected: TokenSource) {
    withLoaded(benchmark) { ready in
        let head = head(ready)
        var found = 0
        for _ in benchmark.scaledIterations {
            if let extracted = TokenExtractor.token(in: identity(head), allowSubprotocol: true), extracted.source == expected {
                found += 1
                blackHole(extracted.token)
            }
        }
        if found != benchmark.scaledIterations.count { benchmark.error("token not found") }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )
    Benchmark.setup = setUp

    let cold = Benchmark.Configuration(scalingFactor: .one)

    Benchmark("JWT HS256 verify, cold", configuration: cold) { benchmark in
        verifyCold(benchmark) { $0.hs256Token }
    }

    Benchmark("JWT ES256 verify, cold", configuration: cold) { benchmark in
        verifyCold(benchmark) { $0.es256Token }
    }

    Benchmark("JWT RS256 verify, cold", configuration: cold) { benchmark in
        verifyCold(benchmark) { $0.rs256Token }
    }

    Benchmark("JWT HS256 verify, cached (TokenCache hit)") { benchmark in
        verifyCached(benchmark) { $0.hs256Token }
    }

    Benchmark("JWT ES256 verify, cached (TokenCache hit)") { benchmark in
        verifyCached(benchmark) { $0.es256Token }
    }

    Benchmark("JWT RS256 verify, cached (TokenCache hit)") { benchmark in
        verifyCached(benchmark) { $0.rs256Token }
    }

    Benchmark("Token extraction: Authorization: Bearer") { benchmark in
        extract(benchmark, { $0.headerHead }, expected: .header)
    }

    Benchmark("Token extraction: ?token= query") { benchmark in
        extract(benchmark, { $0.queryHead }, expected: .query)
    }

    Benchmark("Token extraction: Sec-WebSocket-Protocol token- entry") { benchmark in
        extract(benchmark, { $0.subprotocolHead }, expected: .subprotocol)
    }

    // What the harness itself adds to each measured iteration (reading /proc/self/stat for
    // cpuTotal allocates and costs CPU inside the window): subtracted in results/micro_table.py.
    Benchmark("Harness: empty iteration", configuration: .init(scalingFactor: .one)) { benchmark in
        blackHole(benchmark.scaledIterations.count)
    }
}

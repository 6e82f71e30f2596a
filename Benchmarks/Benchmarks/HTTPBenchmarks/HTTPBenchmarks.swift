// HTTP/1.1 head decoding and encoding (TetherHTTP), as the relay meets them on every request.
// Run from Benchmarks/:
//   swift package --disable-sandbox benchmark --target HTTPBenchmarks
// Every benchmark does 1,000 operations per measured iteration (scalingFactor .kilo), so the
// reported figures are per operation. Results: Benchmarks/results/micro.md.

import Benchmark
import TetherHTTP

/// Inputs built once, on first use.
final class Fixture: Sendable {
    /// A browser's keep-alive GET from the web app (Chrome 130 on Linux), no body.
    let browserGet: [UInt8]
    /// An API client's proxied chat request: bearer token, JSON body of 154 bytes.
    let proxiedPost: [UInt8]
    /// The same requests cut at three points: inside the request line, inside a field line and
    /// between the CR and LF that end the head (as a slow or segmenting peer delivers them).
    let browserGetChunks: [[UInt8]]
    let proxiedPostChunks: [[UInt8]]
    /// A local service's answer as the bridge's client side reads it (Ollama /api/tags).
    let ollamaResponse: [UInt8]
    /// Heads to encode: the relay's streaming response head, and the proxied request head.
    let responseHead: HTTPResponseHead
    let requestHead: HTTPRequestHead

    init() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
            + "eyJhdWQiOiJodHRwczovL2FwaS5jbG91ZHRvbG9jYWxsbG0ub25saW5lIiwiZXhwIjoxNzk4NzYxNjAwLCJpYXQiOjE3NjcyMjU2MDAsImlzcyI6Imh0dHBzOi8vYXV0aC5leGFtcGxlLmNvbS8iLCJzdWIiOiJhdXRoMHw2NTNmMmE5YjFjNGQ4ZTAwMTJhYjM0Y2QiLCJ0aWVyIjoicHJvIn0."
            + "q3Gx9bUo2m5Cq7a1yQ0mXvP0bW8Jr3oZkL2fH6sT4dE"
        let browser = "GET /api/ollama/bridge/status HTTP/1.1\r\n"
            + "Host: relay.cloudtolocalllm.online\r\n"
            + "Connection: keep-alive\r\n"
            + "sec-ch-ua-platform: \"Linux\"\r\n"
            + "Authorization: Bearer \(token)\r\n"
            + "sec-ch-ua: \"Chromium\";v=\"130\", \"Google Chrome\";v=\"130\", \"Not?A_Brand\";v=\"99\"\r\n"
            + "sec-ch-ua-mobile: ?0\r\n"
            + "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36\r\n"
            + "Accept: application/json, text/plain, */*\r\n"
            + "Origin: https://app.cloudtolocalllm.online\r\n"
            + "Sec-Fetch-Site: same-site\r\n"
            + "Sec-Fetch-Mode: cors\r\n"
            + "Sec-Fetch-Dest: empty\r\n"
            + "Referer: https://app.cloudtolocalllm.online/\r\n"
            + "Accept-Encoding: gzip, deflate, br, zstd\r\n"
            + "Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
            + "\r\n"
        browserGet = Array(browser.utf8)
        let body = #"{"model":"llama3.2:3b","messages":[{"role":"user","content":"Why is the sky blue? Answer in two sentences."}],"stream":true,"options":{"temperature":0.7}}"#
        let post = "POST /api/ollama/api/chat HTTP/1.1\r\n"
            + "Host: relay.cloudtolocalllm.online\r\n"
            + "User-Agent: curl/7.88.1\r\n"
            + "Accept: */*\r\n"
            + "Authorization: Bearer \(token)\r\n"
            + "Content-Type: application/json\r\n"
            + "Content-Length: \(body.utf8.count)\r\n"
            + "\r\n"
            + body
        proxiedPost = Array(post.utf8)
        browserGetChunks = Self.split(browserGet, at: [20, browserGet.count / 2, browserGet.count - 1])
        let headEnd = proxiedPost.count - body.utf8.count
        proxiedPostChunks = Self.split(proxiedPost, at: [20, headEnd / 2, headEnd - 1])

        let tags = #"{"models":[{"name":"llama3.2:3b","model":"llama3.2:3b","modified_at":"2026-11-20T09:12:44.118Z","size":2019393189,"digest":"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"}]}"#
        let response = "HTTP/1.1 200 OK\r\n"
            + "Content-Type: application/json; charset=utf-8\r\n"
            + "Date: Sun, 22 Nov 2026 13:52:02 GMT\r\n"
            + "Content-Length: \(tags.utf8.count)\r\n"
            + "\r\n"
            + tags
        ollamaResponse = Array(response.utf8)

        responseHead = HTTPResponseHead(status: 200, headers: [
            "Content-Type": "application/x-ndjson",
            "Date": "Sun, 22 Nov 2026 13:52:02 GMT",
            "Transfer-Encoding": "chunked",
            "Cache-Control": "no-store",
        ])
        requestHead = HTTPRequestHead(method: "POST", target: "/api/chat", headers: [
            "Host": "127.0.0.1:11434",
            "User-Agent": "curl/7.88.1",
            "Accept": "*/*",
            "Content-Type": "application/json",
            "Content-Length": "154",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
        ])
    }

    private static func split(_ bytes: [UInt8], at cuts: [Int]) -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        var start = 0
        for cut in cuts {
            chunks.append(Array(bytes[start ..< cut]))
            start = cut
        }
        chunks.append(Array(bytes[start...]))
        return chunks
    }
}

let fixture = Fixture()

/// Decodes every event the bytes complete; returns how many requests ended. A parse error is a
/// broken benchmark, not a result: it stops the run.
@inline(__always)
func drainRequests(_ decoder: inout HTTPRequestDecoder, _ benchmark: Benchmark) -> Int {
    var ended = 0
    do {
        while let event = try decoder.next() {
            switch event {
            case .head(let head): blackHole(head)
            case .body(let bytes): blackHole(bytes)
            case .end: ended += 1
            }
        }
    } catch {
        benchmark.error("request did not parse: \(error)")
    }
    return ended
}

/// Keep-alive: one decoder per "connection", one request after another, as the relay decodes them.
func decodeRequests(_ benchmark: Benchmark, chunks: [[UInt8]]) {
    var decoder = HTTPRequestDecoder()
    var ended = 0
    for _ in benchmark.scaledIterations {
        for chunk in chunks {
            decoder.feed(chunk)
            ended += drainRequests(&decoder, benchmark)
        }
    }
    if ended != benchmark.scaledIterations.count { benchmark.error("decoded \(ended) requests, expected \(benchmark.scaledIterations.count)") }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    Benchmark("Request decode: browser GET (\(fixture.browserGet.count) B), whole") { benchmark in
        decodeRequests(benchmark, chunks: [fixture.browserGet])
    }

    Benchmark("Request decode: browser GET, 4 chunks") { benchmark in
        decodeRequests(benchmark, chunks: fixture.browserGetChunks)
    }

    Benchmark("Request decode: proxied POST /api/ollama/api/chat + body (\(fixture.proxiedPost.count) B), whole") { benchmark in
        decodeRequests(benchmark, chunks: [fixture.proxiedPost])
    }

    Benchmark("Request decode: proxied POST + body, 4 chunks") { benchmark in
        decodeRequests(benchmark, chunks: fixture.proxiedPostChunks)
    }

    Benchmark("Response decode: Ollama 200 + JSON body (\(fixture.ollamaResponse.count) B)") { benchmark in
        var decoder = HTTPResponseDecoder()
        var ended = 0
        for _ in benchmark.scaledIterations {
            decoder.expectResponse(toMethod: "GET")
            decoder.feed(fixture.ollamaResponse)
            do {
                while let event = try decoder.next() {
                    switch event {
                    case .head(let head): blackHole(head)
                    case .body(let bytes): blackHole(bytes)
                    case .end: ended += 1
                    }
                }
            } catch {
                benchmark.error("response did not parse: \(error)")
            }
        }
        if ended != benchmark.scaledIterations.count { benchmark.error("decoded \(ended) responses") }
    }

    // Into a reused buffer (as the relay appends to a connection's write buffer): the encoder's
    // own cost, without the buffer's allocation.
    Benchmark("Response head encode (200, 4 fields), reused buffer") { benchmark in
        let head = fixture.responseHead
        var out: [UInt8] = []
        out.reserveCapacity(512)
        for _ in benchmark.scaledIterations {
            out.removeAll(keepingCapacity: true)
            head.encode(into: &out)
            blackHole(out.count)
        }
    }

    Benchmark("Request head encode (POST, 7 fields), reused buffer") { benchmark in
        let head = fixture.requestHead
        var out: [UInt8] = []
        out.reserveCapacity(512)
        for _ in benchmark.scaledIterations {
            out.removeAll(keepingCapacity: true)
            head.encode(into: &out)
            blackHole(out.count)
        }
    }

    Benchmark("Response head encode (200, 4 fields), fresh array") { benchmark in
        let head = fixture.responseHead
        for _ in benchmark.scaledIterations {
            blackHole(head.encoded())
        }
    }

    // What the harness itself adds to each measured iteration (reading /proc/self/stat for
    // cpuTotal allocates and costs CPU inside the window): subtracted in results/micro_table.py.
    Benchmark("Harness: empty iteration", configuration: .init(scalingFactor: .one)) { benchmark in
        blackHole(benchmark.scaledIterations.count)
    }
}

// Metrics (TetherMetrics, docs/OPERATIONS.md): what a proxied request pays on the data path (a
// histogram observation), and what a scrape costs (merging every worker's histograms and
// rendering the text format). Run from Benchmarks/:
//   swift package --disable-sandbox benchmark --target MetricsBenchmarks
// Results: Benchmarks/results/micro.md.

import Benchmark
import TetherMetrics

/// Two workers' histograms with a realistic spread of observations.
final class Fixture: Sendable {
    let workers: [Histogram]
    let latencies: [UInt64]

    init() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        latencies = (0..<4096).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            // 0.2 ms .. ~2 s, log-uniform: most requests fast, LLM streams long.
            let exponent = Double(state >> 40) / Double(1 << 24) * 4
            return UInt64(200_000 * pow10(exponent))
        }
        workers = (0..<2).map { _ in Histogram() }
        for (i, ns) in latencies.enumerated() { workers[i % 2].observe(nanoseconds: ns) }
    }
}

private func pow10(_ x: Double) -> Double {
    var result = 1.0
    var whole = Int(x)
    while whole > 0 { result *= 10; whole -= 1 }
    let frac = x - Double(Int(x))
    // 10^frac by a short series: precision does not matter, spread does.
    return result * (1 + frac * 2.302585 + frac * frac * 2.650949 + frac * frac * frac * 2.034678)
}

let fixture = Fixture()

/// A scrape shaped like the relay's (docs/OPERATIONS.md): ~55 families, ~230 lines, two workers.
func renderScrape(_ histograms: [Histogram]) -> String {
    var out = PrometheusText(reservingCapacity: 24_576)
    let reasons = ["closed_by_bridge", "connection_error", "ping_timeout", "idle_timeout", "protocol_error", "shutdown", "kicked"]
    let quotas = ["bridges", "streams", "rate", "body_size", "header_size", "capacity", "handshakes", "auth_failures"]
    let auth = ["missing", "malformed", "expired", "not_yet_valid", "bad_signature", "unknown_key",
                "algorithm_not_allowed", "wrong_issuer", "wrong_audience", "no_keys"]
    out.family("tether_sessions", help: "Sessions on this relay by state (parked: idle, bridges kept).", type: .gauge)
    out.sample("tether_sessions", ["state": "active"], 14_873)
    out.sample("tether_sessions", ["state": "parked"], 127)
    for name in ["created", "revived", "parked"] {
        out.family("tether_sessions_\(name)_total", help: "Sessions \(name).", type: .counter)
        out.sample("tether_sessions_\(name)_total", UInt64(15_000))
    }
    out.family("tether_bridge_disconnects_total", help: "Connected bridges that left, by reason.", type: .counter)
    for reason in reasons { out.sample("tether_bridge_disconnects_total", ["reason": reason], UInt64(42)) }
    out.family("tether_requests_total", help: "HTTP responses on the public listeners, by status code.", type: .counter)
    for code in [101, 200, 204, 206, 304, 400, 401, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504] {
        out.sample("tether_requests_total", ["code": String(code)], UInt64(123_456_789))
    }
    var duration = HistogramSnapshot(upperBounds: Histogram.latencyBounds)
    var firstByte = HistogramSnapshot(upperBounds: Histogram.latencyBounds)
    for h in histograms {
        duration.add(h)
        firstByte.add(h)
    }
    out.histogram("tether_request_duration_seconds", help: "Proxied requests: admission to end.", duration)
    out.histogram("tether_time_to_first_byte_seconds", help: "Proxied requests: admission to head.", firstByte)
    out.family("tether_quota_rejections_total", help: "Refusals by quota.", type: .counter)
    for quota in quotas { out.sample("tether_quota_rejections_total", ["quota": quota], UInt64(7)) }
    out.family("tether_auth_failures_total", help: "Failed authentications by reason.", type: .counter)
    for reason in auth { out.sample("tether_auth_failures_total", ["reason": reason], UInt64(3)) }
    for i in 0..<30 {
        out.family("tether_counter_\(i)_total", help: "A plain counter.", type: .counter)
        out.sample("tether_counter_\(i)_total", UInt64(i * 1_000_003))
    }
    for name in ["connections_open", "io_submissions_total", "io_completions_total", "io_buffer_exhaustions_total"] {
        out.family("tether_\(name)", help: "Per worker.", type: .counter)
        for worker in 0..<2 { out.sample("tether_\(name)", ["worker": String(worker)], UInt64(987_654_321)) }
    }
    out.family("process_cpu_seconds_total", help: "CPU time.", type: .counter)
    out.sample("process_cpu_seconds_total", 12_345.67)
    return out.text
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    // What every proxied request pays twice (duration and time to first byte).
    Benchmark("histogram observe (data path)") { benchmark in
        let histogram = Histogram()
        let latencies = fixture.latencies
        for i in benchmark.scaledIterations {
            histogram.observe(nanoseconds: latencies[i & 4095])
        }
        let count = histogram.snapshot().count
        if count != UInt64(benchmark.scaledIterations.count) { benchmark.error("lost observations: \(count)") }
    }

    Benchmark("histogram merge, 2 workers (per scrape)") { benchmark in
        for _ in benchmark.scaledIterations {
            var snapshot = HistogramSnapshot(upperBounds: Histogram.latencyBounds)
            for h in fixture.workers { snapshot.add(h) }
            blackHole(snapshot.count)
        }
    }

    Benchmark("render a relay-sized scrape (~230 lines)", configuration: .init(scalingFactor: .one)) { benchmark in
        for _ in benchmark.scaledIterations {
            let text = renderScrape(fixture.workers)
            if text.utf8.count < 8_000 { benchmark.error("scrape too small: \(text.utf8.count) bytes") }
            blackHole(text.utf8.count)
        }
    }
}

import Histogram

/// Latencies in nanoseconds, 3 significant digits, up to two minutes.
struct Latency: Sendable {
    static let highest: UInt64 = 120_000_000_000
    private(set) var histogram = Histogram<UInt64>(lowestDiscernibleValue: 100, highestTrackableValue: Latency.highest,
                                                   numberOfSignificantValueDigits: .three)

    @inline(__always)
    mutating func record(nanoseconds: UInt64) {
        _ = histogram.record(min(nanoseconds, Latency.highest))
    }

    mutating func add(_ other: Latency) { histogram.add(other.histogram) }

    var count: UInt64 { histogram.totalCount }

    func microseconds(atPercentile p: Double) -> Double {
        count == 0 ? .nan : Double(histogram.valueAtPercentile(p)) / 1000
    }

    var maxMicroseconds: Double { count == 0 ? .nan : Double(histogram.max) / 1000 }
    var meanMicroseconds: Double { count == 0 ? .nan : histogram.mean / 1000 }

    /// {"count", "p50", "p90", "p99", "p99_9", "max", "mean"} in microseconds.
    var json: JSONReport {
        var o = JSONReport()
        o.set("count", count)
        o.set("p50", microseconds(atPercentile: 50))
        o.set("p90", microseconds(atPercentile: 90))
        o.set("p99", microseconds(atPercentile: 99))
        o.set("p99_9", microseconds(atPercentile: 99.9))
        o.set("max", maxMicroseconds)
        o.set("mean", meanMicroseconds)
        return o
    }

    /// One table row: p50 / p90 / p99 / p99.9 / max, in µs or ms as fits.
    var summary: String {
        guard count > 0 else { return "no samples" }
        return "p50 \(Latency.human(microseconds(atPercentile: 50)))  p90 \(Latency.human(microseconds(atPercentile: 90)))"
            + "  p99 \(Latency.human(microseconds(atPercentile: 99)))  p99.9 \(Latency.human(microseconds(atPercentile: 99.9)))"
            + "  max \(Latency.human(maxMicroseconds))  (\(count) samples)"
    }

    static func human(_ us: Double) -> String {
        guard us.isFinite else { return "n/a" }
        if us >= 10_000 { return fixed(us / 1000, 1) + " ms" }
        if us >= 1000 { return fixed(us / 1000, 2) + " ms" }
        return fixed(us, 0) + " µs"
    }
}

/// Why a request did not get its answer, in the kinds the report lists.
enum RequestFailure: Sendable {
    case connectFailed(String)
    /// An HTTP error status (or anything not 2xx), with the relay's JSON error code if any.
    case status(Int, code: String?)
    case timeout
    case protocolError(String)
    case connectionReset(String)

    var kind: String {
        switch self {
        case .connectFailed: return "connect_failed"
        case .status(let s, _): return "status_\(s)"
        case .timeout: return "timeout"
        case .protocolError: return "protocol_error"
        case .connectionReset: return "connection_reset"
        }
    }

    var detail: String {
        switch self {
        case .connectFailed(let m): return "connect failed: \(m)"
        case .status(let s, let code): return "HTTP \(s)\(code.map { " \($0)" } ?? "")"
        case .timeout: return "timeout"
        case .protocolError(let m): return "protocol error: \(m)"
        case .connectionReset(let m): return "connection reset: \(m)"
        }
    }
}

/// Errors by kind (and by the relay's error code), plus a few examples for the log.
struct ErrorTally: Sendable {
    private(set) var total: UInt64 = 0
    private(set) var byKind: [String: UInt64] = [:]
    private(set) var byCode: [String: UInt64] = [:]
    private(set) var examples: [String] = []

    mutating func add(_ failure: RequestFailure) {
        total += 1
        byKind[failure.kind, default: 0] += 1
        if case .status(_, let code?) = failure { byCode[code, default: 0] += 1 }
        if examples.count < 5, !examples.contains(failure.detail) { examples.append(failure.detail) }
    }

    mutating func add(_ other: ErrorTally) {
        total += other.total
        for (k, v) in other.byKind { byKind[k, default: 0] += v }
        for (k, v) in other.byCode { byCode[k, default: 0] += v }
        for e in other.examples where examples.count < 5 && !examples.contains(e) { examples.append(e) }
    }

    var summary: String {
        guard total > 0 else { return "0" }
        let kinds = byKind.keys.sorted().map { "\($0) \(byKind[$0] ?? 0)" }.joined(separator: ", ")
        let codes = byCode.isEmpty ? "" : "; codes: " + byCode.keys.sorted().map { "\($0) \(byCode[$0] ?? 0)" }.joined(separator: ", ")
        return "\(total) (\(kinds)\(codes))"
    }
}

/// Counts of reasons (bridge failures, close codes), with a cap on distinct keys.
struct ReasonTally: Sendable {
    private(set) var counts: [String: UInt64] = [:]
    private(set) var total: UInt64 = 0

    mutating func add(_ reason: String, _ n: UInt64 = 1) {
        total += n
        let key = counts[reason] != nil || counts.count < 32 ? reason : "other"
        counts[key, default: 0] += n
    }

    mutating func add(_ other: ReasonTally) {
        for (k, v) in other.counts { add(k, v) }
    }

    var summary: String {
        counts.sorted { $0.value > $1.value }.prefix(5).map { "\($0.key) (\($0.value))" }.joined(separator: "; ")
    }
}

/// Everything one worker measured beyond the progress counters. Touched only by its loop;
/// the main thread reads it after the loops have been joined.
final class WorkerResults: @unchecked Sendable {
    /// Request latency: from the intended send time in open-loop scenarios (coordinated
    /// omission corrected), else from the actual send.
    var latency = Latency()
    /// From the moment the request was written (what a closed-loop tool would report).
    var serviceTime = Latency()
    /// Bridge: TCP connect to the relay's HELLO.
    var handshake = Latency()
    /// Stream chunks: emission by the embedded service to arrival at the web client.
    var chunkDelay = Latency()
    var errors = ErrorTally()
    /// Churn: failures of requests to users whose bridges stayed up.
    var stableErrors = ErrorTally()
    var bridgeFailures = ReasonTally()
    var bridgeLosses = ReasonTally()
    var chunksReordered: UInt64 = 0
    var chunksMissing: UInt64 = 0
    var tokenStalls: UInt64 = 0
    /// Per completed transfer (bulk): MB/s.
    var transferCount: UInt64 = 0
    var transferRateSum = 0.0
    var transferRateMin = Double.infinity
    var transferRateMax = 0.0
    var clientConnectFailures = ReasonTally()
    /// Time between two iterations of the driver's loop (a batch of completions handled, or
    /// at most `--tick-us` asleep): a long gap delays everything the driver measures.
    var loopGap = Latency()
    var lastIteration: UInt64 = 0
    /// The driver's loops ran out of provided receive buffers (set after the loops stopped).
    var bufferExhaustions: UInt64 = 0

    func recordTransfer(bytes: Int, nanoseconds: UInt64) {
        guard nanoseconds > 0 else { return }
        let rate = Double(bytes) / (Double(nanoseconds) / 1e9) / 1e6
        transferCount += 1
        transferRateSum += rate
        transferRateMin = min(transferRateMin, rate)
        transferRateMax = max(transferRateMax, rate)
    }

    func merge(_ o: WorkerResults) {
        latency.add(o.latency)
        serviceTime.add(o.serviceTime)
        handshake.add(o.handshake)
        chunkDelay.add(o.chunkDelay)
        loopGap.add(o.loopGap)
        errors.add(o.errors)
        stableErrors.add(o.stableErrors)
        bridgeFailures.add(o.bridgeFailures)
        bridgeLosses.add(o.bridgeLosses)
        chunksReordered += o.chunksReordered
        chunksMissing += o.chunksMissing
        tokenStalls += o.tokenStalls
        transferCount += o.transferCount
        transferRateSum += o.transferRateSum
        transferRateMin = min(transferRateMin, o.transferRateMin)
        transferRateMax = max(transferRateMax, o.transferRateMax)
        clientConnectFailures.add(o.clientConnectFailures)
    }
}

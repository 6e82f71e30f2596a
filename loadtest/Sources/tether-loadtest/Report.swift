import Glibc

/// The end of every scenario: a human-readable table on stdout and the same figures, with
/// the parameters, as JSON (`--json FILE`).
struct Report {
    let scenario: String
    var headline = ""
    var parameters = JSONReport()
    var figures = JSONReport()
    private var rows: [(String, String)] = []

    init(scenario: String) {
        self.scenario = scenario
    }

    mutating func row(_ label: String, _ value: String) { rows.append((label, value)) }

    /// Prints the table and writes the JSON file (scenario, parameters, then the figures at
    /// the top level).
    func emit(json path: String?) throws {
        var out = "\(scenario): \(headline)\n"
        let width = rows.map { $0.0.count }.max() ?? 0
        for (label, value) in rows {
            out += "  " + label + String(repeating: " ", count: width - label.count) + "  " + value + "\n"
        }
        print(out, terminator: "")
        guard let path else { return }
        var o = JSONReport()
        o.set("scenario", scenario)
        o.set("parameters", parameters)
        let figuresText = figures.compact
        let text = figuresText == "{}" ? o.text : o.compact.dropLast() + "," + figuresText.dropFirst() + "\n"
        try writeFile(path, String(text))
    }
}

/// Requests: sent = answered + errors by kind (the invariant the smoke tests check).
func addRequestFigures(_ report: inout Report, totals t: Totals, errors: ErrorTally, seconds: Double) {
    report.figures.set("sent", t.sent)
    report.figures.set("answered", t.answered)
    report.figures.set("errors", errors.total)
    report.figures.set("errors_by_kind", counts: errors.byKind)
    report.figures.set("errors_by_code", counts: errors.byCode)
    report.figures.set("unaccounted", Int(t.sent) - Int(t.answered) - Int(errors.total))
    report.row("requests sent", "\(t.sent)")
    report.row("answered", "\(t.answered)")
    report.row("errors", errors.summary)
    if !errors.examples.isEmpty { report.row("error examples", errors.examples.joined(separator: "; ")) }
}

func addBridgeFigures(_ report: inout Report, totals t: Totals, results r: WorkerResults) {
    report.figures.set("bridges_ready", t.bridgesReady)
    report.figures.set("bridges_failed", t.bridgesFailed)
    report.figures.set("bridges_lost", t.bridgesLost)
    report.figures.set("bridge_failures", counts: r.bridgeFailures.counts)
    report.figures.set("bridge_losses", counts: r.bridgeLosses.counts)
    report.figures.set("handshake_latency_us", r.handshake.json)
    report.figures.set("driver_buffer_exhaustions", r.bufferExhaustions)
    report.figures.set("driver_loop_gap_us", r.loopGap.json)
    report.row("driver loop gaps", r.loopGap.summary)
    var line = "\(t.bridgesReady) ready, \(t.bridgesFailed) failed, \(t.bridgesLost) lost"
    if r.bridgeFailures.total > 0 { line += "; failures: " + r.bridgeFailures.summary }
    if r.bridgeLosses.total > 0 { line += "; losses: " + r.bridgeLosses.summary }
    report.row("bridges", line)
}

/// CPU seconds of the driver and (with --relay-pid) of the relay over a window, and how long
/// their threads waited for a CPU (run queue): on a shared machine that wait, not the code,
/// can dominate the latency tails.
struct CPUWindow {
    let relayPID: Int32?
    private var driverStart = 0.0
    private var relayStart: Double?
    private var wallStart = 0.0
    private var driverWaitStart: Double?
    private var relayWaitStart: Double?
    private(set) var driver = 0.0
    private(set) var relay: Double?
    private(set) var wall = 0.0
    private(set) var driverWait: Double?
    private(set) var relayWait: Double?

    init(relayPID: Int32?) { self.relayPID = relayPID }

    mutating func start() {
        wallStart = monotonicSeconds()
        driverStart = ownCPUSeconds()
        relayStart = relayPID.flatMap { cpuSeconds(pid: $0) }
        driverWaitStart = scheduleSeconds(pid: getpid())?.wait
        relayWaitStart = relayPID.flatMap { scheduleSeconds(pid: $0)?.wait }
    }

    mutating func stop() {
        wall = monotonicSeconds() - wallStart
        driver = ownCPUSeconds() - driverStart
        if let a = relayStart, let b = relayPID.flatMap({ cpuSeconds(pid: $0) }) { relay = b - a }
        if let a = driverWaitStart, let b = scheduleSeconds(pid: getpid())?.wait { driverWait = b - a }
        if let a = relayWaitStart, let b = relayPID.flatMap({ scheduleSeconds(pid: $0)?.wait }) { relayWait = b - a }
    }

    func add(to report: inout Report) {
        guard wall > 0 else { return }
        report.figures.set("driver_cpu_percent", driver / wall * 100)
        var line = "driver \(fixed(driver / wall * 100, 0))%"
        if let relay {
            report.figures.set("relay_cpu_percent", relay / wall * 100)
            line += ", relay \(fixed(relay / wall * 100, 0))%"
        }
        report.row("CPU (of one core)", line)
        var waits: [String] = []
        if let driverWait {
            report.figures.set("driver_runqueue_wait_percent", driverWait / wall * 100)
            waits.append("driver \(fixed(driverWait / wall * 100, 0))%")
        }
        if let relayWait {
            report.figures.set("relay_runqueue_wait_percent", relayWait / wall * 100)
            waits.append("relay \(fixed(relayWait / wall * 100, 0))%")
        }
        report.figures.set("load_average", loadAverage())
        if !waits.isEmpty {
            report.row("waiting for a CPU", waits.joined(separator: ", ") + " of the window, summed over threads (load average \(fixed(loadAverage(), 2)))")
        }
    }
}

/// The 1-minute load average.
func loadAverage() -> Double {
    guard let text = readFile("/proc/loadavg"), let first = text.split(separator: " ").first else { return .nan }
    return Double(first) ?? .nan
}

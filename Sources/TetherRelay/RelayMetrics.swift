#if os(Linux)
import TetherAuth
import TetherIO
import TetherMetrics

/// What one worker reports at scrape time: figures that are state, not counters, so they are
/// read on the loop that owns them instead of being kept up to date per event.
struct WorkerGauges: Sendable {
    var sessionsActive = 0
    var sessionsParked = 0
    var bridges = Array(repeating: 0, count: BridgeProtocol.allCases.count)
    var streams = 0

    init() {}

    init(_ context: RelayContext) {
        for session in context.sessions.sessions.values {
            if session.state == .active { sessionsActive += 1 } else { sessionsParked += 1 }
            for bridge in session.bridges {
                bridges[bridge.protocolKind.rawValue] += 1
                streams += bridge.activeStreams
            }
            streams += session.isolation?.exchanges ?? 0
        }
    }
}

/// `GET /metrics`: counters summed over the workers' single-writer atomics, gauges gathered
/// from every loop, process figures from /proc. No per-user label: per-session figures are in
/// the admin API.
enum RelayMetrics {
    /// Gathers from every worker, then calls `completion` with the scrape on this loop.
    static func scrape(_ context: RelayContext, completion: @escaping (String) -> Void) {
        context.gather({ WorkerGauges($0) }) { [weak context] gauges in
            guard let context else { return }
            completion(render(context, gauges: gauges))
        }
    }

    static func render(_ context: RelayContext, gauges: [WorkerGauges?]) -> String {
        let control = context.control
        let stats = control.workerStats
        let io = context.workers.handles.map(\.stats)
        var out = PrometheusText(reservingCapacity: 24_576)
        func sum(_ pick: (RelayStats) -> UInt64) -> UInt64 { stats.reduce(0) { $0 &+ pick($1) } }
        func sum(_ pick: (RelayStats) -> [RelayStats.Counter], _ index: Int) -> UInt64 {
            stats.reduce(0) { $0 &+ pick($1)[index].current }
        }
        let total = gauges.reduce(into: WorkerGauges()) { total, worker in
            guard let worker else { return }
            total.sessionsActive += worker.sessionsActive
            total.sessionsParked += worker.sessionsParked
            total.streams += worker.streams
            for i in total.bridges.indices { total.bridges[i] += worker.bridges[i] }
        }

        let readiness = control.effectiveReadiness
        out.family("tether_ready", help: "1 while the relay takes traffic (GET /readyz answers 200).", type: .gauge)
        out.sample("tether_ready", readiness == .ready ? 1 : 0)
        out.family("tether_draining", help: "1 once a drain (SIGTERM, POST /admin/drain) has started.", type: .gauge)
        out.sample("tether_draining", readiness == .draining ? 1 : 0)

        // Sessions
        out.family("tether_sessions", help: "Sessions on this relay by state (parked: idle, bridges kept).", type: .gauge)
        out.sample("tether_sessions", ["state": "active"], total.sessionsActive)
        out.sample("tether_sessions", ["state": "parked"], total.sessionsParked)
        out.family("tether_sessions_created_total", help: "Sessions created.", type: .counter)
        out.sample("tether_sessions_created_total", sum { $0.sessionsCreated.load(ordering: .relaxed) })
        out.family("tether_sessions_revived_total", help: "Parked sessions made active again by traffic.", type: .counter)
        out.sample("tether_sessions_revived_total", sum { $0.sessionsRevived.load(ordering: .relaxed) })
        out.family("tether_sessions_parked_total", help: "Sessions parked (idle timeout or proxy stop with bridges connected).", type: .counter)
        out.sample("tether_sessions_parked_total", sum { $0.sessionsParked.load(ordering: .relaxed) })
        out.family("tether_sessions_removed_total", help: "Sessions removed, by reason.", type: .counter)
        for reason in SessionRemovalReason.allCases {
            out.sample("tether_sessions_removed_total", ["reason": reason.label], sum({ $0.sessionRemovals }, reason.rawValue))
        }

        // Bridges
        out.family("tether_bridges_connected", help: "Bridges connected now, by protocol.", type: .gauge)
        for kind in BridgeProtocol.allCases {
            out.sample("tether_bridges_connected", ["protocol": kind.label], total.bridges[kind.rawValue])
        }
        out.family("tether_bridge_connects_total", help: "Bridges that completed their handshake, by protocol.", type: .counter)
        for kind in BridgeProtocol.allCases {
            out.sample("tether_bridge_connects_total", ["protocol": kind.label], sum({ $0.bridgeConnects }, kind.rawValue))
        }
        out.family("tether_bridge_disconnects_total", help: "Connected bridges that left, by reason.", type: .counter)
        for reason in BridgeDisconnectReason.allCases {
            out.sample("tether_bridge_disconnects_total", ["reason": reason.label], sum({ $0.bridgeDisconnects }, reason.rawValue))
        }

        // Streams and requests
        out.family("tether_streams_active", help: "Proxied requests in flight through bridges.", type: .gauge)
        out.sample("tether_streams_active", total.streams)
        out.family("tether_streams_opened_total", help: "Streams opened on bridges.", type: .counter)
        out.sample("tether_streams_opened_total", sum { $0.streamsOpened.load(ordering: .relaxed) })
        out.family("tether_streams_failed_total", help: "Proxied requests answered with an error before a response head (502/503/504).", type: .counter)
        out.sample("tether_streams_failed_total", sum { $0.streamsFailed.load(ordering: .relaxed) })
        out.family("tether_streams_aborted_total", help: "Proxied responses cut after their head (bridge lost, reset, idle).", type: .counter)
        out.sample("tether_streams_aborted_total", sum { $0.streamsAborted.load(ordering: .relaxed) })
        byStatus(&out, "tether_requests_total", "HTTP responses on the public listeners, by status code.", stats) {
            $0.responsesByStatus
        }
        var duration = HistogramSnapshot(upperBounds: Histogram.latencyBounds)
        var firstByte = HistogramSnapshot(upperBounds: Histogram.latencyBounds)
        for worker in stats {
            duration.add(worker.requestDuration)
            firstByte.add(worker.timeToFirstByte)
        }
        out.histogram("tether_request_duration_seconds",
                      help: "Proxied requests: from admission to the end of the response (or its failure).", duration)
        out.histogram("tether_time_to_first_byte_seconds",
                      help: "Proxied requests: from admission to the response head from the bridge.", firstByte)
        out.family("tether_tunnel_bytes_total", help: "Body bytes through tunnels: up = request bodies to bridges, down = responses from them.", type: .counter)
        out.sample("tether_tunnel_bytes_total", ["direction": "up"], sum { $0.tunnelBytesUp.load(ordering: .relaxed) })
        out.sample("tether_tunnel_bytes_total", ["direction": "down"], sum { $0.tunnelBytesDown.load(ordering: .relaxed) })

        // Refusals
        out.family("tether_quota_rejections_total", help: "Requests and bridges refused by a quota or limit, by quota.", type: .counter)
        for quota in Quota.allCases {
            out.sample("tether_quota_rejections_total", ["quota": quota.label], sum({ $0.quotaRejections }, quota.rawValue))
        }
        out.family("tether_auth_failures_total", help: "Failed authentications (HTTP and bridges), by reason.", type: .counter)
        for (index, failure) in AuthFailure.allCases.enumerated() {
            out.sample("tether_auth_failures_total", ["reason": failure.metricLabel], sum({ $0.authFailuresByReason }, index))
        }
        out.family("tether_capacity_rejections_total", help: "Connections, sessions or bridges refused at the relay's capacity limits.", type: .counter)
        out.sample("tether_capacity_rejections_total", sum { $0.capacityRejections.load(ordering: .relaxed) })
        out.family("tether_drain_rejections_total", help: "Requests refused because the relay is draining.", type: .counter)
        out.sample("tether_drain_rejections_total", sum { $0.drainRejections.load(ordering: .relaxed) })

        // Protocol errors and housekeeping
        counter(&out, "tether_bad_requests_total", "Malformed HTTP requests and WebSocket handshakes.", sum { $0.badRequests.load(ordering: .relaxed) })
        counter(&out, "tether_websocket_upgrades_total", "WebSocket upgrades accepted.", sum { $0.webSocketUpgrades.load(ordering: .relaxed) })
        counter(&out, "tether_websocket_protocol_errors_total", "WebSocket framing violations (close 1002/1007/1009).", sum { $0.webSocketProtocolErrors.load(ordering: .relaxed) })
        counter(&out, "tether_tunnel_protocol_errors_total", "Bridges that broke tether.v1 or the legacy protocol.", sum { $0.tunnelProtocolErrors.load(ordering: .relaxed) })
        counter(&out, "tether_tunnel_ping_timeouts_total", "Bridges dropped for unanswered pings.", sum { $0.tunnelPingTimeouts.load(ordering: .relaxed) })
        counter(&out, "tether_deadline_expirations_total", "Connections that hit a deadline (header, idle, stream idle, handshake).", sum { $0.deadlineExpirations.load(ordering: .relaxed) })
        counter(&out, "tether_handoffs_total", "Connections handed to the worker that owns their session.", sum { $0.handOffs.load(ordering: .relaxed) })

        // Keys and configuration
        if let operations = control.operations.withLock({ $0 }) {
            let keys = operations.keyStats()
            counter(&out, "tether_jwks_refreshes_total", "JWKS refreshes (file re-read, URL re-fetched).", keys.keyRefreshes.load(ordering: .relaxed))
            counter(&out, "tether_jwks_refresh_failures_total", "JWKS refreshes where a source failed (old keys kept).", keys.keyRefreshFailures.load(ordering: .relaxed))
            counter(&out, "tether_jwks_key_set_changes_total", "New key sets installed.", keys.keySetChanges.load(ordering: .relaxed))
        }
        let reloads = control.reloads
        out.family("tether_config_reloads_total", help: "Configuration reloads (SIGHUP, POST /admin/reload), by result.", type: .counter)
        out.sample("tether_config_reloads_total", ["result": "success"], reloads.succeeded.load(ordering: .relaxed))
        out.sample("tether_config_reloads_total", ["result": "failure"], reloads.failed.load(ordering: .relaxed))
        out.family("tether_config_last_reload_successful", help: "1 if the last reload was applied, 0 if it was refused.", type: .gauge)
        out.sample("tether_config_last_reload_successful", reloads.lastSucceeded.load(ordering: .relaxed) ? 1 : 0)
        out.family("tether_config_last_reload_success_timestamp_seconds", help: "Unix time of the last applied configuration (start or reload).", type: .gauge)
        out.sample("tether_config_last_reload_success_timestamp_seconds", reloads.lastSuccess)

        // Admin API
        byStatus(&out, "tether_admin_requests_total", "Admin listener responses, by status code.", stats) {
            $0.adminResponsesByStatus
        }
        counter(&out, "tether_admin_auth_failures_total", "Admin calls refused for a missing or wrong token.", sum { $0.adminAuthFailures.load(ordering: .relaxed) })

        // The I/O core, per worker (a handful of series: one per core).
        out.family("tether_connections_open", help: "Open connections, by worker.", type: .gauge)
        for (i, s) in io.enumerated() { out.sample("tether_connections_open", ["worker": String(i)], s.openConnections.load(ordering: .relaxed)) }
        perWorker(&out, "tether_connections_accepted_total", "Connections accepted, by worker.", io) { $0.accepted.load(ordering: .relaxed) }
        perWorker(&out, "tether_io_submissions_total", "io_uring submission queue entries submitted, by worker.", io) { $0.submissions.load(ordering: .relaxed) }
        perWorker(&out, "tether_io_completions_total", "io_uring completions handled, by worker.", io) { $0.completions.load(ordering: .relaxed) }
        perWorker(&out, "tether_io_buffer_exhaustions_total", "Receives that found the provided-buffer ring empty (ENOBUFS), by worker.", io) { $0.bufferExhaustions.load(ordering: .relaxed) }
        perWorker(&out, "tether_io_loop_iterations_total", "Event loop iterations (waits for completions), by worker.", io) { $0.loopIterations.load(ordering: .relaxed) }

        if let isolation = context.isolation { IsolationMetrics.render(&out, isolation) }

        // Process
        let process = ProcessMetrics.read()
        out.family("process_resident_memory_bytes", help: "Resident memory size in bytes.", type: .gauge)
        out.sample("process_resident_memory_bytes", process.residentMemoryBytes)
        out.family("process_virtual_memory_bytes", help: "Virtual memory size in bytes.", type: .gauge)
        out.sample("process_virtual_memory_bytes", process.virtualMemoryBytes)
        out.family("process_cpu_seconds_total", help: "Total user and system CPU time spent in seconds.", type: .counter)
        out.sample("process_cpu_seconds_total", process.cpuSeconds)
        out.family("process_open_fds", help: "Number of open file descriptors.", type: .gauge)
        out.sample("process_open_fds", process.openFDs)
        out.family("process_max_fds", help: "Maximum number of open file descriptors.", type: .gauge)
        out.sample("process_max_fds", process.maxFDs)
        out.family("process_threads", help: "Number of OS threads in the process.", type: .gauge)
        out.sample("process_threads", process.threads)
        out.family("process_start_time_seconds", help: "Start time of the process since unix epoch in seconds.", type: .gauge)
        out.sample("process_start_time_seconds", process.startTimeSeconds)
        return out.text
    }

    /// Only the codes seen (a bounded set: 100...599), summed over the workers; a family with
    /// no sample at all would be unknown to Prometheus, so an idle relay shows code 200 at 0.
    private static func byStatus(_ out: inout PrometheusText, _ name: String, _ help: String, _ stats: [RelayStats],
                                 _ pick: (RelayStats) -> [RelayStats.Counter]) {
        out.family(name, help: help, type: .counter)
        var any = false
        for index in 0..<RelayStats.statusCount {
            let n = stats.reduce(UInt64(0)) { $0 &+ pick($1)[index].current }
            if n > 0 {
                any = true
                out.sample(name, ["code": String(index + 100)], n)
            }
        }
        if !any { out.sample(name, ["code": "200"], UInt64(0)) }
    }

    private static func counter(_ out: inout PrometheusText, _ name: String, _ help: String, _ value: UInt64) {
        out.family(name, help: help, type: .counter)
        out.sample(name, value)
    }

    private static func perWorker(_ out: inout PrometheusText, _ name: String, _ help: String, _ io: [IOStats],
                                  _ pick: (IOStats) -> UInt64) {
        out.family(name, help: help, type: .counter)
        for (i, s) in io.enumerated() { out.sample(name, ["worker": String(i)], pick(s)) }
    }
}
#endif

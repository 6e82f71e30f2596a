#if os(Linux)
import TetherIsolation
import TetherMetrics

/// `tether_isolation_*` (docs/OPERATIONS.md, docs/ISOLATION.md): only with `isolation.mode: docker`.
enum IsolationMetrics {
    static func render(_ out: inout PrometheusText, _ isolation: IsolationRuntime) {
        let c = isolation.counters
        out.family("tether_isolation_containers", help: "Session containers held now (starting, running or being removed).", type: .gauge)
        out.sample("tether_isolation_containers", c.containers.load(ordering: .relaxed))
        out.family("tether_isolation_starts_total", help: "Container starts attempted.", type: .counter)
        out.sample("tether_isolation_starts_total", c.starts.load(ordering: .relaxed))
        out.family("tether_isolation_starts_in_progress", help: "Container starts in flight now.", type: .gauge)
        out.sample("tether_isolation_starts_in_progress", c.startsInProgress.load(ordering: .relaxed))
        out.family("tether_isolation_starts_in_progress_max", help: "Most container starts ever in flight at once (at most isolation.max_concurrent_starts).", type: .gauge)
        out.sample("tether_isolation_starts_in_progress_max", c.startsInProgressMax.load(ordering: .relaxed))
        out.family("tether_isolation_starts_queued", help: "Container starts waiting for a free slot.", type: .gauge)
        out.sample("tether_isolation_starts_queued", c.startsQueued.load(ordering: .relaxed))
        out.family("tether_isolation_failures_total", help: "Sessions refused a container, and containers lost, by reason.", type: .counter)
        for reason in IsolationFailureReason.allCases {
            out.sample("tether_isolation_failures_total", ["reason": reason.label], c.failures[reason.rawValue].value.load(ordering: .relaxed))
        }
        out.histogram("tether_isolation_container_start_seconds",
                      help: "Engine part of a cold start: create, start, the worker's socket answering.", c.containerStartSnapshot())
        out.histogram("tether_isolation_cold_start_seconds",
                      help: "A session needing its container until its worker serves it with the bridges attached.", c.coldStartSnapshot())
        counter(&out, "tether_isolation_parks_total", "Idle sessions whose container was stopped with their bridges kept.", c.parks.load(ordering: .relaxed))
        counter(&out, "tether_isolation_bridge_resumes_total", "Bridges handed to a session worker.", c.resumes.load(ordering: .relaxed))
        counter(&out, "tether_isolation_bridge_handover_failures_total", "Bridges that could not move between the relay and a worker (closed; they reconnect).", c.bridgeHandoverFailures.load(ordering: .relaxed))
        counter(&out, "tether_isolation_removals_total", "Containers removed (parked, session removed, lost).", c.removals.load(ordering: .relaxed))
        counter(&out, "tether_isolation_reaped_total", "Containers of an earlier run of this relay removed at start-up.", c.reaped.load(ordering: .relaxed))
    }

    private static func counter(_ out: inout PrometheusText, _ name: String, _ help: String, _ value: UInt64) {
        out.family(name, help: help, type: .counter)
        out.sample(name, value)
    }
}
#endif

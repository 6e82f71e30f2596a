"""Smoke runs of every tether-loadtest scenario (loadtest/README.md) against the real relay:
small N, a few seconds each. They check the driver's own bookkeeping from its JSON output
(requests sent = answered + errors by kind; stream chunks sent by the embedded services =
chunks received, none reordered; no failed request on the bridges that stay up while others
churn), that figures are present and plausible, and that the driver refuses non-loopback
targets and says clearly when it cannot run.

The binary is $TETHER_LOADTEST, else <repo>/.build/release/tether-loadtest; a missing binary is
an error, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tether_testlib import free_port

REPO = Path(__file__).resolve().parents[2]
LOADTEST_BIN = Path(os.environ.get("TETHER_LOADTEST") or REPO / ".build" / "release" / "tether-loadtest")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def loadtest_binary():
    if not LOADTEST_BIN.is_file() or not os.access(LOADTEST_BIN, os.X_OK):
        pytest.fail(f"tether-loadtest not found at {LOADTEST_BIN} (build it or set TETHER_LOADTEST)", pytrace=False)


def run_loadtest(tmp_path: Path, *args: str, secret: str | None = None, timeout: float = 60) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Runs the driver with --json; returns the process and the parsed JSON (None if absent)."""
    out = tmp_path / f"lt-{len(list(tmp_path.glob('lt-*.json')))}.json"
    cmd = [str(LOADTEST_BIN), *args, "--json", str(out)]
    if secret is not None:
        cmd += ["--jwt-secret", secret]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    data = json.loads(out.read_text()) if out.exists() else None
    return proc, data


def ok(proc: subprocess.CompletedProcess, data: dict | None) -> dict:
    assert proc.returncode == 0, f"driver exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert data is not None, f"no JSON written\nstdout:\n{proc.stdout}"
    # The human-readable table goes to stdout as well.
    assert proc.stdout.startswith(data["scenario"] + ":"), proc.stdout
    return data


def assert_accounting(data: dict) -> None:
    """Every request the driver issued has an outcome: answered, or an error of a listed kind."""
    assert data["sent"] > 0
    assert data["sent"] == data["answered"] + data["errors"], data
    assert data["errors"] == sum(data["errors_by_kind"].values()), data
    assert data["unaccounted"] == 0, data


def target(relay) -> str:
    return f"127.0.0.1:{relay.port}"


# --------------------------------------------------------------------------------------------
# Refusals and clear failures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario,address", [
    ("rps", "10.1.2.3:80"),
    ("connect", "192.168.1.1:8080"),
    ("idle", "8.8.8.8:443"),
    ("stream", "[2001:db8::1]:80"),
    ("churn", "0.0.0.0:8080"),
])
def test_refuses_non_loopback_target(tmp_path, scenario, address):
    proc, data = run_loadtest(tmp_path, scenario, "--target", address, secret="x" * 32, timeout=20)
    assert proc.returncode != 0
    assert data is None
    assert f"refusing target {address}" in proc.stderr and "loopback" in proc.stderr, proc.stderr


def test_refuses_non_loopback_raw_websocket_and_echo(tmp_path):
    proc, _ = run_loadtest(tmp_path, "idle", "--target", "172.16.0.1:80", "--path", "/ws/echo", timeout=20)
    assert proc.returncode != 0 and "refusing target" in proc.stderr, proc.stderr
    proc = subprocess.run([str(LOADTEST_BIN), "echo", "--target", "10.0.0.1:7"], capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0 and "refusing target" in proc.stderr, proc.stderr


def test_relay_down_is_a_clear_error(tmp_path):
    port = free_port()
    proc, data = run_loadtest(tmp_path, "rps", "--target", f"127.0.0.1:{port}", secret="x" * 32, timeout=20)
    assert proc.returncode != 0
    assert data is None
    assert "not reachable" in proc.stderr and "refused" in proc.stderr.lower(), proc.stderr


def test_relay_dying_mid_run_is_counted_and_fails_the_run(tmp_path, tunnel_relay, jwt_secret):
    out = tmp_path / "dying.json"
    proc = subprocess.Popen([str(LOADTEST_BIN), "rps", "--target", target(tunnel_relay), "--rate", "500", "--duration", "4",
                             "--bridges", "2", "--connections", "8", "--jwt-secret", jwt_secret, "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill the relay once the first progress line shows traffic flowing.
    first = ""
    while "sent=" not in first:
        first = proc.stderr.readline()
        assert first, "the driver ended before its first progress line"
    tunnel_relay.expected_exit = True
    tunnel_relay.proc.kill()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0, stdout
    stderr = first + stderr
    assert "the relay went away during the run" in stderr, stderr
    data = json.loads(out.read_text())
    assert_accounting(data)
    lost = data["errors_by_kind"].get("connect_failed", 0) + data["errors_by_kind"].get("connection_reset", 0)
    assert lost > 0 and lost == data["errors"], data["errors_by_kind"]
    assert data["bridges_lost"] == 2


def test_wrong_secret_is_a_clear_error(tmp_path, tunnel_relay):
    proc, _ = run_loadtest(tmp_path, "rps", "--target", target(tunnel_relay), "--duration", "1", "--bridges", "3",
                           secret="not-the-relay-secret-0123456789", timeout=30)
    assert proc.returncode != 0
    assert "bridges connected" in proc.stderr and "4001" in proc.stderr, proc.stderr


def test_too_many_bridges_per_session_is_reported(tmp_path, tunnel_relay_factory, jwt_secret):
    # Real default quotas: 3 bridges per session. Six bridges of one user: three are refused
    # with 4008, which the driver reports instead of counting them as connected.
    relay = tunnel_relay_factory(quotas=True)
    proc, data = run_loadtest(tmp_path, "idle", "--target", target(relay), "--connections", "6", "--users", "1",
                              "--hold", "0", secret=jwt_secret)
    assert proc.returncode != 0
    assert "only 3 of 6 bridges connected" in proc.stderr, proc.stderr
    assert data["connections_established"] == 3
    assert data["connections_failed"] == 3
    assert any(k.startswith("close 4008") for k in data["bridge_failures"]), data["bridge_failures"]


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


def test_idle_reports_relay_rss_per_tunnel(tmp_path, tunnel_relay, jwt_secret):
    proc, data = run_loadtest(tmp_path, "idle", "--target", target(tunnel_relay), "--connections", "300",
                              "--hold", "1", "--relay-pid", str(tunnel_relay.pid), "--sources", "2", secret=jwt_secret)
    data = ok(proc, data)
    assert data["connections_established"] == 300
    assert data["connections_failed"] == 0 and data["bridges_lost"] == 0
    assert data["relay_rss_after_bytes"] > data["relay_rss_before_bytes"] > 0
    assert data["rss_per_tunnel_bytes"] > 0
    assert data["handshake_latency_us"]["count"] == 300
    assert data["parameters"]["connections"] == 300
    # The relay really holds them: its status for one of the users says so.
    assert tunnel_relay.healthy()


def test_idle_over_tls(tmp_path, tunnel_relay_factory, jwt_secret, certs):
    relay = tunnel_relay_factory(tls=certs.a)
    proc, data = run_loadtest(tmp_path, "idle", "--target", f"127.0.0.1:{relay.tls_port}", "--tls", "--ca", str(certs.ca),
                              "--connections", "50", "--hold", "0.5", "--relay-pid", str(relay.pid), secret=jwt_secret)
    data = ok(proc, data)
    assert data["tls"] == "yes"
    assert data["connections_established"] == 50
    assert data["rss_per_tunnel_bytes"] > 0


def test_idle_raw_websocket_path(tmp_path, tunnel_relay):
    # The mode Benchmarks/idle-rss.sh uses: plain WebSocket connections to /ws/echo, no token.
    proc, data = run_loadtest(tmp_path, "idle", "--target", target(tunnel_relay), "--path", "/ws/echo",
                              "--connections", "100", "--hold", "0.5", "--relay-pid", str(tunnel_relay.pid))
    assert proc.returncode == 0, proc.stderr
    assert data["connections_established"] == 100 and data["connections_failed"] == 0
    assert data["rss_per_connection_bytes"] > 0


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_connect_handshakes(tmp_path, tunnel_relay_factory, jwt_secret, certs, tls):
    relay = tunnel_relay_factory(tls=certs.a if tls else None)
    args = ["connect", "--duration", "2", "--concurrency", "16", "--users", "200", "--relay-pid", str(relay.pid)]
    args += ["--target", f"127.0.0.1:{relay.tls_port}", "--tls", "--ca", str(certs.ca)] if tls else ["--target", target(relay)]
    proc, data = run_loadtest(tmp_path, *args, secret=jwt_secret)
    data = ok(proc, data)
    assert data["handshakes"] > 20
    assert data["failed"] == 0 and data["bridges_lost"] == 0
    assert data["handshakes_per_second"] == pytest.approx(data["handshakes"] / data["seconds"])
    # Every completed handshake has a latency sample (those finishing after the window too).
    assert data["handshake_latency_us"]["count"] == data["handshakes_total"]
    assert 0 < data["handshake_latency_us"]["p50"] <= data["handshake_latency_us"]["max"]
    assert relay.healthy()


def test_rps_open_loop(tmp_path, tunnel_relay, jwt_secret):
    proc, data = run_loadtest(tmp_path, "rps", "--target", target(tunnel_relay), "--rate", "300", "--duration", "3",
                              "--bridges", "4", "--connections", "16", "--size", "100", "--relay-pid", str(tunnel_relay.pid),
                              secret=jwt_secret)
    data = ok(proc, data)
    assert_accounting(data)
    assert data["errors"] == 0, data["errors_by_kind"]
    # Open loop: the schedule is kept whatever the answers do.
    assert data["sent"] == pytest.approx(300 * 3, rel=0.03)
    assert data["latency_us"]["count"] == data["answered"]
    lat = data["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    # Measured from the intended send time, latency is never below the service time.
    assert lat["p50"] >= data["service_time_us"]["p50"] * 0.9
    assert data["parameters"]["rate"] == 300


def test_rps_counts_relay_errors_by_kind(tmp_path, tunnel_relay_factory, jwt_secret):
    # Default quotas: 10 requests/s per session (burst 20). Most of 200/s to two users get 429.
    relay = tunnel_relay_factory(quotas=True)
    proc, data = run_loadtest(tmp_path, "rps", "--target", target(relay), "--rate", "200", "--duration", "2",
                              "--bridges", "2", "--connections", "8", secret=jwt_secret)
    data = ok(proc, data)
    assert_accounting(data)
    assert data["errors_by_kind"].get("status_429", 0) > 100, data["errors_by_kind"]
    assert data["errors_by_code"].get("RATE_LIMITED", 0) == data["errors_by_kind"]["status_429"]
    assert data["answered"] >= 20


def test_stream_chunks_all_arrive_in_order(tmp_path, tunnel_relay, jwt_secret):
    proc, data = run_loadtest(tmp_path, "stream", "--target", target(tunnel_relay), "--streams", "40",
                              "--token-rate", "20", "--duration", "2", "--bridges", "4", "--ramp", "0.5", secret=jwt_secret)
    data = ok(proc, data)
    assert_accounting(data)
    assert data["errors"] == 0 and data["answered"] == 40
    assert data["chunks_expected"] == 40 * 40
    assert data["chunks_sent"] == data["chunks_received"] == data["chunks_expected"]
    assert data["chunks_lost"] == 0 and data["chunks_missing"] == 0 and data["chunks_reordered"] == 0
    delay = data["chunk_delay_us"]
    assert delay["count"] == data["chunks_received"]
    assert 0 <= delay["p50"] <= delay["p99"] <= delay["max"]


def test_bulk_both_ways(tmp_path, tunnel_relay, jwt_secret):
    proc, data = run_loadtest(tmp_path, "bulk", "--target", target(tunnel_relay), "--streams", "4",
                              "--size", str(1 << 20), "--duration", "2", "--bridges", "2", secret=jwt_secret)
    data = ok(proc, data)
    assert_accounting(data)
    assert data["errors"] == 0, data["errors_by_kind"]
    assert data["bytes_down"] > 0 and data["bytes_up"] > 0
    assert data["down_mb_per_second"] > 0 and data["up_mb_per_second"] > 0
    assert data["total_mb_per_second"] == pytest.approx(data["down_mb_per_second"] + data["up_mb_per_second"])
    per = data["per_stream_mb_per_second"]
    assert per["transfers"] == data["answered"]
    assert 0 < per["min"] <= per["mean"] <= per["max"]


def test_churn_spares_the_stable_bridges(tmp_path, tunnel_relay, jwt_secret):
    proc, data = run_loadtest(tmp_path, "churn", "--target", target(tunnel_relay), "--duration", "3",
                              "--stable-bridges", "4", "--churn-bridges", "10", "--churn-rate", "20",
                              "--rate", "150", "--connections", "8", secret=jwt_secret)
    data = ok(proc, data)
    assert_accounting(data)
    assert data["reconnects"] >= 40, data
    assert data["reconnect_failures"] == 0, data.get("bridge_failures")
    assert data["failed_requests_stable"] == 0, data["errors_by_kind"]
    assert data["bridges_lost"] == 0


def test_rps_forwarding_to_a_real_local_service(tmp_path, tunnel_relay, jwt_secret, nginx):
    # --forward: the bridges pass each stream to nginx over pooled keep-alive connections.
    proc, data = run_loadtest(tmp_path, "rps", "--target", target(tunnel_relay), "--rate", "200", "--duration", "2",
                              "--bridges", "2", "--connections", "8", "--forward", f"http://127.0.0.1:{nginx.port}",
                              "--path", "/files/1KiB.bin", secret=jwt_secret)
    data = ok(proc, data)
    assert_accounting(data)
    assert data["errors"] == 0, data["errors_by_kind"]
    assert data["parameters"]["forward"] == f"http://127.0.0.1:{nginx.port}"
    # A missing file is nginx's 404, passed through and counted by status.
    proc, data = run_loadtest(tmp_path, "rps", "--target", target(tunnel_relay), "--rate", "100", "--duration", "1",
                              "--bridges", "2", "--connections", "4", "--forward", f"http://127.0.0.1:{nginx.port}",
                              "--path", "/files/missing.bin", secret=jwt_secret)
    data = ok(proc, data)
    assert_accounting(data)
    assert data["answered"] == 0 and data["errors_by_kind"] == {"status_404": data["sent"]}


def test_forward_target_must_be_loopback(tmp_path):
    proc, _ = run_loadtest(tmp_path, "rps", "--target", "127.0.0.1:1", "--forward", "http://10.0.0.1:11434",
                           secret="x" * 32, timeout=20)
    assert proc.returncode != 0 and "refusing target 10.0.0.1:11434" in proc.stderr, proc.stderr

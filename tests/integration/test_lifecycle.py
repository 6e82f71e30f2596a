"""Process lifecycle: flags, signals (SIGTERM/SIGINT exit 0, SIGHUP without TLS is harmless)."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tether_testlib import Reader, connect, echo_request, ws_handshake

H = b"Host: 127.0.0.1\r\n"


def _echo_once(port: int, i: int) -> bool:
    body = f"worker test {i} ".encode() * (i % 50 + 1)
    s = connect(port)
    try:
        s.sendall(echo_request(body))
        resp = Reader(s).read_response("POST")
        return resp.status == 200 and resp.body == body
    finally:
        s.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero(relay, sig):
    relay.expected_exit = True
    t0 = time.monotonic()
    rc = relay.stop(sig, timeout=10)
    assert rc == 0, f"exit code {rc} after {sig!r}\n{relay.stderr_tail()}"
    assert time.monotonic() - t0 < 5, "relay took more than 5 s to exit"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_with_open_connections(relay, sig):
    """Idle keep-alive, half-sent request and open WebSocket connections must not block shutdown."""
    relay.expected_exit = True
    idle = connect(relay.port)
    idle.sendall(b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n")
    assert Reader(idle).read_response().status == 200
    half = connect(relay.port)
    half.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\n\r\nabc")
    ws, _, resp = ws_handshake(relay.port)
    assert resp.status == 101
    try:
        t0 = time.monotonic()
        rc = relay.stop(sig, timeout=10)
        assert rc == 0, f"exit code {rc}\n{relay.stderr_tail()}"
        assert time.monotonic() - t0 < 5, "relay took more than 5 s to exit with open connections"
    finally:
        for s in (idle, half, ws):
            s.close()


def test_sighup_without_tls_is_harmless(relay):
    for _ in range(3):
        relay.send_signal(signal.SIGHUP)
        time.sleep(0.2)
    assert relay.alive(), f"relay died on SIGHUP without TLS configured\n{relay.stderr_tail()}"
    assert relay.healthy()


@pytest.mark.parametrize("workers", ["1", "3"])
def test_workers_flag(relay_factory, workers):
    relay = relay_factory("--workers", workers)
    with ThreadPoolExecutor(max_workers=20) as ex:
        results = list(ex.map(lambda i: _echo_once(relay.port, i), range(60)))
    assert all(results)


def test_logs_go_to_stderr_not_stdout(relay_factory):
    relay = relay_factory(log_level="debug")
    assert _echo_once(relay.port, 1)
    relay.expected_exit = True
    assert relay.stop() == 0
    # stdout carries the audit log only (docs/SESSIONS.md): JSON lines, nothing else.
    lines = relay.stdout_path.read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events[0] == "relay_started" and events[-1] == "relay_stopped", events
    assert relay.stderr_text().strip(), "relay logged nothing to stderr at --log-level debug"


def test_audit_log_off_leaves_stdout_empty(relay_factory):
    relay = relay_factory("--audit-log", "off")
    assert _echo_once(relay.port, 1)
    relay.expected_exit = True
    assert relay.stop() == 0
    assert relay.stdout_path.read_bytes() == b"", "relay wrote to stdout with --audit-log off"

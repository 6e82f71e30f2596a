"""Sessions (docs/SESSIONS.md): per-session quotas and tiers, idle cleanup, global and
per-address limits, the seed API (/api/proxy/*) and the audit log. Real relay, real sockets, the
Python tether.v1 bridge from tunnel_client.py."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import subprocess
import time

import pytest

from async_http import bearer, request
from test_tunnel_relay import assert_error, blob, bridge, http, make_handler, run, wait_bridges
from tunnel_client import TunnelClosed, Setting
from tunnel_fixtures import KiB, MiB

pytestmark = pytest.mark.timeout(180)


def quota_relay(tunnel_relay_factory, *args, **kw):
    """A relay with the real default quotas (the tunnel tests relax them), plus `args`."""
    return tunnel_relay_factory(*args, quotas=True, **kw)


def audit_events(relay, event: str | None = None) -> list[dict]:
    lines = []
    # Only complete lines: the writer thread may be mid-write.
    for raw in relay.stdout_path.read_text().split("\n")[:-1]:
        doc = json.loads(raw)  # every line must be JSON
        if event is None or doc["event"] == event:
            lines.append(doc)
    return lines


def wait_audit(relay, event: str, timeout: float = 3.0) -> list[dict]:
    """The audit events of that kind, waiting for the first: a writer thread appends them."""
    deadline = time.monotonic() + timeout
    while True:
        found = audit_events(relay, event)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)


async def status(relay, token) -> dict:
    r = await http(relay, "GET", "/api/proxy/status", token)
    assert r.status == 200 and r.media_type == "application/json", r.describe()
    return r.json()


async def refused_close(relay, token, **kw) -> tuple[int | None, str]:
    """Connects a bridge the relay is expected to refuse; returns the close code and reason."""
    b = bridge(relay, token, strict=False, **kw)
    try:
        await b.__aenter__()
    except TunnelClosed as closed:
        await b.abort()
        return closed.code, closed.reason
    try:
        return await b.wait_closed(5)
    finally:
        await b.abort()


# ============================================================================================
# Quotas, each with another user unaffected
# ============================================================================================


def test_rate_limit_exact_and_other_user_unaffected(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--rate-limit", "0.2", "--rate-burst", "5")
    alice, bob = mint_token("alice"), mint_token("bob")

    async def main():
        async with bridge(relay, alice, name="alice"), bridge(relay, bob, name="bob"):
            codes = []
            for _ in range(9):
                r = await http(relay, "GET", "/api/ollama/info", alice)
                codes.append(r.status)
                if r.status == 429:
                    assert_error(r, 429, "RATE_LIMITED")
                    assert 1 <= int(r.header("retry-after")) <= 5, r.describe()
            # Alice is past her quota; Bob (same limits, own bucket) is served in full.
            for _ in range(5):
                rb = await http(relay, "GET", "/api/ollama/info", bob)
                assert rb.status == 200 and rb.json()["bridge"] == "bob"
            # The burst is 5: exactly 5 pass (a refill takes 5 s at 0.2/s).
            assert codes == [200] * 5 + [429] * 4, codes

    run(main())


def test_concurrent_streams_limit(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--max-streams", "3")
    alice, bob = mint_token("alice"), mint_token("bob")
    release = asyncio.Event()

    async def holding(s):
        await s.read_all()
        await s.send_response(200, [("content-type", "text/plain")])
        await release.wait()
        await s.send_data(b"done", end_stream=True)

    async def main():
        async with bridge(relay, alice, holding, name="alice"), bridge(relay, bob, name="bob"):
            held = [asyncio.create_task(http(relay, "GET", f"/api/ollama/hold/{i}", alice)) for i in range(3)]
            await wait_for(lambda: _streams(relay, alice, 3), 5, "3 streams in flight")
            r = await http(relay, "GET", "/api/ollama/one-more", alice)
            assert_error(r, 429, "TOO_MANY_STREAMS")
            assert r.header("retry-after") == "1"
            rb = await http(relay, "GET", "/api/ollama/info", bob)
            assert rb.status == 200
            # Streams already flowing are never cut by the quota.
            release.set()
            for t in held:
                r = await t
                assert r.status == 200 and r.body == b"done"
            # Slots free again.
            r = await http(relay, "GET", "/api/ollama/after", alice)
            assert r.status == 200

    async def _streams(relay, tok, n):
        return (await status(relay, tok))["activeStreams"] == n

    run(main())


def test_bridge_limit_4008(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--max-bridges", "2")
    alice, bob = mint_token("alice"), mint_token("bob")

    async def main():
        async with bridge(relay, alice, name="a1"), bridge(relay, alice, name="a2"):
            await wait_bridges(relay, alice, 2)
            code, reason = await refused_close(relay, alice)
            assert code == 4008 and "TOO_MANY_BRIDGES" in reason, (code, reason)
            await wait_bridges(relay, alice, 2)
            # Bob has his own allowance.
            async with bridge(relay, bob, name="b1"), bridge(relay, bob, name="b2"):
                await wait_bridges(relay, bob, 2)
                r = await http(relay, "GET", "/api/ollama/info", alice)
                assert r.status == 200
        await asyncio.sleep(0.2)
        assert any(e["quota"] == "bridges" for e in wait_audit(relay, "quota_rejected"))

    run(main())


def test_body_and_header_size_per_tier(tunnel_relay_factory, mint_token, tmp_path):
    quotas = tmp_path / "quotas.json"
    quotas.write_text(json.dumps({"tiers": {"tiny": {"max_body_bytes": 1000, "max_header_bytes": 2048}}}))
    relay = quota_relay(tunnel_relay_factory, "--quota-file", str(quotas))
    tiny, normal = mint_token("tina", tier="tiny"), mint_token("norm")

    async def main():
        async with bridge(relay, tiny, name="tiny"), bridge(relay, normal, name="normal"):
            r = await http(relay, "POST", "/api/ollama/info", tiny, b"x" * 1000)
            assert r.status == 200 and r.json()["body_len"] == 1000
            r = await http(relay, "POST", "/api/ollama/info", tiny, b"x" * 1001)
            assert_error(r, 413, "PAYLOAD_TOO_LARGE")

            async def gen():
                for _ in range(3):
                    yield b"y" * 400
            r = await request(relay.port, "POST", "/api/ollama/info", bearer(tiny), body_stream=gen())
            assert r.status == 413, r.describe()
            r = await http(relay, "GET", "/api/ollama/info", tiny, headers={"X-Big": "h" * 3000})
            assert_error(r, 431, "HEADERS_TOO_LARGE")
            # The default tier keeps the relay-wide limits.
            r = await http(relay, "POST", "/api/ollama/info", normal, b"z" * 50_000, headers={"X-Big": "h" * 3000})
            assert r.status == 200 and r.json()["body_len"] == 50_000

    run(main())


def test_bandwidth_is_shaped_not_cut(tunnel_relay_factory, mint_token, tmp_path):
    quotas = tmp_path / "quotas.json"
    quotas.write_text(json.dumps({"tiers": {"slow": {"bandwidth_bytes_per_second": 1 * MiB,
                                                     "bandwidth_burst_bytes": 256 * KiB}}}))
    relay = quota_relay(tunnel_relay_factory, "--quota-file", str(quotas))
    slow, fast = mint_token("sam", tier="slow"), mint_token("fay")
    size = 3 * MiB

    async def main():
        async with bridge(relay, slow, name="slow"), bridge(relay, fast, name="fast"):
            t0 = time.monotonic()
            slow_task = asyncio.create_task(http(relay, "GET", f"/api/ollama/blob/{size}/1", slow, timeout=30))
            await asyncio.sleep(0.2)
            t1 = time.monotonic()
            r = await http(relay, "GET", f"/api/ollama/blob/{size}/2", fast, timeout=30)
            fast_elapsed = time.monotonic() - t1
            assert r.status == 200 and r.body == blob(size, 2)
            r = await slow_task
            slow_elapsed = time.monotonic() - t0
            assert r.status == 200 and r.body == blob(size, 1), "shaping must slow, never cut or corrupt"
            # 3 MiB at 1 MiB/s after a 256 KiB burst (plus one window in flight): over 1.5 s.
            assert slow_elapsed > 1.5, slow_elapsed
            assert fast_elapsed < slow_elapsed / 2, (fast_elapsed, slow_elapsed)
            # Uploads too.
            t2 = time.monotonic()
            r = await http(relay, "POST", "/api/ollama/info", slow, b"u" * (2 * MiB), timeout=30)
            assert r.status == 200 and r.json()["body_len"] == 2 * MiB
            assert time.monotonic() - t2 > 1.2

    run(main())


def test_memory_budget_sizes_the_windows(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--session-memory", str(4 * MiB), "--max-bridges", "2",
                        "--max-streams", "8")
    alice = mint_token("alice")

    async def main():
        async with bridge(relay, alice, credit="none") as b:
            # 4 MiB minus the request side (2 tunnel socket queues of 256 KiB, 8 read buffers of
            # 16 KiB), split between the 2 bridges.
            expected = (4 * MiB - 2 * 256 * KiB - 8 * 16 * KiB) // 2
            assert b.peer_settings[Setting.TUNNEL_WINDOW] == expected
            assert b.peer_settings[Setting.STREAM_WINDOW] <= expected
            assert b.peer_settings[Setting.MAX_STREAMS] == 8

    run(main())


# ============================================================================================
# Tiers
# ============================================================================================


def test_tiers_pick_their_profile(tunnel_relay_factory, mint_token, tmp_path):
    quotas = tmp_path / "quotas.json"
    quotas.write_text(json.dumps({
        "tier_claim": "plan",
        "default": {"request_burst": 3, "requests_per_second": 0.1},
        "tiers": {"free": {"request_burst": 1}, "pro": {"request_burst": 10}},
    }))
    relay = quota_relay(tunnel_relay_factory, "--quota-file", str(quotas))
    users = {"free": mint_token("f", plan="free"), "pro": mint_token("p", plan="pro"),
             "gold": mint_token("g", plan="gold"), "none": mint_token("n")}
    expected = {"free": 1, "pro": 10, "gold": 3, "none": 3}
    names = {"free": "free", "pro": "pro", "gold": "default", "none": "default"}

    async def main():
        for key, tok in users.items():
            async with bridge(relay, tok, name=key):
                ok = 0
                for _ in range(12):
                    r = await http(relay, "GET", "/api/ollama/info", tok)
                    ok += r.status == 200
                assert ok == expected[key], (key, ok)
                assert (await status(relay, tok))["tier"] == names[key]

    run(main())


# ============================================================================================
# Idle cleanup
# ============================================================================================


def test_idle_session_without_bridge_is_removed_at_deadline(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--session-idle-timeout", "2")
    alice = mint_token("alice")

    async def main():
        r = await http(relay, "POST", "/api/proxy/start", alice)
        assert r.status == 200
        t0 = time.monotonic()
        assert (await status(relay, alice))["status"] == "running"
        await wait_for(lambda: _gone(relay, alice), 6, "session removal")
        elapsed = time.monotonic() - t0
        assert 1.8 <= elapsed <= 3.5, elapsed
        removed = wait_audit(relay, "session_removed")
        assert removed and removed[-1]["reason"] == "idle"

    async def _gone(relay, tok):
        return (await status(relay, tok))["status"] == "not-found"

    run(main())


def test_parked_bridge_survives_and_revives(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--session-idle-timeout", "2")
    alice = mint_token("alice")

    async def main():
        async with bridge(relay, alice) as b:
            r = await http(relay, "GET", "/api/ollama/info", alice)
            assert r.status == 200
            # Activity postpones: a request every second for 4 s keeps it running.
            for _ in range(4):
                await asyncio.sleep(1)
                assert (await status(relay, alice))["status"] == "running"
                assert (await http(relay, "GET", "/api/ollama/info", alice)).status == 200
            t0 = time.monotonic()
            await wait_for(lambda: _is(relay, alice, "stopped"), 6, "park")
            assert time.monotonic() - t0 <= 3.5
            # Parked: the bridge stays connected (pings are not activity).
            assert not b.closed.is_set()
            await wait_bridges(relay, alice, 1)
            idled = wait_audit(relay, "session_idled")
            assert idled and idled[-1]["reason"] == "idle" and idled[-1]["bridges"] == 1
            # The next request revives it transparently.
            r = await http(relay, "GET", "/api/ollama/info", alice)
            assert r.status == 200
            assert (await status(relay, alice))["status"] == "running"
            assert wait_audit(relay, "session_revived")
        # Bridge gone and idle: removed.
        await wait_for(lambda: _is(relay, alice, "not-found"), 6, "removal")

    async def _is(relay, tok, want):
        return (await status(relay, tok))["status"] == want

    run(main())


@pytest.mark.timeout(420)
def test_20000_sessions_created_and_cleaned_up_without_leak(tunnel_relay_factory, mint_token):
    # The timeout must outlast creating all 20,000 (to check the limit exactly): about 10 s with
    # a release relay here, 25 s with the AddressSanitizer build.
    relay = quota_relay(tunnel_relay_factory, "--session-idle-timeout", "45", "--audit-log", "off")
    n = 20_000

    def rss_kib() -> int:
        for line in open(f"/proc/{relay.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    tokens = [mint_token(f"user-{i}") for i in range(n)]

    def start_all(sources: list[str]) -> list[int]:
        # Raw keep-alive sockets, 64 requests in flight per connection (pipelined).
        statuses: list[int] = []
        per = (len(sources) + 7) // 8
        for c in range(8):
            chunk = sources[c * per:(c + 1) * per]
            s = socket.create_connection(("127.0.0.1", relay.port))
            try:
                buf = b""
                for off in range(0, len(chunk), 64):
                    batch = chunk[off:off + 64]
                    s.sendall(b"".join(b"POST /api/proxy/start HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
                                       b"Authorization: Bearer " + t.encode() + b"\r\n\r\n" for t in batch))
                    got = 0
                    while got < len(batch):
                        head_end = buf.find(b"\r\n\r\n")
                        if head_end < 0:
                            data = s.recv(1 << 16)
                            assert data, "relay closed the connection"
                            buf += data
                            continue
                        head = buf[:head_end].decode()
                        length = int([h.split(":")[1] for h in head.split("\r\n") if h.lower().startswith("content-length")][0])
                        while len(buf) < head_end + 4 + length:
                            buf += s.recv(1 << 16)
                        statuses.append(int(head.split(" ")[1]))
                        buf = buf[head_end + 4 + length:]
                        got += 1
            finally:
                s.close()
        return statuses

    baseline = rss_kib()
    rounds = []
    for round_ in range(2):
        statuses = start_all(tokens)
        assert statuses.count(200) == n, {c: statuses.count(c) for c in set(statuses)}
        # The limit holds exactly: one more user is refused while 20,000 exist.
        extra = run(http(relay, "POST", "/api/proxy/start", mint_token(f"extra-{round_}")))
        assert_error(extra, 503, "CAPACITY_EXCEEDED")
        peak = rss_kib()
        # All idle: gone within the timeout plus a little, no full scans needed.
        deadline = time.monotonic() + 60
        while True:
            r = run(http(relay, "GET", "/api/proxy/status", tokens[-1]))
            if r.json()["status"] == "not-found":
                break
            assert time.monotonic() < deadline, "sessions not cleaned up"
            time.sleep(0.2)
        time.sleep(0.5)
        # (One of the same users, so the next round still has exactly 20,000.)
        ok = run(http(relay, "POST", "/api/proxy/start", tokens[0]))
        assert ok.status == 200, "capacity must come back once sessions are removed"
        rounds.append((peak, rss_kib()))
    # Memory is stable: the second round does not grow the relay beyond the first.
    (peak1, after1), (peak2, after2) = rounds
    assert peak2 <= peak1 * 1.15 + 4096, (baseline, rounds)
    assert after2 <= after1 * 1.15 + 4096, (baseline, rounds)
    assert relay.healthy()


# ============================================================================================
# Seed API (CloudToLocalLLM)
# ============================================================================================


def test_seed_api_shapes(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory)
    alice = mint_token("alice")

    async def main():
        r = await http(relay, "GET", "/api/proxy/status", None)
        assert_error(r, 401, "AUTH_REQUIRED")
        st = await status(relay, alice)
        assert st == {"status": "not-found", "userId": "alice", "proxyId": None, "createdAt": None,
                      "lastActivity": None}
        r = await http(relay, "POST", "/api/proxy/stop", alice)
        assert_error(r, 404, "SESSION_NOT_FOUND")
        r = await http(relay, "POST", "/api/proxy/start", alice)
        assert r.status == 200
        doc = r.json()
        assert doc["success"] is True and isinstance(doc["message"], str)
        proxy = doc["proxy"]
        assert proxy["status"] == "running" and len(proxy["proxyId"]) == 64
        assert proxy["createdAt"].endswith("Z")
        st = await status(relay, alice)
        assert st["status"] == "running" and st["proxyId"] == proxy["proxyId"] and st["userId"] == "alice"
        assert st["createdAt"] == proxy["createdAt"] and st["lastActivity"].endswith("Z")
        # Start is idempotent: same session.
        r = await http(relay, "POST", "/api/proxy/start", alice)
        assert r.json()["proxy"]["proxyId"] == proxy["proxyId"]
        async with bridge(relay, alice):
            r = await http(relay, "POST", "/api/proxy/stop", alice)
            assert r.status == 200 and r.json()["success"] is True
            # With a bridge the session is parked, not removed; a request revives it.
            assert (await status(relay, alice))["status"] == "stopped"
            assert (await http(relay, "GET", "/api/ollama/info", alice)).status == 200
            assert (await status(relay, alice))["status"] == "running"
        await asyncio.sleep(0.2)
        r = await http(relay, "POST", "/api/proxy/stop", alice)
        assert r.status == 200
        assert (await status(relay, alice))["status"] == "not-found"
        r = await http(relay, "GET", "/api/proxy/start", alice)
        assert_error(r, 405, "METHOD_NOT_ALLOWED")

    run(main())


# ============================================================================================
# Global limits, per-address limits, slow clients
# ============================================================================================


def test_max_sessions_for_bridges_and_api(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--max-sessions", "2")
    a, b, c = mint_token("a"), mint_token("b"), mint_token("c")

    async def main():
        assert (await http(relay, "POST", "/api/proxy/start", a)).status == 200
        async with bridge(relay, b):
            assert_error(await http(relay, "POST", "/api/proxy/start", c), 503, "CAPACITY_EXCEEDED")
            code, reason = await refused_close(relay, c)
            assert code == 1013 and "CAPACITY_EXCEEDED" in reason, (code, reason)
            # Existing users are unaffected.
            assert (await http(relay, "GET", "/api/ollama/info", b)).status == 200

    run(main())


def test_max_connections_answers_503(tunnel_relay_factory):
    relay = quota_relay(tunnel_relay_factory, "--max-connections", "4")
    held = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(4)]
    try:
        time.sleep(0.2)
        s = socket.create_connection(("127.0.0.1", relay.port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        s.settimeout(5)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 503"), data
        assert b"CAPACITY_EXCEEDED" in data and b"Retry-After: 1" in data
    finally:
        for h in held:
            h.close()
    time.sleep(0.2)
    assert relay.healthy()


def _bound_request(relay, source: str, token: str | None) -> bytes:
    v6 = ":" in source
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
    s.bind((source, 0))
    s.connect((source if v6 else "127.0.0.1", relay.port))
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    s.sendall(b"GET /api/ollama/info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + auth + b"\r\n")
    s.settimeout(5)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    return data


def test_failed_auth_limit_per_address(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--limit-loopback", "true", "--auth-failure-rate", "0.01",
                        "--auth-failure-burst", "3")
    good = mint_token("alice")
    for _ in range(3):
        assert _bound_request(relay, "127.0.0.2", "not-a-token").startswith(b"HTTP/1.1 401")
    # Over the limit: even a valid token from that address waits.
    data = _bound_request(relay, "127.0.0.2", good)
    assert data.startswith(b"HTTP/1.1 429") and b"AUTH_RATE_LIMITED" in data and b"Retry-After:" in data, data
    # Another address is unaffected.
    assert not _bound_request(relay, "127.0.0.3", good).startswith(b"HTTP/1.1 429")
    failures = wait_audit(relay, "auth_failure")
    assert failures and failures[0]["address"] == "127.0.0.2" and failures[0]["reason"] == "malformed"


# Documentation-range style ULA addresses on the loopback interface: two in one /64, one in
# another. Not loopback addresses to the relay, so its per-address limits apply to them.
V6_A1, V6_A2, V6_B = "fd00:7e7e:0:1::1", "fd00:7e7e:0:1::2", "fd00:7e7e:0:2::1"


@pytest.fixture
def ipv6_sources():
    added = []
    try:
        for address in (V6_A1, V6_A2, V6_B):
            r = subprocess.run(["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"],
                               capture_output=True, text=True)
            if r.returncode != 0 and "File exists" not in r.stderr:
                pytest.fail(f"cannot add {address} to lo (needs root and IPv6): {r.stderr.strip()}", pytrace=False)
            added.append(address)
        yield
    finally:
        for address in added:
            subprocess.run(["ip", "-6", "addr", "del", f"{address}/128", "dev", "lo"], capture_output=True)


@pytest.mark.parametrize("prefix", [None, "128"])
def test_ipv6_clients_share_a_bucket_per_64(tunnel_relay_factory, mint_token, ipv6_sources, prefix):
    """An IPv6 client cannot escape the failed-auth limit by picking another address from its
    /64 (the default), unless the operator keys by whole address."""
    extra = ("--limit-ipv6-prefix", prefix) if prefix else ()
    relay = quota_relay(tunnel_relay_factory, "--host", "::", "--auth-failure-rate", "0.01", "--auth-failure-burst", "3",
                        *extra)
    good = mint_token("alice")
    for _ in range(3):
        assert _bound_request(relay, V6_A1, "not-a-token").startswith(b"HTTP/1.1 401")
    sibling = _bound_request(relay, V6_A2, good)
    if prefix is None:
        assert sibling.startswith(b"HTTP/1.1 429") and b"AUTH_RATE_LIMITED" in sibling, sibling
    else:
        assert not sibling.startswith(b"HTTP/1.1 429"), sibling
    # Another /64 is another client.
    assert not _bound_request(relay, V6_B, good).startswith(b"HTTP/1.1 429")
    failures = wait_audit(relay, "auth_failure")
    assert failures and failures[0]["address"] == V6_A1, failures


def test_handshake_limit_per_address_4029(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--limit-loopback", "true", "--handshake-rate", "0.01",
                        "--handshake-burst", "3", "--max-bridges", "10")
    alice = mint_token("alice")

    async def main():
        bridges = []
        for i in range(3):
            b = bridge(relay, alice, name=f"b{i}")
            await b.__aenter__()
            bridges.append(b)
        code, reason = await refused_close(relay, alice)
        assert code == 4029 and reason, (code, reason)
        for b in bridges:
            await b.close()

    run(main())


def test_bridge_without_hello_is_cut_at_handshake_deadline(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory, "--bridge-handshake-timeout", "1")
    alice = mint_token("alice")

    async def main():
        b = bridge(relay, alice, send_hello=False, strict=False)
        await b.connect(wait_hello=False)
        t0 = time.monotonic()
        code, reason = await b.wait_closed(5)
        assert code == 1008 and "HELLO" in reason, (code, reason)
        assert 0.8 <= time.monotonic() - t0 <= 2.5
        await b.abort()

    run(main())


def test_slowloris_cut_at_header_deadline(tunnel_relay_factory):
    relay = quota_relay(tunnel_relay_factory, "--header-timeout", "1")
    s = socket.create_connection(("127.0.0.1", relay.port))
    t0 = time.monotonic()
    s.settimeout(0.3)
    data = b""
    try:
        for piece in [b"GET /api/ollama/x HTTP/1.1\r\n", b"Host: t\r\n"] + [b"X-A: b\r\n"] * 20:
            s.sendall(piece)
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - t0
    # Cut at the deadline however steadily the bytes trickle in (a 408 when it can still be sent).
    assert data.startswith(b"HTTP/1.1 408"), data
    assert 0.9 <= elapsed < 3, elapsed
    s.close()


# ============================================================================================
# Audit log
# ============================================================================================


def test_audit_log_events_and_no_user_data(tunnel_relay_factory, mint_token):
    relay = quota_relay(tunnel_relay_factory)
    alice = mint_token("alice")

    async def main():
        async with bridge(relay, alice):
            r = await http(relay, "POST", "/api/ollama/info", alice, b"secret-body-content",
                           headers={"X-Secret": "secret-header-value"})
            assert r.status == 200
        await asyncio.sleep(0.3)
        assert (await http(relay, "GET", "/api/ollama/info", "bad-token")).status == 401

    run(main())
    time.sleep(0.3)
    text = relay.stdout_path.read_text()
    assert "secret-body-content" not in text and "secret-header-value" not in text
    wait_audit(relay, "auth_failure")
    events = [e["event"] for e in audit_events(relay)]
    for want in ("session_created", "bridge_connected", "bridge_disconnected", "auth_failure"):
        assert want in events, events
    created = wait_audit(relay, "session_created")[0]
    assert created["sub"] == "alice" and len(created["session"]) == 64 and created["tier"] == "default"
    connected = wait_audit(relay, "bridge_connected")[0]
    assert connected["protocol"] == "tether.v1" and connected["address"].startswith("127.0.0.1:")
    for e in audit_events(relay):
        assert e["ts"].endswith("Z")
        if e["event"] != "session_created":
            assert "sub" not in e

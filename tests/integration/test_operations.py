"""Operations (issue 5): Prometheus metrics checked by promtool and scraped by a real Prometheus
server, metric values after a known workload, health and readiness, the admin API, reload
(SIGHUP and POST /admin/reload) and drain (SIGTERM) with a second relay taking over.

Real components only: the relay binary, tether-bridge, the Ollama stand-in, Python tether.v1
bridges (tunnel_client.py), curl, promtool and prometheus from Debian's packages."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from async_http import bearer, open_request, request
from tether_testlib import HOST, Reader, assert_json_error, free_port
from tunnel_client import TunnelBridge, TunnelStream
from tunnel_fixtures import make_jwt, session_id

pytestmark = pytest.mark.timeout(180)

ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def http(port: int, method: str, path: str, token: str | None = None, body: bytes | None = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", method=method, data=body)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def admin(relay, method: str, path: str, token: str | None = ADMIN_TOKEN, **kw):
    return http(relay.admin_port, method, path, token, **kw)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparseable sample line {line!r}"
        labels = frozenset()
        if m.group(2):
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Metrics:
    def __init__(self, text: str):
        self.text = text
        self.samples = parse_metrics(text)

    def get(self, name: str, **labels) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def __sub__(self, other: "Metrics") -> "Delta":
        return Delta(self, other)


class Delta:
    def __init__(self, after: Metrics, before: Metrics):
        self.after, self.before = after, before

    def get(self, name: str, **labels) -> float:
        return self.after.get(name, **labels) - self.before.get(name, **labels)


def scrape(relay) -> Metrics:
    status, headers, body = http(relay.admin_port, "GET", "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return Metrics(body.decode())


def promtool_check(text: str) -> None:
    res = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), \
        f"promtool check metrics failed (rc {res.returncode}):\n{res.stdout.decode()}\n{res.stderr.decode()}"


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError) as e:  # a server still starting
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def audit_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        if raw.strip():
            lines.append(json.loads(raw))
    return lines


async def echo_handler(stream: TunnelStream):
    """A Python bridge's local service: echoes the body with a fixed head."""
    body = await stream.read_all()
    await stream.send_response(200, [("content-type", "application/octet-stream"),
                                     ("content-length", str(len(body)))])
    await stream.send_data(body, end_stream=True)


def chat_body(tokens: int, rate: float) -> bytes:
    return json.dumps({"model": "standin", "messages": [{"role": "user", "content": "hi"}],
                       "options": {"num_predict": tokens, "standin_token_rate": rate}}).encode()


@pytest.fixture
def ops_relay_factory(tunnel_relay_factory, tmp_path):
    """A relay with the admin API enabled (token ADMIN_TOKEN) and an audit log file."""

    def start(*extra_args: str, **kw):
        audit = tmp_path / f"audit{start.count}.jsonl"
        start.count += 1
        relay = tunnel_relay_factory("--admin-token", ADMIN_TOKEN, "--audit-log", str(audit), *extra_args, **kw)
        relay.audit_path = audit
        return relay

    start.count = 0
    return start


# --------------------------------------------------------------------------------------------
# Health and readiness
# --------------------------------------------------------------------------------------------


def test_health_and_readiness_on_both_listeners(ops_relay_factory):
    relay = ops_relay_factory()
    for port in (relay.port, relay.admin_port):
        status, _, body = http(port, "GET", "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        status, _, body = http(port, "GET", "/readyz")
        assert status == 200 and json.loads(body) == {"status": "ready"}
    # The public listener does not serve metrics unless asked to (--metrics-on-main).
    status, _, body = http(relay.port, "GET", "/metrics")
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"
    status, _, body = http(relay.admin_port, "POST", "/readyz")
    assert status == 405


def test_metrics_on_the_main_listener_when_enabled(ops_relay_factory):
    relay = ops_relay_factory("--metrics-on-main")
    status, headers, body = http(relay.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    promtool_check(body.decode())
    assert "tether_sessions{state=\"active\"} 0" in body.decode()


def test_not_ready_until_the_jwks_url_answers(relay_factory, tmp_path):
    """A JWKS URL that does not answer yet: alive but not ready (every token would be refused);
    ready as soon as the keys arrive, and its tokens are accepted."""
    from test_jwks_rotation import SigningKey, jwks_bytes
    jwks_port = free_port()
    relay = relay_factory("--jwks-url", f"http://127.0.0.1:{jwks_port}/jwks.json",
                          "--jwks-refresh-interval", "1", "--jwks-min-refresh-interval", "1")
    for port in (relay.admin_port, relay.port):
        status, _, body = http(port, "GET", "/readyz")
        assert status == 503 and json.loads(body)["status"] == "starting", body
        assert http(port, "GET", "/healthz")[0] == 200
    assert scrape(relay).get("tether_ready") == 0
    key = SigningKey(tmp_path / "key.pem", "k1", "ES256")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "jwks.json").write_bytes(jwks_bytes(key))
    server = subprocess.Popen(["python3", "-m", "http.server", str(jwks_port), "--bind", "127.0.0.1",
                               "--directory", str(tmp_path / "www")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: http(relay.admin_port, "GET", "/readyz")[0] == 200, timeout=20, what="readyz 200")
        assert scrape(relay).get("tether_ready") == 1
        status, _, body = http(relay.port, "GET", "/api/proxy/status", key.token("alice"))
        assert status == 200 and json.loads(body)["status"] == "not-found", body
    finally:
        server.terminate()
        server.wait(5)


# --------------------------------------------------------------------------------------------
# Metrics: format and values
# --------------------------------------------------------------------------------------------


def test_scrapes_under_load_pass_promtool(ops_relay_factory, bridge_factory, standin_factory, mint_token):
    relay = ops_relay_factory()
    ollama = standin_factory(token_rate=200, tokens=20)
    alice = mint_token("alice")
    bridge_factory(relay, alice, str(ollama))

    async def load(stop: asyncio.Event, counts: list[int]):
        async def one(i: int):
            if i % 3 == 0:
                rs = await open_request(relay.port, "POST", "/api/ollama/api/chat",
                                        {**bearer(alice), "Content-Type": "application/json"}, chat_body(20, 200))
                async for _line, _t in rs.iter_lines():
                    pass
                rs.close()
            else:
                r = await request(relay.port, "GET", f"/api/ollama/bytes/{1000 + i}", bearer(alice))
                assert r.status == 200
            counts[0] += 1

        i = 0
        while not stop.is_set():
            await asyncio.gather(*(one(i + k) for k in range(16)))
            i += 16

    async def main():
        stop = asyncio.Event()
        counts = [0]
        task = asyncio.create_task(load(stop, counts))
        texts = []
        for _ in range(5):
            await asyncio.sleep(0.4)
            texts.append(await asyncio.to_thread(lambda: http(relay.admin_port, "GET", "/metrics")[2].decode()))
        stop.set()
        await task
        return texts, counts[0]

    texts, done = run(main())
    assert done > 50
    for text in texts:
        promtool_check(text)
    last = Metrics(texts[-1])
    assert last.get("tether_streams_opened_total") > 0
    assert last.get("tether_request_duration_seconds_count") > 0
    assert last.get("tether_time_to_first_byte_seconds_bucket", le="+Inf") > 0


def test_metric_values_match_a_known_workload(ops_relay_factory, tmp_path, jwt_secret):
    """Counts of requests, bytes, sessions, bridges and rejections equal what the workload did."""
    quota_file = tmp_path / "quotas.json"
    quota_file.write_text(json.dumps({"default": {"requests_per_second": 1000, "request_burst": 1000,
                                                  "max_streams": 64, "max_bridges": 4,
                                                  "bandwidth_bytes_per_second": 0},
                                      "tiers": {"tiny": {"requests_per_second": 0.001, "request_burst": 2}}}))
    relay = ops_relay_factory("--quota-file", str(quota_file), quotas=True)
    before = scrape(relay)
    alice = make_jwt(jwt_secret, "alice")
    carol = make_jwt(jwt_secret, "carol", tier="tiny")
    bob = make_jwt(jwt_secret, "bob")
    forged = make_jwt("another-secret-of-32-bytes-------", "mallory")

    async def main():
        async with TunnelBridge(f"ws://{HOST}:{relay.port}/ws/tunnel", token=alice, handler=echo_handler) as _a, \
                TunnelBridge(f"ws://{HOST}:{relay.port}/ws/tunnel", token=carol, handler=echo_handler) as _c:
            for i in range(20):
                r = await request(relay.port, "POST", "/api/ollama/echo", bearer(alice), b"x" * 1000)
                assert r.status == 200 and len(r.body) == 1000, r.describe()
            for i in range(5):
                r = await request(relay.port, "POST", "/api/ollama/echo", bearer(alice), b"y" * 3000)
                assert r.status == 200 and len(r.body) == 3000, r.describe()
            statuses = []
            for i in range(5):
                r = await request(relay.port, "POST", "/api/ollama/echo", bearer(carol), b"z" * 100)
                statuses.append(r.status)
            assert statuses == [200, 200, 429, 429, 429], statuses
            for _ in range(3):
                r = await request(relay.port, "GET", "/api/ollama/api/tags", bearer(forged))
                assert r.status == 401 and r.error_code() == "AUTH_INVALID"
            for _ in range(2):
                r = await request(relay.port, "GET", "/api/ollama/api/tags")
                assert r.status == 401 and r.error_code() == "AUTH_REQUIRED"
            for _ in range(2):
                r = await request(relay.port, "GET", "/api/ollama/api/tags", bearer(bob))
                assert r.status == 503 and r.error_code() == "TUNNEL_NOT_AVAILABLE"
            during = await asyncio.to_thread(scrape, relay)
            assert during.get("tether_bridges_connected", protocol="tether.v1") == 2
            assert during.get("tether_sessions", state="active") == 2
        return during

    during = run(main())
    d = during - before
    assert d.get("tether_requests_total", code="200") == 27
    assert d.get("tether_requests_total", code="101") == 2  # the two bridge upgrades
    assert d.get("tether_requests_total", code="429") == 3
    assert d.get("tether_requests_total", code="401") == 5
    assert d.get("tether_requests_total", code="503") == 2
    assert d.get("tether_tunnel_bytes_total", direction="up") == 20 * 1000 + 5 * 3000 + 2 * 100
    assert d.get("tether_tunnel_bytes_total", direction="down") == 20 * 1000 + 5 * 3000 + 2 * 100
    assert d.get("tether_streams_opened_total") == 27
    assert d.get("tether_request_duration_seconds_count") == 27
    assert d.get("tether_time_to_first_byte_seconds_count") == 27
    assert d.get("tether_quota_rejections_total", quota="rate") == 3
    assert d.get("tether_auth_failures_total", reason="bad_signature") == 3
    assert d.get("tether_auth_failures_total", reason="missing") == 2
    assert d.get("tether_sessions_created_total") == 2
    assert d.get("tether_bridge_connects_total", protocol="tether.v1") == 2
    assert d.get("tether_streams_failed_total") == 2  # bob's 503s

    after = scrape(relay)
    assert after.get("tether_bridges_connected", protocol="tether.v1") == 0
    assert (after - before).get("tether_bridge_disconnects_total", reason="closed_by_bridge") == 2
    assert after.get("tether_sessions", state="active") == 2  # sessions outlive their bridges until idle
    assert after.get("process_resident_memory_bytes") > 1_000_000
    assert after.get("process_open_fds") > 5
    assert after.get("process_start_time_seconds") == pytest.approx(time.time(), abs=120)
    assert after.get("process_cpu_seconds_total") > 0
    promtool_check(after.text)


REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "tether-rules.yml"

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - tether-rules.yml
scrape_configs:
  - job_name: tether
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def prom_query(port: int, query: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def test_a_real_prometheus_server_scrapes_the_relay(ops_relay_factory, tmp_path, jwt_secret):
    assert shutil.which("prometheus"), "prometheus (Debian package) is required"
    relay = ops_relay_factory()
    alice = make_jwt(jwt_secret, "alice")
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    (prom_dir / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(port=relay.admin_port))
    shutil.copy(RULES, prom_dir / "tether-rules.yml")
    prom_port = free_port()
    log = open(prom_dir / "prometheus.log", "wb")
    prom = subprocess.Popen(["prometheus", f"--config.file={prom_dir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=log, cwd=prom_dir)
    try:
        wait_for(lambda: http(prom_port, "GET", "/-/ready")[0] == 200, timeout=30, what="prometheus ready")

        async def traffic():
            async with TunnelBridge(f"ws://{HOST}:{relay.port}/ws/tunnel", token=alice, handler=echo_handler):
                for _ in range(7):
                    r = await request(relay.port, "POST", "/api/ollama/echo", bearer(alice), b"p" * 1234)
                    assert r.status == 200

        run(traffic())

        def scraped_up():
            result = prom_query(prom_port, 'up{job="tether"}')
            return result and result[0]["value"][1] == "1"

        wait_for(scraped_up, timeout=30, interval=0.5, what="up == 1 in Prometheus")

        def bytes_seen():
            result = prom_query(prom_port, 'tether_tunnel_bytes_total{job="tether",direction="down"}')
            return result and float(result[0]["value"][1]) == 7 * 1234

        wait_for(bytes_seen, timeout=30, interval=0.5, what="tether_tunnel_bytes_total == 7 x 1234 in Prometheus")
        result = prom_query(prom_port, 'tether_streams_opened_total{job="tether"}')
        assert float(result[0]["value"][1]) == 7

        # The deployed alerting rules evaluate against real series without errors, and none fires.
        def rules_evaluated():
            with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as r:
                groups = json.loads(r.read())["data"]["groups"]
            rules = [rule for g in groups for rule in g["rules"]]
            return rules if rules and all(rule.get("lastEvaluation", "").startswith("20") and
                                          rule["health"] == "ok" for rule in rules) else None

        rules = wait_for(rules_evaluated, timeout=30, interval=0.5, what="alerting rules evaluated")
        assert len(rules) == 7
        assert all(rule["state"] == "inactive" for rule in rules), [(r["name"], r["state"]) for r in rules]
    finally:
        prom.terminate()
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
        log.close()


def test_deploy_prometheus_files_are_valid():
    for args in (["check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(RULES)]):
        res = subprocess.run(["promtool", *args], capture_output=True, timeout=30)
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


# --------------------------------------------------------------------------------------------
# Admin API
# --------------------------------------------------------------------------------------------


def test_admin_api_requires_the_token_and_counts_and_audits_refusals(ops_relay_factory, relay_factory):
    relay = ops_relay_factory()
    status, headers, body = admin(relay, "GET", "/admin/sessions", token=None)
    assert status == 401 and json.loads(body)["error"]["code"] == "ADMIN_AUTH_REQUIRED"
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, body = admin(relay, "GET", "/admin/sessions", token="wrong-token")
    assert status == 401 and json.loads(body)["error"]["code"] == "ADMIN_AUTH_INVALID"
    status, _, body = admin(relay, "POST", "/admin/drain", token=ADMIN_TOKEN[:-1])
    assert status == 401
    status, _, body = admin(relay, "GET", "/admin/sessions")
    assert status == 200 and json.loads(body)["total"] == 0
    m = scrape(relay)
    assert m.get("tether_admin_auth_failures_total") == 3
    assert m.get("tether_admin_requests_total", code="401") == 3
    assert relay.alive(), "a refused drain must not drain"
    refusals = wait_for(lambda: [l for l in audit_lines(relay.audit_path) if l["event"] == "admin_auth_failure"]
                        if len([l for l in audit_lines(relay.audit_path) if l["event"] == "admin_auth_failure"]) == 3
                        else None, what="three admin_auth_failure audit lines")
    assert {r["reason"] for r in refusals} == {"ADMIN_AUTH_REQUIRED", "ADMIN_AUTH_INVALID"}
    assert all(ADMIN_TOKEN not in json.dumps(r) for r in audit_lines(relay.audit_path))
    # Without a configured token the admin API is off for everyone.
    bare = relay_factory()
    status, _, body = http(bare.admin_port, "GET", "/admin/sessions", ADMIN_TOKEN)
    assert status == 401 and json.loads(body)["error"]["code"] == "ADMIN_DISABLED"


def test_admin_sessions_are_paged_and_shown_by_id(ops_relay_factory, jwt_secret):
    relay = ops_relay_factory()
    users = [f"user{i}" for i in range(7)]
    for u in users:
        status, _, body = http(relay.port, "POST", "/api/proxy/start", make_jwt(jwt_secret, u))
        assert status == 200, body
    expected = sorted(session_id(u) for u in users)
    seen, after, pages = [], None, 0
    while True:
        q = "/admin/sessions?limit=3" + (f"&after={after}" if after else "")
        status, _, body = admin(relay, "GET", q)
        assert status == 200, body
        doc = json.loads(body)
        assert doc["total"] == 7
        seen += [s["id"] for s in doc["sessions"]]
        pages += 1
        if doc["next"] is None:
            break
        after = doc["next"]
    assert seen == expected and pages == 3
    status, _, body = admin(relay, "GET", f"/admin/sessions/{session_id('user3')}")
    assert status == 200, body
    one = json.loads(body)
    assert one["id"] == session_id("user3") and one["state"] == "active" and one["bridges"] == 0
    assert one["tier"] == "default" and one["bridge_list"] == [] and "user3" not in body.decode()
    assert admin(relay, "GET", "/admin/sessions/" + "0" * 64)[0] == 404
    assert admin(relay, "GET", "/admin/sessions/not-an-id")[0] == 400
    assert admin(relay, "GET", "/admin/sessions?limit=0")[0] == 400
    assert admin(relay, "GET", "/admin/sessions?after=zzz")[0] == 400
    assert admin(relay, "PUT", "/admin/sessions")[0] == 405


def test_admin_kick_disconnects_exactly_that_user(ops_relay_factory, jwt_secret):
    relay = ops_relay_factory()
    alice, bob = make_jwt(jwt_secret, "alice"), make_jwt(jwt_secret, "bob")

    async def slow_handler(stream: TunnelStream):
        await stream.read_all()
        await stream.send_response(200, [("content-type", "text/plain")])
        for i in range(30):
            await stream.send_data(b"tick %d\n" % i)
            await asyncio.sleep(0.1)
        await stream.send_data(b"", end_stream=True)

    async def main():
        url = f"ws://{HOST}:{relay.port}/ws/tunnel"
        async with TunnelBridge(url, token=alice, handler=slow_handler) as a, \
                TunnelBridge(url, token=bob, handler=slow_handler) as b:
            ra = await open_request(relay.port, "GET", "/api/ollama/slow", bearer(alice))
            rb = await open_request(relay.port, "GET", "/api/ollama/slow", bearer(bob))
            assert ra.status == 200 and rb.status == 200
            await asyncio.sleep(0.5)
            status, _, body = await asyncio.to_thread(admin, relay, "DELETE", f"/admin/sessions/{session_id('alice')}")
            assert status == 200, body
            doc = json.loads(body)
            assert doc == {"removed": session_id("alice"), "bridges_closed": 1, "streams_reset": 1}
            await asyncio.wait_for(a.closed.wait(), 10)
            assert a.close_code == 4010, (a.close_code, a.close_reason)
            # Alice's response is cut; Bob's runs to its end on his untouched bridge.
            with pytest.raises(Exception):
                await asyncio.wait_for(ra.read_all(), 10)
            body_b = await asyncio.wait_for(rb.read_all(), 20)
            assert body_b.count(b"tick") == 30
            assert not b.closed.is_set()
            r = await request(relay.port, "POST", "/api/ollama/echo", bearer(bob), b"still here")
            assert r.status == 200
            r = await request(relay.port, "GET", "/api/ollama/x", bearer(alice))
            assert r.status == 503 and r.error_code() == "TUNNEL_NOT_AVAILABLE"

    run(main())
    status, _, body = admin(relay, "GET", f"/admin/sessions/{session_id('alice')}")
    assert status == 404
    assert admin(relay, "GET", f"/admin/sessions/{session_id('bob')}")[0] == 200
    m = scrape(relay)
    assert m.get("tether_sessions_removed_total", reason="kicked") == 1
    assert m.get("tether_bridge_disconnects_total", reason="kicked") == 1
    assert admin(relay, "DELETE", f"/admin/sessions/{session_id('alice')}")[0] == 404
    kicks = [l for l in audit_lines(relay.audit_path) if l["event"] == "admin_session_removed"]
    assert len(kicks) == 1 and kicks[0]["session"] == session_id("alice")


# --------------------------------------------------------------------------------------------
# Reload
# --------------------------------------------------------------------------------------------


def test_reload_applies_a_quota_change_to_new_work_and_refuses_a_broken_file(ops_relay_factory, tmp_path, jwt_secret):
    quota_file = tmp_path / "quotas.json"
    quota_file.write_text(json.dumps({"default": {"max_streams": 1, "requests_per_second": 1000,
                                                  "request_burst": 1000}}))
    relay = ops_relay_factory("--quota-file", str(quota_file), quotas=True)
    alice = make_jwt(jwt_secret, "alice")

    async def slow_handler(stream: TunnelStream):
        await stream.read_all()
        await stream.send_response(200, [("content-type", "text/plain")])
        for i in range(20):
            await stream.send_data(b"tick %d\n" % i)
            await asyncio.sleep(0.1)
        await stream.send_data(b"", end_stream=True)

    async def main():
        async with TunnelBridge(f"ws://{HOST}:{relay.port}/ws/tunnel", token=alice, handler=slow_handler) as bridge:
            first = await open_request(relay.port, "GET", "/api/ollama/slow", bearer(alice))
            assert first.status == 200
            r = await request(relay.port, "GET", "/api/ollama/slow", bearer(alice))
            assert r.status == 429 and r.error_code() == "TOO_MANY_STREAMS"
            # Raise the limit and reload through the admin API while the first stream flows.
            quota_file.write_text(json.dumps({"default": {"max_streams": 2, "requests_per_second": 1000,
                                                          "request_burst": 1000}}))
            status, _, body = await asyncio.to_thread(admin, relay, "POST", "/admin/reload")
            assert status == 200, body
            assert "quotas" in json.loads(body)["changes"]
            second = await open_request(relay.port, "GET", "/api/ollama/slow", bearer(alice))
            assert second.status == 200, "the new limit applies to new requests"
            # A broken file is refused; the limit of 2 stays in force.
            quota_file.write_text('{"default": {"max_streams": "many"}}')
            status, _, body = await asyncio.to_thread(admin, relay, "POST", "/admin/reload")
            assert status == 422 and json.loads(body)["error"]["code"] == "CONFIG_INVALID", body
            assert "max_streams" in json.loads(body)["error"]["message"]
            r = await request(relay.port, "GET", "/api/ollama/slow", bearer(alice))
            assert r.status == 429, "max_streams 2 is still in force"
            # The stream that started before both reloads runs to its end on the same tunnel.
            assert (await asyncio.wait_for(first.read_all(), 20)).count(b"tick") == 20
            assert (await asyncio.wait_for(second.read_all(), 20)).count(b"tick") == 20
            assert not bridge.closed.is_set()

    run(main())
    m = scrape(relay)
    assert m.get("tether_config_reloads_total", result="success") == 1
    assert m.get("tether_config_reloads_total", result="failure") == 1
    assert m.get("tether_config_last_reload_successful") == 0
    assert m.get("tether_bridge_connects_total", protocol="tether.v1") == 1
    assert "configuration reload refused" in relay.stderr_text()


def test_sighup_swaps_the_certificate_for_new_connections_only(ops_relay_factory, certs):
    import ssl
    relay = ops_relay_factory(tls=certs.a)
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    old = ctx.wrap_socket(socket.create_connection((HOST, relay.tls_port), timeout=10), server_hostname="localhost")
    assert old.getpeercert(binary_form=True) == certs.a.leaf_der()
    relay.install_cert(certs.b)
    relay.send_signal(signal.SIGHUP)

    def new_cert():
        with ctx.wrap_socket(socket.create_connection((HOST, relay.tls_port), timeout=10),
                             server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True) == certs.b.leaf_der()

    wait_for(new_cert, timeout=10, what="the new certificate on new connections")
    # The connection made before the reload still works, with its old certificate.
    old.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert old.recv(4096).startswith(b"HTTP/1.1 200")
    old.close()
    m = wait_for(lambda: (lambda m: m if m.get("tether_config_reloads_total", result="success") == 1 else None)(scrape(relay)),
                 what="the reload counted")
    assert m.get("tether_config_last_reload_successful") == 1
    # A broken certificate file is refused and the previous one stays in force.
    relay.install_raw(b"not a certificate", certs.b.key.read_bytes())
    relay.send_signal(signal.SIGHUP)
    wait_for(lambda: scrape(relay).get("tether_config_reloads_total", result="failure") == 1, what="refusal counted")
    assert new_cert()


# --------------------------------------------------------------------------------------------
# Drain
# --------------------------------------------------------------------------------------------


def test_sigterm_drains_streams_refuses_new_work_and_bridge_moves_to_a_second_relay(
        ops_relay_factory, bridge_factory, standin_factory, mint_token):
    """Relay A and relay B share one port (SO_REUSEPORT), as in a restart on the same host. A
    drains: its stream in flight completes, new requests are refused, its bridge gets GOAWAY and
    reconnects, landing on B (A no longer accepts), and A exits 0 within the deadline."""
    ollama = standin_factory(token_rate=10, tokens=30)
    alice = mint_token("alice")
    a = ops_relay_factory("--drain-timeout", "20", "--log-module-level", "tether.tunnel=debug")
    bridge = bridge_factory(a, alice, str(ollama))
    tags = f"GET /api/ollama/api/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\r\n".encode()

    async def main():
        # Everything that must be on A is opened before B shares the port.
        keep = socket.create_connection((HOST, a.port), timeout=10)
        reader = Reader(keep, 10)
        keep.sendall(tags)
        first = reader.read_response()
        assert first.status == 200, first.describe()
        stream = await open_request(a.port, "POST", "/api/ollama/api/chat",
                                    {**bearer(alice), "Content-Type": "application/json"}, chat_body(30, 10))
        assert stream.status == 200
        b = await asyncio.to_thread(ops_relay_factory, port=a.port)
        assert scrape(b).get("tether_bridges_connected", protocol="tether.v1") == 0
        t0 = time.monotonic()
        a.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, _, body = await asyncio.to_thread(http, a.admin_port, "GET", "/readyz")
        assert status == 503 and json.loads(body)["status"] == "draining"
        keep.sendall(tags)
        refused = reader.read_response()
        assert_json_error(refused, 503, "RELAY_DRAINING")
        assert (refused.header("connection") or "").lower() == "close" and refused.header("retry-after") == "1"
        reader.wait_closed()
        keep.close()
        lines = []
        async for line, _t in stream.iter_lines():
            lines.append(json.loads(line))
        assert len(lines) == 31 and lines[-1]["done"] is True, "the stream in flight completed"
        # The bridge moved to B: new requests on new connections are served there.
        await asyncio.to_thread(wait_for, lambda: scrape(b).get("tether_bridges_connected", protocol="tether.v1") == 1,
                                20, 0.2, "the bridge on relay B")
        r = await request(a.port, "GET", "/api/ollama/api/tags", bearer(alice))
        assert r.status == 200, r.describe()
        rc = await asyncio.to_thread(a.proc.wait, 25)
        elapsed = time.monotonic() - t0
        return b, rc, elapsed

    b, rc, elapsed = run(main())
    a.expected_exit = True
    assert rc == 0 and elapsed < 20, (rc, elapsed)
    assert "goaway" in bridge.stderr_text().lower(), bridge.stderr_tail()
    mb = scrape(b)
    assert mb.get("tether_streams_opened_total") >= 1
    assert mb.get("tether_bridge_connects_total", protocol="tether.v1") == 1


def test_drain_deadline_cuts_what_is_left_and_exits_zero(ops_relay_factory, jwt_secret):
    relay = ops_relay_factory("--drain-timeout", "2")
    alice = make_jwt(jwt_secret, "alice")

    async def endless(stream: TunnelStream):
        await stream.read_all()
        await stream.send_response(200, [("content-type", "text/plain")])
        while True:
            await stream.send_data(b"tick\n")
            await asyncio.sleep(0.1)

    async def main():
        async with TunnelBridge(f"ws://{HOST}:{relay.port}/ws/tunnel", token=alice, handler=endless) as bridge:
            rs = await open_request(relay.port, "GET", "/api/ollama/forever", bearer(alice))
            assert rs.status == 200
            t0 = time.monotonic()
            relay.send_signal(signal.SIGTERM)
            await asyncio.wait_for(bridge.closed.wait(), 15)
            rc = await asyncio.to_thread(relay.proc.wait, 15)
            return rc, time.monotonic() - t0, bridge.goaway_received if hasattr(bridge, "goaway_received") else None

    rc, elapsed, _ = run(main())
    relay.expected_exit = True
    assert rc == 0 and 1.5 < elapsed < 8, (rc, elapsed)


def test_reload_of_the_configuration_file_changes_log_levels_and_limits_and_refuses_a_broken_file(
        relay_factory, tmp_path, jwt_secret):
    """The YAML file is read again on SIGHUP / POST /admin/reload: a per-module log level and a
    limit change live; a file with an unknown key is refused with the key named."""
    cfg = tmp_path / "relay.yaml"
    base = f"auth: {{jwt_secret: {jwt_secret}}}\nadmin: {{token: {ADMIN_TOKEN}}}\n"
    cfg.write_text(base + "limits: {max_body_size: 1KiB}\nlog: {level: info}\n")
    relay = relay_factory("--config", str(cfg))
    assert http(relay.port, "POST", "/echo", body=b"x" * 2000)[0] == 413
    assert "authentication failed" not in relay.stderr_text()
    cfg.write_text(base + "limits: {max_body_size: 4KiB}\nlog: {level: info, levels: {tether.auth: debug}}\n")
    status, _, body = admin(relay, "POST", "/admin/reload")
    assert status == 200, body
    changes = json.loads(body)["changes"]
    assert "log" in changes and "limits.max_body_size" in changes, changes
    assert http(relay.port, "POST", "/echo", body=b"x" * 2000)[0] == 200
    assert http(relay.port, "GET", "/api/proxy/status", token="not-a-token")[0] == 401
    wait_for(lambda: "authentication failed" in relay.stderr_text(), what="tether.auth debug line after the reload")
    assert "tether.http" not in relay.stderr_text(), "other modules stay at info"
    # A typo in the file: refused, named, and the running configuration (4 KiB) stays.
    cfg.write_text(base + "limits: {max_body_sise: 1KiB}\n")
    status, _, body = admin(relay, "POST", "/admin/reload")
    assert status == 422, body
    message = json.loads(body)["error"]["message"]
    assert "limits.max_body_sise" in message, message
    assert http(relay.port, "POST", "/echo", body=b"x" * 2000)[0] == 200
    relay.send_signal(signal.SIGHUP)
    wait_for(lambda: scrape(relay).get("tether_config_reloads_total", result="failure") == 2, what="SIGHUP refusal counted")
    m = scrape(relay)
    assert m.get("tether_config_reloads_total", result="success") == 1
    assert m.get("tether_config_last_reload_successful") == 0

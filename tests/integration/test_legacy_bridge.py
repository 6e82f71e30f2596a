"""The legacy JSON bridge protocol of the CloudToLocalLLM desktop app (/ws/bridge, PROTOCOL.md §10),
driven by legacy_client.LegacyBridge and real HTTP clients."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import datetime, timezone

import pytest

from async_http import bearer, request
from legacy_client import LegacyBridge, LegacyClosed, LegacyError
from tunnel_client import TunnelBridge
from tunnel_fixtures import legacy_url, tunnel_url

pytestmark = pytest.mark.timeout(60)

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def run(coro, timeout: float = 50):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def is_uuid(s) -> bool:
    try:
        uuid.UUID(str(s))
        return True
    except ValueError:
        return False


async def http(relay, method, path, token=None, body=None, headers=None, **kw):
    h = dict(headers or {})
    if token is not None:
        h.update(bearer(token))
    return await request(relay.port, method, path, h, body, **kw)


def assert_error(r, status: int, code: str) -> None:
    assert r.status == status, f"expected {status} {code}, got {r.describe()}"
    assert r.media_type == "application/json", r.describe()
    err = r.json().get("error")
    assert isinstance(err, dict) and err.get("code") == code and err.get("message"), r.describe()


async def echo_handler(req):
    doc = {"method": req.method, "path": req.path, "headers": req.headers, "body": req.body}
    return 200, {"content-type": "application/json", "x-bridge": "legacy"}, json.dumps(doc)


def legacy(relay, token, handler=echo_handler, **kw) -> LegacyBridge:
    return LegacyBridge(legacy_url(relay), token, handler=handler, **kw)


async def wait_bridges(relay, token, n, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        r = await http(relay, "GET", "/api/ollama/bridge/status", token)
        assert r.status == 200, r.describe()
        if r.json().get("bridges") == n:
            return
        assert time.monotonic() < deadline, f"status {r.json()}, wanted {n} bridges"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["query", "bearer", "subprotocol"])
def test_auth_message_shape(tunnel_relay, mint_token, placement):
    async def main():
        async with legacy(tunnel_relay, mint_token("alice"), token_placement=placement) as b:
            a = b.auth
            assert a["type"] == "auth"
            assert is_uuid(a["id"]), a
            assert a["data"]["success"] is True
            assert is_uuid(a["data"]["bridgeId"]), a
            assert ISO_MS.match(a["timestamp"]), a["timestamp"]
            ts = datetime.strptime(a["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            assert abs(ts.timestamp() - time.time()) < 5
            b.assert_clean()

    run(main())


def test_bridge_ids_are_unique(tunnel_relay, mint_token):
    async def main():
        async with legacy(tunnel_relay, mint_token("alice")) as b1, legacy(tunnel_relay, mint_token("alice")) as b2:
            assert b1.auth["data"]["bridgeId"] != b2.auth["data"]["bridgeId"]
            await wait_bridges(tunnel_relay, mint_token("alice"), 2)

    run(main())


@pytest.mark.parametrize("case", ["missing", "expired", "bad-signature", "alg-none", "garbage"])
def test_bad_token_closes_4001(tunnel_relay, mint_token, case):
    tok = {"missing": None, "expired": mint_token("alice", ttl=-60),
           "bad-signature": mint_token("alice", secret="wrong"),
           "alg-none": mint_token("alice", alg="none"), "garbage": "x.y.z"}[case]

    async def main():
        with pytest.raises(LegacyClosed) as ei:
            async with legacy(tunnel_relay, tok):
                pass
        assert ei.value.code == 4001, ei.value

    run(main())


@pytest.mark.parametrize("prefix", ["/api/ollama", "/ollama"])
def test_request_response_round_trip(tunnel_relay, mint_token, prefix):
    tok = mint_token("alice")
    body = json.dumps({"model": "llama3", "messages": [{"role": "user", "content": "héllo ✓ \"quoted\"\n"}]})

    async def main():
        async with legacy(tunnel_relay, tok) as b:
            r = await http(tunnel_relay, "POST", f"{prefix}/api/chat", tok, body.encode(),
                           headers={"Content-Type": "application/json", "X-Custom": "v"})
            assert r.status == 200 and r.header("x-bridge") == "legacy", r.describe()
            seen = r.json()
            assert seen["method"] == "POST"
            assert seen["path"] == "/api/chat"
            assert seen["body"] == body
            hdrs = {k.lower(): v for k, v in seen["headers"].items()}
            assert hdrs.get("content-type") == "application/json" and hdrs.get("x-custom") == "v"
            assert "authorization" not in hdrs
            req = b.requests[-1]
            assert req.raw["type"] == "request" and is_uuid(req.id)
            b.assert_clean()

    run(main())


def test_query_kept_and_token_removed(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        async with legacy(tunnel_relay, tok) as b:
            r = await http(tunnel_relay, "GET", f"/api/ollama/api/tags?x=1&token={tok}")
            assert r.status == 200, r.describe()
            path = r.json()["path"]
            assert path.startswith("/api/tags") and "token" not in path and tok not in path, path
            assert b.requests[-1].method == "GET"
            assert b.requests[-1].body in (None, "")

    run(main())


def test_response_status_headers_and_body(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def handler(req):
        return 201, {"content-type": "text/plain; charset=utf-8", "x-thing": "1"}, "créé ✓"

    async def main():
        async with legacy(tunnel_relay, tok, handler):
            r = await http(tunnel_relay, "GET", "/ollama/anything", tok)
            assert r.status == 201 and r.header("x-thing") == "1"
            assert r.body.decode("utf-8") == "créé ✓"
            assert r.media_type == "text/plain"

    run(main())


def test_concurrent_requests_matched_by_id(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def handler(req):
        n = int(req.path.rsplit("/", 1)[1])
        await asyncio.sleep((50 - n) * 0.005)  # answer out of order
        return 200, {"content-type": "text/plain"}, f"answer {n}"

    async def main():
        async with legacy(tunnel_relay, tok, handler) as b:
            rs = await asyncio.gather(*[http(tunnel_relay, "GET", f"/api/ollama/n/{i}", tok) for i in range(50)])
            for i, r in enumerate(rs):
                assert r.status == 200 and r.body == f"answer {i}".encode(), r.describe()
            assert len({q.id for q in b.requests}) == 50

    run(main())


def test_error_answer_is_502_local_service_error(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def handler(req):
        raise LegacyError("connection refused by ollama")

    async def main():
        async with legacy(tunnel_relay, tok, handler):
            assert_error(await http(tunnel_relay, "GET", "/api/ollama/api/tags", tok), 502, "LOCAL_SERVICE_ERROR")

    run(main())


def test_request_body_over_max_body_size_is_413(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--max-body-size", "1000")
    tok = mint_token("alice")

    async def main():
        async with legacy(relay, tok) as b:
            assert_error(await http(relay, "POST", "/api/ollama/api/chat", tok, b"x" * 1001), 413, "PAYLOAD_TOO_LARGE")
            r = await http(relay, "POST", "/api/ollama/api/chat", tok, b"x" * 1000)
            assert r.status == 200 and r.json()["body"] == "x" * 1000
            assert len(b.requests) == 1

    run(main())


def test_bridge_disconnect_before_response_is_502(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        b = await legacy(tunnel_relay, tok, handler=None).__aenter__()
        client = asyncio.create_task(http(tunnel_relay, "GET", "/api/ollama/api/tags", tok))
        await b.next_request()
        t0 = time.monotonic()
        await b.abort()
        assert_error(await client, 502, "BRIDGE_DISCONNECTED")
        assert time.monotonic() - t0 < 1.0

    run(main())


def test_no_bridge_is_503_and_users_isolated(tunnel_relay, mint_token):
    alice, bob = mint_token("alice"), mint_token("bob")

    async def main():
        async with legacy(tunnel_relay, alice) as b:
            assert_error(await http(tunnel_relay, "GET", "/api/ollama/api/tags", bob), 503, "TUNNEL_NOT_AVAILABLE")
            assert b.requests == []
            assert (await http(tunnel_relay, "GET", "/api/ollama/api/tags", alice)).status == 200

    run(main())


def test_relay_pings_and_bridge_pongs(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--legacy-ping-interval", "0.2")
    tok = mint_token("alice")

    async def main():
        async with legacy(relay, tok) as b:
            await asyncio.sleep(1.5)
            assert len(b.pings) >= 4, b.pings
            for p in b.pings:
                assert p["type"] == "ping" and is_uuid(p["id"]) and ISO_MS.match(p["timestamp"]), p
            assert not b.closed.is_set(), "relay dropped a bridge that answers pings"
            assert (await http(relay, "GET", "/api/ollama/api/tags", tok)).status == 200

    run(main())


def test_missed_pongs_drop_the_bridge(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--legacy-ping-interval", "0.2")
    tok = mint_token("alice")

    async def main():
        b = await legacy(relay, tok, answer_pings=False).__aenter__()
        t0 = time.monotonic()
        await b.wait_closed(timeout=3.0)
        assert time.monotonic() - t0 < 0.4 * 2 + 1.0
        assert len(b.pings) >= 1
        await wait_bridges(relay, tok, 0, timeout=1.0)
        assert_error(await http(relay, "GET", "/api/ollama/api/tags", tok), 503, "TUNNEL_NOT_AVAILABLE")
        await b.close()

    run(main())


def test_stop_answering_pings_later_drops_the_bridge(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--legacy-ping-interval", "0.2")
    tok = mint_token("alice")

    async def main():
        b = await legacy(relay, tok).__aenter__()
        await asyncio.sleep(1.0)
        assert not b.closed.is_set()
        b.stop_answering_pings()
        await b.wait_closed(timeout=3.0)
        await b.close()

    run(main())


def test_any_message_counts_as_alive(tunnel_relay_factory, mint_token):
    """§10: a bridge that has not answered pong 'or sent anything' is dropped: its own pings keep it."""
    relay = tunnel_relay_factory("--legacy-ping-interval", "0.2")
    tok = mint_token("alice")

    async def main():
        async with legacy(relay, tok, answer_pings=False) as b:
            for _ in range(10):
                pong = await b.ping(timeout=2)
                assert pong["type"] == "pong"
                await asyncio.sleep(0.15)
            assert not b.closed.is_set()

    run(main())


def test_bridge_ping_gets_pong(tunnel_relay, mint_token):
    async def main():
        async with legacy(tunnel_relay, mint_token("alice")) as b:
            pong = await b.ping(timeout=3)
            assert pong["type"] == "pong"

    run(main())


def test_legacy_and_tunnel_bridges_share_a_session(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def tunnel_handler(s):
        await s.read_all()
        await s.respond(200, [("x-bridge", "tunnel"), ("content-type", "text/plain")], b"from tunnel")

    async def main():
        async with legacy(tunnel_relay, tok) as lb, \
                TunnelBridge(tunnel_url(tunnel_relay), tok, handler=tunnel_handler) as tb:
            await wait_bridges(tunnel_relay, tok, 2)
            served = []
            for i in range(12):
                r = await http(tunnel_relay, "GET", f"/api/ollama/api/tags?i={i}", tok)
                assert r.status == 200, r.describe()
                served.append(r.header("x-bridge"))
            assert served.count("legacy") >= 3 and served.count("tunnel") >= 3, served
            lb.assert_clean()
            tb.assert_clean()

    run(main())

"""tether-relay's tunnel endpoint (/ws/tunnel, tether.v1) and the HTTP API in front of it, driven
by the Python bridge in tunnel_client.py (written from docs/PROTOCOL.md alone) and real HTTP
clients. Every expectation below cites the section of PROTOCOL.md it comes from."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from urllib.parse import parse_qsl

import pytest

from async_http import IncompleteResponse, bearer, open_request, request
from tether_testlib import assert_json_error, ws_handshake
from tunnel_client import (
    CLOSE_AUTH, CLOSE_TOO_BIG, CLOSE_TUNNEL_PROTOCOL, CLOSE_UNSUPPORTED_DATA, CLOSE_VERSION, HEADER_SIZE, MAX_WINDOW,
    ErrorCode, FrameType, Setting, StreamReset, TunnelBridge, TunnelClosed, data_frame, encode_frame, ping_frame,
    response_frame, window_update_frame,
)
from tunnel_fixtures import KiB, MiB, make_jwt, tunnel_url

pytestmark = pytest.mark.timeout(60)

CURL = ["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", "60"]
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade"}


def run(coro, timeout: float = 50):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


def make_handler(name: str = "bridge", log: list | None = None):
    """The test bridge's local service:
    /info[/...]          JSON: bridge name, method, target, headers, body length and sha256
    /echo                streams the request body back
    /blob/<n>/<seed>     n deterministic bytes with Content-Length
    /chunks/<k>/<ms>     k chunks "chunk i\\n", ms apart, no Content-Length
    /status/<code>       empty response with that status
    Every response carries X-Bridge: <name>."""

    async def handler(s):
        if log is not None:
            log.append(s)
        p = s.path
        xb = ("x-bridge", name)
        if p == "/info" or p.startswith("/info/"):
            body = await s.read_all()
            doc = {"bridge": name, "method": s.method, "target": s.target, "headers": s.headers,
                   "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
            await s.respond(200, [("content-type", "application/json"), xb], json.dumps(doc).encode())
        elif p == "/echo":
            await s.send_response(200, [("content-type", "application/octet-stream"), xb])
            async for piece in s:
                await s.send_data(piece)
            await s.end()
        elif p.startswith("/blob/"):
            _, _, n, seed = p.split("/")
            data = blob(int(n), int(seed))
            await s.read_all()
            await s.send_response(200, [("content-type", "application/octet-stream"),
                                        ("content-length", str(len(data))), xb], end_stream=not data)
            if data:
                await s.send_data(data, end_stream=True)
        elif p.startswith("/chunks/"):
            _, _, k, ms = p.split("/")
            await s.send_response(200, [("content-type", "text/plain"), xb])
            for i in range(int(k)):
                if i:
                    await asyncio.sleep(int(ms) / 1000)
                await s.send_data(f"chunk {i} {time.time()}\n".encode())
            await s.end()
        elif p.startswith("/status/"):
            await s.respond(int(p.split("/")[2]), [xb])
        else:
            await s.respond(404, [("content-type", "text/plain"), xb], b"no such test path")

    return handler


async def http(relay, method: str, path: str, token: str | None = None, body: bytes | None = None,
               headers: dict | None = None, **kw):
    h = dict(headers or {})
    if token is not None:
        h.update(bearer(token))
    return await request(relay.port, method, path, h, body, **kw)


async def bridge_status(relay, token: str, prefix: str = "/api/ollama") -> dict:
    r = await http(relay, "GET", f"{prefix}/bridge/status", token)
    assert r.status == 200 and r.media_type == "application/json", r.describe()
    return r.json()


async def wait_bridges(relay, token: str, n: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = await bridge_status(relay, token)
        if st.get("bridges") == n:
            assert st["status"] == ("connected" if n else "disconnected"), st
            return
        assert time.monotonic() < deadline, f"bridge status {st}, wanted {n} bridges"
        await asyncio.sleep(0.05)


def assert_error(r, status: int, code: str) -> None:
    assert r.status == status, f"expected {status} {code}, got {r.describe()}"
    assert r.media_type == "application/json", r.describe()
    err = r.json().get("error")
    assert isinstance(err, dict) and err.get("code") == code and isinstance(err.get("message"), str) \
        and err["message"], f"expected error code {code}: {r.describe()}"


def bridge(relay, token, handler="default", name="bridge", **kw) -> TunnelBridge:
    """A Python bridge for `token`; handler None queues streams for bridge.accept()."""
    if handler == "default":
        handler = make_handler(name)
    return TunnelBridge(tunnel_url(relay), token, handler=handler, name=name, **kw)


# ============================================================================================
# §1 Opening a tunnel, §3 HELLO
# ============================================================================================


def test_relay_hello_and_settings(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--stream-window", "262144", "--tunnel-window", "2097152",
                                 "--tunnel-ping-interval", "5")

    async def main():
        async with bridge(relay, mint_token("alice")) as b:
            assert b.subprotocol == "tether.v1"
            assert b.ws.response.headers.get("Sec-WebSocket-Protocol") == "tether.v1"
            assert b.peer_hello.version == 1
            s = b.peer_settings
            assert s[Setting.STREAM_WINDOW] == 262144
            assert s[Setting.TUNNEL_WINDOW] == 2097152
            assert s[Setting.PING_INTERVAL_MS] == 5000
            assert s[Setting.MAX_MESSAGE_SIZE] >= 1024 + HEADER_SIZE
            assert len(b.peer_hello.agent.encode()) <= 256
            assert b.frames_received[0].type == FrameType.HELLO and b.frames_received[0].stream_id == 0
            await asyncio.sleep(0.2)
            b.assert_clean()

    run(main())


@pytest.mark.parametrize("placement", ["bearer", "query", "subprotocol"])
def test_bridge_token_placements(tunnel_relay, mint_token, placement):
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, token_placement=placement) as b:
            # §1: the relay selects tether.v1 and never echoes the token subprotocol.
            assert b.ws.response.headers.get("Sec-WebSocket-Protocol") == "tether.v1"
            await wait_bridges(tunnel_relay, tok, 1)
            r = await http(tunnel_relay, "GET", "/api/ollama/info", tok)
            assert r.status == 200 and r.json()["bridge"] == "bridge", r.describe()
            b.assert_clean()

    run(main())


def test_tunnel_without_subprotocol_is_400(tunnel_relay, mint_token):
    s, r, resp = ws_handshake(tunnel_relay.port, "/ws/tunnel",
                              headers={"Authorization": f"Bearer {mint_token('alice')}"})
    try:
        assert_json_error(resp, 400, "TUNNEL_SUBPROTOCOL")
    finally:
        s.close()
    s, r, resp = ws_handshake(tunnel_relay.port, "/ws/tunnel",
                              headers={"Authorization": f"Bearer {mint_token('alice')}",
                                       "Sec-WebSocket-Protocol": "tether.v2, chat"})
    try:
        assert_json_error(resp, 400, "TUNNEL_SUBPROTOCOL")
    finally:
        s.close()


def test_tunnel_not_an_upgrade_is_http_error(tunnel_relay, mint_token):
    async def main():
        r = await http(tunnel_relay, "GET", "/ws/tunnel", mint_token("alice"))
        assert 400 <= r.status < 500 and r.media_type == "application/json", r.describe()

    run(main())


# -- authentication of bridges (§1: close 4001 with a reason) ---------------------------------

BAD_TOKENS = {
    # name: (relay args, token factory(mint_token, secret), words expected in the close reason)
    "missing": ((), lambda m, s: None, "missing"),
    "expired": ((), lambda m, s: m("alice", ttl=-120), "expired"),
    "bad-signature": ((), lambda m, s: m("alice", secret="not-the-secret"), "signature"),
    "alg-none": ((), lambda m, s: make_jwt(None, "alice", alg="none"), None),
    "alg-none-with-sig": ((), lambda m, s: m("alice", header={"alg": "none"}), None),
    "malformed": ((), lambda m, s: "not-a-jwt", None),
    "not-yet-valid": ((), lambda m, s: m("alice", nbf=int(time.time()) + 3600), None),
    "wrong-audience": (("--jwt-audience", "tether"), lambda m, s: m("alice", aud="someone-else"), None),
    "missing-audience": (("--jwt-audience", "tether"), lambda m, s: m("alice"), None),
    "wrong-issuer": (("--jwt-issuer", "https://auth.example"), lambda m, s: m("alice", iss="https://evil.example"),
                     None),
    "hs384-with-other-key": ((), lambda m, s: make_jwt("other", "alice", alg="HS384"), None),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bridge_auth_failure_closes_4001(tunnel_relay_factory, mint_token, jwt_secret, case):
    args, make, word = BAD_TOKENS[case]
    relay = tunnel_relay_factory(*args)
    tok = make(mint_token, jwt_secret)

    async def main():
        with pytest.raises(TunnelClosed) as ei:
            async with bridge(relay, tok):
                pass
        assert ei.value.code == CLOSE_AUTH, f"expected close 4001, got {ei.value}"
        assert ei.value.reason, "4001 close without a reason"
        if word:
            assert word in ei.value.reason.lower(), f"close reason {ei.value.reason!r} does not name {word!r}"
        # The relay keeps working.
        good = mint_token("alice", **({"aud": "tether"} if "audience" in case else {}),
                          **({"iss": "https://auth.example"} if "issuer" in case else {}))
        async with bridge(relay, good) as b:
            r = await http(relay, "GET", "/api/ollama/info", good)
            assert r.status == 200, r.describe()
            b.assert_clean()

    run(main())


@pytest.mark.parametrize("placement", ["query", "subprotocol"])
def test_bridge_auth_failure_other_placements(tunnel_relay, mint_token, placement):
    async def main():
        with pytest.raises(TunnelClosed) as ei:
            async with bridge(tunnel_relay, mint_token("alice", ttl=-60), token_placement=placement):
                pass
        assert ei.value.code == CLOSE_AUTH and "expired" in ei.value.reason.lower(), ei.value

    run(main())


# ============================================================================================
# §8 HTTP API: authentication, routing, status, health
# ============================================================================================


@pytest.mark.parametrize("path", ["/api/ollama/api/tags", "/ollama/api/tags", "/api/ollama/bridge/status",
                                  "/ollama/bridge/status"])
def test_http_auth_required(tunnel_relay, path):
    async def main():
        r = await http(tunnel_relay, "GET", path)
        assert_error(r, 401, "AUTH_REQUIRED")

    run(main())


@pytest.mark.parametrize("case", [c for c in BAD_TOKENS if c != "missing"])
def test_http_auth_invalid(tunnel_relay_factory, mint_token, jwt_secret, case):
    args, make, _ = BAD_TOKENS[case]
    relay = tunnel_relay_factory(*args)
    tok = make(mint_token, jwt_secret)

    async def main():
        for path in ("/api/ollama/api/tags", "/ollama/bridge/status"):
            r = await http(relay, "GET", path, tok)
            assert_error(r, 401, "AUTH_INVALID")
            r = await http(relay, "GET", f"{path}?token={tok}")
            assert_error(r, 401, "AUTH_INVALID")

    run(main())


def test_http_audience_and_issuer_accepted_when_right(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--jwt-audience", "tether", "--jwt-issuer", "https://auth.example")

    async def main():
        good = mint_token("alice", aud="tether", iss="https://auth.example")
        r = await http(relay, "GET", "/api/ollama/api/tags", good)
        assert_error(r, 503, "TUNNEL_NOT_AVAILABLE")
        good_list = mint_token("alice", aud=["other", "tether"], iss="https://auth.example")
        r = await http(relay, "GET", "/api/ollama/api/tags", good_list)
        assert_error(r, 503, "TUNNEL_NOT_AVAILABLE")

    run(main())


def test_no_bridge_is_503(tunnel_relay, mint_token):
    async def main():
        for prefix in ("/api/ollama", "/ollama"):
            r = await http(tunnel_relay, "POST", f"{prefix}/api/chat", mint_token("alice"), b'{"model":"x"}')
            assert_error(r, 503, "TUNNEL_NOT_AVAILABLE")

    run(main())


@pytest.mark.parametrize("path", ["/health", "/api/health", "/healthz"])
def test_health_needs_no_token(tunnel_relay, path):
    async def main():
        r = await http(tunnel_relay, "GET", path)
        assert r.status == 200 and r.media_type == "application/json" and r.json() == {"status": "ok"}, r.describe()

    run(main())


def test_unknown_route_is_404(tunnel_relay, mint_token):
    async def main():
        r = await http(tunnel_relay, "GET", "/api/nothing-here", mint_token("alice"))
        assert_error(r, 404, "NOT_FOUND")

    run(main())


def test_bridge_status_counts_bridges(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        for prefix in ("/api/ollama", "/ollama"):
            assert await bridge_status(tunnel_relay, tok, prefix) == {"status": "disconnected", "bridges": 0}
        log: list = []
        b1 = await bridge(tunnel_relay, tok, make_handler("one", log)).__aenter__()
        await wait_bridges(tunnel_relay, tok, 1)
        for prefix in ("/api/ollama", "/ollama"):
            assert await bridge_status(tunnel_relay, tok, prefix) == {"status": "connected", "bridges": 1}
        b2 = await bridge(tunnel_relay, tok, make_handler("two", log)).__aenter__()
        await wait_bridges(tunnel_relay, tok, 2)
        # Another user's view is unaffected.
        assert await bridge_status(tunnel_relay, mint_token("bob")) == {"status": "disconnected", "bridges": 0}
        await b1.close()
        await wait_bridges(tunnel_relay, tok, 1)
        await b2.close()
        await wait_bridges(tunnel_relay, tok, 0)
        assert log == [], "bridge/status must be answered by the relay, not forwarded"

    run(main())


# -- forwarding (§4 OPEN, §8 routes) -------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/api/ollama", "/ollama"])
@pytest.mark.parametrize("placement", ["bearer", "query"])
def test_forward_get_strips_prefix_and_token(tunnel_relay, mint_token, prefix, placement):
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok) as b:
            headers = {"X-Custom": "yes", "Accept": "application/json"}
            if placement == "bearer":
                target = f"{prefix}/info/x/y?a=1&b=two%20words"
                headers.update(bearer(tok))
            else:
                target = f"{prefix}/info/x/y?a=1&token={tok}&b=two%20words"
            r = await request(tunnel_relay.port, "GET", target, headers)
            assert r.status == 200 and r.header("x-bridge") == "bridge", r.describe()
            doc = r.json()
            assert doc["method"] == "GET"
            path, _, query = doc["target"].partition("?")
            assert path == "/info/x/y"
            assert parse_qsl(query) == [("a", "1"), ("b", "two words")], doc["target"]
            assert "token" not in doc["target"] and tok not in doc["target"]
            names = {k.lower(): v for k, v in doc["headers"]}
            assert names.get("x-custom") == "yes" and names.get("accept") == "application/json"
            assert "authorization" not in names
            assert names.get("x-forwarded-for") and "127.0.0.1" in names["x-forwarded-for"]
            assert names.get("x-forwarded-proto") == "http"
            assert not HOP_BY_HOP & set(names), f"hop-by-hop headers forwarded: {names}"
            assert doc["body_len"] == 0
            b.assert_clean()

    run(main())


def test_forward_root_and_encoded_paths(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        log = []
        async with bridge(tunnel_relay, tok, make_handler("b", log)):
            for target, want in [("/api/ollama/", "/"), ("/ollama/a%2Fb/%C3%BC?q=%26", "/a%2Fb/%C3%BC?q=%26")]:
                r = await http(tunnel_relay, "GET", target, tok)
                assert r.status == 404 and r.header("x-bridge") == "b", r.describe()  # the bridge's own 404
                assert log[-1].target == want

    run(main())


def test_forward_hop_by_hop_request_headers_removed(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok) as b:
            r = await http(tunnel_relay, "GET", "/api/ollama/info", tok, headers={
                "Connection": "keep-alive, X-Drop-Me", "Keep-Alive": "timeout=5", "TE": "trailers",
                "Trailer": "X-T", "Proxy-Authorization": "Basic eA==", "Proxy-Connection": "keep-alive",
                "X-Keep-Me": "1"})
            assert r.status == 200, r.describe()
            names = {k.lower() for k, _ in r.json()["headers"]}
            assert "x-keep-me" in names
            assert not HOP_BY_HOP & names, names
            b.assert_clean()

    run(main())


@pytest.mark.parametrize("size", [1, 64 * KiB, 3 * MiB + 17])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_forward_post_body(tunnel_relay, mint_token, size, framing):
    tok = mint_token("alice")
    body = blob(size, 7)

    async def main():
        async with bridge(tunnel_relay, tok) as b:
            if framing == "content-length":
                r = await http(tunnel_relay, "POST", "/api/ollama/info", tok, body,
                               headers={"Content-Type": "application/octet-stream"})
            else:
                async def gen():
                    for off in range(0, len(body), 100_000):
                        yield body[off: off + 100_000]
                r = await request(tunnel_relay.port, "POST", "/api/ollama/info", bearer(tok), body_stream=gen())
            assert r.status == 200, r.describe()
            doc = r.json()
            assert doc["body_len"] == size and doc["body_sha256"] == hashlib.sha256(body).hexdigest()
            names = {k.lower(): v for k, v in doc["headers"]}
            if framing == "content-length":
                assert names.get("content-length") == str(size)  # §4: a client's Content-Length is kept
            else:
                assert "content-length" not in names and "transfer-encoding" not in names
            b.assert_clean()

    run(main())


def test_echo_large_body_with_small_bridge_window(tunnel_relay_factory, mint_token):
    """§5: the relay never sends more request body than the bridge's STREAM_WINDOW allows
    (the strict Python bridge closes 4003 if it does) and it keeps flowing on credit."""
    relay = tunnel_relay_factory()
    tok = mint_token("alice")
    body = blob(8 * MiB, 3)  # under the default --max-body-size (10 MiB), which proxied bodies obey

    async def main():
        async with bridge(relay, tok, settings={Setting.STREAM_WINDOW: 65536, Setting.TUNNEL_WINDOW: 262144}) as b:
            r = await http(relay, "POST", "/api/ollama/echo", tok, body, timeout=40)
            assert r.status == 200 and r.body == body
            b.assert_clean()
            assert b.close_code is None

    run(main())


def test_relay_holds_request_body_to_the_bridge_window(tunnel_relay, mint_token):
    """A handler that does not read: the relay sends at most STREAM_WINDOW bytes, then waits."""
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, handler=None, settings={Setting.STREAM_WINDOW: 50_000}) as b:
            body = blob(2 * MiB, 1)
            client = asyncio.create_task(http(tunnel_relay, "POST", "/api/ollama/slow-reader", tok, body, timeout=30))
            s = await b.accept()
            await asyncio.sleep(1.0)
            assert s.received <= 50_000, f"relay sent {s.received} bytes into a 50 000-byte window"
            assert s.received > 0
            got = await s.read_all()
            assert got == body
            await s.respond(200, [], b"ok")
            r = await client
            assert r.status == 200 and r.body == b"ok"
            b.assert_clean()

    run(main())


def test_response_status_headers_and_framing(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def handler(s):
        if s.path == "/created":
            await s.respond(201, [("content-type", "text/plain"), ("x-multi", "a"), ("x-multi", "b"),
                                  ("content-length", "5"), ("connection", "close"), ("keep-alive", "x")], b"hello")
        elif s.path == "/nolength":
            await s.send_response(200, [("content-type", "text/plain")])
            await s.send_data(b"abc")
            await s.send_data(b"def", end_stream=True)
        elif s.path == "/empty-end-on-response":
            await s.send_response(204, [], end_stream=True)
        elif s.path == "/empty-200":
            await s.send_response(200, [], end_stream=True)
        elif s.path == "/teapot":
            await s.respond(418, [("content-type", "text/plain")], b"short and stout")

    async def main():
        async with bridge(tunnel_relay, tok, handler) as b:
            r = await http(tunnel_relay, "GET", "/api/ollama/created", tok)
            assert r.status == 201 and r.body == b"hello", r.describe()
            assert [v for k, v in r.headers if k.lower() == "x-multi"] == ["a", "b"]
            assert r.header("content-length") == "5"
            r = await http(tunnel_relay, "GET", "/api/ollama/nolength", tok)
            assert r.status == 200 and r.body == b"abcdef" and r.chunked, r.describe()
            r = await http(tunnel_relay, "GET", "/api/ollama/empty-end-on-response", tok)
            assert r.status == 204 and r.body == b""
            r = await http(tunnel_relay, "GET", "/api/ollama/empty-200", tok)
            assert r.status == 200 and r.body == b""
            r = await http(tunnel_relay, "GET", "/api/ollama/teapot", tok)
            assert r.status == 418 and r.body == b"short and stout"  # the local service's status, not an error
            # curl too
            out = await asyncio.to_thread(subprocess.run, CURL + ["-i", "-H", f"Authorization: Bearer {tok}",
                                                                  f"http://127.0.0.1:{tunnel_relay.port}/ollama/created"],
                                          capture_output=True, timeout=30)
            assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 201") and out.stdout.endswith(b"hello")
            b.assert_clean()

    run(main())


def test_several_frames_per_message(tunnel_relay, mint_token):
    """§2: a message may hold several frames; an empty DATA may carry END_STREAM."""
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, handler=None) as b:
            client = asyncio.create_task(http(tunnel_relay, "GET", "/api/ollama/x", tok))
            s = await b.accept()
            await b.send_frames(response_frame(s.id, 200, [("content-type", "text/plain")]),
                                data_frame(s.id, b"one "), data_frame(s.id, b"two"), data_frame(s.id, b"", True),
                                ping_frame(b"12345678"))
            r = await client
            assert r.status == 200 and r.body == b"one two"
            await asyncio.sleep(0.2)
            assert b"12345678" in b.pongs_received
            b.assert_clean()

    run(main())


def test_response_streamed_without_buffering(tunnel_relay, mint_token):
    """§8: response bodies are streamed as they arrive: each chunk reaches the client < 50 ms after
    the bridge sent it."""
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok) as b:
            rs = await open_request(tunnel_relay.port, "GET", "/api/ollama/chunks/8/150", bearer(tok))
            assert rs.status == 200
            delays = []
            async for line, t in rs.iter_lines():
                sent_at = float(line.split()[2])
                delays.append(t - sent_at)
            rs.close()
            assert len(delays) == 8
            assert max(delays) < 0.05, f"per-chunk delays {delays}"
            b.assert_clean()

    run(main())


# -- sessions (§9) --------------------------------------------------------------------------------


def test_users_never_reach_each_others_bridges(tunnel_relay, mint_token):
    alice, bob = mint_token("alice"), mint_token("bob")

    async def main():
        a_log, b_log = [], []
        async with bridge(tunnel_relay, alice, make_handler("alice", a_log), name="alice") as ba:
            # Only alice has a bridge: bob gets 503, never alice's bridge.
            for _ in range(5):
                assert_error(await http(tunnel_relay, "GET", "/api/ollama/info", bob), 503, "TUNNEL_NOT_AVAILABLE")
            assert a_log == []
            async with bridge(tunnel_relay, bob, make_handler("bob", b_log), name="bob") as bb:
                rs = await asyncio.gather(*[http(tunnel_relay, "GET", f"/api/ollama/info/{i}", alice if i % 2 else bob)
                                            for i in range(40)])
                for i, r in enumerate(rs):
                    assert r.status == 200 and r.json()["bridge"] == ("alice" if i % 2 else "bob"), r.describe()
                assert len(a_log) == 20 and len(b_log) == 20
                await ba.close()
                await wait_bridges(tunnel_relay, alice, 0)
                # And the other direction: alice without a bridge never reaches bob's.
                for _ in range(5):
                    assert_error(await http(tunnel_relay, "GET", "/api/ollama/info", alice), 503,
                                 "TUNNEL_NOT_AVAILABLE")
                assert len(b_log) == 20
                r = await http(tunnel_relay, "GET", "/api/ollama/info", bob)
                assert r.json()["bridge"] == "bob"
                bb.assert_clean()

    run(main())


@pytest.mark.parametrize("pair", [(("alice", "https://a.example"), ("alice", "https://b.example")),
                                  (("bc", "a"), ("c", "ab")),
                                  (("alice", None), ("alice", "https://a.example"))],
                         ids=["same-sub-other-issuer", "domain-separation", "no-issuer-vs-issuer"])
def test_sessions_keyed_by_issuer_and_subject(tunnel_relay, mint_token, pair):
    (sub1, iss1), (sub2, iss2) = pair
    t1, t2 = mint_token(sub1, iss=iss1), mint_token(sub2, iss=iss2)

    async def main():
        log = []
        async with bridge(tunnel_relay, t1, make_handler("one", log)):
            assert (await http(tunnel_relay, "GET", "/api/ollama/info", t1)).status == 200
            assert_error(await http(tunnel_relay, "GET", "/api/ollama/info", t2), 503, "TUNNEL_NOT_AVAILABLE")
            assert len(log) == 1
            # The same identity with a fresh token is the same session.
            assert (await http(tunnel_relay, "GET", "/api/ollama/info", mint_token(sub1, iss=iss1, ttl=600))).status \
                == 200

    run(main())


def test_round_robin_over_two_bridges(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, make_handler("one"), name="one") as b1, \
                bridge(tunnel_relay, tok, make_handler("two"), name="two") as b2:
            await wait_bridges(tunnel_relay, tok, 2)
            served = []
            for i in range(20):
                r = await http(tunnel_relay, "GET", f"/api/ollama/info/{i}", tok)
                assert r.status == 200
                served.append(r.header("x-bridge"))
            assert served.count("one") >= 5 and served.count("two") >= 5, served
            # A bridge that sent GOAWAY is skipped (§6, §8).
            await b1.send_goaway()
            await asyncio.sleep(0.3)
            for i in range(10):
                r = await http(tunnel_relay, "GET", f"/api/ollama/info/after/{i}", tok)
                assert r.status == 200 and r.header("x-bridge") == "two", r.describe()
            b1.assert_clean()
            b2.assert_clean()

    run(main())


def test_bridge_goaway_lets_open_streams_finish(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok) as b:
            rs = await open_request(tunnel_relay.port, "GET", "/api/ollama/chunks/5/100", bearer(tok))
            await b.send_goaway()
            body = await rs.read_all()
            rs.close()
            assert body.count(b"chunk") == 5
            b.assert_clean()

    run(main())


def test_bridge_close_without_goaway(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, make_handler("stays"), name="stays") as stays:
            leaver = await bridge(tunnel_relay, tok, make_handler("leaves"), name="leaves").__aenter__()
            await wait_bridges(tunnel_relay, tok, 2)
            await leaver.close(1000)
            await wait_bridges(tunnel_relay, tok, 1, timeout=1.0)
            for i in range(6):
                r = await http(tunnel_relay, "GET", f"/api/ollama/info/{i}", tok)
                assert r.status == 200 and r.header("x-bridge") == "stays"
            stays.assert_clean()
        await wait_bridges(tunnel_relay, tok, 0, timeout=1.0)
        assert_error(await http(tunnel_relay, "GET", "/api/ollama/info", tok), 503, "TUNNEL_NOT_AVAILABLE")

    run(main())


def test_refused_stream_is_retried_on_another_bridge(tunnel_relay, mint_token):
    """§7 REFUSED_STREAM: the relay retries once on another bridge."""
    tok = mint_token("alice")
    refused = []

    async def refuse(s):
        refused.append(s.id)
        await s.reset(ErrorCode.REFUSED_STREAM, "busy")

    async def main():
        async with bridge(tunnel_relay, tok, refuse, name="refuser"), \
                bridge(tunnel_relay, tok, make_handler("good"), name="good") as good:
            await wait_bridges(tunnel_relay, tok, 2)
            for i in range(10):
                r = await http(tunnel_relay, "GET", f"/api/ollama/info/{i}", tok)
                assert r.status == 200 and r.header("x-bridge") == "good", r.describe()
            assert refused, "round robin never tried the refusing bridge"
            good.assert_clean()

    run(main())


def test_refused_stream_with_one_bridge_is_503(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def refuse(s):
        await s.reset(ErrorCode.REFUSED_STREAM, "busy")

    async def main():
        async with bridge(tunnel_relay, tok, refuse):
            assert_error(await http(tunnel_relay, "GET", "/api/ollama/info", tok), 503, "TUNNEL_NOT_AVAILABLE")

    run(main())


def test_max_streams_respected(tunnel_relay, mint_token):
    """§3 MAX_STREAMS: the relay never has more streams open on a bridge than it accepts."""
    tok = mint_token("alice")
    open_now = [0]
    peak = [0]

    async def handler(s):
        open_now[0] += 1
        peak[0] = max(peak[0], open_now[0])
        try:
            await asyncio.sleep(0.3)
            await s.respond(200, [], b"ok")
        finally:
            open_now[0] -= 1

    async def main():
        async with bridge(tunnel_relay, tok, handler, settings={Setting.MAX_STREAMS: 2}) as b:
            rs = await asyncio.gather(*[http(tunnel_relay, "GET", f"/api/ollama/{i}", tok) for i in range(8)])
            for r in rs:
                assert r.status == 200 or (r.status == 503 and r.error_code() == "TUNNEL_NOT_AVAILABLE"), r.describe()
            assert any(r.status == 200 for r in rs)
            assert peak[0] <= 2, f"{peak[0]} streams open at once on a bridge with MAX_STREAMS=2"
            b.assert_clean()

    run(main())


def test_relay_opens_no_stream_before_bridge_hello(tunnel_relay, mint_token):
    """§1: the relay opens no stream before it has received the bridge's HELLO."""
    tok = mint_token("alice")

    async def main():
        b = bridge(tunnel_relay, tok, send_hello=False)
        async with b:
            client = asyncio.create_task(http(tunnel_relay, "GET", "/api/ollama/info", tok, timeout=20))
            await asyncio.sleep(0.5)
            assert [f.type for f in b.frames_received] == [FrameType.HELLO], b.frames_received
            await b.send_hello()
            r = await client
            assert r.status == 200 or (r.status == 503 and r.error_code() == "TUNNEL_NOT_AVAILABLE"), r.describe()
            b.assert_clean()  # no OPEN before our HELLO

    run(main())


# ============================================================================================
# Many streams over one tunnel
# ============================================================================================


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_200_concurrent_streams_byte_exact(tunnel_relay, mint_token):
    tok = mint_token("alice")
    rnd = random.Random(42)
    jobs = []
    for i in range(200):
        kind = i % 3
        size = rnd.choice([0, 1, 100, 4096, 65_535, 65_536, 300 * KiB, 1 * MiB + 3])
        jobs.append((i, kind, size))

    async def one(i, kind, size):
        if kind == 0:
            r = await http(tunnel_relay, "GET", f"/api/ollama/blob/{size}/{i}", tok, timeout=90)
            assert r.status == 200 and r.header("content-length") == str(size)
            assert r.body == blob(size, i), f"stream {i}: GET /blob/{size} differs"
        elif kind == 1:
            body = blob(size, 10_000 + i)
            r = await http(tunnel_relay, "POST", "/ollama/echo", tok, body, timeout=90)
            assert r.status == 200 and r.body == body, f"stream {i}: echo of {size} bytes differs"
        else:
            body = blob(size, 20_000 + i)

            async def gen():
                for off in range(0, len(body), 50_000):
                    yield body[off: off + 50_000]
            r = await request(tunnel_relay.port, "POST", "/api/ollama/echo", bearer(tok), body_stream=gen(),
                              timeout=90)
            assert r.status == 200 and r.body == body, f"stream {i}: chunked echo of {size} bytes differs"

    async def main():
        async with bridge(tunnel_relay, tok) as b:
            await asyncio.gather(*(one(*j) for j in jobs))
            assert len(b.all_streams) == 200
            assert len({s.id for s in b.all_streams}) == 200
            ids = [s.id for s in b.all_streams]
            assert ids == sorted(ids), "stream ids not strictly increasing"
            await asyncio.sleep(0.2)
            assert not b.streams, f"streams left open: {list(b.streams)}"
            b.assert_clean()

    run(main(), timeout=110)


# ============================================================================================
# §7 errors: RESET, disconnects, idle timeout
# ============================================================================================

RESET_MAP = {
    ErrorCode.PROTOCOL_ERROR: (502, "BRIDGE_PROTOCOL_ERROR"),
    ErrorCode.INTERNAL_ERROR: (502, "BRIDGE_DISCONNECTED"),
    ErrorCode.FLOW_CONTROL_ERROR: (502, "BRIDGE_PROTOCOL_ERROR"),
    ErrorCode.STREAM_CLOSED: (502, "BRIDGE_PROTOCOL_ERROR"),
    ErrorCode.LOCAL_SERVICE_ERROR: (502, "LOCAL_SERVICE_ERROR"),
    ErrorCode.LOCAL_TIMEOUT: (504, "LOCAL_TIMEOUT"),
    ErrorCode.DESTINATION_REFUSED: (502, "LOCAL_SERVICE_ERROR"),
    ErrorCode.HEAD_TOO_LARGE: (502, "BRIDGE_PROTOCOL_ERROR"),
    0xDEAD: (502, "BRIDGE_DISCONNECTED"),  # unknown codes are INTERNAL_ERROR
}


@pytest.mark.parametrize("code", list(RESET_MAP), ids=lambda c: ErrorCode(c).name if c in ErrorCode._value2member_map_
                         else f"unknown-{c}")
def test_reset_before_response_maps_to_http_error(tunnel_relay, mint_token, code):
    tok = mint_token("alice")
    status, err = RESET_MAP[code]

    async def handler(s):
        await s.reset(code, "test reset")

    async def main():
        async with bridge(tunnel_relay, tok, handler) as b:
            r = await http(tunnel_relay, "GET", "/api/ollama/api/tags", tok)
            assert_error(r, status, err)
            # The tunnel survives a stream error.
            assert b.close_code is None and not b.closed.is_set()
            r = await http(tunnel_relay, "GET", "/ollama/api/tags", tok)
            assert_error(r, status, err)
            b.assert_clean()

    run(main())


def test_reset_after_response_aborts_the_client(tunnel_relay, mint_token):
    tok = mint_token("alice")

    async def handler(s):
        if s.path == "/with-length":
            await s.send_response(200, [("content-length", "100000")])
        else:
            await s.send_response(200, [("content-type", "application/x-ndjson")])
        await s.send_data(b'{"token":"a"}\n')
        await asyncio.sleep(0.2)
        await s.reset(ErrorCode.LOCAL_SERVICE_ERROR, "ollama died")

    async def main():
        async with bridge(tunnel_relay, tok, handler) as b:
            for path in ("/api/ollama/chunked", "/api/ollama/with-length"):
                rs = await open_request(tunnel_relay.port, "GET", path, bearer(tok))
                assert rs.status == 200
                t0 = time.monotonic()
                with pytest.raises(IncompleteResponse):
                    await asyncio.wait_for(rs.read_all(), 5)
                assert time.monotonic() - t0 < 1.5
                rs.close()
            # curl reports the incomplete response as an error too.
            out = await asyncio.to_thread(subprocess.run, CURL + ["-H", f"Authorization: Bearer {tok}",
                                                                  f"http://127.0.0.1:{tunnel_relay.port}/ollama/x"],
                                          capture_output=True, timeout=30)
            assert out.returncode in (18, 56), out
            b.assert_clean()

    run(main())


@pytest.mark.parametrize("how", ["abort", "close-1000", "close-1001"])
def test_bridge_disconnect_before_head_is_502_within_1s(tunnel_relay, mint_token, how):
    tok = mint_token("alice")

    async def main():
        b = await bridge(tunnel_relay, tok, handler=None).__aenter__()
        client = asyncio.create_task(http(tunnel_relay, "GET", "/api/ollama/api/tags", tok))
        await b.accept()
        t0 = time.monotonic()
        if how == "abort":
            await b.abort()
        else:
            await b.close(int(how.split("-")[1]))
        r = await client
        elapsed = time.monotonic() - t0
        assert_error(r, 502, "BRIDGE_DISCONNECTED")
        assert elapsed < 1.0, f"502 after {elapsed:.2f}s"
        await wait_bridges(tunnel_relay, tok, 0, timeout=1.0)

    run(main())


@pytest.mark.parametrize("how", ["abort", "close-1000"])
def test_bridge_disconnect_after_head_aborts_within_1s(tunnel_relay, mint_token, how):
    tok = mint_token("alice")

    async def main():
        b = await bridge(tunnel_relay, tok, handler=None).__aenter__()
        rs_task = asyncio.create_task(open_request(tunnel_relay.port, "GET", "/api/ollama/api/chat", bearer(tok)))
        s = await b.accept()
        await s.send_response(200, [("content-type", "application/x-ndjson")])
        await s.send_data(b'{"message":{"content":"hi"}}\n')
        rs = await rs_task
        assert rs.status == 200
        assert await rs.read_chunk()
        t0 = time.monotonic()
        if how == "abort":
            await b.abort()
        else:
            await b.close(1000)
        with pytest.raises(IncompleteResponse):
            await asyncio.wait_for(rs.read_all(), 5)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, f"client saw the abort after {elapsed:.2f}s"
        rs.close()

    run(main())


@pytest.mark.parametrize("when", ["before-head", "mid-body"])
def test_web_client_disconnect_resets_stream_with_cancel(tunnel_relay, mint_token, when):
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, handler=None) as b:
            rs_task = asyncio.create_task(open_request(tunnel_relay.port, "GET", "/api/ollama/hold", bearer(tok)))
            s = await b.accept()
            if when == "before-head":
                await asyncio.sleep(0.2)
                rs_task.cancel()  # closes the client socket while waiting for the head
                with pytest.raises(asyncio.CancelledError):
                    await rs_task
            else:
                await s.send_response(200, [("content-type", "text/plain")])
                await s.send_data(b"first\n")
                rs = await rs_task
                assert await rs.read_chunk() == b"first\n"
                rs.abort()
            t0 = time.monotonic()
            code = await s.wait_reset(timeout=3.0)
            assert code == ErrorCode.CANCEL, f"reset code {code}, expected CANCEL"
            assert s.reset_by_peer and time.monotonic() - t0 < 1.0
            # Nothing more is sent on the stream after its RESET; the tunnel stays up.
            with pytest.raises(StreamReset):
                await s.send_data(b"late")
            assert not b.closed.is_set()
            b.assert_clean()

    run(main())


def test_no_response_head_within_idle_timeout_is_504(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--stream-idle-timeout", "0.7")
    tok = mint_token("alice")

    async def main():
        async with bridge(relay, tok, handler=None) as b:
            t0 = time.monotonic()
            client = asyncio.create_task(http(relay, "GET", "/api/ollama/api/tags", tok, timeout=10))
            s = await b.accept()
            r = await client
            elapsed = time.monotonic() - t0
            assert_error(r, 504, "LOCAL_TIMEOUT")
            assert 0.6 <= elapsed < 3.0, f"504 after {elapsed:.2f}s with a 700 ms idle timeout"
            await s.wait_reset(timeout=2.0)  # the relay gives up on the stream too
            b.assert_clean()

    run(main())


def test_idle_response_body_is_aborted_but_slow_progress_is_not(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--stream-idle-timeout", "0.8")
    tok = mint_token("alice")

    async def handler(s):
        await s.send_response(200, [("content-type", "text/plain")])
        if s.path == "/slow-but-alive":
            for i in range(8):  # 8 x 300 ms = 2.4 s total, never idle for 800 ms
                await s.send_data(b"tick\n")
                await asyncio.sleep(0.3)
            await s.end()
        else:
            await s.send_data(b"tick\n")
            await asyncio.sleep(10)

    async def main():
        async with bridge(relay, tok, handler) as b:
            r = await http(relay, "GET", "/api/ollama/slow-but-alive", tok, timeout=10)
            assert r.status == 200 and r.body == b"tick\n" * 8  # no total timeout (§8)
            rs = await open_request(relay.port, "GET", "/api/ollama/stalls", bearer(tok))
            t0 = time.monotonic()
            with pytest.raises(IncompleteResponse):
                await asyncio.wait_for(rs.read_all(), 5)
            assert 0.6 <= time.monotonic() - t0 < 3.0
            rs.close()
            b.assert_clean()

    run(main())


# ============================================================================================
# §5 Flow control
# ============================================================================================


@pytest.mark.timeout(90)
def test_slow_web_client_backpressure_bounds_relay_memory(tunnel_relay_factory, mint_token):
    """A web client that stops reading: the bridge's send window runs out, and the relay holds at
    most about one stream window (RSS grows by no more than a few windows)."""
    window = 1 * MiB
    relay = tunnel_relay_factory("--stream-window", str(window), "--tunnel-window", str(8 * window))
    tok = mint_token("alice")
    total = 256 * MiB
    chunk = blob(MiB, 9)

    async def handler(s):
        if s.path == "/flood":
            await s.send_response(200, [("content-type", "application/octet-stream"),
                                        ("content-length", str(total))])
            for _ in range(total // MiB):
                await s.send_data(chunk)
            await s.end()
        else:
            await s.respond(200, [], blob(16 * MiB, 2))

    async def main():
        async with bridge(relay, tok, handler) as b:
            # Warm up, then take the baseline.
            r = await http(relay, "GET", "/api/ollama/other", tok)
            assert len(r.body) == 16 * MiB
            await asyncio.sleep(0.3)
            base = relay.rss_bytes()
            rs = await open_request(relay.port, "GET", "/api/ollama/flood", bearer(tok), rcvbuf=64 * KiB)
            assert rs.status == 200
            s = [x for x in b.all_streams if x.target == "/flood"][0]
            await s.wait_blocked(timeout=20)
            # Stays blocked: nothing is read, so no credit comes back.
            await asyncio.sleep(1.0)
            sent_then = s.sent
            await asyncio.sleep(1.0)
            assert s.sent == sent_then, "the relay returned credit for bytes the client never read"
            assert s.send_window <= 0 or b.send_window <= 0
            # What the bridge could send: one window plus what the kernel buffers between relay and client.
            assert s.sent <= window + 16 * MiB, f"bridge sent {s.sent} bytes to a client that reads nothing"
            grown = relay.rss_bytes() - base
            assert grown < 4 * window + 8 * MiB, f"relay RSS grew by {grown / MiB:.1f} MiB"
            # One stalled stream does not block the others (tunnel window > stream window).
            t0 = time.monotonic()
            r = await http(relay, "GET", "/api/ollama/other", tok, timeout=20)
            assert r.status == 200 and r.body == blob(16 * MiB, 2)
            assert time.monotonic() - t0 < 10
            # Reading resumes the flow; everything arrives intact.
            h = hashlib.sha256()
            n = 0
            expect = hashlib.sha256()
            for _ in range(total // MiB):
                expect.update(chunk)
            async for piece in rs.iter_chunks():
                h.update(piece)
                n += len(piece)
            assert n == total and h.hexdigest() == expect.hexdigest()
            rs.close()
            b.assert_clean()

    run(main(), timeout=85)


def test_relay_returns_tunnel_credit_of_reset_streams(tunnel_relay_factory, mint_token):
    """§5: the receiver returns the tunnel credit of a stream that is reset, including bytes that
    arrived after the reset. Without it the small tunnel window would run dry."""
    relay = tunnel_relay_factory("--stream-window", str(512 * KiB), "--tunnel-window", str(1 * MiB))
    tok = mint_token("alice")

    async def handler(s):
        if s.path == "/dump":
            await s.send_response(200, [("content-type", "application/octet-stream")])
            try:
                await asyncio.wait_for(s.send_data(blob(400 * KiB, 1)), 1.5)
            except asyncio.TimeoutError:
                pass
            await s.reset(ErrorCode.LOCAL_SERVICE_ERROR, "gave up")
        else:
            await s.respond(200, [], blob(3 * MiB, 4))

    async def main():
        async with bridge(relay, tok, handler) as b:
            for i in range(12):  # 12 x 400 KiB = 4.8 MiB through a 1 MiB tunnel window
                rs = await open_request(relay.port, "GET", "/api/ollama/dump", bearer(tok), rcvbuf=16 * KiB)
                # The client reads nothing until the bridge has reset the stream, so most of the
                # 400 KiB is still held by the relay when the RESET arrives. Then it is aborted.
                s = b.all_streams[-1]
                await asyncio.wait_for(s.reset_event.wait(), 10)
                with pytest.raises(IncompleteResponse):
                    await asyncio.wait_for(rs.read_all(), 10)
                rs.close()
            r = await http(relay, "GET", "/api/ollama/big", tok, timeout=15)
            assert r.status == 200 and r.body == blob(3 * MiB, 4)
            b.assert_clean()

    run(main())


# ============================================================================================
# Protocol errors (§2, §3, §5, §8 close codes): the bad tunnel is closed, others keep working
# ============================================================================================


async def _open_stream_for(b: TunnelBridge, relay, tok):
    client = asyncio.create_task(http(relay, "GET", "/api/ollama/victim", tok, timeout=10))
    s = await b.accept()
    return client, s


async def _misbehave(case: str, b: TunnelBridge, relay, tok):
    if case == "truncated-frame":
        await b.send_raw(bytes.fromhex("00000005 04 00 00000001") + b"ab")
    elif case == "truncated-header":
        await b.send_raw(bytes.fromhex("00000000 04"))
    elif case == "text-message":
        await b.send_text('{"type":"hello"}')
    elif case == "data-on-stream-0":
        await b.send_raw(data_frame(0, b"x"))
    elif case == "data-on-unopened-stream":
        await b.send_raw(data_frame(0x7FFF, b"x"))
    elif case == "response-on-unopened-stream":
        await b.send_raw(response_frame(0x7FFF, 200))
    elif case == "tunnel-window-overflow":
        await b.send_raw(window_update_frame(0, MAX_WINDOW))
    elif case == "stream-window-overflow":
        # A request body larger than the bridge's window keeps the relay's send direction open
        # (a WINDOW_UPDATE for a direction that has ended is ignored, as in HTTP/2).
        client = asyncio.create_task(http(relay, "POST", "/api/ollama/victim", tok, b"u" * (2 * 1024 * 1024), timeout=10))
        s = await b.accept()
        # Two in one message: whatever the window was, the second pushes it past 2^31-1.
        await b.send_frames(window_update_frame(s.id, MAX_WINDOW), window_update_frame(s.id, MAX_WINDOW))
        return client
    elif case == "stream-window-exceeded":
        client, s = await _open_stream_for(b, relay, tok)
        window = b.peer_settings[Setting.STREAM_WINDOW]
        await b.send_frames(response_frame(s.id, 200), data_frame(s.id, b"x" * (window + 1)))
        return client
    elif case == "message-too-big":
        size = b.peer_settings[Setting.MAX_MESSAGE_SIZE] + 1
        await b.send_raw(encode_frame(0x7E, 0, 0, b"\0" * (size - HEADER_SIZE)))
    elif case == "bad-reset-payload":
        client, s = await _open_stream_for(b, relay, tok)
        await b.send_raw(encode_frame(FrameType.RESET, 0, s.id, b"\x00\x01"))
        return client
    else:
        raise AssertionError(case)
    return None


PROTOCOL_ERRORS = {
    "truncated-frame": CLOSE_TUNNEL_PROTOCOL,
    "truncated-header": CLOSE_TUNNEL_PROTOCOL,
    "text-message": CLOSE_UNSUPPORTED_DATA,
    "data-on-stream-0": CLOSE_TUNNEL_PROTOCOL,
    "data-on-unopened-stream": CLOSE_TUNNEL_PROTOCOL,
    "response-on-unopened-stream": CLOSE_TUNNEL_PROTOCOL,
    "tunnel-window-overflow": CLOSE_TUNNEL_PROTOCOL,
    "stream-window-overflow": CLOSE_TUNNEL_PROTOCOL,
    "stream-window-exceeded": CLOSE_TUNNEL_PROTOCOL,
    "message-too-big": CLOSE_TOO_BIG,
    "bad-reset-payload": CLOSE_TUNNEL_PROTOCOL,
}


@pytest.mark.parametrize("case", list(PROTOCOL_ERRORS))
def test_protocol_error_closes_only_that_tunnel(tunnel_relay_factory, mint_token, case):
    relay = tunnel_relay_factory("--stream-window", "65536")
    alice, bob = mint_token("alice"), mint_token("bob")
    expected = PROTOCOL_ERRORS[case]

    async def main():
        async with bridge(relay, bob, make_handler("bob"), name="bob") as good, \
                bridge(relay, alice, make_handler("alice-good"), name="alice-good") as alice_good:
            bad = await bridge(relay, alice, handler=None, name="bad", strict=False).__aenter__()
            await wait_bridges(relay, alice, 2)
            # Make sure the next alice stream lands on the bad bridge if the case needs one.
            client = None
            if case in ("stream-window-overflow", "stream-window-exceeded", "bad-reset-payload"):
                await alice_good.send_goaway()
                await asyncio.sleep(0.2)
            client = await _misbehave(case, bad, relay, alice)
            code, reason = await bad.wait_closed(5)
            assert code == expected, f"{case}: close code {code} ({reason!r}), expected {expected}"
            if expected == CLOSE_TUNNEL_PROTOCOL:
                assert reason, "4003 without a reason"
            if client is not None:
                # The stream of the broken tunnel fails: an error before the head, or an aborted response.
                try:
                    r = await client
                    assert r.status in (502, 503), r.describe()
                except IncompleteResponse:
                    pass
            # The relay keeps serving everyone else.
            assert relay.healthy()
            r = await http(relay, "GET", "/api/ollama/info", bob)
            assert r.status == 200 and r.json()["bridge"] == "bob"
            good.assert_clean()

    run(main())


def test_window_setting_above_limit_in_hello(tunnel_relay, mint_token):
    """§3: window values above 2^31-1 are a protocol error."""

    async def main():
        b = bridge(tunnel_relay, mint_token("alice"), hello_settings=[(Setting.STREAM_WINDOW, 2**31)], strict=False)
        try:
            await b.__aenter__()
        except TunnelClosed:
            pass
        code, reason = await b.wait_closed(5)
        assert code == CLOSE_TUNNEL_PROTOCOL, (code, reason)
        await b.close()

    run(main())


def test_hello_version_2_closes_4002(tunnel_relay, mint_token):
    async def main():
        b = bridge(tunnel_relay, mint_token("alice"), hello_version=2, strict=False)
        try:
            await b.__aenter__()
        except TunnelClosed:
            pass
        code, reason = await b.wait_closed(5)
        assert code == CLOSE_VERSION, (code, reason)
        assert "version" in reason.lower()
        await b.close()
        async with bridge(tunnel_relay, mint_token("alice")) as ok:
            assert (await http(tunnel_relay, "GET", "/api/ollama/info", mint_token("alice"))).status == 200
            ok.assert_clean()

    run(main())


def test_first_frame_not_hello_is_a_protocol_error(tunnel_relay, mint_token):
    async def main():
        b = bridge(tunnel_relay, mint_token("alice"), send_hello=False, strict=False)
        await b.__aenter__()
        await b.send_raw(data_frame(1, b"x"))
        code, _ = await b.wait_closed(5)
        assert code == CLOSE_TUNNEL_PROTOCOL
        await b.close()

    run(main())


def test_ignored_frames_do_not_break_the_tunnel(tunnel_relay, mint_token):
    """§2: unknown frame types and unknown flag bits are ignored; §3 unknown settings ignored;
    §4 frames for a finished stream are ignored."""
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, hello_settings=[(0x77, 1), (Setting.MAX_STREAMS, 100)]) as b:
            await b.send_raw(encode_frame(0x7F, 0xFF, 0, b"future extension"))
            await b.send_raw(encode_frame(0x7F, 0, 12345, b""))
            await b.send_raw(encode_frame(FrameType.PING, 0xF0, 0, b"abcdefgh"))  # unknown flag bits: a plain ping
            r = await http(tunnel_relay, "GET", "/api/ollama/info", tok)
            assert r.status == 200
            finished = b.all_streams[-1].id
            await b.send_frames(data_frame(finished, b"late"), window_update_frame(finished, 100),
                                encode_frame(FrameType.RESET, 0, finished, b"\0\0\0\6"))
            r = await http(tunnel_relay, "GET", "/api/ollama/info", tok)
            assert r.status == 200
            await asyncio.sleep(0.2)
            assert b"abcdefgh" in b.pongs_received
            assert not b.closed.is_set()
            b.assert_clean()

    run(main())


def test_data_after_end_of_direction_is_stream_closed(tunnel_relay, mint_token):
    """§4: DATA on a stream whose direction has ended is a stream error: RESET STREAM_CLOSED."""
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok, handler=None) as b:
            upload_done = asyncio.Event()

            async def slow_body():
                yield b"part one"
                await upload_done.wait()
                yield b"part two"

            rs_task = asyncio.create_task(open_request(tunnel_relay.port, "POST", "/api/ollama/up", bearer(tok),
                                                       body_stream=slow_body()))
            s = await b.accept()
            assert await s.read(8) == b"part one"
            # The request direction is still open: the stream is half-closed, not finished.
            await s.send_response(200, [("content-length", "2")])
            await s.send_data(b"ok", end_stream=True)
            await b.send_raw(data_frame(s.id, b"extra"))
            rs = await rs_task
            code = await s.wait_reset(3)
            # The relay may already have cancelled the upload once the response was complete
            # (it does not drain request bodies nobody will read); either way the stream is reset.
            assert code in (ErrorCode.STREAM_CLOSED, ErrorCode.CANCEL)
            upload_done.set()
            rs.close()
            assert not b.closed.is_set()

    run(main())


# ============================================================================================
# §6 keepalive and goaway
# ============================================================================================


def test_relay_pings_at_its_interval(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--tunnel-ping-interval", "0.2")

    async def main():
        async with bridge(relay, mint_token("alice")) as b:
            assert b.peer_settings[Setting.PING_INTERVAL_MS] == 200
            await asyncio.sleep(1.5)
            assert 4 <= len(b.pings_received) <= 12, b.pings_received
            assert all(len(p) == 8 for p in b.pings_received)
            assert not b.closed.is_set()
            b.assert_clean()

    run(main())


def test_ping_timeout_closes_1001(tunnel_relay_factory, mint_token):
    relay = tunnel_relay_factory("--tunnel-ping-interval", "0.3")
    tok = mint_token("alice")

    async def main():
        b = bridge(relay, tok, handler=None, answer_pings=False)
        await b.__aenter__()
        rs_task = asyncio.create_task(http(relay, "GET", "/api/ollama/pending", tok, timeout=10))
        await b.accept()
        t0 = time.monotonic()
        code, reason = await b.wait_closed(5)
        elapsed = time.monotonic() - t0
        assert code == 1001 and "ping" in reason.lower(), (code, reason)
        assert elapsed < 0.6 * 2 + 1.0, f"closed after {elapsed:.2f}s"
        # Its streams fail as if the bridge had disconnected.
        assert_error(await rs_task, 502, "BRIDGE_DISCONNECTED")
        await wait_bridges(relay, tok, 0, timeout=1.0)
        await b.close()

    run(main())


def test_relay_answers_bridge_ping(tunnel_relay, mint_token):
    async def main():
        async with bridge(tunnel_relay, mint_token("alice")) as b:
            for _ in range(5):
                rtt = await b.ping(os.urandom(8), timeout=2)
                assert rtt < 0.5
            b.assert_clean()

    run(main())


def test_relay_drain_sends_goaway(tunnel_relay, mint_token):
    """§6: on SIGTERM the relay sends GOAWAY, lets open streams finish, then closes the tunnel."""
    tok = mint_token("alice")

    async def main():
        async with bridge(tunnel_relay, tok) as b:
            rs = await open_request(tunnel_relay.port, "GET", "/api/ollama/chunks/4/100", bearer(tok))
            tunnel_relay.expected_exit = True
            tunnel_relay.send_signal(signal.SIGTERM)
            await asyncio.wait_for(b.goaway_event.wait(), 3)
            last_id, code, _ = b.goaway
            assert last_id >= b.all_streams[-1].id
            body = await asyncio.wait_for(rs.read_all(), 5)
            assert body.count(b"chunk") == 4
            rs.close()
            code, _ = await b.wait_closed(10)
            assert code in (1000, 1001), code
        rc = await asyncio.to_thread(tunnel_relay.proc.wait, 10)
        assert rc == 0

    run(main())


# ============================================================================================
# Many tunnels
# ============================================================================================


@pytest.mark.timeout(90)
def test_many_bridges_many_users(tunnel_relay, mint_token):
    users = [f"user{i}" for i in range(30)]
    toks = {u: mint_token(u) for u in users}

    async def main():
        bridges = [bridge(tunnel_relay, toks[u], make_handler(u), name=u) for u in users]
        for b in bridges:
            await b.__aenter__()
        try:
            async def one(u, i):
                r = await http(tunnel_relay, "GET", f"/api/ollama/blob/{1000 + i}/{i}", toks[u])
                assert r.status == 200 and r.header("x-bridge") == u and r.body == blob(1000 + i, i)
            await asyncio.gather(*(one(u, i) for u in users for i in range(5)))
            for b in bridges:
                b.assert_clean()
        finally:
            for b in bridges:
                await b.close()

    run(main(), timeout=80)


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """One client-to-server WebSocket frame (RFC 6455 5.2), masked, FIN set."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_last_data_and_close_in_one_read_reach_the_client(tunnel_relay, mint_token):
    """A bridge that ends its last stream and closes the tunnel at once: the final DATA (with
    END_STREAM) and the close frame arrive in one read. The relay must deliver the data before it
    acts on the close (the codec parses the close frame ahead of the messages before it)."""
    token = mint_token("alice")

    async def main():
        done = asyncio.Event()

        async def handler(stream):
            await stream.read_all()
            await stream.send_response(200, [("content-type", "text/plain")])
            await stream.send_data(b"first,")
            await asyncio.sleep(0.05)
            # Two DATA messages, the second with END_STREAM, and the close frame leave in one
            # TCP write (the relay hands credit back for the first: that write must not close).
            middle = _masked_frame(0x2, data_frame(stream.id, b"middle,"))
            last = _masked_frame(0x2, data_frame(stream.id, b"last", end_stream=True))
            close = _masked_frame(0x8, (1000).to_bytes(2, "big") + b"drained")
            stream.bridge.ws.transport.write(middle + last + close)
            done.set()

        async with TunnelBridge(tunnel_url(tunnel_relay), token=token, handler=handler):
            r = await request(tunnel_relay.port, "GET", "/api/ollama/x", bearer(token))
            assert r.status == 200 and r.body == b"first,middle,last", r.describe()
            await done.wait()

    for _ in range(5):
        run(main())

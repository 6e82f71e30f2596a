"""Checks of the test harness itself, without a relay or a bridge: the nginx fixture, the Ollama
stand-in, the JWT helper, and the Python bridge (TunnelBridge) against the Python relay side
(FakeRelay)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import subprocess
import time

import pytest

from async_http import open_request, request
from tunnel_client import (
    FLAG_END_STREAM, ErrorCode, FakeRelay, FrameType, Setting, TunnelBridge, data_frame, decode_reset,
    decode_response_head, decode_window_update, reset_frame, window_update_frame,
)
from tunnel_fixtures import MiB, make_jwt, session_id

CURL = ["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", "120"]


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- nginx -------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["0B.bin", "1KiB.bin", "1MiB.bin", "64MiB.bin",
                                  pytest.param("1GiB.bin", marks=pytest.mark.slow)])
def test_nginx_serves_files_byte_exact(nginx, name):
    info = nginx.files[name]
    p = subprocess.Popen(CURL + ["--fail", nginx.file_url(name)], stdout=subprocess.PIPE)
    h, n = hashlib.sha256(), 0
    while True:
        b = p.stdout.read(4 * MiB)
        if not b:
            break
        h.update(b)
        n += len(b)
    assert p.wait(60) == 0
    assert n == info.size
    assert h.hexdigest() == info.sha256


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["0B.bin", "1KiB.bin", "1MiB.bin", "64MiB.bin"])
def test_nginx_stores_put_uploads(nginx_uploads, name):
    nginx = nginx_uploads
    out = subprocess.run(CURL + ["--fail", "-T", str(nginx.files[name].path), "-o", "/dev/null", "-w", "%{http_code}",
                                 nginx.upload_url(f"dir/{name}")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout in ("201", "204")
    stored = nginx.uploaded(f"dir/{name}")
    assert stored.stat().st_size == nginx.files[name].size
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == nginx.files[name].sha256


# -- stand-in ----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_standin_endpoints(standin_factory):
    s = standin_factory(token_rate=50, tokens=10)

    async def main():
        r = await request(s.port, "GET", "/api/tags")
        assert r.status == 200 and r.json()["models"][0]["name"]
        r = await request(s.port, "GET", "/api/tags", host="example.com")
        assert r.status == 403
        r = await request(s.port, "GET", "/api/tags", host=f"localhost:{s.port}")
        assert r.status == 200

        rs = await open_request(s.port, "POST", "/api/chat", {"Content-Type": "application/json"},
                                json.dumps({"model": "m", "messages": []}).encode())
        assert rs.status == 200 and rs.header("content-type") == "application/x-ndjson"
        objs = []
        async for line, t in rs.iter_lines():
            o = json.loads(line)
            assert t - o["emitted_at"] < 0.05
            objs.append(o)
        rs.close()
        assert len(objs) == 11 and objs[-1]["done"] and not any(o["done"] for o in objs[:-1])
        assert objs[-1]["emitted_at"] - objs[0]["emitted_at"] >= 9 / 50 - 0.01  # paced

        r = await request(s.port, "POST", "/api/generate", body=json.dumps({"stream": False}).encode())
        assert r.status == 200 and r.json()["done"] is True and r.json()["response"]

        r = await request(s.port, "POST", "/v1/chat/completions",
                          body=json.dumps({"stream": True, "max_tokens": 3}).encode())
        events = [e for e in r.body.split(b"\n\n") if e]
        assert r.media_type == "text/event-stream"
        assert events[-1] == b"data: [DONE]" and len(events) == 5
        assert all("emitted_at" in json.loads(e[6:]) for e in events[:-1])

        body = random.Random(1).randbytes(3 * MiB + 5)
        r = await request(s.port, "POST", "/echo", body=body)
        assert r.body == body

        r = await request(s.port, "GET", "/bytes/2000000")
        assert r.header("content-length") == "2000000" and len(r.body) == 2000000
        r2 = await request(s.port, "GET", "/bytes/2000000")
        assert r.body == r2.body

        r = await request(s.port, "GET", "/headers", {"X-Test": "1"})
        assert r.json()["host"] == f"127.0.0.1:{s.port}" and ["X-Test", "1"] in r.json()["headers"]

        before = s.stats()["disconnects"]
        rs = await open_request(s.port, "GET", "/hold")
        assert await rs.read_chunk()
        rs.abort()
        rs = await open_request(s.port, "GET", "/slow?chunks=100&interval=0.05")
        assert await rs.read_chunk()
        rs.abort()
        deadline = time.monotonic() + 3
        while s.stats()["disconnects"] < before + 2:
            assert time.monotonic() < deadline, s.stats()
            await asyncio.sleep(0.05)
        st = s.stats()
        assert st["hold_disconnects"] >= 1 and st["slow_disconnects"] >= 1

    run(main())


@pytest.mark.timeout(60)
def test_standin_many_concurrent_streams(standin_factory):
    s = standin_factory(token_rate=20, tokens=20)

    async def one(i):
        r = await request(s.port, "POST", "/api/generate", body=b'{"prompt":"x"}', timeout=30)
        lines = r.body.splitlines()
        assert len(lines) == 21 and json.loads(lines[-1])["done"]

    async def main():
        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(300)))
        assert time.monotonic() - t0 < 10  # 1 s of tokens each, concurrently

    run(main())


# -- JWT helper --------------------------------------------------------------------------------


def test_make_jwt_hs256():
    tok = make_jwt("k", "alice", 60, now=1000, aud="tether")
    h, p, sig = tok.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(h))) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(base64.urlsafe_b64decode(pad(p))) == {"sub": "alice", "iat": 1000, "exp": 1060, "aud": "tether"}
    assert base64.urlsafe_b64decode(pad(sig)) == hmac.new(b"k", f"{h}.{p}".encode(), hashlib.sha256).digest()
    assert make_jwt(None, "a", alg="none").endswith(".")
    # §9: domain-separated; ("a", "bc") and ("ab", "c") differ
    assert session_id("bc", "a") != session_id("c", "ab")
    assert session_id("alice") == hashlib.sha256(b"tether-session-v1\x00" + b"\x00\x00\x00\x00"
                                                 + b"\x00\x00\x00\x05alice").hexdigest()


# -- TunnelBridge against FakeRelay ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_python_bridge_against_fake_relay():
    """Flow control, END_STREAM, credit, PING and RESET of the Python bridge, driven frame by frame."""
    body_sizes = {}

    async def handler(stream):
        if stream.path == "/echo":
            await stream.send_response(200, [("content-type", "application/octet-stream")])
            async for piece in stream:
                await stream.send_data(piece)
            await stream.end()
        elif stream.path == "/big":
            n = int(stream.query)
            body_sizes[stream.id] = n
            await stream.send_response(200, [("content-length", str(n))])
            await stream.send_data(b"x" * n, end_stream=True)
        elif stream.path == "/wait":
            await stream.send_response(200)
            await asyncio.sleep(30)

    async def main():
        async with FakeRelay({Setting.STREAM_WINDOW: 100_000, Setting.TUNNEL_WINDOW: 150_000,
                              Setting.MAX_MESSAGE_SIZE: 30_010}) as relay:
            bridge = TunnelBridge(relay.url + "/ws/tunnel", "tok", handler=handler,
                                  settings={Setting.STREAM_WINDOW: 65_536})
            async with bridge:
                conn = await relay.accept()
                assert conn.request_headers["Authorization"] == "Bearer tok"
                assert bridge.peer_settings[Setting.STREAM_WINDOW] == 100_000
                hello = await conn.read_frame()
                assert hello.type == FrameType.HELLO and conn.peer_hello.effective()[Setting.STREAM_WINDOW] == 65_536

                # Echo: request body in, same bytes out; credit returned as the handler reads.
                body = random.Random(5).randbytes(200_000)
                sid = await conn.open("POST", "/echo", [("content-length", str(len(body)))], end_stream=False)

                async def upload():
                    # Slow enough to stay inside the bridge's 65 536-byte stream window, which the
                    # bridge keeps open with WINDOW_UPDATEs as the handler reads.
                    for off in range(0, len(body), 20_000):
                        await conn.send(data_frame(sid, body[off: off + 20_000], end_stream=off + 20_000 >= len(body)))
                        await asyncio.sleep(0.02)
                uploader = asyncio.create_task(upload())
                got = bytearray()
                credit_seen = 0
                while True:
                    f = await conn.read_frame(skip=())
                    if f.type == FrameType.WINDOW_UPDATE:
                        credit_seen += decode_window_update(f.payload)
                        continue
                    if f.type == FrameType.RESPONSE:
                        assert decode_response_head(f.payload).status == 200
                        continue
                    assert f.type == FrameType.DATA and f.stream_id == sid
                    got += f.payload
                    if f.flags & FLAG_END_STREAM:
                        break
                    await conn.send(window_update_frame(sid, len(f.payload)), window_update_frame(0, len(f.payload)))
                await uploader
                assert bytes(got) == body
                assert credit_seen > 0

                # Flow control: 250 000 bytes against a 100 000 stream window; no credit -> stops at 100 000.
                sid = await conn.open("GET", "/big?250000", end_stream=True)
                received = 0
                f = await conn.read_frame()
                assert f.type == FrameType.RESPONSE
                with pytest.raises(asyncio.TimeoutError):
                    while True:
                        f = await conn.read_frame(timeout=0.5)
                        assert f.type == FrameType.DATA and len(f.payload) <= 30_000
                        received += len(f.payload)
                assert received == 100_000
                stream = [s for s in bridge.all_streams if s.id == sid][0]
                assert stream.blocked_event.is_set()
                # The tunnel window (150 000 - 100 000 left) then limits: stream credit alone is not enough.
                await conn.send(window_update_frame(sid, 200_000))
                with pytest.raises(asyncio.TimeoutError):
                    while True:
                        f = await conn.read_frame(timeout=0.5)
                        received += len(f.payload)
                assert received == 150_000
                await conn.send(window_update_frame(0, 200_000))
                while received < 250_000:
                    f = await conn.read_frame()
                    received += len(f.payload)
                assert f.flags & FLAG_END_STREAM and received == 250_000

                # PING is answered with ACK and the same bytes; the bridge's own ping is answered here.
                await conn.send(bytes.fromhex("00000008 07 00 00000000 0102030405060708"))
                f = await conn.read_frame(skip=(FrameType.WINDOW_UPDATE,))
                assert f.type == FrameType.PING and f.flags == 0x02 and f.payload == bytes.fromhex("0102030405060708")
                assert await bridge.ping() < 1.0

                # RESET CANCEL reaches the handler's stream.
                sid = await conn.open("GET", "/wait", end_stream=True)
                f = await conn.read_frame()
                assert f.type == FrameType.RESPONSE
                await conn.send(reset_frame(sid, ErrorCode.CANCEL))
                s = [x for x in bridge.all_streams if x.id == sid][0]
                assert await s.wait_reset(2) == ErrorCode.CANCEL and s.reset_by_peer

                # A handler that returns nothing resets the stream with INTERNAL_ERROR.
                sid = await conn.open("GET", "/nothing", end_stream=True)
                f = await conn.read_frame()
                assert f.type == FrameType.RESET and decode_reset(f.payload)[0] == ErrorCode.INTERNAL_ERROR

                # A flow-control violation by the relay: the bridge closes with 4003.
                sid = await conn.open("POST", "/echo", end_stream=False)
                await conn.send(data_frame(sid, b"z" * 30_000), data_frame(sid, b"z" * 30_000),
                                data_frame(sid, b"z" * 30_000))
                await asyncio.wait_for(conn.closed.wait(), 5)
                assert conn.close_code == 4003
                assert any("flow control" in v for v in bridge.violations)

    run(main())


@pytest.mark.timeout(30)
def test_python_bridge_token_placements_and_close_codes():
    async def main():
        async with FakeRelay() as relay:
            for placement in ("bearer", "query", "subprotocol"):
                async with TunnelBridge(relay.url + "/ws/tunnel", "jwt.x.y", token_placement=placement) as b:
                    conn = await relay.accept()
                    if placement == "bearer":
                        assert conn.request_headers["Authorization"] == "Bearer jwt.x.y"
                    elif placement == "query":
                        assert conn.path.endswith("?token=jwt.x.y")
                    else:
                        assert conn.request_headers["Sec-WebSocket-Protocol"] == "tether.v1, token-jwt.x.y"
                    assert b.subprotocol == "tether.v1"
                    await conn.ws.close(4001, "token expired")
                    code, reason = await b.wait_closed(5)
                    assert (code, reason) == (4001, "token expired")

    run(main())

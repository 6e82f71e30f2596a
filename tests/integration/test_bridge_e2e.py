"""End to end: web client (curl, Python) -> tether-relay -> tether.v1 tunnel -> tether-bridge (Swift)
-> local service (the Ollama stand-in in demo/, or nginx for files and uploads)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import subprocess
import time

import pytest

from async_http import IncompleteResponse, bearer, open_request, request
from tunnel_client import ErrorCode, FakeRelay, FrameType, decode_reset, decode_response_head
from tunnel_fixtures import GiB, MiB, NGINX_SIZES

pytestmark = pytest.mark.timeout(120)

CURL = ["curl", "--silent", "--show-error", "--noproxy", "*"]
BIG_BODY = str(4 * GiB)  # uploads up to 1 GiB stream through; never the relay's body limit here


def run(coro, timeout: float = 100):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sizes_param():
    """NGINX_SIZES names; the 1 GiB one is marked slow (deselect with -m "not slow")."""
    return [pytest.param(n, marks=pytest.mark.slow) if NGINX_SIZES[n] >= GiB else n for n in NGINX_SIZES]


def pattern_bytes(n: int) -> bytes:
    """What the stand-in's GET /bytes/<n> returns (demo/ollama_standin.py pattern_bytes)."""
    out = bytearray()
    i = 0
    while i * MiB < n:
        out += random.Random(f"{n}:{i}").randbytes(min(MiB, n - i * MiB))
        i += 1
    return bytes(out)


def assert_error(r, status: int, code: str) -> None:
    assert r.status == status, f"expected {status} {code}, got {r.describe()}"
    assert r.media_type == "application/json" and r.error_code() == code, r.describe()


@pytest.fixture
def relay(tunnel_relay_factory):
    return tunnel_relay_factory("--max-body-size", BIG_BODY)


@pytest.fixture
def alice(mint_token):
    return mint_token("alice")


@pytest.fixture
def ollama(standin_factory):
    return standin_factory(token_rate=20, tokens=40)


@pytest.fixture
def bridge(bridge_factory, relay, alice, ollama):
    """tether-bridge for alice, target: the stand-in; connected."""
    return bridge_factory(relay, alice, str(ollama))


async def get(relay, path, token, **kw):
    return await request(relay.port, "GET", path, bearer(token), **kw)


# --------------------------------------------------------------------------------------------
# Ollama-shaped traffic
# --------------------------------------------------------------------------------------------


def test_status_endpoint_sees_the_bridge(relay, alice, bridge):
    async def main():
        r = await get(relay, "/api/ollama/bridge/status", alice)
        assert r.status == 200 and r.json() == {"status": "connected", "bridges": 1}, r.describe()

    run(main())


@pytest.mark.parametrize("prefix", ["/api/ollama", "/ollama"])
def test_tags_and_host_rewrite(relay, alice, bridge, ollama, prefix):
    """The stand-in, like Ollama, answers 403 unless Host is its own address: the bridge rewrites Host."""
    async def main():
        r = await get(relay, f"{prefix}/api/tags", alice)
        assert r.status == 200, r.describe()
        assert r.json()["models"][0]["name"] == "standin:latest"
        r = await get(relay, f"{prefix}/headers", alice)
        seen = r.json()
        assert seen["host"] == f"127.0.0.1:{ollama.port}", seen
        names = {k.lower() for k, _ in seen["headers"]}
        assert "authorization" not in names
        assert seen["target"] == "/headers"
        assert ollama.stats()["forbidden_host"] == 0

    run(main())
    out = subprocess.run(CURL + ["--fail", "-H", f"Authorization: Bearer {alice}",
                                 f"http://127.0.0.1:{relay.port}/ollama/api/tags"], capture_output=True, timeout=30)
    assert out.returncode == 0 and b"standin:latest" in out.stdout, out


def test_chat_streams_with_low_per_chunk_delay(relay, alice, bridge):
    async def main():
        body = json.dumps({"model": "standin", "messages": [{"role": "user", "content": "hi"}]}).encode()
        rs = await open_request(relay.port, "POST", "/api/ollama/api/chat",
                                {**bearer(alice), "Content-Type": "application/json"}, body)
        assert rs.status == 200 and (rs.header("content-type") or "").startswith("application/x-ndjson")
        delays, objs = [], []
        async for line, arrived in rs.iter_lines():
            o = json.loads(line)
            objs.append(o)
            delays.append(arrived - o["emitted_at"])
        rs.close()
        assert len(objs) == 41 and objs[-1]["done"] is True and not any(o["done"] for o in objs[:-1])
        assert "".join(o["message"]["content"] for o in objs).startswith("The quick brown fox")
        assert max(delays) < 0.050, f"per-chunk delays (ms): {[round(d * 1000, 1) for d in delays]}"
        # Paced by the stand-in (20 tokens/s), not delivered in one burst at the end.
        assert objs[-1]["emitted_at"] - objs[0]["emitted_at"] > 1.5

    run(main())


def test_generate_stream_false_gives_one_object(relay, alice, bridge):
    async def main():
        r = await request(relay.port, "POST", "/api/ollama/api/generate", bearer(alice),
                          json.dumps({"prompt": "x", "stream": False, "options": {"num_predict": 5,
                                                                                  "standin_token_rate": 100}}).encode())
        assert r.status == 200 and r.json()["done"] is True and r.json()["response"], r.describe()

    run(main())


def test_openai_sse_stream(relay, alice, bridge):
    async def main():
        body = json.dumps({"model": "standin", "stream": True, "max_tokens": 30,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        rs = await open_request(relay.port, "POST", "/ollama/v1/chat/completions",
                                {**bearer(alice), "Content-Type": "application/json"}, body)
        assert rs.status == 200 and (rs.header("content-type") or "").startswith("text/event-stream")
        events, delays = [], []
        async for line, arrived in rs.iter_lines():
            if not line:
                continue
            assert line.startswith(b"data: "), line
            data = line[6:]
            events.append(data)
            if data != b"[DONE]":
                delays.append(arrived - json.loads(data)["emitted_at"])
        rs.close()
        assert events[-1] == b"[DONE]" and len(events) == 32
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
        assert max(delays) < 0.050, f"per-event delays (ms): {[round(d * 1000, 1) for d in delays]}"

    run(main())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_200_concurrent_streams(relay, alice, bridge):
    rnd = random.Random(7)
    sizes = [rnd.choice([0, 1, 1000, 65_536, 300_000, 1_048_577]) for _ in range(150)]

    async def download(n):
        r = await get(relay, f"/api/ollama/bytes/{n}", alice, timeout=90)
        assert r.status == 200 and len(r.body) == n and r.body == pattern_bytes(n), f"/bytes/{n}: {r.status}"

    async def chat(i):
        body = json.dumps({"messages": [], "options": {"num_predict": 10, "standin_token_rate": 50}}).encode()
        r = await request(relay.port, "POST", "/api/ollama/api/chat", bearer(alice), body, timeout=90)
        lines = r.body.splitlines()
        assert r.status == 200 and len(lines) == 11 and json.loads(lines[-1])["done"]

    async def echo(i):
        data = random.Random(i).randbytes(200_000 + i)
        r = await request(relay.port, "POST", "/api/ollama/echo", bearer(alice), data, timeout=90)
        assert r.status == 200 and r.body == data

    async def main():
        await asyncio.gather(*[download(n) for n in sizes], *[chat(i) for i in range(30)],
                             *[echo(i) for i in range(20)])

    run(main(), timeout=110)


@pytest.mark.parametrize("path", ["/api/ollama/hold", "/api/ollama/slow?chunks=200&interval=0.05",
                                  "/api/ollama/api/chat"])
def test_web_client_disconnect_reaches_the_local_service(relay, alice, bridge, ollama, path):
    async def main():
        before = ollama.stats()["disconnects"]
        method, body = ("POST", b'{"messages":[]}') if path.endswith("chat") else ("GET", None)
        rs = await open_request(relay.port, method, path, bearer(alice), body)
        assert rs.status == 200
        assert await rs.read_chunk()
        rs.abort()
        t0 = time.monotonic()
        while ollama.stats()["disconnects"] <= before:
            assert time.monotonic() - t0 < 2.0, f"stand-in saw no disconnect: {ollama.stats()}"
            await asyncio.sleep(0.05)
        # The tunnel is fine afterwards.
        assert (await get(relay, "/api/ollama/api/tags", alice)).status == 200

    run(main())


def test_local_service_down_is_502(relay, alice, bridge, ollama):
    async def main():
        ollama.stop()
        r = await get(relay, "/api/ollama/api/tags", alice, timeout=30)
        assert_error(r, 502, "LOCAL_SERVICE_ERROR")

    run(main())


def test_bridge_killed_mid_stream(relay, alice, bridge):
    async def main():
        rs = await open_request(relay.port, "GET", "/api/ollama/slow?chunks=400&interval=0.05", bearer(alice))
        assert rs.status == 200
        assert await rs.read_chunk()
        bridge.kill(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(IncompleteResponse):
            await asyncio.wait_for(rs.read_all(), 5)
        assert time.monotonic() - t0 < 1.0
        rs.close()
        r = await get(relay, "/api/ollama/api/tags", alice)
        assert_error(r, 503, "TUNNEL_NOT_AVAILABLE")

    run(main())


@pytest.mark.timeout(90)
def test_relay_restart_bridge_reconnects(relay, alice, bridge):
    async def main():
        assert (await get(relay, "/api/ollama/api/tags", alice)).status == 200

    run(main())
    assert relay.stop(signal.SIGTERM) == 0
    bridge.wait_status("connected", timeout=10, negate=True)  # it notices
    time.sleep(1.0)
    assert bridge.alive(), "tether-bridge exited while the relay was down"
    relay.start_again()
    waited = bridge.wait_status("connected", timeout=45)
    assert bridge.alive()

    async def again():
        deadline = time.monotonic() + 5
        while True:
            r = await get(relay, "/api/ollama/api/tags", alice)
            if r.status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert r.status == 200, f"after reconnect ({waited:.1f}s): {r.describe()}"

    run(again())


@pytest.mark.parametrize("case", ["bad-signature", "expired", "garbage"])
def test_bad_token_exits_2(bridge_factory, relay, mint_token, ollama, case):
    tok = {"bad-signature": mint_token("alice", secret="wrong"), "expired": mint_token("alice", ttl=-60),
           "garbage": "not.a.token"}[case]
    b = bridge_factory(relay, tok, str(ollama), wait_connected=False)
    rc = b.wait_exit(timeout=20)
    b.expected_exit = True
    assert rc == 2, f"tether-bridge exited with {rc} on a rejected token\n{b.stderr_tail()}"
    assert b.status() != "connected"


def test_bridge_sigterm_leaves_cleanly(relay, alice, bridge):
    async def status():
        return (await get(relay, "/api/ollama/bridge/status", alice)).json()

    assert run(status())["bridges"] == 1
    rc = bridge.stop(timeout=10)
    assert rc == 0, f"tether-bridge exited with {rc} on SIGTERM\n{bridge.stderr_tail()}"
    assert run(status()) == {"status": "disconnected", "bridges": 0}


def test_bridge_refuses_absolute_form_targets(bridge_factory, mint_token, ollama):
    """A (compromised) relay must not turn the bridge into an open proxy: only origin-form
    targets on the configured local service are served."""
    tok = mint_token("alice")

    async def main():
        async with FakeRelay() as fake:
            b = await asyncio.to_thread(bridge_factory, fake.url, tok, str(ollama), wait_connected=False)
            conn = await fake.accept(timeout=15)
            hello = await conn.read_frame(timeout=5)
            assert hello.type == FrameType.HELLO and conn.peer_hello.version == 1
            await asyncio.to_thread(b.wait_status, "connected", 15)
            # Control: an origin-form target works.
            sid = await conn.open("GET", "/api/tags", [("host", "relay.example")])
            f = await conn.read_frame(timeout=10)
            assert f.type == FrameType.RESPONSE and f.stream_id == sid
            assert decode_response_head(f.payload).status == 200
            await asyncio.sleep(0.3)
            served = ollama.served()
            for target in (f"http://127.0.0.1:{ollama.port}/api/tags", "http://169.254.169.254/latest/meta-data/",
                           "https://example.com/", "//example.com/x", "example.com:443", "*"):
                method = "CONNECT" if target == "example.com:443" else ("OPTIONS" if target == "*" else "GET")
                sid = await conn.open(method, target, [("host", "example.com")])
                while True:
                    f = await conn.read_frame(timeout=10)
                    if f.stream_id == sid:
                        break
                assert f.type == FrameType.RESET, f"{method} {target}: bridge answered {f!r}"
                code, _ = decode_reset(f.payload)
                assert code == ErrorCode.DESTINATION_REFUSED, f"{method} {target}: RESET code {code}"
            assert b.alive()
            assert ollama.served() == served, "a refused target reached the local service"

    run(main(), timeout=60)


# --------------------------------------------------------------------------------------------
# Files and uploads through nginx
# --------------------------------------------------------------------------------------------


@pytest.fixture
def files_bridge(bridge_factory, relay, mint_token, nginx):
    """bob's tether-bridge, target: nginx."""
    tok = mint_token("bob")
    b = bridge_factory(relay, tok, nginx.url)
    b.token = tok
    return b


def curl_sha256(url: str, token: str, timeout: float) -> tuple[int, str, int]:
    """Download with curl, hashing the stream as it comes (never held in memory)."""
    p = subprocess.Popen(CURL + ["--fail", "--max-time", str(int(timeout)), "-H", f"Authorization: Bearer {token}",
                                 url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    h, n = hashlib.sha256(), 0
    while True:
        b = p.stdout.read(4 * MiB)
        if not b:
            break
        h.update(b)
        n += len(b)
    rc = p.wait(timeout)
    return rc, h.hexdigest(), n


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sizes_param())
def test_download_byte_exact(relay, nginx, files_bridge, name):
    info = nginx.files[name]
    t0 = time.monotonic()
    rc, digest, n = curl_sha256(f"http://127.0.0.1:{relay.port}/api/ollama/files/{name}", files_bridge.token, 280)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"curl exit {rc}"
    assert n == info.size, f"got {n} bytes of {info.size}"
    assert digest == info.sha256
    if info.size >= 64 * MiB:
        print(f"{name}: {info.size / MiB / elapsed:.0f} MiB/s through relay + bridge")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sizes_param())
def test_upload_byte_exact(relay, nginx_uploads, files_bridge, name):
    nginx = nginx_uploads
    info = nginx.files[name]
    out = subprocess.run(CURL + ["--fail", "--max-time", "280", "-T", str(info.path), "-o", "/dev/null",
                                 "-w", "%{http_code}", "-H", f"Authorization: Bearer {files_bridge.token}",
                                 f"http://127.0.0.1:{relay.port}/ollama/upload/in/{name}"],
                         capture_output=True, text=True, timeout=290)
    assert out.returncode == 0, out.stderr
    assert out.stdout in ("201", "204"), out.stdout
    stored = nginx.uploaded(f"in/{name}")
    assert stored.stat().st_size == info.size
    h = hashlib.sha256()
    with open(stored, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    assert h.hexdigest() == info.sha256


def test_download_while_chatting_other_user(relay, nginx, files_bridge, bridge, alice):
    """Two users, two bridges, two local services: a big download does not delay the other's tokens."""
    async def main():
        dl = asyncio.create_task(asyncio.to_thread(curl_sha256, f"http://127.0.0.1:{relay.port}/api/ollama/files/"
                                                   "64MiB.bin", files_bridge.token, 60))
        rs = await open_request(relay.port, "POST", "/api/ollama/api/chat", bearer(alice),
                                b'{"messages":[],"options":{"num_predict":20}}')
        delays = []
        async for line, arrived in rs.iter_lines():
            delays.append(arrived - json.loads(line)["emitted_at"])
        rs.close()
        rc, digest, n = await dl
        assert rc == 0 and digest == nginx.files["64MiB.bin"].sha256
        assert max(delays) < 0.050, [round(d * 1000, 1) for d in delays]

    run(main())


def test_bob_cannot_reach_alices_service(relay, files_bridge, bridge, alice, ollama):
    async def main():
        r = await get(relay, "/api/ollama/api/tags", files_bridge.token)  # bob -> nginx, not the stand-in
        assert r.status == 404, r.describe()
        r = await get(relay, "/api/ollama/files/1KiB.bin", alice)  # alice -> stand-in, not nginx
        assert r.status == 404, r.describe()

    run(main())



@pytest.mark.timeout(60)
def test_bridge_over_wss(tunnel_relay_factory, certs, bridge_factory, mint_token, standin_factory):
    """wss:// to the relay's TLS listener (the tunnel is handed to its session's worker with its
    TLS state); the bridge trusts the test CA only through --ca-file."""
    relay = tunnel_relay_factory(tls=certs.a)
    ollama = standin_factory(token_rate=50, tokens=5)
    alice, bob = mint_token("alice"), mint_token("bob")
    bridge_factory(f"wss://127.0.0.1:{relay.tls_port}", alice, str(ollama), "--ca-file", str(certs.ca))

    async def main():
        for _ in range(4):  # several keep-alive-less requests: each may land on another worker
            r = await get(relay, "/api/ollama/api/tags", alice)
            assert r.status == 200, r.describe()
            assert r.json()["models"][0]["name"] == "standin:latest"

    run(main())
    # Without the CA the relay's certificate is refused: the bridge keeps retrying, never connects.
    untrusted = bridge_factory(f"wss://127.0.0.1:{relay.tls_port}", bob, str(ollama), wait_connected=False)
    time.sleep(2.5)
    assert untrusted.alive()
    assert untrusted.status() != "connected"

    async def bob_has_no_bridge():
        r = await get(relay, "/api/ollama/bridge/status", bob)
        assert r.status == 200 and r.json()["status"] == "disconnected", r.describe()

    run(bob_has_no_bridge())

"""tether-bridge's HTTP client towards the local service, seen from both ends: a scripted local
service (raw sockets, so it can misbehave precisely and count connections) behind the bridge,
and in front of it either the real relay with an HTTP client, or FakeRelay speaking tether.v1
frame by frame (RESET codes and flow control are visible there)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from async_http import bearer, open_request, request
from tunnel_client import (ErrorCode, FakeRelay, FrameType, Setting, data_frame, decode_reset, decode_response_head,
                           reset_frame, window_update_frame)
from tunnel_fixtures import MiB

pytestmark = pytest.mark.timeout(90)


def run(coro, timeout: float = 80):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def pattern(n: int, seed: int = 7) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


# --------------------------------------------------------------------------------------------
# The scripted local service
# --------------------------------------------------------------------------------------------


class Conn:
    def __init__(self, number: int, sock: socket.socket):
        self.number = number
        self.sock = sock
        self.requests: list[tuple[str, str]] = []
        self.peer_closed = threading.Event()
        self.drop_next = False
        self.buf = b""


class ScriptedService:
    """HTTP/1.1 on a loopback port, one thread per connection. Paths:
      /ok                 200, Content-Length, body "ok <connection> <request on it>"
      /close              200 with Connection: close, then closes
      /close-open         200 with Connection: close, but leaves the socket open
      /stall?chunks=N&interval=S[&head=0]   head (unless head=0), N chunks S apart, then silence
      /hold               head + one chunk, then silence
      /eof                200 without framing: the body ends when the connection closes
      /chunks?n=K         chunked body of K chunks
      /status/<code>      that status, no body (204, 304) or a short one
      /early-hints        103 and 100 before the 200
      /garbage, /status600   invalid responses
      /drop-next          200; the next request on this connection is dropped (closed, no answer)
      /echo-hash          reads the body: {"sha256", "length", "framing"}
      /noread             reads the body only after `release_noread` is set, then as /echo-hash
      /flood?bytes=N      N pattern() bytes as fast as the socket takes them (`flood_written`)
    HEAD gets the GET head without a body."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns: list[Conn] = []
        self.dropped = 0
        self.release_noread = threading.Event()
        self.noread_started = threading.Event()
        self.flood_written = 0
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.conns)

    def wait_peer_closed(self, number: int, timeout: float = 5.0) -> float:
        t0 = time.monotonic()
        assert self.conns[number].peer_closed.wait(timeout), f"connection {number} still open after {timeout}s"
        return time.monotonic() - t0

    def stop(self):
        self.stopping = True
        self.lsock.close()
        for c in self.conns:
            try:
                c.sock.close()
            except OSError:
                pass

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            if self.tls:
                try:
                    s = self.tls.wrap_socket(s, server_side=True)
                except (OSError, ssl.SSLError):
                    s.close()
                    continue
            with self.lock:
                c = Conn(len(self.conns), s)
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    # -- reading ---------------------------------------------------------------------------

    def _fill(self, c: Conn) -> bool:
        try:
            b = c.sock.recv(65536)
        except OSError:
            b = b""
        if not b:
            c.peer_closed.set()
            return False
        c.buf += b
        return True

    def _read_until(self, c: Conn, marker: bytes) -> bytes | None:
        while marker not in c.buf:
            if not self._fill(c):
                return None
        out, c.buf = c.buf.split(marker, 1)
        return out

    def _read_exact(self, c: Conn, n: int) -> bytes | None:
        while len(c.buf) < n:
            if not self._fill(c):
                return None
        out, c.buf = c.buf[:n], c.buf[n:]
        return out

    def _read_body(self, c: Conn, headers: dict) -> tuple[bytes, str]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                line = self._read_until(c, b"\r\n")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    self._read_until(c, b"\r\n")
                    return body, "chunked"
                body += self._read_exact(c, size)
                self._read_exact(c, 2)
        n = int(headers.get("content-length", "0"))
        return self._read_exact(c, n) or b"", "length" if "content-length" in headers else "none"

    # -- writing ---------------------------------------------------------------------------

    @staticmethod
    def _head(status: int, headers: list[tuple[str, str]], reason: str = "X") -> bytes:
        return (f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode()

    def _send(self, c: Conn, data: bytes) -> bool:
        try:
            c.sock.sendall(data)
            return True
        except OSError:
            return False

    def _wait_peer_close(self, c: Conn):
        while self._fill(c):
            pass

    # -- serving ---------------------------------------------------------------------------

    def _serve(self, c: Conn):
        try:
            while True:
                head = self._read_until(c, b"\r\n\r\n")
                if head is None:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                c.requests.append((method, target))
                if c.drop_next:
                    with self.lock:
                        self.dropped += 1
                    c.sock.close()
                    c.peer_closed.set()
                    return
                if not self._respond(c, method, target, headers):
                    return
        finally:
            try:
                c.sock.close()
            except OSError:
                pass

    def _respond(self, c: Conn, method: str, target: str, headers: dict) -> bool:
        """False: the connection is done."""
        u = urlsplit(target)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        path = u.path
        head_only = method == "HEAD"
        body_in = b""
        framing = "none"
        if path not in ("/noread",):
            body_in, framing = self._read_body(c, headers)

        def simple(status, body: bytes, extra=()):
            h = [("Content-Length", str(len(body))), *extra]
            return self._send(c, self._head(status, h) + (b"" if head_only else body))

        if path in ("/ok", "/drop-next"):
            if path == "/drop-next":
                c.drop_next = True
            return simple(200, f"ok {c.number} {len(c.requests)}".encode(), [("Content-Type", "text/plain")])
        if path == "/headers":
            return simple(200, json.dumps({"host": headers.get("host"), "headers": headers}).encode())
        if path == "/close":
            simple(200, b"closing", [("Connection", "close")])
            return False
        if path == "/close-open":
            simple(200, b"closing, eventually", [("Connection", "close")])
            self._wait_peer_close(c)
            return False
        if path in ("/stall", "/hold"):
            chunks = int(q.get("chunks", "1")) if path == "/stall" else 1
            interval = float(q.get("interval", "0"))
            if q.get("head", "1") != "0":
                self._send(c, self._head(200, [("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")]))
                for i in range(chunks):
                    if i:
                        time.sleep(interval)
                    if not self._send(c, f"6\r\nchunk{i % 10}\r\n".encode()):
                        return False
            self._wait_peer_close(c)
            return False
        if path == "/eof":
            self._send(c, self._head(200, [("Content-Type", "text/plain")]) + b"until the end" * 100)
            return False
        if path == "/chunks":
            n = int(q.get("n", "3"))
            out = self._head(200, [("Transfer-Encoding", "chunked")])
            for i in range(n):
                piece = f"piece {i};".encode()
                out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
            return self._send(c, out + b"0\r\n\r\n")
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            if code in (204, 304):
                return self._send(c, self._head(code, [("X-Status", str(code))]))
            return simple(code, b"status")
        if path == "/early-hints":
            return self._send(c, self._head(103, [("Link", "</x.css>; rel=preload")]) + self._head(100, [])
                              + self._head(200, [("Content-Length", "5")]) + b"hints")
        if path == "/garbage":
            self._send(c, b"NOT HTTP AT ALL\r\n\r\n")
            self._wait_peer_close(c)
            return False
        if path == "/status600":
            return simple(600, b"weird")
        if path == "/echo-hash":
            return simple(200, json.dumps({"sha256": hashlib.sha256(body_in).hexdigest(), "length": len(body_in),
                                           "framing": framing}).encode())
        if path == "/noread":
            self.noread_started.set()
            self.release_noread.wait(60)
            body_in, framing = self._read_body(c, headers)
            return simple(200, json.dumps({"sha256": hashlib.sha256(body_in).hexdigest(), "length": len(body_in),
                                           "framing": framing}).encode())
        if path == "/flood":
            n = int(q["bytes"])
            data = pattern(n)
            if not self._send(c, self._head(200, [("Content-Length", str(n))])):
                return False
            for off in range(0, n, 65536):
                if not self._send(c, data[off:off + 65536]):
                    return False
                with self.lock:
                    self.flood_written = off + len(data[off:off + 65536])
            return True
        return simple(404, b"no such path")


@pytest.fixture
def service():
    s = ScriptedService()
    yield s
    s.stop()


@pytest.fixture
def relay(tunnel_relay_factory):
    return tunnel_relay_factory()


@pytest.fixture
def alice(mint_token):
    return mint_token("alice")


def api(path: str) -> str:
    return "/api/ollama" + path


async def get(relay, path, token, method="GET", **kw):
    return await request(relay.port, method, api(path), bearer(token), **kw)


def assert_error(r, status: int, code: str) -> None:
    assert r.status == status, f"expected {status} {code}, got {r.describe()}"
    assert r.error_code() == code, r.describe()


async def read_stream(conn, sid: int, timeout: float = 10.0):
    """Frames of stream `sid` until END_STREAM or RESET: (head, body, reset or None)."""
    head, body = None, b""
    while True:
        f = await conn.read_frame(timeout=timeout)
        if f.stream_id != sid:
            continue
        if f.type == FrameType.RESPONSE:
            head = decode_response_head(f.payload)
            if f.end_stream:
                return head, body, None
        elif f.type == FrameType.DATA:
            body += f.payload
            if f.end_stream:
                return head, body, None
        elif f.type == FrameType.RESET:
            return head, body, decode_reset(f.payload)


async def fake_relay_bridge(fake, bridge_factory, token, target, *args):
    b = await asyncio.to_thread(bridge_factory, fake.url, token, target, *args, wait_connected=False)
    conn = await fake.accept(timeout=15)
    hello = await conn.read_frame(timeout=5)
    assert hello.type == FrameType.HELLO
    await asyncio.to_thread(b.wait_status, "connected", 15)
    return b, conn


# --------------------------------------------------------------------------------------------
# Connection reuse
# --------------------------------------------------------------------------------------------


def test_keepalive_connections_are_reused_and_bounded(relay, alice, service, bridge_factory):
    """Sequential requests share one local connection; concurrent ones use at most --max-streams."""
    bridge_factory(relay, alice, service.url, "--max-streams", "4")

    async def main():
        for i in range(20):
            r = await get(relay, "/ok", alice)
            assert r.status == 200 and r.body == f"ok 0 {i + 1}".encode(), r.describe()
        assert service.accepted == 1
        for _ in range(3):
            rs = await asyncio.gather(*[get(relay, "/chunks?n=50", alice) for _ in range(4)])
            assert all(r.status == 200 and r.body.count(b"piece") == 50 for r in rs), [r.describe() for r in rs]
        assert service.accepted <= 4, service.accepted

    run(main())


def test_connection_close_answer_is_not_reused(relay, alice, service, bridge_factory):
    bridge_factory(relay, alice, service.url)

    async def main():
        r = await get(relay, "/close-open", alice)
        assert r.status == 200 and r.body == b"closing, eventually", r.describe()
        assert r.header("connection") in (None, "keep-alive"), "a hop-by-hop header reached the client"
        # The service left its socket open: the bridge closes it, and does not send the next request there.
        service.wait_peer_closed(0, 5)
        r = await get(relay, "/ok", alice)
        assert r.status == 200 and r.body == b"ok 1 1", r.describe()
        r = await get(relay, "/close", alice)  # this time the service closes first
        assert r.status == 200 and r.body == b"closing", r.describe()
        r = await get(relay, "/ok", alice)
        assert r.status == 200 and r.body == b"ok 2 1", r.describe()
        assert service.accepted == 3

    run(main())


def test_idle_pooled_connections_are_closed(relay, alice, service, bridge_factory):
    bridge_factory(relay, alice, service.url, "--local-pool-idle-timeout", "1")

    async def main():
        assert (await get(relay, "/ok", alice)).body == b"ok 0 1"
        waited = await asyncio.to_thread(service.wait_peer_closed, 0, 5)
        assert 0.5 < waited < 3.5, waited
        assert (await get(relay, "/ok", alice)).body == b"ok 1 1"

    run(main())


def test_cancelled_stream_connection_is_closed_not_reused(bridge_factory, mint_token, service):
    async def main():
        async with FakeRelay() as fake:
            _, conn = await fake_relay_bridge(fake, bridge_factory, mint_token("alice"), service.url)
            sid = await conn.open("GET", "/hold", [("host", "relay.example")])
            f = await conn.read_frame(timeout=10)
            assert f.type == FrameType.RESPONSE and f.stream_id == sid
            f = await conn.read_frame(timeout=10)
            assert f.type == FrameType.DATA and f.payload == b"chunk0"
            await conn.send(reset_frame(sid, ErrorCode.CANCEL, "client went away"))
            await asyncio.to_thread(service.wait_peer_closed, 0, 3)
            sid = await conn.open("GET", "/ok", [("host", "relay.example")])
            head, body, reset = await read_stream(conn, sid)
            assert reset is None and head.status == 200 and body == b"ok 1 1"
            assert service.accepted == 2

    run(main())


def test_stale_keepalive_connection(relay, alice, service, bridge_factory):
    """The service closes a kept-alive connection as the next request arrives: a GET goes out
    again on a new connection, a POST (not idempotent) fails with LOCAL_SERVICE_ERROR."""
    bridge_factory(relay, alice, service.url)

    async def main():
        assert (await get(relay, "/drop-next", alice)).body == b"ok 0 1"
        r = await get(relay, "/ok", alice)
        assert r.status == 200 and r.body == b"ok 1 1", r.describe()
        assert service.dropped == 1
        assert (await get(relay, "/drop-next", alice, method="POST", body=b"x")).body == b"ok 1 2"
        r = await get(relay, "/ok", alice, method="POST", body=b"y")
        assert_error(r, 502, "LOCAL_SERVICE_ERROR")
        assert service.dropped == 2 and service.accepted == 2

    run(main())


# --------------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------------


def test_response_framings(relay, alice, service, bridge_factory):
    """HEAD, 204, 304, chunked, interim 1xx and read-until-close responses: complete, and the
    keep-alive connection serves the next request afterwards (except after read-until-close)."""
    bridge_factory(relay, alice, service.url)

    async def main():
        r = await get(relay, "/ok", alice, method="HEAD")
        assert r.status == 200 and r.body == b"" and r.header("content-length") == "6", r.describe()
        for code in (204, 304):
            r = await get(relay, f"/status/{code}", alice)
            assert r.status == code and r.body == b"" and r.header("x-status") == str(code), r.describe()
        r = await get(relay, "/chunks?n=40", alice)
        assert r.status == 200 and r.body == b"".join(f"piece {i};".encode() for i in range(40)), r.describe()
        r = await get(relay, "/early-hints", alice)
        assert r.status == 200 and r.body == b"hints", r.describe()
        r = await get(relay, "/ok", alice)
        assert r.body == b"ok 0 6", r.describe()
        assert service.accepted == 1
        r = await get(relay, "/eof", alice)
        assert r.status == 200 and r.body == b"until the end" * 100, r.describe()
        r = await get(relay, "/ok", alice)
        assert r.body == b"ok 1 1", r.describe()

    run(main())


@pytest.mark.parametrize("path", ["/garbage", "/status600"])
def test_invalid_response_is_local_service_error(relay, alice, service, bridge_factory, path):
    bridge = bridge_factory(relay, alice, service.url)

    async def main():
        r = await get(relay, path, alice)
        assert_error(r, 502, "LOCAL_SERVICE_ERROR")
        assert (await get(relay, "/ok", alice)).status == 200
        assert bridge.alive()

    run(main())


def test_request_body_framing(relay, alice, service, bridge_factory):
    """A body with a length goes out with that Content-Length; one without (chunked from the
    client) goes out chunked; an empty POST carries Content-Length: 0."""
    bridge_factory(relay, alice, service.url)
    data = pattern(300_000)

    async def pieces():
        for off in range(0, len(data), 70_000):
            yield data[off:off + 70_000]
            await asyncio.sleep(0.01)

    async def main():
        r = await get(relay, "/echo-hash", alice, method="POST", body=data)
        assert r.status == 200 and r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data),
                                                "framing": "length"}, r.describe()
        r = await get(relay, "/echo-hash", alice, method="POST", body_stream=pieces())
        assert r.status == 200, r.describe()
        assert r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data), "framing": "chunked"}
        r = await get(relay, "/echo-hash", alice, method="POST", body=b"")
        assert r.status == 200 and r.json()["framing"] == "length" and r.json()["length"] == 0, r.describe()
        r = await get(relay, "/headers", alice)
        seen = r.json()
        assert seen["host"] == f"127.0.0.1:{service.port}" and "transfer-encoding" not in seen["headers"], seen
        assert "content-length" not in seen["headers"], seen

    run(main())


# --------------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------------


def test_slow_then_stalled_answer_is_local_timeout(bridge_factory, mint_token, service):
    """--local-idle-timeout is about silence, not total time: chunks 0.5 s apart for 2 s pass
    a 1.2 s timeout; the silence after them ends the stream with LOCAL_TIMEOUT."""
    async def main():
        async with FakeRelay() as fake:
            _, conn = await fake_relay_bridge(fake, bridge_factory, mint_token("alice"), service.url,
                                              "--local-idle-timeout", "1.2")
            sid = await conn.open("GET", "/stall?chunks=5&interval=0.5", [("host", "relay.example")])
            t0 = time.monotonic()
            head, body, reset = await read_stream(conn, sid, timeout=10)
            elapsed = time.monotonic() - t0
            assert head.status == 200 and body == b"chunk0chunk1chunk2chunk3chunk4", body
            assert reset is not None and reset[0] == ErrorCode.LOCAL_TIMEOUT, reset
            assert 2.0 + 1.0 < elapsed < 2.0 + 3.0, elapsed
            await asyncio.to_thread(service.wait_peer_closed, 0, 3)

    run(main())


def test_no_answer_is_504_local_timeout(relay, alice, service, bridge_factory):
    bridge_factory(relay, alice, service.url, "--local-idle-timeout", "1")

    async def main():
        t0 = time.monotonic()
        r = await get(relay, "/stall?head=0", alice, timeout=20)
        assert_error(r, 504, "LOCAL_TIMEOUT")
        assert 0.8 < time.monotonic() - t0 < 4
        assert (await get(relay, "/ok", alice)).status == 200

    run(main())


def test_connect_timeout(relay, alice, bridge_factory):
    """A service whose accept queue is full never completes the handshake: after
    --local-connect-timeout the stream fails with LOCAL_SERVICE_ERROR."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue (backlog 0 still admits one or two)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    try:
        bridge_factory(relay, alice, f"http://127.0.0.1:{port}", "--local-connect-timeout", "1")

        async def main():
            t0 = time.monotonic()
            r = await get(relay, "/ok", alice, timeout=20)
            elapsed = time.monotonic() - t0
            assert_error(r, 502, "LOCAL_SERVICE_ERROR")
            assert 0.8 < elapsed < 5, elapsed

        run(main())
    finally:
        for s in fillers:
            s.close()
        lsock.close()


# --------------------------------------------------------------------------------------------
# Flow control
# --------------------------------------------------------------------------------------------


def test_response_backpressure(bridge_factory, mint_token, service):
    """With the tunnel's stream window closed the bridge stops reading the local socket (the
    service's writes stall), and the idle timeout does not count that time; granting window
    brings the rest, byte-exact."""
    total = 64 * MiB
    window = 256 * 1024

    async def main():
        async with FakeRelay({Setting.STREAM_WINDOW: window, Setting.TUNNEL_WINDOW: 1 << 30}) as fake:
            _, conn = await fake_relay_bridge(fake, bridge_factory, mint_token("alice"), service.url,
                                              "--local-idle-timeout", "1")
            sid = await conn.open("GET", f"/flood?bytes={total}", [("host", "relay.example")])
            got = bytearray()
            f = await conn.read_frame(timeout=10)
            assert f.type == FrameType.RESPONSE
            while len(got) < window:
                f = await conn.read_frame(timeout=10)
                assert f.type == FrameType.DATA, f
                got += f.payload
            assert len(got) == window
            await asyncio.sleep(2.5)  # over the idle timeout: no RESET, the bridge waits for us
            while not conn.frames.empty():
                f = conn.frames.get_nowait()
                assert f.type in (FrameType.PING, FrameType.WINDOW_UPDATE), f"{f!r} while the window was closed"
            stalled = service.flood_written
            await asyncio.sleep(0.5)
            assert service.flood_written == stalled, "the service kept writing: the bridge did not stop reading"
            assert stalled < 24 * MiB, f"the bridge read {stalled} bytes with a {window}-byte window"
            credited = window
            while True:
                if credited - len(got) < window // 2:
                    await conn.send(window_update_frame(sid, window), window_update_frame(0, window))
                    credited += window
                f = await conn.read_frame(timeout=10)
                assert f.stream_id == sid and f.type == FrameType.DATA, f
                got += f.payload
                if f.end_stream:
                    break
            assert len(got) == total and bytes(got) == pattern(total)

    run(main(), timeout=80)


def test_request_body_flow_control(bridge_factory, mint_token, service):
    """A local service that does not read: credit stops coming back once the socket buffers are
    full (the bridge holds at most a stream window), and resumes when the service reads."""
    total = 48 * MiB
    data = pattern(total, seed=3)

    async def main():
        async with FakeRelay() as fake:
            _, conn = await fake_relay_bridge(fake, bridge_factory, mint_token("alice"), service.url)
            window = conn.peer_hello.effective()[Setting.STREAM_WINDOW]
            sid = await conn.open("PUT", "/noread", [("host", "relay.example"), ("content-length", str(total))],
                                  end_stream=False)
            sent, credit = 0, window

            async def pump(until_stall: bool):
                nonlocal sent, credit
                while sent < total:
                    if credit > 0:
                        n = min(credit, 256 * 1024, total - sent)
                        await conn.send(data_frame(sid, data[sent:sent + n], end_stream=sent + n == total))
                        sent += n
                        credit -= n
                        continue
                    try:
                        f = await conn.frames.get() if not until_stall else await asyncio.wait_for(conn.frames.get(), 1.5)
                    except asyncio.TimeoutError:
                        return
                    if f.type == FrameType.WINDOW_UPDATE and f.stream_id == sid:
                        credit += int.from_bytes(f.payload, "big")
                    elif f.type in (FrameType.RESET, FrameType.RESPONSE):
                        raise AssertionError(f"unexpected {f!r}")

            assert await asyncio.to_thread(service.noread_started.wait, 10)
            await pump(until_stall=True)
            assert sent < 24 * MiB, f"{sent} bytes credited while the service read nothing"
            service.release_noread.set()
            await pump(until_stall=False)
            head, body, reset = await read_stream(conn, sid, timeout=20)
            assert reset is None and head.status == 200, (head, reset)
            assert json.loads(body) == {"sha256": hashlib.sha256(data).hexdigest(), "length": total,
                                        "framing": "length"}

    run(main(), timeout=80)


# --------------------------------------------------------------------------------------------
# https:// targets
# --------------------------------------------------------------------------------------------


def test_https_target(relay, mint_token, certs, bridge_factory):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.a.cert, certs.a.key)
    service = ScriptedService(tls=ctx)
    alice, bob = mint_token("alice"), mint_token("bob")
    try:
        bridge_factory(relay, alice, service.url, "--target-ca-file", str(certs.ca))
        bridge_factory(relay, bob, service.url)  # the system store does not know the test CA

        async def main():
            for i in range(3):
                r = await get(relay, "/ok", alice)
                assert r.status == 200 and r.body == f"ok 0 {i + 1}".encode(), r.describe()
            r = await get(relay, "/headers", alice)
            assert r.json()["host"] == f"127.0.0.1:{service.port}"
            assert_error(await get(relay, "/ok", bob), 502, "LOCAL_SERVICE_ERROR")

        run(main())
    finally:
        service.stop()

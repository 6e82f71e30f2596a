"""Robustness: garbage input, 1,000 concurrent keep-alive connections, fd and RSS leak checks."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tether_testlib import HOST, Reader, connect, ws_handshake

H = b"Host: 127.0.0.1\r\n"


# -------------------------------------------------------------------------------------------
# Garbage
# -------------------------------------------------------------------------------------------


def _garbage_cases(seed: int, n: int) -> list[bytes]:
    rnd = random.Random(seed)
    cases = []
    for i in range(n):
        kind = i % 4
        if kind == 0:      # pure random bytes
            cases.append(rnd.randbytes(rnd.randint(1, 4096)))
        elif kind == 1:    # random bytes ending like a request head
            cases.append(rnd.randbytes(rnd.randint(1, 2048)) + b"\r\n\r\n")
        elif kind == 2:    # valid request line, garbage header section
            cases.append(b"GET /healthz HTTP/1.1\r\n" + rnd.randbytes(rnd.randint(1, 3000)) + b"\r\n\r\n")
        else:              # printable junk with CRLFs sprinkled in
            alphabet = b"GETPOST /:HTTP1.0\r\n \t;=,abc\x00\x7f"
            cases.append(bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 3000))))
    return cases


def _send_garbage(port: int, data: bytes) -> str:
    """Send data, half-close, and collect the reply until the relay closes. Returns an outcome label."""
    s = connect(port, timeout=10)
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return "closed-early"
        r = Reader(s, timeout=5)
        try:
            extra = r.wait_closed(timeout=5.0)
        except AssertionError as e:
            return f"HUNG: {e} (input {data[:80]!r})"
        if not extra:
            return "closed"
        if not extra.startswith(b"HTTP/1."):
            return f"NON-HTTP reply {extra[:80]!r} to {data[:80]!r}"
        status = int(extra[9:12])
        if not (400 <= status < 600 or status == 200):
            return f"unexpected status {status} for {data[:80]!r}"
        return f"status-{status}"
    finally:
        s.close()


def test_random_garbage_http(relay):
    cases = _garbage_cases(seed=20240601, n=300)
    with ThreadPoolExecutor(max_workers=32) as ex:
        outcomes = list(ex.map(lambda d: _send_garbage(relay.port, d), cases))
    bad = [o for o in outcomes if o.startswith(("HUNG", "NON-HTTP", "unexpected"))]
    assert not bad, f"{len(bad)} bad outcomes, e.g. {bad[:5]}"
    assert relay.alive(), relay.stderr_tail()
    assert relay.healthy()


def test_random_garbage_websocket_frames(relay):
    """Random bytes after a valid upgrade: relay closes (close frame and/or TCP), never hangs or dies."""
    rnd = random.Random(777)

    def one(i):
        s, r, resp = ws_handshake(relay.port)
        try:
            assert resp.status == 101
            try:
                s.sendall(rnd.randbytes(rnd.randint(1, 2000)) if i % 2 else
                          bytes([rnd.choice([0x81, 0x82, 0x01, 0x88, 0x89, 0x8A, 0xC1, 0x83])])
                          + rnd.randbytes(rnd.randint(1, 300)))
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return "closed-early"
            try:
                r.wait_closed(timeout=5.0)
            except AssertionError as e:
                return f"HUNG {e}"
            return "closed"
        finally:
            s.close()

    with ThreadPoolExecutor(max_workers=16) as ex:
        outcomes = list(ex.map(one, range(100)))
    bad = [o for o in outcomes if o.startswith("HUNG")]
    assert not bad, bad[:5]
    assert relay.healthy()


def test_abrupt_disconnects_do_not_leak_fds(relay):
    """Clients that vanish mid-request / mid-frame (RST) must not leak descriptors."""
    _warm_up(relay.port)
    base = relay.fd_count()
    linger_rst = struct.pack("ii", 1, 0)
    for i in range(200):
        if i % 2:
            s = connect(relay.port)
            s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"x" * 5000)
        else:
            s, _, resp = ws_handshake(relay.port)
            s.sendall(b"\x82\xfe\x10\x00abcd" + b"y" * 100)  # partial masked frame
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
        s.close()
    _wait_fds(relay, base)
    assert relay.healthy()


# -------------------------------------------------------------------------------------------
# 1,000 concurrent keep-alive connections, fd and RSS stability
# -------------------------------------------------------------------------------------------

N_CONN = 1000


def _warm_up(port):
    s = connect(port)
    s.sendall(b"GET /healthz HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    Reader(s).read_to_eof()
    s.close()
    time.sleep(0.3)


def _wait_fds(relay, base, slack=4, timeout=10.0):
    deadline = time.monotonic() + timeout
    n = relay.fd_count()
    while time.monotonic() < deadline:
        n = relay.fd_count()
        if n <= base + slack:
            return n
        time.sleep(0.1)
    raise AssertionError(f"relay fd count {n} did not return to baseline {base} (+{slack}) within {timeout}s")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        return status, bytes(body)
    n = int(headers.get(b"content-length", b"0"))
    return status, await reader.readexactly(n)


async def _round(port: int, round_no: int, n: int = N_CONN):
    opened = asyncio.Barrier(n)
    done = asyncio.Barrier(n)
    connect_sem = asyncio.Semaphore(128)  # keep SYN bursts below any listen backlog

    async def one(i):
        async with connect_sem:
            reader, writer = await asyncio.open_connection(HOST, port)
        try:
            await asyncio.wait_for(opened.wait(), 60)          # all n connections open at once
            body = f"round {round_no} conn {i} ".encode() + random.Random(i + 1000 * round_no).randbytes(
                512 + (i * 37) % 4096)
            req = (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body)) + body
            writer.write(req)
            await writer.drain()
            status, got = await asyncio.wait_for(_read_response(reader), 60)
            assert status == 200, f"conn {i}: status {status}"
            assert got == body, f"conn {i}: echo mismatch ({len(got)} vs {len(body)} bytes)"
            await asyncio.wait_for(done.wait(), 60)            # keep-alive: all still open here
            assert not reader.at_eof(), f"conn {i}: relay closed a keep-alive connection"
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 100)


@pytest.mark.slow
def test_1000_concurrent_keepalive_echo_no_fd_or_rss_leak(relay):
    _warm_up(relay.port)
    base_fds = relay.fd_count()

    asyncio.run(_round(relay.port, 1))
    fds1 = _wait_fds(relay, base_fds)
    time.sleep(0.5)
    rss1 = relay.rss_bytes()

    asyncio.run(_round(relay.port, 2))
    fds2 = _wait_fds(relay, base_fds)
    time.sleep(0.5)
    rss2 = relay.rss_bytes()

    limit = rss1 * 1.2 + 8 * 1024 * 1024
    assert rss2 <= limit, (f"relay RSS grew from {rss1 / 2**20:.1f} MiB after round 1 to "
                           f"{rss2 / 2**20:.1f} MiB after round 2 (limit {limit / 2**20:.1f} MiB)")
    assert relay.healthy()
    print(f"fds base={base_fds} r1={fds1} r2={fds2}; rss r1={rss1 / 2**20:.1f}MiB r2={rss2 / 2**20:.1f}MiB")

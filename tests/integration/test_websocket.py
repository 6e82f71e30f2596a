"""WebSocket /ws/echo (RFC 6455): real client (python-websockets) plus raw frames for violations."""

from __future__ import annotations

import asyncio
import random

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tether_testlib import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, assert_json_error, ws_close_payload, ws_expect_close,
    ws_frame, ws_handshake, ws_read_frame,
)

MiB = 1024 * 1024
SIZES = [0, 125, 126, 65535, 65536, 16 * MiB]


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws/echo"


def connect_kwargs(**kw):
    base = dict(compression=None, max_size=64 * MiB, open_timeout=10, close_timeout=10,
                ping_interval=None, proxy=None)
    base.update(kw)
    return base


def text_of_size(n: int, seed: int) -> str:
    """A str whose UTF-8 encoding is exactly n bytes, mixing 1-4 byte code points."""
    rnd = random.Random(seed)
    alphabet = ["a", "Z", "0", " ", "é", "ß", "€", "中", "😀", "𝄞"]
    block = "".join(rnd.choice(alphabet) for _ in range(min(n, 20000)))
    block_len = len(block.encode())
    reps = max(0, (n - 4) // block_len) if block_len else 0
    s = block * reps
    size = block_len * reps
    for ch in block:  # top up with whole code points, then pad with ASCII
        if size + len(ch.encode()) > n:
            break
        s += ch
        size += len(ch.encode())
    s += "x" * (n - size)
    assert len(s.encode()) == n
    return s


async def expect_close_code(url: str, message, code: int, **kw):
    """Send message on a new connection and expect the relay to close it with `code`."""
    ws = await ws_connect(url, **connect_kwargs(**kw))
    try:
        with pytest.raises(ConnectionClosed) as ei:
            await ws.send(message)
            await ws.recv()
        rcvd = ei.value.rcvd
        assert rcvd is not None, f"no close frame received from relay: {ei.value!r}"
        assert rcvd.code == code, f"expected close code {code}, got {rcvd}"
    finally:
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:  # noqa: BLE001 - already closed/aborted
            pass


def run(coro, timeout=90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -------------------------------------------------------------------------------------------
# Echo with the websockets client
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_echo_text_and_binary_sizes(relay, size):
    text = text_of_size(size, size)
    data = random.Random(size).randbytes(size)

    async def main():
        async with ws_connect(ws_url(relay.port), **connect_kwargs()) as ws:
            await ws.send(text)
            got = await ws.recv()
            assert isinstance(got, str), f"text message echoed as {type(got).__name__}"
            assert got == text
            await ws.send(data)
            got = await ws.recv()
            assert isinstance(got, bytes), f"binary message echoed as {type(got).__name__}"
            assert got == data
    run(main())


def test_echo_16mib_multibyte_text(relay):
    text = text_of_size(16 * MiB, 99)

    async def main():
        async with ws_connect(ws_url(relay.port), **connect_kwargs()) as ws:
            await ws.send(text)
            assert await ws.recv() == text
    run(main())


def test_echo_many_messages_in_order(relay):
    async def main():
        async with ws_connect(ws_url(relay.port), **connect_kwargs()) as ws:
            msgs = [f"msg-{i}-" + "x" * (i * 13 % 300) if i % 2 else bytes([i % 256]) * (i * 7 % 500)
                    for i in range(300)]
            for m in msgs:
                await ws.send(m)
            for m in msgs:
                got = await ws.recv()
                assert type(got) is type(m) and got == m
    run(main())


def test_echo_with_permessage_deflate_offered(relay):
    """The client offers permessage-deflate (websockets default); whatever the relay negotiates must work."""
    async def main():
        async with ws_connect(ws_url(relay.port), **connect_kwargs(compression="deflate")) as ws:
            for m in ["hello " * 1000, b"\x00\x01" * 5000]:
                await ws.send(m)
                assert await ws.recv() == m
    run(main())


def test_fragmented_messages_reassembled(relay):
    async def agen():
        for p in [b"\x01" * 10, b"", b"\x02" * 70000, b"\x03"]:
            yield p

    async def main():
        async with ws_connect(ws_url(relay.port), **connect_kwargs()) as ws:
            await ws.send(["héllo ", "wör", "ld 😀"])
            got = await ws.recv()
            assert isinstance(got, str) and got == "héllo wörld 😀"
            await ws.send(agen())
            got = await ws.recv()
            assert isinstance(got, bytes) and got == b"\x01" * 10 + b"\x02" * 70000 + b"\x03"
    run(main())


def test_ping_pong(relay):
    async def main():
        async with ws_connect(ws_url(relay.port), **connect_kwargs()) as ws:
            for data in [b"", b"ping-1", b"z" * 125]:
                waiter = await ws.ping(data)
                await asyncio.wait_for(waiter, 5)
            await ws.send("still echoing")
            assert await ws.recv() == "still echoing"
    run(main())


def test_clean_close_1000(relay):
    async def main():
        async with ws_connect(ws_url(relay.port), **connect_kwargs()) as ws:
            await ws.send("bye")
            assert await ws.recv() == "bye"
            await ws.close(1000, "done")
            assert ws.close_code == 1000, f"close code from relay: {ws.close_code}"
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
            assert ws.protocol.close_rcvd_then_sent is False  # we initiated
    run(main())


def test_oversized_message_default_limit_1009(relay):
    run(expect_close_code(ws_url(relay.port), b"\x00" * (16 * MiB + 1), 1009))


def test_ws_max_message_flag_boundary(relay_factory):
    relay = relay_factory("--ws-max-message", "1000")
    url = ws_url(relay.port)

    async def main():
        async with ws_connect(url, **connect_kwargs()) as ws:
            await ws.send(b"b" * 1000)
            assert await ws.recv() == b"b" * 1000
            await ws.send(["t" * 500, "t" * 500])  # fragmented, exactly at the limit
            assert await ws.recv() == "t" * 1000
        await expect_close_code(url, "t" * 1001, 1009)
        # the limit applies to the reassembled message, not to each fragment
        await expect_close_code(url, [b"f" * 600, b"f" * 600], 1009)
    run(main())


def test_many_concurrent_clients(relay):
    n_clients, n_msgs = 200, 20

    barrier = None

    async def client(i):
        async with ws_connect(ws_url(relay.port), **connect_kwargs(open_timeout=30)) as ws:
            await asyncio.wait_for(barrier.wait(), 60)  # all clients are connected at the same time
            for j in range(n_msgs):
                m = f"client {i} message {j} " + "·" * ((i * j) % 200)
                if j % 2:
                    m = m.encode()
                await ws.send(m)
                got = await ws.recv()
                assert type(got) is type(m) and got == m, f"client {i} msg {j}"
            await ws.close()
            assert ws.close_code == 1000

    async def main():
        nonlocal barrier
        barrier = asyncio.Barrier(n_clients)

        async def guarded(i):
            await asyncio.sleep(i * 0.002)  # stagger connects a little; all 200 overlap in time
            await client(i)
        await asyncio.gather(*(guarded(i) for i in range(n_clients)))
    run(main(), timeout=110)
    assert relay.healthy()


# -------------------------------------------------------------------------------------------
# Raw frames: close codes for violations
# -------------------------------------------------------------------------------------------


def open_raw(relay):
    s, r, resp = ws_handshake(relay.port)
    assert resp.status == 101, resp.describe()
    return s, r


def test_raw_echo_and_close_handshake(relay):
    s, r = open_raw(relay)
    try:
        s.sendall(ws_frame(OP_TEXT, b"raw hello"))
        f = ws_read_frame(r)
        assert not f.masked and f.fin and f.opcode == OP_TEXT and f.payload == b"raw hello"
        s.sendall(ws_frame(OP_PING, b"pp"))
        f = ws_read_frame(r)
        assert f.opcode == OP_PONG and f.payload == b"pp"
        s.sendall(ws_frame(OP_CLOSE, ws_close_payload(1000, "bye")))
        f = ws_read_frame(r)
        assert f.opcode == OP_CLOSE and f.close_code == 1000, f
        r.wait_closed(5)
    finally:
        s.close()


def test_raw_control_frame_interleaved_in_fragmented_message(relay):
    s, r = open_raw(relay)
    try:
        s.sendall(ws_frame(OP_TEXT, b"abc", fin=False) + ws_frame(OP_PING, b"mid")
                  + ws_frame(OP_CONT, b"def", fin=False) + ws_frame(OP_CONT, b"ghi", fin=True))
        frames = [ws_read_frame(r), ws_read_frame(r)]
        pong = [f for f in frames if f.opcode == OP_PONG]
        assert pong and pong[0].payload == b"mid", frames
        data = [f for f in frames if f.opcode != OP_PONG]
        msg = data[0].payload
        op = data[0].opcode
        assert op == OP_TEXT
        f = data[0]
        while not f.fin:
            f = ws_read_frame(r)
            assert f.opcode == OP_CONT
            msg += f.payload
        assert msg == b"abcdefghi"
    finally:
        s.close()


def test_raw_utf8_split_across_fragments_is_valid(relay):
    """'é' = C3 A9 split over two fragments: only the reassembled message must be valid UTF-8."""
    s, r = open_raw(relay)
    try:
        s.sendall(ws_frame(OP_TEXT, b"caf\xc3", fin=False) + ws_frame(OP_CONT, b"\xa9!", fin=True))
        f = ws_read_frame(r)
        msg = f.payload
        while not f.fin:
            f = ws_read_frame(r)
            msg += f.payload
        assert msg.decode("utf-8") == "café!"
    finally:
        s.close()


def test_raw_invalid_utf8_1007(relay):
    s, r = open_raw(relay)
    try:
        s.sendall(ws_frame(OP_TEXT, b"ok \xff\xfe not utf-8"))
        ws_expect_close(s, r, 1007)
    finally:
        s.close()


def test_raw_invalid_utf8_fragmented_1007(relay):
    s, r = open_raw(relay)
    try:
        s.sendall(ws_frame(OP_TEXT, b"abc", fin=False) + ws_frame(OP_CONT, b"\xed\xa0\x80", fin=True))  # surrogate
        ws_expect_close(s, r, 1007)
    finally:
        s.close()


PROTOCOL_ERRORS = {
    "unmasked-frame": lambda: ws_frame(OP_TEXT, b"hello", mask=False),
    "rsv1-set": lambda: ws_frame(OP_TEXT, b"hello", rsv=4),
    "rsv3-set": lambda: ws_frame(OP_BINARY, b"hello", rsv=1),
    "opcode-3": lambda: ws_frame(0x3, b"hello"),
    "opcode-0xB": lambda: ws_frame(0xB, b""),
    "ping-126-bytes": lambda: ws_frame(OP_PING, b"p" * 126),
    "fragmented-ping": lambda: ws_frame(OP_PING, b"p", fin=False),
    "continuation-without-start": lambda: ws_frame(OP_CONT, b"orphan"),
    "new-message-inside-fragmented": lambda: ws_frame(OP_TEXT, b"a", fin=False) + ws_frame(OP_TEXT, b"b"),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL_ERRORS))
def test_raw_protocol_error_1002(relay, name):
    s, r = open_raw(relay)
    try:
        s.sendall(PROTOCOL_ERRORS[name]())
        ws_expect_close(s, r, 1002)
    finally:
        s.close()
    assert relay.healthy()


# -------------------------------------------------------------------------------------------
# Handshake errors
# -------------------------------------------------------------------------------------------


def test_handshake_missing_key_400(relay):
    s, r, resp = ws_handshake(relay.port, headers={"Sec-WebSocket-Key": None})
    s.close()
    assert_json_error(resp, 400, "WS_BAD_HANDSHAKE")


def test_handshake_bad_key_length_400(relay):
    s, r, resp = ws_handshake(relay.port, headers={"Sec-WebSocket-Key": "dG9vc2hvcnQ="})  # 8 bytes decoded
    s.close()
    assert_json_error(resp, 400, "WS_BAD_HANDSHAKE")


def test_handshake_wrong_version_426(relay):
    s, r, resp = ws_handshake(relay.port, headers={"Sec-WebSocket-Version": "8"})
    s.close()
    assert resp.status == 426, resp.describe()
    versions = [v.strip() for v in ",".join(resp.header_values("sec-websocket-version")).split(",")]
    assert "13" in versions, f"426 without Sec-WebSocket-Version: 13: {resp.describe()}"
    if resp.body:
        assert_json_error(resp, 426, None)

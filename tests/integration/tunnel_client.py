"""The bridge side of the Tether tunnel protocol `tether.v1`, written from docs/PROTOCOL.md alone.

Three layers:

* a frame codec (`encode_*` / `decode_*`, `Frame`, `decode_message`): plain functions over bytes,
  unit-tested against hand-written byte strings in test_tunnel_codec.py;
* `TunnelBridge`: a well-behaved bridge on the `websockets` asyncio client: HELLO, a stream
  multiplexer with per-stream and per-tunnel flow control (send windows, WINDOW_UPDATE once the
  handler has *read* the bytes), PING answers, GOAWAY / RESET handling. It also checks the relay:
  anything the relay does against the spec is recorded in `bridge.violations` (and, where the
  spec says so, closes the tunnel), so a test can `bridge.assert_clean()`;
* escape hatches for protocol-error tests: `send_raw()`, `send_text()`, `send_frames()`,
  `abort()`, `hello=False` / custom HELLO, and the observed close code / reason.

Usage::

    async def handler(stream: TunnelStream):
        body = await stream.read_all()
        await stream.send_response(200, [("content-type", "text/plain")])
        await stream.send_data(b"hello " + body, end_stream=True)

    async with TunnelBridge(f"ws://127.0.0.1:{port}/ws/tunnel", token=jwt, handler=handler) as bridge:
        ...  # make HTTP requests to the relay

It also has `FakeRelay`, a minimal relay side used to drive the Swift bridge with frames a real
relay would never send (absolute-form targets, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Awaitable, Callable, Iterable, Sequence

# --------------------------------------------------------------------------------------------
# Constants (PROTOCOL.md §2, §3, §7)
# --------------------------------------------------------------------------------------------

SUBPROTOCOL = "tether.v1"
VERSION = 1
HEADER = struct.Struct("!IBBI")  # payload length, type, flags, stream id
HEADER_SIZE = HEADER.size  # 10
MAX_WINDOW = 2**31 - 1
MAX_AGENT = 256


class FrameType(IntEnum):
    HELLO = 0x01
    OPEN = 0x02
    RESPONSE = 0x03
    DATA = 0x04
    RESET = 0x05
    WINDOW_UPDATE = 0x06
    PING = 0x07
    GOAWAY = 0x08


FLAG_END_STREAM = 0x01
FLAG_ACK = 0x02


class Setting(IntEnum):
    STREAM_WINDOW = 0x1
    TUNNEL_WINDOW = 0x2
    MAX_STREAMS = 0x3
    MAX_MESSAGE_SIZE = 0x4
    MAX_HEAD_SIZE = 0x5
    PING_INTERVAL_MS = 0x6


DEFAULT_SETTINGS: dict[int, int] = {
    Setting.STREAM_WINDOW: 1_048_576,
    Setting.TUNNEL_WINDOW: 8_388_608,
    Setting.MAX_STREAMS: 256,
    Setting.MAX_MESSAGE_SIZE: 1_048_586,
    Setting.MAX_HEAD_SIZE: 65_536,
    Setting.PING_INTERVAL_MS: 30_000,
}


class ErrorCode(IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 4
    REFUSED_STREAM = 5
    CANCEL = 6
    LOCAL_SERVICE_ERROR = 7
    LOCAL_TIMEOUT = 8
    DESTINATION_REFUSED = 9
    HEAD_TOO_LARGE = 10


# WebSocket close codes used on tunnels (§8).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009
CLOSE_AUTH = 4001
CLOSE_VERSION = 4002
CLOSE_TUNNEL_PROTOCOL = 4003

# Hop-by-hop headers (§4): a bridge removes them from responses.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}


class CodecError(ValueError):
    """A malformed frame or payload (a protocol error for the receiver)."""


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes = b""

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & FLAG_END_STREAM)

    @property
    def ack(self) -> bool:
        return bool(self.flags & FLAG_ACK)

    def encode(self) -> bytes:
        return encode_frame(self.type, self.flags, self.stream_id, self.payload)

    def __repr__(self) -> str:
        try:
            name = FrameType(self.type).name
        except ValueError:
            name = f"0x{self.type:02x}"
        p = self.payload if len(self.payload) <= 24 else self.payload[:24] + b"..."
        return f"Frame({name}, flags=0x{self.flags:02x}, sid={self.stream_id}, len={len(self.payload)}, {p!r})"


def encode_frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), ftype, flags, stream_id) + bytes(payload)


def decode_message(message: bytes) -> list[Frame]:
    """Split one WebSocket message into whole frames. A message that ends inside a frame (or is
    empty) raises CodecError (§2: close 4003)."""
    if not message:
        raise CodecError("empty message")
    frames = []
    mv = memoryview(message)
    off = 0
    n = len(mv)
    while off < n:
        if n - off < HEADER_SIZE:
            raise CodecError(f"message ends inside a frame header ({n - off} bytes left)")
        length, ftype, flags, sid = HEADER.unpack_from(mv, off)
        off += HEADER_SIZE
        if n - off < length:
            raise CodecError(f"message ends inside a frame payload ({n - off} of {length} bytes)")
        frames.append(Frame(ftype, flags, sid, bytes(mv[off: off + length])))
        off += length
    return frames


# -- HELLO (§3) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    version: int
    settings: tuple[tuple[int, int], ...]  # in wire order, unknown ids included
    agent: str = ""

    def effective(self) -> dict[int, int]:
        """Known settings with defaults applied (last occurrence wins)."""
        out = dict(DEFAULT_SETTINGS)
        for sid, value in self.settings:
            if sid in out:
                out[sid] = value
        return out


def encode_hello(settings: dict[int, int] | Sequence[tuple[int, int]] = (), agent: str | bytes = "",
                 version: int = VERSION) -> bytes:
    items = list(settings.items()) if isinstance(settings, dict) else list(settings)
    out = bytearray(struct.pack("!HH", version, len(items)))
    for sid, value in items:
        out += struct.pack("!HI", int(sid), value)
    out += agent.encode() if isinstance(agent, str) else agent
    return bytes(out)


def decode_hello(payload: bytes) -> Hello:
    if len(payload) < 4:
        raise CodecError("HELLO shorter than 4 bytes")
    version, n = struct.unpack_from("!HH", payload, 0)
    end = 4 + 6 * n
    if len(payload) < end:
        raise CodecError(f"HELLO announces {n} settings but has room for {(len(payload) - 4) // 6}")
    settings = tuple(struct.unpack_from("!HI", payload, 4 + 6 * i) for i in range(n))
    agent_b = payload[end:]
    if len(agent_b) > MAX_AGENT:
        raise CodecError(f"HELLO agent string is {len(agent_b)} bytes (max {MAX_AGENT})")
    try:
        agent = agent_b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"HELLO agent is not UTF-8: {e}") from None
    return Hello(version, settings, agent)


# -- Heads (§4) ---------------------------------------------------------------------------------

HeaderList = list[tuple[str, str]]


def _b(s: str | bytes, enc: str) -> bytes:
    return s if isinstance(s, (bytes, bytearray)) else s.encode(enc)


def _encode_headers(headers: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    hs = list(headers)
    out = bytearray(struct.pack("!H", len(hs)))
    for name, value in hs:
        nb, vb = _b(name, "latin-1"), _b(value, "latin-1")
        out += struct.pack("!H", len(nb)) + nb + struct.pack("!H", len(vb)) + vb
    return bytes(out)


class _Cursor:
    def __init__(self, data: bytes, what: str):
        self.data = data
        self.off = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.off + n > len(self.data):
            raise CodecError(f"{self.what} truncated (need {n} bytes at offset {self.off}, have {len(self.data)})")
        out = self.data[self.off: self.off + n]
        self.off += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def done(self) -> None:
        if self.off != len(self.data):
            raise CodecError(f"{self.what} has {len(self.data) - self.off} trailing bytes")


def _decode_headers(c: _Cursor) -> HeaderList:
    n = c.u16()
    out = []
    for _ in range(n):
        name = c.take(c.u16()).decode("latin-1")
        value = c.take(c.u16()).decode("latin-1")
        out.append((name, value))
    return out


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    headers: HeaderList


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: HeaderList


def encode_request_head(method: str, target: str, headers: Iterable[tuple[str | bytes, str | bytes]] = ()) -> bytes:
    mb, tb = _b(method, "utf-8"), _b(target, "utf-8")
    if len(mb) > 255:
        raise CodecError("method longer than 255 bytes")
    return struct.pack("!B", len(mb)) + mb + struct.pack("!H", len(tb)) + tb + _encode_headers(headers)


def decode_request_head(payload: bytes) -> RequestHead:
    c = _Cursor(payload, "OPEN head")
    try:
        method = c.take(c.u8()).decode("utf-8")
        target = c.take(c.u16()).decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"OPEN method/target not UTF-8: {e}") from None
    headers = _decode_headers(c)
    c.done()
    return RequestHead(method, target, headers)


def encode_response_head(status: int, headers: Iterable[tuple[str | bytes, str | bytes]] = ()) -> bytes:
    return struct.pack("!H", status) + _encode_headers(headers)


def decode_response_head(payload: bytes) -> ResponseHead:
    c = _Cursor(payload, "RESPONSE head")
    status = c.u16()
    headers = _decode_headers(c)
    c.done()
    return ResponseHead(status, headers)


# -- Control payloads ---------------------------------------------------------------------------


def encode_reset(code: int, reason: str | bytes = "") -> bytes:
    return struct.pack("!I", code) + _b(reason, "utf-8")


def decode_reset(payload: bytes) -> tuple[int, str]:
    if len(payload) < 4:
        raise CodecError("RESET shorter than 4 bytes")
    return struct.unpack_from("!I", payload)[0], payload[4:].decode("utf-8", "replace")


def encode_window_update(increment: int) -> bytes:
    return struct.pack("!I", increment)


def decode_window_update(payload: bytes) -> int:
    if len(payload) != 4:
        raise CodecError(f"WINDOW_UPDATE payload is {len(payload)} bytes, not 4")
    return struct.unpack("!I", payload)[0]


def encode_ping(data: bytes) -> bytes:
    if len(data) != 8:
        raise CodecError("PING payload must be 8 bytes")
    return bytes(data)


def decode_ping(payload: bytes) -> bytes:
    if len(payload) != 8:
        raise CodecError(f"PING payload is {len(payload)} bytes, not 8")
    return payload


def encode_goaway(last_stream_id: int, code: int = 0, reason: str | bytes = "") -> bytes:
    return struct.pack("!II", last_stream_id, code) + _b(reason, "utf-8")


def decode_goaway(payload: bytes) -> tuple[int, int, str]:
    if len(payload) < 8:
        raise CodecError("GOAWAY shorter than 8 bytes")
    last, code = struct.unpack_from("!II", payload)
    return last, code, payload[8:].decode("utf-8", "replace")


# -- Whole-frame builders -----------------------------------------------------------------------


def hello_frame(settings: dict[int, int] | Sequence[tuple[int, int]] = (), agent: str = "", version: int = VERSION) -> bytes:
    return encode_frame(FrameType.HELLO, 0, 0, encode_hello(settings, agent, version))


def open_frame(sid: int, method: str, target: str, headers=(), end_stream: bool = False) -> bytes:
    return encode_frame(FrameType.OPEN, FLAG_END_STREAM if end_stream else 0, sid,
                        encode_request_head(method, target, headers))


def response_frame(sid: int, status: int, headers=(), end_stream: bool = False) -> bytes:
    return encode_frame(FrameType.RESPONSE, FLAG_END_STREAM if end_stream else 0, sid,
                        encode_response_head(status, headers))


def data_frame(sid: int, data: bytes, end_stream: bool = False) -> bytes:
    return encode_frame(FrameType.DATA, FLAG_END_STREAM if end_stream else 0, sid, data)


def reset_frame(sid: int, code: int, reason: str = "") -> bytes:
    return encode_frame(FrameType.RESET, 0, sid, encode_reset(code, reason))


def window_update_frame(sid: int, increment: int) -> bytes:
    return encode_frame(FrameType.WINDOW_UPDATE, 0, sid, encode_window_update(increment))


def ping_frame(data: bytes, ack: bool = False) -> bytes:
    return encode_frame(FrameType.PING, FLAG_ACK if ack else 0, 0, encode_ping(data))


def goaway_frame(last_stream_id: int, code: int = 0, reason: str = "") -> bytes:
    return encode_frame(FrameType.GOAWAY, 0, 0, encode_goaway(last_stream_id, code, reason))


# --------------------------------------------------------------------------------------------
# The bridge (client) side
# --------------------------------------------------------------------------------------------


class TunnelError(Exception):
    pass


class TunnelClosed(TunnelError):
    """The tunnel is closed. code/reason: what the relay sent in its close frame (None if none)."""

    def __init__(self, code: int | None, reason: str, detail: str = ""):
        self.code = code
        self.reason = reason
        super().__init__(f"tunnel closed: code={code} reason={reason!r} {detail}".rstrip())


class StreamReset(TunnelError):
    def __init__(self, stream_id: int, code: int, reason: str, by_peer: bool):
        self.stream_id = stream_id
        self.code = code
        self.reason = reason
        self.by_peer = by_peer
        who = "relay" if by_peer else "bridge"
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"stream {stream_id} reset by {who}: {name} {reason!r}")


class TunnelStream:
    """One stream opened by the relay: the request head, the request body (read() returns the
    bytes and, as they are handed over, returns flow-control credit), and the response side."""

    def __init__(self, bridge: "TunnelBridge", sid: int, head: RequestHead, end_stream: bool):
        self.bridge = bridge
        self.id = sid
        self.method = head.method
        self.target = head.target
        self.headers: HeaderList = head.headers
        self._buf = bytearray()
        self._data_event = asyncio.Event()
        self.request_ended = end_stream           # END_STREAM received from the relay
        self.response_started = False
        self.response_ended = False               # END_STREAM sent by us
        self.reset_code: int | None = None        # set when reset (either side)
        self.reset_reason = ""
        self.reset_by_peer = False
        self.reset_event = asyncio.Event()
        self.closed_event = asyncio.Event()       # finished or reset
        self.received = 0                         # request body bytes received
        self.consumed = 0                         # ... handed to the reader
        self.sent = 0                             # response body bytes sent
        self.recv_window = bridge.settings[Setting.STREAM_WINDOW]   # what the relay may still send us
        self._owed = 0                            # credit read but not yet returned
        self.send_window = bridge.peer_settings[Setting.STREAM_WINDOW]
        self.blocked = 0                          # times send_data waited for credit
        self.blocked_event = asyncio.Event()      # set while send_data is waiting for credit
        if end_stream:
            self._data_event.set()

    # -- request ---------------------------------------------------------------------------------

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def _raise_if_reset(self) -> None:
        if self.reset_code is not None:
            raise StreamReset(self.id, self.reset_code, self.reset_reason, self.reset_by_peer)
        if self.bridge.closed.is_set():
            raise TunnelClosed(self.bridge.close_code, self.bridge.close_reason)

    async def read(self, n: int = -1) -> bytes:
        """Up to n bytes of request body (any amount if n < 0); b"" at the end of the body."""
        while not self._buf:
            if self.request_ended:
                return b""
            self._raise_if_reset()
            self._data_event.clear()
            await _wait_any(self._data_event, self.reset_event, self.bridge.closed)
        if self.reset_code is not None and not self._buf:
            self._raise_if_reset()
        k = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:k])
        del self._buf[:k]
        self.consumed += k
        await self.bridge._consumed(self, k)
        return out

    async def read_all(self) -> bytes:
        out = bytearray()
        while True:
            b = await self.read()
            if not b:
                return bytes(out)
            out += b

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        b = await self.read()
        if not b:
            raise StopAsyncIteration
        return b

    # -- response --------------------------------------------------------------------------------

    async def send_response(self, status: int, headers: Iterable[tuple[str, str]] = (), end_stream: bool = False):
        self._raise_if_reset()
        if self.response_started:
            raise TunnelError(f"stream {self.id}: response already sent")
        self.response_started = True
        if end_stream:
            self.response_ended = True
        await self.bridge._send(response_frame(self.id, status, list(headers), end_stream))
        if end_stream:
            self.bridge._maybe_finish(self)

    async def send_data(self, data: bytes = b"", end_stream: bool = False) -> None:
        """Send response body bytes, splitting by the relay's MAX_MESSAGE_SIZE and waiting for
        flow-control credit (never more than min(stream window, tunnel window))."""
        if self.response_ended:
            raise TunnelError(f"stream {self.id}: response body already ended")
        mv = memoryview(data)
        off = 0
        b = self.bridge
        max_payload = b.peer_settings[Setting.MAX_MESSAGE_SIZE] - HEADER_SIZE
        while off < len(mv):
            self._raise_if_reset()
            avail = min(self.send_window, b.send_window)
            if avail <= 0:
                self.blocked += 1
                self.blocked_event.set()
                try:
                    await b._wait_credit(self)
                finally:
                    self.blocked_event.clear()
                continue
            k = min(avail, max_payload, len(mv) - off)
            self.send_window -= k
            b.send_window -= k
            last = end_stream and off + k == len(mv)
            if last:
                self.response_ended = True
            await b._send(data_frame(self.id, bytes(mv[off: off + k]), last))
            off += k
            self.sent += k
        if end_stream and not self.response_ended:
            self._raise_if_reset()
            self.response_ended = True
            await b._send(data_frame(self.id, b"", True))
        if self.response_ended:
            b._maybe_finish(self)

    async def end(self) -> None:
        await self.send_data(b"", end_stream=True)

    async def respond(self, status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> None:
        """Whole response: head, body, end."""
        await self.send_response(status, headers, end_stream=not body)
        if body:
            await self.send_data(body, end_stream=True)

    async def reset(self, code: int = ErrorCode.INTERNAL_ERROR, reason: str = "") -> None:
        if self.reset_code is not None or self.closed_event.is_set():
            return
        self._mark_reset(code, reason, by_peer=False)
        await self.bridge._send(reset_frame(self.id, code, reason))

    def _mark_reset(self, code: int, reason: str, by_peer: bool) -> None:
        self.reset_code = code
        self.reset_reason = reason
        self.reset_by_peer = by_peer
        self.reset_event.set()
        self._data_event.set()
        self.bridge._stream_done(self)

    async def wait_reset(self, timeout: float = 5.0) -> int:
        """Wait until the stream is reset; returns the code."""
        await asyncio.wait_for(self.reset_event.wait(), timeout)
        return self.reset_code

    async def wait_blocked(self, timeout: float = 10.0) -> None:
        """Wait until send_data is waiting for flow-control credit."""
        await asyncio.wait_for(self.blocked_event.wait(), timeout)

    def __repr__(self) -> str:
        return f"<TunnelStream {self.id} {self.method} {self.target}>"


async def _wait_any(*events: asyncio.Event) -> None:
    if any(e.is_set() for e in events):
        return
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


Handler = Callable[[TunnelStream], Awaitable[None]]


class TunnelBridge:
    """A tether.v1 bridge on the websockets asyncio client.

    url: ws://host:port/ws/tunnel (the path is used as given).
    token / token_placement: "bearer" (Authorization header), "query" (?token=) or "subprotocol"
        (`token-<jwt>` next to `tether.v1`); None sends no token.
    handler: async callable(stream) run as a task per OPEN. Without one, streams are queued for
        `await bridge.accept()`.
    settings: what we advertise in HELLO (what we are willing to receive); merged over the
        defaults. `hello_settings` sends exactly that list instead (raw).
    send_hello: False to send no HELLO at all (test the relay's behaviour); or call
        `send_hello()` yourself later.
    credit: "read" (default: return credit when the handler reads the bytes, batched by
        update_fraction of the window), "receive" (as soon as DATA arrives) or "none" (never).
    answer_pings: False to ignore the relay's PINGs (ping-timeout tests).
    strict: record relay misbehaviour in `violations` and, where the spec says so, close the
        tunnel with 4003; tests call assert_clean().
    """

    def __init__(self, url: str, token: str | None = None, *, token_placement: str = "bearer",
                 handler: Handler | None = None, settings: dict[int, int] | None = None,
                 hello_settings: Sequence[tuple[int, int]] | None = None, agent: str = "tether-pytest/1",
                 hello_version: int = VERSION, send_hello: bool = True, credit: str = "read",
                 update_fraction: float = 0.25, answer_pings: bool = True, strict: bool = True,
                 subprotocols: Sequence[str] | None = None, extra_headers: dict[str, str] | None = None,
                 open_timeout: float = 10.0, hello_timeout: float = 10.0, name: str = ""):
        self.url = url
        self.token = token
        self.token_placement = token_placement
        self.handler = handler
        self.settings = dict(DEFAULT_SETTINGS)
        if settings:
            self.settings.update({int(k): v for k, v in settings.items()})
        self.hello_settings = hello_settings
        self.agent = agent
        self.hello_version = hello_version
        self.auto_hello = send_hello
        self.credit = credit
        self.update_fraction = update_fraction
        self.answer_pings = answer_pings
        self.strict = strict
        self.subprotocols = list(subprotocols) if subprotocols is not None else None
        self.extra_headers = dict(extra_headers or {})
        self.open_timeout = open_timeout
        self.hello_timeout = hello_timeout
        self.name = name or url

        self.ws = None
        self.peer_hello: Hello | None = None
        self.peer_settings: dict[int, int] = dict(DEFAULT_SETTINGS)
        self.hello_received = asyncio.Event()
        self.hello_sent = False
        self.closed = asyncio.Event()
        self.close_code: int | None = None        # code in the relay's close frame (None: no frame)
        self.close_reason: str = ""
        self.close_sent_code: int | None = None   # code we sent, if we closed first
        self.violations: list[str] = []
        self.handler_errors: list[BaseException] = []
        self.frames_received: list[Frame] = []    # every frame (DATA payloads truncated to 64 bytes)
        self.messages_received = 0
        self.text_messages: list[str] = []
        self.streams: dict[int, TunnelStream] = {}  # open streams
        self.all_streams: list[TunnelStream] = []
        self.incoming: asyncio.Queue[TunnelStream] = asyncio.Queue()
        self.highest_stream_id = 0
        self.stream_opened = asyncio.Event()
        self.pings_received: list[bytes] = []
        self.ping_event = asyncio.Event()
        self.pongs_received: list[bytes] = []
        self._ping_waiters: dict[bytes, asyncio.Future] = {}
        self.goaway: tuple[int, int, str] | None = None
        self.goaway_event = asyncio.Event()
        self.resets_received: list[tuple[int, int, str]] = []
        self.window_updates_received: list[tuple[int, int]] = []
        self.send_window = self.peer_settings[Setting.TUNNEL_WINDOW]
        self.recv_window = self.settings[Setting.TUNNEL_WINDOW]
        self._tunnel_owed = 0
        self._credit_cond = asyncio.Condition()
        self._reader_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._send_lock = asyncio.Lock()

    # -- connecting ------------------------------------------------------------------------------

    def _connect_args(self) -> tuple[str, dict]:
        url = self.url
        headers = dict(self.extra_headers)
        protos = list(self.subprotocols) if self.subprotocols is not None else [SUBPROTOCOL]
        if self.token is not None:
            if self.token_placement == "bearer":
                headers["Authorization"] = f"Bearer {self.token}"
            elif self.token_placement == "query":
                url += ("&" if "?" in url else "?") + "token=" + self.token
            elif self.token_placement == "subprotocol":
                protos.append(f"token-{self.token}")
            else:
                raise ValueError(f"unknown token placement {self.token_placement!r}")
        kw = dict(additional_headers=headers, subprotocols=protos or None, compression=None,
                  max_size=self.settings[Setting.MAX_MESSAGE_SIZE], ping_interval=None,
                  open_timeout=self.open_timeout, close_timeout=5, proxy=None, max_queue=64,
                  user_agent_header="tether-pytest")
        return url, kw

    async def connect(self, wait_hello: bool = True) -> "TunnelBridge":
        """Open the WebSocket, send our HELLO (unless disabled) and wait for the relay's HELLO.
        Raises TunnelClosed if the relay closes first (e.g. 4001), websockets' InvalidStatus if
        the upgrade is refused."""
        from websockets.asyncio.client import connect
        url, kw = self._connect_args()
        self.ws = await connect(url, **kw)
        self.subprotocol = self.ws.subprotocol
        if self.strict and self.ws.subprotocol != SUBPROTOCOL:
            self._violation(f"relay selected subprotocol {self.ws.subprotocol!r}, not {SUBPROTOCOL}")
        self._reader_task = asyncio.create_task(self._reader(), name=f"tunnel-reader {self.name}")
        if self.auto_hello:
            await self.send_hello()
        if wait_hello:
            await _wait_any(self.hello_received, self.closed)
            if not self.hello_received.is_set():
                # Let the reader finish recording the close.
                await asyncio.sleep(0)
                raise TunnelClosed(self.close_code, self.close_reason, "before the relay's HELLO")
        return self

    async def __aenter__(self) -> "TunnelBridge":
        try:
            return await asyncio.wait_for(self.connect(), self.open_timeout + self.hello_timeout)
        except BaseException:
            await self.abort()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def send_hello(self, settings: dict[int, int] | Sequence[tuple[int, int]] | None = None,
                         version: int | None = None) -> None:
        if settings is None:
            settings = self.hello_settings if self.hello_settings is not None else sorted(self.settings.items())
        self.hello_sent = True
        await self._send(hello_frame(settings, self.agent, self.hello_version if version is None else version))

    # -- closing ---------------------------------------------------------------------------------

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the WebSocket (close handshake) and stop all tasks."""
        if self.ws is not None and not self.closed.is_set():
            if self.close_sent_code is None:
                self.close_sent_code = code
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(code, reason), 6)
        await self._stop_tasks()

    async def abort(self) -> None:
        """Drop the TCP connection without a close frame (a crashed bridge)."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.transport.abort()
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        if self._reader_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._reader_task), 6)
            self._reader_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        self._finish_closed(None if self.close_code is None else self.close_code, self.close_reason)

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Wait until the relay closes the tunnel; returns (code, reason) of its close frame."""
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code, self.close_reason

    def _finish_closed(self, code: int | None, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_code = code
        self.close_reason = reason
        self.closed.set()
        for s in list(self.streams.values()):
            s._data_event.set()
            s.closed_event.set()
        for f in self._ping_waiters.values():
            if not f.done():
                f.set_exception(TunnelClosed(code, reason))

    # -- sending ---------------------------------------------------------------------------------

    async def _send(self, message: bytes) -> None:
        if self.closed.is_set():
            raise TunnelClosed(self.close_code, self.close_reason)
        from websockets.exceptions import ConnectionClosed
        try:
            await self.ws.send(message)
        except ConnectionClosed as e:
            rc = e.rcvd
            self._finish_closed(rc.code if rc else None, rc.reason if rc else "")
            raise TunnelClosed(self.close_code, self.close_reason) from None

    async def send_raw(self, data: bytes) -> None:
        """One binary WebSocket message with exactly these bytes."""
        await self._send(bytes(data))

    async def send_frames(self, *frames: bytes) -> None:
        """Several encoded frames in ONE WebSocket message."""
        await self._send(b"".join(frames))

    async def send_text(self, text: str) -> None:
        if self.closed.is_set():
            raise TunnelClosed(self.close_code, self.close_reason)
        await self.ws.send(text)

    async def ping(self, data: bytes | None = None, timeout: float = 5.0) -> float:
        """Send a PING; wait for the ACK with the same bytes. Returns the round-trip time."""
        data = data or os.urandom(8)
        fut = asyncio.get_running_loop().create_future()
        self._ping_waiters[data] = fut
        t0 = asyncio.get_running_loop().time()
        await self._send(ping_frame(data))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._ping_waiters.pop(data, None)
        return asyncio.get_running_loop().time() - t0

    async def send_goaway(self, last_stream_id: int | None = None, code: int = ErrorCode.NO_ERROR,
                          reason: str = "") -> None:
        await self._send(goaway_frame(self.highest_stream_id if last_stream_id is None else last_stream_id,
                                      code, reason))

    async def accept(self, timeout: float = 10.0) -> TunnelStream:
        """The next stream opened by the relay (when no handler is set)."""
        return await asyncio.wait_for(self.incoming.get(), timeout)

    # -- flow control ----------------------------------------------------------------------------

    async def _wait_credit(self, stream: TunnelStream) -> None:
        async with self._credit_cond:
            while (min(stream.send_window, self.send_window) <= 0 and stream.reset_code is None
                   and not self.closed.is_set()):
                await self._credit_cond.wait()

    async def _notify_credit(self) -> None:
        async with self._credit_cond:
            self._credit_cond.notify_all()

    async def _consumed(self, stream: TunnelStream, n: int) -> None:
        """The handler took n bytes: return credit (credit='read')."""
        if self.credit != "read" or n == 0 or getattr(stream, "_released", False):
            return
        await self._return_credit(stream, n)

    async def _return_credit(self, stream: TunnelStream | None, n: int, force: bool = False) -> None:
        frames = []
        if stream is not None and not stream.request_ended and stream.reset_code is None:
            stream._owed += n
            if force or stream._owed >= max(1, int(self.settings[Setting.STREAM_WINDOW] * self.update_fraction)):
                frames.append(window_update_frame(stream.id, stream._owed))
                stream.recv_window += stream._owed
                stream._owed = 0
        self._tunnel_owed += n
        if force or self._tunnel_owed >= max(1, int(self.settings[Setting.TUNNEL_WINDOW] * self.update_fraction)):
            frames.append(window_update_frame(0, self._tunnel_owed))
            self.recv_window += self._tunnel_owed
            self._tunnel_owed = 0
        if frames and not self.closed.is_set():
            with contextlib.suppress(TunnelClosed):
                await self._send(b"".join(frames))

    async def flush_credit(self) -> None:
        """Send any credit owed now (also the stream credits below the batching threshold)."""
        frames = []
        for s in self.streams.values():
            if s._owed and not s.request_ended:
                frames.append(window_update_frame(s.id, s._owed))
                s.recv_window += s._owed
                s._owed = 0
        if self._tunnel_owed:
            frames.append(window_update_frame(0, self._tunnel_owed))
            self.recv_window += self._tunnel_owed
            self._tunnel_owed = 0
        if frames:
            await self._send(b"".join(frames))

    async def grant(self, stream_id: int, increment: int) -> None:
        """Manually send a WINDOW_UPDATE (credit='none' tests)."""
        await self._send(window_update_frame(stream_id, increment))

    # -- receiving -------------------------------------------------------------------------------

    def _violation(self, what: str) -> None:
        self.violations.append(what)

    def assert_clean(self) -> None:
        assert not self.violations, f"relay violated tether.v1 ({self.name}): {self.violations}"
        errs = [e for e in self.handler_errors]
        assert not errs, f"bridge handlers raised: {errs!r}"

    async def _protocol_close(self, code: int, reason: str) -> None:
        self._violation(f"closing {code}: {reason}")
        self.close_sent_code = code
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), 5)

    async def _reader(self) -> None:
        from websockets.exceptions import ConnectionClosed
        code, reason = None, ""
        try:
            async for msg in self.ws:
                self.messages_received += 1
                if isinstance(msg, str):
                    self.text_messages.append(msg)
                    if self.strict:
                        await self._protocol_close(CLOSE_UNSUPPORTED_DATA, "text message")
                        break
                    continue
                try:
                    frames = decode_message(msg)
                except CodecError as e:
                    if self.strict:
                        await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, f"bad message: {e}")
                        break
                    continue
                for f in frames:
                    ok = await self._on_frame(f)
                    if not ok:
                        break
                else:
                    continue
                break
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug in this client: surface it
            self.handler_errors.append(e)
        finally:
            rc = getattr(self.ws.protocol, "close_rcvd", None)
            if rc is not None:
                code, reason = rc.code, rc.reason
            self._finish_closed(code, reason)
            await self._notify_credit()

    async def _on_frame(self, f: Frame) -> bool:
        """Handle one frame; False stops reading (we closed the tunnel)."""
        rec = f if f.type != FrameType.DATA or len(f.payload) <= 64 else Frame(f.type, f.flags, f.stream_id,
                                                                                f.payload[:64])
        self.frames_received.append(rec)
        if len(self.frames_received) > 100_000:
            del self.frames_received[:50_000]
        t = f.type
        if self.peer_hello is None and t != FrameType.HELLO and self.strict:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, f"first frame is not HELLO: {f!r}")
            return False
        if t == FrameType.HELLO:
            if self.peer_hello is not None:
                self._violation("second HELLO")
                return True
            try:
                h = decode_hello(f.payload)
            except CodecError as e:
                await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, f"bad HELLO: {e}")
                return False
            if f.stream_id != 0:
                self._violation(f"HELLO on stream {f.stream_id}")
            if h.version != VERSION:
                await self._protocol_close(CLOSE_VERSION, "unsupported version")
                return False
            eff = h.effective()
            for k in (Setting.STREAM_WINDOW, Setting.TUNNEL_WINDOW):
                if eff[k] > MAX_WINDOW:
                    await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, "window setting above 2^31-1")
                    return False
            self.peer_hello = h
            self.peer_settings = eff
            self.send_window = eff[Setting.TUNNEL_WINDOW]  # no DATA can precede HELLO
            self.hello_received.set()
            return True
        if t == FrameType.OPEN:
            return await self._on_open(f)
        if t == FrameType.DATA:
            return await self._on_data(f)
        if t == FrameType.RESET:
            try:
                code, reason = decode_reset(f.payload)
            except CodecError as e:
                await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, str(e))
                return False
            self.resets_received.append((f.stream_id, code, reason))
            s = self.streams.get(f.stream_id)
            if s is not None:
                s._mark_reset(code, reason, by_peer=True)
                await self._release_stream_credit(s)
                await self._notify_credit()
            elif f.stream_id == 0 or f.stream_id > self.highest_stream_id:
                self._violation(f"RESET for stream {f.stream_id} that was never opened")
            return True
        if t == FrameType.WINDOW_UPDATE:
            try:
                inc = decode_window_update(f.payload)
            except CodecError as e:
                await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, str(e))
                return False
            self.window_updates_received.append((f.stream_id, inc))
            if inc == 0:
                self._violation(f"WINDOW_UPDATE with increment 0 on stream {f.stream_id}")
            if f.stream_id == 0:
                self.send_window += inc
                if self.send_window > MAX_WINDOW:
                    await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, "flow control")
                    return False
            else:
                s = self.streams.get(f.stream_id)
                if s is not None:
                    s.send_window += inc
                    if s.send_window > MAX_WINDOW:
                        await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, "flow control")
                        return False
                elif f.stream_id > self.highest_stream_id:
                    self._violation(f"WINDOW_UPDATE for stream {f.stream_id} that was never opened")
            await self._notify_credit()
            return True
        if t == FrameType.PING:
            try:
                data = decode_ping(f.payload)
            except CodecError as e:
                await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, str(e))
                return False
            if f.stream_id != 0:
                self._violation(f"PING on stream {f.stream_id}")
            if f.ack:
                self.pongs_received.append(data)
                fut = self._ping_waiters.get(data)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            else:
                self.pings_received.append(data)
                self.ping_event.set()
                if self.answer_pings:
                    with contextlib.suppress(TunnelClosed):
                        await self._send(ping_frame(data, ack=True))
            return True
        if t == FrameType.GOAWAY:
            try:
                self.goaway = decode_goaway(f.payload)
            except CodecError as e:
                await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, str(e))
                return False
            self.goaway_event.set()
            return True
        if t == FrameType.RESPONSE:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, "relay sent RESPONSE")
            return False
        return True  # unknown type: ignored

    async def _on_open(self, f: Frame) -> bool:
        sid = f.stream_id
        if self.strict and not self.hello_sent:
            self._violation(f"OPEN {sid} before the bridge's HELLO")
        if sid == 0 or sid <= self.highest_stream_id:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, f"bad stream id {sid} (highest {self.highest_stream_id})")
            return False
        self.highest_stream_id = sid
        if len(f.payload) > self.settings[Setting.MAX_HEAD_SIZE]:
            self._violation(f"OPEN {sid} head of {len(f.payload)} bytes over MAX_HEAD_SIZE")
            await self._send(reset_frame(sid, ErrorCode.HEAD_TOO_LARGE, "head too large"))
            return True
        try:
            head = decode_request_head(f.payload)
        except CodecError as e:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, str(e))
            return False
        if len(self.streams) >= self.settings[Setting.MAX_STREAMS]:
            self._violation(f"OPEN {sid} over MAX_STREAMS={self.settings[Setting.MAX_STREAMS]}")
            await self._send(reset_frame(sid, ErrorCode.REFUSED_STREAM, "too many streams"))
            return True
        s = TunnelStream(self, sid, head, f.end_stream)
        self.streams[sid] = s
        self.all_streams.append(s)
        self.stream_opened.set()
        if self.handler is not None:
            task = asyncio.create_task(self._run_handler(s), name=f"stream {sid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.incoming.put_nowait(s)
        return True

    async def _run_handler(self, s: TunnelStream) -> None:
        try:
            await self.handler(s)
            if s.reset_code is None and not self.closed.is_set():
                if not s.response_started:
                    await s.reset(ErrorCode.INTERNAL_ERROR, "handler sent no response")
                elif not s.response_ended:
                    await s.end()
        except (StreamReset, TunnelClosed):
            pass
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001
            self.handler_errors.append(e)
            with contextlib.suppress(Exception):
                await s.reset(ErrorCode.INTERNAL_ERROR, f"handler error: {e!r}"[:200])

    async def _on_data(self, f: Frame) -> bool:
        sid, n = f.stream_id, len(f.payload)
        if sid == 0:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, "DATA on stream 0")
            return False
        if sid > self.highest_stream_id:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, f"DATA on unopened stream {sid}")
            return False
        # Tunnel window applies to every DATA, also for streams that are gone.
        self.recv_window -= n
        if self.recv_window < 0:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, "flow control")
            return False
        if n == 0 and not f.end_stream:
            self._violation(f"empty DATA without END_STREAM on stream {sid}")
        s = self.streams.get(sid)
        if s is None:
            # Finished or reset stream: ignore, but return the tunnel credit.
            if n:
                await self._return_credit(None, n, force=False)
            return True
        if s.request_ended:
            self._violation(f"DATA after END_STREAM on stream {sid}")
            await s.reset(ErrorCode.STREAM_CLOSED, "data after end of stream")
            if n:
                await self._return_credit(None, n)
            return True
        s.recv_window -= n
        if s.recv_window < 0:
            await self._protocol_close(CLOSE_TUNNEL_PROTOCOL, "flow control")
            return False
        s.received += n
        if n:
            s._buf += f.payload
        if f.end_stream:
            s.request_ended = True
        s._data_event.set()
        if self.credit == "receive" and n:
            await self._return_credit(s, n)
        if f.end_stream:
            self._maybe_finish(s)
        return True

    async def _release_stream_credit(self, s: TunnelStream) -> None:
        """A reset/finished stream: its unread bytes no longer hold tunnel credit."""
        if self.credit == "none":
            return
        unread = s.received - s.consumed
        if self.credit == "receive":
            unread = 0
        if unread > 0 and not getattr(s, "_released", False):
            s._released = True
            await self._return_credit(None, unread)

    def _maybe_finish(self, s: TunnelStream) -> None:
        if s.request_ended and s.response_ended:
            self._stream_done(s)

    def _stream_done(self, s: TunnelStream) -> None:
        if self.streams.get(s.id) is s:
            del self.streams[s.id]
            s.closed_event.set()
            if s.received - s.consumed > 0 and self.credit == "read":
                t = asyncio.ensure_future(self._release_stream_credit(s))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)


# --------------------------------------------------------------------------------------------
# A minimal relay side, to drive the Swift bridge with arbitrary frames
# --------------------------------------------------------------------------------------------


class FakeRelayConnection:
    """One bridge connected to FakeRelay. Low level: the test sends frames and reads frames."""

    def __init__(self, ws, request_headers, path: str):
        self.ws = ws
        self.request_headers = request_headers
        self.path = path
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.peer_hello: Hello | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.next_id = 1

    async def send(self, *frames: bytes) -> None:
        await self.ws.send(b"".join(frames))

    async def read_frame(self, timeout: float = 5.0, skip: Iterable[int] = (FrameType.PING, FrameType.WINDOW_UPDATE)) -> Frame:
        skip = set(skip)
        while True:
            f = await asyncio.wait_for(self.frames.get(), timeout)
            if f.type in skip:
                continue
            return f

    async def open(self, method: str, target: str, headers=(), body: bytes | None = None,
                   end_stream: bool | None = None) -> int:
        """OPEN a stream. With body, sends it as one DATA with END_STREAM; without, the OPEN carries
        END_STREAM unless end_stream=False (the test then sends DATA itself)."""
        sid = self.next_id
        self.next_id += 1
        if end_stream is None:
            end_stream = not body
        await self.send(open_frame(sid, method, target, headers, end_stream=end_stream and not body))
        if body:
            await self.send(data_frame(sid, body, end_stream=True))
        return sid


class FakeRelay:
    """A websockets server speaking the relay side of tether.v1 just enough for bridge tests:
    it accepts any token, sends HELLO, and queues every connected bridge in `connections`."""

    def __init__(self, settings: dict[int, int] | None = None):
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update(settings or {})
        self.answer_pings = True
        self.connections: asyncio.Queue[FakeRelayConnection] = asyncio.Queue()
        self.server = None
        self.port = 0

    async def __aenter__(self) -> "FakeRelay":
        from websockets.asyncio.server import serve

        def select(conn, offered):
            return SUBPROTOCOL if SUBPROTOCOL in offered else None

        self.server = await serve(self._handle, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL],
                                  select_subprotocol=select, compression=None, ping_interval=None,
                                  max_size=self.settings[Setting.MAX_MESSAGE_SIZE])
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def accept(self, timeout: float = 15.0) -> FakeRelayConnection:
        return await asyncio.wait_for(self.connections.get(), timeout)

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed
        conn = FakeRelayConnection(ws, ws.request.headers, ws.request.path)
        await ws.send(hello_frame(sorted(self.settings.items()), "fake-relay/1"))
        self.connections.put_nowait(conn)
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    await ws.close(CLOSE_UNSUPPORTED_DATA, "text message")
                    break
                for f in decode_message(msg):
                    if f.type == FrameType.HELLO and conn.peer_hello is None:
                        conn.peer_hello = decode_hello(f.payload)
                    if f.type == FrameType.PING and not f.ack and self.answer_pings:
                        await ws.send(ping_frame(f.payload, ack=True))
                    conn.frames.put_nowait(f)
        except (ConnectionClosed, CodecError):
            pass
        finally:
            rc = ws.protocol.close_rcvd
            conn.close_code = rc.code if rc else None
            conn.closed.set()

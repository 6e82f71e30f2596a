"""Small, dependency-free helpers for black-box testing of tether-relay.

Raw-socket HTTP/1.1 response parsing and RFC 6455 frame encoding/decoding, used where a real
client would refuse to send what we need (malformed requests, protocol violations) or would
hide what we want to observe (framing, connection closure).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Error statuses that a client may observe as a reset instead of an orderly EOF.
_RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# --------------------------------------------------------------------------------------------
# HTTP/1.1 responses
# --------------------------------------------------------------------------------------------


class PeerClosed(Exception):
    """The peer closed (EOF or reset) before a complete message was read."""


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_token(self, name: str, token: str) -> bool:
        """True if a comma-separated header (e.g. Connection) contains token (case-insensitive)."""
        toks = []
        for v in self.header_values(name):
            toks += [t.strip().lower() for t in v.split(",")]
        return token.lower() in toks

    @property
    def media_type(self) -> str:
        ct = self.header("content-type") or ""
        return ct.split(";")[0].strip().lower()

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def describe(self) -> str:
        head = f"{self.version} {self.status} {self.reason} headers={self.headers}"
        return f"{head} body[{len(self.body)}]={self.body[:300]!r}"


class Reader:
    """Buffered reader over a (possibly TLS) socket."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self.sock = sock
        self.buf = bytearray()
        self.timeout = timeout
        self.eof = False

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data from relay")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout as e:
            raise TimeoutError("timed out waiting for data from relay") from e
        except _RESET_ERRORS as e:
            self.eof = True
            raise PeerClosed(f"connection reset: {e!r}") from e
        if not data:
            self.eof = True
            raise PeerClosed("EOF")
        self.buf += data

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def read_until(self, delim: bytes, limit: int = 1 << 20, timeout: float | None = None) -> bytes:
        deadline = self._deadline(timeout)
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise AssertionError(f"no {delim!r} within {limit} bytes: {bytes(self.buf[:200])!r}")
            start = max(0, len(self.buf) - len(delim) + 1)
            self._fill(deadline)

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = self._deadline(timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self, timeout: float | None = None) -> bytes:
        deadline = self._deadline(timeout)
        while True:
            try:
                self._fill(deadline)
            except PeerClosed:
                out = bytes(self.buf)
                self.buf.clear()
                return out

    # -- HTTP ---------------------------------------------------------------------------------

    def read_head(self, timeout: float | None = None) -> Response:
        raw = self.read_until(b"\r\n\r\n", limit=1 << 20, timeout=timeout)
        lines = raw[:-4].split(b"\r\n")
        status_line = lines[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/"), f"bad status line {status_line!r}"
        assert parts[1].isdigit() and len(parts[1]) == 3, f"bad status line {status_line!r}"
        headers = []
        for line in lines[1:]:
            k, sep, v = line.decode("latin-1").partition(":")
            assert sep and k and k == k.strip(), f"bad response header line {line!r}"
            headers.append((k, v.strip()))
        return Response(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers)

    def read_body(self, resp: Response, method: str = "GET", timeout: float | None = None) -> Response:
        deadline = self._deadline(timeout)
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te is not None:
            assert te.strip().lower() == "chunked", f"unexpected response Transfer-Encoding {te!r}"
            assert cl is None, "response has both Content-Length and Transfer-Encoding"
            resp.chunked = True
            body = bytearray()
            while True:
                line = self.read_until(b"\r\n", limit=4096, timeout=max(0.01, deadline - time.monotonic()))
                size_s = line[:-2].split(b";")[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise AssertionError(
                        f"malformed chunked response body from relay: expected a chunk-size line after "
                        f"{len(body)} body bytes, got {line[:120]!r} (+{bytes(self.buf[:200])!r})") from None
                if size == 0:
                    break
                body += self.read_exact(size, timeout=max(0.01, deadline - time.monotonic()))
                crlf = self.read_exact(2, timeout=max(0.01, deadline - time.monotonic()))
                assert crlf == b"\r\n", f"chunk not followed by CRLF: {crlf!r}"
            while True:  # trailer section
                line = self.read_until(b"\r\n", limit=16384, timeout=max(0.01, deadline - time.monotonic()))
                if line == b"\r\n":
                    break
                k, _, v = line[:-2].decode("latin-1").partition(":")
                resp.trailers.append((k, v.strip()))
            resp.body = bytes(body)
        elif cl is not None:
            n = int(cl)
            resp.body = self.read_exact(n, timeout=max(0.01, deadline - time.monotonic())) if n else b""
        else:
            resp.body = self.read_to_eof(timeout=max(0.01, deadline - time.monotonic()))
        return resp

    def read_response(self, method: str = "GET", timeout: float | None = None,
                      skip_interim: bool = True) -> Response:
        deadline = self._deadline(timeout)
        while True:
            resp = self.read_head(timeout=max(0.01, deadline - time.monotonic()))
            if skip_interim and 100 <= resp.status < 200 and resp.status != 101:
                continue
            return self.read_body(resp, method, timeout=max(0.01, deadline - time.monotonic()))

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Wait until the peer closes (EOF or reset). Returns any extra bytes received meanwhile.

        Raises AssertionError if the connection is still open after `timeout`.
        """
        deadline = time.monotonic() + timeout
        extra = bytes(self.buf)
        self.buf.clear()
        while True:
            try:
                self._fill(deadline)
            except PeerClosed:
                return extra + bytes(self.buf)
            except TimeoutError:
                raise AssertionError(
                    f"relay did not close the connection within {timeout}s "
                    f"(extra bytes received: {(extra + bytes(self.buf))[:200]!r})") from None


def assert_json_error(resp: Response, status: int, code: str | None) -> dict:
    """Check a spec error response: status, JSON media type, {"error":{"code","message"}}."""
    assert resp.status == status, f"expected {status}, got {resp.describe()}"
    assert resp.media_type == "application/json", f"error not JSON: {resp.describe()}"
    doc = resp.json()
    assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), f"bad error body {doc!r}"
    err = doc["error"]
    assert isinstance(err.get("code"), str) and err["code"], f"bad error code in {doc!r}"
    assert isinstance(err.get("message"), str) and err["message"], f"bad error message in {doc!r}"
    if code is not None:
        assert err["code"] == code, f"expected error code {code}, got {doc!r}"
    return err


class BackgroundSender:
    """sendall() in a thread so that large uploads don't deadlock against a streaming echo."""

    def __init__(self, sock: socket.socket, data, pieces: int | None = None, delay: float = 0.0):
        self.sock = sock
        self.error: BaseException | None = None
        self.sent = 0
        self._data = data
        self._pieces = pieces
        self._delay = delay
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            chunks = self._data if isinstance(self._data, (list, tuple)) else [self._data]
            for c in chunks:
                mv = memoryview(c)
                step = 256 * 1024
                for off in range(0, len(mv), step):
                    self.sock.sendall(mv[off: off + step])
                    self.sent += len(mv[off: off + step])
                if self._delay:
                    time.sleep(self._delay)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.error = e

    def join(self, timeout: float = 30.0) -> None:
        self.t.join(timeout)
        assert not self.t.is_alive(), "sender thread still blocked (relay stopped reading?)"


def chunked_encode(body: bytes, chunk_sizes=None) -> bytes:
    """Encode body with chunked transfer coding; chunk_sizes: iterable of sizes (cycled)."""
    out = bytearray()
    sizes = list(chunk_sizes or [65536])
    i = 0
    k = 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        k += 1
        piece = body[i: i + n]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        i += n
    out += b"0\r\n\r\n"
    return bytes(out)


def http_exchange(port: int, request: bytes, method: str = "GET", timeout: float = 20.0):
    """Open a connection, send request (in background), read one response. Returns (resp, reader)."""
    s = connect(port, timeout)
    r = Reader(s, timeout)
    sender = BackgroundSender(s, request)
    try:
        resp = r.read_response(method)
    except BaseException:
        s.close()
        raise
    sender.join(timeout)
    return resp, r


def echo_request(body: bytes, chunked: bool = False, chunk_sizes=None, extra: bytes = b"",
                 host: bytes = b"127.0.0.1") -> bytes:
    head = b"POST /echo HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/octet-stream\r\n" + extra
    if chunked:
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked_encode(body, chunk_sizes)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


# --------------------------------------------------------------------------------------------
# WebSocket frames (RFC 6455)
# --------------------------------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def ws_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True,
             key: bytes | None = None, length_override: int | None = None) -> bytes:
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length_override is None else length_override
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    key = key if key is not None else os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload)) if len(payload) < 4096 else _mask_fast(payload, key)
    return hdr + key + masked


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = int.from_bytes((key * ((n + 3) // 4))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def ws_close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


def ws_read_frame(r: Reader, timeout: float | None = None) -> Frame:
    b0, b1 = r.read_exact(2, timeout)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", r.read_exact(2, timeout))[0]
    elif n == 127:
        n = struct.unpack("!Q", r.read_exact(8, timeout))[0]
    masked = bool(b1 & 0x80)
    key = r.read_exact(4, timeout) if masked else None
    payload = r.read_exact(n, timeout) if n else b""
    if key:
        payload = _mask_fast(payload, key)
    return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload, masked)


def ws_handshake(port: int, path: str = "/ws/echo", headers: dict | None = None,
                 timeout: float = 10.0, sock: socket.socket | None = None):
    """Raw-socket opening handshake. Returns (sock, reader, response)."""
    key = base64.b64encode(os.urandom(16)).decode()
    hdrs = {
        "Host": f"{HOST}:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    for k, v in (headers or {}).items():
        if v is None:
            hdrs.pop(k, None)
        else:
            hdrs[k] = v
    req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    s = sock or connect(port, timeout)
    s.sendall(req.encode("latin-1"))
    r = Reader(s, timeout)
    resp = r.read_head()
    if resp.status == 101:
        assert resp.header("sec-websocket-accept") == ws_accept(hdrs.get("Sec-WebSocket-Key", "")), \
            f"bad Sec-WebSocket-Accept: {resp.describe()}"
        assert resp.has_token("upgrade", "websocket") and resp.has_token("connection", "upgrade"), resp.describe()
    else:
        r.read_body(resp)
    return s, r, resp


def ws_expect_close(s: socket.socket, r: Reader, expected_code: int, timeout: float = 10.0) -> Frame:
    """Read server frames until a close frame; check its code; complete the close handshake.

    Data frames before the close are tolerated (ignored); the connection must then be closed
    by the relay.
    """
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            f = ws_read_frame(r, timeout=max(0.01, deadline - time.monotonic()))
        except PeerClosed as e:
            raise AssertionError(f"relay closed TCP without a close frame (expected {expected_code}); "
                                 f"frames seen: {[(x.opcode, len(x.payload)) for x in seen]}") from e
        assert not f.masked, "server frames must not be masked (RFC 6455 5.1)"
        if f.opcode == OP_CLOSE:
            break
        seen.append(f)
    assert f.close_code == expected_code, \
        f"expected close code {expected_code}, got {f.close_code} (payload {f.payload!r})"
    try:
        s.sendall(ws_frame(OP_CLOSE, f.payload[:2]))
    except (OSError,):
        pass
    r.wait_closed(timeout=5.0)
    return f

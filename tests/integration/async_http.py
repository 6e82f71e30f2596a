"""A small asyncio HTTP/1.1 client for the tunnel tests: many concurrent requests on one event
loop next to a Python bridge, incremental body reading (per-chunk timing, a client that stops
reading), and precise observation of how a response ended (complete vs aborted)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable

HOST = "127.0.0.1"


class IncompleteResponse(Exception):
    """The connection ended before the end of the response body (an aborted response)."""

    def __init__(self, msg: str, received: int):
        self.received = received
        super().__init__(msg)


@dataclass
class Result:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    elapsed: float = 0.0
    chunked: bool = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)

    @property
    def media_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def error_code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"{self.status} {self.reason} {self.headers} body[{len(self.body)}]={self.body[:300]!r}"


class ResponseStream:
    """An HTTP response whose body is read piece by piece."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str):
        self.reader = reader
        self.writer = writer
        self.method = method
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.chunked = False
        self.length: int | None = None
        self.received = 0
        self.complete = False
        self._chunk_left = 0
        self._eof_body = False
        self.t_start = time.monotonic()

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    async def _read_head(self) -> None:
        while True:
            try:
                raw = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                raise IncompleteResponse(f"connection closed before a response head ({e.partial[:200]!r})", 0) \
                    from None
            lines = raw[:-4].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            self.status = int(parts[1])
            self.reason = parts[2] if len(parts) > 2 else ""
            self.headers = []
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                self.headers.append((k.strip(), v.strip()))
            if 100 <= self.status < 200 and self.status != 101:
                continue
            break
        te = (self.header("transfer-encoding") or "").lower()
        cl = self.header("content-length")
        if self.method == "HEAD" or self.status in (204, 304):
            self.length = 0
        elif "chunked" in te:
            self.chunked = True
        elif cl is not None:
            self.length = int(cl)
        else:
            self._eof_body = True
        if self.length == 0:
            self.complete = True

    async def read_chunk(self, max_bytes: int = 1 << 20) -> bytes:
        """The next piece of the body as it arrives; b"" once the body is complete. Raises
        IncompleteResponse if the connection ends (or is reset) before the end of the body."""
        if self.complete:
            return b""
        try:
            if self.chunked:
                if self._chunk_left == 0:
                    line = await self.reader.readuntil(b"\r\n")
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                            pass
                        self.complete = True
                        return b""
                    self._chunk_left = size
                data = await self.reader.read(min(self._chunk_left, max_bytes))
                if not data:
                    raise asyncio.IncompleteReadError(b"", self._chunk_left)
                self._chunk_left -= len(data)
                if self._chunk_left == 0:
                    crlf = await self.reader.readexactly(2)
                    if crlf != b"\r\n":
                        raise IncompleteResponse(f"bad chunk terminator {crlf!r}", self.received)
            elif self._eof_body:
                data = await self.reader.read(max_bytes)
                if not data:
                    self.complete = True
                    return b""
            else:
                left = self.length - self.received
                data = await self.reader.read(min(left, max_bytes))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                if self.received + len(data) == self.length:
                    self.complete = True
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            raise IncompleteResponse(f"response aborted after {self.received} body bytes: {e!r}", self.received) \
                from None
        except ValueError as e:  # bad chunk size line
            raise IncompleteResponse(f"malformed chunked body after {self.received} bytes: {e}", self.received) \
                from None
        self.received += len(data)
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            b = await self.read_chunk()
            if not b:
                return
            yield b

    async def iter_lines(self) -> AsyncIterator[tuple[bytes, float]]:
        """Yields (line without newline, time.time() when its last byte arrived)."""
        buf = bytearray()
        while True:
            b = await self.read_chunk()
            now = time.time()
            if not b:
                if buf:
                    yield bytes(buf), now
                return
            buf += b
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    break
                line = bytes(buf[:i])
                del buf[: i + 1]
                yield line, now

    async def read_all(self) -> bytes:
        out = bytearray()
        async for b in self.iter_chunks():
            out += b
        return bytes(out)

    async def result(self) -> Result:
        body = await self.read_all()
        return Result(self.status, self.reason, self.headers, body, time.monotonic() - self.t_start, self.chunked)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        """Drop the connection (RST if data is unread)."""
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def wait_closed_by_peer(self, timeout: float) -> None:
        """Wait until the server closes the connection (any bytes in between are discarded)."""
        async def drain():
            while True:
                try:
                    data = await self.reader.read(1 << 16)
                except (ConnectionError, OSError):
                    return
                if not data:
                    return
        await asyncio.wait_for(drain(), timeout)


def _headers_bytes(method: str, target: str, headers, host: str, body_len: int | None, chunked: bool) -> bytes:
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hs}
    lines = [f"{method} {target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in hs]
    if chunked and "transfer-encoding" not in names:
        lines.append("Transfer-Encoding: chunked")
    elif body_len is not None and "content-length" not in names and (body_len or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {body_len}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def open_request(port: int, method: str, target: str, headers=None, body: bytes | Iterable[bytes] | None = None,
                       *, body_stream: AsyncIterator[bytes] | None = None, host: str | None = None,
                       rcvbuf: int | None = None, timeout: float = 30.0) -> ResponseStream:
    """Send a request and read the response head. body: bytes (Content-Length); body_stream:
    async iterator sent chunked in the background (so the response may start first).
    rcvbuf: a small SO_RCVBUF for a client that is slow to read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
    limit = 1 << 16 if rcvbuf is not None else 1 << 20
    reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    if rcvbuf is not None:
        writer.transport.set_write_buffer_limits(high=1 << 16)
    host = host or f"{HOST}:{port}"
    if body_stream is not None:
        writer.write(_headers_bytes(method, target, headers, host, None, True))

        async def pump():
            try:
                async for piece in body_stream:
                    if piece:
                        writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            except (ConnectionError, OSError):
                pass
        rs = ResponseStream(reader, writer, method)
        rs.pump_task = asyncio.create_task(pump())
    else:
        data = body if isinstance(body, (bytes, bytearray, memoryview)) or body is None else b"".join(body)
        writer.write(_headers_bytes(method, target, headers, host, len(data) if data is not None else None, False))
        if data:
            writer.write(data)
        rs = ResponseStream(reader, writer, method)

        async def drain():
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
        rs.pump_task = asyncio.create_task(drain())
    try:
        await asyncio.wait_for(rs._read_head(), timeout)
    except BaseException:
        rs.abort()
        rs.pump_task.cancel()
        raise
    return rs


async def request(port: int, method: str, target: str, headers=None, body: bytes | None = None,
                  *, host: str | None = None, timeout: float = 30.0, body_stream=None) -> Result:
    """One request on a new connection; the whole response."""
    t0 = time.monotonic()
    rs = await open_request(port, method, target, headers, body, host=host, timeout=timeout, body_stream=body_stream)
    try:
        res = await asyncio.wait_for(rs.result(), max(0.1, timeout - (time.monotonic() - t0)))
        res.elapsed = time.monotonic() - t0
        return res
    finally:
        rs.close()
        rs.pump_task.cancel()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Timing:
    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    @property
    def max(self) -> float:
        return max(self.values) if self.values else 0.0

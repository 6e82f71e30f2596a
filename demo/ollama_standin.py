#!/usr/bin/env python3
"""Ollama stand-in: a DEVELOPMENT AND TEST TOOL, NOT PART OF THE TETHER PRODUCT.

It imitates the few Ollama endpoints a Tether demo and the integration tests need, with
deterministic fake "tokens" at a fixed rate, and adds test helpers. It has no model, no GPU and
no dependencies (Python 3.11 standard library, asyncio), and serves many concurrent streaming
connections.

    python3 demo/ollama_standin.py --host 127.0.0.1 --port 11434 --token-rate 20 --tokens 32

Ollama-shaped endpoints
  GET  /                      "Ollama is running"
  GET  /api/version           {"version": ...}
  GET  /api/tags              model list
  POST /api/generate          NDJSON stream, one object per token ({"response": tok, "done": false, ...}),
                              last object has "done": true; "stream": false gives one JSON object
  POST /api/chat              same, with {"message": {"role": "assistant", "content": tok}}
  POST /v1/chat/completions   OpenAI-style: with "stream": true, SSE `data: {...}\\n\\n` per token and
                              `data: [DONE]\\n\\n`; otherwise one chat.completion JSON object
  Every streamed object carries "emitted_at": time.time() at the moment it was written, so a
  client can measure per-chunk delay. Token count: --tokens, or options.num_predict /
  max_tokens in the request; rate: --token-rate, or options.standin_token_rate.

Test helpers
  POST /echo                  streams the request body back (chunked) as it arrives
  GET  /bytes/<n>             n deterministic pseudo-random bytes (see pattern_bytes), Content-Length
  GET  /slow?chunks=N&interval=S   N NDJSON lines {"i": k, "emitted_at": ...}, S seconds apart
  GET  /hold                  head + one chunk, then holds the connection until the client leaves
  GET  /stats                 {"requests": ..., "disconnects": ..., ...}
  GET  /headers               the request headers received, as JSON (incl. Host)

Like Ollama, it rejects a Host header that is not 127.0.0.1:<port> / localhost:<port> /
[::1]:<port> with 403 (so a proxy in front of it has to rewrite Host).

It prints one line "ollama-standin listening on http://HOST:PORT" when ready (--port 0 picks
a free port) and exits 0 on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

MODEL = "standin:latest"
WORDS = ("The quick brown fox jumps over the lazy dog while the relay carries every token "
         "through the tunnel without buffering a single byte longer than it must").split()
PATTERN_BLOCK = 1 << 20


def pattern_bytes(n: int, start_block: int = 0):
    """Yields the n-byte pattern of /bytes/<n> in blocks of 1 MiB:
    block i = random.Random(f"{n}:{i}").randbytes(min(1 MiB, n - i * 1 MiB))."""
    i = start_block
    while i * PATTERN_BLOCK < n:
        yield random.Random(f"{n}:{i}").randbytes(min(PATTERN_BLOCK, n - i * PATTERN_BLOCK))
        i += 1


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def stop_task(task: asyncio.Task) -> None:
    """Cancel and wait, so that a cancelled reader is really gone before the next read."""
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


class ClientGone(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 413: "Content Too Large", 500: "Internal Server Error"}


class Request:
    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        parts = urlsplit(target)
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class Connection:
    """One client connection: HTTP/1.1 keep-alive, Content-Length and chunked request bodies."""

    def __init__(self, app: "StandIn", reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.app = app
        self.reader = reader
        self.writer = writer
        self.pending = bytearray()   # bytes read ahead (by the disconnect watcher)
        self.body_left = 0           # Content-Length body bytes not yet read
        self.chunked = False
        self.body_done = True
        self.gone = asyncio.Event()  # the client went away (EOF / reset)

    # -- reading ---------------------------------------------------------------------------------

    async def _read_some(self, n: int = 65536) -> bytes:
        if self.pending:
            out = bytes(self.pending[:n])
            del self.pending[:n]
            return out
        try:
            data = await self.reader.read(n)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.gone.set()
        return data

    async def _read_line(self, limit: int = 65536) -> bytes:
        buf = bytearray()
        while True:
            i = self.pending.find(b"\n")
            if i >= 0:
                buf += self.pending[: i + 1]
                del self.pending[: i + 1]
                return bytes(buf)
            buf += self.pending
            self.pending.clear()
            if len(buf) > limit:
                raise BadRequest(400, "line too long")
            data = await self._read_some()
            if not data:
                raise ClientGone()
            self.pending += data

    async def _read_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            data = await self._read_some(n - len(out))
            if not data:
                raise ClientGone()
            out += data
        return bytes(out)

    async def read_head(self) -> Request | None:
        line = b"\r\n"
        while line in (b"\r\n", b"\n"):  # tolerate leading empty lines
            try:
                line = await self._read_line()
            except ClientGone:
                return None
        parts = line.decode("latin-1").strip().split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, "bad request line")
        headers = []
        while True:
            h = await self._read_line()
            if h in (b"\r\n", b"\n"):
                break
            k, sep, v = h.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest(400, "bad header line")
            headers.append((k.strip(), v.strip()))
            if len(headers) > 200:
                raise BadRequest(400, "too many headers")
        req = Request(parts[0], parts[1], parts[2], headers)
        te = (req.header("transfer-encoding") or "").lower()
        cl = req.header("content-length")
        self.chunked = "chunked" in te
        self.body_left = 0
        if not self.chunked and cl is not None:
            try:
                self.body_left = int(cl)
            except ValueError:
                raise BadRequest(400, "bad Content-Length") from None
        self.body_done = not self.chunked and self.body_left == 0
        self._chunk_left = 0
        return req

    async def read_body_piece(self) -> bytes:
        """The next piece of the request body; b"" at its end."""
        if self.body_done:
            return b""
        if not self.chunked:
            data = await self._read_some(min(self.body_left, 1 << 18))
            if not data:
                raise ClientGone()
            self.body_left -= len(data)
            if self.body_left == 0:
                self.body_done = True
            return data
        if self._chunk_left == 0:
            size_line = await self._read_line()
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (await self._read_line()) not in (b"\r\n", b"\n"):
                    pass  # trailers
                self.body_done = True
                return b""
            self._chunk_left = size
        data = await self._read_some(min(self._chunk_left, 1 << 18))
        if not data:
            raise ClientGone()
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            await self._read_exact(2)  # CRLF
        return data

    async def read_body(self, limit: int = 64 << 20) -> bytes:
        out = bytearray()
        while True:
            piece = await self.read_body_piece()
            if not piece:
                return bytes(out)
            out += piece
            if len(out) > limit:
                raise BadRequest(413, "body too large")

    async def watch_gone(self) -> None:
        """Read ahead (kept in pending) until EOF: sets `gone` when the client leaves mid-response."""
        while not self.gone.is_set():
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.gone.set()
                return
            self.pending += data

    # -- writing ---------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.gone.is_set() or self.writer.is_closing():
            raise ClientGone()
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.gone.set()
            raise ClientGone() from None

    async def send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def send_full(self, status: int, body: bytes, content_type: str = "application/json",
                        extra: list[tuple[str, str]] | None = None) -> None:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))]
        await self.send_head(status, headers + (extra or []))
        if body:
            await self.write(body)

    async def send_json(self, status: int, obj) -> None:
        await self.send_full(status, json.dumps(obj).encode())

    async def start_chunked(self, status: int, content_type: str, extra: list[tuple[str, str]] | None = None):
        await self.send_head(status, [("Content-Type", content_type), ("Transfer-Encoding", "chunked"),
                                      ("Cache-Control", "no-cache")] + (extra or []))

    async def chunk(self, data: bytes) -> None:
        if data:
            await self.write(b"%x\r\n" % len(data) + data + b"\r\n")

    async def end_chunked(self) -> None:
        await self.write(b"0\r\n\r\n")


class StandIn:
    def __init__(self, args):
        self.args = args
        self.port = args.port
        self.stats = {"requests": 0, "disconnects": 0, "hold_disconnects": 0, "slow_disconnects": 0,
                      "stream_disconnects": 0, "active_holds": 0, "active_connections": 0,
                      "connections": 0, "forbidden_host": 0, "by_path": {}}

    def host_ok(self, host: str | None) -> bool:
        if host is None:
            return False
        return host.lower() in {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"}

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self.stats["connections"] += 1
        self.stats["active_connections"] += 1
        try:
            while True:
                try:
                    req = await conn.read_head()
                except BadRequest as e:
                    await conn.send_json(e.status, {"error": str(e)})
                    break
                if req is None:
                    break
                keep = await self.dispatch(conn, req)
                if not keep or conn.gone.is_set():
                    break
        except (ClientGone, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # Shutdown. Finish normally: asyncio (3.11) logs an error for a cancelled connection task.
            pass
        finally:
            self.stats["active_connections"] -= 1
            writer.close()

    async def dispatch(self, conn: Connection, req: Request) -> bool:
        """Serve one request. Returns whether the connection may be kept alive."""
        self.stats["requests"] += 1
        key = req.path if not req.path.startswith("/bytes/") else "/bytes/"
        self.stats["by_path"][key] = self.stats["by_path"].get(key, 0) + 1
        if (req.header("expect") or "").lower() == "100-continue":
            await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.host_ok(req.header("host")):
            self.stats["forbidden_host"] += 1
            await conn.read_body()
            await conn.send_full(403, b"", "text/plain")
            return True
        close = (req.header("connection") or "").lower() == "close"
        p, m = req.path, req.method
        try:
            if p == "/" and m in ("GET", "HEAD"):
                await conn.read_body()
                await conn.send_full(200, b"Ollama is running", "text/plain; charset=utf-8")
            elif p == "/api/version" and m == "GET":
                await conn.send_json(200, {"version": "0.0.0-standin"})
            elif p == "/api/tags" and m == "GET":
                await conn.send_json(200, self.tags())
            elif p in ("/api/generate", "/api/chat") and m == "POST":
                await self.ollama_stream(conn, req, chat=p == "/api/chat")
            elif p == "/v1/chat/completions" and m == "POST":
                await self.openai_chat(conn, req)
            elif p == "/echo" and m in ("POST", "PUT"):
                await self.echo(conn, req)
            elif p.startswith("/bytes/") and m == "GET":
                await self.bytes_(conn, req)
            elif p == "/slow" and m == "GET":
                await self.slow(conn, req)
            elif p == "/hold" and m == "GET":
                await self.hold(conn, req)
            elif p == "/stats" and m == "GET":
                await conn.send_json(200, self.stats)
            elif p == "/headers":
                await conn.read_body()
                await conn.send_json(200, {"method": m, "target": req.target,
                                           "headers": [[k, v] for k, v in req.headers],
                                           "host": req.header("host")})
            elif p in ("/", "/api/version", "/api/tags", "/api/generate", "/api/chat", "/v1/chat/completions",
                       "/echo", "/slow", "/hold", "/stats") or p.startswith("/bytes/"):
                await conn.read_body()
                await conn.send_json(405, {"error": "method not allowed"})
            else:
                await conn.read_body()
                await conn.send_json(404, {"error": f"not found: {p}"})
        except BadRequest as e:
            await conn.send_json(e.status, {"error": str(e)})
            return False
        return not close

    # -- Ollama -----------------------------------------------------------------------------------

    def tags(self) -> dict:
        return {"models": [{
            "name": MODEL, "model": MODEL, "modified_at": "2026-01-01T00:00:00Z", "size": 4_000_000,
            "digest": "0" * 64,
            "details": {"parent_model": "", "format": "gguf", "family": "standin", "families": ["standin"],
                        "parameter_size": "0B", "quantization_level": "none"}}]}

    async def _json_body(self, conn: Connection) -> dict:
        raw = await conn.read_body()
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise BadRequest(400, "invalid JSON body") from None
        if not isinstance(doc, dict):
            raise BadRequest(400, "JSON body must be an object")
        return doc

    def _plan(self, doc: dict) -> tuple[int, float]:
        opts = doc.get("options") if isinstance(doc.get("options"), dict) else {}
        n = opts.get("num_predict", doc.get("max_tokens", self.args.tokens))
        rate = opts.get("standin_token_rate", self.args.token_rate)
        try:
            n = max(0, min(int(n), 1_000_000))
            rate = float(rate)
        except (TypeError, ValueError):
            raise BadRequest(400, "bad num_predict / standin_token_rate") from None
        return n, rate

    @staticmethod
    def token(i: int) -> str:
        return WORDS[i % len(WORDS)] + " "

    async def _ticks(self, n: int, rate: float):
        """Yields 0..n-1 at `rate` per second (absolute schedule, no drift)."""
        interval = 1.0 / rate if rate > 0 else 0.0
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            yield i

    async def ollama_stream(self, conn: Connection, req: Request, chat: bool) -> None:
        doc = await self._json_body(conn)
        model = doc.get("model") or MODEL
        n, rate = self._plan(doc)
        stream = doc.get("stream", True) is not False
        t_start = time.monotonic_ns()

        def obj(content: str, done: bool) -> dict:
            o = {"model": model, "created_at": iso_now()}
            if chat:
                o["message"] = {"role": "assistant", "content": content}
            else:
                o["response"] = content
            o["done"] = done
            if done:
                dur = time.monotonic_ns() - t_start
                o.update({"done_reason": "stop", "total_duration": dur, "load_duration": 0,
                          "prompt_eval_count": 1, "prompt_eval_duration": 0, "eval_count": n,
                          "eval_duration": dur})
                if not chat:
                    o["context"] = [1, 2, 3]
            o["emitted_at"] = time.time()
            return o

        if not stream:
            text = "".join([self.token(i) async for i in self._ticks(n, rate)])
            await conn.send_json(200, obj(text, True))
            return
        watcher = asyncio.create_task(conn.watch_gone())
        try:
            await conn.start_chunked(200, "application/x-ndjson")
            async for i in self._ticks(n, rate):
                if conn.gone.is_set():
                    raise ClientGone()
                await conn.chunk(json.dumps(obj(self.token(i), False)).encode() + b"\n")
            await conn.chunk(json.dumps(obj("", True)).encode() + b"\n")
            await conn.end_chunked()
        except ClientGone:
            self._gone("stream_disconnects")
            raise
        finally:
            await stop_task(watcher)

    async def openai_chat(self, conn: Connection, req: Request) -> None:
        doc = await self._json_body(conn)
        model = doc.get("model") or MODEL
        n, rate = self._plan(doc)
        cid = "chatcmpl-" + uuid.uuid4().hex[:12]
        created = int(time.time())
        if not doc.get("stream"):
            text = "".join([self.token(i) async for i in self._ticks(n, rate)])
            await conn.send_json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": "fp_standin",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})
            return

        def chunk(delta: dict, finish) -> bytes:
            o = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "system_fingerprint": "fp_standin",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "emitted_at": time.time()}
            return b"data: " + json.dumps(o).encode() + b"\n\n"

        watcher = asyncio.create_task(conn.watch_gone())
        try:
            await conn.start_chunked(200, "text/event-stream")
            async for i in self._ticks(n, rate):
                if conn.gone.is_set():
                    raise ClientGone()
                await conn.chunk(chunk({"role": "assistant", "content": self.token(i)}, None))
            await conn.chunk(chunk({"role": "assistant", "content": ""}, "stop"))
            await conn.chunk(b"data: [DONE]\n\n")
            await conn.end_chunked()
        except ClientGone:
            self._gone("stream_disconnects")
            raise
        finally:
            await stop_task(watcher)

    # -- helpers ----------------------------------------------------------------------------------

    def _gone(self, which: str) -> None:
        self.stats["disconnects"] += 1
        self.stats[which] += 1

    async def echo(self, conn: Connection, req: Request) -> None:
        await conn.start_chunked(200, req.header("content-type") or "application/octet-stream")
        while True:
            piece = await conn.read_body_piece()
            if not piece:
                break
            await conn.chunk(piece)
        await conn.end_chunked()

    async def bytes_(self, conn: Connection, req: Request) -> None:
        await conn.read_body()
        try:
            n = int(req.path[len("/bytes/"):])
            if n < 0:
                raise ValueError
        except ValueError:
            raise BadRequest(400, "bad size") from None
        await conn.send_head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        for block in pattern_bytes(n):
            await conn.write(block)

    async def slow(self, conn: Connection, req: Request) -> None:
        await conn.read_body()
        try:
            chunks = int(req.query.get("chunks", "10"))
            interval = float(req.query.get("interval", "0.1"))
        except ValueError:
            raise BadRequest(400, "bad chunks / interval") from None
        watcher = asyncio.create_task(conn.watch_gone())
        try:
            await conn.start_chunked(200, "application/x-ndjson")
            t0 = time.monotonic()
            for i in range(chunks):
                delay = t0 + i * interval - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(conn.gone.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                if conn.gone.is_set():
                    raise ClientGone()
                await conn.chunk(json.dumps({"i": i, "emitted_at": time.time()}).encode() + b"\n")
            await conn.end_chunked()
        except ClientGone:
            self._gone("slow_disconnects")
            raise
        finally:
            await stop_task(watcher)

    async def hold(self, conn: Connection, req: Request) -> None:
        await conn.read_body()
        self.stats["active_holds"] += 1
        try:
            await conn.start_chunked(200, "application/x-ndjson")
            await conn.chunk(json.dumps({"held": True, "emitted_at": time.time()}).encode() + b"\n")
            await conn.watch_gone()
            self._gone("hold_disconnects")
            raise ClientGone()
        except ClientGone:
            if not conn.gone.is_set():
                self._gone("hold_disconnects")
            raise
        finally:
            self.stats["active_holds"] -= 1


async def main_async(args) -> int:
    app = StandIn(args)
    server = await asyncio.start_server(app.handle_connection, args.host, args.port, backlog=1024,
                                        reuse_address=True, limit=1 << 20)
    app.port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = args.host if ":" not in args.host else f"[{args.host}]"
    print(f"ollama-standin listening on http://{host}:{app.port} (development stand-in, not part of Tether)",
          flush=True)
    await stop.wait()
    server.close()
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Ollama stand-in for Tether development and tests "
                                             "(not part of the product).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=11434, help="0 picks a free port (printed in the ready line)")
    ap.add_argument("--token-rate", type=float, default=20.0, help="tokens per second (default 20; 0 = no delay)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per generation (default 32)")
    args = ap.parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

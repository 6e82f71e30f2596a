"""The CloudToLocalLLM desktop app's legacy JSON bridge protocol (PROTOCOL.md §10), client side.

    async def handler(req: LegacyRequest):
        return 200, {"content-type": "application/json"}, '{"ok":true}'

    async with LegacyBridge(f"ws://127.0.0.1:{port}/ws/bridge", token=jwt, handler=handler) as b:
        b.auth   # the relay's auth message
        ...

The handler may return (status, headers, body), a dict used as the response "data", or raise
LegacyError(message) to answer with an "error" message. Pings from the relay are answered with
pongs unless `answer_pings` is False (or after stop_answering_pings()).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LegacyError(Exception):
    """Raise from a handler to answer {"type":"error","id":...,"data":{"message":...}}."""


class LegacyClosed(Exception):
    def __init__(self, code: int | None, reason: str):
        self.code = code
        self.reason = reason
        super().__init__(f"legacy bridge closed: code={code} reason={reason!r}")


@dataclass
class LegacyRequest:
    id: str
    method: str
    path: str
    headers: dict
    body: str | None
    raw: dict = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in (self.headers or {}).items():
            if k.lower() == name:
                return v
        return None


LegacyHandler = Callable[[LegacyRequest], Awaitable[object]]


class LegacyBridge:
    def __init__(self, url: str, token: str | None = None, *, token_placement: str = "query",
                 handler: LegacyHandler | None = None, answer_pings: bool = True, open_timeout: float = 10.0,
                 subprotocols: list[str] | None = None):
        self.url = url
        self.token = token
        self.token_placement = token_placement
        self.handler = handler
        self.answer_pings = answer_pings
        self.open_timeout = open_timeout
        self.subprotocols = subprotocols
        self.ws = None
        self.auth: dict | None = None
        self.messages: list[dict] = []       # every message received (parsed)
        self.requests: list[LegacyRequest] = []
        self.request_queue: asyncio.Queue[LegacyRequest] = asyncio.Queue()
        self.pings: list[dict] = []
        self.ping_event = asyncio.Event()
        self.pongs: list[dict] = []
        self.pong_event = asyncio.Event()
        self.violations: list[str] = []
        self.handler_errors: list[BaseException] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def connect(self) -> "LegacyBridge":
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed
        url = self.url
        headers = {}
        protos = list(self.subprotocols or [])
        if self.token is not None:
            if self.token_placement == "query":
                url += ("&" if "?" in url else "?") + "token=" + self.token
            elif self.token_placement == "bearer":
                headers["Authorization"] = f"Bearer {self.token}"
            elif self.token_placement == "subprotocol":
                protos.append(f"token-{self.token}")
            else:
                raise ValueError(self.token_placement)
        self.ws = await connect(url, additional_headers=headers, subprotocols=protos or None, compression=None,
                                ping_interval=None, open_timeout=self.open_timeout, close_timeout=5, proxy=None,
                                max_size=64 << 20)
        try:
            first = await asyncio.wait_for(self.ws.recv(), self.open_timeout)
        except ConnectionClosed as e:
            self._closed_from(e)
            raise LegacyClosed(self.close_code, self.close_reason) from None
        msg = self._parse(first)
        if not isinstance(msg, dict) or msg.get("type") != "auth":
            self.violations.append(f"first message is not auth: {first!r}")
        self.auth = msg
        self._reader_task = asyncio.create_task(self._reader())
        return self

    async def __aenter__(self) -> "LegacyBridge":
        try:
            return await self.connect()
        except BaseException:
            await self.abort()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _closed_from(self, e) -> None:
        rc = getattr(e, "rcvd", None)
        if not self.closed.is_set():
            self.close_code = rc.code if rc else None
            self.close_reason = rc.reason if rc else ""
            self.closed.set()

    def _parse(self, raw) -> dict | None:
        if isinstance(raw, bytes):
            self.violations.append(f"binary message from relay: {raw[:100]!r}")
            return None
        try:
            msg = json.loads(raw)
        except ValueError:
            self.violations.append(f"non-JSON message from relay: {raw[:200]!r}")
            return None
        self.messages.append(msg)
        return msg

    async def send_json(self, obj: dict) -> None:
        await self.ws.send(json.dumps(obj))

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send(text)

    def stop_answering_pings(self) -> None:
        self.answer_pings = False

    async def ping(self, timeout: float = 5.0) -> dict:
        """Send a ping; returns the relay's pong."""
        self.pong_event.clear()
        n = len(self.pongs)
        await self.send_json({"type": "ping", "id": str(uuid.uuid4()), "timestamp": iso_now()})
        while len(self.pongs) == n:
            await asyncio.wait_for(self.pong_event.wait(), timeout)
            self.pong_event.clear()
        return self.pongs[-1]

    async def next_request(self, timeout: float = 10.0) -> LegacyRequest:
        """The next request (when no handler is set; with a handler they are answered)."""
        return await asyncio.wait_for(self.request_queue.get(), timeout)

    async def respond(self, req_id: str, status: int, headers: dict | None = None, body: str = "") -> None:
        await self.send_json({"type": "response", "id": req_id,
                              "data": {"statusCode": status, "headers": headers or {}, "body": body}})

    async def respond_error(self, req_id: str, message: str) -> None:
        await self.send_json({"type": "error", "id": req_id, "data": {"message": message}})

    async def _reader(self) -> None:
        from websockets.exceptions import ConnectionClosed
        try:
            async for raw in self.ws:
                msg = self._parse(raw)
                if msg is None:
                    continue
                t = msg.get("type")
                if t == "request":
                    d = msg.get("data") or {}
                    req = LegacyRequest(msg.get("id"), d.get("method"), d.get("path"), d.get("headers") or {},
                                        d.get("body"), msg)
                    self.requests.append(req)
                    if self.handler is None:
                        self.request_queue.put_nowait(req)
                    else:
                        task = asyncio.create_task(self._handle(req))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                elif t == "ping":
                    self.pings.append(msg)
                    self.ping_event.set()
                    if self.answer_pings:
                        await self.send_json({"type": "pong", "id": msg.get("id"), "timestamp": iso_now()})
                elif t == "pong":
                    self.pongs.append(msg)
                    self.pong_event.set()
        except ConnectionClosed as e:
            self._closed_from(e)
        finally:
            rc = self.ws.protocol.close_rcvd
            if not self.closed.is_set():
                self.close_code = rc.code if rc else None
                self.close_reason = rc.reason if rc else ""
                self.closed.set()

    async def _handle(self, req: LegacyRequest) -> None:
        try:
            out = await self.handler(req)
            if isinstance(out, tuple):
                status, headers, body = out
                await self.respond(req.id, status, headers, body)
            elif isinstance(out, dict):
                await self.send_json({"type": "response", "id": req.id, "data": out})
            elif out is not None:
                raise TypeError(f"legacy handler returned {out!r}")
        except LegacyError as e:
            with contextlib.suppress(Exception):
                await self.respond_error(req.id, str(e))
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001
            from websockets.exceptions import ConnectionClosed
            if not isinstance(e, ConnectionClosed):
                self.handler_errors.append(e)

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code, self.close_reason

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(code, reason), 6)
        await self._stop()

    async def abort(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.transport.abort()
        await self._stop()

    async def _stop(self) -> None:
        if self._reader_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._reader_task), 6)
            self._reader_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    def assert_clean(self) -> None:
        assert not self.violations, f"relay violated the legacy protocol: {self.violations}"
        assert not self.handler_errors, f"legacy handlers raised: {self.handler_errors!r}"

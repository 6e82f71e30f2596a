"""Behind a reverse proxy (`limits.trusted_proxies`): a real nginx in front of the relay, as an
operator would put it, adding X-Forwarded-For. Clients reach nginx from distinct loopback
addresses (127.0.0.2, 127.0.0.3...), so the relay sees one peer (nginx at 127.0.0.1) carrying
several clients, and must tell them apart only when told to trust nginx."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from test_sessions import quota_relay, wait_audit
from test_tunnel_relay import bridge, run, wait_bridges
from tether_testlib import free_port
from tunnel_fixtures import NGINX_BIN

pytestmark = pytest.mark.timeout(120)


class FrontProxy:
    """nginx proxying every path to the relay, with the usual forwarding fields."""

    def __init__(self, root: Path, upstream_port: int):
        self.root = root
        self.port = free_port()
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        conf = root / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log stderr info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    upstream relay {{ server 127.0.0.1:{upstream_port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://relay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
        }}
    }}
}}
""")
        self.log = root / "nginx.stderr.log"
        self.proc = subprocess.Popen([str(NGINX_BIN), "-p", str(root), "-c", str(conf), "-e", "stderr"],
                                     stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, \
                    f"nginx did not start:\n{self.log.read_text(errors='replace')}"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def front_proxy(tmp_path):
    if not NGINX_BIN.is_file():
        pytest.fail(f"nginx not found at {NGINX_BIN} (install the Debian package nginx-light)", pytrace=False)
    proxies: list[FrontProxy] = []

    def start(relay) -> FrontProxy:
        p = FrontProxy(tmp_path / f"front{len(proxies)}", relay.port)
        proxies.append(p)
        return p

    yield start
    for p in proxies:
        p.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)


def request_from(source: str, port: int, path: str, token: str | None, headers: dict | None = None) -> tuple[int, bytes]:
    """One request from a chosen source address (blocking: run it in a thread)."""
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    lines = [f"GET {path} HTTP/1.1", "Host: relay.example", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    s.settimeout(10)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, body


def forwarded(body: bytes) -> dict:
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    return {"for": headers.get("x-forwarded-for"), "proto": headers.get("x-forwarded-proto")}


LIMITS = ("--limit-loopback", "true", "--auth-failure-rate", "0.01", "--auth-failure-burst", "3")


@pytest.mark.parametrize("trusted", [True, False])
def test_clients_behind_nginx_are_told_apart_only_when_nginx_is_trusted(tunnel_relay_factory, mint_token,
                                                                        front_proxy, trusted):
    extra = ("--trusted-proxies", "127.0.0.1/32") if trusted else ()
    relay = quota_relay(tunnel_relay_factory, *LIMITS, *extra)
    nginx = front_proxy(relay)
    tok = mint_token("alice")

    async def main():
        async with bridge(relay, tok, name="alice-desk"):
            await wait_bridges(relay, tok, 1)
            via = lambda source, token, **kw: asyncio.to_thread(request_from, source, nginx.port, "/api/ollama/info", token, **kw)
            # 127.0.0.2 fails authentication until its bucket is empty.
            for _ in range(3):
                status, _ = await via("127.0.0.2", "not-a-token")
                assert status == 401
            status, body = await via("127.0.0.2", tok)
            assert status == 429 and b"AUTH_RATE_LIMITED" in body, body
            # 127.0.0.3 through the same nginx connection pool: its own client when nginx is
            # trusted; otherwise it shares nginx's address, and so its empty bucket.
            status, body = await via("127.0.0.3", tok)
            if not trusted:
                assert status == 429, body
                return
            assert status == 200, body
            assert forwarded(body) == {"for": "127.0.0.3", "proto": "http"}
            # What a client writes itself lies left of what nginx appends: never believed.
            status, body = await via("127.0.0.3", tok, headers={"X-Forwarded-For": "10.9.9.9, 127.0.0.2",
                                                               "X-Forwarded-Proto": "https"})
            assert status == 200, body
            assert forwarded(body) == {"for": "127.0.0.3", "proto": "http"}

    run(main())
    failures = wait_audit(relay, "auth_failure")
    assert failures and {f["address"] for f in failures} == {"127.0.0.2" if trusted else "127.0.0.1"}, failures


def test_an_untrusted_peer_cannot_claim_another_address(tunnel_relay_factory, mint_token):
    """Straight to the relay: X-Forwarded-For from a peer that is not a trusted proxy is
    replaced by the peer's own address, and does not move its rate-limit bucket."""
    relay = quota_relay(tunnel_relay_factory, *LIMITS, "--trusted-proxies", "127.0.0.1/32")
    tok = mint_token("alice")

    async def main():
        async with bridge(relay, tok, name="alice-desk"):
            await wait_bridges(relay, tok, 1)
            direct = lambda token, spoof: asyncio.to_thread(
                request_from, "127.0.0.4", relay.port, "/api/ollama/info", token,
                {"X-Forwarded-For": spoof, "X-Forwarded-Proto": "https"})
            status, body = await direct(tok, "203.0.113.9")
            assert status == 200 and forwarded(body) == {"for": "127.0.0.4", "proto": "http"}, body
            for i in range(3):
                status, _ = await direct("not-a-token", f"203.0.113.{i}")
                assert status == 401
            status, body = await direct(tok, "203.0.113.50")
            assert status == 429 and b"AUTH_RATE_LIMITED" in body, body

    run(main())
    failures = wait_audit(relay, "auth_failure")
    assert failures and {f["address"] for f in failures} == {"127.0.0.4"}, failures


def test_trusted_proxies_reload_from_the_file(relay_factory, mint_token, jwt_secret, front_proxy, tmp_path):
    """A list in the YAML file, applied by POST /admin/reload without a restart; a bad entry is
    refused with the key named and the running list stays."""
    from test_operations import admin, ADMIN_TOKEN

    cfg = tmp_path / "relay.yaml"
    base = f"auth: {{jwt_secret: {jwt_secret}}}\nadmin: {{token: {ADMIN_TOKEN}}}\n"
    cfg.write_text(base)
    relay = relay_factory("--config", str(cfg))
    nginx = front_proxy(relay)
    tok = mint_token("alice")

    async def seen_as(source: str) -> str:
        status, body = await asyncio.to_thread(request_from, source, nginx.port, "/api/ollama/info", tok)
        assert status == 200, body
        return forwarded(body)["for"]

    async def main():
        async with bridge(relay, tok, name="alice-desk"):
            await wait_bridges(relay, tok, 1)
            assert await seen_as("127.0.0.2") == "127.0.0.1"
            cfg.write_text(base + "limits:\n  trusted_proxies:\n    - 127.0.0.0/30\n    - fd00::/8\n")
            status, _, body = await asyncio.to_thread(admin, relay, "POST", "/admin/reload")
            assert status == 200 and "limits.trusted_proxies" in json.loads(body)["changes"], body
            assert await seen_as("127.0.0.2") == "127.0.0.2"
            assert await seen_as("127.0.0.5") == "127.0.0.5"
            cfg.write_text(base + "limits:\n  trusted_proxies: [127.0.0.1/33]\n")
            status, _, body = await asyncio.to_thread(admin, relay, "POST", "/admin/reload")
            assert status == 422 and "limits.trusted_proxies" in json.loads(body)["error"]["message"], body
            assert await seen_as("127.0.0.2") == "127.0.0.2"

    run(main())


def test_a_forwarded_loopback_address_is_not_exempt(tunnel_relay_factory, mint_token, front_proxy):
    """Loopback peers are exempt from per-address limits (a local proxy) by default; an address
    that only X-Forwarded-For names is a client like any other, whatever it says."""
    relay = quota_relay(tunnel_relay_factory, "--auth-failure-rate", "0.01", "--auth-failure-burst", "3",
                        "--trusted-proxies", "127.0.0.1/32")
    nginx = front_proxy(relay)
    tok = mint_token("alice")
    for _ in range(3):
        assert request_from("127.0.0.2", nginx.port, "/api/ollama/info", "not-a-token")[0] == 401
    status, body = request_from("127.0.0.2", nginx.port, "/api/ollama/info", tok)
    assert status == 429 and b"AUTH_RATE_LIMITED" in body, body
    # nginx itself, straight to the relay, is still the exempt local peer.
    for _ in range(5):
        assert request_from("127.0.0.1", relay.port, "/api/ollama/info", "not-a-token")[0] == 401


@pytest.mark.parametrize("header, client", [
    ("192.0.2.9", "192.0.2.9"),
    ("192.0.2.9:8080", "192.0.2.9"),
    ("[2001:db8::7]:443", "2001:db8::7"),
    ("2001:db8::7", "2001:db8::7"),
    ("bogus, 192.0.2.9", "192.0.2.9"),
    ("192.0.2.9, 127.0.0.3", "192.0.2.9"),  # .3 is a trusted hop: walked past
    ("192.0.2.9, bogus", "127.0.0.2"),  # a broken entry stops the walk at the peer
    ("192.0.2.9, localhost", "127.0.0.2"),  # names are not addresses
    ("192.0.2.9:http", "127.0.0.2"),
    ("[2001:db8::7]junk", "127.0.0.2"),
    (", ".join(["192.0.2.9"] + ["127.0.0.5"] * 20), "127.0.0.5"),  # at most 16 hops walked
    ("", "127.0.0.2"),
])
def test_x_forwarded_for_from_a_trusted_peer(tunnel_relay_factory, mint_token, header, client):
    relay = tunnel_relay_factory("--trusted-proxies", "127.0.0.0/8")
    tok = mint_token("alice")

    async def main():
        async with bridge(relay, tok, name="alice-desk"):
            await wait_bridges(relay, tok, 1)
            status, body = await asyncio.to_thread(request_from, "127.0.0.2", relay.port, "/api/ollama/info", tok,
                                                   {"X-Forwarded-For": header, "X-Forwarded-Proto": "https"})
            assert status == 200, body
            assert forwarded(body) == {"for": client, "proto": "https"}, (header, body)

    run(main())

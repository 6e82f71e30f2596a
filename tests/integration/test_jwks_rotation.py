"""JWKS key rotation without a restart: --jwks-file re-read, --jwks-url re-fetched over HTTPS
(periodically, on an unknown kid with a rate limit, and on SIGHUP).

Tokens are RS256 and ES256, signed with the openssl CLI (no Python crypto package needed); the
JWKS server is Python's http.server behind ssl, with a certificate from the session's test PKI
(the `certs` fixture: a root CA made with the openssl CLI, which the relay gets as
--jwks-ca-file)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tether_testlib import HOST, free_port
from tunnel_fixtures import b64url

JWKS_PATH = "/.well-known/jwks.json"


# --------------------------------------------------------------------------------------------
# Keys and tokens (openssl CLI)
# --------------------------------------------------------------------------------------------


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    res = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{res.stderr.decode(errors='replace')}")
    return res.stdout


def _der_ecdsa_to_raw(sig: bytes, size: int = 32) -> bytes:
    """DER ECDSA-Sig-Value (SEQUENCE of two INTEGERs) -> r || s, as JWS wants (RFC 7518 §3.4)."""
    assert sig[0] == 0x30, sig
    i = 2 if sig[1] < 0x80 else 2 + (sig[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert sig[i] == 0x02, sig
        n = sig[i + 1]
        out += sig[i + 2:i + 2 + n].lstrip(b"\0").rjust(size, b"\0")
        i += 2 + n
    return out


class SigningKey:
    """An RS256 (RSA-2048) or ES256 (P-256) private key in a PEM file, with its public JWK."""

    def __init__(self, path: Path, kid: str, alg: str):
        self.path, self.kid, self.alg = path, kid, alg
        if alg == "RS256":
            _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))
            modulus = _openssl("rsa", "-in", str(path), "-noout", "-modulus").decode().strip()
            n = bytes.fromhex(modulus.split("=", 1)[1])
            self.jwk = {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64url(n), "e": "AQAB"}
        elif alg == "ES256":
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
            point = _openssl("pkey", "-in", str(path), "-pubout", "-outform", "DER")[-65:]
            assert point[0] == 4, "expected an uncompressed EC point"
            self.jwk = {"kty": "EC", "kid": kid, "alg": "ES256", "crv": "P-256",
                        "x": b64url(point[1:33]), "y": b64url(point[33:])}
        else:
            raise ValueError(alg)

    def token(self, sub: str = "alice", kid: str | None = None, ttl: int = 3600) -> str:
        """A JWT signed by this key; `kid` overrides the header's kid (to name an unknown one)."""
        now = int(time.time())
        header = {"alg": self.alg, "typ": "JWT", "kid": kid or self.kid}
        payload = {"sub": sub, "iat": now, "exp": now + ttl}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + b64url(json.dumps(payload, separators=(",", ":")).encode()))
        sig = _openssl("dgst", "-sha256", "-sign", str(self.path), data=signing_input.encode())
        if self.alg == "ES256":
            sig = _der_ecdsa_to_raw(sig)
        return signing_input + "." + b64url(sig)


class Keys:
    def __init__(self, a: SigningKey, b: SigningKey, c: SigningKey):
        self.a, self.b, self.c = a, b, c


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    """A (RS256, kid "key-a"), B (ES256, kid "key-b"), C (RS256, kid "key-c", never published)."""
    d = tmp_path_factory.mktemp("jwks-keys")
    return Keys(SigningKey(d / "a.pem", "key-a", "RS256"), SigningKey(d / "b.pem", "key-b", "ES256"),
                SigningKey(d / "c.pem", "key-c", "RS256"))


def jwks_bytes(*keys: SigningKey) -> bytes:
    return json.dumps({"keys": [k.jwk for k in keys]}, indent=1).encode()


def write_jwks(path: Path, *keys: SigningKey) -> None:
    """Atomically, as an operator (or a config-management tool) would."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(jwks_bytes(*keys))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def call(relay, token: str) -> tuple[int, str]:
    """GET /api/ollama/bridge/status with the token: 200 when it verifies, else 401 + reason."""
    conn = http.client.HTTPConnection(HOST, relay.port, timeout=10)
    try:
        conn.request("GET", "/api/ollama/bridge/status", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        return r.status, body
    finally:
        conn.close()


def accepted(relay, token: str) -> bool:
    status, body = call(relay, token)
    assert status in (200, 401), (status, body)
    return status == 200


def assert_refused(relay, token: str, reason: str | None = None) -> None:
    status, body = call(relay, token)
    assert status == 401, (status, body)
    if reason:
        assert json.loads(body)["error"]["message"] == reason, body


def wait_until(predicate, timeout: float, what: str, relay=None) -> float:
    t0 = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            tail = f"\nrelay stderr:\n{relay.stderr_tail(40)}" if relay else ""
            raise AssertionError(f"{what}: not within {timeout}s{tail}")
        time.sleep(0.1)


def warm(relay, token: str, n: int = 6) -> None:
    """Several connections, so every worker has verified (and cached) the token."""
    for _ in range(n):
        assert accepted(relay, token)


# --------------------------------------------------------------------------------------------
# HTTPS JWKS server
# --------------------------------------------------------------------------------------------


class QuietHTTPServer(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the relay hangs up on an oversized body; no traceback for that


class JWKSServer:
    """Serves `body` at /.well-known/jwks.json over HTTPS (HTTP/1.1; chunked if `chunked`), with
    `status`; counts the GETs of that path."""

    def __init__(self, cert, port: int = 0):
        self.body = b'{"keys":[]}'
        self.status = 200
        self.chunked = False
        self.extra_headers: dict[str, str] = {}
        self.gets = 0
        self.lock = threading.Lock()
        self.cert = cert
        self.port = port
        self.httpd: QuietHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{JWKS_PATH}"

    def serve(self, *keys: SigningKey) -> None:
        with self.lock:
            self.body, self.status = jwks_bytes(*keys), 200

    def fetches(self) -> int:
        with self.lock:
            return self.gets

    def start(self) -> "JWKSServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                with server.lock:
                    if self.path == JWKS_PATH:
                        server.gets += 1
                    status, body, chunked = server.status, server.body, server.chunked
                    extra = dict(server.extra_headers)
                if self.path != JWKS_PATH:
                    status, body = 404, b"not found"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                for k, v in extra.items():
                    self.send_header(k, v)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 100):
                        part = body[i:i + 100]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert.cert), str(self.cert.key))
        self.httpd = QuietHTTPServer((HOST, self.port), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture
def jwks_server(certs):
    servers: list[JWKSServer] = []

    def start(port: int = 0) -> JWKSServer:
        s = JWKSServer(certs.a, port).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def url_relay(relay_factory, certs, url: str, *extra: str):
    return relay_factory("--workers", "2", "--jwks-url", url, "--jwks-ca-file", str(certs.ca), *extra)


# --------------------------------------------------------------------------------------------
# (a) JWKS file
# --------------------------------------------------------------------------------------------


def test_file_rotation(relay_factory, keys, tmp_path):
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, keys.a)
    relay = relay_factory("--workers", "2", "--jwks-file", str(jwks), "--jwks-refresh-interval", "1")
    ta, tb = keys.a.token("alice"), keys.b.token("bob")
    warm(relay, ta)
    assert_refused(relay, tb, "unknown signing key")

    # The new key is published next to the old one: B works without a restart, A still does.
    write_jwks(jwks, keys.a, keys.b)
    wait_until(lambda: accepted(relay, tb), 5, "token signed by the new key B accepted", relay)
    warm(relay, ta)
    warm(relay, tb)

    # The old key is withdrawn: A stops working, although every worker had it cached.
    write_jwks(jwks, keys.b)
    wait_until(lambda: not accepted(relay, ta), 5, "token signed by the removed key A refused", relay)
    for _ in range(6):
        assert_refused(relay, ta, "unknown signing key")
        assert accepted(relay, tb)
    assert "JWT keys updated" in relay.stderr_text()


def test_file_broken_keeps_old_keys(relay_factory, keys, tmp_path):
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, keys.a)
    relay = relay_factory("--jwks-file", str(jwks), "--jwks-refresh-interval", "1")
    ta = keys.a.token()
    warm(relay, ta, 2)
    for bad in (b"{not json", b'{"keys":[]}', None):
        if bad is None:
            jwks.unlink()
        else:
            jwks.write_bytes(bad)
        n = relay.stderr_text().count("JWT key refresh failed")
        wait_until(lambda: relay.stderr_text().count("JWT key refresh failed") > n, 5, "refresh failure logged", relay)
        assert accepted(relay, ta), f"old key lost after a broken file ({bad!r})"
    # Repaired: the next refresh takes the file again.
    write_jwks(jwks, keys.b)
    wait_until(lambda: accepted(relay, keys.b.token()), 5, "repaired file taken", relay)
    assert_refused(relay, ta)
    assert relay.healthy()


def test_sighup_reloads_file_at_once(relay_factory, keys, tmp_path):
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, keys.a)
    # Neither the periodic refresh nor an unknown kid may reload within the test.
    relay = relay_factory("--workers", "2", "--jwks-file", str(jwks), "--jwks-refresh-interval", "3600",
                          "--jwks-min-refresh-interval", "3600")
    tb = keys.b.token()
    assert_refused(relay, tb, "unknown signing key")
    write_jwks(jwks, keys.a, keys.b)
    time.sleep(1.0)
    assert_refused(relay, tb, "unknown signing key")  # nothing reloads on its own
    relay.send_signal(signal.SIGHUP)
    wait_until(lambda: accepted(relay, tb), 3, "key B accepted after SIGHUP", relay)
    warm(relay, keys.a.token())
    write_jwks(jwks, keys.b)
    relay.send_signal(signal.SIGHUP)
    wait_until(lambda: not accepted(relay, keys.a.token()), 3, "key A refused after SIGHUP", relay)


# --------------------------------------------------------------------------------------------
# (b) JWKS URL over HTTPS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_url_rotation(relay_factory, certs, keys, jwks_server, chunked):
    server = jwks_server()
    server.chunked = chunked
    server.serve(keys.a)
    # "localhost": SNI and hostname verification against the certificate's DNS name.
    relay = url_relay(relay_factory, certs, server.url("localhost"), "--jwks-refresh-interval", "1")
    assert server.fetches() >= 1, "the relay fetches the JWKS at startup"
    ta, tb = keys.a.token("alice"), keys.b.token("bob")
    warm(relay, ta)
    assert_refused(relay, tb, "unknown signing key")

    server.serve(keys.a, keys.b)
    wait_until(lambda: accepted(relay, tb), 5, "token signed by the new key B accepted", relay)
    warm(relay, ta)

    server.serve(keys.b)
    wait_until(lambda: not accepted(relay, ta), 5, "token signed by the removed key A refused", relay)
    for _ in range(6):
        assert_refused(relay, ta, "unknown signing key")
        assert accepted(relay, tb)


def test_url_unknown_kid_refetches_with_rate_limit(relay_factory, certs, keys, jwks_server):
    server = jwks_server()
    server.serve(keys.a)
    min_interval = 3.0
    relay = url_relay(relay_factory, certs, server.url("127.0.0.1"), "--jwks-refresh-interval", "3600",
                      "--jwks-min-refresh-interval", str(min_interval))
    assert server.fetches() == 1
    ta, tb = keys.a.token(), keys.b.token()
    warm(relay, ta)
    time.sleep(min_interval)  # past the rate limit's window from the startup fetch

    # B is published; the first token naming it triggers a fetch long before the periodic one.
    server.serve(keys.a, keys.b)
    waited = wait_until(lambda: accepted(relay, tb), 5, "unknown kid triggers a fetch", relay)
    assert waited < 3
    assert server.fetches() == 2

    # A burst of tokens with unknown kids: one more fetch, not twenty.
    before = server.fetches()
    for i in range(20):
        assert_refused(relay, keys.c.token(kid=f"unknown-{i}"), "unknown signing key")
    time.sleep(min_interval + 2)
    burst_fetches = server.fetches() - before
    assert 1 <= burst_fetches <= 2, f"{burst_fetches} fetches for a burst of 20 unknown kids"
    assert accepted(relay, ta) and accepted(relay, tb)

    # SIGHUP fetches at once, whatever the rate limit.
    server.serve(keys.b)
    before = server.fetches()
    relay.send_signal(signal.SIGHUP)
    wait_until(lambda: not accepted(relay, ta), 3, "key A refused after SIGHUP", relay)
    assert server.fetches() == before + 1


# --------------------------------------------------------------------------------------------
# (c) failing URL
# --------------------------------------------------------------------------------------------


def test_url_failures_keep_old_keys(relay_factory, certs, keys, jwks_server):
    server = jwks_server()
    server.serve(keys.a)
    relay = url_relay(relay_factory, certs, server.url(), "--jwks-refresh-interval", "1",
                      "--jwks-min-refresh-interval", "1")
    ta = keys.a.token()
    warm(relay, ta)

    def failures() -> int:
        return relay.stderr_text().count("JWT key refresh failed")

    cases = [
        ("garbage", lambda: setattr(server, "body", b"<html>not json</html>")),
        ("empty set", lambda: setattr(server, "body", b'{"keys":[]}')),
        ("500", lambda: setattr(server, "status", 500)),
        ("redirect", lambda: (setattr(server, "status", 302),
                              server.extra_headers.update({"Location": "https://evil.example/jwks.json"}))),
        ("over 1 MiB", lambda: (setattr(server, "status", 200),
                                setattr(server, "body", jwks_bytes(keys.a)[:-2] + b" " * (1 << 20) + b"]}"))),
    ]
    for name, breakage in cases:
        with server.lock:
            breakage()
        n = failures()
        wait_until(lambda: failures() > n, 5, f"refresh failure logged ({name})", relay)
        assert accepted(relay, ta), f"old key lost after a failing fetch ({name})"
    text = relay.stderr_text()
    assert "HTTP 302" in text and "redirects are not followed" in text
    assert "larger than 1048576 bytes" in text

    # Unreachable: the relay keeps serving with the keys it has.
    port = server.port
    server.stop()
    n = failures()
    wait_until(lambda: failures() > n + 1, 6, "failures while the server is down", relay)
    assert accepted(relay, ta) and relay.healthy()

    # Back, with a rotated set: picked up without a restart.
    server2 = jwks_server(port)
    server2.serve(keys.b)
    wait_until(lambda: accepted(relay, keys.b.token()), 6, "rotated set after the server came back", relay)
    assert_refused(relay, ta)


def test_url_unreachable_at_startup(relay_factory, certs, keys, jwks_server, tmp_path):
    port = free_port()
    url = f"https://127.0.0.1:{port}{JWKS_PATH}"
    # No other key: the relay still starts, refuses every token, and keeps retrying.
    relay = url_relay(relay_factory, certs, url, "--jwks-refresh-interval", "1", "--jwks-min-refresh-interval", "1")
    assert "JWKS URL could not be used at startup" in relay.stderr_text()
    assert relay.healthy()
    assert_refused(relay, keys.a.token(), "no verification keys configured")
    server = jwks_server(port)
    server.serve(keys.a)
    wait_until(lambda: accepted(relay, keys.a.token()), 6, "URL keys once the server is up", relay)

    # With a file key as well: the file's tokens work from the start.
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, keys.c)
    port2 = free_port()
    relay2 = url_relay(relay_factory, certs, f"https://127.0.0.1:{port2}{JWKS_PATH}", "--jwks-file", str(jwks),
                       "--jwks-refresh-interval", "1")
    assert accepted(relay2, keys.c.token())
    assert_refused(relay2, keys.b.token(), "unknown signing key")
    server2 = jwks_server(port2)
    server2.serve(keys.b)
    wait_until(lambda: accepted(relay2, keys.b.token()), 6, "URL keys join the file's", relay2)
    assert accepted(relay2, keys.c.token())


def test_url_untrusted_certificate(relay_factory, keys, jwks_server):
    server = jwks_server()
    server.serve(keys.a)
    # No --jwks-ca-file: the system roots do not know the test CA, so no key is taken.
    relay = relay_factory("--jwks-url", server.url(), "--jwks-refresh-interval", "1")
    assert "certificate verify failed" in relay.stderr_text()
    assert_refused(relay, keys.a.token(), "no verification keys configured")


@pytest.mark.parametrize("url, message", [
    ("http://example.com/jwks.json", "only allowed for loopback"),
    ("ftp://127.0.0.1/jwks.json", "must start with https://"),
    ("https://user:pw@example.com/jwks.json", "user info"),
    ("https://example.com:99999/jwks.json", "invalid port"),
])
def test_jwks_url_validation(relay_factory, url, message):
    with pytest.raises(AssertionError) as failed:
        relay_factory("--jwks-url", url)
    relay = failed.value.relay  # RelayStartError: the relay exited at once
    relay.expected_exit = True
    assert relay.proc.returncode != 0
    assert message in relay.stderr_text(), relay.stderr_text()


def test_http_allowed_for_loopback(relay_factory, keys):
    """http:// to a loopback host (a sidecar) is accepted: plain server, same rotation path."""
    state = {"body": jwks_bytes(keys.a)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = state["body"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = QuietHTTPServer((HOST, 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        relay = relay_factory("--jwks-url", f"http://127.0.0.1:{httpd.server_address[1]}{JWKS_PATH}",
                              "--jwks-refresh-interval", "1")
        assert accepted(relay, keys.a.token())
        state["body"] = jwks_bytes(keys.b)
        wait_until(lambda: accepted(relay, keys.b.token()), 5, "rotated over http://", relay)
    finally:
        httpd.shutdown()
        httpd.server_close()

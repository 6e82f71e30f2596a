"""TLS listener: openssl s_client, Python ssl, curl, wss://, and certificate reload on SIGHUP."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
import subprocess
import time

import pytest
from websockets.asyncio.client import connect as ws_connect

from tether_testlib import HOST, Reader, echo_request

MiB = 1024 * 1024


def client_ctx(certs, version: ssl.TLSVersion | None = None, alpn=("http/1.1",)) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, server_hostname: str = "127.0.0.1", timeout: float = 10.0):
    raw = socket.create_connection((HOST, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def tls_get(port: int, ctx: ssl.SSLContext, path: str = "/healthz", server_hostname: str = "127.0.0.1"):
    """GET path over a new TLS connection. Returns (response, peer_cert_der, tls_version, alpn)."""
    with tls_connect(port, ctx, server_hostname) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_hostname}\r\n\r\n".encode())
        resp = Reader(s).read_response()
        return resp, s.getpeercert(binary_form=True), s.version(), s.selected_alpn_protocol()


def peer_cn(port: int, certs) -> tuple[bytes, str]:
    with tls_connect(port, client_ctx(certs)) as s:
        pc = s.getpeercert()
        cn = dict(x[0] for x in pc["subject"])["commonName"]
        return s.getpeercert(binary_form=True), cn


def s_client(port: int, certs, *opts: str, request: bytes | None = None, timeout: float = 30):
    req = request if request is not None else b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(certs.ca),
           "-verify_return_error", "-verify_ip", "127.0.0.1", "-ign_eof", *opts]
    return subprocess.run(cmd, input=req, capture_output=True, timeout=timeout)


# -------------------------------------------------------------------------------------------
# Handshakes with real clients
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_s_client(tls_relay, certs, flag, version):
    out = s_client(tls_relay.tls_port, certs, flag, "-alpn", "http/1.1")
    text = out.stdout.decode("latin-1")
    assert out.returncode == 0, text + out.stderr.decode("latin-1")
    assert "ALPN protocol: http/1.1" in text, text
    assert re.search(rf"New, {re.escape(version)}, Cipher is", text) or \
        re.search(rf"Protocol\s*:\s*{re.escape(version)}", text), text
    assert "Verify return code: 0 (ok)" in text, text
    assert "HTTP/1.1 200" in text, f"no HTTP 200 over TLS:\n{text}"
    assert '"status"' in text and '"ok"' in text


def test_tls11_rejected(tls_relay, certs):
    out = s_client(tls_relay.tls_port, certs, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    text = out.stdout.decode("latin-1") + out.stderr.decode("latin-1")
    assert out.returncode != 0 and "HTTP/1.1 200" not in text, f"TLS 1.1 handshake was accepted:\n{text}"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_python_ssl_healthz(tls_relay, certs, version):
    resp, der, ver, alpn = tls_get(tls_relay.tls_port, client_ctx(certs, version))
    assert resp.status == 200, resp.describe()
    assert resp.json() == {"status": "ok"}
    assert ver == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert alpn == "http/1.1"
    assert der == certs.a.leaf_der()


def test_alpn_prefers_http11_over_h2(tls_relay, certs):
    _, _, _, alpn = tls_get(tls_relay.tls_port, client_ctx(certs, alpn=("h2", "http/1.1")))
    assert alpn == "http/1.1"


def test_sni_hostname_localhost(tls_relay, certs):
    resp, _, _, _ = tls_get(tls_relay.tls_port, client_ctx(certs), server_hostname="localhost")
    assert resp.status == 200


def test_tls_errors_and_echo(tls_relay, certs):
    """Same routes over TLS: 404 JSON, and a 1 MiB POST /echo byte-exact on a keep-alive connection."""
    ctx = client_ctx(certs)
    body = bytes(range(256)) * 4096
    with tls_connect(tls_relay.tls_port, ctx) as s:
        r = Reader(s, 30)
        s.sendall(b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        resp = r.read_response()
        assert resp.status == 404 and resp.json()["error"]["code"] == "NOT_FOUND"
        if not resp.has_token("connection", "close"):
            # An SSLSocket must not be read and written from two threads at once: interleave
            # writing pieces with draining what the streaming echo has sent back so far.
            data = echo_request(body)
            for off in range(0, len(data), 16384):
                s.settimeout(10)
                s.sendall(data[off:off + 16384])
                s.settimeout(0)
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        r.buf += chunk
                except (ssl.SSLWantReadError, BlockingIOError):
                    pass
            s.settimeout(30)
            resp = r.read_response("POST")
            assert resp.status == 200 and resp.body == body


def test_curl_https_echo(tls_relay, certs, tmp_path):
    data = bytes(range(256)) * 2048
    (tmp_path / "in.bin").write_bytes(data)
    out = subprocess.run(["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", "60", "--http1.1",
                          "--cacert", str(certs.ca), "--data-binary", f"@{tmp_path / 'in.bin'}",
                          "-o", str(tmp_path / "out.bin"), "-w", "%{http_code}",
                          f"https://127.0.0.1:{tls_relay.tls_port}/echo"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"200"
    assert (tmp_path / "out.bin").read_bytes() == data


def test_certificate_chain_with_intermediate(relay_factory, certs):
    """--tls-cert is a PEM chain: the relay must send the intermediate so clients trusting only the root verify."""
    relay = relay_factory(tls=certs.chained)
    resp, der, _, _ = tls_get(relay.tls_port, client_ctx(certs))
    assert resp.status == 200
    assert der == certs.chained.leaf_der()
    out = s_client(relay.tls_port, certs, "-showcerts")
    text = out.stdout.decode("latin-1")
    assert out.returncode == 0 and "Verify return code: 0 (ok)" in text, text
    assert "Tether Test Intermediate CA" in text


def test_plaintext_on_tls_port_does_not_hurt(tls_relay, certs):
    with socket.create_connection((HOST, tls_relay.tls_port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    resp, _, _, _ = tls_get(tls_relay.tls_port, client_ctx(certs))
    assert resp.status == 200


# -------------------------------------------------------------------------------------------
# wss://
# -------------------------------------------------------------------------------------------


def wss(port):
    return f"wss://127.0.0.1:{port}/ws/echo"


async def echo_check(ws, m, timeout: float = 15.0, what: str = ""):
    """Send m and expect the identical message back within timeout (clear message on a stall)."""
    await asyncio.wait_for(ws.send(m), timeout)
    try:
        got = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no echo within {timeout}s for {what} {type(m).__name__} message of "
                             f"{len(m)} {'chars' if isinstance(m, str) else 'bytes'}") from None
    assert type(got) is type(m) and got == m, f"echo mismatch for {what} message of length {len(m)}"


def ws_kwargs(certs):
    return dict(ssl=client_ctx(certs, alpn=None), compression=None, max_size=32 * MiB, open_timeout=10,
                close_timeout=10, ping_interval=None, proxy=None)


def test_wss_echo(tls_relay, certs):
    async def main():
        async with ws_connect(wss(tls_relay.tls_port), **ws_kwargs(certs)) as ws:
            for m in ["hello over tls", b"", b"\x00\xff" * 70000, "€" * 100_000, bytes(range(256)) * 4096]:
                await echo_check(ws, m)
            pong = await ws.ping(b"tls-ping")
            await asyncio.wait_for(pong, 5)
            await ws.close()
            assert ws.close_code == 1000
    asyncio.run(asyncio.wait_for(main(), 60))


def test_wss_concurrent(tls_relay, certs):
    async def client(i):
        async with ws_connect(wss(tls_relay.tls_port), **ws_kwargs(certs)) as ws:
            for j in range(10):
                await echo_check(ws, f"{i}/{j}" * (j + 1), what=f"client {i}")

    async def main():
        await asyncio.gather(*(client(i) for i in range(50)))
    asyncio.run(asyncio.wait_for(main(), 60))


# -------------------------------------------------------------------------------------------
# Certificate reload (SIGHUP)
# -------------------------------------------------------------------------------------------


def wait_for_cert(relay, certs, expected, timeout=10.0):
    deadline = time.monotonic() + timeout
    der = cn = None
    while time.monotonic() < deadline:
        der, cn = peer_cn(relay.tls_port, certs)
        if der == expected.leaf_der():
            return
        time.sleep(0.1)
    raise AssertionError(f"after SIGHUP new connections still get CN={cn}, expected {expected.cn}")


def assert_cert_stays(relay, certs, expected, duration=1.5):
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        der, cn = peer_cn(relay.tls_port, certs)
        assert der == expected.leaf_der(), f"cert changed to CN={cn}; expected {expected.cn} to stay in force"
        time.sleep(0.1)


def test_sighup_reload_swaps_cert_keeps_old_connections(relay_factory, certs):
    relay = relay_factory(tls=certs.a)

    async def main():
        der, cn = peer_cn(relay.tls_port, certs)
        assert cn == "tether-test-A" and der == certs.a.leaf_der()
        async with ws_connect(wss(relay.tls_port), **ws_kwargs(certs)) as old_ws:
            await echo_check(old_ws, "before reload")
            # keep-alive HTTPS connection opened before the reload as well
            old_http = tls_connect(relay.tls_port, client_ctx(certs))
            old_reader = Reader(old_http)

            relay.install_cert(certs.b)
            relay.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_for_cert, relay, certs, certs.b)

            # established connections keep working (and still talk to the old cert's session)
            for m in ["after reload", b"\x01" * (64 * 1024)]:
                await echo_check(old_ws, m, what="pre-reload connection")
            old_http.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert old_reader.read_response().status == 200
            assert old_http.getpeercert(binary_form=True) == certs.a.leaf_der()
            old_http.close()

            # invalid new files: garbage cert -> old (B) stays in force, relay alive
            relay.install_raw(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n",
                              certs.b.key.read_bytes())
            relay.send_signal(signal.SIGHUP)
            await asyncio.to_thread(assert_cert_stays, relay, certs, certs.b)
            assert relay.alive()
            await echo_check(old_ws, "after bad reload", what="pre-reload connection")
        resp, der, _, _ = tls_get(relay.tls_port, client_ctx(certs))
        assert resp.status == 200 and der == certs.b.leaf_der()
        assert relay.healthy()
    asyncio.run(asyncio.wait_for(main(), 60))


def test_sighup_reload_rejects_mismatched_key(relay_factory, certs):
    relay = relay_factory(tls=certs.a)
    relay.install_raw(certs.b.cert.read_bytes(), certs.a.key.read_bytes())  # cert B with key A
    relay.send_signal(signal.SIGHUP)
    assert_cert_stays(relay, certs, certs.a)
    relay.install_raw(certs.b.cert.read_bytes(), b"")  # empty key file
    relay.send_signal(signal.SIGHUP)
    assert_cert_stays(relay, certs, certs.a)
    assert relay.healthy()
    # and a later valid reload still works
    relay.install_cert(certs.b)
    relay.send_signal(signal.SIGHUP)
    wait_for_cert(relay, certs, certs.b)


def test_sighup_burst_while_serving(relay_factory, certs):
    """Several SIGHUPs alternating A/B while TLS requests run: no failed handshake, no crash."""
    relay = relay_factory(tls=certs.a)
    ctx = client_ctx(certs)
    for i in range(6):
        relay.install_cert(certs.b if i % 2 == 0 else certs.a)
        relay.send_signal(signal.SIGHUP)
        for _ in range(3):
            resp, der, _, _ = tls_get(relay.tls_port, ctx)
            assert resp.status == 200
            assert der in (certs.a.leaf_der(), certs.b.leaf_der())
    wait_for_cert(relay, certs, certs.a)
    assert relay.healthy()


@pytest.mark.parametrize("delay_ms", [0, 1, 3, 6])
def test_sighup_right_before_sigterm_finishes_before_exit(relay_factory, certs, delay_ms):
    """A reload still running when the drain ends is waited for: exit 0, and under the
    AddressSanitizer pass nothing leaked (its thread's OpenSSL state used to outlive exit)."""
    relay = relay_factory(tls=certs.a)
    relay.install_cert(certs.b)
    relay.send_signal(signal.SIGHUP)
    time.sleep(delay_ms / 1000)
    relay.send_signal(signal.SIGTERM)
    rc = relay.proc.wait(30)
    relay.expected_exit = True
    err = relay.stderr_text()
    assert "LeakSanitizer" not in err and rc == 0, err[-3000:]

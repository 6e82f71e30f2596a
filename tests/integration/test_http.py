"""HTTP/1.1 behaviour of the plaintext listener: routes, errors, /echo, keep-alive, pipelining."""

from __future__ import annotations

import http.client
import random
import subprocess
import threading
import time

import pytest

from tether_testlib import (
    BackgroundSender, PeerClosed, Reader, assert_json_error, connect, echo_request, http_exchange,
)

H = b"Host: 127.0.0.1\r\n"
CURL = ["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", "60"]


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 7919 + n).randbytes(n)


def assert_error_and_closed(port: int, request: bytes, status: int, code: str, method: str = "GET"):
    resp, r = http_exchange(port, request, method=method)
    try:
        assert_json_error(resp, status, code)
        assert resp.has_token("connection", "close"), f"error response lacks Connection: close: {resp.describe()}"
        r.wait_closed(timeout=5.0)
    finally:
        r.sock.close()


# -------------------------------------------------------------------------------------------
# Routes
# -------------------------------------------------------------------------------------------


def test_healthz(relay):
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").split(";")[0].strip().lower() == "application/json"
    import json
    assert json.loads(body) == {"status": "ok"}
    conn.close()


def test_healthz_with_curl_http11(relay):
    out = subprocess.run(CURL + ["--http1.1", "-i", f"http://127.0.0.1:{relay.port}/healthz"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b'"status"' in body and b'"ok"' in body


def test_unknown_path_404(relay):
    resp, r = http_exchange(relay.port, b"GET /no/such/path HTTP/1.1\r\n" + H + b"\r\n")
    assert_json_error(resp, 404, "NOT_FOUND")
    r.sock.close()


@pytest.mark.parametrize("method,path", [("POST", "/healthz"), ("DELETE", "/healthz"), ("GET", "/echo"),
                                         ("PUT", "/echo")])
def test_wrong_method_405(relay, method, path):
    req = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode()
    resp, r = http_exchange(relay.port, req, method=method)
    assert_json_error(resp, 405, "METHOD_NOT_ALLOWED")
    r.sock.close()


def test_404_keeps_connection_usable(relay):
    """A routing error is not a parse error: the connection may stay open for the next request."""
    s = connect(relay.port)
    r = Reader(s)
    s.sendall(b"GET /nope HTTP/1.1\r\n" + H + b"\r\n")
    resp = r.read_response()
    assert_json_error(resp, 404, "NOT_FOUND")
    if resp.has_token("connection", "close"):
        r.wait_closed()
    else:
        s.sendall(b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n")
        assert r.read_response().status == 200
    s.close()


def test_http10_request_served_and_closed(relay):
    """HTTP/1.0 without keep-alive: Host not required; the relay closes after the response."""
    resp, r = http_exchange(relay.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert resp.status == 200, resp.describe()
    assert resp.json() == {"status": "ok"}
    r.wait_closed()
    r.sock.close()


def test_connection_close_request_is_honoured(relay):
    resp, r = http_exchange(relay.port, b"GET /healthz HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert resp.status == 200
    r.wait_closed()
    r.sock.close()


# -------------------------------------------------------------------------------------------
# Parse errors: exact status + JSON code + Connection: close + connection closed
# -------------------------------------------------------------------------------------------

BAD_REQUESTS = {
    "request-line-single-token": b"NOT-A-REQUEST-LINE\r\n" + H + b"\r\n",
    "request-line-missing-version": b"GET /healthz\r\n" + H + b"\r\n",
    "method-with-delimiter": b"G(T /healthz HTTP/1.1\r\n" + H + b"\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\n" + H + b"X-Folded: first\r\n  continued\r\n\r\n",
    "space-before-colon": b"GET /healthz HTTP/1.1\r\n" + H + b"X-Spaced : value\r\n\r\n",
    "space-before-colon-host": b"GET /healthz HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n",
    "cl-and-te": b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\n",
    "invalid-chunk-size": b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                          b"zz\r\nhello\r\n0\r\n\r\n",
    "missing-host-http11": b"GET /healthz HTTP/1.1\r\nUser-Agent: t\r\n\r\n",
    "invalid-content-length": b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_400_bad_request(relay, name):
    req = BAD_REQUESTS[name]
    method = req.split(b" ", 1)[0].decode("latin-1")
    assert_error_and_closed(relay.port, req, 400, "BAD_REQUEST", method=method)


def test_414_request_line_too_long(relay):
    req = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n"
    assert_error_and_closed(relay.port, req, 414, "URI_TOO_LONG")


def test_long_request_line_under_limit_is_routed(relay):
    """A ~8000-byte request line is below the 8192 limit: normal routing (404), not 414."""
    target = b"/" + b"b" * (8000 - len(b"GET  HTTP/1.1") - 1)
    resp, r = http_exchange(relay.port, b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")
    assert_json_error(resp, 404, "NOT_FOUND")
    r.sock.close()


def test_414_early_without_newline(relay):
    """100 KiB of request line, never terminated: the relay must answer 414 and close on its own."""
    s = connect(relay.port)
    r = Reader(s, timeout=10)
    got: dict = {}

    def reader():
        try:
            got["resp"] = r.read_response()
            got["extra"] = r.wait_closed(timeout=5.0)
            got["closed"] = True
        except BaseException as e:  # noqa: BLE001
            got["error"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        s.sendall(b"GET /")
        for _ in range(100):
            if "resp" in got or "error" in got:
                break
            try:
                s.sendall(b"a" * 1024)
            except OSError:
                break  # relay closed on us: fine, the reader has (or will have) the response
            time.sleep(0.001)
        t.join(15)
        assert not t.is_alive(), "no 414 response / close from relay while the request line kept growing"
        if "error" in got:
            raise got["error"]
        resp = got["resp"]
        assert_json_error(resp, 414, "URI_TOO_LONG")
        assert resp.has_token("connection", "close"), resp.describe()
        assert got.get("closed")
    finally:
        s.close()


def test_431_header_section_too_large(relay):
    hdrs = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))  # ~20 KiB, 21 fields
    assert_error_and_closed(relay.port, b"GET /healthz HTTP/1.1\r\n" + H + hdrs + b"\r\n", 431,
                            "HEADERS_TOO_LARGE")


def test_431_single_huge_header(relay):
    req = b"GET /healthz HTTP/1.1\r\n" + H + b"X-Huge: " + b"h" * 17000 + b"\r\n\r\n"
    assert_error_and_closed(relay.port, req, 431, "HEADERS_TOO_LARGE")


def test_431_too_many_fields(relay):
    hdrs = b"".join(b"X-F%d: v\r\n" % i for i in range(100))  # + Host = 101 fields
    assert_error_and_closed(relay.port, b"GET /healthz HTTP/1.1\r\n" + H + hdrs + b"\r\n", 431,
                            "HEADERS_TOO_LARGE")


def test_headers_under_limits_accepted(relay):
    """~12 KiB header section with 99 fields is within both limits."""
    hdrs = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 110) for i in range(98))  # + Host = 99 fields
    resp, r = http_exchange(relay.port, b"GET /healthz HTTP/1.1\r\n" + H + hdrs + b"\r\n")
    assert resp.status == 200, resp.describe()
    r.sock.close()


def test_501_unsupported_transfer_encoding(relay):
    req = b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n"
    assert_error_and_closed(relay.port, req, 501, "NOT_IMPLEMENTED", method="POST")


def test_505_http2_request_line(relay):
    assert_error_and_closed(relay.port, b"GET /healthz HTTP/2.0\r\n" + H + b"\r\n", 505,
                            "VERSION_NOT_SUPPORTED")


def test_413_content_length_up_front(relay):
    """11 MiB declared, no body sent: the relay must answer 413 without waiting for the body."""
    req = b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % (11 * 1024 * 1024)
    assert_error_and_closed(relay.port, req, 413, "PAYLOAD_TOO_LARGE", method="POST")


def test_413_11mib_body_sent(relay):
    """11 MiB body actually being sent (default --max-body-size 10 MiB)."""
    body = payload(11 * 1024 * 1024, 1)
    s = connect(relay.port, 30)
    r = Reader(s, 30)
    BackgroundSender(s, echo_request(body))  # may fail with EPIPE/ECONNRESET once the relay closes
    try:
        resp = r.read_response("POST")
        assert_json_error(resp, 413, "PAYLOAD_TOO_LARGE")
        assert resp.has_token("connection", "close")
        r.wait_closed(timeout=10)
    finally:
        s.close()


def test_413_chunked_total_first_chunk(relay_factory):
    """Chunked body whose first chunk already exceeds --max-body-size -> 413 (whole request in one write,
    so the relay knows before it has echoed a single byte)."""
    relay = relay_factory("--max-body-size", "1024")
    body = payload(4096, 2)
    req = echo_request(body, chunked=True, chunk_sizes=[4096])
    resp, r = http_exchange(relay.port, req, method="POST")
    try:
        assert resp.status == 413, (
            "expected 413 for chunked body > --max-body-size; "
            + ("relay started a 200 echo before enforcing the limit; " if resp.status == 200 else "")
            + resp.describe())
        assert_json_error(resp, 413, "PAYLOAD_TOO_LARGE")
        assert resp.has_token("connection", "close")
        r.wait_closed()
    finally:
        r.sock.close()


def test_chunked_total_exceeded_midstream(relay_factory):
    """Limit crossed after some chunks were already echoed: a streaming relay may have sent 200 already.
    Accept 413, or a 200 whose chunked echo is aborted (never completed) and the connection closed; a
    complete echo of the oversized body is a violation."""
    relay = relay_factory("--max-body-size", "1024")
    body = payload(4096, 2)
    s = connect(relay.port)
    r = Reader(s)
    BackgroundSender(s, echo_request(body, chunked=True, chunk_sizes=[700]))
    try:
        head = r.read_head()
        if head.status == 413:
            r.read_body(head)
            assert_json_error(head, 413, "PAYLOAD_TOO_LARGE")
            r.wait_closed()
            return
        assert head.status == 200, head.describe()
        with pytest.raises(PeerClosed):
            r.read_body(head, "POST")
            pytest.fail(f"relay echoed all {len(head.body)} bytes of a body larger than --max-body-size")
    finally:
        s.close()
    assert relay.healthy()


def test_max_body_size_boundary(relay_factory):
    relay = relay_factory("--max-body-size", "1024")
    body = payload(1024, 3)
    for chunked in (False, True):
        resp, r = http_exchange(relay.port, echo_request(body, chunked=chunked, chunk_sizes=[100]), "POST")
        assert resp.status == 200, resp.describe()
        assert resp.body == body
        r.sock.close()
    assert_error_and_closed(relay.port, echo_request(payload(1025, 3)), 413, "PAYLOAD_TOO_LARGE", "POST")


# -------------------------------------------------------------------------------------------
# /echo
# -------------------------------------------------------------------------------------------

SIZES = [0, 1, 100 * 1024, 5 * 1024 * 1024]


def _check_echo(resp, body):
    assert resp.status == 200, resp.describe()
    assert resp.media_type == "application/octet-stream", resp.describe()
    assert len(resp.body) == len(body), f"echo length {len(resp.body)} != {len(body)}"
    assert resp.body == body, "echo body differs"


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_echo_content_length(relay, size):
    body = payload(size, 10)
    resp, r = http_exchange(relay.port, echo_request(body), method="POST", timeout=60)
    _check_echo(resp, body)
    r.sock.close()


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_echo_chunked(relay, size):
    body = payload(size, 11)
    sizes = random.Random(size).choices([1, 7, 100, 4096, 65536, 70001], k=50)
    resp, r = http_exchange(relay.port, echo_request(body, chunked=True, chunk_sizes=sizes), "POST", 60)
    _check_echo(resp, body)
    r.sock.close()


def test_echo_chunked_extensions_trailers_uppercase_hex(relay):
    """RFC 9112 7.1: chunk extensions must be ignored, trailer section accepted, hex is case-insensitive."""
    body = b"A" * 26 + b"hello"
    enc = b"1A;name=value;flag\r\n" + b"A" * 26 + b"\r\n5 ; ext=\"q\"\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n"
    req = b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + enc
    resp, r = http_exchange(relay.port, req, "POST")
    _check_echo(resp, body)
    # connection still usable afterwards
    r.sock.sendall(b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n")
    assert r.read_response().status == 200
    r.sock.close()


def test_echo_slow_trickled_body(relay):
    """Body arriving in many small segments (streamed echo must still be byte-exact)."""
    body = payload(20000, 12)
    s = connect(relay.port)
    r = Reader(s)
    s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body))
    pieces = [body[i:i + 997] for i in range(0, len(body), 997)]
    sender = BackgroundSender(s, pieces, delay=0.002)
    resp = r.read_response("POST")
    sender.join()
    _check_echo(resp, body)
    s.close()


def test_echo_streams_before_body_complete(relay):
    """Streaming: with half of a 2 MiB body sent, echoed bytes start arriving before the rest is sent."""
    body = payload(2 * 1024 * 1024, 13)
    s = connect(relay.port)
    r = Reader(s, 10)
    s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body))
    half = len(body) // 2
    s.sendall(body[:half])
    resp = r.read_head(timeout=10)
    assert resp.status == 200, resp.describe()
    # some body bytes must arrive before we send the second half
    deadline = time.monotonic() + 10
    while len(r.buf) < 1024 and time.monotonic() < deadline:
        r._fill(deadline)
    assert len(r.buf) >= 1024, "relay did not stream the echo while the body was still arriving"
    s.sendall(body[half:])
    r.read_body(resp, "POST", timeout=30)
    _check_echo(resp, body)
    s.close()


def test_pipelining_three_requests_one_send(relay):
    reqs = (echo_request(b"alpha")
            + b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n"
            + echo_request(b"gamma" * 1000, chunked=True, chunk_sizes=[333]))
    s = connect(relay.port)
    r = Reader(s)
    s.sendall(reqs)
    r1 = r.read_response("POST")
    r2 = r.read_response("GET")
    r3 = r.read_response("POST")
    _check_echo(r1, b"alpha")
    assert r2.status == 200 and r2.json() == {"status": "ok"}, r2.describe()
    _check_echo(r3, b"gamma" * 1000)
    s.close()


def test_pipelining_large_bodies(relay):
    """Three 512 KiB echoes pipelined in one send: order and bytes preserved under backpressure."""
    bodies = [payload(512 * 1024, 20 + i) for i in range(3)]
    data = b"".join(echo_request(b, chunked=(i == 1)) for i, b in enumerate(bodies))
    s = connect(relay.port, 30)
    r = Reader(s, 30)
    sender = BackgroundSender(s, data)
    for b in bodies:
        _check_echo(r.read_response("POST"), b)
    sender.join()
    s.close()


def test_keep_alive_many_requests_http_client(relay):
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    conn.connect()
    local = conn.sock.getsockname()
    for i in range(25):
        body = payload(i * 37, 30 + i)
        if i % 3 == 2:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        else:
            conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.read() == body
        assert not resp.will_close, f"relay asked to close a keep-alive connection at request {i}"
        assert conn.sock is not None and conn.sock.getsockname() == local, "connection was not reused"
    conn.close()


def test_keep_alive_with_curl(relay, tmp_path):
    url = f"http://127.0.0.1:{relay.port}/healthz"
    out = subprocess.run(CURL + ["--http1.1", "-v", "-o", "/dev/null", "-o", "/dev/null", url, url],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode("latin-1")
    assert err.count("< HTTP/1.1 200") == 2, err
    assert "Re-using existing connection" in err or "Reusing existing connection" in err, err


def test_curl_post_echo(relay, tmp_path):
    body = payload(64 * 1024, 40)
    (tmp_path / "in.bin").write_bytes(body)
    out = subprocess.run(CURL + ["--http1.1", "--data-binary", f"@{tmp_path / 'in.bin'}",
                                 "-H", "Content-Type: application/octet-stream", "-o", str(tmp_path / "out.bin"),
                                 "-w", "%{http_code}", f"http://127.0.0.1:{relay.port}/echo"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"200"
    assert (tmp_path / "out.bin").read_bytes() == body


@pytest.mark.parametrize("size", [2 * 1024 * 1024, 5 * 1024 * 1024 + 3], ids=["2MiB", "5MiB+3"])
def test_expect_100_continue_curl(relay, tmp_path, size):
    body = payload(size, 41)
    (tmp_path / "in.bin").write_bytes(body)
    # --expect100-timeout 30: curl waits for the relay's 100 instead of sending the body after 1 s.
    out = subprocess.run(CURL + ["--http1.1", "-v", "--expect100-timeout", "30", "--data-binary",
                                 f"@{tmp_path / 'in.bin'}", "-H", "Expect: 100-continue",
                                 "-H", "Content-Type: application/octet-stream", "-o", str(tmp_path / "out.bin"),
                                 "-w", "%{http_code}", f"http://127.0.0.1:{relay.port}/echo"],
                         capture_output=True, timeout=60)
    err = out.stderr.decode("latin-1")
    assert out.returncode == 0, err
    assert out.stdout == b"200", err
    assert "< HTTP/1.1 100 Continue" in err, f"relay did not send 100 Continue:\n{err}"
    got = (tmp_path / "out.bin").read_bytes()
    assert len(got) == len(body) and got == body


def test_expect_100_continue_raw(relay):
    body = payload(300 * 1024, 42)
    s = connect(relay.port)
    r = Reader(s)
    s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    interim = r.read_head(timeout=5)
    assert interim.status == 100, f"expected 100 Continue before the body, got {interim.describe()}"
    sender = BackgroundSender(s, body)
    resp = r.read_response("POST")
    sender.join()
    _check_echo(resp, body)
    s.close()


def test_expect_100_continue_too_large_curl(relay, tmp_path):
    """curl with an 11 MiB body and Expect: 100-continue gets 413 (the relay must not say 100)."""
    body = payload(11 * 1024 * 1024, 43)
    (tmp_path / "in.bin").write_bytes(body)
    out = subprocess.run(CURL + ["--http1.1", "-v", "--expect100-timeout", "30", "--data-binary",
                                 f"@{tmp_path / 'in.bin'}", "-o", str(tmp_path / "out.json"),
                                 "-w", "%{http_code}", f"http://127.0.0.1:{relay.port}/echo"],
                         capture_output=True, timeout=60)
    err = out.stderr.decode("latin-1")
    assert out.stdout == b"413", err
    assert "< HTTP/1.1 100 Continue" not in err, err
    import json
    assert json.loads((tmp_path / "out.json").read_bytes())["error"]["code"] == "PAYLOAD_TOO_LARGE"

"""Edge cases of streaming through the relay found in review: backpressure with a slow reader,
half-close after a body, linger after an error, deadlines after an idle spell, slowloris."""
import socket
import time

from tether_testlib import BackgroundSender, Reader, assert_json_error, connect, echo_request


def _payload(n: int, seed: int) -> bytes:
    import random
    return random.Random(seed).randbytes(n)


def test_slow_reader_gets_the_whole_echo(relay):
    """An 8 MiB echo to a client that reads slowly: the relay pauses reading (backpressure)
    and resumes; nothing may stall or get lost."""
    body = _payload(8 * 1024 * 1024, 1)
    s = connect(relay.port, timeout=60)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    BackgroundSender(s, echo_request(body, extra=b"Connection: close\r\n"))
    r = Reader(s, timeout=60)
    head = r.read_head()
    assert head.status == 200, head.describe()
    received = bytearray()
    while len(received) < len(body):
        received += r.read_exact(min(32 * 1024, len(body) - len(received)))
        if len(received) < 2 * 1024 * 1024:
            time.sleep(0.002)  # slow at first, so the relay's buffers fill and it pauses
    assert bytes(received) == body
    r.wait_closed(timeout=10)
    s.close()


def test_half_close_after_body_still_gets_full_response(relay):
    """The client sends a large body and shuts down its write side: the relay must answer the
    whole request before acting on the EOF (no 400 in the middle of the echo)."""
    body = _payload(4 * 1024 * 1024, 2)
    s = connect(relay.port, timeout=60)
    s.sendall(echo_request(body))
    s.shutdown(socket.SHUT_WR)
    r = Reader(s, timeout=60)
    resp = r.read_response("POST")
    assert resp.status == 200, resp.describe()
    assert resp.body == body
    r.wait_closed(timeout=10)
    s.close()


def test_error_then_linger_closes_even_if_client_never_does(relay_factory):
    """After an error response with Connection: close the relay sends FIN and lingers only
    briefly (2 s), even though a longer header deadline (60 s) was armed before."""
    relay = relay_factory("--header-timeout", "60")
    baseline = relay.fd_count()
    s = connect(relay.port)
    s.sendall(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    r = Reader(s)
    resp = r.read_response()
    assert_json_error(resp, 505, "VERSION_NOT_SUPPORTED")
    r.wait_closed(timeout=5)
    # We keep our side open; the relay must still release its descriptor after the linger.
    deadline = time.time() + 10
    while time.time() < deadline and relay.fd_count() > baseline:
        time.sleep(0.2)
    assert relay.fd_count() <= baseline, "relay kept the connection long after its linger deadline"
    s.close()
    assert relay.healthy()


def test_first_request_after_an_idle_spell_is_served(relay_factory):
    """Deadlines are computed from the time a connection arrives, not from before the relay's
    loop went to sleep: after idling longer than the header timeout, requests still work."""
    relay = relay_factory("--header-timeout", "1")
    time.sleep(2.5)
    for _ in range(3):
        s = connect(relay.port)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = Reader(s).read_response()
        assert resp.status == 200, resp.describe()
        s.close()
        time.sleep(1.5)


def test_slowloris_is_cut_at_the_header_deadline(relay_factory):
    """A client trickling a request head byte by byte gets 408 at the header deadline."""
    relay = relay_factory("--header-timeout", "1")
    s = connect(relay.port)
    start = time.time()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    r = Reader(s, timeout=10)
    try:
        for b in request:
            s.send(bytes([b]))
            time.sleep(0.02)
    except OSError:
        pass  # the relay may already have closed
    resp = r.read_response()
    elapsed = time.time() - start
    assert_json_error(resp, 408, "REQUEST_TIMEOUT")
    assert elapsed < 6, f"cut after {elapsed:.1f}s, header timeout was 1s"
    r.wait_closed(timeout=5)
    s.close()
    assert relay.healthy()

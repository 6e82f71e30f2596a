"""Unit tests of the Python tether.v1 codec (tunnel_client.py) against byte strings written by
hand from the layouts in docs/PROTOCOL.md §2-§4. No relay needed."""

from __future__ import annotations

import struct

import pytest

from tunnel_client import (
    DEFAULT_SETTINGS, FLAG_ACK, FLAG_END_STREAM, CodecError, ErrorCode, Frame, FrameType, Hello, RequestHead,
    ResponseHead, Setting, data_frame, decode_goaway, decode_hello, decode_message, decode_ping,
    decode_request_head, decode_reset, decode_response_head, decode_window_update, encode_frame, encode_goaway,
    encode_hello, encode_ping, encode_request_head, encode_reset, encode_response_head, encode_window_update,
    goaway_frame, hello_frame, open_frame, ping_frame, reset_frame, response_frame, window_update_frame,
)

pytestmark = pytest.mark.timeout(10)


def hx(s: str) -> bytes:
    """Hex with spaces/newlines and '|' separators for readability."""
    return bytes.fromhex(s.replace("|", " "))


# -- constants ---------------------------------------------------------------------------------


def test_type_flag_and_error_code_values():
    assert [int(t) for t in FrameType] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [t.name for t in FrameType] == ["HELLO", "OPEN", "RESPONSE", "DATA", "RESET", "WINDOW_UPDATE", "PING",
                                           "GOAWAY"]
    assert FLAG_END_STREAM == 0x01 and FLAG_ACK == 0x02
    assert [(c.name, int(c)) for c in ErrorCode] == [
        ("NO_ERROR", 0), ("PROTOCOL_ERROR", 1), ("INTERNAL_ERROR", 2), ("FLOW_CONTROL_ERROR", 3),
        ("STREAM_CLOSED", 4), ("REFUSED_STREAM", 5), ("CANCEL", 6), ("LOCAL_SERVICE_ERROR", 7),
        ("LOCAL_TIMEOUT", 8), ("DESTINATION_REFUSED", 9), ("HEAD_TOO_LARGE", 10)]


def test_default_settings():
    assert DEFAULT_SETTINGS == {1: 1_048_576, 2: 8_388_608, 3: 256, 4: 1_048_586, 5: 65_536, 6: 30_000}
    # The largest DATA payload is MAX_MESSAGE_SIZE minus the 10-byte header: 1 MiB.
    assert DEFAULT_SETTINGS[Setting.MAX_MESSAGE_SIZE] - 10 == 1 << 20


# -- frame header --------------------------------------------------------------------------------


def test_frame_header_layout():
    # length=3 | type=DATA | flags=END_STREAM | stream 0x01020304 | "abc"
    raw = hx("00000003 | 04 | 01 | 01020304 | 616263")
    assert encode_frame(FrameType.DATA, FLAG_END_STREAM, 0x01020304, b"abc") == raw
    assert data_frame(0x01020304, b"abc", end_stream=True) == raw
    (f,) = decode_message(raw)
    assert f == Frame(4, 1, 0x01020304, b"abc")
    assert f.end_stream and not f.ack


def test_empty_payload_frame_is_ten_bytes():
    raw = hx("00000000 | 04 | 01 | 00000007")
    assert data_frame(7, b"", end_stream=True) == raw
    assert decode_message(raw) == [Frame(FrameType.DATA, FLAG_END_STREAM, 7, b"")]


def test_several_frames_in_one_message():
    raw = hx("00000001 04 00 00000001 41"
             "00000004 06 00 00000000 00010000"
             "00000008 07 02 00000000 0102030405060708")
    frames = decode_message(raw)
    assert frames == [Frame(4, 0, 1, b"A"), Frame(6, 0, 0, hx("00010000")), Frame(7, 2, 0, hx("0102030405060708"))]
    assert b"".join(f.encode() for f in frames) == raw


@pytest.mark.parametrize("raw", [
    hx("000000"),                          # shorter than a header
    hx("00000005 04 00 00000001 41"),      # payload cut short
    hx("00000001 04 00 00000001 41 00"),   # second frame header cut short
    b"",                                   # no frame at all
], ids=["short-header", "short-payload", "trailing-partial", "empty"])
def test_message_ending_inside_a_frame_is_an_error(raw):
    with pytest.raises(CodecError):
        decode_message(raw)


def test_unknown_type_and_flag_bits_survive_decoding():
    raw = hx("00000002 7f fc 00000000 beef")
    assert decode_message(raw) == [Frame(0x7F, 0xFC, 0, hx("beef"))]


# -- HELLO (§3) ----------------------------------------------------------------------------------


def test_hello_layout():
    payload = hx("0001 | 0002 | 0001 00800000 | 0004 00100010") + b"tether-bridge/0.3 linux"
    assert encode_hello([(Setting.STREAM_WINDOW, 8 << 20), (Setting.MAX_MESSAGE_SIZE, 0x100010)],
                        "tether-bridge/0.3 linux") == payload
    h = decode_hello(payload)
    assert h == Hello(1, ((1, 8 << 20), (4, 0x100010)), "tether-bridge/0.3 linux")
    eff = h.effective()
    assert eff[Setting.STREAM_WINDOW] == 8 << 20
    assert eff[Setting.TUNNEL_WINDOW] == 8_388_608          # absent -> default
    assert eff[Setting.MAX_MESSAGE_SIZE] == 0x100010
    frame = hello_frame([(1, 8 << 20), (4, 0x100010)], "tether-bridge/0.3 linux")
    assert frame == struct.pack("!IBBI", len(payload), 1, 0, 0) + payload


def test_hello_minimal_and_unknown_setting():
    assert encode_hello() == hx("0001 0000")
    assert decode_hello(hx("0001 0000")) == Hello(1, (), "")
    h = decode_hello(hx("0001 0001 0099 00000005"))
    assert h.settings == ((0x99, 5),)
    assert h.effective() == DEFAULT_SETTINGS  # unknown id ignored


def test_hello_version_two_decodes_for_the_receiver_to_reject():
    assert decode_hello(hx("0002 0000")).version == 2
    assert hello_frame(version=2) == hx("00000004 01 00 00000000 0002 0000")


@pytest.mark.parametrize("payload", [hx("00"), hx("0001 0002 0001 00000001")], ids=["short", "missing-setting"])
def test_hello_truncated(payload):
    with pytest.raises(CodecError):
        decode_hello(payload)


def test_hello_agent_limit():
    decode_hello(hx("0001 0000") + b"a" * 256)
    with pytest.raises(CodecError):
        decode_hello(hx("0001 0000") + b"a" * 257)


# -- OPEN / RESPONSE heads (§4) ------------------------------------------------------------------


def test_request_head_layout():
    payload = (hx("04") + b"POST" + hx("000d") + b"/api/chat?x=1" + hx("0002")
               + hx("000c") + b"content-type" + hx("0010") + b"application/json"
               + hx("000f") + b"x-forwarded-for" + hx("0009") + b"127.0.0.1")
    head = decode_request_head(payload)
    assert head == RequestHead("POST", "/api/chat?x=1", [("content-type", "application/json"),
                                                        ("x-forwarded-for", "127.0.0.1")])
    assert encode_request_head("POST", "/api/chat?x=1", head.headers) == payload
    frame = open_frame(1, "POST", "/api/chat?x=1", head.headers, end_stream=False)
    assert frame[:10] == struct.pack("!IBBI", len(payload), 2, 0, 1) and frame[10:] == payload


def test_request_head_get_no_headers_end_stream():
    payload = hx("03") + b"GET" + hx("0001") + b"/" + hx("0000")
    assert encode_request_head("GET", "/") == payload
    assert open_frame(5, "GET", "/", end_stream=True) == hx("00000009 02 01 00000005") + payload
    assert decode_request_head(payload) == RequestHead("GET", "/", [])


def test_request_head_utf8_target_and_obs_text_header_value():
    target = "/api/ü?q=é"
    tb = target.encode()
    payload = hx("03") + b"GET" + struct.pack("!H", len(tb)) + tb + hx("0001 0001") + b"x" + hx("0002 e9ff")
    head = decode_request_head(payload)
    assert head.target == target
    assert head.headers == [("x", "\xe9\xff")]  # header bytes kept as received (latin-1 mapping)
    assert encode_request_head("GET", target, head.headers) == payload


@pytest.mark.parametrize("payload", [
    hx("04") + b"POS",                                   # method cut
    hx("03") + b"GET" + hx("0005") + b"/ab",             # target cut
    hx("03") + b"GET" + hx("0001") + b"/" + hx("0001"),  # header missing
    hx("03") + b"GET" + hx("0001") + b"/" + hx("0000 00"),  # trailing byte
], ids=["method", "target", "header", "trailing"])
def test_request_head_malformed(payload):
    with pytest.raises(CodecError):
        decode_request_head(payload)


def test_response_head_layout():
    payload = hx("00c8 0001 000c") + b"content-type" + hx("0014") + b"application/x-ndjson"
    assert encode_response_head(200, [("content-type", "application/x-ndjson")]) == payload
    assert decode_response_head(payload) == ResponseHead(200, [("content-type", "application/x-ndjson")])
    assert response_frame(3, 200, [("content-type", "application/x-ndjson")]) == \
        struct.pack("!IBBI", len(payload), 3, 0, 3) + payload
    assert response_frame(3, 204, end_stream=True) == hx("00000004 03 01 00000003 00cc 0000")
    with pytest.raises(CodecError):
        decode_response_head(hx("00c8 0001 0001"))


# -- control frames ------------------------------------------------------------------------------


def test_reset():
    assert reset_frame(9, ErrorCode.CANCEL) == hx("00000004 05 00 00000009 00000006")
    assert reset_frame(9, ErrorCode.LOCAL_TIMEOUT, "slow") == hx("00000008 05 00 00000009 00000008") + b"slow"
    assert encode_reset(7, "no route") == hx("00000007") + b"no route"
    assert decode_reset(hx("0000000a") + "größe".encode()) == (10, "größe")
    assert decode_reset(hx("00000000")) == (0, "")
    with pytest.raises(CodecError):
        decode_reset(hx("000000"))


def test_window_update():
    assert window_update_frame(0, 65536) == hx("00000004 06 00 00000000 00010000")
    assert window_update_frame(3, 0x7FFFFFFF) == hx("00000004 06 00 00000003 7fffffff")
    assert encode_window_update(1) == hx("00000001")
    assert decode_window_update(hx("7fffffff")) == 2**31 - 1
    with pytest.raises(CodecError):
        decode_window_update(hx("000001"))


def test_ping_and_ack():
    data = hx("0102030405060708")
    assert ping_frame(data) == hx("00000008 07 00 00000000") + data
    assert ping_frame(data, ack=True) == hx("00000008 07 02 00000000") + data
    assert encode_ping(data) == data and decode_ping(data) == data
    (f,) = decode_message(ping_frame(data, ack=True))
    assert f.ack and not f.end_stream
    with pytest.raises(CodecError):
        decode_ping(hx("01"))
    with pytest.raises(CodecError):
        encode_ping(b"123")


def test_goaway():
    assert goaway_frame(41, 0) == hx("00000008 08 00 00000000 00000029 00000000")
    assert goaway_frame(7, ErrorCode.PROTOCOL_ERROR, "bye") == hx("0000000b 08 00 00000000 00000007 00000001") + b"bye"
    assert encode_goaway(1, 2, "x") == hx("00000001 00000002 78")
    assert decode_goaway(hx("00000005 00000000") + b"draining") == (5, 0, "draining")
    with pytest.raises(CodecError):
        decode_goaway(hx("00000005 0000"))


@pytest.mark.parametrize("frame", [
    hello_frame({Setting.STREAM_WINDOW: 1, Setting.MAX_STREAMS: 2}, "agent"),
    open_frame(1, "DELETE", "/x?y=z", [("a", "b"), ("c", "")], end_stream=True),
    response_frame(2**32 - 1, 599, [("k", "v" * 1000)]),
    data_frame(1, bytes(range(256)) * 10),
    reset_frame(1, 999, "unknown code"),
    window_update_frame(0, 1),
    ping_frame(b"\x00" * 8),
    goaway_frame(2**32 - 1, 5, ""),
], ids=["hello", "open", "response", "data", "reset", "window_update", "ping", "goaway"])
def test_round_trip(frame):
    (f,) = decode_message(frame)
    assert f.encode() == frame
    decoders = {1: decode_hello, 2: decode_request_head, 3: decode_response_head, 5: decode_reset,
                6: decode_window_update, 7: decode_ping, 8: decode_goaway}
    if f.type in decoders:
        decoders[f.type](f.payload)  # parses without error

"""Protocol detection for `auto` listeners: every prefix of every opening, byte by byte."""

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from polybroker.protocols.mqtt import Connect, encode
from polybroker.transports.sniff import (
    MAX_SNIFF_BYTES,
    PrefixedStream,
    UnknownProtocol,
    detect,
    sniff,
)

MQTT_3_1_1 = encode(Connect("c", keep_alive=30), 4)
MQTT_3_1 = encode(Connect("c", protocol_level=3), 3)
# A CONNECT whose remaining length takes two bytes (a 200-byte client id).
MQTT_LONG = encode(Connect("x" * 200), 4)
STOMP_CONNECT = b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"
STOMP_STOMP_CRLF = b"STOMP\r\naccept-version:1.1,1.2\r\nhost:/\r\n\r\n\x00"
STOMP_AFTER_EOLS = b"\r\n\n" + STOMP_CONNECT
AMQP_0_9_1 = b"AMQP\x00\x00\x09\x01"
AMQP_1_0 = b"AMQP\x00\x01\x00\x00"

OPENINGS = [
    (MQTT_3_1_1, "mqtt", 8), (MQTT_3_1, "mqtt", 10), (MQTT_LONG, "mqtt", 9),
    (STOMP_CONNECT, "stomp", 8), (STOMP_STOMP_CRLF, "stomp", 7),
    (STOMP_AFTER_EOLS, "stomp", 11), (AMQP_0_9_1, "amqp", 8), (AMQP_1_0, "amqp", 8),
]


@pytest.mark.parametrize(("opening", "protocol", "needed"), OPENINGS)
def test_each_opening_is_recognised_once_complete_and_not_before(opening, protocol, needed):
    for size in range(needed):
        assert detect(opening[:size]) is None, opening[:size]
    for size in range(needed, len(opening) + 1):
        assert detect(opening[:size]) == protocol


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"\x16\x03\x01\x02\x00", "a TLS handshake on a plain listener"),
        (b"GET /mqtt HTTP/1.1\r\n", "an HTTP request"),
        (b"\x20\x02\x00\x00", "not MQTT, STOMP or AMQP"),  # a CONNACK, not a CONNECT
        (b"\x10\x0c\x00\x04MQTX", "not MQTT"),
        (b"\x10\xff\xff\xff\xff", "not MQTT"),  # remaining length over four bytes
        (b"CONNECTED\n", "not MQTT"),
        (b"AMQX", "not MQTT"),
        (b"\n" * MAX_SNIFF_BYTES, "not MQTT"),  # heart-beats forever: bounded
    ],
)
def test_other_bytes_are_refused_with_a_reason(data, hint):
    with pytest.raises(UnknownProtocol, match=hint):
        detect(data)


@given(st.binary(max_size=80), st.binary(max_size=20))
def test_a_decision_never_changes_with_more_bytes(prefix, more):
    try:
        decided = detect(prefix)
    except UnknownProtocol:
        with pytest.raises(UnknownProtocol):
            detect(prefix + more)
        return
    if decided is not None:
        assert detect(prefix + more) == decided


async def test_sniff_hands_over_every_byte_it_read():
    left, right = trio.testing.memory_stream_pair()
    rest = b"after the opening"
    for byte in STOMP_CONNECT:  # one byte per receive, the worst case
        await left.send_all(bytes([byte]))
    await left.send_all(rest)
    protocol, stream = await sniff(right)
    assert protocol == "stomp"
    received = b""
    while len(received) < len(STOMP_CONNECT + rest):
        received += await stream.receive_some(5)
    assert received == STOMP_CONNECT + rest
    await stream.send_all(b"answer")
    assert await left.receive_some() == b"answer"
    await stream.aclose()
    assert await left.receive_some() == b""


async def test_sniff_reports_a_peer_that_closes_early():
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(b"\x10\x0c\x00")
    await left.aclose()
    with pytest.raises(UnknownProtocol, match="closed before a protocol was recognised"):
        await sniff(right)


async def test_prefixed_stream_checks_max_bytes():
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(right, b"abc")
    with pytest.raises(ValueError):
        await stream.receive_some(0)
    assert await stream.receive_some() == b"abc"
    await left.send_all(b"d")
    assert await stream.receive_some() == b"d"


async def test_sniffed_stream_half_closes_when_the_stream_under_it_can():
    # A lingering close on an auto listener half-closes the connection as on the others.
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(STOMP_CONNECT)
    _, stream = await sniff(right)
    assert isinstance(stream, trio.abc.HalfCloseableStream)
    await stream.send_eof()
    assert await left.receive_some() == b""
    assert await stream.receive_some() == STOMP_CONNECT  # reading goes on

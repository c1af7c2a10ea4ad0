"""Protocol detection for `auto` listeners: every prefix of every opening, byte by byte."""

from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from polybroker.protocols.mqtt import Connect, encode
from polybroker.transports.sniff import (
    MAX_SNIFF_BYTES,
    HalfCloseablePrefixedStream,
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


# -- trio's generic stream checks ---------------------------------------------------------------
# A sniffed stream must behave as any trio stream once its prefix is handed back: each end
# below sniffs the other's opening and reads it back whole, then trio's checkers drive the
# pair (both directions, closing, half-closing, clogged sends, concurrent calls).

StreamPair = tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]


async def sniffed(raw: StreamPair) -> StreamPair:
    left_raw, right_raw = raw
    sniffed: list[trio.abc.Stream] = []
    for stream, peer, opening in ((right_raw, left_raw, AMQP_0_9_1),
                                  (left_raw, right_raw, STOMP_CONNECT)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send_all, opening)
            _, prefixed = await sniff(stream)
        received = b""
        while len(received) < len(opening):
            received += await prefixed.receive_some()
        assert received == opening
        assert isinstance(prefixed, HalfCloseablePrefixedStream)
        sniffed.append(prefixed)
    right, left = sniffed
    return left, right  # type: ignore[return-value]


async def sniffed_memory() -> StreamPair:
    return await sniffed(trio.testing.memory_stream_pair())


async def sniffed_lockstep() -> StreamPair:
    return await sniffed(trio.testing.lockstep_stream_pair())


async def sniffed_sockets() -> StreamPair:
    left, right = trio.socket.socketpair()
    return await sniffed((trio.SocketStream(left), trio.SocketStream(right)))


async def fill(stream: trio.abc.SendStream) -> None:
    """Send until the socket buffers are full (every task blocked)."""
    async with trio.open_nursery() as nursery:
        async def send_forever() -> None:
            while True:
                await stream.send_all(b"x" * 8192)

        nursery.start_soon(send_forever)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def clogged_sniffed_sockets() -> StreamPair:
    left, right = await sniffed_sockets()
    await fill(left)
    await fill(right)
    return left, right


async def test_a_sniffed_stream_passes_trios_two_way_stream_checks():
    await trio.testing.check_two_way_stream(sniffed_memory, sniffed_lockstep)


async def test_a_sniffed_stream_passes_trios_half_closeable_stream_checks():
    # Over sockets: trio's memory streams do not refuse a send_eof during a send_all.
    await trio.testing.check_half_closeable_stream(sniffed_sockets, clogged_sniffed_sockets)


async def test_a_prefixed_stream_over_a_stream_without_half_close_passes_the_checks():
    async def wrapped(make: Callable[[], StreamPair]) -> tuple[PrefixedStream, PrefixedStream]:
        left, right = make()
        return PrefixedStream(left, b""), PrefixedStream(right, b"")

    await trio.testing.check_two_way_stream(
        lambda: wrapped(trio.testing.memory_stream_pair),
        lambda: wrapped(trio.testing.lockstep_stream_pair),
    )


async def test_replaying_the_prefix_keeps_trios_receive_rules():
    # trio's checkers cannot reach the replay (their bytes are their own): the same rules
    # here, while the prefix is handed back.
    _, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(right, b"abcdef")
    for bad, error in ((-1, ValueError), (0, ValueError), (1.5, TypeError)):
        with pytest.raises(error):
            await stream.receive_some(bad)
    with trio.testing.assert_checkpoints():
        assert await stream.receive_some(1) == b"a"
    with trio.testing.assert_checkpoints():
        assert await stream.receive_some() == b"bcdef"
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some(1)


async def test_replaying_the_prefix_refuses_a_concurrent_receive():
    _, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(right, b"abcdef")
    outcomes: list[bytes | str] = []

    async def receive() -> None:
        try:
            outcomes.append(await stream.receive_some(1))
        except trio.BusyResourceError:
            outcomes.append("busy")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(receive)
    assert sorted(outcomes, key=str) == [b"a", "busy"]

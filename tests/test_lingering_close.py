"""The last word reaches the peer: after a DISCONNECT, ERROR or connection.close the
broker half-closes and reads on (``adapters.io.linger``) rather than closing a socket
with unread input, which would make the kernel reset the connection and the client lose
the reason. Over real loopback sockets, with clients that keep writing; and the bounds
of the linger itself (time, bytes, the broker's shutdown)."""

import select
from collections.abc import Callable

import pytest
import trio
import trio.testing

from polybroker.adapters.io import LINGER_BYTES, linger
from polybroker.config import BrokerConfig, Limits
from polybroker.protocols.amqp import (
    PROTOCOL_HEADER,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionOpen,
    ConnectionStartOk,
    ConnectionTuneOk,
    FrameParser,
    MethodFrame,
    QueueDeclare,
    encode_method,
)
from polybroker.protocols.mqtt import (
    MQTT_5,
    ConnAck,
    Connect,
    PacketParser,
    Publish,
    PubRec,
    encode,
    encode_ack,
)
from polybroker.protocols.mqtt import reason_codes as rc
from polybroker.server import open_broker

FLOOD = 100_000  # bytes the client goes on writing after the broker's last word


@pytest.fixture
def loopback(serve_config) -> Callable[..., BrokerConfig]:
    def config(*urls: str, **limits: object) -> BrokerConfig:
        return serve_config(*urls, limits=Limits(**limits))
    return config


async def read_all_after_the_end(stream: trio.SocketStream) -> bytes:
    """Wait until the broker has ended its side (FIN or reset), only then read:
    everything the broker sent, up to its close. A reset raises."""
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLRDHUP)
    ended = await trio.to_thread.run_sync(poller.poll, 5000)
    assert ended, "the broker neither closed nor half-closed"
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


async def write_then_read_all(port: int, data: bytes) -> bytes:
    """Send ``data`` in one go, then ``read_all_after_the_end``."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_all_after_the_end(stream)


async def test_mqtt5_disconnect_0x93_reaches_a_client_that_keeps_sending_pubrels(loopback):
    # Paho's test_flow_control2: QoS 2 publishes beyond Receive Maximum, PUBRELs after.
    async with open_broker(loopback("mqtt://127.0.0.1:0", receive_maximum=2)) as running:
        opening = encode(Connect("flow", protocol_level=MQTT_5), MQTT_5) + b"".join(
            encode(Publish("t", b"x", qos=2, packet_id=i), MQTT_5) for i in (1, 2, 3))
        pubrels = b"".join(encode_ack(0x62, i % 60000 + 1) for i in range(FLOOD // 4))
        data = await write_then_read_all(running.port(), opening + pubrels)
    parser = PacketParser()
    parser.protocol_level = MQTT_5
    packets = parser.feed(data)
    assert [type(p) for p in packets[:3]] == [ConnAck, PubRec, PubRec]
    assert packets[3].reason_code == rc.RECEIVE_MAXIMUM_EXCEEDED and len(packets) == 4


async def test_stomp_error_reaches_a_client_that_keeps_sending(loopback):
    async with open_broker(loopback("stomp://127.0.0.1:0")) as running:
        send = b"SEND\ndestination:/topic/t\n\nhi\0"
        data = await write_then_read_all(
            running.port("stomp"),
            b"CONNECT\naccept-version:1.2\nhost:/\n\n\0BOGUS\n\n\0" + send * (FLOOD // len(send)))
    # The CONNECT in the same read as the bad frame is answered first.
    connected, error = data.split(b"\0", 1)
    assert connected.startswith(b"CONNECTED\n")
    assert error.startswith(b"ERROR\n") and b"BOGUS" in error


def amqp_open() -> bytes:
    return PROTOCOL_HEADER + b"".join(encode_method(0, m) for m in (
        ConnectionStartOk(client_properties={}, mechanism="PLAIN", response=b"\0guest\0guest"),
        ConnectionTuneOk(channel_max=10, frame_max=131072, heartbeat=0),
        ConnectionOpen(virtual_host="/"),
    ))


async def test_amqp_close_ok_followed_by_more_frames_ends_without_a_reset(loopback):
    # A method on a channel never opened: connection.close 504. The client answers
    # close-ok, and what it sent before reading the close is still on its way.
    declare = encode_method(7, QueueDeclare(queue="q"))
    async with open_broker(loopback("amqp://127.0.0.1:0")) as running:
        stream = await trio.open_tcp_stream("127.0.0.1", running.port("amqp"))
        async with stream:
            await stream.send_all(amqp_open() + declare)
            parser = FrameParser(client_side=True, frame_max=0)
            closes: list = []
            with trio.fail_after(5):
                while not closes:
                    closes = [e.method for e in parser.receive_data(await stream.receive_some())
                              if isinstance(e, MethodFrame)
                              and isinstance(e.method, ConnectionClose)]
            assert closes[0].reply_code == 504
            await stream.send_all(encode_method(0, ConnectionCloseOk())
                                  + declare * (FLOOD // len(declare)))
            assert await read_all_after_the_end(stream) == b""


async def test_amqp_protocol_header_reply_reaches_a_client_that_keeps_sending(loopback):
    async with open_broker(loopback("amqp://127.0.0.1:0")) as running:
        data = await write_then_read_all(running.port("amqp"),
                                         b"AMQP\x00\x01\x00\x00" + b"\0" * FLOOD)
    assert data == PROTOCOL_HEADER


# -- the bounds -------------------------------------------------------------------------------


def socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_linger_half_closes_and_returns_at_the_peers_close():
    ours, theirs = socket_stream_pair()
    async with ours, trio.open_nursery() as nursery:
        nursery.start_soon(linger, ours)
        assert await theirs.receive_some(10) == b""  # our FIN
        await theirs.send_all(b"late data")
        await theirs.aclose()
    # The nursery ended: linger returned once it read the peer's close.


async def test_linger_gives_up_after_its_time(autojump_clock):
    ours, theirs = socket_stream_pair()
    async with ours, theirs:
        start = trio.current_time()
        await linger(ours)  # the peer never closes
        assert trio.current_time() - start == 2.0


async def test_linger_stops_at_its_deadline(autojump_clock):
    ours, theirs = socket_stream_pair()
    async with ours, theirs:
        start = trio.current_time()
        await linger(ours, start + 0.5)
        assert trio.current_time() - start == 0.5


async def test_linger_reads_at_most_its_byte_cap(autojump_clock):
    ours, theirs = trio.testing.memory_stream_pair()
    # More than the cap, and the peer never closes: the cap ends the linger, not the time.
    await theirs.send_all(b"x" * (LINGER_BYTES + 65536))
    start = trio.current_time()
    await linger(ours)
    assert trio.current_time() - start < 2.0
    assert await theirs.receive_some() == b""  # half-closed


async def test_lingering_does_not_outlast_the_shutdown_grace(loopback):
    async with open_broker(loopback("mqtt://127.0.0.1:0")) as running:
        client = await trio.open_tcp_stream("127.0.0.1", running.port())
        async with client:
            await client.send_all(encode(Connect("quiet", protocol_level=MQTT_5), MQTT_5))
            await client.receive_some(100)  # CONNACK
            start = trio.current_time()
            with trio.fail_after(5):
                await running.broker.shutdown(grace=1.0)
            # The client never closes its side, yet the connection ended within the grace.
            assert running.broker.connections == set()
            assert trio.current_time() - start < 1.0

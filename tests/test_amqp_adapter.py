"""The AMQP 0-9-1 adapter in memory: connection negotiation, heartbeats, connection and
channel errors, shutdown. Frames are built and parsed with the codec
(``polybroker.protocols.amqp``); ``AmqpTestClient`` is the client side.

Channel semantics (consumers, acks, confirms, transactions) are in
``test_amqp_adapter_channels.py``.
"""

from collections import deque

import pytest
import trio
import trio.testing

from polybroker import __version__
from polybroker.adapters import amqp as amqp_adapter
from polybroker.broker import Broker
from polybroker.config import AmqpSettings, ConfigError, Limits, config_from_dict
from polybroker.protocols.amqp import (
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    BasicConsume,
    BasicPublish,
    BasicReturn,
    ChannelClose,
    ChannelCloseOk,
    ChannelOpen,
    ChannelOpenOk,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionOpen,
    ConnectionOpenOk,
    ConnectionStart,
    ConnectionStartOk,
    ConnectionTune,
    ConnectionTuneOk,
    Content,
    ExchangeBind,
    FrameParser,
    Heartbeat,
    Method,
    MethodFrame,
    QueueDeclare,
    QueueDeclareOk,
    encode_content,
    encode_method,
    encode_table,
)

TIMEOUT = 5


class AmqpTestClient:
    """A bare AMQP client over a trio stream: sends codec-built frames, parses replies."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = FrameParser(client_side=True, frame_max=0)
        self.events: deque = deque()
        self.heartbeats: list[float] = []  # when each broker heartbeat arrived

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, channel: int, method: Method) -> None:
        await self.send_raw(encode_method(channel, method))

    async def publish(self, channel: int, exchange: str, routing_key: str, body: bytes,
                      properties: bytes = b"\x00\x00", mandatory: bool = False,
                      frame_max: int = 131072) -> None:
        method = BasicPublish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
        await self.send_raw(encode_content(channel, method, properties, body, frame_max))

    async def event(self, timeout: float = TIMEOUT):
        """The next frame event except heartbeats (recorded); EOFError when closed."""
        with trio.fail_after(timeout):
            while True:
                while not self.events:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        raise EOFError("connection closed by the broker")
                    self.events.extend(self.parser.receive_data(data))
                event = self.events.popleft()
                if isinstance(event, Heartbeat):
                    self.heartbeats.append(trio.current_time())
                    continue
                return event

    async def expect(self, channel: int, kind: type, timeout: float = TIMEOUT) -> Method:
        event = await self.event(timeout)
        assert isinstance(event, MethodFrame | Content), event
        assert (event.channel, type(event.method)) == (channel, kind), event
        return event.method

    async def content(self, channel: int, kind: type) -> Content:
        event = await self.event()
        assert isinstance(event, Content) and event.channel == channel, event
        assert isinstance(event.method, kind), event
        return event

    async def closed(self, timeout: float = TIMEOUT) -> list:
        """Every event up to the broker's end of the connection."""
        events = []
        while True:
            try:
                events.append(await self.event(timeout))
            except EOFError:
                return events

    async def handshake(self, heartbeat: int = 0, mechanism: str = "PLAIN",
                        response: bytes = b"\0guest\0guest",
                        frame_max: int | None = None) -> ConnectionTune:
        await self.send_raw(PROTOCOL_HEADER)
        await self.expect(0, ConnectionStart)
        await self.send(0, ConnectionStartOk(client_properties={"product": "test"},
                                             mechanism=mechanism, response=response))
        tune = await self.expect(0, ConnectionTune)
        await self.send(0, ConnectionTuneOk(channel_max=tune.channel_max,
                                            frame_max=frame_max or tune.frame_max,
                                            heartbeat=heartbeat))
        await self.send(0, ConnectionOpen(virtual_host="/"))
        await self.expect(0, ConnectionOpenOk)
        return tune

    async def open_channel(self, number: int = 1) -> None:
        await self.send(number, ChannelOpen())
        await self.expect(number, ChannelOpenOk)

    async def declare(self, channel: int, name: str, **flags) -> QueueDeclareOk:
        await self.send(channel, QueueDeclare(queue=name, **flags))
        return await self.expect(channel, QueueDeclareOk)

    async def close_connection(self) -> None:
        await self.send(0, ConnectionClose(reply_code=200, reply_text="bye"))
        await self.expect(0, ConnectionCloseOk)
        assert await self.closed() == []


async def start_client(nursery, broker: Broker) -> AmqpTestClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(amqp_adapter.serve_amqp, server_stream, broker, "test-peer")
    return AmqpTestClient(client_stream)


async def open_client(nursery, broker: Broker, channels: int = 1, **handshake) -> AmqpTestClient:
    client = await start_client(nursery, broker)
    await client.handshake(**handshake)
    for number in range(1, channels + 1):
        await client.open_channel(number)
    return client


def assert_close(method: Method, code: int, class_id: int = 0, method_id: int = 0) -> None:
    assert isinstance(method, ConnectionClose | ChannelClose), method
    assert (method.reply_code, method.class_id, method.method_id) == (
        code, class_id, method_id), method


# -- negotiation -----------------------------------------------------------------------------


async def test_wrong_protocol_header_is_answered_with_ours_and_closed(nursery, broker):
    client = await start_client(nursery, broker)
    await client.send_raw(b"AMQP\x01\x01\x00\x0a")
    data = b""
    with trio.fail_after(TIMEOUT):
        while chunk := await client.stream.receive_some(100):
            data += chunk
    assert data == PROTOCOL_HEADER


async def test_start_offers_capabilities_mechanisms_and_tune_proposes_limits(nursery, broker):
    client = await start_client(nursery, broker)
    await client.send_raw(PROTOCOL_HEADER)
    start = await client.expect(0, ConnectionStart)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms.split() == [b"PLAIN", b"AMQPLAIN"]
    assert start.locales == b"en_US"
    props = start.server_properties
    assert props["product"] == "polybroker" and props["version"] == __version__
    assert {"platform", "copyright", "information"} <= props.keys()
    assert props["capabilities"] == {
        "publisher_confirms": True, "basic.nack": True, "consumer_cancel_notify": True,
        "authentication_failure_close": True, "per_consumer_qos": True,
    }
    await client.send(0, ConnectionStartOk(mechanism="PLAIN", response=b"\0u\0p"))
    tune = await client.expect(0, ConnectionTune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


async def test_tune_values_come_from_the_amqp_settings(nursery, make_broker):
    broker = make_broker(amqp=AmqpSettings(heartbeat=5, frame_max=8192, channel_max=3))
    client = await start_client(nursery, broker)
    await client.send_raw(PROTOCOL_HEADER)
    await client.expect(0, ConnectionStart)
    await client.send(0, ConnectionStartOk(mechanism="PLAIN", response=b"\0u\0p"))
    tune = await client.expect(0, ConnectionTune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (3, 8192, 5)


def test_amqp_table_of_the_configuration():
    config = config_from_dict({"amqp": {"heartbeat": 0, "frame_max": 4096, "channel_max": 1}})
    assert config.amqp == AmqpSettings(heartbeat=0, frame_max=4096, channel_max=1)
    assert config_from_dict({}).amqp == AmqpSettings(heartbeat=60, frame_max=131072,
                                                     channel_max=2047)
    for bad in ({"frame_max": 4095}, {"heartbeat": -1}, {"channel_max": 0},
                {"heartbeat": 1.5}, {"unknown": 1}):
        with pytest.raises(ConfigError, match="amqp"):
            config_from_dict({"amqp": bad})


async def test_amqplain_login_is_accepted(nursery, broker):
    client = await start_client(nursery, broker)
    response = encode_table({"LOGIN": "oslo", "PASSWORD": "secret"}, length_prefix=False)
    await client.handshake(mechanism="AMQPLAIN", response=response)
    await client.open_channel()
    await client.close_connection()


@pytest.mark.parametrize(("mechanism", "response"), [
    ("PLAIN", b"no separators"),
    ("AMQPLAIN", b"\x05LOGINS"),  # a table cut short
    ("EXTERNAL", b""),
])
async def test_unreadable_login_is_refused_with_403(nursery, broker, mechanism, response):
    client = await start_client(nursery, broker)
    await client.send_raw(PROTOCOL_HEADER)
    await client.expect(0, ConnectionStart)
    await client.send(0, ConnectionStartOk(mechanism=mechanism, response=response))
    close = await client.expect(0, ConnectionClose)
    assert close.reply_code == 403 and close.reply_text.startswith("ACCESS_REFUSED")
    await client.send(0, ConnectionCloseOk())
    assert await client.closed() == []


async def test_virtual_host_other_than_root_is_not_allowed(nursery, broker):
    client = await start_client(nursery, broker)
    await client.send_raw(PROTOCOL_HEADER)
    await client.expect(0, ConnectionStart)
    await client.send(0, ConnectionStartOk(mechanism="PLAIN", response=b"\0u\0p"))
    await client.expect(0, ConnectionTune)
    await client.send(0, ConnectionTuneOk(channel_max=10, frame_max=131072, heartbeat=0))
    await client.send(0, ConnectionOpen(virtual_host="/other"))
    assert_close(await client.expect(0, ConnectionClose), 530, 10, 40)


async def test_method_before_open_is_command_invalid(nursery, broker):
    client = await start_client(nursery, broker)
    await client.send_raw(PROTOCOL_HEADER)
    await client.expect(0, ConnectionStart)
    await client.send(0, ConnectionOpen(virtual_host="/"))  # start-ok expected
    assert_close(await client.expect(0, ConnectionClose), 503, 10, 40)


async def test_handshake_must_end_within_the_connect_timeout(nursery, autojump_clock, make_broker):
    broker = make_broker(limits=Limits(connect_timeout=3))
    client = await start_client(nursery, broker)
    await client.send_raw(PROTOCOL_HEADER)
    await client.expect(0, ConnectionStart)
    started = trio.current_time()
    assert await client.closed(timeout=10) == []
    assert trio.current_time() - started == pytest.approx(3, abs=0.1)


# -- heartbeats ------------------------------------------------------------------------------


async def test_heartbeats_sent_at_half_the_interval_and_silent_client_dropped(
    nursery, broker, autojump_clock
):
    client = await open_client(nursery, broker, channels=0, heartbeat=4)
    opened = trio.current_time()
    assert await client.closed(timeout=30) == []  # no connection.close, just dropped
    dropped = trio.current_time() - opened
    assert dropped == pytest.approx(8, abs=0.1)  # two intervals of silence
    gaps = [b - a for a, b in zip([opened, *client.heartbeats], client.heartbeats,
                                  strict=False)]
    assert len(client.heartbeats) >= 3 and all(gap == pytest.approx(2, abs=0.1)
                                               for gap in gaps), gaps


async def test_a_beating_client_stays_connected(nursery, broker, autojump_clock):
    client = await open_client(nursery, broker, heartbeat=2)
    for _ in range(10):  # 10 seconds of heartbeats only
        await trio.sleep(1)  # ok: mock clock, time passing is the point
        await client.send_raw(HEARTBEAT_FRAME)
    await client.declare(1, "alive")
    await client.close_connection()


async def test_heartbeat_zero_means_none(nursery, broker, autojump_clock):
    client = await open_client(nursery, broker, heartbeat=0)
    await trio.sleep(600)  # ok: mock clock; an idle connection without heartbeats stays
    assert client.heartbeats == []
    await client.declare(1, "still-here")
    await client.close_connection()


# -- connection errors -----------------------------------------------------------------------


async def test_bad_frame_end_is_frame_error(nursery, broker, autojump_clock):
    client = await open_client(nursery, broker)
    await client.send_raw(encode_method(1, QueueDeclare(queue="q"))[:-1] + b"\x00")
    close = await client.expect(0, ConnectionClose)
    assert close.reply_code == 501 and close.reply_text.startswith("FRAME_ERROR")
    await client.send(0, ConnectionCloseOk())
    assert await client.closed() == []


async def test_malformed_arguments_are_syntax_error(nursery, broker):
    client = await open_client(nursery, broker)
    frame = encode_method(1, QueueDeclare(queue="q"))
    # Cut the arguments short, keeping the frame itself well-formed.
    payload = frame[7:-1][:7]
    await client.send_raw(frame[:3] + len(payload).to_bytes(4, "big") + payload + b"\xce")
    assert_close(await client.expect(0, ConnectionClose), 502, 50, 10)


async def test_frame_on_a_channel_not_open_is_channel_error(nursery, broker):
    client = await open_client(nursery, broker, channels=0)
    await client.send(5, QueueDeclare(queue="q"))
    assert_close(await client.expect(0, ConnectionClose), 504, 50, 10)
    await client.send(0, ConnectionCloseOk())
    assert await client.closed() == []


async def test_second_channel_open_is_channel_error(nursery, broker):
    client = await open_client(nursery, broker)
    await client.send(1, ChannelOpen())
    assert_close(await client.expect(0, ConnectionClose), 504, 20, 10)


async def test_channel_above_channel_max_is_refused(nursery, make_broker):
    broker = make_broker(amqp=AmqpSettings(channel_max=2))
    client = await open_client(nursery, broker, channels=2)
    await client.send(3, ChannelOpen())
    assert_close(await client.expect(0, ConnectionClose), 504, 20, 10)


async def test_frame_above_frame_max_is_frame_error(nursery, make_broker):
    broker = make_broker(amqp=AmqpSettings(frame_max=4096))
    client = await open_client(nursery, broker)
    await client.publish(1, "", "q", b"x" * 5000, frame_max=0)  # one oversize body frame
    assert (await client.expect(0, ConnectionClose)).reply_code == 501


async def test_body_above_max_packet_size_is_content_too_large(nursery, make_broker):
    broker = make_broker(limits=Limits(max_packet_size=1000))
    client = await open_client(nursery, broker)
    await client.publish(1, "", "q", b"x" * 1001)
    assert_close(await client.expect(0, ConnectionClose), 311, 60, 40)


async def test_exchange_bind_is_not_implemented(nursery, broker):
    client = await open_client(nursery, broker)
    await client.send(1, ExchangeBind(destination="a", source="b", routing_key="k"))
    assert_close(await client.expect(0, ConnectionClose), 540, 40, 30)


async def test_immediate_publish_is_not_implemented(nursery, broker):
    client = await open_client(nursery, broker)
    method = BasicPublish(exchange="", routing_key="q", immediate=True)
    await client.send_raw(encode_content(1, method, b"\x00\x00", b"x", 131072))
    assert_close(await client.expect(0, ConnectionClose), 540, 60, 40)


async def test_reused_consumer_tag_is_not_allowed(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.send(1, BasicConsume(queue="q", consumer_tag="t"))
    await client.event()  # consume-ok
    await client.send(1, BasicConsume(queue="q", consumer_tag="t"))
    assert_close(await client.expect(0, ConnectionClose), 530, 60, 20)


async def test_after_connection_close_only_close_ok_counts(nursery, broker):
    client = await open_client(nursery, broker)
    await client.send(5, QueueDeclare(queue="q"))  # 504
    await client.expect(0, ConnectionClose)
    await client.send(1, QueueDeclare(queue="ignored"))  # not answered any more
    await client.send(0, ConnectionCloseOk())
    assert await client.closed() == []
    assert "ignored" not in broker.queues


async def test_connection_close_from_the_client_is_answered_and_cleans_up(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "", exclusive=True)
    assert len(broker.queues) == 1
    await client.close_connection()
    await trio.testing.wait_all_tasks_blocked()  # the broker has handled the close
    assert not broker.connections
    assert len(broker.queues) == 0  # the exclusive queue went with its connection


async def test_garbage_after_our_close_gets_no_second_close(nursery, broker, autojump_clock):
    client = await open_client(nursery, broker)
    await client.send(9, QueueDeclare(queue="q"))
    await client.expect(0, ConnectionClose)
    await client.send_raw(b"\x01\x00\x01\x00\x00\x00\x04\x00\x32\x00\x0a\x00")  # bad end
    await client.send_raw(b"more garbage")
    await client.send(0, ConnectionCloseOk())  # unparsable now: the timeout ends it
    assert await client.closed() == []


async def test_no_close_ok_within_the_timeout_closes_anyway(nursery, broker, autojump_clock):
    client = await open_client(nursery, broker)
    await client.send(9, QueueDeclare(queue="q"))
    await client.expect(0, ConnectionClose)
    started = trio.current_time()
    assert await client.closed(timeout=10) == []
    assert trio.current_time() - started == pytest.approx(amqp_adapter.CLOSE_TIMEOUT, abs=0.1)


# -- channels --------------------------------------------------------------------------------


async def test_channel_error_closes_the_channel_and_the_connection_stays_usable(
    nursery, broker
):
    client = await open_client(nursery, broker)
    await client.send(1, QueueDeclare(queue="missing", passive=True))
    close = await client.expect(1, ChannelClose)
    assert_close(close, 404, 50, 10)
    assert close.reply_text.startswith("NOT_FOUND")
    await client.send(1, QueueDeclare(queue="ignored"))  # dropped until close-ok
    await client.send(1, ChannelCloseOk())
    await client.open_channel(1)  # the number is free again
    assert (await client.declare(1, "works")).queue == "works"
    assert "ignored" not in broker.queues
    await client.close_connection()


async def test_many_channels(nursery, broker):
    client = await open_client(nursery, broker, channels=20)
    for number in range(1, 21):
        assert (await client.declare(number, f"q{number}")).queue == f"q{number}"
    await client.send(7, ChannelClose(reply_code=200, reply_text="done"))
    await client.expect(7, ChannelCloseOk)
    await client.send(7, QueueDeclare(queue="after"))  # closed: a connection error
    assert_close(await client.expect(0, ConnectionClose), 504, 50, 10)


async def test_close_of_a_channel_that_is_not_open_is_answered(nursery, broker):
    client = await open_client(nursery, broker, channels=0)
    await client.send(3, ChannelClose(reply_code=200))
    await client.expect(3, ChannelCloseOk)
    await client.send(3, ChannelCloseOk())  # ignored
    await client.open_channel(3)
    await client.close_connection()


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_closes_with_connection_forced(nursery, broker):
    client = await open_client(nursery, broker)
    async with trio.open_nursery() as inner:
        inner.start_soon(broker.shutdown, TIMEOUT)
        close = await client.expect(0, ConnectionClose)
        assert close.reply_code == 320
        await client.send(0, ConnectionCloseOk())
        assert await client.closed() == []
    assert not broker.connections


async def test_closed_by_an_administrator_is_connection_forced_saying_so(nursery, broker):
    client = await open_client(nursery, broker)
    (connection,) = broker.connections
    broker.close_connection(connection)
    close = await client.expect(0, ConnectionClose)
    assert (close.reply_code, close.reply_text) == (
        320, "CONNECTION_FORCED - closed by an administrator")
    await client.send(0, ConnectionCloseOk())
    assert await client.closed() == []
    with trio.fail_after(5):
        while broker.connections:  # unregistered after its lingering close
            await broker.stats.changed()
    assert dict(broker.stats.closed) == {("amqp", "", "kicked"): 1}


async def test_properties_of_a_publish_that_do_not_decode_are_syntax_error(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.publish(1, "", "q", b"x", properties=b"\x80\x00")  # content_type, missing
    assert (await client.expect(0, ConnectionClose)).reply_code == 502



async def test_a_client_that_does_not_read_is_not_read_either(nursery, autojump_clock, make_broker):
    broker = make_broker(limits=Limits(max_outgoing_bytes=50_000, send_timeout=100))
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    connection = amqp_adapter.AMQPClientConnection(server_stream, broker, "lazy-peer")
    nursery.start_soon(connection.run)
    client = AmqpTestClient(client_stream)
    await client.handshake()
    await client.open_channel()
    # Mandatory publishes that route nowhere: each comes back as a 10 kB basic.return.
    sent = 0
    with trio.move_on_after(10):
        while sent < 100:
            await client.publish(1, "amq.direct", "nowhere", b"r" * 10_000, mandatory=True)
            sent += 1
    assert sent < 20  # the broker stopped reading: its replies are not being read
    assert connection.pending_bytes <= 50_000 + 65_536 // 10_000 * 10_100
    returned = 0
    with trio.fail_after(30):
        while returned < sent:  # reading lets everything through again
            returned += isinstance((await client.event()).method, BasicReturn)

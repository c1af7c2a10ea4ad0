"""Streams end to end against a real ``polybroker serve``: pika and stomp.py consumers
read a stream from ``first``, from a timestamp and from ``next``; two consumers at
different offsets; a named consumer resumes after the broker process is killed and
started again on the same data directory; paho-mqtt feeds a stream through an
``amq.topic`` binding and reads its history with the SUBSCRIBE user property
``x-stream``.

Every wait is bounded and on something the broker sends (a synchronous reply, a
callback run by ``pump``, a RECEIPT or MESSAGE frame, a log line). The one wait on the
clock is for the next whole second, because an AMQP timestamp counts whole seconds."""

import math
import signal
import time
from datetime import UTC, datetime

import pika
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from .amqp_support import pika_params, pump, start_broker
from .test_paho_mqtt5 import PahoClient5, _wait_for_mid, properties
from .test_stomp_py import StompPy

STREAM = {"x-queue-type": "stream"}


@pytest.fixture
def broker(tmp_path):
    proc = start_broker(tmp_path / "data", listen=("stomp://127.0.0.1:0",))
    try:
        yield proc
    finally:
        proc.stop()


def channel_of(port: int, prefetch: int = 100):
    connection = pika.BlockingConnection(pika_params(port))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    channel.confirm_delivery()
    return connection, channel


def publish(channel, stream: str, *bodies: bytes) -> None:
    for body in bodies:
        channel.basic_publish("", stream, body)  # returns once confirmed


def consume(connection, channel, stream: str, count: int, acks: int | None = None,
            **arguments) -> list[tuple[bytes, int]]:
    """(body, x-stream-offset) of the first ``count`` deliveries from ``arguments``'s
    offset, the first ``acks`` of them (default: all) acknowledged; the consumer is
    cancelled afterwards."""
    got = []

    def on_message(ch, method, properties, body):
        got.append((body, properties.headers["x-stream-offset"]))
        if acks is None or len(got) <= acks:
            ch.basic_ack(method.delivery_tag)

    tag = channel.basic_consume(stream, on_message, arguments=arguments)
    pump(connection, lambda: len(got) >= count)
    channel.basic_cancel(tag)
    return got


def next_whole_second() -> int:
    second = math.floor(time.time()) + 1
    deadline = time.monotonic() + 2
    while time.time() < second:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return second


def test_pika_reads_from_first_a_timestamp_and_next(broker):
    connection, channel = channel_of(broker.amqp_port)
    try:
        channel.queue_declare("events", durable=True, arguments=STREAM)
        publish(channel, "events", b"a0", b"a1", b"a2")
        second = next_whole_second()
        publish(channel, "events", b"b3", b"b4")
        first = consume(connection, channel, "events", 5, **{"x-stream-offset": "first"})
        assert first == [(b"a0", 0), (b"a1", 1), (b"a2", 2), (b"b3", 3), (b"b4", 4)]
        since = consume(connection, channel, "events", 2, **{
            "x-stream-offset": datetime.fromtimestamp(second, UTC)})
        assert since == [(b"b3", 3), (b"b4", 4)]
        got = []
        channel.basic_consume("events", lambda ch, m, p, body: got.append(body),
                              arguments={"x-stream-offset": "next"})
        publish(channel, "events", b"c5")
        pump(connection, lambda: got)
        assert got == [b"c5"]
        ok = channel.queue_declare("events", passive=True)
        assert ok.method.message_count == 6  # reading removed nothing
    finally:
        connection.close()


def test_pika_two_consumers_at_different_offsets(broker):
    connection, channel = channel_of(broker.amqp_port)
    try:
        channel.queue_declare("two", durable=True, arguments=STREAM)
        publish(channel, "two", *(b"m%d" % n for n in range(6)))
        early, late = [], []
        for into, offset in ((early, 1), (late, 4)):
            channel.basic_consume(
                "two", lambda ch, m, p, body, into=into: (into.append(body),
                                                          ch.basic_ack(m.delivery_tag)),
                arguments={"x-stream-offset": offset})
        pump(connection, lambda: len(early) == 5 and len(late) == 2)
        assert early == [b"m1", b"m2", b"m3", b"m4", b"m5"] and late == [b"m4", b"m5"]
    finally:
        connection.close()


def test_stomp_py_reads_from_first_a_timestamp_and_next(broker):
    writer = StompPy(broker.stomp_port)
    reader = StompPy(broker.stomp_port)
    try:
        writer.subscribe("/queue/log", "w", ack="client", x_queue_type="stream",
                         prefetch_count="10")  # declares the stream
        writer.send("/queue/log", "a0")
        writer.send("/queue/log", "a1")
        between = time.time()  # STOMP takes seconds with a fraction
        writer.send("/queue/log", "b2")
        reader.subscribe("/queue/log", "first", ack="client-individual",
                         x_queue_type="stream", prefetch_count="10", x_stream_offset="first")
        frames = [reader.next_message() for _ in range(3)]
        assert [f.body for f in frames] == ["a0", "a1", "b2"]
        assert [f.headers["x-stream-offset"] for f in frames] == ["0", "1", "2"]
        reader.subscribe("/amq/queue/log", "since", ack="client", x_queue_type="stream",
                         prefetch_count="10", x_stream_offset=f"timestamp={between}")
        assert reader.next_message().body == "b2"
        reader.subscribe("/queue/log", "next", ack="client", x_queue_type="stream",
                         prefetch_count="10", x_stream_offset="next")
        writer.send("/queue/log", "c3")
        got = sorted((f.headers["subscription"], f.body)
                     for f in (reader.next_message(), reader.next_message(),
                               reader.next_message()))
        assert got == [("first", "c3"), ("next", "c3"), ("since", "c3")]
    finally:
        writer.conn.disconnect()
        reader.conn.disconnect()


def test_a_named_consumer_resumes_after_the_broker_is_killed(tmp_path):
    data_dir = tmp_path / "data"
    name = {"x-stream-consumer-name": "billing"}
    proc = start_broker(data_dir)
    try:
        connection, channel = channel_of(proc.amqp_port, prefetch=3)
        channel.queue_declare("orders", durable=True, arguments=STREAM)
        publish(channel, "orders", *(b"o%d" % n for n in range(10)))
        got = consume(connection, channel, "orders", 6, acks=4, **name,
                      **{"x-stream-offset": "first"})
        assert [offset for _body, offset in got][:6] == [0, 1, 2, 3, 4, 5]  # 4 on: no ack
        channel.basic_qos(prefetch_count=3)  # a barrier: the acks have arrived
        assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        proc.stop()

    proc = start_broker(data_dir)
    try:
        connection, channel = channel_of(proc.amqp_port)
        got = consume(connection, channel, "orders", 6, **name)
        assert [body for body, _offset in got] == [b"o%d" % n for n in range(4, 10)]
        connection.close()
    finally:
        proc.stop()


def test_paho_feeds_a_stream_through_a_binding_and_reads_its_history(tmp_path):
    proc = start_broker(tmp_path / "data", listen=("mqtt://127.0.0.1:0",))
    clients = []
    try:
        connection, channel = channel_of(proc.amqp_port)
        channel.queue_declare("history", durable=True, arguments=STREAM)
        channel.queue_bind("history", "amq.topic", "sensors.#")
        writer = PahoClient5(proc.port_of("mqtt"), "writer")
        clients.append(writer)
        writer.connect()
        for n in range(5):
            writer.publish(f"sensors/{n % 2}", b"old%d" % n)  # waits for PUBACK
        assert channel.queue_declare("history", passive=True).method.message_count == 5

        reader = PahoClient5(proc.port_of("mqtt"), "reader")
        clients.append(reader)
        reader.connect()
        props = properties(PacketTypes.SUBSCRIBE,
                           UserProperty=[("x-stream", "history"), ("x-stream-offset", "1")])
        result, mid = reader.client.subscribe("sensors/1", options=SubscribeOptions(qos=1),
                                              properties=props)
        assert result == 0 and _wait_for_mid(reader._subacks, mid, "SUBACK") == [1]
        writer.publish("sensors/1", b"live")
        got = [(m.topic, m.payload, m.qos) for m in reader.receive(3)]
        assert got == [("sensors/1", b"old1", 1), ("sensors/1", b"old3", 1),
                       ("sensors/1", b"live", 1)]
        connection.close()
    finally:
        for client in clients:
            client.stop()
        proc.stop()

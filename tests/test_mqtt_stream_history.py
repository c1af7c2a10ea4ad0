"""Streams and MQTT: a stream fed from topics through an ``amq.topic`` binding, and an
MQTT 5.0 subscription asking for history with the user properties ``x-stream`` and
``x-stream-offset`` (polybroker.stream_replay)."""

from polybroker.message import Message
from polybroker.protocols.mqtt import PubAck, Publish, SubAck, Subscribe, Subscription
from polybroker.protocols.mqtt import properties as prop
from polybroker.streams import StreamQueue

from .test_mqtt5_broker import client5, send5


def stream_of(broker, name: str = "history", binding: str = "sensors.#") -> StreamQueue:
    stream = broker.queues.declare_queue(name, durable=True,
                                         arguments={"x-queue-type": "stream"})
    broker.exchanges.bind(stream, "amq.topic", binding, {})
    return stream


async def subscribe_history(client, topic_filter: str, qos: int = 1, **properties) -> None:
    users = tuple((name.replace("_", "-"), value) for name, value in properties.items())
    await send5(client, Subscribe(1, (Subscription(topic_filter, qos),),
                                  {prop.USER_PROPERTY: users}))
    assert await client.receive() == SubAck(1, (qos,))


async def test_a_stream_is_fed_from_mqtt_topics_through_a_binding(nursery, broker):
    stream = stream_of(broker)
    publisher = await client5(nursery, broker, "pub")
    for n in range(3):
        await send5(publisher, Publish(f"sensors/{n}", b"%d" % n, qos=0))
    await send5(publisher, Publish("other/x", b"x", qos=0))
    await publisher.publishes_until_idle()
    assert stream.message_count == 3


async def test_history_from_first_then_live_messages_once(nursery, broker):
    stream_of(broker)
    for n in range(4):
        broker.publish(Message(f"sensors/{n % 2}", b"old%d" % n, qos=1))
    broker.publish(Message("elsewhere", b"no"))
    client = await client5(nursery, broker)
    await subscribe_history(client, "sensors/0", x_stream="history", x_stream_offset="first")
    history = await client.publishes_until_idle()
    assert [(p.topic, p.payload, p.qos, p.retain) for p in history] == [
        ("sensors/0", b"old0", 1, False), ("sensors/0", b"old2", 1, False)]
    broker.publish(Message("sensors/0", b"live", qos=1))
    live = await client.publishes_until_idle()
    assert [p.payload for p in live] == [b"live"]


async def test_history_from_an_offset_and_at_the_granted_qos(nursery, broker):
    stream_of(broker)
    for n in range(5):
        broker.publish(Message("sensors/a", b"m%d" % n, qos=2))
    client = await client5(nursery, broker)
    await subscribe_history(client, "sensors/#", qos=0, x_stream="history",
                            x_stream_offset="3")
    got = await client.publishes_until_idle()
    assert [(p.payload, p.qos) for p in got] == [(b"m3", 0), (b"m4", 0)]


async def test_no_history_for_an_unknown_stream_or_a_bad_offset(nursery, broker, caplog):
    stream_of(broker)
    broker.publish(Message("sensors/a", b"m"))
    client = await client5(nursery, broker)
    await subscribe_history(client, "sensors/#", x_stream="nothing")
    await subscribe_history(client, "sensors/#", x_stream="history", x_stream_offset="soon")
    assert await client.publishes_until_idle() == []
    assert "'nothing' is no stream" in caplog.text
    assert "invalid x-stream-offset" in caplog.text
    broker.publish(Message("sensors/a", b"live"))  # the subscription itself stands
    assert [p.payload for p in await client.publishes_until_idle()] == [b"live"]


async def test_a_long_history_goes_at_the_session_pace(nursery, broker, autojump_clock):
    stream_of(broker)
    count = 3000  # more than one turn and more than the session queues at once
    for n in range(count):
        broker.publish(Message("sensors/a", b"%d" % n, qos=1))
    client = await client5(nursery, broker, properties={prop.RECEIVE_MAXIMUM: 20})
    await send5(client, Subscribe(1, (Subscription("sensors/a", 1),), {
        prop.USER_PROPERTY: (("x-stream", "history"),)}))
    assert await client.receive() == SubAck(1, (1,))
    got = []
    while len(got) < count:
        packet = await client.receive()
        assert isinstance(packet, Publish), packet
        got.append(int(packet.payload))
        await send5(client, PubAck(packet.packet_id))
    assert got == list(range(count))
    assert broker.drops.total() == 0

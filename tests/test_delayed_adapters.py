"""Delayed delivery through each protocol's adapter, in memory under a mock clock: MQTT
``$delayed/`` topics (and what a publisher over the bounds is told), STOMP delay headers,
AMQP ``x-delayed-message`` exchanges (nack in confirm mode, channel.close otherwise)."""

import trio
import trio.testing

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits
from polybroker.protocols.amqp import (
    BasicAck,
    BasicConsume,
    BasicConsumeOk,
    BasicDeliver,
    BasicNack,
    ChannelClose,
    ConfirmSelect,
    ConfirmSelectOk,
    ExchangeDeclare,
    ExchangeDeclareOk,
    QueueBind,
    QueueBindOk,
)
from polybroker.protocols.amqp.properties import encode_properties
from polybroker.protocols.mqtt import PubAck, Publish, PubRec, SubAck, Subscribe, Subscription
from polybroker.protocols.mqtt import properties as prop
from polybroker.protocols.mqtt import reason_codes as rc

from .rawclient import RawClient
from .rawclient import connect_client as connect_mqtt
from .stompclient import connect_client as connect_stomp
from .test_amqp_adapter import open_client

V5 = 5


def start_broker(nursery: trio.Nursery, **limits: object) -> Broker:
    broker = Broker(BrokerConfig(limits=Limits(**limits)))
    nursery.start_soon(broker.timers.run)
    return broker


async def mqtt(nursery, broker, client_id: str, level: int = 4) -> RawClient:
    c = await connect_mqtt(nursery, broker)
    if level == V5:
        c.parser.protocol_level = V5
    await c.connect(client_id, protocol_level=level)
    return c


async def nothing_arrives(client, within: float) -> bool:
    with trio.move_on_after(within):
        event = await client.receive(timeout=within + 1)
        raise AssertionError(f"unexpected {event}")
    return True


# -- MQTT ---------------------------------------------------------------------------------


async def test_mqtt_delayed_topic_arrives_after_its_delay_with_its_properties(
    nursery, autojump_clock
):
    broker = start_broker(nursery)
    sub = await mqtt(nursery, broker, "sub", V5)
    await sub.send(Subscribe(1, (Subscription("a/b", 1),)), level=V5)
    assert isinstance(await sub.receive(), SubAck)
    pub = await mqtt(nursery, broker, "pub", V5)
    props = {prop.USER_PROPERTY: (("k", "v"),), prop.CONTENT_TYPE: "text/plain",
             prop.RESPONSE_TOPIC: "r", prop.CORRELATION_DATA: b"c"}
    await pub.send(Publish("$delayed/2/a/b", b"hi", 1, packet_id=1, properties=props),
                   level=V5)
    assert await pub.receive() == PubAck(1)  # success: it is taken, not "no subscribers"
    start = trio.current_time()
    assert await nothing_arrives(sub, 1.99)
    got = await sub.receive()
    assert trio.current_time() - start >= 1.99
    assert (got.topic, got.payload) == ("a/b", b"hi")
    for key, value in props.items():
        assert got.properties[key] == value


async def test_mqtt5_over_the_delayed_bounds_is_quota_exceeded(nursery, autojump_clock):
    broker = start_broker(nursery, max_delayed_messages=1, max_delay=60)
    pub = await mqtt(nursery, broker, "pub", V5)
    await pub.send(Publish("$delayed/5/t", b"1", 1, packet_id=1),
                   Publish("$delayed/5/t", b"2", 1, packet_id=2),
                   Publish("$delayed/5/t", b"3", 2, packet_id=3), level=V5)
    assert [await pub.receive() for _ in range(3)] == [
        PubAck(1), PubAck(2, rc.QUOTA_EXCEEDED), PubRec(3, rc.QUOTA_EXCEEDED)]
    assert broker.drops == {"delayed-limit": 2}


async def test_mqtt311_over_the_delayed_bounds_is_disconnected_unacknowledged(
    nursery, autojump_clock, caplog
):
    broker = start_broker(nursery, max_delay=60)
    pub = await mqtt(nursery, broker, "pub")
    await pub.send(Publish("$delayed/5/t", b"ok", 1, packet_id=1),
                   Publish("$delayed/61/t", b"too late", 1, packet_id=2))
    assert await pub.receive_until_closed() == [PubAck(1)]
    assert "delay 61s is longer than max_delay 60s" in caplog.text
    assert broker.drops == {"delayed-limit": 1}


async def test_mqtt311_qos0_over_the_bounds_is_dropped_silently(nursery, autojump_clock):
    broker = start_broker(nursery, max_delay=60)
    pub = await mqtt(nursery, broker, "pub")
    await pub.send(Publish("$delayed/61/t", b"x", 0))
    assert await pub.publishes_until_idle() == []
    assert broker.drops == {"delayed-limit": 1}


async def test_mqtt_malformed_prefix_is_refused_as_not_authorized(nursery, autojump_clock):
    broker = start_broker(nursery)
    sub = await mqtt(nursery, broker, "sub")
    await sub.subscribe("#", 1)
    pub = await mqtt(nursery, broker, "pub", V5)
    await pub.send(Publish("$delayed/soon/t", b"x", 1, packet_id=1), level=V5)
    assert await pub.receive() == PubAck(1, rc.NOT_AUTHORIZED)
    assert await nothing_arrives(sub, 10)


async def test_mqtt_retained_delayed_message_is_retained_when_published(nursery, autojump_clock):
    broker = start_broker(nursery)
    pub = await mqtt(nursery, broker, "pub")
    await pub.send(Publish("$delayed/3/status", b"on", 1, retain=True, packet_id=1))
    assert await pub.receive() == PubAck(1)
    await trio.sleep(1)
    late = await mqtt(nursery, broker, "late")
    await late.subscribe("status", 1)
    assert await late.publishes_until_idle() == []
    await trio.sleep(2.5)
    later = await mqtt(nursery, broker, "later")
    await later.subscribe("status", 1)
    (got,) = await later.publishes_until_idle()
    assert (got.topic, got.payload, got.retain) == ("status", b"on", True)


# -- STOMP --------------------------------------------------------------------------------


async def test_stomp_delay_headers_to_a_topic_and_a_queue(nursery, autojump_clock):
    broker = start_broker(nursery)
    sub = await connect_stomp(nursery, broker)
    await sub.connect()
    await sub.subscribe("/topic/t", "t")
    await sub.subscribe("/queue/jobs", "q")
    pub = await connect_stomp(nursery, broker)
    await pub.connect()
    start = trio.current_time()
    for destination, delay, body in (("/queue/jobs", "AMQ_SCHEDULED_DELAY", b"q"),
                                     ("/topic/t", "delay", b"t"), ("/topic/t", "x-delay", b"x")):
        ms = {b"q": "3000", b"t": "1000", b"x": "2000"}[body]
        await pub.request("SEND", {"destination": destination, delay: ms}, body)
    got = []
    for _ in range(3):
        frame = await sub.receive()
        got.append((round(trio.current_time() - start, 3), frame.body))
    assert got == [(1, b"t"), (2, b"x"), (3, b"q")]


async def test_stomp_bad_delay_or_over_the_bounds_is_an_error(nursery, autojump_clock):
    broker = start_broker(nursery, max_delay=10)
    for headers, text in (
        ({"AMQ_SCHEDULED_DELAY": "soon"}, "header AMQ_SCHEDULED_DELAY: not a number"),
        ({"delay": "11000"}, "delayed message refused: delay 11s is longer than max_delay"),
    ):
        pub = await connect_stomp(nursery, broker)
        await pub.connect()
        await pub.send("SEND", {"destination": "/topic/t", **headers}, b"x")
        (error,) = await pub.receive_until_closed()
        assert error.command == "ERROR" and error.get("message").startswith(text), error
    assert broker.drops == {"delayed-limit": 1}


# -- AMQP ---------------------------------------------------------------------------------


async def delayed_exchange(nursery, broker, confirm: bool):
    client = await open_client(nursery, broker)
    if confirm:
        await client.send(1, ConfirmSelect())
        await client.expect(1, ConfirmSelectOk)
    await client.send(1, ExchangeDeclare(exchange="later", type="x-delayed-message",
                                         arguments={"x-delayed-type": "topic"}))
    await client.expect(1, ExchangeDeclareOk)
    await client.declare(1, "jobs")
    await client.send(1, QueueBind(queue="jobs", exchange="later", routing_key="job.*"))
    await client.expect(1, QueueBindOk)
    return client


async def test_amqp_x_delay_holds_the_message_then_routes_it_by_the_delayed_type(
    nursery, autojump_clock
):
    broker = start_broker(nursery, max_delay=60)
    client = await delayed_exchange(nursery, broker, confirm=True)
    await client.publish(1, "later", "job.a", b"held", encode_properties(headers={"x-delay": 1500}))
    await client.publish(1, "later", "job.b", b"now", encode_properties())
    await client.publish(1, "later", "job.c", b"no", encode_properties(headers={"x-delay": 61000}))
    confirms = [await client.event() for _ in range(3)]
    assert [type(c.method) for c in confirms] == [BasicAck, BasicAck, BasicNack]
    await client.send(1, BasicConsume(queue="jobs", no_ack=True))
    await client.expect(1, BasicConsumeOk)
    start = trio.current_time()
    assert (await client.content(1, BasicDeliver)).body == b"now"
    held = await client.content(1, BasicDeliver)
    assert held.body == b"held" and held.method.routing_key == "job.a"
    assert trio.current_time() - start == 1.5


async def test_amqp_over_the_bounds_without_confirms_closes_the_channel(nursery, autojump_clock):
    broker = start_broker(nursery, max_delay=60)
    client = await delayed_exchange(nursery, broker, confirm=False)
    await client.publish(1, "later", "job.c", b"no", encode_properties(headers={"x-delay": 61000}))
    close = await client.expect(1, ChannelClose)
    assert close.reply_code == 406 and "longer than max_delay" in close.reply_text

"""limits.queue_overflow over STOMP and AMQP: what a publisher is told when the backlog
its message goes to (an MQTT session, a STOMP topic subscription, a named queue) is full."""

import pytest
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
    ConfirmSelect,
    ConfirmSelectOk,
)
from polybroker.protocols.mqtt import PubAck, Publish

from .rawclient import RawClient
from .rawclient import connect_client as connect_mqtt
from .stompclient import StompClient
from .stompclient import connect_client as connect_stomp
from .test_amqp_adapter import AmqpTestClient, open_client


def start_broker(nursery: trio.Nursery, **limits: object) -> Broker:
    broker = Broker(BrokerConfig(limits=Limits(**limits)))
    nursery.start_soon(broker.timers.run)
    return broker


async def full_mqtt_subscriber(nursery, broker: Broker, topic: str = "t") -> RawClient:
    """An MQTT subscriber of ``topic`` that does not acknowledge until told."""
    sub = await connect_mqtt(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe(topic, 1)
    return sub


async def drain_mqtt(sub: RawClient, count: int) -> list[bytes]:
    payloads = []
    for _ in range(count):
        packet = await sub.receive()
        payloads.append(packet.payload)
        await sub.send(PubAck(packet.packet_id))
    return payloads


async def no_frame(client, within: float = 1.0) -> bool:
    """True if nothing arrives within ``within`` seconds (virtual: autojump clock)."""
    with trio.move_on_after(within):
        event = await client.receive(timeout=within + 1)
        raise AssertionError(f"unexpected {event}")
    return True


async def stomp_send(client: StompClient, destination: str, body: bytes, receipt: str) -> None:
    await client.send("SEND", {"destination": destination, "receipt": receipt}, body)


# -- STOMP --------------------------------------------------------------------------------------


async def test_stomp_receipt_is_withheld_under_block_until_the_session_drains(
    nursery, autojump_clock
):
    broker = start_broker(nursery, max_queued_messages=2, max_inflight_messages=1)
    sub = await full_mqtt_subscriber(nursery, broker)
    pub = await connect_stomp(nursery, broker)
    await pub.connect(heart_beat="10000,0")  # silent for 20 s: dropped, unless held back
    for i in range(1, 5):
        await stomp_send(pub, "/topic/t", b"%d" % i, f"r{i}")
    assert [(await pub.receive()).get("receipt-id") for _ in range(2)] == ["r1", "r2"]
    assert await no_frame(pub, within=25)  # 25 s > twice the heart-beat: not idle time
    assert await drain_mqtt(sub, 4) == [b"1", b"2", b"3", b"4"]
    assert [(await pub.receive()).get("receipt-id") for _ in range(2)] == ["r3", "r4"]
    assert broker.drops == {}


async def test_stomp_send_with_receipt_to_full_sessions_under_drop_new_gets_an_error(nursery):
    broker = start_broker(nursery, max_queued_messages=1, max_inflight_messages=1,
                          queue_overflow="drop-new")
    await full_mqtt_subscriber(nursery, broker)
    pub = await connect_stomp(nursery, broker)
    await pub.connect()
    await pub.send("SEND", {"destination": "/topic/t"}, b"1")  # in flight
    await pub.send("SEND", {"destination": "/topic/t"}, b"2")  # queued
    await pub.send("SEND", {"destination": "/topic/t"}, b"3")  # no receipt: dropped, counted
    await stomp_send(pub, "/topic/t", b"4", "r4")
    frames = await pub.receive_until_closed()
    assert [f.command for f in frames] == ["ERROR"]
    assert frames[0].get("receipt-id") == "r4"
    assert frames[0].get("message") == "message to /topic/t dropped: queue full"
    assert broker.sessions["sub"].drops == {"queue-full": 2}


async def test_mqtt_puback_waits_for_a_full_stomp_topic_subscription(nursery, autojump_clock):
    broker = start_broker(nursery, max_queued_messages=3, max_outgoing_bytes=100)
    sub = await connect_stomp(nursery, broker)
    await sub.connect()
    await sub.subscribe("/topic/t", ack="client-individual")
    pub = await connect_mqtt(nursery, broker)
    await pub.connect("pub")
    await pub.send(*(Publish("t", b"%d" % i, 1, packet_id=i) for i in range(1, 7)))
    assert [await pub.receive() for _ in range(2)] == [PubAck(1), PubAck(2)]
    assert await no_frame(pub)
    bodies = []
    while len(bodies) < 6:
        frame = await sub.receive()
        bodies.append(frame.body)
        await sub.send("ACK", {"id": frame.get("ack")})
    assert bodies == [b"%d" % i for i in range(1, 7)]
    assert [await pub.receive() for _ in range(4)] == [PubAck(i) for i in range(3, 7)]


async def test_stomp_receipt_waits_for_a_full_named_queue_under_block(nursery, autojump_clock):
    broker = start_broker(nursery, max_queue_length=2)
    pub = await connect_stomp(nursery, broker)
    await pub.connect()
    for i in range(1, 4):
        await stomp_send(pub, "/queue/jobs", b"%d" % i, f"r{i}")
    assert [(await pub.receive()).get("receipt-id") for _ in range(1)] == ["r1"]
    assert await no_frame(pub)
    worker = await connect_stomp(nursery, broker)
    await worker.connect()
    await worker.subscribe("/queue/jobs")
    assert [(await worker.receive()).body for _ in range(3)] == [b"1", b"2", b"3"]
    assert [(await pub.receive()).get("receipt-id") for _ in range(2)] == ["r2", "r3"]


# -- AMQP ---------------------------------------------------------------------------------------


async def confirming(nursery, broker: Broker) -> AmqpTestClient:
    client = await open_client(nursery, broker)
    await client.send(1, ConfirmSelect())
    await client.expect(1, ConfirmSelectOk)
    return client


PERSISTENT = b"\x10\x00\x02"  # basic properties: delivery-mode 2


async def test_amqp_confirm_is_a_nack_when_every_session_was_full_under_drop_new(nursery):
    broker = start_broker(nursery, max_queued_messages=1, max_inflight_messages=1,
                          queue_overflow="drop-new")
    await full_mqtt_subscriber(nursery, broker, "cmd/dev1")
    pub = await confirming(nursery, broker)
    for i in range(3):
        await pub.publish(1, "amq.topic", "cmd.dev1", b"%d" % i, PERSISTENT)
    confirms = [await pub.event() for _ in range(3)]
    assert [type(c.method) for c in confirms] == [BasicAck, BasicAck, BasicNack]
    assert [c.method.delivery_tag for c in confirms] == [1, 2, 3]
    assert broker.drops == {"queue-full": 1}


@pytest.mark.parametrize("properties", [PERSISTENT, b"\x00\x00"], ids=["persistent", "transient"])
async def test_amqp_confirm_is_withheld_under_block_until_the_consumer_drains(
    nursery, autojump_clock, properties
):
    broker = start_broker(nursery, max_queue_length=2)
    pub = await confirming(nursery, broker)
    await pub.declare(1, "jobs")
    for i in range(1, 5):
        await pub.publish(1, "", "jobs", b"%d" % i, properties)
    assert (await pub.expect(1, BasicAck)).delivery_tag == 1
    with trio.move_on_after(5):
        event = await pub.event(timeout=10)
        raise AssertionError(f"unexpected {event}")
    consumer = await open_client(nursery, broker)
    await consumer.send(1, BasicConsume(queue="jobs", no_ack=True))
    await consumer.expect(1, BasicConsumeOk)
    got = [await consumer.content(1, BasicDeliver) for _ in range(4)]
    assert [c.body for c in got] == [b"1", b"2", b"3", b"4"]
    assert [(await pub.expect(1, BasicAck)).delivery_tag for _ in range(3)] == [2, 3, 4]

"""Broker behaviour over the MQTT adapter, in memory, each test naming what it covers."""

import logging

import pytest
import trio
import trio.testing

from polybroker.config import Limits
from polybroker.message import Message
from polybroker.protocols.mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

from .rawclient import connect_client


async def test_connack_accepts_new_clean_session(nursery, broker):
    client = await connect_client(nursery, broker)
    assert await client.connect("dev1") == ConnAck(session_present=False, return_code=0)


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publish_subscribe_each_qos(nursery, broker, qos):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    assert (await sub.subscribe("t/#", qos)).return_codes == (qos,)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("t/a", b"hello", qos=qos, packet_id=5 if qos else None))
    if qos == 1:
        assert await pub.receive() == PubAck(5)
    if qos == 2:
        assert await pub.receive() == PubRec(5)
        await pub.send(PubRel(5))
        assert await pub.receive() == PubComp(5)
    delivered = await sub.receive()
    assert (delivered.topic, delivered.payload, delivered.qos) == ("t/a", b"hello", qos)
    assert delivered.retain is False and delivered.dup is False
    if qos == 1:
        await sub.send(PubAck(delivered.packet_id))
    if qos == 2:
        await sub.send(PubRec(delivered.packet_id))
        assert await sub.receive() == PubRel(delivered.packet_id)
        await sub.send(PubComp(delivered.packet_id))
    assert await sub.publishes_until_idle() == []
    assert broker.sessions["sub"].inflight == {}


async def test_MQTT_3_8_4_6_delivery_downgraded_to_granted_qos(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("t", 1)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("t", b"x", qos=2, packet_id=1))
    assert (await sub.receive()).qos == 1


async def test_section_4_3_3_qos2_resent_publish_is_routed_once(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("t", 0)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("t", b"once", qos=2, packet_id=7))
    assert await pub.receive() == PubRec(7)
    await pub.send(Publish("t", b"once", qos=2, packet_id=7, dup=True))
    assert await pub.receive() == PubRec(7)
    await pub.send(PubRel(7))
    assert await pub.receive() == PubComp(7)
    # After PUBREL the id is free again: a new message with id 7 is a new message.
    await pub.send(Publish("t", b"again", qos=2, packet_id=7))
    assert await pub.receive() == PubRec(7)
    assert [p.payload for p in await sub.publishes_until_idle()] == [b"once", b"again"]


async def test_overlapping_subscriptions_deliver_once_at_highest_qos(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("a/+", 0, packet_id=1)
    await sub.subscribe("a/#", 1, packet_id=2)
    await sub.subscribe("a/b", 0, packet_id=3)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("a/b", b"x", qos=2, packet_id=1))
    received = await sub.publishes_until_idle()
    assert [(p.topic, p.qos) for p in received] == [("a/b", 1)]


async def test_MQTT_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("#", 0, packet_id=1)
    await sub.subscribe("+/info", 0, packet_id=2)
    await sub.subscribe("$SYS/#", 0, packet_id=3)
    # $SYS is the server's own (clients may not publish there, [MQTT-4.7.2-1]).
    broker.publish(Message("$SYS/info", b"1"))
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("x/info", b"2"))
    received = await sub.publishes_until_idle()
    assert sorted((p.topic, p.payload) for p in received) == [("$SYS/info", b"1"), ("x/info", b"2")]


@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", "$foo/bar"])
async def test_MQTT_4_7_2_1_clients_cannot_exchange_messages_on_dollar_topics(
    nursery, broker, caplog, topic
):
    # Acknowledged and dropped, as an ACL denial (3.1.1 has no way to say it); retained
    # ones are not kept either.
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe(topic, 1)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    with caplog.at_level(logging.INFO, "polybroker.mqtt"):
        await pub.send(Publish(topic, b"spoofed", qos=1, packet_id=1, retain=True),
                       Publish(topic, b"spoofed", qos=0))
        assert await pub.receive() == PubAck(1)
    assert await sub.publishes_until_idle() == []
    assert f"client pub (memory): publish to {topic} denied" in caplog.text
    assert broker.retained.match(topic) == []


async def test_MQTT_4_7_2_1_a_will_to_a_dollar_topic_is_not_published(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("$SYS/#", 1)
    dying = await connect_client(nursery, broker)
    await dying.connect("dying", will=Will("$SYS/broker/uptime", b"spoofed", qos=1))
    await dying.close()
    await trio.testing.wait_all_tasks_blocked()  # the broker has handled the close
    assert "dying" not in broker.sessions
    assert await sub.publishes_until_idle() == []


async def test_MQTT_3_3_1_5_to_MQTT_3_3_1_11_retained_set_replace_clear(nursery, broker):
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("r/1", b"first", retain=True), Publish("r/1", b"second", retain=True))
    await pub.send(Publish("r/2", b"gone", retain=True), Publish("r/2", b"", retain=True))
    await pub.publishes_until_idle()
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("r/#", 1)
    received = await sub.publishes_until_idle()
    # Replaced value only; the empty payload cleared r/2; flagged retained on subscribe.
    summary = [(p.topic, p.payload, p.retain, p.qos) for p in received]
    assert summary == [("r/1", b"second", True, 0)]
    assert len(broker.retained) == 1


async def test_MQTT_3_3_1_9_live_forwarding_clears_retain_flag(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("r", 0)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("r", b"v", retain=True))
    delivered = await sub.receive()
    assert (delivered.payload, delivered.retain) == (b"v", False)


async def test_retained_delivered_at_min_of_granted_and_stored_qos(nursery, broker):
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("r", b"v", qos=1, packet_id=1, retain=True))
    assert await pub.receive() == PubAck(1)
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.send(Subscribe(1, (Subscription("r", 2),)))
    assert await sub.receive() == SubAck(1, (2,))  # SUBACK comes before the retained message
    retained = await sub.receive()
    assert (retained.qos, retained.retain, retained.payload) == (1, True, b"v")


async def test_MQTT_3_1_2_8_will_published_on_abnormal_close(nursery, broker):
    watcher = await connect_client(nursery, broker)
    await watcher.connect("watcher")
    await watcher.subscribe("wills/#", 1)
    device = await connect_client(nursery, broker)
    await device.connect("dev", will=Will("wills/dev", b"offline", qos=1, retain=True))
    await device.close()
    will = await watcher.receive()
    assert (will.topic, will.payload, will.qos) == ("wills/dev", b"offline", 1)
    assert broker.retained.get("wills/dev").payload == b"offline"


async def test_MQTT_3_14_4_3_no_will_after_disconnect(nursery, broker):
    watcher = await connect_client(nursery, broker)
    await watcher.connect("watcher")
    await watcher.subscribe("wills/#", 0)
    device = await connect_client(nursery, broker)
    await device.connect("dev", will=Will("wills/dev", b"offline"))
    await device.send(Disconnect())
    assert await device.receive_until_closed() == []
    assert await watcher.publishes_until_idle() == []


async def test_MQTT_3_1_2_24_keep_alive_enforced_at_one_and_a_half_times(
    nursery, broker, autojump_clock
):
    watcher = await connect_client(nursery, broker)
    await watcher.connect("watcher")
    await watcher.subscribe("wills/dev", 0)
    device = await connect_client(nursery, broker)
    await device.connect("dev", keep_alive=10, will=Will("wills/dev", b"lost"))
    start = trio.current_time()
    assert await device.receive_until_closed(timeout=60) == []
    assert 15 <= trio.current_time() - start < 15.5
    assert (await watcher.receive()).payload == b"lost"


async def test_ping_keeps_connection_alive(nursery, broker, autojump_clock):
    device = await connect_client(nursery, broker)
    await device.connect("dev", keep_alive=10)
    for _ in range(5):
        await trio.sleep(9)  # ok: mock clock, virtual time
        assert await device.publishes_until_idle() == []


async def test_connection_without_connect_is_closed_after_timeout(
    nursery, autojump_clock, make_broker):
    broker = make_broker(limits=Limits(connect_timeout=3))
    silent = await connect_client(nursery, broker)
    await silent.send_raw(b"\x10\x0c\x00\x04MQ")  # half a CONNECT, then nothing
    start = trio.current_time()
    assert await silent.receive_until_closed(timeout=60) == []
    assert 3 <= trio.current_time() - start < 3.5


async def test_MQTT_3_1_4_2_takeover_closes_previous_connection(nursery, broker):
    first = await connect_client(nursery, broker)
    await first.connect("same", clean_session=False)
    await first.subscribe("t", 1)
    second = await connect_client(nursery, broker)
    assert await second.connect("same", clean_session=False) == ConnAck(session_present=True)
    assert await first.receive_until_closed() == []
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("t", b"to the new one"))
    assert (await second.receive()).payload == b"to the new one"


async def test_takeover_publishes_the_will_of_the_closed_connection(nursery, broker):
    watcher = await connect_client(nursery, broker)
    await watcher.connect("watcher")
    await watcher.subscribe("wills/#", 0)
    first = await connect_client(nursery, broker)
    await first.connect("same", will=Will("wills/same", b"replaced"))
    second = await connect_client(nursery, broker)
    await second.connect("same")
    assert await first.receive_until_closed() == []
    assert (await watcher.receive()).payload == b"replaced"


async def test_persistent_session_receives_messages_sent_while_offline(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub", clean_session=False)
    await sub.subscribe("t/+", 2)
    await sub.send(Disconnect())
    await sub.receive_until_closed()
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    for i, qos in enumerate([1, 0, 2, 1]):
        packet_id = i + 1 if qos else None
        await pub.send(Publish(f"t/{i}", str(i).encode(), qos=qos, packet_id=packet_id))
    await pub.publishes_until_idle()
    back = await connect_client(nursery, broker)
    assert await back.connect("sub", clean_session=False) == ConnAck(session_present=True)
    received = await back.publishes_until_idle()
    # QoS 0 is not kept for an offline session; QoS 1/2 arrive in order.
    assert [(p.payload, p.qos) for p in received] == [(b"0", 1), (b"2", 2), (b"3", 1)]


async def test_MQTT_3_1_2_6_clean_session_discards_state(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub", clean_session=False)
    await sub.subscribe("t", 1)
    await sub.send(Disconnect())
    await sub.receive_until_closed()
    clean = await connect_client(nursery, broker)
    assert await clean.connect("sub", clean_session=True) == ConnAck(session_present=False)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("t", b"x", qos=1, packet_id=1))
    assert await pub.receive() == PubAck(1)
    assert await clean.publishes_until_idle() == []
    await clean.send(Disconnect())
    await clean.receive_until_closed()
    assert "sub" not in broker.sessions  # a clean session ends with its connection


async def test_MQTT_4_4_0_1_unacknowledged_resent_with_dup_on_reconnect(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub", clean_session=False)
    await sub.subscribe("q1", 1, packet_id=1)
    await sub.subscribe("q2", 2, packet_id=2)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("q1", b"one", qos=1, packet_id=1))
    await pub.send(Publish("q2", b"two", qos=2, packet_id=2), PubRel(2))
    first = await sub.receive()
    second = await sub.receive()
    await sub.send(PubRec(second.packet_id))  # QoS 2 received but not completed
    assert await sub.receive() == PubRel(second.packet_id)
    await sub.close()
    back = await connect_client(nursery, broker)
    assert (await back.connect("sub", clean_session=False)).session_present
    resent = await back.receive()
    assert (resent.payload, resent.dup, resent.packet_id) == (b"one", True, first.packet_id)
    assert await back.receive() == PubRel(second.packet_id)
    await back.send(PubAck(first.packet_id), PubComp(second.packet_id))
    assert await back.publishes_until_idle() == []
    assert broker.sessions["sub"].inflight == {}


async def test_inflight_window_bounds_unacknowledged_deliveries(nursery, make_broker):
    broker = make_broker(limits=Limits(max_inflight_messages=2))
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("t", 1)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    for i in range(5):
        await pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
    await pub.publishes_until_idle()
    window = await sub.publishes_until_idle()
    assert [p.payload for p in window] == [b"0", b"1"]
    await sub.send(PubAck(window[0].packet_id))
    assert [p.payload for p in await sub.publishes_until_idle()] == [b"2"]
    await sub.send(PubAck(window[1].packet_id))
    assert [p.payload for p in await sub.publishes_until_idle()] == [b"3"]


async def test_offline_queue_bound_drops_new_messages_and_logs(nursery, caplog, make_broker):
    broker = make_broker(limits=Limits(max_queued_messages=3, queue_overflow="drop-new"))
    sub = await connect_client(nursery, broker)
    await sub.connect("sub", clean_session=False)
    await sub.subscribe("t", 1)
    await sub.send(Disconnect())
    await sub.receive_until_closed()
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    with caplog.at_level(logging.WARNING, logger="polybroker"):
        for i in range(5):
            await pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
        await pub.publishes_until_idle()
    assert "client sub: message dropped (queue-full" in caplog.text
    back = await connect_client(nursery, broker)
    await back.connect("sub", clean_session=False)
    assert [p.payload for p in await back.publishes_until_idle()] == [b"0", b"1", b"2"]


async def test_slow_reader_qos0_backlog_is_bounded(nursery, make_broker):
    broker = make_broker(limits=Limits(max_outgoing_bytes=10_000))
    slow = await connect_client(nursery, broker, lockstep=True)
    await slow.connect("slow")
    await slow.subscribe("t", 0)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    for _ in range(200):
        await pub.send(Publish("t", b"x" * 1000))
    await pub.publishes_until_idle()  # all 200 routed while the slow reader read nothing
    received = await slow.publishes_until_idle()
    assert 10 <= len(received) < 30


async def test_MQTT_3_1_3_6_empty_client_id_gets_generated_id(nursery, broker):
    client = await connect_client(nursery, broker)
    assert await client.connect("", clean_session=True) == ConnAck()
    (client_id,) = broker.sessions
    assert client_id.startswith("auto-")


async def test_MQTT_3_1_3_8_empty_client_id_without_clean_session_refused(nursery, broker):
    client = await connect_client(nursery, broker)
    await client.send(Connect("", clean_session=False))
    assert await client.receive_until_closed() == [ConnAck(return_code=0x02)]


async def test_MQTT_3_1_2_2_unsupported_protocol_level_gets_connack_1(nursery, broker):
    client = await connect_client(nursery, broker)
    await client.send_raw(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00")
    assert await client.receive_until_closed() == [ConnAck(return_code=0x01)]


async def test_mqtt_3_1_client_gets_no_session_present(nursery, broker):
    first = await connect_client(nursery, broker)
    await first.connect("old", protocol_level=3, clean_session=False)
    await first.send(Disconnect(), level=3)
    await first.receive_until_closed()
    again = await connect_client(nursery, broker)
    assert await again.connect("old", protocol_level=3, clean_session=False) == ConnAck()


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\x05\x00\x03a/b",  # PUBLISH before CONNECT [MQTT-3.1.0-1]
        b"\xff\xff\xff\xff\xff",  # garbage: reserved type, 5-byte remaining length
        b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00",  # wrong protocol name [MQTT-3.1.2-1]
    ],
)
async def test_bad_first_bytes_close_without_connack(nursery, broker, data):
    client = await connect_client(nursery, broker)
    await client.send_raw(data)
    assert await client.receive_until_closed() == []
    assert broker.sessions == {}


async def test_protocol_violation_after_connect_closes_and_publishes_will(nursery, broker):
    watcher = await connect_client(nursery, broker)
    await watcher.connect("watcher")
    await watcher.subscribe("wills/#", 0)
    device = await connect_client(nursery, broker)
    await device.connect("dev", will=Will("wills/dev", b"bye"))
    await device.send_raw(b"\x36\x05\x00\x01t\x00\x01")  # PUBLISH with QoS 3 [MQTT-3.3.1-4]
    assert await device.receive_until_closed() == []
    assert (await watcher.receive()).payload == b"bye"
    assert "dev" not in broker.sessions


async def test_MQTT_3_1_0_2_second_connect_is_a_protocol_violation(nursery, broker):
    client = await connect_client(nursery, broker)
    await client.connect("dev")
    await client.send(Connect("dev"))
    assert await client.receive_until_closed() == []


async def test_MQTT_3_10_4_5_unsubscribe_stops_delivery_and_always_acks(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("t", 0)
    await sub.send(Unsubscribe(9, ("t", "never/subscribed")))
    assert await sub.receive() == UnsubAck(9)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("t", b"x"))
    assert await sub.publishes_until_idle() == []
    assert len(broker.router) == 0


async def test_MQTT_3_8_4_3_resubscribe_replaces_qos(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("t", 2, packet_id=1)
    await sub.subscribe("t", 0, packet_id=2)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("t", b"x", qos=2, packet_id=1))
    assert [p.qos for p in await sub.publishes_until_idle()] == [0]
    assert len(broker.router) == 1


async def test_MQTT_4_6_0_5_in_order_delivery_per_topic(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("t", 1)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    sent = [Publish("t", b"%d" % i, qos=i % 3 and 1, packet_id=i + 1) for i in range(40)]
    await pub.send(*[p if p.qos else Publish("t", p.payload) for p in sent])
    await pub.publishes_until_idle()
    received = []
    while len(received) < 40:
        packet = await sub.receive()
        received.append(packet.payload)
        if packet.qos:
            await sub.send(PubAck(packet.packet_id))
    assert received == [b"%d" % i for i in range(40)]

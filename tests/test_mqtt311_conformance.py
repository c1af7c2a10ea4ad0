"""MQTT 3.1.1 normative statements that no other test asserts, checked on the in-memory broker.

Each test is named after the statement it checks ([MQTT-x.y.z-n] -> ``MQTT_x_y_z_n``);
tests/MQTT-3.1.1-COVERAGE.md maps every server statement to the tests that cover it.
A test marked ``xfail(strict=True)`` records a statement the broker does not meet yet.
"""

import pytest
import trio

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
    encode,
)

from .rawclient import RawClient, connect_client

RESERVED_PACKET = b"\x00\x00"  # packet type 0 is reserved: a malformed packet


# --- helpers ---------------------------------------------------------------------------------


def s(text: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string field (raw bytes are sent as given)."""
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def frame(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((first, len(body))) + body


def connect_frame(flags: int = 0x02, client_id: str | bytes = "c", fields: bytes = b"") -> bytes:
    """A 3.1.1 CONNECT with the given connect flags, keep alive 60 and payload fields."""
    return frame(0x10, s("MQTT") + bytes((4, flags)) + b"\x00\x3c" + s(client_id) + fields)


async def connected(nursery, broker, client_id: str, **fields: object) -> RawClient:
    client = await connect_client(nursery, broker)
    await client.connect(client_id, **fields)
    return client


async def drop(client: RawClient) -> None:
    """End the connection without DISCONNECT, and return once the broker has closed it.

    A malformed packet makes the broker close the connection; the will (if any) is
    published before the close, so the next PINGREQ round trip of any other client
    shows it.
    """
    await client.send_raw(RESERVED_PACKET)
    assert await client.receive_until_closed() == []


async def assert_closed_without_reply(client: RawClient, data: bytes) -> None:
    await client.send_raw(data)
    assert await client.receive_until_closed() == []


# --- 2.3.1 packet identifiers ----------------------------------------------------------------


async def test_MQTT_2_3_1_4_server_publish_ids_are_unused_ones(nursery, broker):
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("t", 2)
    pub = await connected(nursery, broker, "pub")
    for i in range(6):
        qos = 1 + i % 2
        await pub.send(Publish("t", b"%d" % i, qos=qos, packet_id=i + 1))
    await pub.publishes_until_idle()  # PUBACKs and PUBRECs
    first = await sub.publishes_until_idle()
    assert len(first) == 6
    ids = [p.packet_id for p in first]
    assert len(set(ids)) == 6 and 0 not in ids
    # Complete the first two flows; the other four stay unacknowledged.
    await sub.send(PubAck(first[0].packet_id), PubRec(first[1].packet_id))
    assert await sub.receive() == PubRel(first[1].packet_id)
    await sub.send(PubComp(first[1].packet_id))
    for i in range(6, 12):
        await pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i + 1))
    await pub.publishes_until_idle()
    second = await sub.publishes_until_idle()
    in_use = {p.packet_id for p in first[2:]}
    new_ids = [p.packet_id for p in second]
    assert len(new_ids) == 6 and len(set(new_ids)) == 6
    assert in_use.isdisjoint(new_ids)


# --- 3.1 CONNECT ---------------------------------------------------------------------------


async def test_MQTT_3_1_2_6_clean_session_state_not_reused_after_takeover(nursery, broker):
    first = await connected(nursery, broker, "dev", clean_session=True)
    await first.subscribe("t", 1)
    second = await connect_client(nursery, broker)
    await second.connect("dev", clean_session=False)
    assert await first.receive_until_closed() == []
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("t", b"for the clean session only", qos=1, packet_id=1))
    assert await pub.receive() == PubAck(1)
    assert await second.publishes_until_idle() == []
    assert broker.sessions["dev"].subscriptions == {}


async def test_MQTT_3_1_2_24_partial_packet_does_not_count_as_a_control_packet(
    nursery, broker, autojump_clock
):
    device = await connected(nursery, broker, "dev", keep_alive=10)
    start = trio.current_time()

    async def trickle() -> None:
        # A PUBLISH announcing 127 bytes of body, sent a few bytes every 9 s: bytes keep
        # arriving, but no complete Control Packet after the CONNECT.
        try:
            await device.send_raw(b"\x30\x7f\x00\x01")
            for _ in range(4):
                await trio.sleep(9)  # ok: mock clock
                await device.send_raw(b"x")
        except trio.BrokenResourceError:
            pass  # the broker closed the connection, as it must

    nursery.start_soon(trickle)
    assert await device.receive_until_closed(timeout=120) == []
    assert trio.current_time() - start < 15.5


async def test_MQTT_3_1_2_7_retained_message_outlives_the_publishers_session(nursery, broker):
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("r", b"kept", qos=1, packet_id=1, retain=True))
    assert await pub.receive() == PubAck(1)
    await pub.send(Disconnect())
    assert await pub.receive_until_closed() == []
    assert "pub" not in broker.sessions  # its clean session has ended
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("r", 1)
    received = await sub.publishes_until_idle()
    assert [(p.payload, p.retain) for p in received] == [(b"kept", True)]


async def test_MQTT_3_1_2_10_will_removed_once_published(nursery, broker):
    watcher = await connected(nursery, broker, "watcher")
    await watcher.subscribe("wills/#", 0)
    device = await connected(
        nursery, broker, "dev", clean_session=False, will=Will("wills/dev", b"gone")
    )
    await drop(device)
    assert [p.payload for p in await watcher.publishes_until_idle()] == [b"gone"]
    # The session lives on; the will published with the first connection is not part of it.
    again = await connect_client(nursery, broker)
    assert await again.connect("dev", clean_session=False) == ConnAck(session_present=True)
    await drop(again)
    assert await watcher.publishes_until_idle() == []


async def test_MQTT_3_1_2_12_no_will_flag_no_will_published(nursery, broker):
    watcher = await connected(nursery, broker, "watcher")
    await watcher.subscribe("#", 0)
    device = await connected(nursery, broker, "dev")
    await drop(device)
    assert await watcher.publishes_until_idle() == []


async def test_MQTT_3_1_2_16_will_retain_0_published_not_retained(nursery, broker):
    watcher = await connected(nursery, broker, "watcher")
    await watcher.subscribe("wills/#", 1)
    device = await connected(
        nursery, broker, "dev", will=Will("wills/dev", b"gone", qos=1, retain=False)
    )
    await drop(device)
    will = await watcher.receive()
    assert (will.topic, will.payload, will.qos, will.retain) == ("wills/dev", b"gone", 1, False)
    await watcher.send(PubAck(will.packet_id))
    later = await connected(nursery, broker, "later")
    await later.subscribe("wills/#", 1)
    assert await later.publishes_until_idle() == []
    assert len(broker.retained) == 0


@pytest.mark.parametrize(
    "client_id",
    [
        "a",
        "Z",
        "7",
        "0123456789abcdefghijklm",
        "nopqrstuvwxyzABCDEFGHIJ",
        "KLMNOPQRSTUVWXYZ0123456",
    ],
)
async def test_MQTT_3_1_3_5_client_ids_of_1_to_23_alphanumerics_allowed(
    nursery, broker, client_id
):
    client = await connect_client(nursery, broker)
    assert await client.connect(client_id, clean_session=False) == ConnAck()
    assert list(broker.sessions) == [client_id]


async def test_MQTT_3_1_3_6_zero_length_client_ids_get_unique_ids(nursery, broker):
    first = await connect_client(nursery, broker)
    assert await first.connect("") == ConnAck()
    second = await connect_client(nursery, broker)
    assert await second.connect("") == ConnAck()
    # Two distinct sessions: neither connection took the other over.
    assert len(broker.sessions) == 2
    assert await first.publishes_until_idle() == []
    assert await second.publishes_until_idle() == []


async def test_MQTT_3_1_3_10_will_topic_must_be_utf8(nursery, broker):
    client = await connect_client(nursery, broker)
    await assert_closed_without_reply(client, connect_frame(0x06, fields=s(b"w\xff") + s("m")))
    assert broker.sessions == {}


async def test_MQTT_3_1_3_11_user_name_must_be_utf8(nursery, broker):
    client = await connect_client(nursery, broker)
    await assert_closed_without_reply(client, connect_frame(0x82, fields=s(b"\xed\xa0\x80")))
    assert broker.sessions == {}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(frame(0x11, connect_frame()[2:]), id="fixed-header-flags-MQTT-2.2.2-2"),
        pytest.param(connect_frame(client_id=b"\xc3"), id="client-id-utf8-MQTT-3.1.3-4"),
        pytest.param(connect_frame(0x03), id="reserved-flag-MQTT-3.1.2-3"),
        pytest.param(connect_frame(0x06), id="will-fields-missing-MQTT-3.1.2-9"),
        pytest.param(connect_frame(0x1A), id="will-qos-without-will-MQTT-3.1.2-11"),
        pytest.param(connect_frame(0x0A), id="will-qos-1-without-will-MQTT-3.1.2-13"),
        pytest.param(
            connect_frame(0x1E, fields=s("w") + s("m")), id="will-qos-3-MQTT-3.1.2-14"
        ),
        pytest.param(connect_frame(0x22), id="will-retain-without-will-MQTT-3.1.2-15"),
        pytest.param(connect_frame(0x02, fields=s("u")), id="user-name-without-flag-MQTT-3.1.2-18"),
        pytest.param(connect_frame(0x82), id="user-name-missing-MQTT-3.1.2-19"),
        pytest.param(
            connect_frame(0x82, fields=s("u") + s("p")), id="password-without-flag-MQTT-3.1.2-20"
        ),
        pytest.param(connect_frame(0xC2, fields=s("u")), id="password-missing-MQTT-3.1.2-21"),
        pytest.param(
            connect_frame(0x42, fields=s("p")), id="password-without-user-name-MQTT-3.1.2-22"
        ),
        pytest.param(
            frame(0x10, s("MQTT") + b"\x04\x02\x00\x3c"), id="client-id-missing-MQTT-3.1.3-3"
        ),
    ],
)
async def test_MQTT_3_1_4_1_nonconforming_connect_closed_without_connack(nursery, broker, data):
    client = await connect_client(nursery, broker)
    await assert_closed_without_reply(client, data)
    assert broker.sessions == {}


async def test_MQTT_3_1_4_5_pipelined_subscribe_with_packet_id_0_after_connack(nursery, broker):
    # One read: CONNECT, then SUBSCRIBE "a" with packet identifier 0 [MQTT-2.3.1-1]. The
    # CONNECT is answered before the SUBSCRIBE is judged; then the connection closes.
    client = await connect_client(nursery, broker)
    await client.send_raw(encode(Connect("pipe")) + bytes.fromhex("82 06 00 00 00 01 61 00"))
    assert await client.receive_until_closed() == [ConnAck()]


async def test_MQTT_3_1_4_5_nothing_processed_after_a_rejected_connect(nursery, broker):
    watcher = await connected(nursery, broker, "watcher")
    await watcher.subscribe("t", 0)
    client = await connect_client(nursery, broker)
    # Empty client id with CleanSession 0 is refused [MQTT-3.1.3-8]; the rest of the same
    # write must be ignored.
    await client.send(
        Connect("", clean_session=False),
        Publish("t", b"must not be routed", retain=True),
        Subscribe(1, (Subscription("x"),)),
    )
    assert await client.receive_until_closed() == [ConnAck(return_code=0x02)]
    assert await watcher.publishes_until_idle() == []
    assert len(broker.retained) == 0
    assert list(broker.sessions) == ["watcher"]


# --- 3.2 CONNACK ---------------------------------------------------------------------------


async def test_MQTT_3_2_2_3_no_session_present_after_taking_over_a_clean_session(
    nursery, broker
):
    first = await connected(nursery, broker, "dev", clean_session=True)
    await first.subscribe("t", 1)
    second = await connect_client(nursery, broker)
    assert await second.connect("dev", clean_session=False) == ConnAck(session_present=False)


# --- 3.3 PUBLISH ---------------------------------------------------------------------------


async def test_MQTT_3_3_1_3_incoming_dup_flag_not_propagated(nursery, broker):
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("t", 2)
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("t", b"q1", qos=1, packet_id=1, dup=True))
    assert await pub.receive() == PubAck(1)
    await pub.send(Publish("t", b"q2", qos=2, packet_id=2, dup=True))
    assert await pub.receive() == PubRec(2)
    await pub.send(PubRel(2))
    assert await pub.receive() == PubComp(2)
    received = await sub.publishes_until_idle()
    assert [(p.payload, p.qos, p.dup) for p in received] == [(b"q1", 1, False), (b"q2", 2, False)]


async def test_MQTT_3_3_1_6_retained_message_of_each_matching_topic_sent(nursery, broker):
    pub = await connected(nursery, broker, "pub")
    for topic in ("a/1", "a/2", "a/b/c", "b/1", "a"):
        await pub.send(Publish(topic, topic.encode(), retain=True))
    await pub.publishes_until_idle()
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("a/#", 0)
    received = await sub.publishes_until_idle()
    assert sorted((p.topic, p.payload, p.retain) for p in received) == [
        ("a", b"a", True),
        ("a/1", b"a/1", True),
        ("a/2", b"a/2", True),
        ("a/b/c", b"a/b/c", True),
    ]


async def test_MQTT_3_3_1_10_empty_retained_publish_forwarded_and_clears(nursery, broker):
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("r", 0)
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("r", b"value", retain=True), Publish("r", b"", retain=True))
    await pub.publishes_until_idle()
    # Processed as normal: current subscribers get the empty message too.
    received = await sub.publishes_until_idle()
    assert [(p.payload, p.retain) for p in received] == [(b"value", False), (b"", False)]
    later = await connected(nursery, broker, "later")
    await later.subscribe("r", 0)
    assert await later.publishes_until_idle() == []
    assert len(broker.retained) == 0


async def test_MQTT_3_3_1_12_non_retained_publish_keeps_the_retained_message(nursery, broker):
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("r", b"kept", qos=1, packet_id=1, retain=True))
    assert await pub.receive() == PubAck(1)
    await pub.send(Publish("r", b"live", qos=1, packet_id=2))
    assert await pub.receive() == PubAck(2)
    await pub.send(Publish("r", b"", qos=0))  # empty but not retained: clears nothing
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("r", 1)
    received = await sub.publishes_until_idle()
    assert [(p.payload, p.retain, p.qos) for p in received] == [(b"kept", True, 1)]
    assert len(broker.retained) == 1


async def test_share_prefix_is_a_shared_subscription_at_3_1_1_too(nursery, broker):
    """A deliberate extension, as in Mosquitto and EMQX: ``$share/{group}/{filter}`` is a
    shared subscription for 3.1.1 clients as well, although [MQTT-3.3.2-3] would read
    it as a literal filter. Each message goes to one member of the group."""
    first = await connected(nursery, broker, "first")
    second = await connected(nursery, broker, "second")
    assert (await first.subscribe("$share/g/t", 0)).return_codes == (0,)
    assert (await second.subscribe("$share/g/t", 0)).return_codes == (0,)
    pub = await connected(nursery, broker, "pub")
    await pub.send(*[Publish("t", b"%d" % i) for i in range(4)])
    got = [p.payload for p in await first.publishes_until_idle()]
    got += [p.payload for p in await second.publishes_until_idle()]
    assert sorted(got) == [b"0", b"1", b"2", b"3"]
    assert all(p.topic == "t" for p in await first.publishes_until_idle())


async def test_MQTT_3_3_4_1_publish_response_by_qos(nursery, broker):
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("t", b"0"))
    assert await pub.publishes_until_idle() == []  # QoS 0: no response
    await pub.send(Publish("t", b"1", qos=1, packet_id=0x0101))
    assert await pub.publishes_until_idle() == [PubAck(0x0101)]
    await pub.send(Publish("t", b"2", qos=2, packet_id=0xFFFF))
    assert await pub.publishes_until_idle() == [PubRec(0xFFFF)]
    await pub.send(PubRel(0xFFFF))
    assert await pub.publishes_until_idle() == [PubComp(0xFFFF)]


# --- 3.8 SUBSCRIBE, 3.10 UNSUBSCRIBE --------------------------------------------------------


async def test_MQTT_3_8_3_1_subscribe_filter_must_be_utf8(nursery, broker):
    client = await connected(nursery, broker, "c")
    await assert_closed_without_reply(client, frame(0x82, b"\x00\x01" + s(b"a/\xff") + b"\x00"))
    assert broker.sessions == {}


async def test_MQTT_4_7_3_2_null_character_in_topic_filter_closes(nursery, broker):
    client = await connected(nursery, broker, "c")
    await assert_closed_without_reply(client, frame(0x82, b"\x00\x01" + s("a\x00b") + b"\x00"))
    assert len(broker.router) == 0


async def test_MQTT_3_8_4_2_suback_has_the_subscribe_packet_id(nursery, broker):
    client = await connected(nursery, broker, "c")
    for packet_id in (0x1234, 0xFFFF, 1):
        await client.send(Subscribe(packet_id, (Subscription("t", 1), Subscription("u", 2))))
        assert await client.receive() == SubAck(packet_id, (1, 2))


async def test_MQTT_3_8_4_3_resubscribe_resends_retained_and_keeps_the_flow(nursery, broker):
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("r", b"kept", qos=1, packet_id=1, retain=True))
    assert await pub.receive() == PubAck(1)
    sub = await connected(nursery, broker, "sub")
    assert (await sub.subscribe("r", 1, packet_id=1)).return_codes == (1,)
    first = await sub.receive()
    assert (first.payload, first.retain, first.qos) == (b"kept", True, 1)
    await sub.send(PubAck(first.packet_id))
    assert (await sub.subscribe("r", 0, packet_id=2)).return_codes == (0,)
    again = await sub.receive()
    assert (again.payload, again.retain, again.qos) == (b"kept", True, 0)
    await pub.send(Publish("r", b"live"))
    received = await sub.publishes_until_idle()
    assert [(p.payload, p.retain, p.qos) for p in received] == [(b"live", False, 0)]
    assert len(broker.router) == 1


async def test_MQTT_3_10_3_1_unsubscribe_filter_must_be_utf8(nursery, broker):
    client = await connected(nursery, broker, "c")
    await client.subscribe("t", 0)
    await assert_closed_without_reply(client, frame(0xA2, b"\x00\x01" + s(b"t\xc0\x80")))


async def test_MQTT_3_10_4_1_unsubscribe_compares_filters_exactly(nursery, broker):
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("t/a", 0, packet_id=1)
    await sub.subscribe("w/#", 0, packet_id=2)
    # Neither wildcard matching nor any normalization: none of these deletes anything.
    await sub.send(Unsubscribe(3, ("t/+", "t/#", "#", "T/a", "t/a/", "w/+", "w")))
    assert await sub.receive() == UnsubAck(3)
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("t/a", b"1"), Publish("w/x", b"2"))
    assert [p.payload for p in await sub.publishes_until_idle()] == [b"1", b"2"]
    await sub.send(Unsubscribe(4, ("t/a", "w/#")))
    assert await sub.receive() == UnsubAck(4)
    await pub.send(Publish("t/a", b"3"), Publish("w/x", b"4"))
    await pub.publishes_until_idle()
    assert await sub.publishes_until_idle() == []
    assert len(broker.router) == 0


async def test_MQTT_3_10_4_3_started_qos1_qos2_deliveries_complete_after_unsubscribe(
    nursery, broker
):
    sub = await connected(nursery, broker, "sub", clean_session=False)
    await sub.subscribe("q1", 1, packet_id=1)
    await sub.subscribe("q2", 2, packet_id=2)
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("q1", b"one", qos=1, packet_id=1))
    await pub.send(Publish("q2", b"two", qos=2, packet_id=2), PubRel(2))
    one = await sub.receive()
    two = await sub.receive()
    assert (one.payload, two.payload) == (b"one", b"two")
    await sub.send(Unsubscribe(3, ("q1", "q2")))
    assert await sub.receive() == UnsubAck(3)
    # QoS 2: the flow goes on to PUBREL.
    await sub.send(PubRec(two.packet_id))
    assert await sub.receive() == PubRel(two.packet_id)
    await sub.send(PubComp(two.packet_id))
    # QoS 1: still resent on reconnect until acknowledged.
    await sub.close()
    back = await connect_client(nursery, broker)
    assert (await back.connect("sub", clean_session=False)).session_present
    resent = await back.receive()
    assert (resent.payload, resent.packet_id, resent.dup) == (b"one", one.packet_id, True)
    await back.send(PubAck(one.packet_id))
    assert await back.publishes_until_idle() == []
    assert broker.sessions["sub"].inflight == {}


async def test_MQTT_3_10_4_6_multi_filter_unsubscribe_one_unsuback(nursery, broker):
    sub = await connected(nursery, broker, "sub")
    await sub.send(Subscribe(1, tuple(Subscription(t) for t in ("a", "b", "c"))))
    assert await sub.receive() == SubAck(1, (0, 0, 0))
    await sub.send(Unsubscribe(2, ("a", "b")))
    assert await sub.publishes_until_idle() == [UnsubAck(2)]
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("a", b"a"), Publish("b", b"b"), Publish("c", b"c"))
    assert [p.payload for p in await sub.publishes_until_idle()] == [b"c"]


# --- 4.3 QoS flows, 4.6 ordering, 4.7 topics --------------------------------------------------


async def test_MQTT_4_3_2_2_qos1_id_reused_after_puback_is_a_new_publication(nursery, broker):
    sub = await connected(nursery, broker, "sub")
    await sub.subscribe("t", 0)
    pub = await connected(nursery, broker, "pub")
    await pub.send(Publish("t", b"same", qos=1, packet_id=7))
    assert await pub.receive() == PubAck(7)
    await pub.send(Publish("t", b"same", qos=1, packet_id=7, dup=True))
    assert await pub.receive() == PubAck(7)
    assert [p.payload for p in await sub.publishes_until_idle()] == [b"same", b"same"]


async def test_MQTT_4_6_0_1_unacknowledged_resent_in_original_order(nursery, broker):
    sub = await connected(nursery, broker, "sub", clean_session=False)
    await sub.subscribe("q1", 1, packet_id=1)
    await sub.subscribe("q2", 2, packet_id=2)
    pub = await connected(nursery, broker, "pub")
    for i in range(8):
        topic, qos = ("q1", 1) if i % 3 else ("q2", 2)
        await pub.send(Publish(topic, b"%d" % i, qos=qos, packet_id=i + 1))
        if qos == 2:
            await pub.send(PubRel(i + 1))
    await pub.publishes_until_idle()
    sent = await sub.publishes_until_idle()
    assert [p.payload for p in sent] == [b"%d" % i for i in range(8)]
    await sub.close()
    back = await connect_client(nursery, broker)
    assert (await back.connect("sub", clean_session=False)).session_present
    resent = await back.publishes_until_idle()
    assert [(p.payload, p.packet_id, p.dup) for p in resent] == [
        (p.payload, p.packet_id, True) for p in sent
    ]


async def test_MQTT_4_7_3_4_no_normalization_when_matching(nursery, broker):
    sub = await connected(nursery, broker, "sub")
    composed = "caf\u00e9"  # NFC
    decomposed = "cafe\u0301"  # NFD: the same text, other code points
    await sub.subscribe(f"{composed}/+", 0, packet_id=1)
    await sub.subscribe("\ufeffbom", 0, packet_id=2)  # [MQTT-1.5.3-3]: U+FEFF is kept
    pub = await connected(nursery, broker, "pub")
    for topic in (f"{decomposed}/x", f"{composed}/x", "Caf\u00e9/x", "bom", "\ufeffbom"):
        await pub.send(Publish(topic, topic.encode()))
    received = await sub.publishes_until_idle()
    assert [p.topic for p in received] == [f"{composed}/x", "\ufeffbom"]

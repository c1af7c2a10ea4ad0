"""MQTT 5.0 broker behaviour over the MQTT adapter, in memory.

Each test is named after the normative statement it checks ([MQTT-x.y.z-n] of MQTT 5.0,
OASIS Standard, 7 March 2019) or, where the rule has no number, after its section.
tests/MQTT-5.0-COVERAGE.md maps every server statement to its tests.
"""

import base64
import hashlib
import hmac
import secrets

import pytest
import trio
import trio.testing

from polybroker.auth import ScramSha256, ScramUserStore
from polybroker.broker import Broker
from polybroker.config import Limits, MQTTSettings
from polybroker.protocols.mqtt import (
    Auth,
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
from polybroker.protocols.mqtt import properties as prop
from polybroker.protocols.mqtt import reason_codes as rc

from .rawclient import RawClient, connect_client

V5 = 5
NEVER = 0xFFFFFFFF
SCRAM = "SCRAM-SHA-256"

# What this server says about itself in every 5.0 CONNACK with the default limits.
CAPABILITIES = {
    prop.RECEIVE_MAXIMUM: 1024,
    prop.TOPIC_ALIAS_MAXIMUM: 64,
    prop.RETAIN_AVAILABLE: 1,
    prop.WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
    prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 1,
    prop.SHARED_SUBSCRIPTION_AVAILABLE: 1,
}


# -- helpers ------------------------------------------------------------------------------------


async def connect5(
    nursery: trio.Nursery, broker: Broker, client_id: str = "c", **fields: object
) -> tuple[RawClient, ConnAck]:
    """A 5.0 client, connected; returns it with the CONNACK."""
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5  # RawClient's parser starts at 3.1.1
    connack = await client.connect(client_id, protocol_level=V5, **fields)
    return client, connack


async def client5(
    nursery: trio.Nursery, broker: Broker, client_id: str = "c", **fields: object
) -> RawClient:
    """A 5.0 client whose CONNACK must be a plain success (no session present)."""
    client, connack = await connect5(nursery, broker, client_id, **fields)
    assert connack.return_code == 0 and not connack.session_present, connack
    return client


def expiry(seconds: int) -> dict[int, int]:
    return {prop.SESSION_EXPIRY_INTERVAL: seconds}


async def send5(client: RawClient, *packets: object) -> None:
    await client.send(*packets, level=V5)


async def subscribe5(
    client: RawClient,
    topic_filter: str,
    qos: int = 0,
    *,
    packet_id: int = 1,
    sub_id: int | None = None,
    **options: object,
) -> None:
    props = {prop.SUBSCRIPTION_IDENTIFIER: sub_id} if sub_id else {}
    await send5(client, Subscribe(packet_id, (Subscription(topic_filter, qos, **options),), props))
    assert await client.receive() == SubAck(packet_id, (qos,))


async def disconnect5(client: RawClient, reason_code: int = 0, **props: object) -> None:
    """Send DISCONNECT and wait for the broker to close the connection."""
    properties = {getattr(prop, name.upper()): value for name, value in props.items()}
    await send5(client, Disconnect(reason_code, properties))
    assert await client.receive_until_closed() == []


async def closed_with(client: RawClient, reason_code: int, timeout: float = 5) -> Disconnect:
    """The broker's last word must be exactly one DISCONNECT with ``reason_code``."""
    packets = await client.receive_until_closed(timeout=timeout)
    assert len(packets) == 1, packets
    (disconnect,) = packets
    assert isinstance(disconnect, Disconnect), disconnect
    assert disconnect.reason_code == reason_code, hex(disconnect.reason_code)
    # [MQTT-3.14.2-2]: never a Session Expiry Interval from the server; at most a reason.
    assert set(disconnect.properties) <= {prop.REASON_STRING}, disconnect.properties
    return disconnect


def raw_frame(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((first, len(body))) + body


def raw_string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def raw_connect5(flags: int, payload: bytes) -> bytes:
    """A 5.0 CONNECT: keep alive 0, no properties, ``payload`` after the header."""
    return raw_frame(0x10, raw_string("MQTT") + bytes((5, flags)) + b"\x00\x00\x00" + payload)


# -- CONNACK --------------------------------------------------------------------------------------


async def test_MQTT_3_2_2_9_connack_advertises_capabilities_and_no_maximum_qos(nursery, broker):
    # Receive Maximum, Topic Alias Maximum, Retain / Wildcard / Subscription Identifier /
    # Shared Subscription Available; no Maximum QoS (the server does QoS 2), no Maximum
    # Packet Size (unlimited), no Authentication Method (none asked) [MQTT-4.12.0-6].
    client, connack = await connect5(nursery, broker, "dev")
    assert connack == ConnAck(session_present=False, return_code=0, properties=CAPABILITIES)
    assert prop.MAXIMUM_QOS not in connack.properties
    assert await client.publishes_until_idle() == []  # no AUTH either


async def test_section_3_2_2_3_6_connack_advertises_maximum_packet_size_when_limited(
    nursery, make_broker):
    broker = make_broker(limits=Limits(max_packet_size=1000, receive_maximum=10,
                                       topic_alias_maximum=5))
    _, connack = await connect5(nursery, broker, "dev")
    assert connack == ConnAck(properties=CAPABILITIES | {
        prop.MAXIMUM_PACKET_SIZE: 1000,
        prop.RECEIVE_MAXIMUM: 10,
        prop.TOPIC_ALIAS_MAXIMUM: 5,
    })


@pytest.mark.parametrize("clean_start", [True, False])
async def test_MQTT_3_2_2_16_assigned_client_identifier_for_empty_id(nursery, broker, clean_start):
    # [MQTT-3.1.3-6], [MQTT-3.1.3-7]: a unique id, returned in the CONNACK; at 5.0 also
    # with Clean Start 0.
    first, connack1 = await connect5(nursery, broker, "", clean_session=clean_start,
                                     properties=expiry(60))
    _, connack2 = await connect5(nursery, broker, "", clean_session=clean_start,
                                 properties=expiry(60))
    assigned1 = connack1.properties[prop.ASSIGNED_CLIENT_IDENTIFIER]
    assigned2 = connack2.properties[prop.ASSIGNED_CLIENT_IDENTIFIER]
    assert connack1 == ConnAck(properties=CAPABILITIES | {
        prop.ASSIGNED_CLIENT_IDENTIFIER: assigned1
    })
    assert connack2.session_present is False and connack2.return_code == 0
    assert assigned1 and assigned2 and assigned1 != assigned2
    assert set(broker.sessions) == {assigned1, assigned2}
    # The assigned id names the session: a later connect with it resumes it.
    await disconnect5(first)
    _, connack = await connect5(nursery, broker, assigned1, clean_session=False)
    assert connack == ConnAck(session_present=True, properties=CAPABILITIES)


@pytest.mark.parametrize(
    ("configured", "request_value", "sent"),
    [
        ("reply/", 1, True),
        ("reply/", 0, False),  # [MQTT-3.1.2-28]
        ("reply/", None, False),  # absent means 0
        ("", 1, False),  # asked, but the server has none to give
    ],
)
async def test_MQTT_3_1_2_28_response_information_only_when_requested(
    nursery, configured, request_value, sent, make_broker
):
    broker = make_broker(mqtt=MQTTSettings(response_information=configured))
    props = {} if request_value is None else {prop.REQUEST_RESPONSE_INFORMATION: request_value}
    _, connack = await connect5(nursery, broker, "dev", properties=props)
    expected = CAPABILITIES | ({prop.RESPONSE_INFORMATION: configured} if sent else {})
    assert connack == ConnAck(properties=expected)


# -- Session Expiry Interval -----------------------------------------------------------------------


async def test_MQTT_3_1_2_23_session_expiry_0_ends_with_the_connection(nursery, broker):
    client = await client5(nursery, broker, "dev")  # no Session Expiry Interval: 0
    await subscribe5(client, "t", 1)
    await disconnect5(client)
    assert "dev" not in broker.sessions
    again, connack = await connect5(nursery, broker, "dev", clean_session=False)
    assert connack.session_present is False  # [MQTT-3.2.2-3]
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", qos=1, packet_id=1))
    assert await pub.receive() == PubAck(1, rc.NO_MATCHING_SUBSCRIBERS)
    assert await again.publishes_until_idle() == []


@pytest.mark.parametrize(("offline_for", "present"), [(9, True), (11, False)])
async def test_MQTT_4_1_0_2_session_kept_for_its_expiry_interval(
    nursery, broker, autojump_clock, offline_for, present
):
    client = await client5(nursery, broker, "dev", properties=expiry(10))
    await subscribe5(client, "t", 1)
    await trio.sleep(1000)  # ok: mock clock; [MQTT-4.1.0-1]: nothing expires while connected
    assert await client.publishes_until_idle() == []
    await disconnect5(client)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"kept", qos=1, packet_id=1))
    assert await pub.receive() == PubAck(1)  # [MQTT-4.5.0-1]: stored for the session
    await trio.sleep(offline_for)  # ok: mock clock
    assert ("dev" in broker.sessions) is present
    again, connack = await connect5(nursery, broker, "dev", clean_session=False,
                                    properties=expiry(10))
    # [MQTT-3.1.2-5] resumed / [MQTT-3.1.2-6] created; [MQTT-3.2.2-3] Session Present.
    assert connack == ConnAck(session_present=present, properties=CAPABILITIES)
    expected = [Publish("t", b"kept", qos=1, packet_id=1)] if present else []
    assert await again.publishes_until_idle() == expected


async def test_MQTT_3_1_2_23_session_expiry_0xFFFFFFFF_never_expires(
    nursery, broker, autojump_clock
):
    client = await client5(nursery, broker, "dev", properties=expiry(NEVER))
    await subscribe5(client, "t", 1)
    await disconnect5(client)
    await trio.sleep(10 * 365 * 24 * 3600)  # ok: mock clock
    _, connack = await connect5(nursery, broker, "dev", clean_session=False)
    assert connack.session_present is True


@pytest.mark.parametrize(
    ("at_connect", "at_disconnect", "offline_for", "present"),
    [(10, 100, 50, True), (100, 0, 1, False), (100, 5, 6, False)],
)
async def test_section_3_14_2_2_2_session_expiry_changed_at_disconnect(
    nursery, broker, autojump_clock, at_connect, at_disconnect, offline_for, present
):
    client = await client5(nursery, broker, "dev", properties=expiry(at_connect))
    await disconnect5(client, session_expiry_interval=at_disconnect)
    await trio.sleep(offline_for)  # ok: mock clock
    _, connack = await connect5(nursery, broker, "dev", clean_session=False)
    assert connack.session_present is present


async def test_section_3_14_2_2_2_session_expiry_set_at_disconnect_after_0_is_a_protocol_error(
    nursery, broker
):
    watcher = await client5(nursery, broker, "watcher")
    await subscribe5(watcher, "wills/dev")
    client = await client5(nursery, broker, "dev", will=Will("wills/dev", b"gone"))
    await send5(client, Disconnect(0, expiry(60)))
    await closed_with(client, rc.PROTOCOL_ERROR)
    assert "dev" not in broker.sessions  # the session still ended with the connection
    # Not a normal disconnection: the will goes out [MQTT-3.1.2-8].
    assert await watcher.receive() == Publish("wills/dev", b"gone")


async def test_MQTT_3_1_2_4_clean_start_discards_the_session(nursery, broker):
    client = await client5(nursery, broker, "dev", properties=expiry(100))
    await subscribe5(client, "t", 1)
    await disconnect5(client)
    clean, connack = await connect5(nursery, broker, "dev", clean_session=True,
                                    properties=expiry(100))
    assert connack == ConnAck(session_present=False, properties=CAPABILITIES)  # [MQTT-3.2.2-2]
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", qos=1, packet_id=1))
    assert await pub.receive() == PubAck(1, rc.NO_MATCHING_SUBSCRIBERS)
    assert await clean.publishes_until_idle() == []


# -- Will Message and Will Delay Interval ----------------------------------------------------------


async def lost_device(nursery, broker, delay: int, session_expiry: int, **will) -> RawClient:
    """A watcher on wills/#, and a device with a delayed will that drops its connection."""
    watcher = await client5(nursery, broker, "watcher")
    await subscribe5(watcher, "wills/#", 1)
    device = await client5(
        nursery, broker, "dev", properties=expiry(session_expiry),
        will=Will("wills/dev", b"lost", qos=1,
                  properties={prop.WILL_DELAY_INTERVAL: delay}, **will),
    )
    await device.close()
    return watcher


async def test_MQTT_3_1_2_8_will_published_after_the_will_delay(nursery, broker, autojump_clock):
    start = trio.current_time()
    watcher = await lost_device(nursery, broker, delay=5, session_expiry=100)
    will = await watcher.receive(timeout=1000)
    assert trio.current_time() - start == pytest.approx(5)
    assert will == Publish("wills/dev", b"lost", qos=1, packet_id=1)


async def test_MQTT_3_1_2_8_will_published_when_the_session_ends_before_the_delay(
    nursery, broker, autojump_clock
):
    start = trio.current_time()
    watcher = await lost_device(nursery, broker, delay=10, session_expiry=3)
    will = await watcher.receive(timeout=1000)
    assert trio.current_time() - start == pytest.approx(3)
    assert will == Publish("wills/dev", b"lost", qos=1, packet_id=1)


@pytest.mark.parametrize(("delay", "session_expiry"), [(5, 100), (10, 3)])
async def test_MQTT_3_1_2_10_delayed_will_published_once(
    nursery, broker, autojump_clock, delay, session_expiry
):
    watcher = await lost_device(nursery, broker, delay=delay, session_expiry=session_expiry)
    await trio.sleep(1000)  # ok: mock clock; past both the will delay and the session expiry
    assert "dev" not in broker.sessions
    wills = await watcher.publishes_until_idle()
    assert wills == [Publish("wills/dev", b"lost", qos=1, packet_id=1)]


async def test_MQTT_3_1_3_9_no_will_when_the_client_reconnects_within_the_delay(
    nursery, broker, autojump_clock
):
    watcher = await lost_device(nursery, broker, delay=5, session_expiry=100)
    await trio.sleep(4)  # ok: mock clock
    _, connack = await connect5(nursery, broker, "dev", clean_session=False,
                                   properties=expiry(100))
    assert connack.session_present is True
    await trio.sleep(1000)  # ok: mock clock
    assert await watcher.publishes_until_idle() == []


async def test_MQTT_3_1_2_8_disconnect_with_will_message_0x04_publishes_the_will(
    nursery, broker
):
    watcher = await client5(nursery, broker, "watcher")
    await subscribe5(watcher, "wills/#", 1)
    device = await client5(nursery, broker, "dev", will=Will("wills/dev", b"bye", qos=1))
    await disconnect5(device, rc.DISCONNECT_WITH_WILL_MESSAGE)
    assert await watcher.receive() == Publish("wills/dev", b"bye", qos=1, packet_id=1)
    assert broker.retained.get("wills/dev") is None  # [MQTT-3.1.2-14]: Will Retain 0


async def test_MQTT_3_14_4_3_normal_disconnect_discards_the_will(nursery, broker, autojump_clock):
    watcher = await client5(nursery, broker, "watcher")
    await subscribe5(watcher, "wills/#", 1)
    device = await client5(
        nursery, broker, "dev", properties=expiry(100),
        will=Will("wills/dev", b"bye", properties={prop.WILL_DELAY_INTERVAL: 5}),
    )
    await disconnect5(device, rc.NORMAL_DISCONNECTION)
    await trio.sleep(1000)  # ok: mock clock; past the delay and the session's end [MQTT-3.1.2-10]
    assert await watcher.publishes_until_idle() == []


async def test_MQTT_3_1_3_10_will_properties_forwarded_in_order(nursery, broker):
    will_props = {
        prop.PAYLOAD_FORMAT_INDICATOR: 1,
        prop.CONTENT_TYPE: "text/plain",
        prop.RESPONSE_TOPIC: "status/ack",
        prop.CORRELATION_DATA: b"\x00\xff",
        prop.USER_PROPERTY: (("z", "1"), ("a", "2"), ("z", "3")),
    }
    watcher = await client5(nursery, broker, "watcher")
    await subscribe5(watcher, "wills/#", 1)
    device = await client5(
        nursery, broker, "dev",
        will=Will("wills/dev", b"offline", qos=1, retain=True, properties=will_props),
    )
    await device.close()
    assert await watcher.receive() == Publish(
        "wills/dev", b"offline", qos=1, packet_id=1, properties=will_props
    )
    # [MQTT-3.1.2-15]: Will Retain 1 publishes it as a retained message.
    assert broker.retained.get("wills/dev").payload == b"offline"


# -- Message Expiry Interval -----------------------------------------------------------------------


async def test_MQTT_3_3_2_5_expired_message_not_delivered_to_an_offline_session(
    nursery, broker, autojump_clock
):
    sub = await client5(nursery, broker, "sub", properties=expiry(1000))
    await subscribe5(sub, "t", 1)
    await disconnect5(sub)
    pub = await client5(nursery, broker, "pub")
    await send5(
        pub,
        Publish("t", b"short", qos=1, packet_id=1, properties={prop.MESSAGE_EXPIRY_INTERVAL: 5}),
        Publish("t", b"long", qos=1, packet_id=2, properties={prop.MESSAGE_EXPIRY_INTERVAL: 60}),
        Publish("t", b"forever", qos=1, packet_id=3),
    )
    assert await pub.publishes_until_idle() == [PubAck(1), PubAck(2), PubAck(3)]
    await trio.sleep(10)  # ok: mock clock
    back, connack = await connect5(nursery, broker, "sub", clean_session=False)
    assert connack.session_present is True
    # [MQTT-3.3.2-6]: the interval forwarded is what is left of it (60 - 10).
    assert await back.publishes_until_idle() == [
        Publish("t", b"long", qos=1, packet_id=1, properties={prop.MESSAGE_EXPIRY_INTERVAL: 50}),
        Publish("t", b"forever", qos=1, packet_id=2),
    ]


async def test_MQTT_3_3_2_5_expired_retained_message_not_sent_to_new_subscribers(
    nursery, broker, autojump_clock
):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("r", b"v", retain=True, properties={prop.MESSAGE_EXPIRY_INTERVAL: 10}))
    await pub.publishes_until_idle()
    await trio.sleep(4)  # ok: mock clock
    early = await client5(nursery, broker, "early")
    await subscribe5(early, "r")
    assert await early.publishes_until_idle() == [
        Publish("r", b"v", retain=True, properties={prop.MESSAGE_EXPIRY_INTERVAL: 6})
    ]
    await trio.sleep(7)  # ok: mock clock
    late = await client5(nursery, broker, "late")
    await subscribe5(late, "r")
    assert await late.publishes_until_idle() == []


async def test_MQTT_4_3_3_7_no_expiry_once_the_qos2_publish_was_sent(
    nursery, broker, autojump_clock
):
    sub = await client5(nursery, broker, "sub", properties=expiry(1000))
    await subscribe5(sub, "t", 2)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", qos=2, packet_id=1,
                             properties={prop.MESSAGE_EXPIRY_INTERVAL: 5}))
    first = await sub.receive()
    assert first == Publish("t", b"x", qos=2, packet_id=1,
                            properties={prop.MESSAGE_EXPIRY_INTERVAL: 5})
    await sub.close()  # no PUBREC
    await trio.sleep(100)  # ok: mock clock
    back, _ = await connect5(nursery, broker, "sub", clean_session=False)
    resent = await back.receive()
    assert (resent.topic, resent.payload, resent.qos, resent.packet_id, resent.dup) == (
        "t", b"x", 2, 1, True
    )


# -- Receive Maximum ---------------------------------------------------------------------------


async def test_MQTT_3_3_4_9_client_receive_maximum_limits_unacknowledged_deliveries(
    nursery, broker
):
    sub = await client5(nursery, broker, "sub", properties={prop.RECEIVE_MAXIMUM: 2})
    await subscribe5(sub, "t", 2)
    pub = await client5(nursery, broker, "pub")
    for i, qos in enumerate([1, 2, 1, 2, 1]):
        await send5(pub, Publish("t", b"%d" % i, qos=qos, packet_id=i + 1))
    await pub.publishes_until_idle()
    # [MQTT-4.9.0-2]: two in flight; [MQTT-3.3.4-10], [MQTT-4.9.0-3]: PINGRESP still comes.
    assert await sub.publishes_until_idle() == [
        Publish("t", b"0", qos=1, packet_id=1),
        Publish("t", b"1", qos=2, packet_id=2),
    ]
    await send5(sub, PubAck(1))
    assert await sub.publishes_until_idle() == [Publish("t", b"2", qos=1, packet_id=3)]
    await send5(sub, PubRec(2))  # QoS 2 counts until PUBCOMP
    assert await sub.publishes_until_idle() == [PubRel(2)]
    await send5(sub, PubComp(2))
    assert await sub.publishes_until_idle() == [Publish("t", b"3", qos=2, packet_id=4)]
    await send5(sub, PubAck(3))
    assert await sub.publishes_until_idle() == [Publish("t", b"4", qos=1, packet_id=5)]


async def test_MQTT_3_3_4_7_server_receive_maximum_exceeded_disconnect_0x93(nursery, make_broker):
    broker = make_broker(limits=Limits(receive_maximum=2))
    pub, connack = await connect5(nursery, broker, "pub")
    assert connack.properties[prop.RECEIVE_MAXIMUM] == 2
    # QoS 1 is acknowledged at once, so it never counts.
    await send5(pub, *[Publish("t", b"q1", qos=1, packet_id=10 + i) for i in range(5)])
    assert await pub.publishes_until_idle() == [PubAck(10 + i, 0x10) for i in range(5)]
    await send5(pub, *[Publish("t", b"q2", qos=2, packet_id=i) for i in (1, 2, 3)])
    assert await pub.receive() == PubRec(1, rc.NO_MATCHING_SUBSCRIBERS)
    assert await pub.receive() == PubRec(2, rc.NO_MATCHING_SUBSCRIBERS)
    await closed_with(pub, rc.RECEIVE_MAXIMUM_EXCEEDED)


# -- Maximum Packet Size -----------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", "$foo/bar"])
async def test_MQTT_4_7_2_1_clients_cannot_exchange_messages_on_dollar_topics_0x87(
    nursery, broker, topic
):
    # The topic name is valid, the client may not use it: Not authorized (0x87), as for
    # an ACL denial, not Topic Name invalid (0x90).
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, topic, 2)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish(topic, b"spoofed", qos=1, packet_id=1, retain=True),
                Publish(topic, b"spoofed", qos=2, packet_id=2))
    assert await pub.receive() == PubAck(1, rc.NOT_AUTHORIZED)
    assert await pub.receive() == PubRec(2, rc.NOT_AUTHORIZED)
    assert await sub.publishes_until_idle() == []
    assert broker.retained.match(topic) == []


async def test_MQTT_3_1_4_5_pipelined_disconnect_setting_session_expiry_after_connack_0x82(
    nursery, broker
):
    # One read: CONNECT (Session Expiry 0), DISCONNECT setting Session Expiry 1. The
    # CONNECT is answered before the DISCONNECT is judged (3.14.2.2.2: 0x82).
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    await client.send_raw(encode(Connect("pipe", protocol_level=V5), V5)
                          + bytes.fromhex("e0 07 00 05 11 00 00 00 01"))
    assert (await client.receive()).return_code == 0
    await closed_with(client, rc.PROTOCOL_ERROR)


async def test_MQTT_3_1_4_5_pipelined_subscribe_with_packet_id_0_after_connack(nursery, broker):
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    # SUBSCRIBE "a" with packet identifier 0 [MQTT-2.2.1-3]
    await client.send_raw(encode(Connect("pipe", protocol_level=V5), V5)
                          + bytes.fromhex("82 07 00 00 00 00 01 61 00"))
    assert (await client.receive()).return_code == 0
    await closed_with(client, rc.MALFORMED_PACKET)


async def test_MQTT_3_1_2_24_no_connack_when_even_the_smallest_exceeds_maximum_packet_size(
    nursery, broker
):
    # CONNECT 5.0 "p", Maximum Packet Size 2: the smallest CONNACK takes 5 bytes.
    client = await connect_client(nursery, broker)
    await client.send_raw(bytes.fromhex(
        "10 13 00 04 4D 51 54 54 05 02 00 0A 05 27 00 00 00 02 00 01 70"))
    assert await client.receive_until_closed() == []
    assert "p" not in broker.sessions


async def test_MQTT_3_1_2_24_connack_drops_optional_properties_to_fit(nursery, broker):
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    await client.send(Connect("fit", protocol_level=V5,
                              properties={prop.MAXIMUM_PACKET_SIZE: 10}), level=V5)
    data = await client.stream.receive_some(100)
    assert len(data) <= 10
    connack = client.parser.feed(data)[0]
    # The four *_AVAILABLE (defaults anyway), then Topic Alias Maximum, went.
    assert connack == ConnAck(properties={prop.RECEIVE_MAXIMUM: 1024})


@pytest.mark.parametrize(("limit", "answer"), [(4, []), (5, [ConnAck(return_code=0x8C)])])
async def test_MQTT_3_1_2_24_a_refusing_connack_is_not_sent_above_maximum_packet_size(
    nursery, broker, limit, answer
):
    # Refused (unknown Authentication Method): the 5-byte CONNACK only where it fits.
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    await client.send(Connect("x", protocol_level=V5, properties={
        prop.AUTHENTICATION_METHOD: "nope", prop.MAXIMUM_PACKET_SIZE: limit}), level=V5)
    assert await client.receive_until_closed() == answer


async def test_MQTT_3_1_2_24_assigned_client_identifier_is_not_dropped(nursery, broker):
    # An empty client id needs its Assigned Client Identifier [MQTT-3.2.2-16]: 45 bytes
    # at least, more than the client takes.
    client = await connect_client(nursery, broker)
    await client.send(Connect("", protocol_level=V5,
                              properties={prop.MAXIMUM_PACKET_SIZE: 30}), level=V5)
    assert await client.receive_until_closed() == []
    assert broker.sessions == {}


async def test_MQTT_3_1_2_24_and_MQTT_3_1_2_25_message_too_large_for_the_client_is_not_sent(
    nursery, broker):
    small = await client5(nursery, broker, "small", properties={prop.MAXIMUM_PACKET_SIZE: 100})
    await subscribe5(small, "t", 1)
    large = await client5(nursery, broker, "large")
    await subscribe5(large, "t", 1)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x" * 200, qos=1, packet_id=1),
                Publish("t", b"fits", qos=1, packet_id=2))
    assert await pub.publishes_until_idle() == [PubAck(1), PubAck(2)]
    assert await large.publishes_until_idle() == [
        Publish("t", b"x" * 200, qos=1, packet_id=1),
        Publish("t", b"fits", qos=1, packet_id=2),
    ]
    # Discarded as if it had been delivered: nothing waits for an acknowledgement of it.
    (fits,) = await small.publishes_until_idle()
    assert fits == Publish("t", b"fits", qos=1, packet_id=fits.packet_id)
    await send5(small, PubAck(fits.packet_id))
    assert await small.publishes_until_idle() == []
    assert broker.sessions["small"].inflight == {}


async def test_MQTT_3_2_2_15_packet_larger_than_server_maximum_disconnect_0x95(
    nursery, make_broker):
    broker = make_broker(limits=Limits(max_packet_size=200))
    pub, connack = await connect5(nursery, broker, "pub")
    assert connack.properties[prop.MAXIMUM_PACKET_SIZE] == 200
    await send5(pub, Publish("t", b"x" * 300))
    await closed_with(pub, rc.PACKET_TOO_LARGE)


# -- Topic aliases: client to server -----------------------------------------------------------


async def test_MQTT_3_3_2_12_inbound_topic_alias_set_then_used(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "t/#")
    pub = await client5(nursery, broker, "pub")
    await send5(
        pub,
        Publish("t/a", b"1", properties={prop.TOPIC_ALIAS: 1}),
        Publish("", b"2", properties={prop.TOPIC_ALIAS: 1}),
        Publish("t/b", b"3", properties={prop.TOPIC_ALIAS: 64}),  # the maximum advertised
        Publish("", b"4", properties={prop.TOPIC_ALIAS: 64}),
        Publish("t/c", b"5", properties={prop.TOPIC_ALIAS: 1}),  # remapped
        Publish("", b"6", properties={prop.TOPIC_ALIAS: 1}),
    )
    received = await sub.publishes_until_idle()
    assert received == [
        Publish(topic, payload)
        for topic, payload in [("t/a", b"1"), ("t/a", b"2"), ("t/b", b"3"), ("t/b", b"4"),
                               ("t/c", b"5"), ("t/c", b"6")]
    ]


@pytest.mark.parametrize(
    "alias",
    [
        0,
        65,
    ],
)
async def test_MQTT_3_2_2_17_and_MQTT_3_3_2_8_topic_alias_out_of_range_disconnect_0x94(
    nursery, broker, alias
):
    pub = await client5(nursery, broker, "pub")
    properties = b"\x03\x23" + alias.to_bytes(2, "big")  # raw: encode() refuses alias 0
    await pub.send_raw(raw_frame(0x30, raw_string("t") + properties + b"payload"))
    await closed_with(pub, rc.TOPIC_ALIAS_INVALID)


async def test_section_3_3_2_3_4_unknown_topic_alias_with_empty_topic_is_a_protocol_error(
    nursery, broker
):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("", b"x", properties={prop.TOPIC_ALIAS: 3}))
    await closed_with(pub, rc.PROTOCOL_ERROR)


async def test_MQTT_3_3_2_7_inbound_aliases_not_carried_to_the_next_connection(nursery, broker):
    first = await client5(nursery, broker, "pub", properties=expiry(100))
    await send5(first, Publish("t", b"x", properties={prop.TOPIC_ALIAS: 1}))
    await disconnect5(first)
    second, connack = await connect5(nursery, broker, "pub", clean_session=False)
    assert connack.session_present is True
    await send5(second, Publish("", b"x", properties={prop.TOPIC_ALIAS: 1}))
    await closed_with(second, rc.PROTOCOL_ERROR)


# -- Topic aliases: server to client ------------------------------------------------------------


async def test_MQTT_3_1_2_26_outbound_topic_aliases_up_to_the_client_maximum(nursery, broker):
    sub = await client5(nursery, broker, "sub", properties={prop.TOPIC_ALIAS_MAXIMUM: 1})
    await subscribe5(sub, "t/#")
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t/a", b"1"), Publish("t/a", b"2"), Publish("t/b", b"3"),
                Publish("t/a", b"4"))
    assert await sub.publishes_until_idle() == [
        Publish("t/a", b"1", properties={prop.TOPIC_ALIAS: 1}),
        Publish("", b"2", properties={prop.TOPIC_ALIAS: 1}),  # [MQTT-3.3.2-10]: client side
        Publish("t/b", b"3"),  # no alias above the client's maximum [MQTT-3.3.2-11]
        Publish("", b"4", properties={prop.TOPIC_ALIAS: 1}),
    ]


async def test_MQTT_3_1_2_27_no_outbound_topic_aliases_without_a_client_maximum(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "t")
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"1"), Publish("t", b"2"))
    assert await sub.publishes_until_idle() == [Publish("t", b"1"), Publish("t", b"2")]


async def test_MQTT_3_3_2_7_outbound_aliases_not_carried_to_the_next_connection(nursery, broker):
    alias_max = {prop.TOPIC_ALIAS_MAXIMUM: 5}
    sub = await client5(nursery, broker, "sub", properties=expiry(100) | alias_max)
    await subscribe5(sub, "t", 1)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"1", qos=1, packet_id=1))
    assert await sub.receive() == Publish("t", b"1", qos=1, packet_id=1,
                                          properties={prop.TOPIC_ALIAS: 1})
    await send5(sub, PubAck(1))
    await disconnect5(sub)
    back, _ = await connect5(nursery, broker, "sub", clean_session=False,
                             properties=expiry(100) | alias_max)
    await send5(pub, Publish("t", b"2", qos=1, packet_id=2))
    assert await back.receive() == Publish("t", b"2", qos=1, packet_id=2,
                                           properties={prop.TOPIC_ALIAS: 1})


# -- Subscription options --------------------------------------------------------------------------


async def test_MQTT_3_8_3_3_no_local(nursery, broker):
    local = await client5(nursery, broker, "local")
    await subscribe5(local, "t", no_local=True)
    other = await client5(nursery, broker, "other")
    await subscribe5(other, "t")
    await send5(local, Publish("t", b"from local"))
    await send5(other, Publish("t", b"from other"))
    assert await other.publishes_until_idle() == [Publish("t", b"from local"),
                                                  Publish("t", b"from other")]
    assert await local.publishes_until_idle() == [Publish("t", b"from other")]


async def test_MQTT_3_3_1_12_and_MQTT_3_3_1_13_retain_as_published(nursery, broker):
    as_published = await client5(nursery, broker, "rap")
    await subscribe5(as_published, "t", retain_as_published=True)
    cleared = await client5(nursery, broker, "plain")
    await subscribe5(cleared, "t")
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"r", retain=True), Publish("t", b"n"))
    assert await as_published.publishes_until_idle() == [Publish("t", b"r", retain=True),
                                                         Publish("t", b"n")]
    assert await cleared.publishes_until_idle() == [Publish("t", b"r"), Publish("t", b"n")]
    # [MQTT-3.3.1-8]: RETAIN 0 neither stored nor replaced the retained message.
    assert broker.retained.get("t").payload == b"r"


@pytest.mark.parametrize(
    ("retain_handling", "first", "second"),
    [
        (0, True, True),  # [MQTT-3.3.1-9], [MQTT-3.8.4-4]: sent on every SUBSCRIBE
        (1, True, False),  # [MQTT-3.3.1-10]: only when the subscription is new
        (2, False, False),  # [MQTT-3.3.1-11]: never
    ],
)
async def test_MQTT_3_3_1_9_to_MQTT_3_3_1_11_retain_handling(
    nursery, broker, retain_handling, first, second):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("r", b"kept", retain=True))
    await pub.publishes_until_idle()
    sub = await client5(nursery, broker, "sub")
    for packet_id, expected in ((1, first), (2, second)):
        await subscribe5(sub, "r", packet_id=packet_id, retain_handling=retain_handling)
        retained = [Publish("r", b"kept", retain=True)] if expected else []
        assert await sub.publishes_until_idle() == retained
    # Replacing the subscription loses nothing [MQTT-3.8.4-4].
    await send5(pub, Publish("r", b"live"))
    assert await sub.publishes_until_idle() == [Publish("r", b"live")]


async def test_MQTT_3_3_4_3_subscription_identifier_sent_with_matching_messages(nursery, broker):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("a/r", b"retained", retain=True))
    await pub.publishes_until_idle()
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "b", packet_id=2)  # without an identifier
    await subscribe5(sub, "a/+", sub_id=7)
    ids = {prop.SUBSCRIPTION_IDENTIFIER: (7,)}
    assert await sub.publishes_until_idle() == [
        Publish("a/r", b"retained", retain=True, properties=ids)
    ]
    await send5(pub, Publish("a/x", b"1"), Publish("b", b"2"))
    assert await sub.publishes_until_idle() == [Publish("a/x", b"1", properties=ids),
                                                Publish("b", b"2")]


async def test_MQTT_3_3_4_4_overlapping_subscriptions_carry_every_identifier(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "a/+", 0, packet_id=1, sub_id=1)
    await subscribe5(sub, "a/#", 1, packet_id=2, sub_id=2)
    await subscribe5(sub, "a/b", 0, packet_id=3)  # no identifier: adds none
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("a/b", b"x", qos=1, packet_id=1))
    (delivered,) = await sub.publishes_until_idle()
    # One copy at the highest QoS [MQTT-3.3.4-2]; order of identifiers is not significant.
    assert delivered.qos == 1 and delivered.topic == "a/b"
    assert sorted(delivered.properties[prop.SUBSCRIPTION_IDENTIFIER]) == [1, 2]
    assert set(delivered.properties) == {prop.SUBSCRIPTION_IDENTIFIER}


async def test_MQTT_3_3_4_5_each_copy_carries_its_own_identifier(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "a", packet_id=1, sub_id=5)
    await subscribe5(sub, "$share/g/a", packet_id=2, sub_id=6)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("a", b"x"))
    received = await sub.publishes_until_idle()
    assert sorted(p.properties[prop.SUBSCRIPTION_IDENTIFIER] for p in received) == [(5,), (6,)]
    assert all(p == Publish("a", b"x", properties=p.properties) for p in received)


async def test_MQTT_3_8_3_4_no_local_on_a_shared_subscription_disconnect_0x82(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    # Raw bytes: encode() refuses this SUBSCRIBE. Options 0x04: No Local, QoS 0.
    body = b"\x00\x01" + b"\x00" + raw_string("$share/g/t") + b"\x04"
    await sub.send_raw(raw_frame(0x82, body))
    await closed_with(sub, rc.PROTOCOL_ERROR)


# -- Shared subscriptions ---------------------------------------------------------------------


async def test_section_4_8_2_shared_subscription_balances_messages_across_members(
    nursery, broker
):
    members = {}
    for name in ("m1", "m2", "m3"):
        members[name] = await client5(nursery, broker, name)
        await subscribe5(members[name], "$share/g/t/+")
    pub = await client5(nursery, broker, "pub")
    payloads = [b"%d" % i for i in range(9)]
    await send5(pub, *[Publish("t/x", p) for p in payloads])
    await pub.publishes_until_idle()
    received = {name: await m.publishes_until_idle() for name, m in members.items()}
    got = [p.payload for packets in received.values() for p in packets]
    assert sorted(got) == payloads  # each message to exactly one member
    assert [len(packets) for packets in received.values()] == [3, 3, 3]
    assert all(p.topic == "t/x" for packets in received.values() for p in packets)


async def test_section_4_8_2_shared_subscription_gets_no_retained_messages(nursery, broker):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"retained", retain=True))
    await pub.publishes_until_idle()
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "$share/g/t", retain_handling=0)
    assert await sub.publishes_until_idle() == []
    await send5(pub, Publish("t", b"live", retain=True))
    assert await sub.publishes_until_idle() == [Publish("t", b"live")]


async def test_MQTT_4_8_2_3_shared_delivery_respects_the_granted_qos(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "$share/g/t", 1)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", qos=2, packet_id=1))
    assert await sub.receive() == Publish("t", b"x", qos=1, packet_id=1)


async def shared_pair(nursery, broker, qos: int, session_expiry: int = 0):
    """Two members of $share/g/t at ``qos`` and a publisher."""
    members = []
    for name in ("a", "b"):
        member = await client5(nursery, broker, name, properties=expiry(session_expiry))
        await subscribe5(member, "$share/g/t", qos)
        members.append(member)
    pub = await client5(nursery, broker, "pub")
    return members, pub


async def test_section_4_8_2_shared_member_gone_with_unacknowledged_qos1_goes_to_another_member(
    nursery, broker
):
    (a, b), pub = await shared_pair(nursery, broker, 1)
    payloads = [b"%d" % i for i in range(4)]
    await send5(pub, *[Publish("t", p, qos=1, packet_id=i + 1) for i, p in enumerate(payloads)])
    await pub.publishes_until_idle()
    held_by_a = [p.payload for p in await a.publishes_until_idle()]  # never acknowledged
    received_by_b = await b.publishes_until_idle()
    await send5(b, *[PubAck(p.packet_id) for p in received_by_b])
    assert len(held_by_a) == 2 and len(received_by_b) == 2
    await a.close()
    redelivered = [await b.receive(), await b.receive()]
    assert [p.payload for p in redelivered] == held_by_a
    assert all(p.qos == 1 and not p.dup for p in redelivered)
    assert sorted(held_by_a + [p.payload for p in received_by_b]) == payloads
    await send5(b, *[PubAck(p.packet_id) for p in redelivered])
    assert await b.publishes_until_idle() == []
    assert broker.sessions["b"].inflight == {}


async def test_MQTT_4_8_2_6_shared_message_refused_by_the_client_not_sent_elsewhere(
    nursery, broker, autojump_clock
):
    (a, b), pub = await shared_pair(nursery, broker, 1)
    await send5(pub, Publish("t", b"x", qos=1, packet_id=1))
    await pub.publishes_until_idle()
    got_a, got_b = await a.publishes_until_idle(), await b.publishes_until_idle()
    (chosen, other), (delivery,) = ((a, b), got_a) if got_a else ((b, a), got_b)
    await send5(chosen, PubAck(delivery.packet_id, rc.UNSPECIFIED_ERROR))
    await chosen.publishes_until_idle()
    await chosen.close()
    await trio.testing.wait_all_tasks_blocked()  # the broker has handled the close
    assert await other.publishes_until_idle() == []


async def qos2_shared_delivery_dropped(nursery, broker, session_expiry: int):
    """A QoS 2 shared message sent to one member, whose connection then breaks
    before it answers with PUBREC; returns (that member's id, the other member)."""
    (a, b), pub = await shared_pair(nursery, broker, 2, session_expiry)
    await send5(pub, Publish("t", b"x", qos=2, packet_id=1), PubRel(1))
    assert await pub.publishes_until_idle() == [PubRec(1), PubComp(1)]
    got_a = await a.publishes_until_idle()
    got_b = await b.publishes_until_idle()
    assert len(got_a + got_b) == 1
    chosen, other, name = (a, b, "a") if got_a else (b, a, "b")
    await chosen.close()
    await trio.testing.wait_all_tasks_blocked()  # the broker has handled the close
    return name, other


async def test_MQTT_4_8_2_5_qos2_shared_message_not_sent_to_another_client_when_session_ends(
    nursery, broker, autojump_clock
):
    _, other = await qos2_shared_delivery_dropped(nursery, broker, session_expiry=0)
    assert await other.publishes_until_idle() == []


async def test_MQTT_4_8_2_4_qos2_shared_message_completed_to_the_same_client_on_reconnect(
    nursery, broker, autojump_clock
):
    name, other = await qos2_shared_delivery_dropped(nursery, broker, session_expiry=100)
    assert await other.publishes_until_idle() == []
    back, connack = await connect5(nursery, broker, name, clean_session=False)
    assert connack.session_present is True
    resent = await back.receive()
    assert (resent.payload, resent.qos, resent.dup) == (b"x", 2, True)


# -- Request / response and other PUBLISH properties ----------------------------------------------


async def test_MQTT_3_3_2_15_to_MQTT_3_3_2_20_request_response_properties_pass_through(
    nursery, broker):
    request_props = {
        prop.PAYLOAD_FORMAT_INDICATOR: 1,  # [MQTT-3.3.2-4]
        prop.MESSAGE_EXPIRY_INTERVAL: 60,  # [MQTT-3.3.2-6]: nothing waited, all 60 left
        prop.CONTENT_TYPE: "application/json; charset=utf-8",  # [MQTT-3.3.2-20]
        prop.RESPONSE_TOPIC: "replies/requester",  # [MQTT-3.3.2-15]
        prop.CORRELATION_DATA: b"\x00\x01\xfe\xff",  # [MQTT-3.3.2-16]
        # [MQTT-3.3.2-17], [MQTT-3.3.2-18]: all of them, in order, names repeated.
        prop.USER_PROPERTY: (("b", "1"), ("a", "2"), ("b", "3"), ("b", "3"), ("", "")),
    }
    responder = await client5(nursery, broker, "responder")
    await subscribe5(responder, "requests/#", 1)
    requester = await client5(nursery, broker, "requester")
    await subscribe5(requester, "replies/requester", 1)
    await send5(requester, Publish("requests/time", '{"q": "ñ"}'.encode(), qos=1, packet_id=9,
                                   properties=request_props))
    assert await requester.receive() == PubAck(9)
    request = await responder.receive()
    assert request == Publish("requests/time", '{"q": "ñ"}'.encode(), qos=1, packet_id=1,
                              properties=request_props)
    reply_props = {prop.CORRELATION_DATA: request.properties[prop.CORRELATION_DATA]}
    await send5(responder, PubAck(1), Publish(request.properties[prop.RESPONSE_TOPIC], b"12:00",
                                              qos=1, packet_id=1, properties=reply_props))
    assert await responder.receive() == PubAck(1)
    assert await requester.receive() == Publish("replies/requester", b"12:00", qos=1,
                                                packet_id=1, properties=reply_props)


async def test_MQTT_3_3_2_4_invalid_utf8_with_payload_format_1_qos1_puback_0x99(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "t", 1)
    pub = await client5(nursery, broker, "pub")
    utf8 = {prop.PAYLOAD_FORMAT_INDICATOR: 1}
    await send5(pub, Publish("t", b"\xff\xfe", qos=1, packet_id=1, properties=utf8),
                Publish("t", b"\xff\xfe", qos=2, packet_id=2, properties=utf8),
                Publish("t", b"\xff\xfe", qos=1, packet_id=3),  # unspecified bytes: fine
                Publish("t", "ok ✓".encode(), qos=1, packet_id=4, properties=utf8))
    assert await pub.publishes_until_idle() == [
        PubAck(1, rc.PAYLOAD_FORMAT_INVALID),
        PubRec(2, rc.PAYLOAD_FORMAT_INVALID),  # refused: the id is free again [MQTT-4.3.3-9]
        PubAck(3),
        PubAck(4),
    ]
    assert broker.sessions["pub"].inbound_qos2 == set()
    await send5(pub, Publish("t", b"fixed", qos=2, packet_id=2), PubRel(2))
    assert await pub.publishes_until_idle() == [PubRec(2), PubComp(2)]
    assert await sub.publishes_until_idle() == [
        Publish("t", b"\xff\xfe", qos=1, packet_id=1),
        Publish("t", "ok ✓".encode(), qos=1, packet_id=2, properties=utf8),
        Publish("t", b"fixed", qos=1, packet_id=3),
    ]


async def test_section_3_3_2_3_2_invalid_utf8_with_payload_format_1_qos0_disconnect_0x99(
    nursery, broker
):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "t")
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"\xc3\x28", properties={prop.PAYLOAD_FORMAT_INDICATOR: 1}))
    await closed_with(pub, rc.PAYLOAD_FORMAT_INVALID)
    assert await sub.publishes_until_idle() == []


async def test_section_3_4_2_1_puback_and_pubrec_0x10_when_no_subscriber_matches(nursery, broker):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("nobody/listens", b"x", qos=1, packet_id=1),
                Publish("nobody/listens", b"x", qos=2, packet_id=2))
    assert await pub.publishes_until_idle() == [
        PubAck(1, rc.NO_MATCHING_SUBSCRIBERS),
        PubRec(2, rc.NO_MATCHING_SUBSCRIBERS),
    ]
    await send5(pub, PubRel(2))  # 0x10 is a success: the QoS 2 flow goes on
    assert await pub.receive() == PubComp(2)


# -- Reason codes ---------------------------------------------------------------------------------


async def test_MQTT_3_11_3_1_unsuback_0x11_for_no_subscription_in_filter_order(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "a")
    await send5(sub, Unsubscribe(4, ("never", "a", "a")))
    assert await sub.receive() == UnsubAck(4, (rc.NO_SUBSCRIPTION_EXISTED, rc.SUCCESS,
                                               rc.NO_SUBSCRIPTION_EXISTED))


async def test_section_3_7_2_1_pubrel_for_an_unknown_packet_id_pubcomp_0x92(nursery, broker):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, PubRel(42))
    assert await pub.receive() == PubComp(42, rc.PACKET_IDENTIFIER_NOT_FOUND)


async def test_MQTT_4_4_0_2_pubrec_0x80_from_the_client_ends_the_flow(nursery, broker):
    sub = await client5(nursery, broker, "sub", properties=expiry(100) | {
        prop.RECEIVE_MAXIMUM: 1
    })
    await subscribe5(sub, "t", 2)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"refused", qos=2, packet_id=1), PubRel(1),
                Publish("t", b"next", qos=2, packet_id=2), PubRel(2))
    await pub.publishes_until_idle()
    assert await sub.receive() == Publish("t", b"refused", qos=2, packet_id=1)
    await send5(sub, PubRec(1, rc.UNSPECIFIED_ERROR))
    # No PUBREL [MQTT-4.3.3-4]; the slot is free, so the next message comes.
    assert await sub.publishes_until_idle() == [Publish("t", b"next", qos=2, packet_id=2)]
    await sub.close()
    back, _ = await connect5(nursery, broker, "sub", clean_session=False)
    # Only "next" is resent: the refused message is acknowledged [MQTT-4.4.0-2].
    assert await back.publishes_until_idle() == [
        Publish("t", b"next", qos=2, dup=True, packet_id=2)
    ]


async def test_MQTT_3_1_4_3_takeover_disconnect_0x8e(nursery, broker):
    first = await client5(nursery, broker, "same", properties=expiry(100))
    second, connack = await connect5(nursery, broker, "same", clean_session=False)
    assert connack.session_present is True
    assert await first.receive_until_closed() == [Disconnect(rc.SESSION_TAKEN_OVER)]
    assert await second.publishes_until_idle() == []


async def test_MQTT_3_1_2_22_keep_alive_timeout_disconnect_0x8d(nursery, broker, autojump_clock):
    client = await client5(nursery, broker, "dev", keep_alive=10)
    start = trio.current_time()
    await closed_with(client, rc.KEEP_ALIVE_TIMEOUT, timeout=100)
    # [MQTT-3.2.2-22]: no Server Keep Alive was sent, so the client's 10 s apply.
    assert trio.current_time() - start == pytest.approx(15)


async def test_MQTT_3_3_4_6_subscription_identifier_from_a_client_disconnect_0x82(
    nursery, broker
):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", properties={prop.SUBSCRIPTION_IDENTIFIER: (1,)}))
    await closed_with(pub, rc.PROTOCOL_ERROR)


async def test_MQTT_3_1_0_2_second_connect_disconnect_0x82(nursery, broker):
    client = await client5(nursery, broker, "dev")
    await send5(client, Connect("dev", protocol_level=V5))
    await closed_with(client, rc.PROTOCOL_ERROR)


async def test_section_4_13_server_shutdown_disconnect_0x8b(nursery, broker):
    v5 = await client5(nursery, broker, "v5")
    v311 = await connect_client(nursery, broker)
    await v311.connect("v311")
    with trio.fail_after(5):
        await broker.shutdown(grace=1)
    assert await v5.receive_until_closed() == [Disconnect(rc.SERVER_SHUTTING_DOWN)]
    assert await v311.receive_until_closed() == []  # 3.1.1 has no server DISCONNECT
    assert broker.connections == set()


async def test_MQTT_3_14_2_3_disconnect_reason_string_within_client_maximum_packet_size(
    nursery, broker
):
    client = await client5(nursery, broker, "dev", properties={prop.MAXIMUM_PACKET_SIZE: 16})
    await send5(client, Publish("", b"x", properties={prop.TOPIC_ALIAS: 3}))
    disconnect = await closed_with(client, rc.PROTOCOL_ERROR)
    assert len(encode(disconnect, V5)) <= 16


async def test_MQTT_3_1_2_29_no_reason_string_or_user_properties_on_acks(nursery, broker):
    client = await client5(nursery, broker, "dev",
                           properties={prop.REQUEST_PROBLEM_INFORMATION: 0})
    await send5(client, Publish("t", b"x", qos=1, packet_id=1),
                Publish("t", b"\xff", qos=1, packet_id=2,
                        properties={prop.PAYLOAD_FORMAT_INDICATOR: 1}),
                Unsubscribe(3, ("t",)), PubRel(4),
                Subscribe(5, (Subscription("t", 2),)))
    # Exact packets: no properties at all on any of them.
    assert await client.publishes_until_idle() == [
        PubAck(1, rc.NO_MATCHING_SUBSCRIBERS),
        PubAck(2, rc.PAYLOAD_FORMAT_INVALID),
        UnsubAck(3, (rc.NO_SUBSCRIPTION_EXISTED,)),
        PubComp(4, rc.PACKET_IDENTIFIER_NOT_FOUND),
        SubAck(5, (2,)),
    ]
    await send5(client, Publish("", b"x", properties={prop.TOPIC_ALIAS: 9}))
    await closed_with(client, rc.PROTOCOL_ERROR)


async def test_MQTT_3_9_3_1_suback_codes_in_filter_order(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await send5(sub, Subscribe(3, (Subscription("a", 2), Subscription("b", 0),
                                   Subscription("$share/g/c", 1))))
    assert await sub.receive() == SubAck(3, (2, 0, 1))


async def test_MQTT_3_3_1_3_outgoing_dup_set_only_for_a_retransmission(nursery, broker):
    sub = await client5(nursery, broker, "sub", properties=expiry(100))
    await subscribe5(sub, "t", 1)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", qos=1, packet_id=1, dup=True))
    assert await sub.receive() == Publish("t", b"x", qos=1, packet_id=1)  # DUP 0
    await sub.close()
    back, _ = await connect5(nursery, broker, "sub", clean_session=False)
    # [MQTT-4.4.0-1], [MQTT-3.3.1-1]: resent with DUP 1 and the same packet id.
    assert await back.receive() == Publish("t", b"x", qos=1, packet_id=1, dup=True)


async def test_MQTT_3_1_3_5_client_ids_of_1_to_23_alphanumerics_accepted(nursery, broker):
    for client_id in ("a", "0123456789abcdefghijXYZ"):
        _, connack = await connect5(nursery, broker, client_id)
        assert connack == ConnAck(properties=CAPABILITIES)  # nothing assigned
    assert set(broker.sessions) == {"a", "0123456789abcdefghijXYZ"}


async def test_MQTT_3_1_2_3_reserved_connect_flag_connack_0x81(nursery, broker):
    # [MQTT-3.1.4-1]: an ill-formed CONNECT is refused and the connection closed.
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    await client.send_raw(raw_connect5(0x03, raw_string("dev")))
    assert await client.receive_until_closed() == [ConnAck(return_code=rc.MALFORMED_PACKET)]
    assert broker.sessions == {}


@pytest.mark.parametrize(
    ("where", "wire"),
    [
        # [MQTT-3.1.3-11] Will Topic (flags: Will Flag, Clean Start), then the Will Payload.
        ("will topic", raw_connect5(0x06, raw_string("dev") + b"\x00" + raw_string(b"\xff")
                                    + raw_string(b"m"))),
        # [MQTT-3.1.3-12] User Name.
        ("user name", raw_connect5(0x82, raw_string("dev") + raw_string(b"w\xc3("))),
        # [MQTT-1.5.4-2] U+0000 in the Client Identifier.
        ("client id", raw_connect5(0x02, raw_string(b"d\x00v"))),
    ],
)
async def test_MQTT_1_5_4_1_ill_formed_utf8_in_connect_connack_0x81(nursery, broker, where, wire):
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    await client.send_raw(wire)
    assert await client.receive_until_closed() == [ConnAck(return_code=rc.MALFORMED_PACKET)]


@pytest.mark.parametrize(
    ("where", "wire"),
    [
        ("topic name", raw_frame(0x30, raw_string(b"\xed\xa0\x80") + b"\x00p")),  # [MQTT-3.3.2-1]
        # [MQTT-3.3.2-13] Response Topic, [MQTT-3.3.2-19] Content Type.
        ("response topic", raw_frame(0x30, raw_string("t") + b"\x04\x08\x00\x01\xff" + b"p")),
        ("content type", raw_frame(0x30, raw_string("t") + b"\x04\x03\x00\x01\xc0" + b"p")),
        ("subscribe filter", raw_frame(0x82, b"\x00\x01\x00" + raw_string(b"\xff") + b"\x00")),
        ("unsubscribe filter", raw_frame(0xA2, b"\x00\x01\x00" + raw_string(b"a\x00"))),
        ("reserved disconnect flags", b"\xe2\x00"),  # [MQTT-3.14.1-1]
    ],
)
async def test_MQTT_1_5_4_1_malformed_packets_after_connect_disconnect_0x81(
    nursery, broker, where, wire
):
    client = await client5(nursery, broker, "dev")
    await client.send_raw(wire)
    await closed_with(client, rc.MALFORMED_PACKET)


async def test_MQTT_3_1_4_6_nothing_after_a_refused_connect_is_processed(nursery, broker):
    with_scram_users(broker)
    watcher = await client5(nursery, broker, "watcher")
    await subscribe5(watcher, "t")
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    connect = Connect("dev", protocol_level=V5,
                      properties={prop.AUTHENTICATION_METHOD: "KERBEROS-V9"})
    await client.send_raw(encode(connect, V5) + encode(Publish("t", b"sneaked in"), V5))
    (connack,) = await client.receive_until_closed()
    assert connack.return_code >= 0x80 and connack.session_present is False
    assert await watcher.publishes_until_idle() == []


async def test_MQTT_4_3_2_5_qos1_packet_id_reused_after_puback_is_a_new_message(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "t", 1)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"1", qos=1, packet_id=7))
    assert await pub.receive() == PubAck(7)
    await send5(pub, Publish("t", b"2", qos=1, packet_id=7, dup=True))
    assert await pub.receive() == PubAck(7)
    assert [p.payload for p in await sub.publishes_until_idle()] == [b"1", b"2"]


async def test_MQTT_4_3_3_13_qos2_flow_completes_after_the_message_expired(
    nursery, broker, autojump_clock
):
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", qos=2, packet_id=1,
                             properties={prop.MESSAGE_EXPIRY_INTERVAL: 1}))
    assert await pub.receive() == PubRec(1, rc.NO_MATCHING_SUBSCRIBERS)
    await trio.sleep(10)  # ok: mock clock
    await send5(pub, PubRel(1))
    assert await pub.receive() == PubComp(1)


async def test_MQTT_3_10_4_3_inflight_delivery_completed_after_unsubscribe(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "t", 2)
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("t", b"x", qos=2, packet_id=1))
    assert await sub.receive() == Publish("t", b"x", qos=2, packet_id=1)
    await send5(sub, Unsubscribe(2, ("t",)))
    assert await sub.receive() == UnsubAck(2, (rc.SUCCESS,))
    await send5(sub, PubRec(1))
    assert await sub.receive() == PubRel(1)
    await send5(sub, PubComp(1))
    await send5(pub, Publish("t", b"after", qos=2, packet_id=2))  # [MQTT-3.10.4-2]
    assert await sub.publishes_until_idle() == []
    assert broker.sessions["sub"].inflight == {}


async def test_MQTT_4_7_3_4_no_normalization_of_topics(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "caf\u00e9/+")  # precomposed é
    await subscribe5(sub, "\ufeffb", packet_id=2)  # [MQTT-1.5.4-3]: a BOM is kept
    pub = await client5(nursery, broker, "pub")
    await send5(pub, Publish("cafe\u0301/x", b"decomposed"), Publish("Caf\u00e9/x", b"case"),
                Publish("caf\u00e9/x", b"exact"), Publish("b", b"no bom"),
                Publish("\ufeffb", b"bom"))
    assert await sub.publishes_until_idle() == [Publish("caf\u00e9/x", b"exact"),
                                                Publish("\ufeffb", b"bom")]


@pytest.mark.parametrize("topic_filter", ["$share//t", "$share/g", "$share/g/"])
async def test_MQTT_4_8_2_1_and_MQTT_4_8_2_2_ill_formed_shared_subscription_filter_refused(
    nursery, broker, topic_filter
):
    sub = await client5(nursery, broker, "sub")
    await send5(sub, Subscribe(1, (Subscription(topic_filter, 1),)))
    answer = await sub.receive()
    # Either refused in the SUBACK, or the connection closed as for a malformed packet.
    if isinstance(answer, SubAck):
        assert answer.packet_id == 1 and answer.return_codes[0] >= 0x80, answer
    else:
        assert isinstance(answer, Disconnect) and answer.reason_code >= 0x80, answer
    assert broker.shared_groups == {}


# -- Enhanced authentication (SCRAM-SHA-256, RFC 5802 / RFC 7677) ----------------------------------


class ScramClient:
    """The client side of SCRAM-SHA-256 without channel binding, written from RFC 5802."""

    def __init__(self, user: str, password: str) -> None:
        self.password = password
        self.nonce = secrets.token_urlsafe(18)
        self.first_bare = f"n={user},r={self.nonce}"
        self.expected_server_signature = b""

    def client_first(self) -> bytes:
        return b"n,," + self.first_bare.encode()  # gs2 header: no binding, no authzid

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        fields = dict(part.split("=", 1) for part in text.split(","))
        nonce = fields["r"]
        assert nonce.startswith(self.nonce) and len(nonce) > len(self.nonce)
        salt, iterations = base64.b64decode(fields["s"]), int(fields["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.expected_server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> bool:
        expected = b"v=" + base64.b64encode(self.expected_server_signature)
        return hmac.compare_digest(server_final, expected)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def with_scram_users(broker: Broker) -> Broker:
    users = ScramUserStore()
    users.add("alice", "correct horse")
    broker.authenticators[SCRAM] = ScramSha256(users)
    return broker


async def scram_start(nursery, broker, user: str, password: str):
    """CONNECT with client-first; returns the client, its SCRAM state and the server's AUTH."""
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    scram = ScramClient(user, password)
    await send5(client, Connect("device", protocol_level=V5, properties={
        prop.AUTHENTICATION_METHOD: SCRAM,
        prop.AUTHENTICATION_DATA: scram.client_first(),
    }))
    auth = await client.receive()
    return client, scram, auth


def auth_packet(data: bytes, reason_code: int = rc.CONTINUE_AUTHENTICATION) -> Auth:
    return Auth(reason_code, {prop.AUTHENTICATION_METHOD: SCRAM, prop.AUTHENTICATION_DATA: data})


async def test_MQTT_4_12_0_2_scram_sha_256_exchange(nursery, broker):
    with_scram_users(broker)
    client, scram, auth = await scram_start(nursery, broker, "alice", "correct horse")
    # [MQTT-4.12.0-2]: AUTH 0x18; [MQTT-4.12.0-5]: with the CONNECT's method.
    assert isinstance(auth, Auth) and auth.reason_code == rc.CONTINUE_AUTHENTICATION
    assert set(auth.properties) == {prop.AUTHENTICATION_METHOD, prop.AUTHENTICATION_DATA}
    assert auth.properties[prop.AUTHENTICATION_METHOD] == SCRAM
    await send5(client, auth_packet(scram.client_final(auth.properties[prop.AUTHENTICATION_DATA])))
    connack = await client.receive()
    server_final = connack.properties[prop.AUTHENTICATION_DATA]
    assert connack == ConnAck(properties=CAPABILITIES | {
        prop.AUTHENTICATION_METHOD: SCRAM,
        prop.AUTHENTICATION_DATA: server_final,
    })
    assert scram.verify_server_final(server_final)
    assert "device" in broker.sessions
    await subscribe5(client, "t", 1)
    await send5(client, Publish("t", b"authenticated", qos=1, packet_id=1))
    received = await client.publishes_until_idle()
    assert sorted(received, key=repr) == [
        PubAck(1), Publish("t", b"authenticated", qos=1, packet_id=1)
    ]


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "correct horse")])
async def test_MQTT_4_12_0_4_scram_failure_connack_0x87(nursery, broker, user, password):
    with_scram_users(broker)
    client, scram, auth = await scram_start(nursery, broker, user, password)
    assert auth.reason_code == rc.CONTINUE_AUTHENTICATION  # unknown users get a made-up salt
    await send5(client, auth_packet(scram.client_final(auth.properties[prop.AUTHENTICATION_DATA])))
    # [MQTT-3.2.2-6] Session Present 0; [MQTT-3.2.2-7] then closed.
    assert await client.receive_until_closed() == [ConnAck(return_code=rc.NOT_AUTHORIZED)]
    assert broker.sessions == {}


async def test_MQTT_4_12_0_1_unknown_authentication_method_connack_0x8c(nursery, broker):
    with_scram_users(broker)
    client = await connect_client(nursery, broker)
    client.parser.protocol_level = V5
    await send5(client, Connect("device", protocol_level=V5, properties={
        prop.AUTHENTICATION_METHOD: "KERBEROS-V9",
    }))
    assert await client.receive_until_closed() == [
        ConnAck(return_code=rc.BAD_AUTHENTICATION_METHOD)
    ]
    assert broker.sessions == {}


@pytest.mark.parametrize("error", ["publish before connack", "stalled past connect timeout"])
async def test_MQTT_3_14_0_1_no_disconnect_before_connack_during_authentication(
    nursery, broker, autojump_clock, error
):
    with_scram_users(broker)
    client, _, auth = await scram_start(nursery, broker, "alice", "correct horse")
    assert auth.reason_code == rc.CONTINUE_AUTHENTICATION
    if error == "publish before connack":
        await send5(client, Publish("t", b"x"))  # [MQTT-3.1.2-30]: a Protocol Error
        expected_code = rc.PROTOCOL_ERROR
    else:
        expected_code = rc.MAXIMUM_CONNECT_TIME  # not a CONNACK code: only closing is right
    packets = await client.receive_until_closed(timeout=100)
    assert not any(isinstance(p, Disconnect) for p in packets), packets
    assert packets in ([], [ConnAck(return_code=expected_code)])


async def test_MQTT_4_12_1_2_failed_reauthentication_closes_the_connection(nursery, broker):
    # Re-authentication is not supported: AUTH 0x19 is refused, and the connection closed.
    with_scram_users(broker)
    client, scram, auth = await scram_start(nursery, broker, "alice", "correct horse")
    await send5(client, auth_packet(scram.client_final(auth.properties[prop.AUTHENTICATION_DATA])))
    assert (await client.receive()).return_code == 0
    again = ScramClient("alice", "correct horse")
    await send5(client, auth_packet(again.client_first(), rc.RE_AUTHENTICATE))
    await closed_with(client, rc.PROTOCOL_ERROR)


# -- MQTT 3.1.1 and 5.0 clients together ---------------------------------------------------------


async def test_v5_publisher_with_properties_reaches_a_v311_subscriber(nursery, broker):
    old = await connect_client(nursery, broker)
    await old.connect("old")
    await old.subscribe("t/#", 1)
    pub = await client5(nursery, broker, "pub")
    props = {
        prop.MESSAGE_EXPIRY_INTERVAL: 60,
        prop.CONTENT_TYPE: "text/plain",
        prop.RESPONSE_TOPIC: "r",
        prop.CORRELATION_DATA: b"c",
        prop.USER_PROPERTY: (("k", "v"),),
        prop.TOPIC_ALIAS: 1,
    }
    await send5(pub, Publish("t/a", b"hello", qos=1, packet_id=3, properties=props),
                Publish("", b"again", qos=1, packet_id=4, properties={prop.TOPIC_ALIAS: 1}))
    assert await pub.publishes_until_idle() == [PubAck(3), PubAck(4)]
    # Plain 3.1.1 PUBLISH packets: the parser at level 4 would fail on 5.0 bytes.
    assert await old.publishes_until_idle() == [
        Publish("t/a", b"hello", qos=1, packet_id=1),
        Publish("t/a", b"again", qos=1, packet_id=2),
    ]


async def test_v311_publisher_reaches_a_v5_subscriber(nursery, broker):
    sub = await client5(nursery, broker, "sub")
    await subscribe5(sub, "t/#", 2, sub_id=3)
    old = await connect_client(nursery, broker)
    await old.connect("old")
    await old.send(Publish("t/a", b"hi", qos=2, packet_id=1, retain=True))
    assert await old.receive() == PubRec(1)
    await old.send(PubRel(1))
    assert await old.receive() == PubComp(1)
    assert await sub.receive() == Publish("t/a", b"hi", qos=2, packet_id=1,
                                          properties={prop.SUBSCRIPTION_IDENTIFIER: (3,)})
    # And a 5.0 subscriber joining later gets it as a retained message.
    late = await client5(nursery, broker, "late")
    await subscribe5(late, "t/a")
    assert await late.receive() == Publish("t/a", b"hi", retain=True)


# -- Limits and server overrides ----------------------------------------------------------------


async def test_subscription_limit_answers_quota_exceeded_0x97(nursery, make_broker):
    broker = make_broker(limits=Limits(max_subscriptions_per_client=2))
    client = await client5(nursery, broker, "sub")
    await send5(client, Subscribe(1, (Subscription("a", 1), Subscription("b", 1))))
    assert (await client.receive()).return_codes == (1, 1)
    # A third filter is refused; replacing an existing one is not a new subscription.
    await send5(client, Subscribe(2, (Subscription("c", 1), Subscription("a", 0))))
    assert (await client.receive()).return_codes == (rc.QUOTA_EXCEEDED, 0)
    assert set(broker.sessions["sub"].subscriptions) == {"a", "b"}


async def test_subscription_limit_answers_failure_at_3_1_1(nursery, make_broker):
    broker = make_broker(limits=Limits(max_subscriptions_per_client=1))
    client = await connect_client(nursery, broker)
    await client.connect("old")
    await client.send(Subscribe(1, (Subscription("a", 1), Subscription("b", 1))))
    assert (await client.receive()).return_codes == (1, 0x80)


async def test_MQTT_3_2_2_21_max_keepalive_replaces_a_longer_keep_alive(
    nursery, autojump_clock, make_broker):
    broker = make_broker(limits=Limits(max_keepalive=4))
    client, connack = await connect5(nursery, broker, "dev", keep_alive=600)
    assert connack.properties[prop.SERVER_KEEP_ALIVE] == 4
    start = trio.current_time()
    packets = await client.receive_until_closed(timeout=60)
    assert packets == [Disconnect(rc.KEEP_ALIVE_TIMEOUT, packets[0].properties)]
    assert 6 <= trio.current_time() - start < 6.5  # 1.5 x the server's keep alive


# One configuration for both of Paho's keep-alive tests (max_keepalive as Mosquitto's).
PAHO_KEEPALIVE = {"max_keepalive": 60}


async def test_MQTT_3_2_2_22_a_shorter_keep_alive_stands_and_its_will_follows_silence(
    nursery, autojump_clock, make_broker
):
    # Paho's test_keepalive: asks for 5 s, goes silent; its will comes 7.5 s later.
    broker = make_broker(limits=Limits(**PAHO_KEEPALIVE))
    watcher = await client5(nursery, broker, "watcher", keep_alive=60)
    await subscribe5(watcher, "wills/#")
    _device, connack = await connect5(nursery, broker, "dev", keep_alive=5,
                                     will=Will("wills/dev", b"silent"))
    assert prop.SERVER_KEEP_ALIVE not in connack.properties
    start = trio.current_time()
    assert await watcher.receive(timeout=60) == Publish("wills/dev", b"silent")
    assert 7.5 <= trio.current_time() - start < 8


async def test_MQTT_3_2_2_21_keep_alive_above_max_keepalive_gets_server_keep_alive(
    nursery, autojump_clock, make_broker
):
    # Paho's test_server_keep_alive: asks for 120 with a cap of 60, is told 60.
    broker = make_broker(limits=Limits(**PAHO_KEEPALIVE))
    _, connack = await connect5(nursery, broker, "long", keep_alive=120)
    assert connack.properties[prop.SERVER_KEEP_ALIVE] == 60
    # No keep alive at all is longer than any cap.
    _, connack = await connect5(nursery, broker, "none", keep_alive=0)
    assert connack.properties[prop.SERVER_KEEP_ALIVE] == 60


async def test_max_keepalive_default_admits_any_keep_alive_even_none(nursery, broker):
    for asked in (0, 65535):
        _, connack = await connect5(nursery, broker, f"ka{asked}", keep_alive=asked)
        assert connack.return_code == 0 and prop.SERVER_KEEP_ALIVE not in connack.properties


@pytest.mark.parametrize("asked", [61, 0])
async def test_max_keepalive_refuses_a_longer_311_keep_alive_with_0x02(nursery, asked, make_broker):
    # 3.1.1 has no Server Keep Alive: refused as Mosquitto does (identifier rejected).
    broker = make_broker(limits=Limits(**PAHO_KEEPALIVE))
    client = await connect_client(nursery, broker)
    await client.send(Connect("old", keep_alive=asked))
    assert await client.receive_until_closed() == [ConnAck(return_code=0x02)]
    fine = await connect_client(nursery, broker)
    assert (await fine.connect("fine", keep_alive=60)).return_code == 0
    assert "old" not in broker.sessions


async def test_client_not_reading_large_messages_is_disconnected_0x97(nursery, make_broker):
    broker = make_broker(limits=Limits(max_outgoing_bytes=10_000))
    slow = await connect_client(nursery, broker, lockstep=True)
    slow.parser.protocol_level = V5
    await slow.send(Connect("slow", protocol_level=V5, clean_session=False,
                            properties=expiry(600)), level=V5)
    publisher = await client5(nursery, broker, "pub")
    # Subscribing needs the slow client to read its CONNACK and SUBACK first.
    assert (await slow.receive()).return_code == 0
    await send5(slow, Subscribe(1, (Subscription("big", 1),)))
    assert (await slow.receive()).return_codes == (1,)
    for i in range(5):
        await send5(publisher, Publish("big", b"x" * 8000, qos=1, packet_id=i + 1))
    await publisher.publishes_until_idle()
    packets = await slow.receive_until_closed()
    assert packets[-1].reason_code == rc.QUOTA_EXCEEDED
    assert isinstance(packets[-1], Disconnect)
    # Nothing was acknowledged, so every message waits in the session for a reconnect.
    session = broker.sessions["slow"]
    assert len(session.inflight) + len(session.queued) == 5

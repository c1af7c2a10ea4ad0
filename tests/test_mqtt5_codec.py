"""Tests of the MQTT 5.0 codec: properties, reason codes, every packet at level 5.

Statement ids ([MQTT-x.y.z-n]) and section numbers refer to MQTT Version 5.0
(OASIS Standard, 7 March 2019). Rules without an id are named by section.
"""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.protocols.mqtt import (
    MAX_REMAINING_LENGTH,
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    MalformedPacket,
    MQTTError,
    PacketParser,
    PacketTooLarge,
    PacketType,
    PingReq,
    PingResp,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ServerConnection,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
    encode_properties,
    encode_publish5,
    parse_properties,
    reason_codes,
)
from polybroker.protocols.mqtt import properties as P
from polybroker.protocols.mqtt.properties import WILL

T = PacketType
FAST = settings(max_examples=120, deadline=None)
FUZZ = settings(max_examples=200, deadline=None)

# --- helpers --------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def s(text: str | bytes) -> bytes:
    """A length-prefixed string or Binary Data field."""
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def pb(*props: bytes) -> bytes:
    """A property block: Property Length, then the properties."""
    block = b"".join(props)
    return varint(len(block)) + block


def parse5(data: bytes) -> list:
    parser = PacketParser()
    parser.protocol_level = MQTT_5
    return parser.feed(data)


def parse_one5(data: bytes):
    packets = parse5(data)
    assert len(packets) == 1
    return packets[0]


def feed_chunks5(chunks: list[bytes]) -> list:
    parser = PacketParser()
    parser.protocol_level = MQTT_5
    packets = []
    for chunk in chunks:
        packets += parser.feed(chunk)
    return packets


def connect5_body(flags: int = 0x02, props: bytes = b"\x00", client_id: str = "c") -> bytes:
    return s("MQTT") + bytes((5, flags)) + b"\x00\x3c" + props + s(client_id)


# One well-typed example value per property, as wire bytes (identifier included).
PROP_WIRE = {
    P.PAYLOAD_FORMAT_INDICATOR: b"\x01\x01",
    P.MESSAGE_EXPIRY_INTERVAL: b"\x02\x00\x00\x00\x3c",
    P.CONTENT_TYPE: b"\x03" + s("text/plain"),
    P.RESPONSE_TOPIC: b"\x08" + s("r/t"),
    P.CORRELATION_DATA: b"\x09" + s(b"\x00\xff"),
    P.SUBSCRIPTION_IDENTIFIER: b"\x0b\x05",
    P.SESSION_EXPIRY_INTERVAL: b"\x11\x00\x00\x00\x0a",
    P.ASSIGNED_CLIENT_IDENTIFIER: b"\x12" + s("auto-1"),
    P.SERVER_KEEP_ALIVE: b"\x13\x00\x1e",
    P.AUTHENTICATION_METHOD: b"\x15" + s("SCRAM-SHA-1"),
    P.AUTHENTICATION_DATA: b"\x16" + s(b"data"),
    P.REQUEST_PROBLEM_INFORMATION: b"\x17\x00",
    P.WILL_DELAY_INTERVAL: b"\x18\x00\x00\x00\x05",
    P.REQUEST_RESPONSE_INFORMATION: b"\x19\x01",
    P.RESPONSE_INFORMATION: b"\x1a" + s("resp/"),
    P.SERVER_REFERENCE: b"\x1c" + s("other:1883"),
    P.REASON_STRING: b"\x1f" + s("because"),
    P.RECEIVE_MAXIMUM: b"\x21\x00\x14",
    P.TOPIC_ALIAS_MAXIMUM: b"\x22\x00\x0a",
    P.TOPIC_ALIAS: b"\x23\x00\x01",
    P.MAXIMUM_QOS: b"\x24\x01",
    P.RETAIN_AVAILABLE: b"\x25\x00",
    P.USER_PROPERTY: b"\x26" + s("k") + s("v"),
    P.MAXIMUM_PACKET_SIZE: b"\x27\x00\x00\x10\x00",
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: b"\x28\x01",
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: b"\x29\x01",
    P.SHARED_SUBSCRIPTION_AVAILABLE: b"\x2a\x00",
}

ALL_KINDS = (
    T.CONNECT, T.CONNACK, T.PUBLISH, T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP, T.SUBSCRIBE,
    T.SUBACK, T.UNSUBSCRIBE, T.UNSUBACK, T.DISCONNECT, T.AUTH, WILL,
)


def wire_with_props(kind: int, props: bytes) -> bytes:
    """A valid level-5 packet of ``kind`` whose property block is ``props`` (raw)."""
    block = varint(len(props)) + props
    if kind == T.CONNECT:
        return frame(0x10, connect5_body(props=block))
    if kind == WILL:
        return frame(0x10, connect5_body(0x06) + block + s("w/t") + s("bye"))
    if kind == T.CONNACK:
        return frame(0x20, b"\x00\x00" + block)
    if kind == T.PUBLISH:
        return frame(0x32, s("a/b") + b"\x00\x01" + block + b"payload")
    if kind in (T.PUBACK, T.PUBREC, T.PUBCOMP):
        return frame(kind << 4, b"\x00\x01\x00" + block)
    if kind == T.PUBREL:
        return frame(0x62, b"\x00\x01\x00" + block)
    if kind == T.SUBSCRIBE:
        return frame(0x82, b"\x00\x01" + block + s("a/+") + b"\x01")
    if kind == T.SUBACK:
        return frame(0x90, b"\x00\x01" + block + b"\x01")
    if kind == T.UNSUBSCRIBE:
        return frame(0xA2, b"\x00\x01" + block + s("a/+"))
    if kind == T.UNSUBACK:
        return frame(0xB0, b"\x00\x01" + block + b"\x00")
    if kind == T.DISCONNECT:
        return frame(0xE0, b"\x00" + block)
    assert kind == T.AUTH
    return frame(0xF0, b"\x18" + block)


def props_of(packet) -> dict:
    return packet.will.properties if isinstance(packet, Connect) and packet.will else (
        packet.properties
    )


# --- strategies -------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
name_chars = st.characters(codec="utf-8", exclude_characters="+#\x00")
level_chars = st.characters(codec="utf-8", exclude_characters="+#/\x00")
topic_names = st.text(name_chars, min_size=1, max_size=16)
packet_ids = st.integers(1, 0xFFFF)
payloads = st.binary(max_size=80)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
bits = st.integers(0, 1)

VALUES = {
    P.PAYLOAD_FORMAT_INDICATOR: bits,
    P.MESSAGE_EXPIRY_INTERVAL: u32,
    P.CONTENT_TYPE: text,
    P.RESPONSE_TOPIC: topic_names,
    P.CORRELATION_DATA: st.binary(max_size=16),
    P.SUBSCRIPTION_IDENTIFIER: st.integers(1, P.MAX_VARIABLE_BYTE_INTEGER),
    P.SESSION_EXPIRY_INTERVAL: u32,
    P.ASSIGNED_CLIENT_IDENTIFIER: text,
    P.SERVER_KEEP_ALIVE: u16,
    P.AUTHENTICATION_METHOD: text,
    P.AUTHENTICATION_DATA: st.binary(max_size=16),
    P.REQUEST_PROBLEM_INFORMATION: bits,
    P.WILL_DELAY_INTERVAL: u32,
    P.REQUEST_RESPONSE_INFORMATION: bits,
    P.RESPONSE_INFORMATION: text,
    P.SERVER_REFERENCE: text,
    P.REASON_STRING: text,
    P.RECEIVE_MAXIMUM: st.integers(1, 0xFFFF),
    P.TOPIC_ALIAS_MAXIMUM: u16,
    P.TOPIC_ALIAS: st.integers(1, 0xFFFF),
    P.MAXIMUM_QOS: bits,
    P.RETAIN_AVAILABLE: bits,
    P.USER_PROPERTY: st.lists(st.tuples(text, text), min_size=1, max_size=4).map(tuple),
    P.MAXIMUM_PACKET_SIZE: st.integers(1, 0xFFFF_FFFF),
    P.WILDCARD_SUBSCRIPTION_AVAILABLE: bits,
    P.SUBSCRIPTION_IDENTIFIER_AVAILABLE: bits,
    P.SHARED_SUBSCRIPTION_AVAILABLE: bits,
}


@st.composite
def property_sets(draw, kind: int) -> dict:
    """A random set of the properties allowed in ``kind``, with valid values."""
    chosen = draw(st.lists(st.sampled_from(sorted(P.ALLOWED[kind])), unique=True))
    props = {}
    for ident in chosen:
        if ident == P.SUBSCRIPTION_IDENTIFIER and kind == T.PUBLISH:
            value = tuple(draw(st.lists(VALUES[ident], min_size=1, max_size=3)))
        else:
            value = draw(VALUES[ident])
        props[ident] = value
    if P.AUTHENTICATION_DATA in props and kind == T.CONNECT:
        props.setdefault(P.AUTHENTICATION_METHOD, "m")  # 3.1.2.11.10
    return props


@st.composite
def topic_filters(draw) -> str:
    levels = draw(st.lists(st.one_of(st.just("+"), st.text(level_chars, max_size=5)),
                           min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    topic_filter = "/".join(levels) or "a"
    return draw(st.sampled_from(("", "$share/g/"))) + topic_filter


def codes(kind: int) -> st.SearchStrategy:
    return st.sampled_from(sorted(reason_codes.VALID[kind]))


@st.composite
def connects5(draw) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(draw(topic_names), draw(payloads), draw(st.integers(0, 2)),
                    draw(st.booleans()), draw(property_sets(WILL)))
    return Connect(
        draw(text), MQTT_5, draw(st.booleans()), draw(u16),
        draw(st.none() | text), draw(st.none() | st.binary(max_size=10)),  # 5.0: independent
        will, draw(property_sets(T.CONNECT)),
    )


@st.composite
def connacks5(draw) -> ConnAck:
    code = draw(codes(T.CONNACK))
    return ConnAck(code == 0 and draw(st.booleans()), code, draw(property_sets(T.CONNACK)))


@st.composite
def publishes5(draw) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(property_sets(T.PUBLISH))
    topic = draw(topic_names)
    if P.TOPIC_ALIAS in props and draw(st.booleans()):
        topic = ""  # the alias stands for the topic (3.3.2.3.4)
    return Publish(topic, draw(payloads), qos, draw(st.booleans()),
                   qos > 0 and draw(st.booleans()), draw(packet_ids) if qos else None, props)


@st.composite
def acks5(draw, cls: type, kind: int):
    return cls(draw(packet_ids), draw(codes(kind)), draw(property_sets(kind)))


@st.composite
def subscriptions5(draw) -> Subscription:
    topic_filter = draw(topic_filters())
    no_local = not topic_filter.startswith("$share/") and draw(st.booleans())
    return Subscription(topic_filter, draw(st.integers(0, 2)), no_local, draw(st.booleans()),
                        draw(st.integers(0, 2)))


def packets5() -> st.SearchStrategy:
    """Every packet type but CONNECT and DISCONNECT (they change parser state)."""
    return st.one_of(
        connacks5(),
        publishes5(),
        acks5(PubAck, T.PUBACK),
        acks5(PubRec, T.PUBREC),
        acks5(PubRel, T.PUBREL),
        acks5(PubComp, T.PUBCOMP),
        st.builds(Subscribe, packet_ids, st.lists(subscriptions5(), min_size=1, max_size=3)
                  .map(tuple), property_sets(T.SUBSCRIBE)),
        st.builds(SubAck, packet_ids, st.lists(codes(T.SUBACK), min_size=1, max_size=4)
                  .map(tuple), property_sets(T.SUBACK)),
        st.builds(Unsubscribe, packet_ids, st.lists(topic_filters(), min_size=1, max_size=3)
                  .map(tuple), property_sets(T.UNSUBSCRIBE)),
        st.builds(UnsubAck, packet_ids, st.lists(codes(T.UNSUBACK), min_size=1, max_size=4)
                  .map(tuple), property_sets(T.UNSUBACK)),
        st.builds(Auth, codes(T.AUTH), property_sets(T.AUTH)),
        st.just(PingReq()),
        st.just(PingResp()),
    )


disconnects5 = st.builds(Disconnect, codes(T.DISCONNECT), property_sets(T.DISCONNECT))


@st.composite
def streams5(draw) -> list:
    """A level-5 packet sequence: [CONNECT] packets... [DISCONNECT]."""
    stream = draw(st.lists(packets5(), max_size=5))
    if draw(st.booleans()):
        stream.insert(0, draw(connects5()))
    if draw(st.booleans()):
        stream.append(draw(disconnects5))
    return stream


# --- tables: properties (table 2.4) and reason codes (table 2.6 / chapter 3) ------------

# Transcribed independently of properties.py: id -> (data type, where allowed).
B, U2, U4, VBI, STR, BIN, PAIR = (
    P.DataType.BYTE, P.DataType.TWO_BYTE_INTEGER, P.DataType.FOUR_BYTE_INTEGER,
    P.DataType.VARIABLE_BYTE_INTEGER, P.DataType.UTF8_STRING, P.DataType.BINARY_DATA,
    P.DataType.UTF8_STRING_PAIR,
)
ACKS = {T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP}
TABLE_2_4 = {
    0x01: (B, {T.PUBLISH, WILL}),
    0x02: (U4, {T.PUBLISH, WILL}),
    0x03: (STR, {T.PUBLISH, WILL}),
    0x08: (STR, {T.PUBLISH, WILL}),
    0x09: (BIN, {T.PUBLISH, WILL}),
    0x0B: (VBI, {T.PUBLISH, T.SUBSCRIBE}),
    0x11: (U4, {T.CONNECT, T.CONNACK, T.DISCONNECT}),
    0x12: (STR, {T.CONNACK}),
    0x13: (U2, {T.CONNACK}),
    0x15: (STR, {T.CONNECT, T.CONNACK, T.AUTH}),
    0x16: (BIN, {T.CONNECT, T.CONNACK, T.AUTH}),
    0x17: (B, {T.CONNECT}),
    0x18: (U4, {WILL}),
    0x19: (B, {T.CONNECT}),
    0x1A: (STR, {T.CONNACK}),
    0x1C: (STR, {T.CONNACK, T.DISCONNECT}),
    0x1F: (STR, {T.CONNACK, *ACKS, T.SUBACK, T.UNSUBACK, T.DISCONNECT, T.AUTH}),
    0x21: (U2, {T.CONNECT, T.CONNACK}),
    0x22: (U2, {T.CONNECT, T.CONNACK}),
    0x23: (U2, {T.PUBLISH}),
    0x24: (B, {T.CONNACK}),
    0x25: (B, {T.CONNACK}),
    0x26: (PAIR, {T.CONNECT, T.CONNACK, T.PUBLISH, WILL, *ACKS, T.SUBSCRIBE, T.SUBACK,
                  T.UNSUBSCRIBE, T.UNSUBACK, T.DISCONNECT, T.AUTH}),
    0x27: (U4, {T.CONNECT, T.CONNACK}),
    0x28: (B, {T.CONNACK}),
    0x29: (B, {T.CONNACK}),
    0x2A: (B, {T.CONNACK}),
}


def test_property_table_matches_table_2_4():
    assert set(P.TABLE) == set(TABLE_2_4) == set(VALUES) == set(PROP_WIRE)
    for ident, (dtype, kinds) in TABLE_2_4.items():
        assert P.DATA_TYPES[ident] == dtype, P.NAMES[ident]
        assert {k for k in ALL_KINDS if ident in P.ALLOWED[k]} == kinds, P.NAMES[ident]
    assert not P.ALLOWED[T.PINGREQ] and not P.ALLOWED[T.PINGRESP]


# Per-packet reason code tables of chapter 3 (3.1, 3.4-3.7, 3.8, 3.9, 3.10, 3.11).
CHAPTER_3_CODES = {
    T.CONNACK: {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
                0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F},
    T.PUBACK: {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99},
    T.PUBREC: {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99},
    T.PUBREL: {0x00, 0x92},
    T.PUBCOMP: {0x00, 0x92},
    T.SUBACK: {0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2},
    T.UNSUBACK: {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91},
    T.DISCONNECT: {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8C, 0x8D, 0x8E,
                   0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C,
                   0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2},
    T.AUTH: {0x00, 0x18, 0x19},
}


def test_reason_code_tables_match_chapter_3():
    for kind, expected in CHAPTER_3_CODES.items():
        assert reason_codes.VALID[kind] == expected, kind.name
    for kind in (T.CONNECT, T.PUBLISH, T.SUBSCRIBE, T.UNSUBSCRIBE, T.PINGREQ, T.PINGRESP):
        assert not reason_codes.VALID[kind]
    assert reason_codes.PACKET_TOO_LARGE == 0x95
    assert reason_codes.name(0, T.DISCONNECT) == "Normal disconnection"
    assert reason_codes.name(0x87) == "Not authorized"
    assert not reason_codes.is_valid(T.PUBREL, 0x80)


# --- round trips --------------------------------------------------------------------------


def full_props(kind: int) -> dict:
    """Every property allowed in ``kind`` (parsed from PROP_WIRE), user property twice."""
    wire = b"".join(PROP_WIRE[i] for i in sorted(P.ALLOWED[kind]))
    wire += b"\x26" + s("k") + s("v2")
    if kind == T.PUBLISH:
        wire += b"\x0b\x81\x01"  # a second Subscription Identifier (129)
    return parse_properties(wire, kind)


def all_property_samples() -> list:
    return [
        Connect("cli", MQTT_5, False, 30, "u", b"p", Will("w/t", b"bye", 2, True,
                full_props(WILL)), full_props(T.CONNECT)),
        ConnAck(False, 0x8C, full_props(T.CONNACK)),
        Publish("a/b", b"payload", 1, True, True, 7, full_props(T.PUBLISH)),
        Publish("", b"", 0, properties=full_props(T.PUBLISH)),
        PubAck(1, 0x10, full_props(T.PUBACK)),
        PubRec(2, 0x97, full_props(T.PUBREC)),
        PubRel(3, 0x92, full_props(T.PUBREL)),
        PubComp(4, 0x00, full_props(T.PUBCOMP)),
        Subscribe(5, (Subscription("a/#", 2, True, True, 2), Subscription("$share/g/b", 1)),
                  full_props(T.SUBSCRIBE)),
        SubAck(5, (2, 0x80, 0xA1), full_props(T.SUBACK)),
        Unsubscribe(6, ("a/#", "$share/g/b"), full_props(T.UNSUBSCRIBE)),
        UnsubAck(6, (0x00, 0x11), full_props(T.UNSUBACK)),
        PingReq(),
        PingResp(),
        Auth(0x19, full_props(T.AUTH)),
        Disconnect(0x9C, full_props(T.DISCONNECT)),
    ]


@pytest.mark.parametrize("packet", all_property_samples(), ids=lambda p: type(p).__name__)
def test_round_trip_every_packet_with_all_allowed_properties(packet):
    if not isinstance(packet, PingReq | PingResp):
        kind = getattr(T, type(packet).__name__.upper())
        assert set(packet.properties) == P.ALLOWED[kind]
    if isinstance(packet, Connect):
        assert set(packet.will.properties) == P.ALLOWED[WILL]
    wire = encode(packet, MQTT_5)
    assert parse_one5(wire) == packet
    assert encode(parse_one5(wire), MQTT_5) == wire


@FAST
@given(st.one_of(packets5(), connects5(), disconnects5))
def test_round_trip_property(packet):
    assert parse_one5(encode(packet, MQTT_5)) == packet


@settings(max_examples=60, deadline=None)
@given(streams5(), st.data())
def test_any_split_gives_the_same_packets(stream, data):
    wire = b"".join(encode(p, MQTT_5) for p in stream)
    assert feed_chunks5([wire]) == stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert feed_chunks5(chunks) == stream
    assert feed_chunks5([wire[i : i + 1] for i in range(len(wire))]) == stream


def test_level_5_connect_switches_a_fresh_parser_to_5_within_one_chunk():
    connect = Connect("c", MQTT_5, properties={P.RECEIVE_MAXIMUM: 10})
    puback = PubAck(1, 0x10, {P.REASON_STRING: "no one"})
    parser = PacketParser()  # starts at 3.1.1
    wire = encode(connect) + encode(puback, MQTT_5)
    assert parser.feed(wire) == [connect, puback]
    assert parser.protocol_level == MQTT_5


@FAST
@given(publishes5())
def test_encode_publish5_matches_encode(p):
    props = encode_properties(p.properties, T.PUBLISH)
    fast = encode_publish5(p.topic.encode(), p.payload, p.qos, p.retain, p.dup, p.packet_id, props)
    assert fast == encode(p, MQTT_5)


@FAST
@given(st.sampled_from(ALL_KINDS).flatmap(lambda k: st.tuples(st.just(k), property_sets(k))))
def test_properties_round_trip(kind_and_props):
    kind, props = kind_and_props
    assert parse_properties(encode_properties(props, kind), kind) == props


def test_MQTT_3_3_2_18_user_properties_keep_wire_order_and_duplicates():
    wire = b"".join(b"\x26" + s(k) + s(v) for k, v in [("b", "1"), ("a", "2"), ("b", "0")])
    props = parse_properties(wire + b"\x01\x00" + b"\x26" + s("z") + s(""), T.PUBLISH)
    assert props[P.USER_PROPERTY] == (("b", "1"), ("a", "2"), ("b", "0"), ("z", ""))
    assert list(props) == [P.USER_PROPERTY, P.PAYLOAD_FORMAT_INDICATOR]  # first appearance
    assert encode_properties(props, T.PUBLISH) == b"".join(
        b"\x26" + s(k) + s(v) for k, v in props[P.USER_PROPERTY]
    ) + b"\x01\x00"


def test_MQTT_3_3_4_4_multiple_subscription_identifiers_in_publish():
    wire = frame(0x30, s("t") + pb(b"\x0b\x01", b"\x0b\xff\xff\xff\x7f", b"\x0b\x01") + b"x")
    packet = parse_one5(wire)
    assert packet.properties == {P.SUBSCRIPTION_IDENTIFIER: (1, P.MAX_VARIABLE_BYTE_INTEGER, 1)}
    assert encode(packet, MQTT_5) == wire
    # A single identifier is still a tuple in PUBLISH; an int is accepted when encoding.
    assert parse_one5(frame(0x30, s("t") + pb(b"\x0b\x05"))).properties == {0x0B: (5,)}
    single = frame(0x30, s("t") + pb(b"\x0b\x05"))
    assert encode(Publish("t", properties={0x0B: 5}), MQTT_5) == single


def test_subscription_identifier_in_subscribe_is_a_single_int():
    wire = frame(0x82, b"\x00\x01" + pb(b"\x0b\x80\x01") + s("a") + b"\x00")
    assert parse_one5(wire).properties == {P.SUBSCRIPTION_IDENTIFIER: 128}


# --- byte-exact encodings ------------------------------------------------------------------


def test_connect_variable_header_example_figure_3_6():
    # Figure 3-6: MQTT level 5, flags 0xCE, keep alive 10, Session Expiry Interval 10.
    variable_header = bytes.fromhex("0004 4d515454 05 ce 000a 05 11 0000000a")
    payload = (
        s("cli")
        + pb(b"\x18\x00\x00\x00\x3c")  # will properties: Will Delay Interval 60
        + s("w/t") + s("bye") + s("user") + s("pass")
    )
    wire = frame(0x10, variable_header + payload)
    packet = Connect("cli", MQTT_5, True, 10, "user", b"pass",
                     Will("w/t", b"bye", 1, False, {P.WILL_DELAY_INTERVAL: 60}),
                     {P.SESSION_EXPIRY_INTERVAL: 10})
    assert encode(packet) == wire
    assert parse_one5(wire) == packet


def test_minimal_connect_bytes():
    wire = bytes.fromhex("100d 00044d515454 05 02 003c 00 0000")
    assert PacketParser().feed(wire) == [Connect("", MQTT_5, True, 60)]
    assert encode(Connect("", MQTT_5, True, 60)) == wire


def test_publish_variable_header_example_figure_3_9():
    # Topic "a/b", packet identifier 10, no properties.
    wire = bytes.fromhex("320a 0003612f62 000a 00 6869")
    packet = Publish("a/b", b"hi", 1, packet_id=10)
    assert encode(packet, MQTT_5) == wire
    assert encode_publish5(b"a/b", b"hi", 1, False, False, 10, b"") == wire
    assert parse_one5(wire) == packet


def test_subscribe_examples_figures_3_19_and_3_21():
    # Packet identifier 10, no properties; "a/b" QoS 1 and "c/d" QoS 2.
    wire = bytes.fromhex("820f 000a 00 0003612f62 01 0003632f64 02")
    packet = Subscribe(10, (Subscription("a/b", 1), Subscription("c/d", 2)))
    assert encode(packet, MQTT_5) == wire
    assert parse_one5(wire) == packet


def test_subscription_options_byte_figure_3_20():
    # Bits: Retain Handling 5-4, RAP 3, NL 2, QoS 1-0.
    wire = frame(0x82, b"\x00\x01\x00" + s("a") + b"\x2e")  # RH 2, RAP, NL, QoS 2
    assert parse_one5(wire).subscriptions == (Subscription("a", 2, True, True, 2),)
    assert encode(Subscribe(1, (Subscription("a", 0, False, False, 1),)), MQTT_5)[-1] == 0x10


def test_unsubscribe_payload_example_figure_3_30():
    wire = bytes.fromhex("a20d 0001 00 0003612f62 0003632f64")
    assert parse_one5(wire) == Unsubscribe(1, ("a/b", "c/d"))
    assert encode(Unsubscribe(1, ("a/b", "c/d")), MQTT_5) == wire


def test_connack_suback_unsuback_bytes():
    assert encode(ConnAck(True, 0), MQTT_5) == b"\x20\x03\x01\x00\x00"
    connack = ConnAck(False, 0, {P.ASSIGNED_CLIENT_IDENTIFIER: "x", P.MAXIMUM_QOS: 1})
    assert encode(connack, MQTT_5) == b"\x20\x09\x00\x00\x06\x12\x00\x01x\x24\x01"
    assert encode(SubAck(1, (0, 1, 0x87)), MQTT_5) == b"\x90\x06\x00\x01\x00\x00\x01\x87"
    assert encode(UnsubAck(1, (0x11,)), MQTT_5) == b"\xb0\x04\x00\x01\x00\x11"


def test_disconnect_example_figure_3_24_and_short_forms():
    # Reason 0x00, properties: Session Expiry Interval 0.
    wire = bytes.fromhex("e007 00 05 1100000000")
    assert parse_one5(wire) == Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 0})
    assert encode(Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 0}), MQTT_5) == wire
    assert encode(Disconnect(), MQTT_5) == b"\xe0\x00"
    assert encode(Disconnect(0x04), MQTT_5) == b"\xe0\x01\x04"


def test_auth_bytes():
    assert encode(Auth(), MQTT_5) == b"\xf0\x00"
    auth = Auth(0x18, {P.AUTHENTICATION_METHOD: "m", P.AUTHENTICATION_DATA: b"\x01"})
    assert encode(auth, MQTT_5) == b"\xf0\x0a\x18\x08\x15\x00\x01m\x16\x00\x01\x01"


# --- acknowledgement forms (3.4.2.1 and the same for PUBREC, PUBREL, PUBCOMP) ----------------

ACK_TYPES = [(PubAck, 0x40, 0x10), (PubRec, 0x50, 0x10), (PubRel, 0x62, 0x92),
             (PubComp, 0x70, 0x92)]
ACK_IDS = ["PUBACK", "PUBREC", "PUBREL", "PUBCOMP"]


@pytest.mark.parametrize(("cls", "first", "code"), ACK_TYPES, ids=ACK_IDS)
def test_MQTT_3_4_2_1_ack_two_three_and_four_byte_forms(cls, first, code):
    # Remaining length 2: Success, no properties.
    assert parse_one5(bytes((first, 2, 0, 9))) == cls(9)
    assert encode(cls(9), MQTT_5) == bytes((first, 2, 0, 9))
    # 3: a reason code, no Property Length.
    assert parse_one5(bytes((first, 3, 0, 9, code))) == cls(9, code)
    assert encode(cls(9, code), MQTT_5) == bytes((first, 3, 0, 9, code))
    # 4: reason code and an empty property block; also Success spelled out.
    assert parse_one5(bytes((first, 4, 0, 9, code, 0))) == cls(9, code)
    assert parse_one5(bytes((first, 4, 0, 9, 0, 0))) == cls(9)
    # More: with properties.
    wire = frame(first, b"\x00\x09" + bytes((code,)) + pb(b"\x1f" + s("why")))
    assert parse_one5(wire) == cls(9, code, {P.REASON_STRING: "why"})
    assert encode(cls(9, code, {P.REASON_STRING: "why"}), MQTT_5) == wire


@pytest.mark.parametrize(("cls", "first", "code"), ACK_TYPES, ids=ACK_IDS)
def test_ack_malformed_forms(cls, first, code):
    for body in (b"", b"\x00"):  # remaining length below 2
        with pytest.raises(MalformedPacket):
            parse5(frame(first, body))
    with pytest.raises(MalformedPacket):  # packet identifier 0
        parse5(frame(first, b"\x00\x00"))
    with pytest.raises(MalformedPacket):  # property length beyond the packet
        parse5(frame(first, b"\x00\x01\x00\x05\x1f"))
    with pytest.raises(MalformedPacket):  # bytes after the properties
        parse5(frame(first, b"\x00\x01\x00\x00\x00"))


@pytest.mark.parametrize(
    ("first", "bad", "statement"),
    [(0x40, 0x92, "MQTT-3.4.2-1"), (0x50, 0x01, "MQTT-3.5.2-1"), (0x62, 0x80, "MQTT-3.6.2-1"),
     (0x70, 0x10, "MQTT-3.7.2-1")],
)
def test_ack_reason_code_not_in_its_table_is_a_protocol_error(first, bad, statement):
    with pytest.raises(ProtocolError, match=statement):
        parse5(bytes((first, 3, 0, 1, bad)))


# --- properties: errors --------------------------------------------------------------------

NOT_ALLOWED = [
    (kind, ident) for kind in ALL_KINDS for ident in sorted(P.TABLE) if ident not in P.ALLOWED[kind]
]


@pytest.mark.parametrize(
    ("kind", "ident"), NOT_ALLOWED, ids=[f"{P.kind_name(k)}-{i:#04x}" for k, i in NOT_ALLOWED]
)
def test_section_2_2_2_2_property_not_valid_for_the_packet_is_malformed(kind, ident):
    with pytest.raises(MalformedPacket, match=r"not valid"):
        parse5(wire_with_props(kind, PROP_WIRE[ident]))
    source = [k for k in ALL_KINDS if ident in P.ALLOWED[k]][-1]  # AUTH for 0x16, not CONNECT
    with pytest.raises(ValueError):
        encode_properties(parse_properties(PROP_WIRE[ident], source), kind)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=P.kind_name)
def test_every_allowed_property_parses_in_a_real_packet(kind):
    wire = wire_with_props(kind, b"".join(PROP_WIRE[i] for i in sorted(P.ALLOWED[kind])))
    (packet,) = parse5(wire)
    assert set(props_of(packet)) == P.ALLOWED[kind]


@pytest.mark.parametrize("ident", [0x00, 0x04, 0x0A, 0x14, 0x2B, 0x7F])
def test_section_2_2_2_2_unknown_property_identifier_is_malformed(ident):
    with pytest.raises(MalformedPacket):
        parse5(wire_with_props(T.PUBLISH, bytes((ident, 0))))


def test_multi_byte_property_identifier_is_malformed():
    # Identifiers are Variable Byte Integers, but every defined one is one byte.
    with pytest.raises(MalformedPacket):
        parse5(wire_with_props(T.PUBLISH, b"\x81\x00\x00"))


DUPLICABLE_ONCE = [
    (kind, ident) for kind in ALL_KINDS for ident in sorted(P.ALLOWED[kind])
    if not P.is_repeatable(ident, kind)
]


@pytest.mark.parametrize(
    ("kind", "ident"), DUPLICABLE_ONCE,
    ids=[f"{P.kind_name(k)}-{i:#04x}" for k, i in DUPLICABLE_ONCE],
)
def test_single_property_twice_is_a_protocol_error(kind, ident):
    # "It is a Protocol Error to include the <property> more than once" (chapter 3).
    extra = PROP_WIRE[P.AUTHENTICATION_METHOD] if ident == P.AUTHENTICATION_DATA else b""
    with pytest.raises(ProtocolError, match=r"more than once"):
        parse5(wire_with_props(kind, extra + PROP_WIRE[ident] * 2))


@pytest.mark.parametrize(
    ("kind", "prop", "why"),
    [
        (T.PUBLISH, b"\x01\x02", "Payload Format Indicator 2"),
        (WILL, b"\x01\xff", "Payload Format Indicator 255"),
        (T.CONNECT, b"\x17\x02", "Request Problem Information 2 (3.1.2.11.7)"),
        (T.CONNECT, b"\x19\x02", "Request Response Information 2 (3.1.2.11.6)"),
        (T.CONNECT, b"\x21\x00\x00", "Receive Maximum 0 (3.1.2.11.3)"),
        (T.CONNACK, b"\x21\x00\x00", "Receive Maximum 0 (3.2.2.3.3)"),
        (T.CONNECT, b"\x27\x00\x00\x00\x00", "Maximum Packet Size 0 (3.1.2.11.4)"),
        (T.CONNACK, b"\x27\x00\x00\x00\x00", "Maximum Packet Size 0 (3.2.2.3.6)"),
        (T.CONNACK, b"\x24\x02", "Maximum QoS 2 (3.2.2.3.4)"),
        (T.CONNACK, b"\x25\x02", "Retain Available 2 (3.2.2.3.5)"),
        (T.CONNACK, b"\x28\x02", "Wildcard Subscription Available 2 (3.2.2.3.11)"),
        (T.CONNACK, b"\x29\x02", "Subscription Identifier Available 2 (3.2.2.3.12)"),
        (T.CONNACK, b"\x2a\x02", "Shared Subscription Available 2 (3.2.2.3.13)"),
        (T.PUBLISH, b"\x0b\x00", "Subscription Identifier 0 (3.3.2.3.8)"),
        (T.SUBSCRIBE, b"\x0b\x00", "Subscription Identifier 0 (3.8.2.1.2)"),
        (T.PUBLISH, b"\x23\x00\x00", "Topic Alias 0 [MQTT-3.3.2-8]"),
        (T.PUBLISH, b"\x08" + s("a/+"), "Response Topic with a wildcard [MQTT-3.3.2-14]"),
        (WILL, b"\x08" + s("#"), "Will Response Topic with a wildcard"),
        (T.PUBLISH, b"\x08" + s(""), "empty Response Topic [MQTT-4.7.3-1]"),
        (T.CONNECT, b"\x16" + s(b"x"), "Authentication Data without Method (3.1.2.11.10)"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_property_value_out_of_range_is_a_protocol_error(kind, prop, why):
    with pytest.raises(ProtocolError):
        parse5(wire_with_props(kind, prop))
    with pytest.raises(ProtocolError):
        parse_properties(prop, kind)


@pytest.mark.parametrize(
    "prop",
    [
        b"\x02\x00\x00\x00",  # Four Byte Integer cut short
        b"\x23\x00",  # Two Byte Integer cut short
        b"\x01",  # Byte missing
        b"\x03\x00",  # string length cut short
        b"\x03\x00\x05abc",  # string shorter than its length
        b"\x09\x00\x03\x00",  # Binary Data shorter than its length
        b"\x26\x00\x01k",  # string pair without its value
        b"\x26\x00\x01k\x00\x02v",  # string pair value cut short
        b"\x0b\x80",  # Variable Byte Integer cut short
        b"\x0b\x80\x80\x80\x80\x01",  # five bytes (1.5.5)
        b"\x0b\x81\x00",  # not minimally encoded [MQTT-1.5.5-1]
    ],
)
def test_truncated_or_bad_property_values_are_malformed(prop):
    with pytest.raises(MalformedPacket):
        parse5(wire_with_props(T.PUBLISH, prop))
    with pytest.raises(MalformedPacket):
        parse_properties(prop, T.PUBLISH)


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x00"])
@pytest.mark.parametrize("prop", [0x03, 0x26], ids=["string", "string-pair"])
def test_MQTT_1_5_4_1_and_MQTT_1_5_7_1_ill_formed_utf8_or_u0000_in_properties_is_malformed(
    raw, prop):
    value = s(raw) if prop == 0x03 else s("k") + s(raw)
    with pytest.raises(MalformedPacket):
        parse5(wire_with_props(T.PUBLISH, bytes((prop,)) + value))
    if prop == 0x26:  # the name of the pair as well
        with pytest.raises(MalformedPacket):
            parse5(wire_with_props(T.PUBLISH, b"\x26" + s(raw) + s("v")))


def test_property_length_beyond_the_packet_is_malformed():
    with pytest.raises(MalformedPacket):
        parse5(frame(0x30, s("t") + b"\x05\x01\x00"))
    with pytest.raises(MalformedPacket):
        parse5(frame(0xE0, b"\x00\x03\x11\x00"))


@pytest.mark.parametrize("length", [b"\x80\x80\x80\x80\x01", b"\x80\x00", b"\x80"])
def test_MQTT_1_5_5_1_bad_property_length_varint_is_malformed(length):
    with pytest.raises(MalformedPacket):
        parse5(frame(0x30, s("t") + length))
    with pytest.raises(MalformedPacket):
        parse5(frame(0x82, b"\x00\x01" + length + s("a") + b"\x00"))


def test_MQTT_2_2_2_1_missing_property_length_is_malformed():
    for wire in [
        frame(0x10, connect5_body(props=b"")[:-3]),  # ends after keep alive
        frame(0x20, b"\x00\x00"),
        frame(0x30, s("t")),
        frame(0x32, s("t") + b"\x00\x01"),
        frame(0x82, b"\x00\x01"),
        frame(0x90, b"\x00\x01"),
        frame(0xA2, b"\x00\x01"),
        frame(0xB0, b"\x00\x01"),
        frame(0xF0, b"\x18"),  # AUTH: only reason and length together may go (3.15.2.1)
    ]:
        with pytest.raises(MalformedPacket):
            parse5(wire)


# --- CONNECT ---------------------------------------------------------------------------------


def test_connect_level_5_properties_and_will_properties():
    wire = frame(
        0x10,
        s("MQTT") + b"\x05\x2c\x00\x00"  # will flag, will QoS 1, will retain
        + pb(PROP_WIRE[P.RECEIVE_MAXIMUM], PROP_WIRE[P.USER_PROPERTY])
        + s("id") + pb(PROP_WIRE[P.WILL_DELAY_INTERVAL], PROP_WIRE[P.CONTENT_TYPE])
        + s("will/t") + s(b"\x00gone"),
    )
    assert parse_one5(wire) == Connect(
        "id", MQTT_5, False, 0, None, None,
        Will("will/t", b"\x00gone", 1, True,
             {P.WILL_DELAY_INTERVAL: 5, P.CONTENT_TYPE: "text/plain"}),
        {P.RECEIVE_MAXIMUM: 20, P.USER_PROPERTY: (("k", "v"),)},
    )


def test_section_3_1_2_9_connect_password_without_user_name_is_allowed_at_5():
    wire = frame(0x10, connect5_body(0x42) + s(b"token"))
    assert parse_one5(wire) == Connect("c", MQTT_5, True, 60, None, b"token")


def test_MQTT_3_1_2_3_connect_reserved_flag_is_malformed():
    with pytest.raises(MalformedPacket, match=r"MQTT-3.1.2-3"):
        parse5(frame(0x10, connect5_body(0x03)))


@pytest.mark.parametrize(("flags", "statement"), [(0x0A, "MQTT-3.1.2-11"), (0x12, "MQTT-3.1.2-11"),
                                                  (0x22, "MQTT-3.1.2-13")])
def test_will_qos_or_retain_without_will_flag_is_malformed(flags, statement):
    with pytest.raises(MalformedPacket, match=statement):
        parse5(frame(0x10, connect5_body(flags)))


def test_MQTT_3_1_2_12_will_qos_3_is_malformed():
    with pytest.raises(MalformedPacket, match=r"MQTT-3.1.2-12"):
        parse5(frame(0x10, connect5_body(0x1E) + b"\x00" + s("w") + s("m")))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00" + s("w"),  # will properties and topic, no will payload [MQTT-3.1.2-9]
        s("w") + s("m"),  # no will properties (the 3.1.1 layout) [MQTT-3.1.3-1]
        b"",  # nothing at all
    ],
)
def test_MQTT_3_1_2_9_will_fields_must_all_be_present(payload):
    with pytest.raises(MalformedPacket):
        parse5(frame(0x10, connect5_body(0x06) + payload))


@pytest.mark.parametrize(
    ("flags", "fields"),
    [(0x82, b""), (0x42, b""), (0x02, s("u")), (0xC2, s("u"))],
    ids=["MQTT-3.1.2-17", "MQTT-3.1.2-19", "MQTT-3.1.2-16", "MQTT-3.1.2-19-missing"],
)
def test_user_name_and_password_follow_their_flags(flags, fields):
    with pytest.raises(MalformedPacket):
        parse5(frame(0x10, connect5_body(flags) + fields))


def test_section_4_13_1_connect_errors_carry_the_protocol_level_for_the_connack():
    with pytest.raises(ProtocolError) as info:
        parse5(frame(0x10, connect5_body(props=pb(b"\x21\x00\x00"))))
    assert info.value.protocol_level == MQTT_5 and info.value.reason_code == 0x82
    with pytest.raises(MalformedPacket) as info:
        PacketParser().feed(frame(0x10, connect5_body(0x03)))
    assert info.value.protocol_level == MQTT_5 and info.value.reason_code == 0x81
    with pytest.raises(MalformedPacket) as info:
        PacketParser().feed(frame(0x10, s("MQTT") + b"\x04\x03\x00\x00" + s("c")))
    assert info.value.protocol_level == MQTT_3_1_1


def test_unsupported_level_is_still_refused():
    with pytest.raises(MQTTError) as info:
        PacketParser().feed(frame(0x10, s("MQTT") + b"\x06\x02\x00\x3c\x00" + s("c")))
    assert info.value.connack_code == 0x01 and info.value.protocol_level is None


# --- CONNACK -------------------------------------------------------------------------------


def test_MQTT_3_2_2_1_connack_reserved_flags_are_malformed():
    with pytest.raises(MalformedPacket, match=r"MQTT-3.2.2-1"):
        parse5(frame(0x20, b"\x02\x00\x00"))


def test_MQTT_3_2_2_6_connack_session_present_with_error_code_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"MQTT-3.2.2-6"):
        parse5(frame(0x20, b"\x01\x80\x00"))


@pytest.mark.parametrize("code", [0x01, 0x05, 0x04, 0x8B, 0x8E, 0xA2, 0xFF])
def test_MQTT_3_2_2_8_connack_code_outside_table_3_1_is_a_protocol_error(code):
    with pytest.raises(ProtocolError, match=r"MQTT-3.2.2-8"):
        parse5(frame(0x20, bytes((0, code, 0))))


# --- PUBLISH -------------------------------------------------------------------------------


def test_MQTT_3_3_1_4_publish_qos_3_is_malformed():
    with pytest.raises(MalformedPacket, match=r"MQTT-3.3.1-4"):
        parse5(frame(0x36, s("a") + b"\x00\x01\x00"))


def test_MQTT_3_3_1_2_publish_dup_on_qos_0_is_malformed():
    with pytest.raises(MalformedPacket, match=r"MQTT-3.3.1-2"):
        parse5(frame(0x38, s("a") + b"\x00"))


@pytest.mark.parametrize("topic", ["a/+", "#", "a/#"])
def test_MQTT_3_3_2_2_publish_wildcard_topic_is_malformed(topic):
    with pytest.raises(MalformedPacket, match=r"MQTT-3.3.2-2"):
        parse5(frame(0x30, s(topic) + b"\x00"))


def test_section_3_3_2_1_publish_empty_topic_needs_a_topic_alias():
    with pytest.raises(ProtocolError):
        parse5(frame(0x30, s("") + b"\x00payload"))
    aliased = parse_one5(frame(0x30, s("") + pb(b"\x23\x00\x07") + b"payload"))
    assert aliased == Publish("", b"payload", properties={P.TOPIC_ALIAS: 7})


def test_MQTT_2_2_1_3_publish_packet_id_0_is_malformed():
    with pytest.raises(MalformedPacket):
        parse5(frame(0x32, s("a") + b"\x00\x00\x00"))


def test_publish_payload_follows_the_properties():
    wire = frame(0x34, s("a") + b"\x00\x02" + pb(b"\x02\x00\x00\x00\x01") + b"\x00\x01body")
    assert parse_one5(wire) == Publish(
        "a", b"\x00\x01body", 2, packet_id=2, properties={P.MESSAGE_EXPIRY_INTERVAL: 1}
    )


def test_publish_with_long_property_block():
    props = {P.USER_PROPERTY: tuple((f"k{i}", "v" * 20) for i in range(20))}
    packet = Publish("t", b"x", properties=props)
    wire = encode(packet, MQTT_5)
    assert wire[6:8] == b"\xa6\x04"  # a two-byte Property Length (550)
    assert parse_one5(wire) == packet


# --- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK ---------------------------------------------


@pytest.mark.parametrize("options", [0x40, 0x80, 0xC0, 0x41])
def test_MQTT_3_8_3_5_subscribe_reserved_option_bits_malformed(options):
    with pytest.raises(MalformedPacket, match=r"MQTT-3.8.3-5"):
        parse5(frame(0x82, b"\x00\x01\x00" + s("a") + bytes((options,))))


def test_section_3_8_3_1_subscribe_maximum_qos_3_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        parse5(frame(0x82, b"\x00\x01\x00" + s("a") + b"\x03"))


def test_section_3_8_3_1_subscribe_retain_handling_3_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        parse5(frame(0x82, b"\x00\x01\x00" + s("a") + b"\x30"))


def test_MQTT_3_8_3_4_subscribe_no_local_on_shared_subscription_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"MQTT-3.8.3-4"):
        parse5(frame(0x82, b"\x00\x01\x00" + s("$share/g/a") + b"\x04"))
    # Not shared: fine.
    assert parse_one5(frame(0x82, b"\x00\x01\x00" + s("$sharex/a") + b"\x04")).subscriptions[
        0
    ].no_local


def test_MQTT_3_8_3_2_subscribe_without_filters_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"MQTT-3.8.3-2"):
        parse5(frame(0x82, b"\x00\x01\x00"))


@pytest.mark.parametrize("first", [0x80, 0x83, 0x8A])
def test_MQTT_3_8_1_1_subscribe_fixed_header_flags_are_malformed(first):
    with pytest.raises(MalformedPacket, match=r"MQTT-2.1.3-1"):
        parse5(frame(first, b"\x00\x01\x00" + s("a") + b"\x00"))


@pytest.mark.parametrize("topic_filter", ["a/#/b", "a+", ""])
def test_MQTT_4_7_1_1_and_MQTT_4_7_1_2_subscribe_invalid_filter_is_malformed(topic_filter):
    with pytest.raises(MalformedPacket):
        parse5(frame(0x82, b"\x00\x01\x00" + s(topic_filter) + b"\x00"))


@pytest.mark.parametrize("code", [0x03, 0x10, 0x11, 0x81, 0x92, 0xFF])
def test_MQTT_3_9_3_2_suback_code_outside_table_3_8_is_a_protocol_error(code):
    with pytest.raises(ProtocolError, match=r"MQTT-3.9.3-2"):
        parse5(frame(0x90, b"\x00\x01\x00\x00" + bytes((code,))))


@pytest.mark.parametrize("code", [0x01, 0x10, 0x97, 0x9E])
def test_MQTT_3_11_3_2_unsuback_code_outside_table_3_9_is_a_protocol_error(code):
    with pytest.raises(ProtocolError, match=r"MQTT-3.11.3-2"):
        parse5(frame(0xB0, b"\x00\x01\x00" + bytes((code,))))


@pytest.mark.parametrize("first", [0x90, 0xB0])
def test_section_2_4_suback_and_unsuback_without_codes_are_protocol_errors(first):
    with pytest.raises(ProtocolError):
        parse5(frame(first, b"\x00\x01\x00"))


def test_MQTT_3_10_3_2_unsubscribe_without_filters_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"MQTT-3.10.3-2"):
        parse5(frame(0xA2, b"\x00\x01\x00"))


def test_MQTT_3_10_1_1_unsubscribe_fixed_header_flags_are_malformed():
    with pytest.raises(MalformedPacket):
        parse5(frame(0xA0, b"\x00\x01\x00" + s("a")))


# --- DISCONNECT / AUTH / fixed header ----------------------------------------------------------


def test_section_3_14_2_disconnect_forms():
    assert parse_one5(b"\xe0\x00") == Disconnect()
    assert parse_one5(b"\xe0\x01\x04") == Disconnect(0x04)
    assert parse_one5(b"\xe0\x02\x8e\x00") == Disconnect(0x8E)
    with pytest.raises(MalformedPacket):
        parse5(b"\xe0\x03\x00\x00\x00")


@pytest.mark.parametrize("code", [0x01, 0x10, 0x18, 0x84, 0x92, 0xFF])
def test_MQTT_3_14_2_1_disconnect_code_outside_table_3_10_is_a_protocol_error(code):
    with pytest.raises(ProtocolError, match=r"MQTT-3.14.2-1"):
        parse5(bytes((0xE0, 1, code)))


@pytest.mark.parametrize("code", [0x01, 0x80, 0x87, 0xFF])
def test_MQTT_3_15_2_1_auth_code_outside_table_3_11_is_a_protocol_error(code):
    with pytest.raises(ProtocolError, match=r"MQTT-3.15.2-1"):
        parse5(bytes((0xF0, 2, code, 0)))


def test_section_3_15_2_1_auth_forms():
    assert parse_one5(b"\xf0\x00") == Auth()
    assert parse_one5(b"\xf0\x02\x19\x00") == Auth(0x19)
    with pytest.raises(MalformedPacket):
        parse5(b"\xf0\x01\x18")  # the Property Length cannot go without the reason code


def test_auth_before_5_is_still_malformed():
    parser = PacketParser()
    with pytest.raises(MalformedPacket):
        parser.feed(b"\xf0\x00")


@pytest.mark.parametrize(
    "wire",
    [
        frame(0x11, connect5_body()),
        frame(0x21, b"\x00\x00\x00"),
        frame(0x41, b"\x00\x01"),
        frame(0x52, b"\x00\x01"),
        frame(0x60, b"\x00\x01"),
        frame(0x6A, b"\x00\x01"),  # 3.1's DUP on PUBREL is not tolerated at 5.0 [MQTT-3.6.1-1]
        frame(0x74, b"\x00\x01"),
        frame(0x98, b"\x00\x01\x00\x00"),
        frame(0xB2, b"\x00\x01\x00\x00"),
        frame(0xC1, b""),
        frame(0xD8, b""),
        frame(0xE2, b""),  # [MQTT-3.14.1-1]
        frame(0xF1, b""),  # [MQTT-3.15.1-1]
    ],
    ids=lambda w: f"{w[0]:#04x}",
)
def test_MQTT_2_1_3_1_reserved_fixed_header_flags_are_malformed(wire):
    with pytest.raises(MalformedPacket, match=r"MQTT-2.1.3-1"):
        parse5(wire)


def test_MQTT_1_5_5_1_remaining_length_must_be_minimal_at_5():
    # PINGREQ with its remaining length 0 spelled in two bytes.
    with pytest.raises(MalformedPacket, match=r"MQTT-1.5.5-1"):
        parse5(b"\xc0\x80\x00")
    assert PacketParser().feed(b"\xc0\x80\x00") == [PingReq()]  # 3.1.1 has no such rule


# --- Maximum Packet Size (2.1.4, 3.1.2.11.4, 3.2.2.3.6) ----------------------------------------


def test_maximum_packet_size_counts_the_whole_packet_at_5():
    packet = encode(Publish("t", b"x" * 200), MQTT_5)  # 1 + 2 length bytes + 204 body
    assert len(packet) == 207
    parser = PacketParser(max_packet_size=207)
    parser.protocol_level = MQTT_5
    assert len(parser.feed(packet)) == 1
    parser = PacketParser(max_packet_size=206)
    parser.protocol_level = MQTT_5
    with pytest.raises(PacketTooLarge) as info:
        parser.feed(packet[:3])  # refused from the fixed header, before the body
    assert info.value.reason_code == 0x95


def test_maximum_packet_size_counts_the_remaining_length_at_3_1_1():
    # The same limit admits a bigger packet at 3.1.1: its remaining length is 204.
    packet = encode(Publish("t", b"x" * 201))
    assert len(packet) == 207
    assert len(PacketParser(max_packet_size=204).feed(packet)) == 1
    with pytest.raises(PacketTooLarge):
        PacketParser(max_packet_size=203).feed(packet)


def test_maximum_packet_size_switches_semantics_at_a_level_5_connect():
    connect = encode(Connect("", MQTT_5))
    assert len(connect) == 15 and connect[1] == 13
    # The CONNECT itself is measured by its remaining length (13 <= 13); the packets
    # after it in the same chunk by their whole size: a 14-byte DISCONNECT is too large.
    # The CONNECT before it is returned first; the next feed raises.
    parser = PacketParser(max_packet_size=13)
    assert parser.feed(connect + b"\xe0\x0c") == [Connect("", MQTT_5)]  # 14 bytes in all
    with pytest.raises(PacketTooLarge):
        parser.feed(b"")
    parser = PacketParser(max_packet_size=13)
    assert parser.feed(connect + encode(PingReq())) == [Connect("", MQTT_5), PingReq()]
    # At 3.1.1 the same bytes are within the limit (remaining length 12).
    parser = PacketParser(max_packet_size=13)
    assert parser.feed(encode(Connect("")) + b"\xe0\x0c") == [Connect("")]


def test_default_maximum_admits_the_largest_encodable_packet_at_5():
    parser = PacketParser()
    parser.protocol_level = MQTT_5
    assert parser.feed(b"\x30\xff\xff\xff\x7f") == []  # waits for the body
    parser = PacketParser(max_packet_size=MAX_REMAINING_LENGTH)
    parser.protocol_level = MQTT_5
    with pytest.raises(PacketTooLarge):
        parser.feed(b"\x30\xff\xff\xff\x7f")


# --- encoder -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        Publish("t", properties={P.SESSION_EXPIRY_INTERVAL: 1}),  # not valid in PUBLISH
        Publish("t", properties={0x7E: 1}),  # unknown
        Publish("t", properties={P.TOPIC_ALIAS: 0}),  # [MQTT-3.3.2-8]
        Publish("t", properties={P.TOPIC_ALIAS: 0x10000}),  # not a Two Byte Integer
        Publish("t", properties={P.CONTENT_TYPE: b"bytes"}),  # not a str
        Publish("t", properties={P.CORRELATION_DATA: "str"}),  # not bytes
        Publish("t", properties={P.USER_PROPERTY: ("k", "v")}),  # a pair, not pairs
        Publish("t", properties={P.SUBSCRIPTION_IDENTIFIER: (1, 1 << 28)}),
        Connect("c", MQTT_5, properties={P.AUTHENTICATION_DATA: b"x"}),
        Connect("c", MQTT_5, will=Will("w", b"", properties={P.REASON_STRING: "x"})),
        ConnAck(False, 0x01),  # a 3.1.1 return code
        PubAck(1, 0x92),
        PubRel(1, 0x10),
        SubAck(1, (0, 3)),
        UnsubAck(1, (0x80, 0x01)),
        Disconnect(0x18),
        Auth(0x80),
        Subscribe(1, (Subscription("a", 3),)),
        Subscribe(1, (Subscription("a", 0, retain_handling=3),)),
        Subscribe(1, (Subscription("a"),), {P.SUBSCRIPTION_IDENTIFIER: (1, 2)}),
        Subscribe(1, (Subscription("$share/g/a", no_local=True),)),  # [MQTT-3.8.3-4]
        Subscribe(1, ()),  # [MQTT-3.8.3-2]
        Unsubscribe(1, ()),  # [MQTT-3.10.3-2]
        SubAck(1, ()),
        UnsubAck(1, ()),  # a 3.1.1 UNSUBACK has no reason codes, a 5.0 one needs them
        ConnAck(True, 0x80),  # [MQTT-3.2.2-6]
        Publish("", b"x"),  # no topic and no alias (3.3.2.1)
    ],
    ids=repr,
)
def test_encode_refuses_what_a_5_0_receiver_must_reject(packet):
    with pytest.raises(ValueError):
        encode(packet, MQTT_5)


def test_5_0_fields_are_not_sent_at_3_1_1():
    packet = Publish("t", b"p", properties={P.MESSAGE_EXPIRY_INTERVAL: 5})
    assert encode(packet) == encode(Publish("t", b"p"))
    assert encode(PubAck(1, 0x10, {P.REASON_STRING: "x"})) == b"\x40\x02\x00\x01"


# --- ServerConnection at level 5 ---------------------------------------------------------------


def connected5(props: dict | None = None) -> ServerConnection:
    conn = ServerConnection()
    connect = Connect("client", MQTT_5, properties=props or {})
    assert conn.receive_data(encode(connect)) == [connect]
    assert conn.protocol_level == MQTT_5
    return conn


def test_connection_accepts_5_and_sends_at_5():
    conn = connected5()
    publish = Publish("a", b"p", 1, packet_id=1, properties={P.USER_PROPERTY: (("k", "v"),)})
    auth_free = [publish, PubRec(2, 0x10), Subscribe(3, (Subscription("a", 1, True),)), PingReq()]
    assert conn.receive_data(b"".join(encode(p, MQTT_5) for p in auth_free)) == auth_free
    conn.send(ConnAck(False, 0, {P.TOPIC_ALIAS_MAXIMUM: 10}))
    conn.send(SubAck(3, (1,)))
    assert conn.data_to_send() == b"\x20\x06\x00\x00\x03\x22\x00\x0a" + b"\x90\x04\x00\x03\x00\x01"


def test_section_4_12_enhanced_authentication_flow():
    conn = connected5({P.AUTHENTICATION_METHOD: "SCRAM", P.AUTHENTICATION_DATA: b"c1"})
    conn.send(Auth(0x18, {P.AUTHENTICATION_METHOD: "SCRAM", P.AUTHENTICATION_DATA: b"s1"}))
    reply = Auth(0x18, {P.AUTHENTICATION_METHOD: "SCRAM", P.AUTHENTICATION_DATA: b"c2"})
    assert conn.receive_data(encode(reply, MQTT_5)) == [reply]
    conn.send(ConnAck(False, 0, {P.AUTHENTICATION_METHOD: "SCRAM"}))
    # After CONNACK: ordinary packets, and re-authentication [MQTT-4.12.1-1].
    reauth = Auth(0x19, {P.AUTHENTICATION_METHOD: "SCRAM"})
    assert conn.receive_data(encode(PingReq()) + encode(reauth, MQTT_5)) == [PingReq(), reauth]


def test_MQTT_3_1_2_30_only_auth_or_disconnect_before_connack_with_an_auth_method():
    conn = connected5({P.AUTHENTICATION_METHOD: "m"})
    with pytest.raises(ProtocolError, match=r"MQTT-3.1.2-30"):
        conn.receive_data(encode(PingReq()))
    conn = connected5({P.AUTHENTICATION_METHOD: "m"})
    assert conn.receive_data(encode(Disconnect(), MQTT_5)) == [Disconnect()]


def test_MQTT_4_12_0_7_auth_without_an_auth_method_in_connect():
    conn = connected5()
    with pytest.raises(ProtocolError, match=r"MQTT-4.12.0-7"):
        conn.receive_data(encode(Auth(0x19, {P.AUTHENTICATION_METHOD: "m"}), MQTT_5))


@pytest.mark.parametrize("auth", [Auth(0x18, {P.AUTHENTICATION_METHOD: "other"}), Auth()])
def test_MQTT_4_12_0_5_auth_with_another_method(auth):
    conn = connected5({P.AUTHENTICATION_METHOD: "m"})
    with pytest.raises(ProtocolError, match=r"MQTT-4.12.0-5"):
        conn.receive_data(encode(auth, MQTT_5))


def test_MQTT_3_3_4_6_publish_from_a_client_with_a_subscription_identifier():
    conn = connected5()
    with pytest.raises(ProtocolError, match=r"MQTT-3.3.4-6"):
        conn.receive_data(encode(Publish("a", properties={P.SUBSCRIPTION_IDENTIFIER: (1,)}),
                                 MQTT_5))


def test_section_3_14_2_2_2_disconnect_cannot_turn_on_session_expiry():
    conn = connected5()
    with pytest.raises(ProtocolError):
        conn.receive_data(encode(Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 5}), MQTT_5))
    conn = connected5({P.SESSION_EXPIRY_INTERVAL: 9})
    disconnect = Disconnect(0, {P.SESSION_EXPIRY_INTERVAL: 0})
    assert conn.receive_data(encode(disconnect, MQTT_5)) == [disconnect]


def test_section_4_13_1_a_bad_level_5_connect_is_answered_at_level_5():
    conn = ServerConnection()
    with pytest.raises(MalformedPacket) as info:
        conn.receive_data(frame(0x10, connect5_body(0x03)))  # reserved flag [MQTT-3.1.2-3]
    assert conn.protocol_level == MQTT_5
    conn.send(ConnAck(return_code=info.value.reason_code))
    assert conn.data_to_send() == b"\x20\x03\x00\x81\x00"


def test_connection_3_1_1_still_refuses_auth():
    conn = ServerConnection()
    conn.receive_data(encode(Connect("c")))
    with pytest.raises(MalformedPacket):
        conn.receive_data(b"\xf0\x00")


# --- fuzzing ------------------------------------------------------------------------------------

# Every packet type with every property, as the client parser sees them (fuzzed below).
ALL5 = [encode(p, MQTT_5) for p in all_property_samples()]
# What a client may send after a CONNECT without an Authentication Method: fuzzing
# these exercises the server's parse paths rather than its connection rules.
CLIENT5 = [
    encode(p, MQTT_5)
    for p in [
        Publish("a/b", b"x" * 150, 1, packet_id=2),
        Publish("", b"p", 2, True, True, 9, {P.TOPIC_ALIAS: 3, P.CONTENT_TYPE: "t"}),
        Publish("a", b"", properties={P.USER_PROPERTY: (("k", "v"),) * 3}),
        PubAck(3),
        PubRec(4, 0x10, {P.REASON_STRING: "r"}),
        PubRel(5, 0x92),
        PubComp(6, 0, {P.USER_PROPERTY: (("k", "v"),)}),
        Subscribe(7, (Subscription("a/+", 1, True, True, 1), Subscription("#", 2)),
                  {P.SUBSCRIPTION_IDENTIFIER: 3}),
        Unsubscribe(8, ("a/+", "#"), {P.USER_PROPERTY: (("k", "v"),)}),
        PingReq(),
        Disconnect(0x04, {P.REASON_STRING: "bye"}),
    ]
]


def feed_expecting_only_mqtt_errors(conn: ServerConnection, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
    except MQTTError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_random_bytes_after_a_level_5_connect(chunks):
    feed_expecting_only_mqtt_errors(connected5(), chunks)


@st.composite
def mutated_streams5(draw, samples: list[bytes]) -> bytes:
    wire = bytearray(b"".join(draw(st.lists(st.sampled_from(samples), max_size=5))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("set", "insert", "delete")))
        at = draw(st.integers(0, len(wire)))
        if kind == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif wire and at < len(wire):
            if kind == "set":
                wire[at] = draw(st.integers(0, 255))
            else:
                del wire[at]
    return bytes(wire)


@FUZZ
@given(mutated_streams5(CLIENT5), st.integers(1, 17))
def test_fuzz_mutated_level_5_packets_after_a_level_5_connect(wire, chunk_size):
    chunks = [wire[i : i + chunk_size] for i in range(0, len(wire), chunk_size)]
    feed_expecting_only_mqtt_errors(connected5(), chunks)


@FUZZ
@given(mutated_streams5(ALL5))
def test_fuzz_mutated_level_5_packets_of_every_type_client_side(wire):
    parser = PacketParser()
    parser.protocol_level = MQTT_5
    with contextlib.suppress(MQTTError):
        parser.feed(wire)


@FUZZ
@given(st.sampled_from(ALL_KINDS), st.binary(max_size=40))
def test_fuzz_parse_properties(kind, data):
    with contextlib.suppress(MQTTError):
        parse_properties(data, kind)


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_level_5_connect_bodies(data):
    body = s("MQTT") + b"\x05" + data
    feed_expecting_only_mqtt_errors(ServerConnection(), [frame(0x10, body)])

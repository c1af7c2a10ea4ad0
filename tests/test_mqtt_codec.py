"""Tests of the sans-IO MQTT 3.1 / 3.1.1 codec (topics, parser, encoder).

Statement ids ([MQTT-x.y.z-n]) refer to the MQTT 3.1.1 specification.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.protocols.mqtt import (
    MQTT_3_1,
    MQTT_3_1_1,
    Auth,
    ClientIdentifierRejected,
    ConnAck,
    Connect,
    Disconnect,
    MalformedPacket,
    PacketParser,
    PacketTooLarge,
    PingReq,
    PingResp,
    ProtocolError,
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
    UnsupportedProtocolVersion,
    Will,
    encode,
    encode_publish,
    is_valid_topic_filter,
    is_valid_topic_name,
)
from polybroker.protocols.mqtt.codec import _encode_length

from .fuzz_longrun import varint

LEVELS = (MQTT_3_1, MQTT_3_1_1)
FAST = settings(max_examples=200, deadline=None)


# --- helpers ------------------------------------------------------------------




def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def s(text: str | bytes) -> bytes:
    """A length-prefixed string field."""
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def connect_body(
    flags: int = 0x02, client_id: bytes | str = "c", *, name: str = "MQTT", level: int = 4
) -> bytes:
    return s(name) + bytes((level, flags)) + b"\x00\x3c" + s(client_id)


def parse(data: bytes, level: int = MQTT_3_1_1) -> list:
    parser = PacketParser()
    parser.protocol_level = level
    return parser.feed(data)


def parse_one(data: bytes, level: int = MQTT_3_1_1):
    packets = parse(data, level)
    assert len(packets) == 1
    return packets[0]


def feed_chunks(chunks: list[bytes], level: int = MQTT_3_1_1) -> list:
    parser = PacketParser()
    parser.protocol_level = level
    packets = []
    for chunk in chunks:
        packets += parser.feed(chunk)
    return packets


# --- strategies ---------------------------------------------------------------

name_chars = st.characters(codec="utf-8", exclude_characters="+#\x00")
level_chars = st.characters(codec="utf-8", exclude_characters="+#/\x00")
topic_names = st.text(name_chars, min_size=1, max_size=20)
packet_ids = st.integers(1, 0xFFFF)
payloads = st.binary(max_size=100)
filter_levels = st.one_of(st.just("+"), st.text(level_chars, max_size=6))


@st.composite
def topic_filters(draw) -> str:
    levels = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "a"


@st.composite
def connects(draw, level: int) -> Connect:
    ids = st.text(max_size=23, min_size=1) if level == MQTT_3_1 else st.text(max_size=30)
    client_id = draw(ids.filter(lambda t: "\x00" not in t))
    username = draw(st.none() | st.text(max_size=10).filter(lambda t: "\x00" not in t))
    password = draw(st.none() | st.binary(max_size=10)) if username is not None else None
    will = draw(
        st.none() | st.builds(Will, topic_names, payloads, st.integers(0, 2), st.booleans())
    )
    return Connect(
        client_id,
        level,
        draw(st.booleans()),
        draw(st.integers(0, 0xFFFF)),
        username,
        password,
        will,
    )


@st.composite
def publishes(draw) -> Publish:
    qos = draw(st.integers(0, 2))
    packet_id = draw(packet_ids) if qos else None
    dup = draw(st.booleans()) if qos else False
    return Publish(draw(topic_names), draw(payloads), qos, draw(st.booleans()), dup, packet_id)


@st.composite
def connacks(draw, level: int) -> ConnAck:
    code = draw(st.integers(0, 5))
    session_present = level == MQTT_3_1_1 and code == 0 and draw(st.booleans())
    return ConnAck(session_present, code)


def packets(level: int) -> st.SearchStrategy:
    """Every packet type except CONNECT and DISCONNECT (they change parser state)."""
    subscriptions = st.builds(Subscription, topic_filters(), st.integers(0, 2))
    return st.one_of(
        publishes(),
        connacks(level),
        st.builds(PubAck, packet_ids),
        st.builds(PubRec, packet_ids),
        st.builds(PubRel, packet_ids),
        st.builds(PubComp, packet_ids),
        st.builds(
            Subscribe, packet_ids, st.lists(subscriptions, min_size=1, max_size=4).map(tuple)
        ),
        st.builds(
            SubAck, packet_ids, st.lists(st.sampled_from((0, 1, 2, 0x80)), min_size=1).map(tuple)
        ),
        st.builds(
            Unsubscribe, packet_ids, st.lists(topic_filters(), min_size=1, max_size=4).map(tuple)
        ),
        st.builds(UnsubAck, packet_ids),
        st.just(PingReq()),
        st.just(PingResp()),
    )


@st.composite
def streams(draw) -> tuple[int, list]:
    """A level and a valid packet sequence: [CONNECT] packets... [DISCONNECT]."""
    level = draw(st.sampled_from(LEVELS))
    stream = draw(st.lists(packets(level), max_size=8))
    if draw(st.booleans()):
        stream.insert(0, draw(connects(level)))
    if draw(st.booleans()):
        stream.append(Disconnect())
    return level, stream


# --- topics ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["a", "/", "a/b", "a//b", " ", "é/€", "\ufeffx", "$SYS/x"])
def test_valid_topic_names(topic):
    assert is_valid_topic_name(topic)


@pytest.mark.parametrize("topic", ["", "a/+", "#", "a/#", "a+b", "x#"])
def test_MQTT_4_7_1_1_and_MQTT_4_7_3_1_invalid_topic_names(topic):
    assert not is_valid_topic_name(topic)


@pytest.mark.parametrize("topic_filter", ["a", "#", "+", "a/#", "+/+", "a/+/b", "/#", "+/", "//"])
def test_valid_topic_filters(topic_filter):
    assert is_valid_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", ["", "a#", "a/#/b", "#/", "a+", "+a/b", "a/b+", "##"])
def test_MQTT_4_7_1_2_and_MQTT_4_7_1_3_invalid_topic_filters(topic_filter):
    assert not is_valid_topic_filter(topic_filter)


def test_MQTT_4_7_3_3_topic_length_bound_is_65535_utf8_bytes():
    assert is_valid_topic_name("a" * 65535)
    assert not is_valid_topic_name("a" * 65536)
    assert is_valid_topic_filter("é" * 32767)  # 65534 bytes
    assert not is_valid_topic_filter("é" * 32768)  # 65536 bytes in 32768 characters


# --- round trips ----------------------------------------------------------------

SAMPLES = [
    Publish("a/b", b"hello", 0),
    Publish("a/b", b"", 1, retain=True, dup=True, packet_id=1),
    Publish("t", b"x" * 300, 2, packet_id=0xFFFF),
    ConnAck(False, 5),
    PubAck(7),
    PubRec(8),
    PubRel(9),
    PubComp(10),
    Subscribe(11, (Subscription("a/+", 1), Subscription("#", 2), Subscription("b", 0))),
    SubAck(11, (1, 2, 0, 0x80)),
    Unsubscribe(12, ("a/+", "#")),
    UnsubAck(12),
    PingReq(),
    PingResp(),
    Disconnect(),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("packet", SAMPLES, ids=lambda p: type(p).__name__)
def test_round_trip_samples(packet, level):
    assert parse_one(encode(packet, level), level) == packet


@pytest.mark.parametrize(
    "packet",
    [
        Connect("c", MQTT_3_1, False, 10, "u", b"p", Will("w", b"bye", 2, True)),
        Connect("", MQTT_3_1_1, True, 0),
        Connect("id", MQTT_3_1_1, False, 65535, "user", None, Will("w/t", b"", 1, False)),
        Connect("id", MQTT_3_1_1, True, 60, "", b""),
    ],
)
def test_round_trip_connect(packet):
    assert parse_one(encode(packet)) == packet


def test_connack_session_present_round_trip_at_3_1_1_only():
    assert parse_one(encode(ConnAck(True, 0))) == ConnAck(True, 0)
    assert encode(ConnAck(True, 0), MQTT_3_1) == b"\x20\x02\x00\x00"  # 3.1 has no such flag


@FAST
@given(st.data())
def test_round_trip_property(data):
    level = data.draw(st.sampled_from(LEVELS))
    packet = data.draw(packets(level) | connects(level) | st.just(Disconnect()))
    assert parse_one(encode(packet, level), level) == packet


@FAST
@given(publishes())
def test_encode_publish_matches_encode(p):
    fast = encode_publish(p.topic.encode(), p.payload, p.qos, p.retain, p.dup, p.packet_id)
    assert fast == encode(p)


@FAST
@given(streams(), st.data())
def test_any_split_gives_the_same_packets(level_and_stream, data):
    level, stream = level_and_stream
    wire = b"".join(encode(p, level) for p in stream)
    assert feed_chunks([wire], level) == stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert feed_chunks(chunks, level) == stream
    assert feed_chunks([wire[i : i + 1] for i in range(len(wire))], level) == stream


# --- byte-exact encodings ------------------------------------------------------------


def test_connect_from_the_spec_example_bytes():
    # Variable header of the 3.1.1 example (figure 3.6): flags 0xCE, keep alive 10.
    wire = bytes.fromhex(
        "10 25 0004 4d515454 04 ce 000a"
        "0003 636c69"  # client id "cli"
        "0003 772f74 0003 627965"  # will topic "w/t", will message "bye"
        "0004 75736572 0004 70617373"  # user name "user", password "pass"
    )
    packet = Connect("cli", 4, True, 10, "user", b"pass", Will("w/t", b"bye", 1, False))
    assert encode(packet) == wire
    assert parse_one(wire) == packet


def test_connect_from_real_clients():
    # paho-mqtt 3.1.1, empty client id, clean session, keep alive 60.
    paho = bytes.fromhex("100c00044d5154540402003c0000")
    assert parse_one(paho) == Connect("", 4, True, 60)
    assert encode(Connect("", 4, True, 60)) == paho
    # mosquitto_pub -V mqttv31 -i pub1
    mosquitto_31 = bytes.fromhex("101200064d514973647003 02 003c 0004 70756231".replace(" ", ""))
    assert parse_one(mosquitto_31) == Connect("pub1", 3, True, 60)
    assert encode(Connect("pub1", 3, True, 60)) == mosquitto_31


def test_publish_qos1_with_packet_id_bytes():
    # Spec section 3.3.2.3 example: topic "a/b", packet id 10.
    wire = bytes.fromhex("3209 0003612f62 000a 6869")
    packet = Publish("a/b", b"hi", 1, packet_id=10)
    assert encode(packet) == wire
    assert encode_publish(b"a/b", b"hi", 1, False, False, 10) == wire
    assert parse_one(wire) == packet


def test_fixed_packets_bytes():
    assert encode(PingReq()) == b"\xc0\x00"
    assert encode(PingResp()) == b"\xd0\x00"
    assert encode(Disconnect()) == b"\xe0\x00"
    assert encode(PubRel(0x0102)) == b"\x62\x02\x01\x02"
    assert encode(ConnAck(True, 0)) == b"\x20\x02\x01\x00"
    assert encode(Subscribe(1, (Subscription("a", 1),))) == b"\x82\x06\x00\x01\x00\x01a\x01"
    assert encode(Unsubscribe(2, ("a",))) == b"\xa2\x05\x00\x02\x00\x01a"


REMAINING_LENGTHS = [
    (0, "00"),
    (127, "7f"),
    (128, "8001"),
    (16383, "ff7f"),
    (16384, "808001"),
    (2097151, "ffff7f"),
    (2097152, "80808001"),
    (268435455, "ffffff7f"),
]


@pytest.mark.parametrize(("length", "wire"), REMAINING_LENGTHS)
def test_remaining_length_encoding_table_2_4(length, wire):
    assert _encode_length(length) == bytes.fromhex(wire)


@pytest.mark.parametrize(("length", "wire"), REMAINING_LENGTHS[:-1])
def test_remaining_length_boundaries_parse(length, wire):
    # A QoS 0 PUBLISH to "t" has 3 bytes before its payload.
    if length < 3:
        return
    packet = Publish("t", b"\xaa" * (length - 3))
    data = encode(packet)
    assert data[1 : 1 + len(wire) // 2] == bytes.fromhex(wire)
    assert parse_one(data) == packet


def test_remaining_length_maximum_is_decoded():
    header = b"\x30\xff\xff\xff\x7f"
    assert PacketParser().feed(header) == []  # waits for 268435455 bytes
    with pytest.raises(PacketTooLarge):
        PacketParser(max_packet_size=268_435_454).feed(header)


def test_five_byte_remaining_length_is_malformed():
    with pytest.raises(MalformedPacket):
        PacketParser().feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(MalformedPacket):  # known malformed at the fourth byte
        feed_chunks([b"\x30", b"\x80", b"\x80", b"\x80", b"\x80"])


def test_remaining_length_above_maximum_cannot_be_encoded():
    with pytest.raises(ValueError):
        _encode_length(268_435_456)


# --- fixed header ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        frame(0x11, connect_body()),
        frame(0x21, b"\x00\x00"),
        frame(0x41, b"\x00\x01"),
        frame(0x52, b"\x00\x01"),
        frame(0x60, b"\x00\x01"),
        frame(0x63, b"\x00\x01"),
        frame(0x74, b"\x00\x01"),
        frame(0x80, b"\x00\x01" + s("a") + b"\x00"),
        frame(0x83, b"\x00\x01" + s("a") + b"\x00"),
        frame(0x98, b"\x00\x01\x00"),
        frame(0xA0, b"\x00\x01" + s("a")),
        frame(0xB2, b"\x00\x01"),
        frame(0xC1, b""),
        frame(0xD8, b""),
        frame(0xE2, b""),
    ],
    ids=lambda w: f"{w[0]:#04x}",
)
def test_MQTT_2_2_2_1_and_MQTT_2_2_2_2_reserved_flag_bits_are_malformed(wire):
    with pytest.raises(MalformedPacket):
        parse(wire)


def test_mqtt_3_1_accepts_dup_on_resent_subscribe_pubrel_unsubscribe():
    # 3.1 set DUP on these retries; 3.1.1 reserved the bit.
    assert parse_one(frame(0x6A, b"\x00\x01"), MQTT_3_1) == PubRel(1)
    assert parse_one(frame(0x8A, b"\x00\x01" + s("a") + b"\x00"), MQTT_3_1) == Subscribe(
        1, (Subscription("a"),)
    )
    assert parse_one(frame(0xAA, b"\x00\x01" + s("a")), MQTT_3_1) == Unsubscribe(1, ("a",))
    with pytest.raises(MalformedPacket):
        parse(frame(0x6A, b"\x00\x01"), MQTT_3_1_1)


def test_packet_type_0_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(b"\x00\x00")


@pytest.mark.parametrize("level", LEVELS)
def test_auth_before_mqtt_5_is_malformed(level):
    with pytest.raises(MalformedPacket):
        parse(b"\xf0\x00", level)


# --- body length ---------------------------------------------------------------------


@pytest.mark.parametrize("first", [0x40, 0x50, 0x62, 0x70, 0xB0, 0x20])
@pytest.mark.parametrize("body", [b"\x00", b"\x00\x01\x00", b""])
def test_two_byte_packets_with_wrong_length_are_malformed(first, body):
    with pytest.raises(MalformedPacket):
        parse(frame(first, body))


@pytest.mark.parametrize("first", [0x40, 0x50, 0x62, 0x70, 0xB0])
def test_MQTT_2_3_1_1_acks_with_packet_id_0_are_malformed(first):
    with pytest.raises(MalformedPacket):
        parse(frame(first, b"\x00\x00"))


@pytest.mark.parametrize("first", [0xC0, 0xD0, 0xE0])
def test_ping_and_disconnect_with_a_body_are_malformed(first):
    with pytest.raises(MalformedPacket):
        parse(frame(first, b"\x00"))


def test_connect_with_extra_bytes_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body() + b"\x00"))


@pytest.mark.parametrize("cut", range(1, 13))
def test_truncated_connect_is_malformed(cut):
    body = connect_body(0xC2) + s("user") + s("pw")
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, body[:-cut]))


def test_truncated_string_in_subscribe_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x82, b"\x00\x01\x00\x05abc"))


# --- strings -------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80"])
def test_MQTT_1_5_3_1_ill_formed_utf8_is_malformed(raw):
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body(client_id=b"a" + raw)))


def test_MQTT_1_5_3_2_u0000_in_a_string_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x30, s("a\x00b")))
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body(client_id="x\x00")))


def test_MQTT_1_5_3_3_bom_is_not_stripped():
    assert parse_one(frame(0x30, s("\ufeffa/b") + b"p")) == Publish("\ufeffa/b", b"p")


# --- CONNECT ----------------------------------------------------------------------------


def test_MQTT_3_1_2_1_unknown_protocol_name_is_a_protocol_error_without_connack():
    with pytest.raises(ProtocolError) as info:
        parse(frame(0x10, connect_body(name="MQTX")))
    assert info.value.connack_code is None


@pytest.mark.parametrize(
    ("name", "level"), [("MQTT", 7), ("MQTT", 3), ("MQIsdp", 4), ("MQIsdp", 5), ("MQTT", 6)]
)
def test_MQTT_3_1_2_2_unsupported_level_gets_connack_1(name, level):
    with pytest.raises(UnsupportedProtocolVersion) as info:
        parse(frame(0x10, connect_body(name=name, level=level)))
    assert info.value.connack_code == 0x01


def test_mqtt_5_connect_with_properties_is_accepted():
    # MQTT 5.0 is a second level of "MQTT" (tests/test_mqtt5_codec.py covers it).
    body = connect_body(level=5)[:-3] + b"\x00" + s("c")  # property length 0 before payload
    assert parse_one(frame(0x10, body)) == Connect("c", 5, True, 60)


def test_MQTT_3_1_2_3_reserved_connect_flag_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body(0x03)))


def test_reserved_connect_flag_is_tolerated_for_mqtt_3_1():
    # 3.1 did not reserve bit 0.
    wire = frame(0x10, connect_body(0x03, name="MQIsdp", level=3))
    assert parse_one(wire).client_id == "c"


@pytest.mark.parametrize(
    ("flags", "statement"),
    [(0x0A, "MQTT-3.1.2-13"), (0x22, "MQTT-3.1.2-15"), (0x1A, "MQTT-3.1.2-11")],
)
def test_will_qos_or_retain_without_will_flag_is_malformed(flags, statement):
    with pytest.raises(MalformedPacket, match=statement):
        parse(frame(0x10, connect_body(flags) + s("w") + s("m")))


def test_MQTT_3_1_2_14_will_qos_3_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body(0x1E) + s("w") + s("m")))


def test_MQTT_3_1_2_22_password_without_user_name_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body(0x42) + s("pw")))


@pytest.mark.parametrize(
    ("flags", "fields"),
    [
        (0x06, b""),  # will flag, no will topic/message [MQTT-3.1.2-9]
        (0x06, s("w")),  # will topic without will message [MQTT-3.1.2-9]
        (0x82, b""),  # user name flag, no user name [MQTT-3.1.2-19]
        (0xC2, s("u")),  # password flag, no password [MQTT-3.1.2-21]
        (0x02, s("u")),  # user name without its flag [MQTT-3.1.2-18]
        (0x82, s("u") + s("p")),  # password without its flag [MQTT-3.1.2-20]
    ],
)
def test_MQTT_3_1_3_1_payload_fields_must_match_flags(flags, fields):
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body(flags) + fields))


@pytest.mark.parametrize("topic", ["a/+", "#", ""])
def test_MQTT_4_7_1_1_will_topic_with_wildcards_is_malformed(topic):
    with pytest.raises(MalformedPacket):
        parse(frame(0x10, connect_body(0x06) + s(topic) + s("m")))


def test_empty_client_id_is_left_to_the_adapter_at_3_1_1():
    assert parse_one(frame(0x10, connect_body(0x00, ""))) == Connect("", 4, False, 60)


@pytest.mark.parametrize("client_id", ["", "x" * 24])
def test_mqtt_3_1_client_id_outside_1_to_23_is_rejected_with_connack_2(client_id):
    with pytest.raises(ClientIdentifierRejected) as info:
        parse(frame(0x10, connect_body(client_id=client_id, name="MQIsdp", level=3)))
    assert info.value.connack_code == 0x02


def test_mqtt_3_1_client_id_of_23_characters_is_accepted():
    wire = frame(0x10, connect_body(client_id="é" * 23, name="MQIsdp", level=3))
    assert parse_one(wire).client_id == "é" * 23


# --- PUBLISH ----------------------------------------------------------------------------


def test_MQTT_3_3_1_4_publish_qos3_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x36, s("a") + b"\x00\x01"))


def test_MQTT_3_3_1_2_publish_qos0_with_dup_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x38, s("a")))


@pytest.mark.parametrize("topic", ["a/+", "a/#", "+", "#", "a+"])
def test_MQTT_3_3_2_2_publish_topic_with_wildcards_is_malformed(topic):
    with pytest.raises(MalformedPacket):
        parse(frame(0x30, s(topic)))


def test_MQTT_4_7_3_1_publish_empty_topic_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x30, s("") + b"payload"))


@pytest.mark.parametrize("first", [0x32, 0x34])
def test_MQTT_2_3_1_1_publish_packet_id_0_is_malformed(first):
    with pytest.raises(MalformedPacket):
        parse(frame(first, s("a") + b"\x00\x00"))


@pytest.mark.parametrize("body", [s("a") + b"\x00", s("a"), b"\x00", b"", b"\x00\x05abc"])
def test_publish_missing_fields_is_malformed(body):
    with pytest.raises(MalformedPacket):
        parse(frame(0x32, body))


def test_publish_qos0_topic_longer_than_body_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x30, b"\x00\x05abc"))


# --- SUBSCRIBE / SUBACK / UNSUBSCRIBE ----------------------------------------------------------


def test_MQTT_2_3_1_1_subscribe_packet_id_0_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x82, b"\x00\x00" + s("a") + b"\x00"))


def test_MQTT_3_8_3_3_subscribe_without_filters_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x82, b"\x00\x01"))


@pytest.mark.parametrize("topic_filter", ["a/#/b", "a+", "#a", ""])
def test_MQTT_4_7_1_2_and_MQTT_4_7_1_3_subscribe_invalid_filter_is_malformed(topic_filter):
    with pytest.raises(MalformedPacket):
        parse(frame(0x82, b"\x00\x01" + s(topic_filter) + b"\x00"))


@pytest.mark.parametrize("options", [0x03, 0x04, 0x80, 0xFC, 0x41])
def test_MQTT_3_8_3_4_subscribe_bad_requested_qos_is_malformed(options):
    with pytest.raises(MalformedPacket):
        parse(frame(0x82, b"\x00\x01" + s("a") + bytes((options,))))


def test_subscribe_filter_without_qos_byte_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x82, b"\x00\x01" + s("a") + b"\x00" + s("b")))


@pytest.mark.parametrize("code", [3, 0x7F, 0x81, 0xFF])
def test_MQTT_3_9_3_2_suback_reserved_return_code_is_malformed(code):
    with pytest.raises(MalformedPacket):
        parse(frame(0x90, b"\x00\x01\x00" + bytes((code,))))


def test_MQTT_3_9_3_1_suback_without_return_codes_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0x90, b"\x00\x01"))


def test_MQTT_3_10_3_2_unsubscribe_without_filters_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0xA2, b"\x00\x01"))


def test_MQTT_4_7_1_2_unsubscribe_invalid_filter_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0xA2, b"\x00\x01" + s("a") + s("a/#/b")))


def test_MQTT_2_3_1_1_unsubscribe_packet_id_0_is_malformed():
    with pytest.raises(MalformedPacket):
        parse(frame(0xA2, b"\x00\x00" + s("a")))


# --- CONNACK (client side) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "statement"),
    [(b"\x02\x00", "MQTT-3.2.2-1"), (b"\x01\x02", "MQTT-3.2.2-4"), (b"\x00\x06", "table 3.1")],
)
def test_connack_invalid_is_malformed(body, statement):
    with pytest.raises(MalformedPacket, match=statement):
        parse(frame(0x20, body))


# --- parser behaviour ----------------------------------------------------------------------


def test_packet_too_large_is_raised_from_the_fixed_header():
    parser = PacketParser(max_packet_size=10)
    assert parser.feed(frame(0x30, s("t") + b"x" * 7)) == [Publish("t", b"x" * 7)]
    with pytest.raises(PacketTooLarge):
        parser.feed(b"\x30\x0b")  # no body yet


def test_parser_is_dead_after_an_error():
    parser = PacketParser()
    with pytest.raises(MalformedPacket):
        parser.feed(b"\x00\x00")
    with pytest.raises(ProtocolError):
        parser.feed(encode(PingReq()))


def test_parser_ignores_bytes_after_disconnect():
    parser = PacketParser()
    assert parser.feed(encode(PingReq()) + b"\xe0\x00" + b"\x00garbage") == [
        PingReq(),
        Disconnect(),
    ]
    assert parser.feed(b"\xc0\x00") == []


def test_parser_switches_level_at_connect_within_one_chunk():
    connect = encode(Connect("c", MQTT_3_1))
    resent_subscribe = frame(0x8A, b"\x00\x01" + s("a") + b"\x00")
    parser = PacketParser()
    assert len(parser.feed(connect + resent_subscribe)) == 2
    assert parser.protocol_level == MQTT_3_1


def test_parser_keeps_partial_packets():
    parser = PacketParser()
    wire = encode(Publish("a/b", b"x" * 200, 1, packet_id=3))
    assert parser.feed(wire[:100]) == []
    assert parser.feed(wire[100:] + wire[:1]) == [Publish("a/b", b"x" * 200, 1, packet_id=3)]
    assert parser.feed(wire[1:]) == [Publish("a/b", b"x" * 200, 1, packet_id=3)]


def test_parser_rejects_unsupported_levels():
    with pytest.raises(ValueError):
        PacketParser().protocol_level = 6


# --- encoder behaviour --------------------------------------------------------------------


def test_encode_refuses_what_3_1_1_cannot_carry():
    with pytest.raises(ValueError):
        encode(Auth())
    with pytest.raises(ValueError):
        encode(PingReq(), 6)
    with pytest.raises(ValueError):
        encode(Connect("c", 6))
    with pytest.raises(ValueError):
        encode_publish(b"t", b"", 1, False, False, None)
    with pytest.raises(ValueError):
        encode(Publish("a" * 65536))
    with pytest.raises(TypeError):
        encode("not a packet")  # type: ignore[arg-type]

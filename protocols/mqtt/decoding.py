"""Parsing each MQTT 3.1 / 3.1.1 packet type, one function per type in ``_PARSERS``
(``codec``); CONNECT and a few bodies 5.0 shares with them are parsed here for both.
Statement ids refer to MQTT 3.1.1 (5.0 ids after "5.0:")."""

from collections.abc import Callable

from .errors import (
    ClientIdentifierRejected,
    MalformedPacket,
    MQTTError,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from .packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
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
from .properties import WILL
from .reader import ParseFunction, _check_flags, _Reader, _utf8
from .topics import is_valid_topic_filter, is_valid_topic_name

# Protocol name -> the levels this server speaks under that name.
_PROTOCOL_NAMES = {"MQTT": (MQTT_3_1_1, MQTT_5), "MQIsdp": (MQTT_3_1,)}
_MAX_CLIENT_ID_3_1 = 23  # MQTT 3.1 allows 1..23 characters
_SUBACK_CODES = frozenset((0, 1, 2, SUBACK_FAILURE))


# --- per packet parse functions ---------------------------------------------


def _parse_reserved(flags: int, body: memoryview, level: int) -> Packet:
    raise MalformedPacket("packet type 0 is reserved (table 2.1)")


def _parse_connect(flags: int, body: memoryview, level: int) -> Connect:
    _check_flags("CONNECT", flags, 0, level)
    r = _Reader(body, "CONNECT")
    name = r.string()
    level = r.u8()  # the CONNECT names its level; the parser's is not used
    if name not in _PROTOCOL_NAMES:
        # Not MQTT at all: close without a CONNACK [MQTT-3.1.2-1].
        raise ProtocolError(f"CONNECT: unknown protocol name {name!r} [MQTT-3.1.2-1]")
    if level not in _PROTOCOL_NAMES[name]:
        # Checked before the flags: another level's packet may be shaped differently.
        raise UnsupportedProtocolVersion(
            f"CONNECT: {name} level {level} is not supported [MQTT-3.1.2-2]"
        )
    try:
        return _parse_connect_rest(r, level)
    except MQTTError as exc:
        exc.protocol_level = level  # the adapter may answer in the client's version
        raise


def _parse_connect_rest(r: _Reader, level: int) -> Connect:
    cflags = r.u8()
    _check_connect_flags(cflags, level)
    keep_alive = r.u16()
    # 5.0: CONNECT properties follow the keep alive (3.1.2.11).
    properties = r.properties(PacketType.CONNECT) if level == MQTT_5 else {}
    client_id = r.string()  # [MQTT-3.1.3-3]; empty ids are the adapter's decision
    if level == MQTT_3_1 and not 1 <= len(client_id) <= _MAX_CLIENT_ID_3_1:
        raise ClientIdentifierRejected("CONNECT: MQTT 3.1 client ids have 1 to 23 characters")
    will = _parse_will(r, cflags, level) if cflags & 0x04 else None
    # Payload fields appear exactly as the flags say [MQTT-3.1.2-18..21, MQTT-3.1.3-1]
    # (5.0: [MQTT-3.1.2-16..19, MQTT-3.1.3-1]).
    username = r.string() if cflags & 0x80 else None
    password = r.binary() if cflags & 0x40 else None
    r.finish()
    return Connect(
        client_id, level, bool(cflags & 0x02), keep_alive, username, password, will, properties
    )


def _check_connect_flags(cflags: int, level: int) -> None:
    if level == MQTT_5:
        _check_connect_flags_5(cflags)
        return
    # MQTT 3.1 did not reserve bit 0, so old clients are not held to it.
    if level == MQTT_3_1_1 and cflags & 0x01:
        raise MalformedPacket("CONNECT: reserved connect flag is set [MQTT-3.1.2-3]")
    will_qos = (cflags >> 3) & 0x03
    if not cflags & 0x04 and cflags & 0x38:
        raise MalformedPacket(
            "CONNECT: will QoS/retain set without will flag "
            "[MQTT-3.1.2-11, MQTT-3.1.2-13, MQTT-3.1.2-15]"
        )
    if will_qos == 3:
        raise MalformedPacket("CONNECT: will QoS 3 [MQTT-3.1.2-14]")
    if cflags & 0x40 and not cflags & 0x80:
        raise MalformedPacket("CONNECT: password flag without user name flag [MQTT-3.1.2-22]")


def _check_connect_flags_5(cflags: int) -> None:
    if cflags & 0x01:
        raise MalformedPacket("CONNECT: reserved connect flag is set [MQTT-3.1.2-3]")
    if not cflags & 0x04:
        if cflags & 0x18:
            raise MalformedPacket("CONNECT: will QoS set without will flag [MQTT-3.1.2-11]")
        if cflags & 0x20:
            raise MalformedPacket("CONNECT: will retain set without will flag [MQTT-3.1.2-13]")
    if (cflags >> 3) & 0x03 == 3:
        raise MalformedPacket("CONNECT: will QoS 3 [MQTT-3.1.2-12]")
    # 5.0 allows a password without a user name (3.1.2.9).


def _parse_will(r: _Reader, cflags: int, level: int) -> Will:
    # 5.0: Will Properties come first [MQTT-3.1.2-9, MQTT-3.1.3-1].
    properties = r.properties(WILL) if level == MQTT_5 else {}
    topic = r.string()  # [MQTT-3.1.2-9]: present when the will flag is set
    if not is_valid_topic_name(topic):
        raise MalformedPacket(
            "CONNECT: invalid will topic [MQTT-4.7.1-1, MQTT-4.7.3-1; 5.0: MQTT-4.7.0-1]"
        )
    payload = r.binary()
    return Will(topic, payload, (cflags >> 3) & 0x03, bool(cflags & 0x20), properties)


def _parse_connack(flags: int, body: memoryview, level: int) -> ConnAck:
    _check_flags("CONNACK", flags, 0, level)
    if len(body) != 2:
        raise MalformedPacket("CONNACK: remaining length must be 2")
    ack_flags, code = body[0], body[1]
    if level == MQTT_3_1:
        return ConnAck(False, code)  # 3.1: the flags byte is unused
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK: reserved acknowledge flags set [MQTT-3.2.2-1]")
    if code > 5:
        raise MalformedPacket(f"CONNACK: reserved return code {code} (table 3.1)")
    if code and ack_flags:
        raise MalformedPacket("CONNACK: session present with an error code [MQTT-3.2.2-4]")
    return ConnAck(bool(ack_flags), code)


def _publish_head(flags: int, body: memoryview) -> tuple[int, int, int | None, int]:
    """What every PUBLISH starts with: QoS (checked with DUP), the end of the topic name,
    the packet id (QoS > 0) and where the rest begins; the same at every level."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH: QoS 3 [MQTT-3.3.1-4]")
    if flags & 0x08 and not qos:
        raise MalformedPacket("PUBLISH: DUP set on a QoS 0 message [MQTT-3.3.1-2]")
    size = len(body)
    if size < 2:
        raise MalformedPacket("PUBLISH: packet ends inside the topic name")
    topic_end = 2 + ((body[0] << 8) | body[1])
    if not qos:
        if topic_end > size:
            raise MalformedPacket("PUBLISH: packet ends inside the topic name")
        return qos, topic_end, None, topic_end
    if topic_end + 2 > size:
        raise MalformedPacket("PUBLISH: packet ends before the packet identifier")
    packet_id = (body[topic_end] << 8) | body[topic_end + 1]
    if not packet_id:
        raise MalformedPacket("PUBLISH: packet identifier 0 [MQTT-2.3.1-1, MQTT-2.2.1-3]")
    return qos, topic_end, packet_id, topic_end + 2


def _parse_publish(flags: int, body: memoryview, level: int) -> Publish:
    # The hot path: plain index arithmetic, no _Reader.
    qos, topic_end, packet_id, payload_start = _publish_head(flags, body)
    topic = _utf8(body[2:topic_end])
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH: invalid topic name [MQTT-3.3.2-2, MQTT-4.7.3-1]")
    payload = bytes(body[payload_start:])
    return Publish(topic, payload, qos, bool(flags & 0x01), bool(flags & 0x08), packet_id)


def _id_only_parser(cls: Callable[..., Packet], name: str, required_flags: int) -> ParseFunction:
    """Parser for PUBACK, PUBREC, PUBREL, PUBCOMP and UNSUBACK: just a packet id."""

    def parse(flags: int, body: memoryview, level: int) -> Packet:
        _check_flags(name, flags, required_flags, level)
        if len(body) != 2:
            raise MalformedPacket(f"{name}: remaining length must be 2")
        packet_id = (body[0] << 8) | body[1]
        if not packet_id:
            raise MalformedPacket(f"{name}: packet identifier 0 (section 2.3.1)")
        return cls(packet_id)

    return parse


def _parse_subscribe(flags: int, body: memoryview, level: int) -> Subscribe:
    _check_flags("SUBSCRIBE", flags, 0b0010, level)  # [MQTT-3.8.1-1]
    r = _Reader(body, "SUBSCRIBE")
    packet_id = r.packet_id()
    subscriptions = []
    while not r.at_end():
        topic_filter = _read_filter(r)
        options = r.u8()
        if options & 0xFC or options == 3:
            raise MalformedPacket(f"SUBSCRIBE: bad requested QoS byte {options:#x} [MQTT-3-8.3-4]")
        subscriptions.append(Subscription(topic_filter, options))
    if not subscriptions:
        raise MalformedPacket("SUBSCRIBE: no topic filters [MQTT-3.8.3-3]")
    return Subscribe(packet_id, tuple(subscriptions))


def _read_filter(r: _Reader) -> str:
    topic_filter = r.string()
    if not is_valid_topic_filter(topic_filter):
        raise MalformedPacket(
            f"{r.name}: invalid topic filter [MQTT-4.7.1-2, MQTT-4.7.1-3, MQTT-4.7.3-1]"
        )
    return topic_filter


def _parse_suback(flags: int, body: memoryview, level: int) -> SubAck:
    _check_flags("SUBACK", flags, 0, level)
    r = _Reader(body, "SUBACK")
    packet_id = r.packet_id()
    codes = tuple(r.take(len(body) - 2))
    if not codes:
        raise MalformedPacket("SUBACK: no return codes [MQTT-3.9.3-1]")
    if not _SUBACK_CODES.issuperset(codes):
        raise MalformedPacket("SUBACK: reserved return code [MQTT-3.9.3-2]")
    return SubAck(packet_id, codes)


def _parse_unsubscribe(flags: int, body: memoryview, level: int) -> Unsubscribe:
    _check_flags("UNSUBSCRIBE", flags, 0b0010, level)  # [MQTT-3.10.1-1]
    r = _Reader(body, "UNSUBSCRIBE")
    packet_id = r.packet_id()
    topic_filters = []
    while not r.at_end():
        topic_filters.append(_read_filter(r))
    if not topic_filters:
        raise MalformedPacket("UNSUBSCRIBE: no topic filters [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, tuple(topic_filters))


def _empty_parser(cls: Callable[..., Packet], name: str) -> ParseFunction:
    """Parser for PINGREQ, PINGRESP and DISCONNECT: no variable header, no payload."""

    def parse(flags: int, body: memoryview, level: int) -> Packet:
        _check_flags(name, flags, 0, level)
        if len(body):
            raise MalformedPacket(f"{name}: remaining length must be 0")
        return cls()

    return parse


def _parse_auth(flags: int, body: memoryview, level: int) -> Packet:
    raise MalformedPacket(f"AUTH is an MQTT 5.0 packet (protocol level {level})")


_PARSERS: tuple[ParseFunction, ...] = (
    _parse_reserved,
    _parse_connect,
    _parse_connack,
    _parse_publish,
    _id_only_parser(PubAck, "PUBACK", 0),
    _id_only_parser(PubRec, "PUBREC", 0),
    _id_only_parser(PubRel, "PUBREL", 0b0010),
    _id_only_parser(PubComp, "PUBCOMP", 0),
    _parse_subscribe,
    _parse_suback,
    _parse_unsubscribe,
    _id_only_parser(UnsubAck, "UNSUBACK", 0),
    _empty_parser(PingReq, "PINGREQ"),
    _empty_parser(PingResp, "PINGRESP"),
    _empty_parser(Disconnect, "DISCONNECT"),
    _parse_auth,
)

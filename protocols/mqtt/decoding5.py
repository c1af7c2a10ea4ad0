"""Parsing each MQTT 5.0 packet type, one function per type in ``_PARSERS5``
(``codec``). Statement ids refer to MQTT 5.0."""

from collections.abc import Callable

from . import reason_codes
from .decoding import _empty_parser, _parse_connect, _parse_reserved, _publish_head
from .errors import MalformedPacket, ProtocolError
from .packets import (
    Auth,
    ConnAck,
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
)
from .properties import TOPIC_ALIAS, parse_properties, read_variable_byte_integer
from .reader import ParseFunction, _check_flags, _Reader, _utf8
from .topics import is_valid_topic_filter

_VALID_CODES = reason_codes.VALID


# --- MQTT 5.0 parse functions (statement ids: MQTT 5.0) ---------------------------


def _parse_connack5(flags: int, body: memoryview, level: int) -> ConnAck:
    _check_flags("CONNACK", flags, 0, level)
    r = _Reader(body, "CONNACK")
    ack_flags = r.u8()
    code = r.u8()
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK: reserved acknowledge flags set [MQTT-3.2.2-1]")
    if code not in _VALID_CODES[PacketType.CONNACK]:
        raise ProtocolError(f"CONNACK: {code:#04x} is not a Connect Reason Code [MQTT-3.2.2-8]")
    if code and ack_flags:
        raise ProtocolError("CONNACK: session present with a non-zero reason code [MQTT-3.2.2-6]")
    properties = r.properties(PacketType.CONNACK)
    r.finish()
    return ConnAck(bool(ack_flags), code, properties)


def _parse_publish5(flags: int, body: memoryview, level: int) -> Publish:
    # The hot path: plain index arithmetic, properties parsed only when present.
    qos, topic_end, packet_id, pos = _publish_head(flags, body)
    size = len(body)
    if pos >= size:
        raise MalformedPacket("PUBLISH: packet ends before the Property Length [MQTT-2.2.2-1]")
    length = body[pos]
    if length < 0x80:
        start = pos + 1
    else:
        length, start = read_variable_byte_integer(body, pos, "PUBLISH")
    payload_start = start + length
    if payload_start > size:
        raise MalformedPacket("PUBLISH: properties run past the end of the packet")
    properties = parse_properties(body[start:payload_start], PacketType.PUBLISH) if length else {}
    topic = _utf8(body[2:topic_end])  # [MQTT-3.3.2-1]
    if "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH: wildcard in the topic name [MQTT-3.3.2-2, MQTT-4.7.0-1]")
    if not topic and TOPIC_ALIAS not in properties:
        # Topic alias resolution is the receiver's (broker's) business.
        raise ProtocolError("PUBLISH: empty topic name and no Topic Alias (3.3.2.1)")
    payload = bytes(body[payload_start:])
    return Publish(
        topic, payload, qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, properties
    )


def _ack_parser5(
    cls: Callable[..., Packet], kind: PacketType, required_flags: int, statement: str
) -> ParseFunction:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: packet id [reason code [properties]].

    Remaining length 2: reason 0x00 and no properties; 3: a reason code and no
    properties; 4 or more: both (3.4.2.1, 3.4.2.2.1 and the same for the others).
    """
    name = kind.name
    valid = _VALID_CODES[kind]

    def parse(flags: int, body: memoryview, level: int) -> Packet:
        _check_flags(name, flags, required_flags, level)
        size = len(body)
        if size < 2:
            raise MalformedPacket(f"{name}: remaining length {size} is less than 2")
        packet_id = (body[0] << 8) | body[1]
        if not packet_id:
            raise MalformedPacket(f"{name}: packet identifier 0 (2.2.1)")
        if size == 2:
            return cls(packet_id)
        code = body[2]
        if code not in valid:
            raise ProtocolError(f"{name}: {code:#04x} is not a {name} reason code [{statement}]")
        if size == 3:
            return cls(packet_id, code)
        r = _Reader(body, name)
        r.pos = 3
        properties = r.properties(kind)
        r.finish()
        return cls(packet_id, code, properties)

    return parse


def _read_filter5(r: _Reader) -> str:
    topic_filter = r.string()  # [MQTT-3.8.3-1, MQTT-3.10.3-1]
    if not is_valid_topic_filter(topic_filter):
        raise MalformedPacket(
            f"{r.name}: invalid topic filter [MQTT-4.7.1-1, MQTT-4.7.1-2, MQTT-4.7.3-1]"
        )
    return topic_filter


def _parse_subscribe5(flags: int, body: memoryview, level: int) -> Subscribe:
    _check_flags("SUBSCRIBE", flags, 0b0010, level)  # [MQTT-3.8.1-1]
    r = _Reader(body, "SUBSCRIBE")
    packet_id = r.packet_id()
    properties = r.properties(PacketType.SUBSCRIBE)
    subscriptions = []
    while not r.at_end():
        topic_filter = _read_filter5(r)
        options = r.u8()
        if options & 0xC0:
            raise MalformedPacket(
                f"SUBSCRIBE: reserved subscription option bits {options:#04x} [MQTT-3.8.3-5]"
            )
        qos = options & 0x03
        if qos == 3:
            raise ProtocolError("SUBSCRIBE: Maximum QoS 3 (3.8.3.1)")
        retain_handling = (options >> 4) & 0x03
        if retain_handling == 3:
            raise ProtocolError("SUBSCRIBE: Retain Handling 3 (3.8.3.1)")
        no_local = bool(options & 0x04)
        if no_local and topic_filter.startswith("$share/"):
            raise ProtocolError("SUBSCRIBE: No Local on a Shared Subscription [MQTT-3.8.3-4]")
        subscriptions.append(
            Subscription(topic_filter, qos, no_local, bool(options & 0x08), retain_handling)
        )
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE: no topic filters [MQTT-3.8.3-2]")
    return Subscribe(packet_id, tuple(subscriptions), properties)


def _read_codes(r: _Reader, kind: PacketType, statement: str) -> tuple[int, ...]:
    codes = tuple(r.take(len(r.data) - r.pos))
    if not codes:
        raise ProtocolError(f"{r.name}: no reason codes (2.4)")
    valid = _VALID_CODES[kind]
    for code in codes:
        if code not in valid:
            raise ProtocolError(
                f"{r.name}: {code:#04x} is not a {r.name} reason code [{statement}]"
            )
    return codes


def _parse_suback5(flags: int, body: memoryview, level: int) -> SubAck:
    _check_flags("SUBACK", flags, 0, level)
    r = _Reader(body, "SUBACK")
    packet_id = r.packet_id()
    properties = r.properties(PacketType.SUBACK)
    return SubAck(packet_id, _read_codes(r, PacketType.SUBACK, "MQTT-3.9.3-2"), properties)


def _parse_unsubscribe5(flags: int, body: memoryview, level: int) -> Unsubscribe:
    _check_flags("UNSUBSCRIBE", flags, 0b0010, level)  # [MQTT-3.10.1-1]
    r = _Reader(body, "UNSUBSCRIBE")
    packet_id = r.packet_id()
    properties = r.properties(PacketType.UNSUBSCRIBE)
    topic_filters = []
    while not r.at_end():
        topic_filters.append(_read_filter5(r))
    if not topic_filters:
        raise ProtocolError("UNSUBSCRIBE: no topic filters [MQTT-3.10.3-2]")
    return Unsubscribe(packet_id, tuple(topic_filters), properties)


def _parse_unsuback5(flags: int, body: memoryview, level: int) -> UnsubAck:
    _check_flags("UNSUBACK", flags, 0, level)
    r = _Reader(body, "UNSUBACK")
    packet_id = r.packet_id()
    properties = r.properties(PacketType.UNSUBACK)
    codes = _read_codes(r, PacketType.UNSUBACK, "MQTT-3.11.3-2")
    return UnsubAck(packet_id, codes, properties)


def _parse_disconnect5(flags: int, body: memoryview, level: int) -> Disconnect:
    _check_flags("DISCONNECT", flags, 0, level)  # [MQTT-3.14.1-1]
    if not body:
        return Disconnect()  # remaining length 0: Normal disconnection (3.14.2.1)
    code = body[0]
    if code not in _VALID_CODES[PacketType.DISCONNECT]:
        raise ProtocolError(f"DISCONNECT: {code:#04x} is not a Disconnect Reason Code "
                            "[MQTT-3.14.2-1]")
    if len(body) == 1:
        return Disconnect(code)  # remaining length < 2: no properties (3.14.2.2.1)
    r = _Reader(body, "DISCONNECT")
    r.pos = 1
    properties = r.properties(PacketType.DISCONNECT)
    r.finish()
    return Disconnect(code, properties)


def _parse_auth5(flags: int, body: memoryview, level: int) -> Auth:
    _check_flags("AUTH", flags, 0, level)  # [MQTT-3.15.1-1]
    if not body:
        return Auth()  # remaining length 0: Success, no properties (3.15.2.1)
    code = body[0]
    if code not in _VALID_CODES[PacketType.AUTH]:
        raise ProtocolError(f"AUTH: {code:#04x} is not an Authenticate Reason Code "
                            "[MQTT-3.15.2-1]")
    # Only "Reason Code and Property Length" together may be omitted: a remaining
    # length of 1 lacks the Property Length [MQTT-2.2.2-1].
    r = _Reader(body, "AUTH")
    r.pos = 1
    properties = r.properties(PacketType.AUTH)
    r.finish()
    return Auth(code, properties)


_PARSERS5: tuple[ParseFunction, ...] = (
    _parse_reserved,
    _parse_connect,
    _parse_connack5,
    _parse_publish5,
    _ack_parser5(PubAck, PacketType.PUBACK, 0, "MQTT-3.4.2-1"),
    _ack_parser5(PubRec, PacketType.PUBREC, 0, "MQTT-3.5.2-1"),
    _ack_parser5(PubRel, PacketType.PUBREL, 0b0010, "MQTT-3.6.2-1"),  # flags [MQTT-3.6.1-1]
    _ack_parser5(PubComp, PacketType.PUBCOMP, 0, "MQTT-3.7.2-1"),
    _parse_subscribe5,
    _parse_suback5,
    _parse_unsubscribe5,
    _parse_unsuback5,
    _empty_parser(PingReq, "PINGREQ"),
    _empty_parser(PingResp, "PINGRESP"),
    _parse_disconnect5,
    _parse_auth5,
)

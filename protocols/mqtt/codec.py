"""Sans-IO MQTT 3.1 / 3.1.1 / 5.0 codec: bytes to packets and packets to bytes.

Parsing enforces the well-formedness rules of the spec. Statement ids in the
comments and error messages of the 3.1/3.1.1 paths refer to MQTT 3.1.1; the 5.0
paths (``_PARSERS5``, ``_ENCODERS5``) cite MQTT 5.0 (OASIS, 7 March 2019), and
messages shared by both give the 5.0 id after "5.0:". Each packet type has its
own parse function ``(flags, body, protocol_level) -> Packet``, one table per
packet format (3.1 and 3.1.1 share one, 5.0 has its own).

MQTT 5.0 errors: what cannot be parsed (truncation, bad lengths, reserved bits,
ill-formed UTF-8, a property identifier not valid for the packet, section 2.2.2.2)
is MalformedPacket (0x81); a parsable value the protocol forbids (a repeated
property, Receive Maximum 0, a reason code the packet may not carry, ...) is
ProtocolError (0x82), following the definitions in section 1.2.

Maximum packet size: ``PacketParser.max_packet_size`` bounds the Remaining Length
at 3.1 / 3.1.1 (which have no notion of packet size), and the whole packet (fixed
header, Remaining Length bytes and body, section 2.1.4) at 5.0, as the Maximum
Packet Size property defines it (3.1.2.11.4, 3.2.2.3.6). Either way PacketTooLarge
(0x95) is raised from the fixed header, before the body is buffered.
"""

import struct
from collections.abc import Callable
from typing import Any

from . import reason_codes
from .errors import (
    ClientIdentifierRejected,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from .packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    SUBACK_FAILURE,
    Auth,
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
from .properties import (
    TOPIC_ALIAS,
    WILL,
    encode_properties,
    encode_property_block,
    parse_properties,
    read_variable_byte_integer,
)
from .topics import is_valid_topic_filter, is_valid_topic_name

MAX_REMAINING_LENGTH = 268_435_455  # four bytes of 7 bits each (section 2.2.3)
# The largest packet the encoding allows: a 1-byte header, 4 length bytes and the body.
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5

_U16 = struct.Struct(">H")
_SUPPORTED_LEVELS = (MQTT_3_1, MQTT_3_1_1, MQTT_5)
# Protocol name -> the levels this server speaks under that name.
_PROTOCOL_NAMES = {"MQTT": (MQTT_3_1_1, MQTT_5), "MQIsdp": (MQTT_3_1,)}
_MAX_CLIENT_ID_3_1 = 23  # MQTT 3.1 allows 1..23 characters
_SUBACK_CODES = frozenset((0, 1, 2, SUBACK_FAILURE))
_VALID_CODES = reason_codes.VALID

ParseFunction = Callable[[int, memoryview, int], Packet]


# --- parsing helpers --------------------------------------------------------


def _utf8(data: memoryview) -> str:
    try:
        text = str(data, "utf-8")  # strict: rejects surrogates; keeps U+FEFF
    except UnicodeDecodeError:
        raise MalformedPacket(
            "string is not well-formed UTF-8 [MQTT-1.5.3-1; 5.0: MQTT-1.5.4-1]"
        ) from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000 [MQTT-1.5.3-2; 5.0: MQTT-1.5.4-2]")
    return text


def _check_flags(name: str, flags: int, required: int, level: int) -> None:
    if flags == required:
        return
    # MQTT 3.1 set DUP on resent PUBREL/SUBSCRIBE/UNSUBSCRIBE; 3.1.1 reserved it.
    if level == MQTT_3_1 and required == 0b0010 and flags == 0b1010:
        return
    ids = "MQTT-2.1.3-1" if level == MQTT_5 else "MQTT-2.2.2-1, MQTT-2.2.2-2"
    raise MalformedPacket(f"{name}: reserved fixed header flags {flags:#06b} [{ids}]")


class _Reader:
    """Bounds-checked cursor over one packet body (for the less hot packets)."""

    __slots__ = ("data", "name", "pos")

    def __init__(self, data: memoryview, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedPacket(f"{self.name}: packet ends inside a field")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        chunk = self.take(2)
        return (chunk[0] << 8) | chunk[1]

    def binary(self) -> bytes:
        return bytes(self.take(self.u16()))

    def string(self) -> str:
        return _utf8(self.take(self.u16()))

    def packet_id(self) -> int:
        packet_id = self.u16()
        if not packet_id:
            raise MalformedPacket(
                f"{self.name}: packet identifier 0 [MQTT-2.3.1-1; 5.0: MQTT-2.2.1-3]"
            )
        return packet_id

    def properties(self, kind: int) -> dict[int, Any]:
        """Property Length and the properties (MQTT 5.0, section 2.2.2)."""
        if self.pos >= len(self.data):
            raise MalformedPacket(f"{self.name}: no Property Length [MQTT-2.2.2-1]")
        length, start = read_variable_byte_integer(self.data, self.pos, self.name)
        end = start + length
        if end > len(self.data):
            raise MalformedPacket(f"{self.name}: properties run past the end of the packet")
        self.pos = end
        return parse_properties(self.data[start:end], kind) if length else {}

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def finish(self) -> None:
        if self.pos != len(self.data):
            extra = len(self.data) - self.pos
            raise MalformedPacket(f"{self.name}: {extra} bytes beyond the last field")


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
_CONNECT_TYPE = 1
_DISCONNECT_TYPE = 14


def _long_length(buf: bytearray, i: int, size: int) -> tuple[int, int]:
    """Decode a multi-byte remaining length at ``buf[i]``: (length, body start).

    The start is -1 while the length's bytes have not all arrived.
    """
    length = 0
    shift = 0
    while i < size:
        byte = buf[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length, i
        shift += 7
        if shift == 28:
            raise MalformedPacket("remaining length longer than 4 bytes (section 2.2.3)")
    return 0, -1


class PacketParser:
    """Incremental parser: feed it bytes as they arrive, get whole packets back.

    Any split of a byte stream yields the same packets. After a DISCONNECT the
    sender is gone, so later bytes are ignored; after an error the stream is
    dead and every later ``feed`` raises ProtocolError. A bad packet after good
    ones in the same ``feed`` does not take them down with it: they are returned,
    and the error (``pending_error``) is raised by the next ``feed``, so that the
    packets before it are answered first [MQTT-3.1.4-5].

    ``max_packet_size`` bounds the Remaining Length at protocol levels 3 and 4
    and the whole packet (fixed header included, section 2.1.4) at level 5; the
    default admits every packet the encoding can express at any level.
    """

    __slots__ = ("_buffer", "_closed", "_failed", "_level", "max_packet_size", "pending_error")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.max_packet_size = max_packet_size
        self._level = MQTT_3_1_1
        self._buffer = bytearray()
        self._closed = False
        self._failed = False
        self.pending_error: MQTTError | None = None  # raised by the next feed

    @property
    def protocol_level(self) -> int:
        """Level used for version-specific packets; a parsed CONNECT sets it too."""
        return self._level

    @protocol_level.setter
    def protocol_level(self, level: int) -> None:
        if level not in _SUPPORTED_LEVELS:
            raise ValueError(f"protocol level {level} is not supported")
        self._level = level

    def feed(self, data: bytes) -> list[Packet]:
        """Add ``data`` to the stream and return the packets it completes."""
        if self.pending_error is not None:
            error, self.pending_error = self.pending_error, None
            raise error
        if self._failed:
            raise ProtocolError("the byte stream already failed to parse")
        if self._closed:
            return []
        buf = self._buffer
        buf += data
        parsed: list[Packet] = []
        try:
            packets, consumed = self._parse_all(buf, parsed)
        except MQTTError as exc:
            self._failed = True
            # A traceback may still hold a view of the old buffer: replace, don't resize.
            self._buffer = bytearray()
            if not parsed:
                raise
            self.pending_error = exc.with_traceback(None)
            return parsed
        if self._closed:
            buf.clear()
        else:
            del buf[:consumed]
        return packets

    def _parse_all(self, buf: bytearray, packets: list[Packet]) -> tuple[list[Packet], int]:
        """The whole packets in ``buf`` (appended to ``packets``, which keeps those
        before a bad one when this raises) and the bytes they took."""
        size = len(buf)
        pos = 0
        level = self._level
        v5 = level == MQTT_5
        parsers = _PARSERS5 if v5 else _PARSERS
        limit = self.max_packet_size
        with memoryview(buf) as view:
            while size - pos >= 2:
                first = buf[pos]
                length = buf[pos + 1]
                start = pos + 2
                if length & 0x80:
                    length, start = _long_length(buf, pos + 1, size)
                    if start < 0:
                        break  # remaining length still incomplete
                    if v5 and not buf[start - 1]:
                        raise MalformedPacket(
                            "remaining length not minimally encoded [MQTT-1.5.5-1]"
                        )
                if v5:
                    # 5.0: the packet size is the whole packet (2.1.4, 3.2.2.3.6).
                    if start - pos + length > limit:
                        raise PacketTooLarge(
                            f"packet of {start - pos + length} bytes exceeds the "
                            f"Maximum Packet Size {limit}"
                        )
                elif length > limit:
                    # Refuse before buffering the body.
                    raise PacketTooLarge(f"packet of {length} bytes exceeds the limit {limit}")
                end = start + length
                if end > size:
                    break
                ptype = first >> 4
                packet = parsers[ptype](first & 0x0F, view[start:end], level)
                packets.append(packet)
                pos = end
                if ptype == _CONNECT_TYPE:
                    # Later packets in this same chunk must parse at the new level.
                    level = self._level = packet.protocol_level  # type: ignore[union-attr]
                    v5 = level == MQTT_5
                    parsers = _PARSERS5 if v5 else _PARSERS
                elif ptype == _DISCONNECT_TYPE:
                    self._closed = True
                    break
        return packets, pos


# --- encoding -----------------------------------------------------------------


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {length} exceeds {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while length >= 0x80:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _encode_length(len(body)) + body


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("string or binary field longer than 65535 bytes")
    return _U16.pack(len(data)) + data


def _string(text: str) -> bytes:
    return _binary(text.encode())


def encode_ack(first_byte: int, packet_id: int) -> bytes:
    """A PUBACK/PUBREC/PUBREL/PUBCOMP with no reason code or properties: 4 bytes, built
    without a packet object (the broker answers every QoS 1/2 message with one)."""
    return bytes((first_byte, 2, packet_id >> 8, packet_id & 0xFF))


def encode_publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int | None
) -> bytes:
    """Encode a PUBLISH from an already UTF-8 encoded topic (the per-delivery fast path)."""
    topic_len = len(topic)
    if topic_len > 0xFFFF:
        raise ValueError("topic longer than 65535 bytes")
    if qos:
        if packet_id is None:
            raise ValueError("a QoS > 0 PUBLISH needs a packet identifier")
        variable = _U16.pack(topic_len) + topic + _U16.pack(packet_id)
    else:
        variable = _U16.pack(topic_len) + topic
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    remaining = len(variable) + len(payload)
    if remaining < 0x80:
        return bytes((first, remaining)) + variable + payload
    return bytes((first,)) + _encode_length(remaining) + variable + payload


def encode_publish5(
    topic: bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties: bytes,
) -> bytes:
    """Encode an MQTT 5.0 PUBLISH (the per-delivery fast path).

    ``topic`` is already UTF-8 encoded (b"" with a Topic Alias property), and
    ``properties`` is an already encoded property block without its Property
    Length (``properties.encode_properties(props, PacketType.PUBLISH)``; b"" for
    none), so a subscriber's deliveries can reuse both.
    """
    topic_len = len(topic)
    if topic_len > 0xFFFF:
        raise ValueError("topic longer than 65535 bytes")
    if qos:
        if packet_id is None:
            raise ValueError("a QoS > 0 PUBLISH needs a packet identifier")
        variable = _U16.pack(topic_len) + topic + _U16.pack(packet_id)
    else:
        variable = _U16.pack(topic_len) + topic
    props_len = len(properties)
    if props_len < 0x80:
        variable += bytes((props_len,)) + properties
    else:
        variable += _encode_length(props_len) + properties
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    remaining = len(variable) + len(payload)
    if remaining < 0x80:
        return bytes((first, remaining)) + variable + payload
    return bytes((first,)) + _encode_length(remaining) + variable + payload


def _encode_publish(p: Publish, level: int) -> bytes:
    return encode_publish(p.topic.encode(), p.payload, p.qos, p.retain, p.dup, p.packet_id)


def _encode_connect(p: Connect, level: int) -> bytes:
    # The CONNECT names its own level; the ``level`` argument is not used.
    if p.protocol_level not in _SUPPORTED_LEVELS:
        raise ValueError(f"cannot encode a CONNECT for protocol level {p.protocol_level}")
    v5 = p.protocol_level == MQTT_5
    flags = 0x02 if p.clean_session else 0
    payload = [_string(p.client_id)]
    if p.will is not None:
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        if v5:
            payload.append(encode_property_block(p.will.properties, WILL))
        payload += (_string(p.will.topic), _binary(p.will.payload))
    if p.username is not None:
        flags |= 0x80
        payload.append(_string(p.username))
    if p.password is not None:
        flags |= 0x40
        payload.append(_binary(p.password))
    header = _string(p.protocol_name) + bytes((p.protocol_level, flags)) + _U16.pack(p.keep_alive)
    if v5:
        header += encode_property_block(p.properties, PacketType.CONNECT)
    return _frame(0x10, header + b"".join(payload))


def _encode_connack(p: ConnAck, level: int) -> bytes:
    # 3.1 has no session present flag: the byte is reserved.
    session_present = p.session_present and level != MQTT_3_1
    return bytes((0x20, 2, 1 if session_present else 0, p.return_code))


def _encode_id_only(first: int) -> Callable[[Any, int], bytes]:
    def encode_id(p: Any, level: int) -> bytes:
        return bytes((first, 2)) + _U16.pack(p.packet_id)

    return encode_id


def _encode_subscribe(p: Subscribe, level: int) -> bytes:
    parts = [_U16.pack(p.packet_id)]
    for sub in p.subscriptions:
        parts += (_string(sub.topic_filter), bytes((sub.qos,)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: SubAck, level: int) -> bytes:
    return _frame(0x90, _U16.pack(p.packet_id) + bytes(p.return_codes))


def _encode_unsubscribe(p: Unsubscribe, level: int) -> bytes:
    parts = [_U16.pack(p.packet_id)]
    parts += (_string(topic_filter) for topic_filter in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_auth(p: Auth, level: int) -> bytes:
    raise ValueError(f"AUTH is an MQTT 5.0 packet (protocol level {level})")


# --- MQTT 5.0 encoders --------------------------------------------------------------


def _check_code(kind: PacketType, code: int) -> None:
    if code not in _VALID_CODES[kind]:
        raise ValueError(f"{code!r} is not a {kind.name} reason code (table 2.6)")


def _encode_connack5(p: ConnAck, level: int) -> bytes:
    _check_code(PacketType.CONNACK, p.return_code)
    if p.session_present and p.return_code:
        raise ValueError("session present with a non-zero reason code [MQTT-3.2.2-6]")
    head = bytes((1 if p.session_present else 0, p.return_code))
    return _frame(0x20, head + encode_property_block(p.properties, PacketType.CONNACK))


def _encode_publish5(p: Publish, level: int) -> bytes:
    if not p.topic and TOPIC_ALIAS not in p.properties:
        raise ValueError("an empty topic name needs a Topic Alias (3.3.2.1)")
    properties = encode_properties(p.properties, PacketType.PUBLISH)
    return encode_publish5(
        p.topic.encode(), p.payload, p.qos, p.retain, p.dup, p.packet_id, properties
    )


def _encode_ack5(first: int, kind: PacketType) -> Callable[[Any, int], bytes]:
    def encode_ack(p: Any, level: int) -> bytes:
        _check_code(kind, p.reason_code)
        if not p.properties:
            if not p.reason_code:  # the short form (3.4.2.1 and alike)
                return bytes((first, 2)) + _U16.pack(p.packet_id)
            return bytes((first, 3)) + _U16.pack(p.packet_id) + bytes((p.reason_code,))
        body = _U16.pack(p.packet_id) + bytes((p.reason_code,))
        return _frame(first, body + encode_property_block(p.properties, kind))

    return encode_ack


def _encode_subscribe5(p: Subscribe, level: int) -> bytes:
    if not p.subscriptions:
        raise ValueError("a SUBSCRIBE needs a topic filter [MQTT-3.8.3-2]")
    parts = [_U16.pack(p.packet_id), encode_property_block(p.properties, PacketType.SUBSCRIBE)]
    for sub in p.subscriptions:
        if sub.no_local and sub.topic_filter.startswith("$share/"):
            raise ValueError("No Local on a Shared Subscription [MQTT-3.8.3-4]")
        options = (
            sub.qos
            | (0x04 if sub.no_local else 0)
            | (0x08 if sub.retain_as_published else 0)
            | (sub.retain_handling << 4)
        )
        if sub.qos > 2 or sub.retain_handling > 2 or options > 0x3F:
            raise ValueError(f"subscription options out of range: {sub!r}")
        parts += (_string(sub.topic_filter), bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _encode_codes(kind: PacketType, codes: tuple[int, ...]) -> bytes:
    if not codes:
        raise ValueError(f"a {kind.name} needs a reason code per topic filter (2.4)")
    for code in codes:
        _check_code(kind, code)
    return bytes(codes)


def _encode_suback5(p: SubAck, level: int) -> bytes:
    props = encode_property_block(p.properties, PacketType.SUBACK)
    codes = _encode_codes(PacketType.SUBACK, p.return_codes)
    return _frame(0x90, _U16.pack(p.packet_id) + props + codes)


def _encode_unsubscribe5(p: Unsubscribe, level: int) -> bytes:
    if not p.topic_filters:
        raise ValueError("an UNSUBSCRIBE needs a topic filter [MQTT-3.10.3-2]")
    parts = [_U16.pack(p.packet_id), encode_property_block(p.properties, PacketType.UNSUBSCRIBE)]
    parts += (_string(topic_filter) for topic_filter in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback5(p: UnsubAck, level: int) -> bytes:
    props = encode_property_block(p.properties, PacketType.UNSUBACK)
    codes = _encode_codes(PacketType.UNSUBACK, p.reason_codes)
    return _frame(0xB0, _U16.pack(p.packet_id) + props + codes)


def _encode_disconnect5(p: Disconnect, level: int) -> bytes:
    _check_code(PacketType.DISCONNECT, p.reason_code)
    if not p.properties:
        # Remaining length 0 for a normal disconnection, 1 for a bare reason (3.14.2).
        return b"\xe0\x00" if not p.reason_code else bytes((0xE0, 1, p.reason_code))
    props = encode_property_block(p.properties, PacketType.DISCONNECT)
    return _frame(0xE0, bytes((p.reason_code,)) + props)


def _encode_auth5(p: Auth, level: int) -> bytes:
    _check_code(PacketType.AUTH, p.reason_code)
    if not p.properties and not p.reason_code:
        return b"\xf0\x00"  # Success without properties (3.15.2.1)
    props = encode_property_block(p.properties, PacketType.AUTH)
    return _frame(0xF0, bytes((p.reason_code,)) + props)


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: _encode_id_only(0x40),
    PubRec: _encode_id_only(0x50),
    PubRel: _encode_id_only(0x62),
    PubComp: _encode_id_only(0x70),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_id_only(0xB0),
    PingReq: lambda p, level: b"\xc0\x00",
    PingResp: lambda p, level: b"\xd0\x00",
    Disconnect: lambda p, level: b"\xe0\x00",
    Auth: _encode_auth,
}

_ENCODERS5: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack5,
    Publish: _encode_publish5,
    PubAck: _encode_ack5(0x40, PacketType.PUBACK),
    PubRec: _encode_ack5(0x50, PacketType.PUBREC),
    PubRel: _encode_ack5(0x62, PacketType.PUBREL),
    PubComp: _encode_ack5(0x70, PacketType.PUBCOMP),
    Subscribe: _encode_subscribe5,
    SubAck: _encode_suback5,
    Unsubscribe: _encode_unsubscribe5,
    UnsubAck: _encode_unsuback5,
    PingReq: lambda p, level: b"\xc0\x00",
    PingResp: lambda p, level: b"\xd0\x00",
    Disconnect: _encode_disconnect5,
    Auth: _encode_auth5,
}


def encode(packet: Packet, protocol_level: int = MQTT_3_1_1) -> bytes:
    """Encode ``packet`` for a connection at ``protocol_level`` (3, 4 or 5).

    Packets are trusted (they are validated where parsed); a field that cannot be
    represented on the wire raises ValueError. At 5.0 that includes a property
    not valid for the packet, a property value the receiver must reject, and a
    reason code the packet may not carry. At 3.1 / 3.1.1 the 5.0-only fields
    (properties, reason codes other than the CONNACK return code and SUBACK
    return codes, subscription options) are not sent. A CONNECT is encoded at the
    level it names.
    """
    if protocol_level not in _SUPPORTED_LEVELS:
        raise ValueError(f"cannot encode for protocol level {protocol_level}")
    encoders = _ENCODERS5 if protocol_level == MQTT_5 else _ENCODERS
    encoder = encoders.get(type(packet))
    if encoder is None:
        raise TypeError(f"not an MQTT packet: {packet!r}")
    return encoder(packet, protocol_level)

"""Sans-IO MQTT 3.1 / 3.1.1 codec: bytes to packets and packets to bytes.

Parsing enforces the well-formedness rules of the spec (statement ids in the
comments and error messages refer to MQTT 3.1.1). Each packet type has its own
parse function ``(flags, body, protocol_level) -> Packet`` so the MQTT 5.0
properties parser can slot in per packet type, keyed on the protocol level.
"""

import struct
from collections.abc import Callable
from typing import Any

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
    SUBACK_FAILURE,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
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
from .topics import is_valid_topic_filter, is_valid_topic_name

MAX_REMAINING_LENGTH = 268_435_455  # four bytes of 7 bits each (section 2.2.3)

_U16 = struct.Struct(">H")
_SUPPORTED_LEVELS = (MQTT_3_1, MQTT_3_1_1)
# Protocol name -> the only level this server speaks under that name. MQTT 5.0
# goes here (as a second level of "MQTT") once its properties parser exists.
_PROTOCOL_NAMES = {"MQTT": MQTT_3_1_1, "MQIsdp": MQTT_3_1}
_MAX_CLIENT_ID_3_1 = 23  # MQTT 3.1 allows 1..23 characters
_SUBACK_CODES = frozenset((0, 1, 2, SUBACK_FAILURE))

ParseFunction = Callable[[int, memoryview, int], Packet]


# --- parsing helpers --------------------------------------------------------


def _utf8(data: memoryview) -> str:
    try:
        text = str(data, "utf-8")  # strict: rejects surrogates; keeps U+FEFF
    except UnicodeDecodeError:
        raise MalformedPacket("string is not well-formed UTF-8 [MQTT-1.5.3-1]") from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000 [MQTT-1.5.3-2]")
    return text


def _check_flags(name: str, flags: int, required: int, level: int) -> None:
    if flags == required:
        return
    # MQTT 3.1 set DUP on resent PUBREL/SUBSCRIBE/UNSUBSCRIBE; 3.1.1 reserved it.
    if level == MQTT_3_1 and required == 0b0010 and flags == 0b1010:
        return
    raise MalformedPacket(
        f"{name}: reserved fixed header flags {flags:#06b} [MQTT-2.2.2-1, MQTT-2.2.2-2]"
    )


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
            raise MalformedPacket(f"{self.name}: packet identifier 0 [MQTT-2.3.1-1]")
        return packet_id

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
    if level != _PROTOCOL_NAMES[name]:
        # Checked before the flags: another level's packet may be shaped differently.
        raise UnsupportedProtocolVersion(
            f"CONNECT: {name} level {level} is not supported [MQTT-3.1.2-2]"
        )
    cflags = r.u8()
    _check_connect_flags(cflags, level)
    keep_alive = r.u16()
    client_id = r.string()  # [MQTT-3.1.3-3]; empty ids are the adapter's decision
    if level == MQTT_3_1 and not 1 <= len(client_id) <= _MAX_CLIENT_ID_3_1:
        raise ClientIdentifierRejected("CONNECT: MQTT 3.1 client ids have 1 to 23 characters")
    will = _parse_will(r, cflags) if cflags & 0x04 else None
    # Payload fields appear exactly as the flags say [MQTT-3.1.2-18..21, MQTT-3.1.3-1].
    username = r.string() if cflags & 0x80 else None
    password = r.binary() if cflags & 0x40 else None
    r.finish()
    return Connect(client_id, level, bool(cflags & 0x02), keep_alive, username, password, will)


def _check_connect_flags(cflags: int, level: int) -> None:
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


def _parse_will(r: _Reader, cflags: int) -> Will:
    topic = r.string()  # [MQTT-3.1.2-9]: present when the will flag is set
    if not is_valid_topic_name(topic):
        raise MalformedPacket("CONNECT: invalid will topic [MQTT-4.7.1-1, MQTT-4.7.3-1]")
    payload = r.binary()
    return Will(topic, payload, (cflags >> 3) & 0x03, bool(cflags & 0x20))


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


def _parse_publish(flags: int, body: memoryview, level: int) -> Publish:
    # The hot path: plain index arithmetic, no _Reader.
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH: QoS 3 [MQTT-3.3.1-4]")
    if flags & 0x08 and not qos:
        raise MalformedPacket("PUBLISH: DUP set on a QoS 0 message [MQTT-3.3.1-2]")
    size = len(body)
    if size < 2:
        raise MalformedPacket("PUBLISH: packet ends inside the topic name")
    topic_end = 2 + ((body[0] << 8) | body[1])
    if qos:
        if topic_end + 2 > size:
            raise MalformedPacket("PUBLISH: packet ends before the packet identifier")
        packet_id = (body[topic_end] << 8) | body[topic_end + 1]
        if not packet_id:
            raise MalformedPacket("PUBLISH: packet identifier 0 [MQTT-2.3.1-1]")
        payload_start = topic_end + 2
    else:
        if topic_end > size:
            raise MalformedPacket("PUBLISH: packet ends inside the topic name")
        packet_id = None
        payload_start = topic_end
    topic = _utf8(body[2:topic_end])
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH: invalid topic name [MQTT-3.3.2-2, MQTT-4.7.3-1]")
    payload = bytes(body[payload_start:])
    return Publish(topic, payload, qos, bool(flags & 0x01), bool(flags & 0x08), packet_id)


def _id_only_parser(cls: type, name: str, required_flags: int) -> ParseFunction:
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


def _empty_parser(cls: type, name: str) -> ParseFunction:
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
    dead and every later ``feed`` raises ProtocolError.
    """

    __slots__ = ("_buffer", "_closed", "_failed", "_level", "max_packet_size")

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH) -> None:
        self.max_packet_size = max_packet_size  # bound on the remaining length
        self._level = MQTT_3_1_1
        self._buffer = bytearray()
        self._closed = False
        self._failed = False

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
        if self._failed:
            raise ProtocolError("the byte stream already failed to parse")
        if self._closed:
            return []
        buf = self._buffer
        buf += data
        try:
            packets, consumed = self._parse_all(buf)
        except MQTTError:
            self._failed = True
            # A traceback may still hold a view of the old buffer: replace, don't resize.
            self._buffer = bytearray()
            raise
        if self._closed:
            buf.clear()
        else:
            del buf[:consumed]
        return packets

    def _parse_all(self, buf: bytearray) -> tuple[list[Packet], int]:
        packets: list[Packet] = []
        size = len(buf)
        pos = 0
        level = self._level
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
                if length > limit:
                    # Refuse before buffering the body.
                    raise PacketTooLarge(f"packet of {length} bytes exceeds the limit {limit}")
                end = start + length
                if end > size:
                    break
                ptype = first >> 4
                packet = _PARSERS[ptype](first & 0x0F, view[start:end], level)
                packets.append(packet)
                pos = end
                if ptype == _CONNECT_TYPE:
                    # Later packets in this same chunk must parse at the new level.
                    level = self._level = packet.protocol_level  # type: ignore[union-attr]
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


def _encode_publish(p: Publish, level: int) -> bytes:
    return encode_publish(p.topic.encode(), p.payload, p.qos, p.retain, p.dup, p.packet_id)


def _encode_connect(p: Connect, level: int) -> bytes:
    if p.protocol_level not in _SUPPORTED_LEVELS:
        raise ValueError(f"cannot encode a CONNECT for protocol level {p.protocol_level}")
    flags = 0x02 if p.clean_session else 0
    payload = [_string(p.client_id)]
    if p.will is not None:
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        payload += (_string(p.will.topic), _binary(p.will.payload))
    if p.username is not None:
        flags |= 0x80
        payload.append(_string(p.username))
    if p.password is not None:
        flags |= 0x40
        payload.append(_binary(p.password))
    header = _string(p.protocol_name) + bytes((p.protocol_level, flags))
    return _frame(0x10, header + _U16.pack(p.keep_alive) + b"".join(payload))


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


def encode(packet: Packet, protocol_level: int = MQTT_3_1_1) -> bytes:
    """Encode ``packet`` for a connection at ``protocol_level`` (3 or 4).

    Packets are trusted (they are validated where parsed); a field that cannot be
    represented on the wire raises ValueError.
    """
    if protocol_level not in _SUPPORTED_LEVELS:
        raise ValueError(f"cannot encode for protocol level {protocol_level}")
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"not an MQTT packet: {packet!r}")
    return encoder(packet, protocol_level)

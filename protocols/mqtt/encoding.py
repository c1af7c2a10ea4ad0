"""Packets to bytes (``codec``): ``encode`` for any packet at a protocol level, one
encoder per packet type and level (``_ENCODERS``, ``_ENCODERS5``), and the fast paths
``encode_ack``, ``encode_publish`` and ``encode_publish5`` that take no packet object."""

import struct
from collections.abc import Callable
from typing import Any

from . import reason_codes
from .packets import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
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
    UnsubAck,
    Unsubscribe,
)
from .properties import TOPIC_ALIAS, WILL, encode_properties, encode_property_block

MAX_REMAINING_LENGTH = 268_435_455  # four bytes of 7 bits each (section 2.2.3)
_U16 = struct.Struct(">H")
_SUPPORTED_LEVELS = (MQTT_3_1, MQTT_3_1_1, MQTT_5)
_VALID_CODES = reason_codes.VALID


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

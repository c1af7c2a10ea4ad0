"""MQTT 5.0 properties (section 2.2.2, table 2.4): identifiers, data types, placement.

A property set is represented as ``dict[int, Any]`` keyed by identifier, in wire
order for distinct identifiers:

* a single-valued property maps to its value: ``int`` (Byte, Two Byte Integer,
  Four Byte Integer, Variable Byte Integer), ``str`` (UTF-8 Encoded String) or
  ``bytes`` (Binary Data);
* ``USER_PROPERTY`` maps to a tuple of ``(name, value)`` string pairs, in wire
  order (the order is significant: [MQTT-3.3.2-18], [MQTT-3.1.3-10]);
* ``SUBSCRIPTION_IDENTIFIER`` in a PUBLISH may repeat ([MQTT-3.3.4-4]) and maps
  to a tuple of ints; in a SUBSCRIBE it is a single int.

``parse_properties`` and ``encode_properties`` work on the bytes *after* the
Property Length, so ``parse_properties(encode_properties(p, k), k) == p``. The
packet kind is a ``PacketType`` or ``WILL`` for the Will Properties of a CONNECT.

Errors while parsing: an unknown identifier, one not valid for the packet, a
value not of the property's data type, or a truncated value is a Malformed
Packet (section 2.2.2.2: "A Control Packet which contains an Identifier which is
not valid for its packet type, or contains a value not of the specified data type,
is a Malformed Packet"); a second copy of a property that may appear once, or a
value the property's definition forbids (Receive Maximum 0, Maximum QoS 2, ...),
is a Protocol Error (the "It is a Protocol Error to include ... more than once /
to have a value ..." sentences of each property's section in chapter 3).
"""

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from .errors import MalformedPacket, ProtocolError, TopicAliasInvalid
from .packets import PacketType
from .topics import is_valid_topic_name

PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

WILL = 16
"""Packet kind of the Will Properties in a CONNECT payload (outside the 4-bit type range)."""

MAX_VARIABLE_BYTE_INTEGER = 268_435_455  # four bytes of 7 bits (section 1.5.5)


class DataType(IntEnum):
    """The data types of section 1.5 that properties use."""

    BYTE = 1
    TWO_BYTE_INTEGER = 2
    FOUR_BYTE_INTEGER = 4
    VARIABLE_BYTE_INTEGER = 5
    UTF8_STRING = 6
    BINARY_DATA = 7
    UTF8_STRING_PAIR = 8


_T = PacketType
_ACKS = (_T.PUBACK, _T.PUBREC, _T.PUBREL, _T.PUBCOMP)
_D = DataType

# Table 2.4: identifier -> (name, data type, packets where it may appear).
TABLE: dict[int, tuple[str, DataType, frozenset[int]]] = {
    ident: (name, dtype, frozenset(kinds))
    for ident, name, dtype, kinds in (
        (PAYLOAD_FORMAT_INDICATOR, "Payload Format Indicator", _D.BYTE, (_T.PUBLISH, WILL)),
        (MESSAGE_EXPIRY_INTERVAL, "Message Expiry Interval", _D.FOUR_BYTE_INTEGER,
         (_T.PUBLISH, WILL)),
        (CONTENT_TYPE, "Content Type", _D.UTF8_STRING, (_T.PUBLISH, WILL)),
        (RESPONSE_TOPIC, "Response Topic", _D.UTF8_STRING, (_T.PUBLISH, WILL)),
        (CORRELATION_DATA, "Correlation Data", _D.BINARY_DATA, (_T.PUBLISH, WILL)),
        (SUBSCRIPTION_IDENTIFIER, "Subscription Identifier", _D.VARIABLE_BYTE_INTEGER,
         (_T.PUBLISH, _T.SUBSCRIBE)),
        (SESSION_EXPIRY_INTERVAL, "Session Expiry Interval", _D.FOUR_BYTE_INTEGER,
         (_T.CONNECT, _T.CONNACK, _T.DISCONNECT)),
        (ASSIGNED_CLIENT_IDENTIFIER, "Assigned Client Identifier", _D.UTF8_STRING,
         (_T.CONNACK,)),
        (SERVER_KEEP_ALIVE, "Server Keep Alive", _D.TWO_BYTE_INTEGER, (_T.CONNACK,)),
        (AUTHENTICATION_METHOD, "Authentication Method", _D.UTF8_STRING,
         (_T.CONNECT, _T.CONNACK, _T.AUTH)),
        (AUTHENTICATION_DATA, "Authentication Data", _D.BINARY_DATA,
         (_T.CONNECT, _T.CONNACK, _T.AUTH)),
        (REQUEST_PROBLEM_INFORMATION, "Request Problem Information", _D.BYTE, (_T.CONNECT,)),
        (WILL_DELAY_INTERVAL, "Will Delay Interval", _D.FOUR_BYTE_INTEGER, (WILL,)),
        (REQUEST_RESPONSE_INFORMATION, "Request Response Information", _D.BYTE, (_T.CONNECT,)),
        (RESPONSE_INFORMATION, "Response Information", _D.UTF8_STRING, (_T.CONNACK,)),
        (SERVER_REFERENCE, "Server Reference", _D.UTF8_STRING, (_T.CONNACK, _T.DISCONNECT)),
        (REASON_STRING, "Reason String", _D.UTF8_STRING,
         (_T.CONNACK, *_ACKS, _T.SUBACK, _T.UNSUBACK, _T.DISCONNECT, _T.AUTH)),
        (RECEIVE_MAXIMUM, "Receive Maximum", _D.TWO_BYTE_INTEGER, (_T.CONNECT, _T.CONNACK)),
        (TOPIC_ALIAS_MAXIMUM, "Topic Alias Maximum", _D.TWO_BYTE_INTEGER,
         (_T.CONNECT, _T.CONNACK)),
        (TOPIC_ALIAS, "Topic Alias", _D.TWO_BYTE_INTEGER, (_T.PUBLISH,)),
        (MAXIMUM_QOS, "Maximum QoS", _D.BYTE, (_T.CONNACK,)),
        (RETAIN_AVAILABLE, "Retain Available", _D.BYTE, (_T.CONNACK,)),
        (USER_PROPERTY, "User Property", _D.UTF8_STRING_PAIR,
         (_T.CONNECT, _T.CONNACK, _T.PUBLISH, WILL, *_ACKS, _T.SUBSCRIBE, _T.SUBACK,
          _T.UNSUBSCRIBE, _T.UNSUBACK, _T.DISCONNECT, _T.AUTH)),
        (MAXIMUM_PACKET_SIZE, "Maximum Packet Size", _D.FOUR_BYTE_INTEGER,
         (_T.CONNECT, _T.CONNACK)),
        (WILDCARD_SUBSCRIPTION_AVAILABLE, "Wildcard Subscription Available", _D.BYTE,
         (_T.CONNACK,)),
        (SUBSCRIPTION_IDENTIFIER_AVAILABLE, "Subscription Identifier Available", _D.BYTE,
         (_T.CONNACK,)),
        (SHARED_SUBSCRIPTION_AVAILABLE, "Shared Subscription Available", _D.BYTE,
         (_T.CONNACK,)),
    )
}

NAMES: dict[int, str] = {ident: entry[0] for ident, entry in TABLE.items()}
DATA_TYPES: dict[int, DataType] = {ident: entry[1] for ident, entry in TABLE.items()}
ALLOWED: dict[int, frozenset[int]] = {
    kind: frozenset(ident for ident, entry in TABLE.items() if kind in entry[2])
    for kind in (*PacketType, WILL)
}
"""Packet kind -> the property identifiers that may appear in it (none: PINGREQ, ...)."""


def is_repeatable(ident: int, packet_kind: int) -> bool:
    """True if ``ident`` may appear more than once in ``packet_kind``."""
    return ident == USER_PROPERTY or (
        ident == SUBSCRIPTION_IDENTIFIER and packet_kind == PacketType.PUBLISH
    )


def kind_name(packet_kind: int) -> str:
    return "Will Properties" if packet_kind == WILL else PacketType(packet_kind).name


# --- value rules ----------------------------------------------------------------------

_ZERO_OR_ONE = "a value other than 0 or 1"


def _zero_or_one(value: int) -> str | None:
    return _ZERO_OR_ONE if value > 1 else None


def _not_zero(value: int) -> str | None:
    return "the value 0" if value == 0 else None


def _topic_name(value: str) -> str | None:
    # [MQTT-3.3.2-14]: no wildcards; [MQTT-4.7.3-1]: at least one character.
    return None if is_valid_topic_name(value) else "an invalid topic name [MQTT-3.3.2-14]"


# Identifier -> check returning what is wrong with a well-typed value, or None.
_VALUE_RULES: dict[int, Callable[[Any], str | None]] = {
    PAYLOAD_FORMAT_INDICATOR: _zero_or_one,  # 0 or 1 (3.3.2.3.2, 3.1.3.2.3)
    REQUEST_PROBLEM_INFORMATION: _zero_or_one,  # 3.1.2.11.7
    REQUEST_RESPONSE_INFORMATION: _zero_or_one,  # 3.1.2.11.6
    MAXIMUM_QOS: _zero_or_one,  # 3.2.2.3.4
    RETAIN_AVAILABLE: _zero_or_one,  # 3.2.2.3.5
    WILDCARD_SUBSCRIPTION_AVAILABLE: _zero_or_one,  # 3.2.2.3.11
    SUBSCRIPTION_IDENTIFIER_AVAILABLE: _zero_or_one,  # 3.2.2.3.12
    SHARED_SUBSCRIPTION_AVAILABLE: _zero_or_one,  # 3.2.2.3.13
    RECEIVE_MAXIMUM: _not_zero,  # 3.1.2.11.3, 3.2.2.3.3
    MAXIMUM_PACKET_SIZE: _not_zero,  # 3.1.2.11.4, 3.2.2.3.6
    SUBSCRIPTION_IDENTIFIER: _not_zero,  # 3.3.2.3.8, 3.8.2.1.2
    TOPIC_ALIAS: _not_zero,  # [MQTT-3.3.2-8]
    RESPONSE_TOPIC: _topic_name,  # [MQTT-3.3.2-13, MQTT-3.3.2-14]
}


def _set_problem(props: dict[int, Any], packet_kind: int) -> str | None:
    if (
        packet_kind == PacketType.CONNECT
        and AUTHENTICATION_DATA in props
        and AUTHENTICATION_METHOD not in props
    ):
        return "Authentication Data without an Authentication Method (3.1.2.11.10)"
    return None


# --- parsing --------------------------------------------------------------------------


def _utf8(data: memoryview, what: str) -> str:
    try:
        text = str(data, "utf-8")  # strict: rejects surrogates; keeps U+FEFF [MQTT-1.5.4-3]
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what} is not well-formed UTF-8 [MQTT-1.5.4-1]") from None
    if "\x00" in text:
        raise MalformedPacket(f"{what} contains U+0000 [MQTT-1.5.4-2]")
    return text


def read_variable_byte_integer(data: memoryview, pos: int, what: str) -> tuple[int, int]:
    """Decode the Variable Byte Integer at ``data[pos]``: (value, position after it).

    More than four bytes, a truncated integer, or a longer encoding than needed
    ([MQTT-1.5.5-1]) is a Malformed Packet.
    """
    value = 0
    shift = 0
    end = len(data)
    start = pos
    while True:
        if pos >= end:
            raise MalformedPacket(f"{what}: packet ends inside a Variable Byte Integer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and pos - start > 1:
                raise MalformedPacket(
                    f"{what}: Variable Byte Integer not minimally encoded [MQTT-1.5.5-1]"
                )
            return value, pos
        shift += 7
        if shift == 28:
            raise MalformedPacket(f"{what}: Variable Byte Integer longer than 4 bytes (1.5.5)")


def parse_properties(buf: bytes | bytearray | memoryview, packet_kind: int) -> dict[int, Any]:
    """Parse a property block (the bytes after the Property Length) of ``packet_kind``."""
    if not buf:
        return {}
    data = buf if isinstance(buf, memoryview) else memoryview(buf)
    allowed = ALLOWED[packet_kind]
    where = kind_name(packet_kind)
    props: dict[int, Any] = {}
    pairs: list[tuple[str, str]] | None = None
    sub_ids: list[int] | None = None
    end = len(data)
    pos = 0
    while pos < end:
        ident = data[pos]
        pos += 1
        if ident not in allowed:
            # Includes multi-byte identifiers (none is defined) and unknown ones.
            what = NAMES.get(ident, "unknown property")
            raise MalformedPacket(
                f"{where}: {what} ({ident:#04x}) is not valid for this packet (2.2.2.2)"
            )
        dtype = DATA_TYPES[ident]
        name = NAMES[ident]
        if dtype == DataType.BYTE:
            if pos + 1 > end:
                raise MalformedPacket(f"{where}: packet ends inside {name}")
            value: Any = data[pos]
            pos += 1
        elif dtype == DataType.TWO_BYTE_INTEGER:
            if pos + 2 > end:
                raise MalformedPacket(f"{where}: packet ends inside {name}")
            value = (data[pos] << 8) | data[pos + 1]
            pos += 2
        elif dtype == DataType.FOUR_BYTE_INTEGER:
            if pos + 4 > end:
                raise MalformedPacket(f"{where}: packet ends inside {name}")
            value = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
        elif dtype == DataType.VARIABLE_BYTE_INTEGER:
            value, pos = read_variable_byte_integer(data, pos, f"{where}: {name}")
        else:
            first, pos = _read_field(data, pos, end, where, name)
            if dtype == DataType.BINARY_DATA:
                value = bytes(first)
            elif dtype == DataType.UTF8_STRING:
                value = _utf8(first, f"{where}: {name}")
            else:  # UTF-8 String Pair: both strings must be valid [MQTT-1.5.7-1]
                second, pos = _read_field(data, pos, end, where, name)
                value = (_utf8(first, f"{where}: {name} name"),
                         _utf8(second, f"{where}: {name} value"))
        rule = _VALUE_RULES.get(ident)
        if rule is not None:
            problem = rule(value)
            if problem is not None:
                error = TopicAliasInvalid if ident == TOPIC_ALIAS else ProtocolError
                raise error(f"{where}: {name} has {problem}")
        if ident == USER_PROPERTY:
            if pairs is None:
                pairs = []
                props[ident] = None  # keeps the wire position among the other properties
            pairs.append(value)
        elif ident == SUBSCRIPTION_IDENTIFIER and packet_kind == PacketType.PUBLISH:
            if sub_ids is None:
                sub_ids = []
                props[ident] = None
            sub_ids.append(value)
        elif ident in props:
            raise ProtocolError(f"{where}: {name} included more than once (2.2.2.2, chapter 3)")
        else:
            props[ident] = value
    if pairs is not None:
        props[USER_PROPERTY] = tuple(pairs)
    if sub_ids is not None:
        props[SUBSCRIPTION_IDENTIFIER] = tuple(sub_ids)
    problem = _set_problem(props, packet_kind)
    if problem is not None:
        raise ProtocolError(f"{where}: {problem}")
    return props


def _read_field(
    data: memoryview, pos: int, end: int, where: str, name: str
) -> tuple[memoryview, int]:
    """A two-byte length and that many bytes (a string or Binary Data)."""
    if pos + 2 > end:
        raise MalformedPacket(f"{where}: packet ends inside {name}")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise MalformedPacket(f"{where}: packet ends inside {name}")
    return data[pos + 2 : stop], stop


# --- encoding -------------------------------------------------------------------------


def encode_variable_byte_integer(value: int) -> bytes:
    if not 0 <= value <= MAX_VARIABLE_BYTE_INTEGER:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(data: bytes, name: str) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{name} longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _string(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, not {type(value).__name__}")
    return _field(value.encode(), name)


_INT_BOUNDS = {
    DataType.BYTE: (0xFF, 1),
    DataType.TWO_BYTE_INTEGER: (0xFFFF, 2),
    DataType.FOUR_BYTE_INTEGER: (0xFFFF_FFFF, 4),
}


def _encode_value(ident: int, dtype: DataType, value: Any, name: str) -> bytes:
    if dtype in _INT_BOUNDS:
        top, size = _INT_BOUNDS[dtype]
        if not isinstance(value, int) or not 0 <= value <= top:
            raise ValueError(f"{name} must be an int in 0..{top}, not {value!r}")
        return bytes((ident,)) + value.to_bytes(size, "big")
    if dtype == DataType.VARIABLE_BYTE_INTEGER:
        if not isinstance(value, int):
            raise ValueError(f"{name} must be an int, not {value!r}")
        return bytes((ident,)) + encode_variable_byte_integer(value)
    if dtype == DataType.UTF8_STRING:
        return bytes((ident,)) + _string(value, name)
    if dtype == DataType.BINARY_DATA:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError(f"{name} must be bytes, not {type(value).__name__}")
        return bytes((ident,)) + _field(bytes(value), name)
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"{name} must be a (name, value) pair, not {value!r}")
    key, text = value
    return bytes((ident,)) + _string(key, name) + _string(text, name)


def encode_properties(props: dict[int, Any], packet_kind: int) -> bytes:
    """Encode a property set of ``packet_kind`` (without the Property Length).

    Raises ValueError for a property not valid for the packet or a value the
    receiver would reject (the rules ``parse_properties`` enforces).
    """
    if not props:
        return b""
    allowed = ALLOWED[packet_kind]
    out = []
    for ident, value in props.items():
        if ident not in allowed:
            what = NAMES.get(ident, "unknown property")
            raise ValueError(f"{what} ({ident:#x}) is not valid in {kind_name(packet_kind)}")
        dtype = DATA_TYPES[ident]
        name = NAMES[ident]
        values = value if is_repeatable(ident, packet_kind) else (value,)
        if isinstance(values, int):  # one Subscription Identifier given as an int
            values = (values,)
        rule = _VALUE_RULES.get(ident)
        for item in values:
            encoded = _encode_value(ident, dtype, item, name)
            if rule is not None and (problem := rule(item)) is not None:
                raise ValueError(f"{name} has {problem}")
            out.append(encoded)
    problem = _set_problem(props, packet_kind)
    if problem is not None:
        raise ValueError(problem)
    return b"".join(out)


def encode_property_block(props: dict[int, Any], packet_kind: int) -> bytes:
    """Property Length followed by the properties (b"\\x00" for none [MQTT-2.2.2-1])."""
    if not props:
        return b"\x00"
    block = encode_properties(props, packet_kind)
    return encode_variable_byte_integer(len(block)) + block

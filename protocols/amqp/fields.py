"""AMQP 0-9-1 domain types: short and long strings, field tables and field arrays.

Readers take ``(buf, pos, end)`` (``buf`` is bytes, bytearray or memoryview, ``end``
the first byte they may not read) and return ``(value, new_pos)``; anything that
runs past ``end`` or does not decode raises ``MalformedData`` (502 SYNTAX_ERROR),
never IndexError or struct.error.

Field values and their Python types (RabbitMQ's errata of the 0-9-1 grammar):

====  ==========================  =====================  ===========================
tag   wire type                   decodes to             written for
====  ==========================  =====================  ===========================
t     boolean octet               bool                   bool
b     signed 8-bit                int                    (never written)
B     unsigned 8-bit              int                    (never written)
s, U  signed 16-bit               int                    (never written)
u     unsigned 16-bit             int                    (never written)
I     signed 32-bit               int                    int in int32 range
i     unsigned 32-bit             int                    (never written)
l, L  signed 64-bit               int                    int in int64 range (``l``)
f     32-bit float                float                  (never written)
d     64-bit float                float                  float
D     scale octet + signed int32  decimal.Decimal        decimal.Decimal
S     long string                 str                    str
x     byte array (long string)    bytes                  bytes, bytearray, memoryview
T     uint64 seconds since epoch  datetime (UTC aware)   datetime (naive = UTC)
F     field table                 dict[str, Any]         dict (Mapping)
A     field array                 list                   list, tuple
V     void                        None                   None
====  ==========================  =====================  ===========================

``S`` decodes as UTF-8 with ``surrogateescape`` so that any octets survive a decode
and re-encode unchanged. Short strings (names, table keys) must be valid UTF-8.
``L`` is the 0-9-1 letter and ``l`` the errata letter for int64 (py-amqp writes
``L``, pika ``l``): both are read, ``l`` is written, as RabbitMQ does.
"""

import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .errors import MalformedData

# Deeper nesting than this is an attack, not a message; recursion stays bounded.
MAX_NESTING = 64
_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last second datetime holds

_INT8 = struct.Struct(">b")
_INT16 = struct.Struct(">h")
_UINT16 = struct.Struct(">H")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_INT64 = struct.Struct(">q")
_UINT64 = struct.Struct(">Q")
_FLOAT = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")
_DECIMAL = struct.Struct(">Bi")

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _truncated(what: str) -> MalformedData:
    return MalformedData(f"{what} runs past the end of its frame")


# --- primitive readers --------------------------------------------------------------------


def read_octet(buf: Any, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise _truncated("octet")
    return buf[pos], pos + 1


def read_short(buf: Any, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise _truncated("short")
    return _UINT16.unpack_from(buf, pos)[0], pos + 2


def read_long(buf: Any, pos: int, end: int) -> tuple[int, int]:
    if pos + 4 > end:
        raise _truncated("long")
    return _UINT32.unpack_from(buf, pos)[0], pos + 4


def read_longlong(buf: Any, pos: int, end: int) -> tuple[int, int]:
    if pos + 8 > end:
        raise _truncated("longlong")
    return _UINT64.unpack_from(buf, pos)[0], pos + 8


def read_shortstr(buf: Any, pos: int, end: int) -> tuple[str, int]:
    if pos >= end:
        raise _truncated("shortstr")
    stop: int = pos + 1 + buf[pos]
    if stop > end:
        raise _truncated("shortstr")
    try:
        return str(buf[pos + 1 : stop], "utf-8"), stop
    except UnicodeDecodeError:
        raise MalformedData("shortstr is not valid UTF-8") from None


def skip_shortstr(buf: Any, pos: int, end: int) -> int:
    if pos >= end:
        raise _truncated("shortstr")
    stop: int = pos + 1 + buf[pos]
    if stop > end:
        raise _truncated("shortstr")
    return stop


def read_longstr(buf: Any, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 4 > end:
        raise _truncated("longstr")
    stop: int = pos + 4 + _UINT32.unpack_from(buf, pos)[0]
    if stop > end:
        raise _truncated("longstr")
    return bytes(buf[pos + 4 : stop]), stop


def skip_table(buf: Any, pos: int, end: int) -> int:
    """The end of the field table at ``pos``, without decoding it."""
    if pos + 4 > end:
        raise _truncated("field table")
    stop: int = pos + 4 + _UINT32.unpack_from(buf, pos)[0]
    if stop > end:
        raise _truncated("field table")
    return stop


# --- field values -------------------------------------------------------------------------


def _fixed(fmt: struct.Struct, what: str) -> Any:
    size = fmt.size
    unpack_from = fmt.unpack_from

    def read(buf: Any, pos: int, end: int, depth: int) -> tuple[Any, int]:
        if pos + size > end:
            raise _truncated(what)
        return unpack_from(buf, pos)[0], pos + size

    return read


def _read_bool(buf: Any, pos: int, end: int, depth: int) -> tuple[bool, int]:
    if pos >= end:
        raise _truncated("boolean")
    return buf[pos] != 0, pos + 1


def _read_uint8(buf: Any, pos: int, end: int, depth: int) -> tuple[int, int]:
    return read_octet(buf, pos, end)


def _read_long_string(buf: Any, pos: int, end: int, depth: int) -> tuple[str, int]:
    data, pos = read_longstr(buf, pos, end)
    return data.decode("utf-8", "surrogateescape"), pos


def _read_bytes(buf: Any, pos: int, end: int, depth: int) -> tuple[bytes, int]:
    return read_longstr(buf, pos, end)


def _read_decimal(buf: Any, pos: int, end: int, depth: int) -> tuple[Decimal, int]:
    if pos + 5 > end:
        raise _truncated("decimal")
    scale, value = _DECIMAL.unpack_from(buf, pos)
    return Decimal(value).scaleb(-scale), pos + 5


def _read_timestamp(buf: Any, pos: int, end: int, depth: int) -> tuple[datetime, int]:
    seconds, pos = read_longlong(buf, pos, end)
    if seconds > _MAX_TIMESTAMP:
        raise MalformedData(f"timestamp {seconds} is beyond the year 9999")
    return datetime.fromtimestamp(seconds, UTC), pos


def _read_void(buf: Any, pos: int, end: int, depth: int) -> tuple[None, int]:
    return None, pos


def _read_table(buf: Any, pos: int, end: int, depth: int) -> tuple[dict[str, Any], int]:
    if depth >= MAX_NESTING:
        raise MalformedData(f"field tables nested deeper than {MAX_NESTING}")
    stop = skip_table(buf, pos, end)
    pos += 4
    table: dict[str, Any] = {}
    readers = _READERS
    while pos < stop:
        key, pos = read_shortstr(buf, pos, stop)
        if pos >= stop:
            raise _truncated("field value")
        reader = readers.get(buf[pos])
        if reader is None:
            raise MalformedData(f"unknown field type {chr(buf[pos])!r} in a field table")
        table[key], pos = reader(buf, pos + 1, stop, depth + 1)
    return table, stop


def _read_array(buf: Any, pos: int, end: int, depth: int) -> tuple[list[Any], int]:
    if depth >= MAX_NESTING:
        raise MalformedData(f"field arrays nested deeper than {MAX_NESTING}")
    if pos + 4 > end:
        raise _truncated("field array")
    stop: int = pos + 4 + _UINT32.unpack_from(buf, pos)[0]
    if stop > end:
        raise _truncated("field array")
    pos += 4
    items: list[Any] = []
    readers = _READERS
    while pos < stop:
        reader = readers.get(buf[pos])
        if reader is None:
            raise MalformedData(f"unknown field type {chr(buf[pos])!r} in a field array")
        value, pos = reader(buf, pos + 1, stop, depth + 1)
        items.append(value)
    return items, stop


_READERS: dict[int, Any] = {
    ord("t"): _read_bool,
    ord("b"): _fixed(_INT8, "short-short-int"),
    ord("B"): _read_uint8,
    ord("s"): _fixed(_INT16, "short-int"),
    ord("U"): _fixed(_INT16, "short-int"),
    ord("u"): _fixed(_UINT16, "short-uint"),
    ord("I"): _fixed(_INT32, "long-int"),
    ord("i"): _fixed(_UINT32, "long-uint"),
    ord("l"): _fixed(_INT64, "long-long-int"),
    ord("L"): _fixed(_INT64, "long-long-int"),
    ord("f"): _fixed(_FLOAT, "float"),
    ord("d"): _fixed(_DOUBLE, "double"),
    ord("D"): _read_decimal,
    ord("S"): _read_long_string,
    ord("x"): _read_bytes,
    ord("T"): _read_timestamp,
    ord("F"): _read_table,
    ord("A"): _read_array,
    ord("V"): _read_void,
}

FIELD_TYPES = frozenset(chr(tag) for tag in _READERS)


def read_table(buf: Any, pos: int, end: int) -> tuple[dict[str, Any], int]:
    """Read a field table (with its length prefix) at ``pos``."""
    return _read_table(buf, pos, end, 0)


def decode_table(data: bytes, *, length_prefix: bool = True) -> dict[str, Any]:
    """Decode a whole field table; every byte of ``data`` must belong to it.

    ``length_prefix=False`` reads a table without its 4-byte length, as the AMQPLAIN
    response carries it.
    """
    if not length_prefix:
        data = _UINT32.pack(len(data)) + bytes(data)
    table, pos = _read_table(data, 0, len(data), 0)
    if pos != len(data):
        raise MalformedData("bytes after the end of a field table")
    return table


# --- writers ------------------------------------------------------------------------------


def shortstr(text: str) -> bytes:
    """A shortstr: length octet and UTF-8 bytes (at most 255)."""
    data = text.encode()
    if len(data) > 255:
        raise ValueError(f"shortstr of {len(data)} bytes exceeds 255: {text[:40]!r}")
    return bytes((len(data),)) + data


def longstr(data: bytes) -> bytes:
    return _UINT32.pack(len(data)) + data


def _write_value(out: bytearray, value: Any, depth: int) -> None:
    # bool before int: bool is an int subclass.
    if value is None:
        out += b"V"
    elif isinstance(value, bool):
        out += b"t\x01" if value else b"t\x00"
    elif isinstance(value, int):
        if _INT32_MIN <= value <= _INT32_MAX:
            out += b"I"
            out += _INT32.pack(value)
        elif _INT64_MIN <= value <= _INT64_MAX:
            out += b"l"
            out += _INT64.pack(value)
        else:
            raise ValueError(f"integer {value} does not fit a signed 64-bit field")
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        out += b"S"
        out += _UINT32.pack(len(data))
        out += data
    elif isinstance(value, bytes | bytearray | memoryview):
        out += b"x"
        out += _UINT32.pack(len(value))
        out += value
    elif isinstance(value, float):
        out += b"d"
        out += _DOUBLE.pack(value)
    elif isinstance(value, Decimal):
        out += b"D"
        out += _encode_decimal(value)
    elif isinstance(value, datetime):
        out += b"T"
        out += _encode_timestamp(value)
    elif isinstance(value, Mapping):
        out += b"F"
        _write_table(out, value, depth + 1)
    elif isinstance(value, list | tuple):
        out += b"A"
        _write_array(out, value, depth + 1)
    else:
        raise TypeError(f"no AMQP field type for {type(value).__name__}: {value!r}")


def _encode_decimal(value: Decimal) -> bytes:
    if not value.is_finite():
        raise ValueError(f"decimal {value} is not finite")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if exponent > 0:
        unscaled *= 10**exponent
        exponent = 0
    scale = -exponent
    if scale > 255 or not _INT32_MIN <= unscaled <= _INT32_MAX:
        raise ValueError(f"decimal {value} does not fit a scale octet and an int32")
    return _DECIMAL.pack(scale, unscaled)


def _encode_timestamp(value: datetime) -> bytes:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = int(value.timestamp())
    if seconds < 0:
        raise ValueError(f"timestamp {value} is before 1970")
    return _UINT64.pack(seconds)


def _write_table(out: bytearray, table: Mapping[str, Any], depth: int) -> None:
    if depth > MAX_NESTING:
        raise ValueError(f"field tables nested deeper than {MAX_NESTING}")
    start = len(out)
    out += b"\x00\x00\x00\x00"
    for key, value in table.items():
        if not isinstance(key, str):
            raise TypeError(f"field table keys are str, not {type(key).__name__}: {key!r}")
        out += shortstr(key)
        _write_value(out, value, depth)
    _UINT32.pack_into(out, start, len(out) - start - 4)


def _write_array(out: bytearray, items: list[Any] | tuple[Any, ...], depth: int) -> None:
    if depth > MAX_NESTING:
        raise ValueError(f"field arrays nested deeper than {MAX_NESTING}")
    start = len(out)
    out += b"\x00\x00\x00\x00"
    for value in items:
        _write_value(out, value, depth)
    _UINT32.pack_into(out, start, len(out) - start - 4)


def write_table(out: bytearray, table: Mapping[str, Any]) -> None:
    """Append a field table with its length prefix to ``out``."""
    _write_table(out, table, 0)


def encode_table(table: Mapping[str, Any], *, length_prefix: bool = True) -> bytes:
    """Encode a field table (see the module docstring for the type of each value)."""
    out = bytearray()
    _write_table(out, table, 0)
    return bytes(out if length_prefix else out[4:])


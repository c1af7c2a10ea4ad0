"""basic.properties: the property list of a content header, decoded only when needed.

A broker forwards the raw property bytes of a published message untouched (RabbitMQ
does the same), so a publish costs no decoding. ``decode_properties`` turns the raw
bytes into a ``BasicProperties`` when something must look inside,
``delivery_mode_and_expiration`` reads just the two values a broker needs per
publish, and ``encode_properties`` builds the raw bytes for a message that arrived
over another protocol.

Raw bytes are the property flags (one 16-bit word: bit 15 is content_type, bit 2
cluster_id; bit 0, continuation, is never set for the 14 basic properties) followed
by the present properties in flag order. ``timestamp`` is kept as the integer
seconds of the wire (uint64), ``headers`` is a field table (see ``fields``).
"""

import struct
from dataclasses import dataclass, fields
from typing import Any

from . import fields as f
from .errors import MalformedData

_FLAGS = struct.Struct(">H")
_UINT64 = struct.Struct(">Q")

_SHORTSTR, _TABLE, _OCTET, _TIMESTAMP = range(4)

# (name, kind, flag bit) in wire order.
_PROPERTIES = (
    ("content_type", _SHORTSTR, 1 << 15),
    ("content_encoding", _SHORTSTR, 1 << 14),
    ("headers", _TABLE, 1 << 13),
    ("delivery_mode", _OCTET, 1 << 12),
    ("priority", _OCTET, 1 << 11),
    ("correlation_id", _SHORTSTR, 1 << 10),
    ("reply_to", _SHORTSTR, 1 << 9),
    ("expiration", _SHORTSTR, 1 << 8),
    ("message_id", _SHORTSTR, 1 << 7),
    ("timestamp", _TIMESTAMP, 1 << 6),
    ("type", _SHORTSTR, 1 << 5),
    ("user_id", _SHORTSTR, 1 << 4),
    ("app_id", _SHORTSTR, 1 << 3),
    ("cluster_id", _SHORTSTR, 1 << 2),
)
_UNKNOWN_FLAGS = 0x0003  # continuation and the one unassigned bit

EMPTY_PROPERTIES = b"\x00\x00"


@dataclass(frozen=True, slots=True)
class BasicProperties:
    """The 14 properties of class basic; None means absent."""

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


assert [x.name for x in fields(BasicProperties)] == [p[0] for p in _PROPERTIES]


def _flags(raw: bytes) -> int:
    if len(raw) < 2:
        raise MalformedData("content header without property flags", class_id=60)
    flags: int = _FLAGS.unpack_from(raw, 0)[0]
    if flags & _UNKNOWN_FLAGS:
        raise MalformedData(f"unknown basic property flags {flags:#06x}", class_id=60)
    return flags


def decode_properties(raw: bytes) -> BasicProperties:
    """Decode raw property bytes; MalformedData (502) when they do not parse."""
    flags = _flags(raw)
    end = len(raw)
    pos = 2
    values: list[Any] = []
    value: Any
    try:
        for _, kind, bit in _PROPERTIES:
            if not flags & bit:
                values.append(None)
                continue
            if kind == _SHORTSTR:
                value, pos = f.read_shortstr(raw, pos, end)
            elif kind == _OCTET:
                value, pos = f.read_octet(raw, pos, end)
            elif kind == _TABLE:
                value, pos = f.read_table(raw, pos, end)
            else:
                value, pos = f.read_longlong(raw, pos, end)
            values.append(value)
    except MalformedData as exc:
        exc.class_id = 60
        raise
    if pos != end:
        raise MalformedData(f"{end - pos} bytes after the last basic property", class_id=60)
    return BasicProperties(*values)


def delivery_mode_and_expiration(raw: bytes) -> tuple[int | None, str | None]:
    """Only ``delivery_mode`` and ``expiration`` of raw property bytes (None if absent).

    Skips the other properties without decoding them (headers included), so it is
    cheap enough for every publish. Raises MalformedData (502) if the bytes up to
    ``expiration`` are malformed.
    """
    flags = _flags(raw)
    if not flags & 0x1100:
        return None, None
    end = len(raw)
    pos = 2
    try:
        if flags & 0x8000:
            pos = f.skip_shortstr(raw, pos, end)
        if flags & 0x4000:
            pos = f.skip_shortstr(raw, pos, end)
        if flags & 0x2000:
            pos = f.skip_table(raw, pos, end)
        mode = None
        if flags & 0x1000:
            mode, pos = f.read_octet(raw, pos, end)
        if not flags & 0x0100:
            return mode, None
        if flags & 0x0800:
            pos += 1
        if flags & 0x0400:
            pos = f.skip_shortstr(raw, pos, end)
        if flags & 0x0200:
            pos = f.skip_shortstr(raw, pos, end)
        expiration, _ = f.read_shortstr(raw, pos, end)
    except MalformedData as exc:
        exc.class_id = 60
        raise
    return mode, expiration


def encode_properties(properties: BasicProperties | None = None, **values: Any) -> bytes:
    """Raw property bytes from a BasicProperties, or from keyword values of its fields.

    ``encode_properties(delivery_mode=2, headers={"k": 1})`` is the short form.
    """
    if properties is not None:
        if values:
            raise TypeError("pass a BasicProperties or keyword values, not both")
        get = properties.__getattribute__
    else:
        unknown = values.keys() - {p[0] for p in _PROPERTIES}
        if unknown:
            raise TypeError(f"unknown basic properties: {sorted(unknown)}")
        get = values.get
    out = bytearray(b"\x00\x00")
    flags = 0
    for name, kind, bit in _PROPERTIES:
        value = get(name)
        if value is None:
            continue
        flags |= bit
        if kind == _SHORTSTR:
            out += f.shortstr(value)
        elif kind == _OCTET:
            out.append(value)
        elif kind == _TABLE:
            f.write_table(out, value)
        else:
            out += _UINT64.pack(value)
    _FLAGS.pack_into(out, 0, flags)
    return bytes(out)

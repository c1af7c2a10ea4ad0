"""The encoding of a method's arguments (``methods``): the generic coder driven by
each class's ``ARGUMENTS``, and straight-line decoders for the per-message methods."""

import struct
from collections.abc import Callable
from typing import Any

from .. import fields as f
from ..errors import MalformedData
from .base import (
    _BITS,
    _RESERVED_BYTES,
    BIT,
    LONG,
    LONGLONG,
    LONGSTR,
    OCTET,
    R_SHORT,
    R_SHORTSTR,
    SHORT,
    SHORTSTR,
    TABLE,
    Method,
)
from .basic import BasicAck, BasicPublish

_UINT16 = struct.Struct(">H")
_UINT32 = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
_ACK = struct.Struct(">QB")


# --- argument coding ----------------------------------------------------------------------


# Per-message methods get a straight-line decoder; anything unusual in their bytes
# falls back to the generic decoder, which finds the error.


def _decode_publish(buf: Any, pos: int, end: int) -> Method | None:
    # reserved short, exchange, routing key, mandatory and immediate bits
    ex_start = pos + 3
    if ex_start > end:
        return None
    key_length_at = ex_start + buf[pos + 2]
    if key_length_at >= end:
        return None
    bits_at = key_length_at + 1 + buf[key_length_at]
    if bits_at + 1 != end:
        return None
    try:
        exchange = str(buf[ex_start:key_length_at], "utf-8")
        routing_key = str(buf[key_length_at + 1 : bits_at], "utf-8")
    except UnicodeDecodeError:
        return None
    bits = buf[bits_at]
    return BasicPublish(exchange, routing_key, bool(bits & 1), bool(bits & 2))


def _decode_ack(buf: Any, pos: int, end: int) -> Method | None:
    if end - pos != 9:
        return None
    return BasicAck(_UINT64.unpack_from(buf, pos)[0], bool(buf[pos + 8] & 1))


_FAST_DECODERS: dict[type, Callable[[Any, int, int], Method | None]] = {
    BasicPublish: _decode_publish,
    BasicAck: _decode_ack,
}


def decode_arguments(cls: type[Method], buf: Any, pos: int, end: int) -> Method:
    """Build a ``cls`` from the argument bytes ``buf[pos:end]``; all must be used.

    Raises MalformedData (502) for truncated, overlong or undecodable arguments.
    """
    fast = _FAST_DECODERS.get(cls)
    if fast is not None:
        method = fast(buf, pos, end)
        if method is not None:
            return method
    values: list[Any] = []
    append = values.append
    value: Any
    octet = 0
    bit = 8  # next bit of ``octet`` to read; 8: a bit argument starts a new octet
    for kind in cls._KINDS:
        if kind in _BITS:
            if bit == 8:
                if pos >= end:
                    raise MalformedData(f"{cls.NAME}: bit argument runs past the frame")
                octet = buf[pos]
                pos += 1
                bit = 0
            if kind == BIT:
                append(bool(octet >> bit & 1))
            bit += 1
            continue
        bit = 8
        if kind == SHORTSTR:
            value, pos = f.read_shortstr(buf, pos, end)
            append(value)
        elif kind == R_SHORT:
            pos += 2
            if pos > end:
                raise MalformedData(f"{cls.NAME}: reserved short runs past the frame")
        elif kind == SHORT:
            value, pos = f.read_short(buf, pos, end)
            append(value)
        elif kind == LONGLONG:
            value, pos = f.read_longlong(buf, pos, end)
            append(value)
        elif kind == TABLE:
            value, pos = f.read_table(buf, pos, end)
            append(value)
        elif kind == LONG:
            value, pos = f.read_long(buf, pos, end)
            append(value)
        elif kind == OCTET:
            value, pos = f.read_octet(buf, pos, end)
            append(value)
        elif kind == LONGSTR:
            value, pos = f.read_longstr(buf, pos, end)
            append(value)
        elif kind == R_SHORTSTR:
            pos = f.skip_shortstr(buf, pos, end)
        else:  # R_LONGSTR
            _, pos = f.read_longstr(buf, pos, end)
    if pos != end:
        raise MalformedData(f"{cls.NAME}: {end - pos} bytes after the last argument")
    return cls(*values)


def encode_arguments(method: Method) -> bytes:
    """The argument bytes of ``method`` (without class and method ids)."""
    if type(method) is BasicAck:  # one per publish in confirm mode
        return _ACK.pack(method.delivery_tag, method.multiple)
    out = bytearray()
    octet = 0
    bit = 8
    for name, kind in method.ARGUMENTS:
        if kind in _BITS:
            if bit == 8:
                out.append(0)
                octet = len(out) - 1
                bit = 0
            if kind == BIT and getattr(method, name):  # type: ignore[arg-type]
                out[octet] |= 1 << bit
            bit += 1
            continue
        bit = 8
        if name is None:
            out += _RESERVED_BYTES[kind]
            continue
        value = getattr(method, name)
        if kind == SHORTSTR:
            out += f.shortstr(value)
        elif kind == SHORT:
            out += _UINT16.pack(value)
        elif kind == LONG:
            out += _UINT32.pack(value)
        elif kind == LONGLONG:
            out += _UINT64.pack(value)
        elif kind == OCTET:
            out.append(value)
        elif kind == LONGSTR:
            out += f.longstr(value)
        elif kind == TABLE:
            f.write_table(out, value)
    return bytes(out)

"""AMQP 0-9-1 methods as frozen dataclasses, with the encoding of their arguments.

One class per method of the 0-9-1 grammar with RabbitMQ's extensions (basic.nack,
confirm.*, exchange.bind/unbind, connection.blocked, the auto_delete and internal
bits of exchange.declare, basic.cancel from the server). Each class carries
``CLASS_ID``, ``METHOD_ID`` and ``NAME`` ("queue.declare"), whether a content
follows it (``HAS_CONTENT``), and who may send it (``FROM_CLIENT``, ``FROM_SERVER``).

Argument types map to Python as: octet, short, long, longlong -> int; bit -> bool;
shortstr -> str (UTF-8); longstr -> bytes; table -> dict (see ``fields``). Reserved
arguments (the old ticket, out-of-band, known-hosts, insist...) are not fields: they
are written as zero or empty and skipped when read.
"""

import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, dataclass_transform

from . import fields as f
from .errors import MalformedData

# Argument kinds. The R_ kinds are reserved arguments with no field.
OCTET, SHORT, LONG, LONGLONG, SHORTSTR, LONGSTR, BIT, TABLE = range(8)
R_SHORT, R_SHORTSTR, R_LONGSTR, R_BIT = range(8, 12)
_RESERVED = frozenset((R_SHORT, R_SHORTSTR, R_LONGSTR, R_BIT))
_BITS = frozenset((BIT, R_BIT))
_RESERVED_BYTES = {R_SHORT: b"\x00\x00", R_SHORTSTR: b"\x00", R_LONGSTR: b"\x00\x00\x00\x00"}

_UINT16 = struct.Struct(">H")
_UINT32 = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
_ACK = struct.Struct(">QB")


class Method:
    """Base of every method class."""

    __slots__ = ()

    CLASS_ID: ClassVar[int]
    METHOD_ID: ClassVar[int]
    NAME: ClassVar[str]
    HAS_CONTENT: ClassVar[bool] = False
    FROM_CLIENT: ClassVar[bool]
    FROM_SERVER: ClassVar[bool]
    ARGUMENTS: ClassVar[tuple[tuple[str | None, int], ...]]
    _KINDS: ClassVar[tuple[int, ...]]  # the kinds of ARGUMENTS, for the decoder


# Keyed by class_id << 16 | method_id.
METHODS: dict[int, type[Method]] = {}
# Methods of the specification this codec does not carry: 540 NOT_IMPLEMENTED.
NOT_IMPLEMENTED = frozenset(
    (
        10 << 16 | 70,  # connection.update-secret
        10 << 16 | 71,  # connection.update-secret-ok
        30 << 16 | 10,  # access.request
        30 << 16 | 11,  # access.request-ok
    )
)


@dataclass_transform()  # the classes it registers are dataclasses
def _method(
    class_id: int,
    method_id: int,
    name: str,
    *arguments: tuple[str | None, int],
    client: bool = False,
    server: bool = False,
    content: bool = False,
) -> Any:
    def register(cls: type) -> type[Method]:
        new: type[Any] = dataclass(frozen=True, slots=True)(cls)
        names = [n for n, kind in arguments if kind not in _RESERVED]
        assert [x.name for x in fields(new)] == names, name
        new.CLASS_ID = class_id
        new.METHOD_ID = method_id
        new.NAME = name
        new.HAS_CONTENT = content
        new.FROM_CLIENT = client
        new.FROM_SERVER = server
        new.ARGUMENTS = arguments
        new._KINDS = tuple(kind for _, kind in arguments)
        key = class_id << 16 | method_id
        assert key not in METHODS, name
        METHODS[key] = new
        return new

    return register


def _table() -> Any:
    return field(default_factory=dict)


# --- connection (class 10) ----------------------------------------------------------------


@_method(
    10, 10, "connection.start",
    ("version_major", OCTET), ("version_minor", OCTET), ("server_properties", TABLE),
    ("mechanisms", LONGSTR), ("locales", LONGSTR),
    server=True,
)  # fmt: skip
class ConnectionStart(Method):
    version_major: int = 0
    version_minor: int = 9
    server_properties: dict[str, Any] = _table()
    mechanisms: bytes = b"PLAIN AMQPLAIN"
    locales: bytes = b"en_US"


@_method(
    10, 11, "connection.start-ok",
    ("client_properties", TABLE), ("mechanism", SHORTSTR), ("response", LONGSTR),
    ("locale", SHORTSTR),
    client=True,
)  # fmt: skip
class ConnectionStartOk(Method):
    client_properties: dict[str, Any] = _table()
    mechanism: str = "PLAIN"
    response: bytes = b""
    locale: str = "en_US"


@_method(10, 20, "connection.secure", ("challenge", LONGSTR), server=True)
class ConnectionSecure(Method):
    challenge: bytes = b""


@_method(10, 21, "connection.secure-ok", ("response", LONGSTR), client=True)
class ConnectionSecureOk(Method):
    response: bytes = b""


_TUNE = (("channel_max", SHORT), ("frame_max", LONG), ("heartbeat", SHORT))


@_method(10, 30, "connection.tune", *_TUNE, server=True)
class ConnectionTune(Method):
    channel_max: int = 0
    frame_max: int = 0
    heartbeat: int = 0


@_method(10, 31, "connection.tune-ok", *_TUNE, client=True)
class ConnectionTuneOk(Method):
    channel_max: int = 0
    frame_max: int = 0
    heartbeat: int = 0


@_method(
    10, 40, "connection.open",
    ("virtual_host", SHORTSTR), (None, R_SHORTSTR), (None, R_BIT),
    client=True,
)  # fmt: skip
class ConnectionOpen(Method):
    virtual_host: str = "/"


@_method(10, 41, "connection.open-ok", (None, R_SHORTSTR), server=True)
class ConnectionOpenOk(Method):
    pass


_CLOSE = (("reply_code", SHORT), ("reply_text", SHORTSTR), ("class_id", SHORT),
          ("method_id", SHORT))  # fmt: skip


@_method(10, 50, "connection.close", *_CLOSE, client=True, server=True)
class ConnectionClose(Method):
    reply_code: int = 200
    reply_text: str = ""
    class_id: int = 0
    method_id: int = 0


@_method(10, 51, "connection.close-ok", client=True, server=True)
class ConnectionCloseOk(Method):
    pass


@_method(10, 60, "connection.blocked", ("reason", SHORTSTR), server=True)
class ConnectionBlocked(Method):
    reason: str = ""


@_method(10, 61, "connection.unblocked", server=True)
class ConnectionUnblocked(Method):
    pass


# --- channel (class 20) -------------------------------------------------------------------


@_method(20, 10, "channel.open", (None, R_SHORTSTR), client=True)
class ChannelOpen(Method):
    pass


@_method(20, 11, "channel.open-ok", (None, R_LONGSTR), server=True)
class ChannelOpenOk(Method):
    pass


@_method(20, 20, "channel.flow", ("active", BIT), client=True, server=True)
class ChannelFlow(Method):
    active: bool = True


@_method(20, 21, "channel.flow-ok", ("active", BIT), client=True, server=True)
class ChannelFlowOk(Method):
    active: bool = True


@_method(20, 40, "channel.close", *_CLOSE, client=True, server=True)
class ChannelClose(Method):
    reply_code: int = 200
    reply_text: str = ""
    class_id: int = 0
    method_id: int = 0


@_method(20, 41, "channel.close-ok", client=True, server=True)
class ChannelCloseOk(Method):
    pass


# --- exchange (class 40) ------------------------------------------------------------------


@_method(
    40, 10, "exchange.declare",
    (None, R_SHORT), ("exchange", SHORTSTR), ("type", SHORTSTR), ("passive", BIT),
    ("durable", BIT), ("auto_delete", BIT), ("internal", BIT), ("nowait", BIT),
    ("arguments", TABLE),
    client=True,
)  # fmt: skip
class ExchangeDeclare(Method):
    exchange: str = ""
    type: str = "direct"
    passive: bool = False
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 11, "exchange.declare-ok", server=True)
class ExchangeDeclareOk(Method):
    pass


@_method(
    40, 20, "exchange.delete",
    (None, R_SHORT), ("exchange", SHORTSTR), ("if_unused", BIT), ("nowait", BIT),
    client=True,
)  # fmt: skip
class ExchangeDelete(Method):
    exchange: str = ""
    if_unused: bool = False
    nowait: bool = False


@_method(40, 21, "exchange.delete-ok", server=True)
class ExchangeDeleteOk(Method):
    pass


_EXCHANGE_BIND = ((None, R_SHORT), ("destination", SHORTSTR), ("source", SHORTSTR),
                  ("routing_key", SHORTSTR), ("nowait", BIT), ("arguments", TABLE))  # fmt: skip


@_method(40, 30, "exchange.bind", *_EXCHANGE_BIND, client=True)
class ExchangeBind(Method):
    destination: str = ""
    source: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 31, "exchange.bind-ok", server=True)
class ExchangeBindOk(Method):
    pass


@_method(40, 40, "exchange.unbind", *_EXCHANGE_BIND, client=True)
class ExchangeUnbind(Method):
    destination: str = ""
    source: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 51, "exchange.unbind-ok", server=True)
class ExchangeUnbindOk(Method):
    pass


# --- queue (class 50) ---------------------------------------------------------------------


@_method(
    50, 10, "queue.declare",
    (None, R_SHORT), ("queue", SHORTSTR), ("passive", BIT), ("durable", BIT),
    ("exclusive", BIT), ("auto_delete", BIT), ("nowait", BIT), ("arguments", TABLE),
    client=True,
)  # fmt: skip
class QueueDeclare(Method):
    queue: str = ""
    passive: bool = False
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(
    50, 11, "queue.declare-ok",
    ("queue", SHORTSTR), ("message_count", LONG), ("consumer_count", LONG),
    server=True,
)  # fmt: skip
class QueueDeclareOk(Method):
    queue: str = ""
    message_count: int = 0
    consumer_count: int = 0


@_method(
    50, 20, "queue.bind",
    (None, R_SHORT), ("queue", SHORTSTR), ("exchange", SHORTSTR), ("routing_key", SHORTSTR),
    ("nowait", BIT), ("arguments", TABLE),
    client=True,
)  # fmt: skip
class QueueBind(Method):
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(50, 21, "queue.bind-ok", server=True)
class QueueBindOk(Method):
    pass


@_method(
    50, 30, "queue.purge", (None, R_SHORT), ("queue", SHORTSTR), ("nowait", BIT), client=True
)
class QueuePurge(Method):
    queue: str = ""
    nowait: bool = False


@_method(50, 31, "queue.purge-ok", ("message_count", LONG), server=True)
class QueuePurgeOk(Method):
    message_count: int = 0


@_method(
    50, 40, "queue.delete",
    (None, R_SHORT), ("queue", SHORTSTR), ("if_unused", BIT), ("if_empty", BIT),
    ("nowait", BIT),
    client=True,
)  # fmt: skip
class QueueDelete(Method):
    queue: str = ""
    if_unused: bool = False
    if_empty: bool = False
    nowait: bool = False


@_method(50, 41, "queue.delete-ok", ("message_count", LONG), server=True)
class QueueDeleteOk(Method):
    message_count: int = 0


@_method(
    50, 50, "queue.unbind",
    (None, R_SHORT), ("queue", SHORTSTR), ("exchange", SHORTSTR), ("routing_key", SHORTSTR),
    ("arguments", TABLE),
    client=True,
)  # fmt: skip
class QueueUnbind(Method):
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    arguments: dict[str, Any] = _table()


@_method(50, 51, "queue.unbind-ok", server=True)
class QueueUnbindOk(Method):
    pass


# --- basic (class 60) ---------------------------------------------------------------------


@_method(
    60, 10, "basic.qos",
    ("prefetch_size", LONG), ("prefetch_count", SHORT), ("global_", BIT),
    client=True,
)  # fmt: skip
class BasicQos(Method):
    prefetch_size: int = 0
    prefetch_count: int = 0
    global_: bool = False


@_method(60, 11, "basic.qos-ok", server=True)
class BasicQosOk(Method):
    pass


@_method(
    60, 20, "basic.consume",
    (None, R_SHORT), ("queue", SHORTSTR), ("consumer_tag", SHORTSTR), ("no_local", BIT),
    ("no_ack", BIT), ("exclusive", BIT), ("nowait", BIT), ("arguments", TABLE),
    client=True,
)  # fmt: skip
class BasicConsume(Method):
    queue: str = ""
    consumer_tag: str = ""
    no_local: bool = False
    no_ack: bool = False
    exclusive: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(60, 21, "basic.consume-ok", ("consumer_tag", SHORTSTR), server=True)
class BasicConsumeOk(Method):
    consumer_tag: str = ""


# Both ways: the server cancels a consumer whose queue went away (consumer_cancel_notify).
@_method(
    60, 30, "basic.cancel", ("consumer_tag", SHORTSTR), ("nowait", BIT),
    client=True, server=True,
)  # fmt: skip
class BasicCancel(Method):
    consumer_tag: str = ""
    nowait: bool = False


@_method(60, 31, "basic.cancel-ok", ("consumer_tag", SHORTSTR), client=True, server=True)
class BasicCancelOk(Method):
    consumer_tag: str = ""


@_method(
    60, 40, "basic.publish",
    (None, R_SHORT), ("exchange", SHORTSTR), ("routing_key", SHORTSTR), ("mandatory", BIT),
    ("immediate", BIT),
    client=True, content=True,
)  # fmt: skip
class BasicPublish(Method):
    exchange: str = ""
    routing_key: str = ""
    mandatory: bool = False
    immediate: bool = False


@_method(
    60, 50, "basic.return",
    ("reply_code", SHORT), ("reply_text", SHORTSTR), ("exchange", SHORTSTR),
    ("routing_key", SHORTSTR),
    server=True, content=True,
)  # fmt: skip
class BasicReturn(Method):
    reply_code: int = 0
    reply_text: str = ""
    exchange: str = ""
    routing_key: str = ""


@_method(
    60, 60, "basic.deliver",
    ("consumer_tag", SHORTSTR), ("delivery_tag", LONGLONG), ("redelivered", BIT),
    ("exchange", SHORTSTR), ("routing_key", SHORTSTR),
    server=True, content=True,
)  # fmt: skip
class BasicDeliver(Method):
    consumer_tag: str = ""
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""


@_method(
    60, 70, "basic.get", (None, R_SHORT), ("queue", SHORTSTR), ("no_ack", BIT), client=True
)
class BasicGet(Method):
    queue: str = ""
    no_ack: bool = False


@_method(
    60, 71, "basic.get-ok",
    ("delivery_tag", LONGLONG), ("redelivered", BIT), ("exchange", SHORTSTR),
    ("routing_key", SHORTSTR), ("message_count", LONG),
    server=True, content=True,
)  # fmt: skip
class BasicGetOk(Method):
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    message_count: int = 0


@_method(60, 72, "basic.get-empty", (None, R_SHORTSTR), server=True)
class BasicGetEmpty(Method):
    pass


# Both ways: the server acks publishes in confirm mode.
@_method(
    60, 80, "basic.ack", ("delivery_tag", LONGLONG), ("multiple", BIT),
    client=True, server=True,
)  # fmt: skip
class BasicAck(Method):
    delivery_tag: int = 0
    multiple: bool = False


@_method(60, 90, "basic.reject", ("delivery_tag", LONGLONG), ("requeue", BIT), client=True)
class BasicReject(Method):
    delivery_tag: int = 0
    requeue: bool = True


@_method(60, 100, "basic.recover-async", ("requeue", BIT), client=True)
class BasicRecoverAsync(Method):
    requeue: bool = False


@_method(60, 110, "basic.recover", ("requeue", BIT), client=True)
class BasicRecover(Method):
    requeue: bool = False


@_method(60, 111, "basic.recover-ok", server=True)
class BasicRecoverOk(Method):
    pass


@_method(
    60, 120, "basic.nack", ("delivery_tag", LONGLONG), ("multiple", BIT), ("requeue", BIT),
    client=True, server=True,
)  # fmt: skip
class BasicNack(Method):
    delivery_tag: int = 0
    multiple: bool = False
    requeue: bool = True


# --- confirm (class 85) and tx (class 90) -------------------------------------------------


@_method(85, 10, "confirm.select", ("nowait", BIT), client=True)
class ConfirmSelect(Method):
    nowait: bool = False


@_method(85, 11, "confirm.select-ok", server=True)
class ConfirmSelectOk(Method):
    pass


@_method(90, 10, "tx.select", client=True)
class TxSelect(Method):
    pass


@_method(90, 11, "tx.select-ok", server=True)
class TxSelectOk(Method):
    pass


@_method(90, 20, "tx.commit", client=True)
class TxCommit(Method):
    pass


@_method(90, 21, "tx.commit-ok", server=True)
class TxCommitOk(Method):
    pass


@_method(90, 30, "tx.rollback", client=True)
class TxRollback(Method):
    pass


@_method(90, 31, "tx.rollback-ok", server=True)
class TxRollbackOk(Method):
    pass


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

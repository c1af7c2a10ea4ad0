"""The store's records: the key of each kind, and the codecs of their values (the layout
and the order of writes are described in the package's docstring).
"""

from __future__ import annotations

import ast
import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..delayed import EXCHANGE as EXCHANGE_TARGET
from ..delayed import QUEUE as QUEUE_TARGET
from ..delayed import TOPIC, Pending, Target
from ..exchanges import arguments_key
from ..message import AmqpPart, Death, Message
from ..queues import Queue
from ..sessions import Delivery, Session, SubscriptionOptions

if TYPE_CHECKING:
    from ..exchanges import Binding, Exchange

__all__ = [
    "AMQP_FORMAT", "BINDING", "EXCHANGE", "FORMAT", "HANDED_OUT", "INBOUND_QOS2", "MESSAGE",
    "QUEUE", "QUEUE_MESSAGE", "RETAINED", "SEP", "SESSION", "SUBSCRIPTION", "StringCache",
    "binding_key", "decode_arguments", "decode_binding", "decode_delivery", "decode_exchange",
    "decode_message", "decode_queue", "decode_session", "decode_subscription",
    "encode_arguments", "encode_binding", "encode_delivery", "encode_exchange",
    "encode_message", "encode_queue", "encode_released", "encode_session",
    "encode_subscription",
]

FORMAT = 1  # first byte of every value
SEP = b"\0"
SESSION, SUBSCRIPTION, MESSAGE, INBOUND_QOS2, RETAINED = b"s/", b"u/", b"m/", b"q2/", b"r/"
QUEUE, QUEUE_MESSAGE, HANDED_OUT = b"Q/", b"e/", b"\1"
EXCHANGE, BINDING = b"X/", b"B/"
DELAYED = b"d/"  # a pending delayed message: d/<id:8>
AMQP_FORMAT = 2  # a message with an AMQP part (``encode_message``)
# Fields of the AMQP part present in a format 2 message, after the format 1 ones (exchange
# and routing key are always written: the bits are there for records of older versions).
_HAS_EXCHANGE, _HAS_ROUTING_KEY, _HAS_PROPERTIES, _PERSISTENT, _HAS_DEATHS = 1, 2, 4, 8, 16
_DECLARED, _AUTO_DELETE, _INTERNAL = 1, 2, 4  # queue / exchange record flags

_MESSAGE_HEAD = struct.Struct(">BBBII")  # format, qos | retain, fields present, lengths
# Fields present in a stored message, beyond topic and payload, in this order.
_HAS_EXPIRY, _HAS_FORMAT, _HAS_CONTENT_TYPE, _HAS_CORRELATION = 1, 2, 4, 8
_HAS_RESPONSE_TOPIC, _HAS_PROTOCOL, _HAS_CLIENT, _HAS_HEADERS = 16, 32, 64, 128
_F64 = struct.Struct(">d")  # expiry deadline, wall-clock seconds
_DELIVERY_HEAD = struct.Struct(">BBBBHB")  # format, flags, qos, retain, packet id, sub ids
_SESSION = struct.Struct(">BId")  # format, expiry interval, disconnected at (wall; NaN: no)
_SUBSCRIPTION = struct.Struct(">BBBBI")  # format, qos, no local, retain as published, sub id
_LEN = struct.Struct(">I")
_U32 = struct.Struct(">I")
_NONE = 0xFFFFFFFF
_RELEASED, _GROUP = 1, 2  # delivery flags


# --------------------------------------------------------------------------- value codecs


def _field(value: bytes | None) -> bytes:
    return _LEN.pack(_NONE) if value is None else _LEN.pack(len(value)) + value


def _text(value: str | None) -> bytes:
    return _field(None if value is None else value.encode())


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def field(self) -> bytes | None:
        (length,) = _LEN.unpack_from(self.data, self.pos)
        self.pos += 4
        if length == _NONE:
            return None
        start, self.pos = self.pos, self.pos + length
        if self.pos > len(self.data):
            raise ValueError("truncated value")
        return self.data[start : self.pos]

    def required_field(self) -> bytes:
        value = self.field()
        if value is None:
            raise ValueError("missing field")
        return value

    def text(self) -> str | None:
        value = self.field()
        return None if value is None else value.decode()

    def required_text(self) -> str:
        value = self.text()
        if value is None:
            raise ValueError("missing text")
        return value

    def u32(self) -> int:
        value: int = _U32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return value


def encode_message(message: Message, to_wall: float) -> bytes:
    """The message as stored; ``to_wall`` turns its expiry deadline into wall-clock time.
    Fields a message does not have take no space (``_OPTIONAL``)."""
    topic = message.topic.encode()
    payload = message.payload
    bits = 0
    parts = [b"", topic, payload]
    if message.expiry is not None:
        bits |= _HAS_EXPIRY
        parts.append(_F64.pack(message.expiry + to_wall))
    if message.payload_format is not None:
        bits |= _HAS_FORMAT
        parts.append(bytes((message.payload_format,)))
    for bit, value in (
        (_HAS_CONTENT_TYPE, message.content_type),
        (_HAS_CORRELATION, message.correlation_data),
        (_HAS_RESPONSE_TOPIC, message.response_topic),
        (_HAS_PROTOCOL, message.origin_protocol or None),
        (_HAS_CLIENT, message.origin_client),
    ):
        if value is not None:
            bits |= bit
            data = value.encode() if isinstance(value, str) else value
            parts.append(_LEN.pack(len(data)))
            parts.append(data)
    if message.headers:
        bits |= _HAS_HEADERS
        parts.append(_U32.pack(len(message.headers)))
        for name, value in message.headers:
            parts.append(_text(name))
            parts.append(_text(value))
    fmt = FORMAT
    if message.amqp is not None:
        fmt = AMQP_FORMAT
        parts.append(_encode_amqp(message.amqp))
    qos_retain = message.qos | (0x80 if message.retain else 0)
    parts[0] = _MESSAGE_HEAD.pack(fmt, qos_retain, bits, len(topic), len(payload))
    return b"".join(parts)


def _encode_amqp(amqp: AmqpPart) -> bytes:
    bits = _HAS_EXCHANGE | _HAS_ROUTING_KEY
    parts = [b"", _text(amqp.exchange), _text(amqp.routing_key)]
    if amqp.properties is not None:
        bits |= _HAS_PROPERTIES
        parts.append(_field(amqp.properties))
    if amqp.persistent:
        bits |= _PERSISTENT
    if amqp.deaths:
        bits |= _HAS_DEATHS
        parts.append(_U32.pack(len(amqp.deaths)))
        for death in amqp.deaths:
            parts += [_text(death.queue), _text(death.reason), _text(death.exchange),
                      _U32.pack(len(death.routing_keys))]
            parts += [_text(key) for key in death.routing_keys]
            parts += [_U32.pack(death.count), _F64.pack(death.time)]
    parts[0] = bytes((bits,))
    return b"".join(parts)


def _decode_amqp(reader: _Reader) -> AmqpPart:
    bits = reader.data[reader.pos]
    reader.pos += 1
    # Every message with AMQP fields had been routed by an exchange, so has its routing
    # key (a missing exchange was read as the default one, "", before as now).
    exchange = reader.required_text() if bits & _HAS_EXCHANGE else ""
    if not bits & _HAS_ROUTING_KEY:
        raise ValueError("AMQP message without a routing key")
    routing_key = reader.required_text()
    properties = reader.field() if bits & _HAS_PROPERTIES else None
    deaths: tuple[Death, ...] = ()
    if bits & _HAS_DEATHS:
        died = []
        for _ in range(reader.u32()):
            queue, reason = reader.required_text(), reader.required_text()
            published_to = reader.required_text()
            keys = tuple(reader.required_text() for _ in range(reader.u32()))
            count = reader.u32()
            (when,) = _F64.unpack_from(reader.data, reader.pos)
            reader.pos += 8
            died.append(Death(queue, reason, published_to, keys, count, when))
        deaths = tuple(died)
    return AmqpPart(exchange, routing_key, properties, persistent=bool(bits & _PERSISTENT),
                    deaths=deaths)


class StringCache(dict[bytes, str]):
    """bytes -> str, decoding each distinct value once: the topics and client ids of a
    replay repeat, and one shared ``str`` per value also saves memory."""

    def __missing__(self, raw: bytes) -> str:
        text = self[raw] = raw.decode()
        return text


def decode_message(
    data: bytes, pos: int, to_clock: float, strings: StringCache | None = None
) -> Message:
    if strings is None:
        strings = StringCache()
    fmt, qos_retain, bits, topic_len, payload_len = _MESSAGE_HEAD.unpack_from(data, pos)
    if fmt != FORMAT and fmt != AMQP_FORMAT:
        raise ValueError(f"unknown message format {fmt}")
    pos += _MESSAGE_HEAD.size
    end = pos + topic_len
    topic = strings[data[pos:end]]
    pos = end + payload_len
    payload = data[end:pos]
    if pos > len(data):
        raise ValueError("truncated value")
    if bits == _HAS_PROTOCOL | _HAS_CLIENT and fmt == FORMAT:  # the usual: nothing else
        (length,) = _LEN.unpack_from(data, pos)
        pos += 4
        protocol = strings[data[pos : pos + length]]
        pos += length
        (length,) = _LEN.unpack_from(data, pos)
        pos += 4
        client = strings[data[pos : pos + length]]
        if pos + length > len(data):
            raise ValueError("truncated value")
        return Message(topic, payload, qos_retain & 0x7F, qos_retain >= 0x80,
                       origin_protocol=protocol, origin_client=client)
    expiry = payload_format = None
    if bits & _HAS_EXPIRY:
        (expiry,) = _F64.unpack_from(data, pos)
        expiry += to_clock
        pos += 8
    if bits & _HAS_FORMAT:
        payload_format = data[pos]
        pos += 1
    reader = _Reader(data, pos)
    optional: dict[int, bytes] = {}
    for bit in (_HAS_CONTENT_TYPE, _HAS_CORRELATION, _HAS_RESPONSE_TOPIC, _HAS_PROTOCOL,
                _HAS_CLIENT):
        if bits & bit:
            optional[bit] = reader.required_field()
    headers: tuple[tuple[str, str], ...] = ()
    if bits & _HAS_HEADERS:
        headers = tuple(
            (reader.required_text(), reader.required_text()) for _ in range(reader.u32())
        )
    amqp = _decode_amqp(reader) if fmt == AMQP_FORMAT else None
    if reader.pos > len(data):
        raise ValueError("truncated value")
    text = {bit: strings[value] for bit, value in optional.items() if bit != _HAS_CORRELATION}
    return Message(
        topic, payload, qos_retain & 0x7F, qos_retain >= 0x80, expiry=expiry,
        payload_format=payload_format, content_type=text.get(_HAS_CONTENT_TYPE),
        correlation_data=optional.get(_HAS_CORRELATION),
        response_topic=text.get(_HAS_RESPONSE_TOPIC), headers=headers,
        origin_protocol=text.get(_HAS_PROTOCOL) or "", origin_client=text.get(_HAS_CLIENT),
        amqp=amqp,
    )


def encode_delivery(delivery: Delivery, packet_id: int, body: bytes) -> bytes:
    flags = _GROUP if delivery.group is not None else 0
    ids = delivery.subscription_ids
    parts = [_DELIVERY_HEAD.pack(FORMAT, flags, delivery.qos, delivery.retain, packet_id,
                                 len(ids))]
    parts.extend(_U32.pack(i) for i in ids)
    if delivery.group is not None:
        parts.append(_text(delivery.group.name))
        parts.append(_text(delivery.group.topic_filter))
    parts.append(body)
    return b"".join(parts)


def encode_released(packet_id: int) -> bytes:
    return _DELIVERY_HEAD.pack(FORMAT, _RELEASED, 2, 0, packet_id, 0)


def decode_delivery(
    data: bytes, to_clock: float, strings: StringCache | None = None
) -> tuple[Delivery, int, tuple[str, str] | None]:
    """A ``m/`` record: the delivery, its packet id (0: not sent yet) and the (name, filter)
    of the shared subscription it came through, if any."""
    fmt, flags, qos, retain, packet_id, count = _DELIVERY_HEAD.unpack_from(data, 0)
    if fmt != FORMAT:
        raise ValueError(f"unknown delivery format {fmt}")
    if flags & _RELEASED:
        # Only PUBREL and PUBCOMP are left to exchange: the message itself is gone.
        delivery = Delivery(Message("", b"", 2), 2, False, released=True)
        return delivery, packet_id, None
    pos = _DELIVERY_HEAD.size
    ids: tuple[int, ...] = ()
    group = None
    if count or flags & _GROUP:
        reader = _Reader(data, pos)
        ids = tuple(reader.u32() for _ in range(count))
        if flags & _GROUP:
            group = (reader.required_text(), reader.required_text())
        pos = reader.pos
    message = decode_message(data, pos, to_clock, strings)
    return Delivery(message, qos, retain == 1, ids), packet_id, group


def encode_session(session: Session, disconnected_at: float | None) -> bytes:
    when = math.nan if disconnected_at is None else disconnected_at
    return _SESSION.pack(FORMAT, session.expiry_interval, when)


def decode_session(value: bytes) -> tuple[int, float]:
    """The expiry interval, and when the session was disconnected (wall; NaN: never)."""
    fmt, interval, disconnected_at = _SESSION.unpack(value)
    if fmt != FORMAT:
        raise ValueError(f"unknown session format {fmt}")
    return interval, disconnected_at


def encode_subscription(options: SubscriptionOptions) -> bytes:
    return _SUBSCRIPTION.pack(FORMAT, options.qos, options.no_local,
                              options.retain_as_published, options.subscription_id or 0)


def decode_subscription(data: bytes) -> SubscriptionOptions:
    fmt, qos, no_local, rap, sub_id = _SUBSCRIPTION.unpack(data)
    if fmt != FORMAT:
        raise ValueError(f"unknown subscription format {fmt}")
    return SubscriptionOptions(qos, bool(no_local), bool(rap), sub_id or None)


def _plain(value: object) -> object:
    """An argument value as ``ast.literal_eval`` reads it back: table types it cannot
    (decimals, timestamps) are kept as their text."""
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def encode_arguments(arguments: Mapping[str, object]) -> bytes:
    return _text(repr(_plain(dict(arguments))) if arguments else None)


def decode_arguments(reader: _Reader) -> dict[str, object]:
    text = reader.text()
    if text is None:
        return {}
    arguments = ast.literal_eval(text)
    if not isinstance(arguments, dict):
        raise ValueError("arguments are not a table")
    return arguments


def encode_queue(queue: Queue) -> bytes:
    flags = _DECLARED | (_AUTO_DELETE if queue.auto_delete else 0)
    return bytes((FORMAT, flags)) + encode_arguments(queue.arguments)


def decode_queue(value: bytes) -> tuple[bool, bool, dict[str, object]]:
    """A ``Q/`` value: (declared by AMQP, auto_delete, arguments)."""
    if not value or value[0] != FORMAT:
        raise ValueError("unknown queue format")
    if len(value) == 1:
        return False, False, {}  # STOMP: declared by use
    flags = value[1]
    return bool(flags & _DECLARED), bool(flags & _AUTO_DELETE), decode_arguments(
        _Reader(value, 2))


def encode_exchange(exchange: Exchange) -> bytes:
    flags = (_AUTO_DELETE if exchange.auto_delete else 0) | (
        _INTERNAL if exchange.internal else 0)
    return bytes((FORMAT, flags)) + _text(exchange.kind) + encode_arguments(exchange.arguments)


def decode_exchange(value: bytes) -> tuple[str, bool, bool, dict[str, object]]:
    """A ``X/`` value: (type, auto_delete, internal, arguments)."""
    if len(value) < 2 or value[0] != FORMAT:
        raise ValueError("unknown exchange format")
    reader = _Reader(value, 2)
    kind = reader.text() or ""
    return kind, bool(value[1] & _AUTO_DELETE), bool(value[1] & _INTERNAL), decode_arguments(
        reader)


def binding_key(binding: Binding) -> bytes:
    return (BINDING + binding.exchange.encode() + SEP + binding.queue.encode() + SEP
            + binding.routing_key.encode() + SEP + arguments_key(binding.arguments).encode())


def encode_binding(binding: Binding) -> bytes:
    return (bytes((FORMAT,)) + _text(binding.exchange) + _text(binding.queue)
            + _text(binding.routing_key) + encode_arguments(binding.arguments))


def decode_binding(value: bytes) -> tuple[str, str, str, dict[str, object]]:
    """A ``B/`` value: (exchange, queue, routing key, arguments)."""
    if not value or value[0] != FORMAT:
        raise ValueError("unknown binding format")
    reader = _Reader(value, 1)
    exchange, queue, key = reader.text(), reader.text(), reader.text()
    if exchange is None or queue is None or key is None:
        raise ValueError("incomplete binding")
    return exchange, queue, key, decode_arguments(reader)


# A delayed message: format, target kind, persistent, due (wall-clock seconds), then the
# target's name and routing key and the message.
_DELAYED_HEAD = struct.Struct(">BBBd")
_TARGET_KINDS = (TOPIC, QUEUE_TARGET, EXCHANGE_TARGET)


def delayed_key(pending: Pending) -> bytes:
    return DELAYED + pending.id.to_bytes(8, "big")


def encode_delayed(pending: Pending, to_wall: float) -> bytes:
    target = pending.target
    head = _DELAYED_HEAD.pack(FORMAT, _TARGET_KINDS.index(target.kind), target.persistent,
                              pending.due + to_wall)
    return (head + _text(target.name) + _text(target.routing_key)
            + encode_message(pending.message, to_wall))


def decode_delayed(value: bytes, to_clock: float) -> tuple[float, Target, Message]:
    """A ``d/`` value: (due on the broker's clock, target, message)."""
    fmt, kind, persistent, due = _DELAYED_HEAD.unpack_from(value, 0)
    if fmt != FORMAT or kind >= len(_TARGET_KINDS):
        raise ValueError("unknown delayed message format")
    reader = _Reader(value, _DELAYED_HEAD.size)
    name, routing_key = reader.text() or "", reader.text() or ""
    message = decode_message(value, reader.pos, to_clock)
    target = Target(_TARGET_KINDS[kind], name, routing_key, bool(persistent))
    return due + to_clock, target, message

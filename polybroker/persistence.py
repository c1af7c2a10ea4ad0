"""Durable broker state: which changes become which store records, and the replay at start-up.

What is durable: named queues that ever held a persistent message or that AMQP declared
durable (not exclusive), with the persistent messages in them (STOMP ``persistent:true``,
AMQP delivery_mode 2, MQTT QoS 1/2 routed in through ``amq.topic``) and whether each was
handed out; durable AMQP exchanges and the bindings between them and durable queues; persistent
sessions (session expiry interval above 0; MQTT 3.1.1 clean
session 0 never expires), their subscriptions, the QoS 1/2 messages queued or in flight for
them with their delivery state, the packet ids of inbound QoS 2 messages not yet released,
and retained messages. Sessions that end with their connection stay in memory only.

One record per state change, keyed so that a prefix scan finds each kind, and one client's
records sort together (``\\0`` cannot occur in MQTT strings [MQTT-1.5.4-2])::

    s/<client>               session: expiry interval, when it was disconnected
    u/<client>\\0<filter>     subscription and its options
    m/<client>\\0<id:8>       a message for the session with its delivery state: QoS,
                             packet id once sent, subscription ids, shared group; after
                             PUBREC only the packet id and "released" (the body is not
                             needed to finish with PUBREL/PUBCOMP)
    q2/<client>\\0<pid:2>     inbound QoS 2 packet id between PUBLISH and PUBREL
    r/<topic>                retained message
    Q/<queue>                a durable queue; its value: nothing more (STOMP: declared by
                             use) or its AMQP declaration (auto_delete, x-arguments)
    X/<exchange>             a durable AMQP exchange: type, auto_delete, internal, arguments
    B/<exchange>\\0<queue>\\0<key>\\0<arguments>
                             a binding between a durable exchange and a durable queue
    e/<queue>\\0<seq:8>      a persistent message in the queue; ``seq`` is its arrival
                             order in the queue, so a scan replays the queue in order
    e/<queue>\\0<seq:8>\\1   that message was handed out awaiting an acknowledgement:
                             after a restart it is ready again, flagged redelivered

QoS 2 exactly once, across crashes. Each packet below leaves only once the record before it
is durable (``durability`` holds the connection's writes until then), and a crash may fall
between any two writes (SIGKILL), or cut the log anywhere (a power cut):

    outbound (to a subscriber)    record written first                 then may leave
    queued                        m/ with packet id 0                  (nothing yet)
    sent                          m/ with its packet id                PUBLISH
    PUBREC received               m/ "released" with its packet id     PUBREL
    PUBCOMP received              m/ deleted                           (the id is free)

    inbound (from a publisher)    record written first                 then may leave
    PUBLISH received              ONE atomic group: the m/ records     PUBREC
                                  of every session it was routed to,
                                  and q2/ with its packet id
    PUBREL received               q2/ deleted                          PUBCOMP

So after a restart a subscriber gets, for a message it may have seen, either the PUBLISH
again with the same packet id and DUP (it never answered PUBREC) or only the PUBREL (it did):
never a second PUBLISH after a PUBREL, and never the same message under a new packet id.
That serves both ways a receiver may complete QoS 2 (the specification's figure 4.3):
delivering at PUBLISH and remembering the packet id until PUBREL, or delivering at PUBREL.
A publisher's resent PUBLISH finds its q2/ id and is acknowledged without being routed
again; the atomic group (``LogStore.begin_group``) is what stops a crash between the
subscribers' copies and that id from routing the resend a second time. A publisher whose
session ends with its connection (clean session) has no q2/ records: a resend after a new
connection is a new message [MQTT-3.1.2-6], as in every broker.

STOMP declares a queue by using it, so any name a client ever mentions (a typo, a reply
queue) would otherwise leave a record for good: a queue gets its ``Q/`` record when it
first holds a persistent message, and keeps it (an empty durable queue comes back empty)
until it is deleted. Non-persistent messages stay in memory only, as in ActiveMQ and
RabbitMQ.

An AMQP-declared durable queue gets its ``Q/`` record when declared (exclusive queues
never do). AMQP messages carry more fields (exchange, routing key, the raw content
properties, dead-letter history): they are stored in format 2, the same layout with a
second set of fields after the first (``encode_message``). Order of writes for AMQP: an
exchange's and a queue's record before their bindings', deleted after them.

(``q/`` is left for named queues and their messages, when they come.)

A message that goes to several persistent sessions is stored once per session: the record
is the message's encoding (made once and reused) plus 7 bytes of delivery state, and one
tombstone deletes it when that session acknowledges. Measured with a 64-byte payload and a
12-character client id (``interop/bench/durable_store.py``): 165 bytes on disk per stored
message, 47 more for its tombstone. Storing the body once (``b/<id>``, 145 bytes) with a
reference per session (62 bytes) would cost 207 bytes and two tombstones (81 bytes) for one
receiver, and only pays from two persistent receivers of the same message on (269 against
330 bytes); it also needs reference counts rebuilt at start-up and orphan bodies collected.
Persistent sessions usually receive their own messages (commands to a device, a backend's
share of telemetry), so one record per session it is.

Order of writes, so that a log cut anywhere (a torn tail) still replays to a state some
client could have seen: a session's record before its other records and deleted after
them; an inbound QoS 2 id in one atomic group with the messages its PUBLISH was routed
to (above); a queue's record
before its messages' records and deleted after them; a message's "handed out" mark
after its message and deleted before it. What may be
acknowledged and when is ``durability``'s business.

A failed write (``StoreFullError`` on a full disk, or another ``StoreError``) is logged
loudly and counted in ``failures``; the state stays in memory, so nothing is lost while
the broker runs, and the adapter that caused the write refuses its client's message
(MQTT 5.0 reason 0x97, 3.1.1: connection closed without acknowledgement).
"""

from __future__ import annotations

import ast
import gc
import logging
import math
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .exchanges import arguments_key
from .journal import Journal
from .message import Death, Message
from .queues import Queue, QueueEntry
from .refusals import Refused
from .sessions import NEVER_EXPIRES, Delivery, Session, SubscriptionOptions
from .storage import DELETE, LogStore, StoreError

if TYPE_CHECKING:
    from .broker import Broker
    from .config import StorageConfig
    from .exchanges import Binding, Exchange

__all__ = [
    "Journal", "RestoreSummary", "SessionJournal", "StoreJournal", "bulk_load", "restore",
]

log = logging.getLogger("polybroker.persistence")

FORMAT = 1  # first byte of every value
SEP = b"\0"
SESSION, SUBSCRIPTION, MESSAGE, INBOUND_QOS2, RETAINED = b"s/", b"u/", b"m/", b"q2/", b"r/"
QUEUE, QUEUE_MESSAGE, HANDED_OUT = b"Q/", b"e/", b"\1"
EXCHANGE, BINDING = b"X/", b"B/"
AMQP_FORMAT = 2  # a message with AMQP fields (``encode_message``)
# AMQP fields present in a format 2 message, after the format 1 ones.
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

    def text(self) -> str | None:
        value = self.field()
        return None if value is None else value.decode()

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.pos)
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
    if message.routing_key is not None or message.amqp_properties is not None or (
        message.persistent or message.deaths
    ):
        fmt = AMQP_FORMAT
        parts.append(_encode_amqp(message))
    qos_retain = message.qos | (0x80 if message.retain else 0)
    parts[0] = _MESSAGE_HEAD.pack(fmt, qos_retain, bits, len(topic), len(payload))
    return b"".join(parts)


def _encode_amqp(message: Message) -> bytes:
    bits = 0
    parts = [b""]
    for bit, value in (
        (_HAS_EXCHANGE, message.exchange),
        (_HAS_ROUTING_KEY, message.routing_key),
        (_HAS_PROPERTIES, message.amqp_properties),
    ):
        if value is not None:
            bits |= bit
            parts.append(_field(value.encode() if isinstance(value, str) else value))
    if message.persistent:
        bits |= _PERSISTENT
    if message.deaths:
        bits |= _HAS_DEATHS
        parts.append(_U32.pack(len(message.deaths)))
        for death in message.deaths:
            parts += [_text(death.queue), _text(death.reason), _text(death.exchange),
                      _U32.pack(len(death.routing_keys))]
            parts += [_text(key) for key in death.routing_keys]
            parts += [_U32.pack(death.count), _F64.pack(death.time)]
    parts[0] = bytes((bits,))
    return b"".join(parts)


def _decode_amqp(reader: _Reader) -> dict:
    bits = reader.data[reader.pos]
    reader.pos += 1
    fields: dict = {"persistent": bool(bits & _PERSISTENT)}
    if bits & _HAS_EXCHANGE:
        fields["exchange"] = reader.text()
    if bits & _HAS_ROUTING_KEY:
        fields["routing_key"] = reader.text()
    if bits & _HAS_PROPERTIES:
        fields["amqp_properties"] = reader.field()
    if bits & _HAS_DEATHS:
        deaths = []
        for _ in range(reader.u32()):
            queue, reason, exchange = reader.text(), reader.text(), reader.text()
            keys = tuple(reader.text() for _ in range(reader.u32()))
            count = reader.u32()
            (when,) = _F64.unpack_from(reader.data, reader.pos)
            reader.pos += 8
            deaths.append(Death(queue, reason, exchange, keys, count, when))
        fields["deaths"] = tuple(deaths)
    return fields


class StringCache(dict):
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
    optional: dict[int, bytes | None] = {}
    for bit in (_HAS_CONTENT_TYPE, _HAS_CORRELATION, _HAS_RESPONSE_TOPIC, _HAS_PROTOCOL,
                _HAS_CLIENT):
        if bits & bit:
            optional[bit] = reader.field()
    headers: tuple[tuple[str, str], ...] = ()
    if bits & _HAS_HEADERS:
        headers = tuple((reader.text(), reader.text()) for _ in range(reader.u32()))
    amqp = _decode_amqp(reader) if fmt == AMQP_FORMAT else {}
    if reader.pos > len(data):
        raise ValueError("truncated value")
    text = {bit: strings[value] for bit, value in optional.items() if bit != _HAS_CORRELATION}
    return Message(
        topic, payload, qos_retain & 0x7F, qos_retain >= 0x80, expiry=expiry,
        payload_format=payload_format, content_type=text.get(_HAS_CONTENT_TYPE),
        correlation_data=optional.get(_HAS_CORRELATION),
        response_topic=text.get(_HAS_RESPONSE_TOPIC), headers=headers,
        origin_protocol=text.get(_HAS_PROTOCOL) or "", origin_client=text.get(_HAS_CLIENT),
        **amqp,
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
        group = (reader.text(), reader.text()) if flags & _GROUP else None
        pos = reader.pos
    message = decode_message(data, pos, to_clock, strings)
    return Delivery(message, qos, retain == 1, ids), packet_id, group


def encode_session(session: Session, disconnected_at: float | None) -> bytes:
    when = math.nan if disconnected_at is None else disconnected_at
    return _SESSION.pack(FORMAT, session.expiry_interval, when)


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


def encode_arguments(arguments: dict) -> bytes:
    return _text(repr(_plain(dict(arguments))) if arguments else None)


def decode_arguments(reader: _Reader) -> dict:
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


def decode_queue(value: bytes) -> tuple[bool, bool, dict]:
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


def decode_exchange(value: bytes) -> tuple[str, bool, bool, dict]:
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


def decode_binding(value: bytes) -> tuple[str, str, str, dict]:
    """A ``B/`` value: (exchange, queue, routing key, arguments)."""
    if not value or value[0] != FORMAT:
        raise ValueError("unknown binding format")
    reader = _Reader(value, 1)
    exchange, queue, key = reader.text(), reader.text(), reader.text()
    if exchange is None or queue is None or key is None:
        raise ValueError("incomplete binding")
    return exchange, queue, key, decode_arguments(reader)


# --------------------------------------------------------------------------- journals


class StoreJournal(Journal):
    """Turns the broker's state changes into records of a ``LogStore``."""

    def __init__(self, store: LogStore, broker: Broker, settings: StorageConfig) -> None:
        self.store = store
        self.clock = broker.clock
        self.max_messages = settings.max_stored_messages_per_session
        self.max_bytes = settings.max_stored_bytes_per_session
        self.failures = 0
        self.next_id = 1  # of m/ records: never reused, so a late delete cannot hit a new one
        self._failing = 0  # failures in the current run of failures
        self._undeleted: dict[bytes, None] = {}  # tombstones that could not be written
        self.summary: RestoreSummary | None = None  # what the replay at start-up found
        self.queues: set[str] = set()  # names of the queues with a ``Q/`` record

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> bool:
        try:
            self.store.put(key, value)
        except StoreError as exc:
            self._failed(exc, key)
            return False
        if self._failing or self._undeleted:
            self._recovered(key)
        return True

    def delete(self, key: bytes) -> None:
        try:
            self.store.delete(key)
        except StoreError as exc:
            self._failed(exc, key)
            self._undeleted[key] = None  # retried once writes succeed again

    def _failed(self, exc: StoreError, key: bytes) -> None:
        self.failures += 1
        self._failing += 1
        if self._failing == 1 or self._failing % 1000 == 0:
            log.error(
                "STORAGE WRITE FAILED (%d in a row): %s; record %r kept in memory only, "
                "clients are refused until the store accepts writes again",
                self._failing, exc, key[:80],
            )

    def _recovered(self, key: bytes) -> None:
        if self._failing:
            log.warning("storage: writes succeed again after %d failure(s)", self._failing)
            self._failing = 0
        self._undeleted.pop(key, None)  # written again since: its old tombstone is moot
        for old in list(self._undeleted):
            del self._undeleted[old]
            self.delete(old)
            if self._failing:
                return

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Write the records made inside as one atomic group of the store (nested calls
        join the outer group). A failed group is logged and counted like a failed write."""
        store = self.store
        if store.group_open:
            yield
            return
        store.begin_group()
        try:
            yield
        except BaseException:
            store.abandon_group()  # nothing of it reached the disk, or the state in memory
            raise
        deletes = [key for kind, key, _ in store.group_writes if kind == DELETE]
        try:
            store.commit_group()
        except StoreError as exc:
            self._failed(exc, b"(atomic group)")
            self._undeleted.update(dict.fromkeys(deletes))  # retried once writes succeed

    def to_wall(self) -> float:
        """Add to a deadline on the broker's clock to get wall-clock time."""
        return time.time() - self.clock()

    # -- sessions --------------------------------------------------------------------------

    def session_opened(self, session: Session) -> None:
        if session.expiry_interval == 0:
            if session.journal is not None:
                self._forget_session(session)  # no longer persistent
            return
        if session.journal is None:
            SessionJournal.attach(self, session)
        self.put(SESSION + session.journal.client, encode_session(session, None))

    def session_closed(self, session: Session) -> None:
        if session.journal is not None:
            self.put(SESSION + session.journal.client, encode_session(session, time.time()))

    def session_discarded(self, session: Session) -> None:
        if session.journal is not None:
            self._forget_session(session)

    def _forget_session(self, session: Session) -> None:
        journal = session.journal
        for topic_filter in session.subscriptions:
            self.delete(journal.subscription_key(topic_filter))
        for delivery in (*session.inflight.values(), *session.queued):
            if delivery.store_id:
                self.delete(journal.message_key(delivery.store_id))
                delivery.store_id = 0
        for packet_id in session.inbound_qos2:
            self.delete(journal.inbound_key(packet_id))
        self.delete(SESSION + journal.client)  # last: see the module docstring
        session.journal = None
        session.inbound_qos2 = set(session.inbound_qos2)

    # -- subscriptions and retained messages -----------------------------------------------

    def subscription_set(
        self, session: Session, topic_filter: str, options: SubscriptionOptions
    ) -> None:
        if session.journal is not None:
            self.put(session.journal.subscription_key(topic_filter),
                     encode_subscription(options))

    def subscription_removed(self, session: Session, topic_filter: str) -> None:
        if session.journal is not None:
            self.delete(session.journal.subscription_key(topic_filter))

    def retained_set(self, message: Message) -> None:
        self.put(RETAINED + message.topic.encode(), self.message_body(message))

    def retained_cleared(self, topic: str) -> None:
        self.delete(RETAINED + topic.encode())

    # -- named queues (``queues.QueueStore``) ------------------------------------------------

    @staticmethod
    def queue_message_key(queue: Queue, entry: QueueEntry) -> bytes:
        return QUEUE_MESSAGE + queue.name.encode() + SEP + entry.seq.to_bytes(8, "big")

    def enqueued(self, queue: Queue, entry: QueueEntry) -> None:
        if queue.name not in self.queues:
            if not self.put(QUEUE + queue.name.encode(), bytes((FORMAT,))):
                return  # no message record without its queue's (the adapter refuses it)
            self.queues.add(queue.name)
        self.put(self.queue_message_key(queue, entry), self.message_body(entry.message))

    def delivered(self, queue: Queue, entry: QueueEntry) -> None:
        self.put(self.queue_message_key(queue, entry) + HANDED_OUT, b"")

    def removed(self, queue: Queue, entry: QueueEntry) -> None:
        key = self.queue_message_key(queue, entry)
        if entry.marked:
            self.delete(key + HANDED_OUT)
        self.delete(key)

    def queue_declared(self, queue: Queue) -> None:
        """A durable queue was declared (AMQP): its flags and arguments."""
        if self.put(QUEUE + queue.name.encode(), encode_queue(queue)):
            self.queues.add(queue.name)

    def queue_deleted(self, queue: Queue) -> None:
        """The queue is gone with whatever it held."""
        if queue.name not in self.queues:
            return
        for entry in queue.entries():
            if entry.persistent:
                self.removed(queue, entry)
        self.queues.discard(queue.name)
        self.delete(QUEUE + queue.name.encode())  # last: see the module docstring

    # -- AMQP exchanges and bindings --------------------------------------------------------

    def exchange_declared(self, exchange: Exchange) -> None:
        self.put(EXCHANGE + exchange.name.encode(), encode_exchange(exchange))

    def exchange_deleted(self, exchange: Exchange) -> None:
        self.delete(EXCHANGE + exchange.name.encode())

    def binding_added(self, binding: Binding) -> None:
        self.put(binding_key(binding), encode_binding(binding))

    def binding_removed(self, binding: Binding) -> None:
        self.delete(binding_key(binding))

    def message_body(self, message: Message) -> bytes:
        """The stored form of a message, made once however many sessions keep it."""
        cache = message.wire_cache
        body = cache.get("store")
        if body is None:
            to_wall = 0.0 if message.expiry is None else self.to_wall()
            body = cache["store"] = encode_message(message, to_wall)
        return body


class SessionJournal:
    """The records of one persistent session's messages (``Session.journal``)."""

    __slots__ = ("client", "count", "nbytes", "owner", "prefix")

    def __init__(self, owner: StoreJournal, client: bytes) -> None:
        self.owner = owner
        self.client = client
        self.prefix = MESSAGE + client + SEP
        self.count = 0  # messages stored
        self.nbytes = 0  # their payload bytes

    @classmethod
    def attach(cls, owner: StoreJournal, session: Session) -> SessionJournal:
        journal = session.journal = cls(owner, session.client_id.encode())
        session.inbound_qos2 = JournaledPacketIds(journal, session.inbound_qos2)
        return journal

    def message_key(self, store_id: int) -> bytes:
        return self.prefix + store_id.to_bytes(8, "big")

    def subscription_key(self, topic_filter: str) -> bytes:
        return SUBSCRIPTION + self.client + SEP + topic_filter.encode()

    def inbound_key(self, packet_id: int) -> bytes:
        return INBOUND_QOS2 + self.client + SEP + packet_id.to_bytes(2, "big")

    @property
    def max_messages(self) -> int:
        return self.owner.max_messages

    def has_room(self, size: int) -> bool:
        """Whether one more message of ``size`` payload bytes is within the session's
        stored bounds (the session applies ``limits.queue_overflow`` when it is not)."""
        owner = self.owner
        return self.count < owner.max_messages and self.nbytes + size <= owner.max_bytes

    def _store(self, delivery: Delivery, packet_id: int, bounded: bool = True) -> bool:
        """Record a delivery not recorded yet; False if over the session's bounds
        (unless not ``bounded``: the session has decided to keep it)."""
        size = len(delivery.message.payload)
        if bounded and not self.has_room(size):
            return False
        owner = self.owner
        store_id = owner.next_id
        value = encode_delivery(delivery, packet_id, owner.message_body(delivery.message))
        if owner.put(self.message_key(store_id), value):
            owner.next_id = store_id + 1
            delivery.store_id = store_id
            self.count += 1
            self.nbytes += size
        return True  # a failed write keeps it in memory: the adapter refuses the publisher

    def message_added(self, delivery: Delivery) -> None:
        """A QoS 1/2 message was queued for the session (which checked ``has_room``, and
        may keep one over the bounds: ``limits.queue_overflow`` "block")."""
        self._store(delivery, 0, bounded=False)

    def message_sent(self, delivery: Delivery, packet_id: int) -> bool:
        """A QoS 1/2 message goes out with ``packet_id``. A QoS 2 message's packet id is
        recorded before the PUBLISH leaves, so that after a restart it is resent with the
        same id and the client can tell it is the same message."""
        if not delivery.store_id:
            return self._store(delivery, packet_id)
        if delivery.qos == 2:
            body = self.owner.message_body(delivery.message)
            self.owner.put(self.message_key(delivery.store_id),
                           encode_delivery(delivery, packet_id, body))
        return True

    def message_released(self, delivery: Delivery, packet_id: int) -> None:
        """PUBREC came: from now on only the packet id matters (PUBREL until PUBCOMP)."""
        if delivery.store_id:
            self.owner.put(self.message_key(delivery.store_id), encode_released(packet_id))

    def message_removed(self, delivery: Delivery) -> None:
        self.owner.delete(self.message_key(delivery.store_id))
        delivery.store_id = 0
        self.count -= 1
        self.nbytes -= len(delivery.message.payload)


class JournaledPacketIds(set):
    """A persistent session's inbound QoS 2 packet ids (``Session.inbound_qos2``): a set
    that records its changes, so a PUBLISH resent after a restart is not routed twice."""

    __slots__ = ("journal",)

    def __init__(self, journal: SessionJournal, ids: Iterable[int] = ()) -> None:
        super().__init__(ids)
        self.journal = journal

    def add(self, packet_id: int) -> None:
        if packet_id not in self:
            super().add(packet_id)
            self.journal.owner.put(self.journal.inbound_key(packet_id), b"")

    def discard(self, packet_id: int) -> None:
        if packet_id in self:
            super().discard(packet_id)
            self.journal.owner.delete(self.journal.inbound_key(packet_id))

    def remove(self, packet_id: int) -> None:
        if packet_id not in self:
            raise KeyError(packet_id)
        self.discard(packet_id)


# --------------------------------------------------------------------------- replay


@dataclass
class RestoreSummary:
    sessions: int = 0
    subscriptions: int = 0
    messages: int = 0
    inbound_qos2: int = 0
    retained: int = 0
    queues: int = 0
    queue_messages: int = 0
    exchanges: int = 0
    bindings: int = 0
    expired_sessions: int = 0
    dropped_records: int = 0  # undecodable, or belonging to no session: deleted

    def __str__(self) -> str:
        text = (f"{self.sessions} sessions, {self.subscriptions} subscriptions, "
                f"{self.messages} messages, {self.inbound_qos2} inbound QoS 2 ids, "
                f"{self.retained} retained, {self.queues} queues with "
                f"{self.queue_messages} persistent messages, {self.exchanges} exchanges, "
                f"{self.bindings} bindings")
        if self.expired_sessions:
            text += f", {self.expired_sessions} sessions expired while stopped"
        if self.dropped_records:
            text += f", {self.dropped_records} unusable records dropped"
        return text


def restore(store: LogStore, broker: Broker, settings: StorageConfig) -> StoreJournal:
    """Rebuild the broker's durable state from ``store`` and attach the journal to it.

    Call on a fresh broker (no sessions, nothing retained), inside trio (the broker's
    clock). Returns the journal; its ``summary`` says what was restored.
    """
    journal = StoreJournal(store, broker, settings)
    broker.queues.attach_store(journal)
    replay = _Replay(store, broker, journal)
    with bulk_load():
        replay.run()
    broker.journal = journal
    replay.expire_sessions()
    journal.summary = replay.summary
    return journal


@contextmanager
def bulk_load() -> Iterator[None]:
    """For building millions of long-lived objects: without the cyclic collector, which
    would walk the growing heap again and again (more than doubling a large replay), and
    moving what was built out of its sight afterwards (``gc.freeze``); reference counting
    still frees whatever is acknowledged later."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


class _Replay:
    def __init__(self, store: LogStore, broker: Broker, journal: StoreJournal) -> None:
        self.store = store
        self.broker = broker
        self.journal = journal
        self.summary = RestoreSummary()
        self.to_clock = broker.clock() - time.time()
        self.strings = StringCache()
        self.sessions: dict[bytes, Session] = {}
        self.remaining: dict[Session, float] = {}  # seconds left before expiry
        self.unusable: list[bytes] = []
        # Messages whose shared subscription is gone: recorded again without it, so that
        # the next restart does not join them to a group of that name subscribed since.
        self.ungrouped: list[tuple[Session, Delivery, int]] = []

    def run(self) -> None:
        self._sessions()
        self._subscriptions()
        self._messages()
        self._inbound_qos2()
        self._retained()
        self._exchanges()
        self._queues()
        self._bindings()
        for key in self.unusable:
            self.journal.delete(key)
        self.summary.dropped_records = len(self.unusable)
        for session, delivery, packet_id in self.ungrouped:
            body = self.journal.message_body(delivery.message)
            self.journal.put(session.journal.message_key(delivery.store_id),
                             encode_delivery(delivery, packet_id, body))

    def _records(self, prefix: bytes) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
        """(key, client, rest of the key, value) of one kind of per-client records."""
        for key, value in self.store.scan(prefix):
            client, _, rest = key[len(prefix):].partition(SEP)
            yield key, client, rest, value

    def _unusable(self, key: bytes, why: str) -> None:
        log.error("storage: dropping record %r: %s", key[:80], why)
        self.unusable.append(key)

    def _sessions(self) -> None:
        now = time.time()
        broker = self.broker
        for key, value in self.store.scan(SESSION):
            client = key[len(SESSION):]
            try:
                fmt, interval, disconnected_at = _SESSION.unpack(value)
                if fmt != FORMAT:
                    raise ValueError(f"unknown session format {fmt}")
                client_id = client.decode()
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            session = Session(client_id, broker.limits, broker.clock, interval, broker.drops)
            SessionJournal.attach(self.journal, session)
            broker.sessions[client_id] = session
            self.sessions[client] = session
            if interval != NEVER_EXPIRES:
                # Connected when the broker stopped: its clock starts now.
                gone = 0.0 if math.isnan(disconnected_at) else max(0.0, now - disconnected_at)
                self.remaining[session] = interval - gone
        self.summary.sessions = len(self.sessions)

    def _subscriptions(self) -> None:
        for key, client, topic_filter, value in self._records(SUBSCRIPTION):
            session = self.sessions.get(client)
            if session is None or not topic_filter:
                self._unusable(key, "no such session")
                continue
            try:
                options = decode_subscription(value)
                self.broker.subscribe(session, topic_filter.decode(), options)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            self.summary.subscriptions += 1

    def _messages(self) -> None:
        groups = self.broker.shared_groups
        for key, client, store_id, value in self._records(MESSAGE):
            session = self.sessions.get(client)
            if session is None or len(store_id) != 8:
                self._unusable(key, "no such session")
                continue
            try:
                delivery, pid, group = decode_delivery(value, self.to_clock, self.strings)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            delivery.store_id = int.from_bytes(store_id, "big")
            if group is not None:
                delivery.group = groups.get(group)
                if delivery.group is None:
                    self.ungrouped.append((session, delivery, pid))
            self.journal.next_id = max(self.journal.next_id, delivery.store_id + 1)
            journal = session.journal
            journal.count += 1
            journal.nbytes += len(delivery.message.payload)
            if not pid:
                session.restore_queued(delivery)
                self.summary.messages += 1
                continue
            # Sent before: resent with the same packet id (QoS 2 depends on it). A packet id
            # is only reused once its previous message is done with and its record deleted,
            # so if two records claim one, that delete was lost (a power cut can keep later
            # pages and lose earlier ones): the older message is finished, drop its record.
            stale = session.inflight.pop(pid, None)
            if stale is not None:
                self._unusable(journal.message_key(stale.store_id), "packet id reused later")
                journal.count -= 1
                journal.nbytes -= len(stale.message.payload)
                self.summary.messages -= 1
            session.inflight[pid] = delivery
            self.summary.messages += 1

    def _inbound_qos2(self) -> None:
        for key, client, packet_id, _ in self._records(INBOUND_QOS2):
            session = self.sessions.get(client)
            if session is None or len(packet_id) != 2:
                self._unusable(key, "no such session")
                continue
            set.add(session.inbound_qos2, int.from_bytes(packet_id, "big"))  # no new record
            self.summary.inbound_qos2 += 1

    def _retained(self) -> None:
        retained = self.broker.retained
        now = self.broker.clock()
        for key, value in self.store.scan(RETAINED):
            try:
                message = decode_message(value, 0, self.to_clock, self.strings)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            if message.expiry is not None and message.expiry <= now:
                self.unusable.append(key)  # expired while the broker was stopped
                continue
            retained.set(message.topic, message)
            self.summary.retained += 1

    def _exchanges(self) -> None:
        exchanges = self.broker.exchanges
        for key, value in self.store.scan(EXCHANGE):
            try:
                name = key[len(EXCHANGE):].decode()
                kind, auto_delete, internal, arguments = decode_exchange(value)
                exchanges.declare(name, kind, durable=True, auto_delete=auto_delete,
                                  internal=internal, arguments=arguments)
            except (ValueError, SyntaxError, struct.error, IndexError, Refused) as exc:
                self._unusable(key, str(exc))
                continue
            self.summary.exchanges += 1

    def _bindings(self) -> None:
        exchanges = self.broker.exchanges
        for key, value in self.store.scan(BINDING):
            try:
                exchange, queue, routing_key, arguments = decode_binding(value)
                exchanges.bind(queue, exchange, routing_key, arguments)
            except (ValueError, SyntaxError, struct.error, IndexError, Refused) as exc:
                self._unusable(key, str(exc))
                continue
            self.summary.bindings += 1

    def _queues(self) -> None:
        registry = self.broker.queues
        for key, value in self.store.scan(QUEUE):
            try:
                name = key[len(QUEUE):].decode()
                declared, auto_delete, arguments = decode_queue(value)
                if declared:
                    registry.restore_queue(name, auto_delete=auto_delete, arguments=arguments)
                else:
                    registry.declare(name)
            except (ValueError, SyntaxError, struct.error, IndexError, Refused) as exc:
                self._unusable(key, str(exc))
                continue
            self.journal.queues.add(name)
            self.summary.queues += 1
        current: tuple[bytes, list[QueueEntry]] | None = None
        for key, name, rest, value in self._records(QUEUE_MESSAGE):
            if current is None or current[0] != name:
                self._refill(current)
                current = (name, [])
            entries = current[1]
            if len(rest) == 9 and rest[8:] == HANDED_OUT:
                if entries and entries[-1].seq == int.from_bytes(rest[:8], "big"):
                    entries[-1].marked = entries[-1].redelivered = True
                else:
                    self._unusable(key, "no such queued message")
                continue
            if len(rest) != 8 or name.decode(errors="replace") not in self.journal.queues:
                self._unusable(key, "no such queue")
                continue
            try:
                message = decode_message(value, 0, self.to_clock)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            entries.append(QueueEntry(message, int.from_bytes(rest, "big"), persistent=True))
        self._refill(current)

    def _refill(self, batch: tuple[bytes, list[QueueEntry]] | None) -> None:
        if batch is not None and batch[1]:
            queue = self.broker.queues.get(batch[0].decode())
            self.summary.queue_messages += queue.restore(batch[1])

    def expire_sessions(self) -> None:
        """Start the expiry clocks; sessions whose time ran out while stopped end now."""
        for session, remaining in self.remaining.items():
            if remaining <= 0:
                log.info("client %s: session expired while the broker was stopped",
                         session.client_id)
                self.broker._discard(session)
                self.summary.expired_sessions += 1
            else:
                self.broker.expire_later(session, remaining)

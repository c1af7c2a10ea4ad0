"""Streams: named queues that keep every message in a log and let each consumer read from
where it asks, removing nothing for the others (RabbitMQ's stream queues).

A stream is declared like a queue with ``x-queue-type = stream`` (``queue_registry``);
it must be durable, neither exclusive nor auto-delete, and takes only the arguments
streams have (``parse_stream_arguments``): ``x-max-age`` (``7D``, ``12h``, ``30m``,
``10s``; units Y, M, D, h, m, s), ``x-max-length-bytes`` and
``x-stream-max-segment-size-bytes``. Anything else a queue takes (TTL, length bound,
overflow, dead-lettering, expiry) is refused (406), as are the wrong flags.

The rules:

- Every message routed to the stream is appended to its log (``StreamLog``: on disk under
  the data directory when the broker stores its state, else in memory) and gets the next
  offset. Retention removes whole old segments (``x-max-age``, ``x-max-length-bytes``).
- A consumer starts at the offset it asks for (``StreamOffset``: first, last, next, an
  offset, a wall-clock time, or an interval back from now) and reads on in order. Each
  consumer has a window: at most ``prefetch`` unacknowledged messages (0: bounded only by
  its own ``has_credit``); an acknowledgement (ack, nack or reject: nothing is requeued,
  the message stays in the log) opens the window again. Consumers do not compete: each
  one gets every message from its offset on.
- A consumer with a ``name`` has its offset stored in the stream: the offset after the
  acknowledged messages (the first one still unacknowledged, if any; messages nacked
  with requeue, or held when the consumer went, count as unacknowledged). A consumer with that
  name attaching later, also after a restart, starts there; its own offset argument counts
  only when nothing is stored yet.
- ``get`` (basic.get) and ``purge`` are not supported (``StreamsUnsupported``).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from .message import Message
from .overflow import DROPPED, TAKEN
from .queues import Queue, QueueConsumer, QueueEntry, SharedPrefetch
from .refusals import AccessRefused, PreconditionFailed, Refused
from .storage.stream_log import Cursor, StreamLog

__all__ = [
    "FIRST", "LAST", "NEXT", "MemoryStreams", "StreamBackend", "StreamOffset", "StreamQueue",
    "StreamSettings", "StreamsUnsupported", "consumer_options", "is_stream", "parse_interval",
    "parse_offset", "parse_stream_arguments", "queue_for_subscription",
]

log = logging.getLogger("polybroker.streams")

STREAM = "stream"
FIRST, LAST, NEXT = "first", "last", "next"
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
BATCH = 64  # records read from the log at once per consumer
STREAM_WRITE_FAILED = "stream write failed"  # a drop reason
_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}
_INTERVAL = re.compile(r"^([0-9]+)([YMDhms])$")
# Queue arguments a stream does not take (RabbitMQ refuses them too).
_NOT_FOR_STREAMS = ("x-message-ttl", "x-expires", "x-max-length", "x-overflow",
                    "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-priority")


class StreamsUnsupported(Refused):
    """540 NOT_IMPLEMENTED: an operation streams do not have (basic.get, purge)."""

    code = 540


def is_stream(arguments: Mapping[str, Any] | None) -> bool:
    """Whether queue ``arguments`` declare a stream."""
    value = (arguments or {}).get("x-queue-type")
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value == STREAM


@dataclass(frozen=True, slots=True)
class StreamSettings:
    max_age: float = 0.0  # seconds; 0: no bound
    max_bytes: int = 0  # 0: no bound
    segment_bytes: int = DEFAULT_SEGMENT_BYTES


def parse_interval(text: str) -> float | None:
    """``1h`` -> 3600.0; None if ``text`` is no interval (units Y, M, D, h, m, s)."""
    match = _INTERVAL.match(text)
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_stream_arguments(
    name: str, arguments: Mapping[str, Any], *, durable: bool, exclusive: bool,
    auto_delete: bool,
) -> StreamSettings:
    """Check a stream's declaration; PreconditionFailed (406) names what is wrong."""
    def refuse(what: str, value: object) -> PreconditionFailed:
        return PreconditionFailed(f"PRECONDITION_FAILED - invalid arg '{what}' for queue "
                                  f"'{name}' in vhost '/' of queue type stream: {value!r}")

    for flag, given, wanted in (("durable", durable, True), ("exclusive", exclusive, False),
                                ("auto_delete", auto_delete, False)):
        if given != wanted:
            raise PreconditionFailed(f"PRECONDITION_FAILED - invalid property '{flag}' for "
                                     f"queue '{name}' in vhost '/' of queue type stream")
    for key in _NOT_FOR_STREAMS:
        if key in arguments:
            raise refuse(key, arguments[key])
    max_age = 0.0
    if "x-max-age" in arguments:
        text = arguments["x-max-age"]
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        seconds = parse_interval(text) if isinstance(text, str) else None
        if not seconds:
            raise refuse("x-max-age", arguments["x-max-age"])
        max_age = seconds
    numbers: dict[str, int] = {}
    for key, smallest in (("x-max-length-bytes", 0), ("x-stream-max-segment-size-bytes", 1)):
        value = arguments.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise refuse(key, value)
        numbers[key] = value
    return StreamSettings(
        max_age=max_age, max_bytes=numbers.get("x-max-length-bytes", 0),
        segment_bytes=numbers.get("x-stream-max-segment-size-bytes", DEFAULT_SEGMENT_BYTES),
    )


@dataclass(frozen=True, slots=True)
class StreamOffset:
    """Where a consumer starts: ``kind`` is first, last, next, ``offset`` (``value`` the
    offset), ``timestamp`` (``value`` wall-clock seconds) or ``interval`` (``value``
    seconds back from now)."""

    kind: str = NEXT
    value: float = 0

    def resolve(self, stream_log: StreamLog, now: float) -> int:
        first, end = stream_log.first_offset, stream_log.next_offset
        if self.kind == FIRST:
            return first
        if self.kind == LAST:
            return max(end - 1, first)
        if self.kind == "offset":
            return min(max(int(self.value), first), end)
        if self.kind == "timestamp":
            return stream_log.offset_at(self.value)
        if self.kind == "interval":
            return stream_log.offset_at(now - self.value)
        return end


def parse_offset(value: object) -> StreamOffset:
    """An ``x-stream-offset`` value: ``first``, ``last``, ``next``, an integer offset (or
    its digits; also ``offset=N``), a timestamp (an AMQP timestamp, a datetime, or
    ``timestamp=SECONDS``) or an interval (``1h``, ``30m``...). ValueError if none."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, datetime):
        return StreamOffset("timestamp", value.timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"negative offset {value}")
        return StreamOffset("offset", value)
    if isinstance(value, str):
        text = value.strip()
        if text in (FIRST, LAST, NEXT):
            return StreamOffset(text)
        if text.isdigit():
            return StreamOffset("offset", int(text))
        key, _, rest = text.partition("=")
        if key in ("offset", "timestamp") and rest:
            try:
                number = float(rest) if key == "timestamp" else int(rest)
            except ValueError:
                number = -1
            if number >= 0 and math.isfinite(number):
                return StreamOffset(key, number)
        seconds = parse_interval(text)
        if seconds is not None:
            return StreamOffset("interval", seconds)
    raise ValueError(f"invalid x-stream-offset {value!r}")


def consumer_options(header: Callable[[str], str | None]) -> dict[str, Any]:
    """``add_consumer``'s stream keywords from text headers (STOMP SUBSCRIBE, MQTT 5.0
    user properties): ``x-stream-offset`` and ``x-stream-consumer-name``. ValueError
    for a bad one."""
    name = header("x-stream-consumer-name")
    if name is not None and not name:
        raise ValueError("empty x-stream-consumer-name")
    return {"offset": parse_offset(header("x-stream-offset") or NEXT), "name": name}


def queue_for_subscription(
    queues: Any, name: str, header: Callable[[str], str | None], *, acknowledged: bool,
    prefetch: int,
) -> tuple[Queue, dict[str, Any]]:
    """The queue a text-headed subscription (STOMP SUBSCRIBE) to queue ``name`` consumes,
    and the stream keywords for ``add_consumer``. ``x-queue-type: stream`` declares a
    stream (``queues.declare_stream``); a stream's consumer must acknowledge and have a
    prefetch bound, as over AMQP. ValueError or Refused says what is wrong."""
    wants_stream = header("x-queue-type") == STREAM
    queue = queues.declare_stream(name) if wants_stream else queues.declare(name)
    if not isinstance(queue, StreamQueue):
        return queue, {}
    if not acknowledged or not prefetch:
        raise ValueError(f"a consumer of stream {name} must acknowledge (ack: client or "
                         f"client-individual) and set prefetch-count")
    return queue, consumer_options(header)


class StreamBackend(Protocol):
    """Where streams keep their logs, and how a message becomes a log value."""

    def open(self, name: str, settings: StreamSettings) -> StreamLog: ...

    def encode(self, message: Message) -> tuple[Any, int | None]: ...

    def decode(self, value: Any) -> Message: ...

    def appended(self, stream_log: StreamLog) -> None:
        """``stream_log`` was written to: acknowledgements wait until it is durable."""

    def wall_clock(self) -> float: ...


class MemoryStreams:
    """Logs in memory (no data directory): values are the messages themselves."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.wall_clock = wall_clock

    def open(self, name: str, settings: StreamSettings) -> StreamLog:
        return StreamLog(None, segment_bytes=settings.segment_bytes,
                         max_bytes=settings.max_bytes, max_age=settings.max_age,
                         clock=self.wall_clock)

    @staticmethod
    def encode(message: Message) -> tuple[Any, int | None]:
        return message, len(message.payload) + len(message.topic) + 64

    @staticmethod
    def decode(value: Any) -> Message:
        return cast(Message, value)  # in memory the log keeps the Message itself

    @staticmethod
    def appended(stream_log: StreamLog) -> None:
        pass  # nothing to make durable


class _Reader:
    """One consumer of a stream: its cursor and window."""

    __slots__ = ("ack_required", "consumer", "cursor", "exclusive", "name", "pending",
                 "prefetch", "shared")

    def __init__(self, consumer: QueueConsumer, cursor: Cursor, ack_required: bool,
                 prefetch: int, shared: SharedPrefetch | None, name: str | None) -> None:
        self.consumer = consumer
        self.cursor = cursor
        self.ack_required = ack_required
        self.prefetch = prefetch
        self.shared = shared if ack_required else None
        self.name = name
        self.pending: dict[int, None] = {}  # unacknowledged offsets, ascending
        self.exclusive = False  # basic.consume's flag: no other consumer meanwhile

    def room(self) -> int:
        if not self.consumer.has_credit():
            return 0
        if not self.ack_required:
            return BATCH
        room = self.prefetch - len(self.pending) if self.prefetch else BATCH
        shared = self.shared
        if shared is not None and shared.limit:
            room = min(room, shared.limit - shared.unacked)
        return min(room, BATCH)


class StreamQueue(Queue):
    """A named queue of kind stream (see the module's description)."""

    def __init__(self, name: str, *, stream_log: StreamLog, backend: StreamBackend,
                 settings: StreamSettings, **queue: Any) -> None:
        super().__init__(name, **queue)
        self.log = stream_log
        self.backend = backend
        self.settings = settings
        self._readers: dict[Any, _Reader] = {}  # consumer -> its reader
        self._held: dict[int, tuple[_Reader, int]] = {}  # tag -> (reader, offset)
        self._stream_tags = itertools.count(1)

    def __repr__(self) -> str:
        return f"StreamQueue({self.name!r})"

    @property
    def message_count(self) -> int:
        return len(self.log)

    @property
    def unacked_count(self) -> int:
        return len(self._held)

    @property
    def consumer_count(self) -> int:
        return len(self._readers)

    @property
    def consumers(self) -> list[QueueConsumer]:
        return [reader.consumer for reader in self._readers.values()]

    # -- producing --------------------------------------------------------------------------

    def deliver(self, message: Message, qos: int, retain: bool,
                subscription_ids: tuple[int, ...] = ()) -> int:
        return self.offer(message, qos)

    def offer(self, message: Message, qos: int, *, persistent: bool = False) -> int:
        return TAKEN if self.put(message, persistent=persistent) else DROPPED

    def put(self, message: Message, *, persistent: bool = False) -> bool:
        """Append ``message``; False if the log could not be written (a full disk: the
        message is dropped, counted and logged, as a full queue drops one)."""
        value, size = self.backend.encode(message)
        try:
            self.log.append(value, size)
            self.backend.appended(self.log)
        except OSError as exc:
            if self.drops.add(STREAM_WRITE_FAILED):
                log.error("stream %s: STREAM WRITE FAILED, message dropped: %s", self.name,
                          exc)
            return False
        self.dispatch()
        return True

    def has_room(self) -> bool:
        return True

    # -- consumers --------------------------------------------------------------------------

    def add_consumer(
        self, consumer: QueueConsumer, *, ack_required: bool = True, prefetch: int = 0,
        dispatch: bool = True, owner: object = None, shared: SharedPrefetch | None = None,
        exclusive: bool = False, offset: StreamOffset | None = None, name: str | None = None,
    ) -> None:
        """Attach ``consumer`` at ``offset`` (default: next), or where the consumer called
        ``name`` stopped. The other keywords are ``Queue.add_consumer``'s (``exclusive``
        too: AccessRefused while another consumer reads, or an exclusive one does)."""
        if consumer in self._readers:
            raise ValueError(f"{consumer!r} already consumes from {self!r}")
        if prefetch < 0:
            raise ValueError("prefetch must not be negative")
        if owner is not None:
            self.check_owner(owner)
        if (exclusive and self._readers) or any(r.exclusive for r in self._readers.values()):
            raise AccessRefused(f"ACCESS_REFUSED - queue '{self.name}' in vhost '/' in "
                                "exclusive use")
        stored = self.log.offsets.get(name) if name is not None else None
        if stored is not None:
            start = max(stored, self.log.first_offset)
        else:
            start = (offset or StreamOffset()).resolve(self.log, self.backend.wall_clock())
        reader = _Reader(consumer, self.log.cursor(start), ack_required, prefetch, shared, name)
        reader.exclusive = exclusive
        self._readers[consumer] = reader
        self.had_consumer = True
        if reader.shared is not None:
            reader.shared.queues[self] = reader.shared.queues.get(self, 0) + 1
        log.info("stream %s: consumer %s attached at offset %d%s", self.name,
                 name or "(unnamed)", start, " (stored)" if stored is not None else "")
        if dispatch:
            self.dispatch()

    def position(self, consumer: QueueConsumer) -> int:
        """The next offset ``consumer`` will read."""
        return self._readers[consumer].cursor.offset

    def set_prefetch(self, consumer: QueueConsumer, prefetch: int) -> None:
        self._readers[consumer].prefetch = prefetch
        self.dispatch()

    def remove_consumer(self, consumer: QueueConsumer, *, requeue: bool = True,
                        settle: bool = True) -> int:
        reader = self._readers.pop(consumer, None)
        if reader is None:
            return 0
        if reader.shared is not None:
            left = reader.shared.queues.get(self, 0) - 1
            if left > 0:
                reader.shared.queues[self] = left
            else:
                reader.shared.queues.pop(self, None)
        count = self.release(consumer) if settle else 0
        if not self._readers:
            self.last_used = self.clock()
            if self.registry is not None and not self.deleted:
                self.registry.consumers_gone(self)
        return count

    def release(self, holder: object, *, requeue: bool = True) -> int:
        """Forget what ``holder`` has not acknowledged (nothing goes back: a stream keeps
        every message for everyone)."""
        tags = [tag for tag, (reader, _offset) in self._held.items()
                if reader.consumer is holder]
        return self._settle(tags, consumed=False)

    # -- delivery ---------------------------------------------------------------------------

    def dispatch(self) -> None:
        if self._dispatching or not self._readers:
            return
        self._dispatching = True
        try:
            for reader in list(self._readers.values()):
                self._feed(reader)
        finally:
            self._dispatching = False

    def _feed(self, reader: _Reader) -> None:
        decode = self.backend.decode
        while reader.consumer in self._readers:
            room = reader.room()
            if room <= 0:
                return
            cursor = reader.cursor
            batch = cursor.read(room)
            if not batch:
                return
            for index, (offset, _timestamp, value, _size) in enumerate(batch):
                if reader.consumer not in self._readers or (index and not reader.room()):
                    cursor.seek(offset)  # the rest waits for room
                    return
                self._hand(reader, QueueEntry(decode(value), offset))

    def _hand(self, reader: _Reader, entry: QueueEntry) -> None:
        tag = None
        if reader.ack_required:
            tag = next(self._stream_tags)
            self._held[tag] = (reader, entry.seq)
            reader.pending[entry.seq] = None
            if reader.shared is not None:
                reader.shared.unacked += 1
        entry.deliveries = 1
        reader.consumer.deliver_from_queue(self, entry, tag)
        if tag is None and reader.name is not None:
            self.log.store_offset(reader.name, entry.seq + 1)

    def get(self, holder: object = None) -> tuple[QueueEntry, int | None] | None:
        raise StreamsUnsupported(f"NOT_IMPLEMENTED - basic.get not supported by stream "
                                 f"queues queue '{self.name}' in vhost '/'")

    def purge(self) -> int:
        raise StreamsUnsupported(f"NOT_IMPLEMENTED - purge not supported by stream queue "
                                 f"'{self.name}' in vhost '/'")

    # -- acknowledgements -------------------------------------------------------------------

    def ack_many(self, tags: Iterable[int]) -> int:
        return self._settle(tags)

    def nack_many(self, tags: Iterable[int], *, requeue: bool = True) -> int:
        # Nothing is requeued (the message stays in the log); one the client asked to
        # requeue was not consumed, so a named consumer's stored offset stays before it.
        return self._settle(tags, consumed=not requeue)

    def _settle(self, tags: Iterable[int], *, consumed: bool = True) -> int:
        """Close the window entries of ``tags``; a named consumer's stored offset moves
        only for ``consumed`` ones (not for what a closing consumer still held)."""
        count = 0
        moved: dict[_Reader, None] = {}
        freed: set[SharedPrefetch] = set()
        for tag in tags:
            held = self._held.pop(tag, None)
            if held is None:
                continue
            reader, offset = held
            reader.pending.pop(offset, None)
            if reader.shared is not None:
                reader.shared.unacked -= 1
                freed.add(reader.shared)
            moved[reader] = None
            count += 1
        for reader in moved if consumed else ():
            if reader.name is not None:
                stored = next(iter(reader.pending), reader.cursor.offset)
                self.log.store_offset(reader.name, stored)
        if count:
            self.dispatch()
            for shared in freed:
                shared.dispatch()
        return count

    # -- life cycle -------------------------------------------------------------------------

    def entries(self) -> list[QueueEntry]:
        return []  # the log keeps the messages, not the store

    def drop_everything(self) -> int:
        count = len(self.log)
        self.deleted = True
        for reader in self._readers.values():
            if reader.shared is not None:
                reader.shared.unacked -= len(reader.pending)
                reader.shared.queues.pop(self, None)
        self._readers.clear()
        self._held.clear()
        self.log.destroy()
        return count

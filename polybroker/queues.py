"""Named queues: the core's second subscriber kind (competing consumers, acks, redelivery).

Protocol-neutral: STOMP ``/queue/x`` and (later) AMQP queue ``x`` are one ``Queue``
from ``broker.queues``. The rules:

- Messages wait in ``ready`` in arrival order. The queue holds at most
  ``max_length`` messages, ready and unacknowledged together; when full, the
  overflow policy applies: ``DROP_NEW`` (the default, as sessions do: the new
  message is dropped, counted and logged) or ``DROP_HEAD`` (the oldest ready
  message makes room).
- Each message goes to exactly one consumer. Consumers take turns (round-robin),
  skipping any without credit: its own ``has_credit()`` (e.g. its connection's send
  buffer is full) and its prefetch, the number of unacknowledged messages it may
  hold (0: no bound). A consumer that regains credit by itself calls ``dispatch``.
- A consumer with ``ack_required`` gets a delivery tag per delivery (unique in the
  queue, increasing) and the message stays unacknowledged until ``ack`` (consumed),
  ``nack(requeue=True)`` (back to the queue) or ``nack(requeue=False)`` (dropped;
  dead-lettering will hook into ``_discard``). Without ``ack_required`` a message is
  settled as it is handed over.
- Requeued messages (nack, consumer removed, ``release``) go back to their original
  position (by arrival sequence) flagged ``redelivered``; a nacked message goes to
  another consumer when one has credit.
- A message whose expiry has passed when it reaches the head is dropped.
- ``get`` takes the head message without a consumer (AMQP basic.get).
- A queue is also a router subscriber (``deliver``, ``client_id = None``), so topic
  bindings can route into it.
- Persistence: ``store`` (``persistence.StoreJournal`` when the broker has a store,
  else None) is told when a persistent message enters a durable queue, when it is
  first handed out awaiting an acknowledgement (so that after a restart it comes back
  flagged redelivered) and when it leaves the queue for good. ``restore`` puts back
  what the store kept, in arrival order.
"""

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .message import Message

log = logging.getLogger("polybroker.queues")

DROP_NEW = "drop-new"
DROP_HEAD = "drop-head"
OVERFLOW_POLICIES = (DROP_NEW, DROP_HEAD)
MAX_NAME_BYTES = 255  # AMQP's short string; STOMP has no limit of its own


class QueueConsumer(Protocol):
    """What a queue needs from a consumer (a STOMP subscription, an AMQP consumer)."""

    def deliver_from_queue(self, queue: "Queue", entry: "QueueEntry", tag: int | None) -> None:
        """Send ``entry`` to the client; ``tag`` is None when no acknowledgement follows."""

    def has_credit(self) -> bool:
        """False while the consumer cannot take another message."""


class QueueStore(Protocol):
    """The persistence hook (implemented by the store integration)."""

    def enqueued(self, queue: "Queue", entry: "QueueEntry") -> None: ...

    def delivered(self, queue: "Queue", entry: "QueueEntry") -> None: ...

    def removed(self, queue: "Queue", entry: "QueueEntry") -> None: ...


@dataclass(slots=True, eq=False)
class QueueEntry:
    """One message in one queue."""

    message: Message
    seq: int  # arrival order in the queue; requeued entries go back by it
    persistent: bool = False  # kept by the store (a persistent message in a durable queue)
    redelivered: bool = False  # handed out before and requeued
    deliveries: int = 0  # times handed out (dead-lettering will bound it)
    rejected_by: object = None  # the consumer that last nacked it: another is preferred
    marked: bool = False  # the store knows it was handed out (``QueueStore.delivered``)


class _ConsumerState:
    __slots__ = ("ack_required", "consumer", "prefetch", "unacked")

    def __init__(self, consumer: QueueConsumer, ack_required: bool, prefetch: int) -> None:
        self.consumer = consumer
        self.ack_required = ack_required
        self.prefetch = prefetch
        self.unacked = 0

    def ready(self) -> bool:
        if self.ack_required and self.prefetch and self.unacked >= self.prefetch:
            return False
        return self.consumer.has_credit()


def check_queue_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name a queue in every protocol."""
    if not name:
        raise ValueError("empty queue name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"queue name longer than {MAX_NAME_BYTES} bytes")
    if "\0" in name:
        raise ValueError("NUL in queue name")


class Queue:
    """One named queue: ready messages, consumers taking turns, unacknowledged deliveries."""

    client_id = None  # as a router subscriber: never the publisher (No Local)

    def __init__(
        self,
        name: str,
        *,
        clock: Callable[[], float],
        max_length: int,
        max_bytes: int = 0,
        overflow: str = DROP_NEW,
        durable: bool = False,
        store: QueueStore | None = None,
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}")
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        self.name = name
        self.clock = clock
        self.max_length = max_length
        self.max_bytes = max_bytes  # payload bytes held (ready and unacknowledged); 0: none
        self.bytes = 0
        self.overflow = overflow
        self.durable = durable
        self.store = store
        self.ready: deque[QueueEntry] = deque()
        self.dropped = 0  # messages refused or pushed out by the length bound
        self._consumers: dict[Hashable, _ConsumerState] = {}
        self._order: list[Hashable] = []  # consumers in turn order
        self._turn = 0
        self._unacked: dict[int, tuple[QueueEntry, object]] = {}  # tag -> (entry, holder)
        self._seq = itertools.count()
        self._tags = itertools.count(1)
        self._dispatching = False

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    @property
    def message_count(self) -> int:
        """Messages ready for delivery."""
        return len(self.ready)

    @property
    def unacked_count(self) -> int:
        return len(self._unacked)

    @property
    def consumer_count(self) -> int:
        return len(self._consumers)

    # -- producing ------------------------------------------------------------------------

    def deliver(
        self, message: Message, qos: int, retain: bool, subscription_ids: tuple[int, ...] = ()
    ) -> None:
        """The router's subscriber interface: a topic binding routes ``message`` here."""
        self.put(message)

    def put(self, message: Message, *, persistent: bool = False) -> bool:
        """Append ``message`` and hand it out if a consumer can take it; False if the
        length bound dropped it (``DROP_NEW``)."""
        size = len(message.payload)
        while self._full(size) and self.overflow == DROP_HEAD and self.ready:
            self._overflowed()
            self._discard(self.ready.popleft())
        if self._full(size):
            self._overflowed()
            return False
        self.bytes += size
        entry = QueueEntry(message, next(self._seq), persistent and self.durable)
        if entry.persistent and self.store is not None:
            self.store.enqueued(self, entry)
        self.ready.append(entry)
        self.dispatch()
        return True

    def restore(self, entries: Iterable[QueueEntry]) -> int:
        """Put back entries the store kept (ascending ``seq``) without recording them
        again; new messages follow them. Entries beyond ``max_length`` are dropped (and
        their records deleted); returns how many were put back."""
        count = 0
        last = -1
        for entry in entries:
            last = max(last, entry.seq)
            size = len(entry.message.payload)
            if self._full(size):
                self._overflowed()
                self.bytes += size  # entered, and leaves at once through _discard
                self._discard(entry)
                continue
            self.bytes += size
            self.ready.append(entry)
            count += 1
        if last >= 0:
            self._seq = itertools.count(max(last + 1, next(self._seq)))
        return count

    def entries(self) -> list[QueueEntry]:
        """Every message in the queue: ready ones, then unacknowledged ones."""
        return [*self.ready, *(entry for entry, _ in self._unacked.values())]

    def _full(self, size: int) -> bool:
        """Would one more message of ``size`` payload bytes break a bound?"""
        if len(self.ready) + len(self._unacked) >= self.max_length:
            return True
        return bool(self.max_bytes) and self.bytes + size > self.max_bytes

    def _overflowed(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "queue %s: full (%d messages or %d bytes), dropped %d message(s) so far (%s)",
                self.name, self.max_length, self.max_bytes, self.dropped, self.overflow,
            )

    # -- consumers ------------------------------------------------------------------------

    def add_consumer(
        self,
        consumer: QueueConsumer,
        *,
        ack_required: bool = True,
        prefetch: int = 0,
        dispatch: bool = True,
    ) -> None:
        """Add a consumer; it takes the last turn. ``prefetch`` bounds its unacknowledged
        messages (0: no bound). With ``dispatch=False`` the caller dispatches later (to
        answer its client first)."""
        if consumer in self._consumers:
            raise ValueError(f"{consumer!r} already consumes from {self!r}")
        if prefetch < 0:
            raise ValueError("prefetch must not be negative")
        self._consumers[consumer] = _ConsumerState(consumer, ack_required, prefetch)
        self._order.append(consumer)
        if dispatch:
            self.dispatch()

    def set_prefetch(self, consumer: QueueConsumer, prefetch: int) -> None:
        self._consumers[consumer].prefetch = prefetch
        self.dispatch()

    def remove_consumer(self, consumer: QueueConsumer, *, requeue: bool = True) -> int:
        """Remove a consumer and settle what it has not acknowledged (see ``release``);
        return how many messages that was."""
        if self._consumers.pop(consumer, None) is None:
            return 0
        index = self._order.index(consumer)
        del self._order[index]
        if index < self._turn:
            self._turn -= 1
        return self.release(consumer, requeue=requeue)

    def release(self, holder: object, *, requeue: bool = True) -> int:
        """Settle every message ``holder`` (a consumer, or the holder given to ``get``)
        has not acknowledged: back to the queue (default) or dropped."""
        tags = [tag for tag, (_, owner) in self._unacked.items() if owner is holder]
        return self._take_back(tags, requeue=requeue, rejected=False)

    # -- delivery -------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand ready messages to consumers with credit, taking turns."""
        if self._dispatching or not self._consumers:
            return  # a consumer's callback re-entered: the running loop carries on
        self._dispatching = True
        try:
            ready = self.ready
            while ready:
                entry = ready[0]
                if self._expired(entry):
                    self._discard(ready.popleft())
                    continue
                state = self._choose(entry)
                if state is None:
                    break
                ready.popleft()
                self._hand_out(state, entry)
        finally:
            self._dispatching = False

    def _choose(self, entry: QueueEntry) -> _ConsumerState | None:
        order = self._order
        count = len(order)
        fallback: int | None = None
        for step in range(count):
            index = (self._turn + step) % count
            state = self._consumers[order[index]]
            if not state.ready():
                continue
            if state.consumer is entry.rejected_by:
                if fallback is None:
                    fallback = index
                continue
            self._turn = (index + 1) % count
            return state
        if fallback is None:
            return None
        self._turn = (fallback + 1) % count
        return self._consumers[order[fallback]]

    def _hand_out(self, state: _ConsumerState, entry: QueueEntry) -> None:
        entry.deliveries += 1
        if state.ack_required:
            tag = self._track(entry, state.consumer)
        else:
            tag = None
            self._settled(entry)
        state.consumer.deliver_from_queue(self, entry, tag)

    def get(self, holder: object = None) -> tuple[QueueEntry, int | None] | None:
        """Take the next ready message without a consumer (AMQP basic.get); None if there
        is none. With a ``holder`` the message stays unacknowledged under the returned
        tag; without, it is settled at once."""
        ready = self.ready
        while ready:
            entry = ready.popleft()
            if self._expired(entry):
                self._discard(entry)
                continue
            entry.deliveries += 1
            if holder is None:
                self._settled(entry)
                return entry, None
            return entry, self._track(entry, holder)
        return None

    def _expired(self, entry: QueueEntry) -> bool:
        expiry = entry.message.expiry
        return expiry is not None and expiry <= self.clock()

    # -- acknowledgements -----------------------------------------------------------------

    def ack(self, tag: int) -> bool:
        """The message under ``tag`` was consumed; False if the tag is not pending."""
        return self.ack_many((tag,)) == 1

    def ack_many(self, tags: Iterable[int]) -> int:
        count = 0
        for tag in tags:
            entry = self._untrack(tag)
            if entry is not None:
                self._settled(entry)
                count += 1
        if count:
            self.dispatch()
        return count

    def nack(self, tag: int, *, requeue: bool = True) -> bool:
        """The message under ``tag`` was not consumed: requeue it (for another consumer
        if one can take it) or drop it. False if the tag is not pending."""
        return self.nack_many((tag,), requeue=requeue) == 1

    def reject(self, tag: int, *, requeue: bool = True) -> bool:
        """AMQP's basic.reject: ``nack`` of one message."""
        return self.nack(tag, requeue=requeue)

    def nack_many(self, tags: Iterable[int], *, requeue: bool = True) -> int:
        return self._take_back(tags, requeue=requeue, rejected=True)

    def _take_back(self, tags: Iterable[int], *, requeue: bool, rejected: bool) -> int:
        entries = []
        for tag in tags:
            held = self._unacked.get(tag)
            if held is None:
                continue
            entry = self._untrack(tag)
            if rejected:
                entry.rejected_by = held[1]  # so that another consumer gets it next
            entries.append(entry)
        if requeue:
            self._requeue(entries)
        else:
            for entry in entries:
                self._discard(entry)
        if entries:
            self.dispatch()
        return len(entries)

    def purge(self) -> int:
        """Drop every ready message; return how many."""
        count = len(self.ready)
        while self.ready:
            self._discard(self.ready.popleft())
        return count

    # -- bookkeeping ----------------------------------------------------------------------

    def _track(self, entry: QueueEntry, holder: object) -> int:
        if entry.persistent and not entry.marked and self.store is not None:
            self.store.delivered(self, entry)
            entry.marked = True
        tag = next(self._tags)
        self._unacked[tag] = (entry, holder)
        state = self._consumers.get(holder)
        if state is not None:
            state.unacked += 1
        return tag

    def _untrack(self, tag: int) -> QueueEntry | None:
        held = self._unacked.pop(tag, None)
        if held is None:
            return None
        entry, holder = held
        state = self._consumers.get(holder)
        if state is not None:
            state.unacked -= 1
        return entry

    def _requeue(self, entries: list[QueueEntry]) -> None:
        """Put ``entries`` back where they were by arrival order, flagged redelivered."""
        if not entries:
            return
        for entry in entries:
            entry.redelivered = True
        entries.sort(key=_by_seq)
        ready = self.ready
        last = entries[-1].seq
        head = []
        while ready and ready[0].seq < last:  # only the ready head can precede them
            head.append(ready.popleft())
        merged = list(heapq.merge(entries, head, key=_by_seq))
        ready.extendleft(reversed(merged))

    def _settled(self, entry: QueueEntry) -> None:
        self.bytes -= len(entry.message.payload)
        if entry.persistent and self.store is not None:
            self.store.removed(self, entry)

    def _discard(self, entry: QueueEntry) -> None:
        # Expired, rejected without requeue or pushed out: the dead-letter hook goes here.
        self._settled(entry)


def _by_seq(entry: QueueEntry) -> int:
    return entry.seq


class QueueRegistry:
    """The broker's named queues, created on first use and shared by every protocol."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_length: int,
        max_bytes: int = 0,
        overflow: str = DROP_NEW,
        store: QueueStore | None = None,
    ) -> None:
        self.clock = clock
        self.max_length = max_length
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.store = store
        self._queues: dict[str, Queue] = {}

    def __len__(self) -> int:
        return len(self._queues)

    def __iter__(self) -> Iterator[Queue]:
        return iter(list(self._queues.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._queues

    def get(self, name: str) -> Queue | None:
        return self._queues.get(name)

    def attach_store(self, store: QueueStore | None) -> None:
        """Record durable queues' persistent messages in ``store`` from now on (None:
        in memory only)."""
        self.store = store
        for queue in self._queues.values():
            queue.store = store

    def delete(self, name: str) -> Queue | None:
        """Delete the queue called ``name`` with its messages; its consumers must be gone
        (the protocol ends them first). Returns the queue, or None if there was none."""
        queue = self._queues.get(name)
        if queue is None:
            return None
        if queue.consumer_count:
            raise ValueError(f"queue {name} still has consumers")
        del self._queues[name]
        deleted = getattr(self.store, "queue_deleted", None)
        if deleted is not None:
            deleted(queue)
        log.info("queue %s: deleted", name)
        return queue

    def declare(self, name: str, *, durable: bool = True) -> Queue:
        """The queue called ``name``, created if it does not exist yet. Raises
        ValueError for a name no protocol can carry (``check_queue_name``)."""
        queue = self._queues.get(name)
        if queue is None:
            check_queue_name(name)
            queue = Queue(
                name, clock=self.clock, max_length=self.max_length, max_bytes=self.max_bytes,
                overflow=self.overflow,
                durable=durable, store=self.store,
            )
            self._queues[name] = queue
            log.info("queue %s: created", name)
        return queue

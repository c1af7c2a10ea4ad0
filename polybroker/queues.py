"""Named queues: the core's second subscriber kind (competing consumers, acks, redelivery).

Protocol-neutral: STOMP ``/queue/x`` and AMQP queue ``x`` are one ``Queue`` from
``broker.queues`` (``queue_registry``: declaring, exclusive owners, auto-delete,
expiry of idle queues). The rules:

- Messages wait in ``ready`` in arrival order. The queue holds at most
  ``max_length`` messages, ready and unacknowledged together; when full, the
  overflow policy applies: ``DROP_NEW`` (the default: the new message is dropped,
  counted and logged), ``DROP_HEAD`` (the oldest ready message makes room) or
  ``BLOCK`` (``limits.queue_overflow`` "block", for STOMP topic subscriptions: a QoS
  1/2 message is taken over the bound, ``deliver`` says HELD and the publisher waits
  for ``room``; see ``overflow``). That bound protects the broker; AMQP's own bounds
  (``x-max-length``, ``x-max-length-bytes``: ``limit_length``, ``limit_bytes``)
  count ready messages only, as RabbitMQ does, with ``x-overflow`` ``drop-head``
  (the default: the oldest ready message is dead-lettered or dropped),
  ``reject-publish`` (``put`` returns False) or ``reject-publish-dlx`` (refused and
  dead-lettered).
- Each message goes to exactly one consumer. Consumers take turns (round-robin),
  skipping any without credit: its own ``has_credit()`` (e.g. its connection's send
  buffer is full) and its prefetch, the number of unacknowledged messages it may
  hold (0: no bound). A consumer that regains credit by itself calls ``dispatch``.
- A consumer with ``ack_required`` gets a delivery tag per delivery (unique in the
  queue, increasing) and the message stays unacknowledged until ``ack`` (consumed),
  ``nack(requeue=True)`` (back to the queue) or ``nack(requeue=False)`` (dropped, or
  dead-lettered). Without ``ack_required`` a message is settled as it is handed over.
- Prefetch: a consumer's own bound (AMQP ``basic.qos`` global=False) and optionally a
  ``SharedPrefetch`` shared by several consumers, on any queues (global=True: the
  channel's bound). Both apply. Messages taken with ``get`` count toward neither.
- Requeued messages (nack, consumer removed, ``release``) go back to their original
  position (by arrival sequence) flagged ``redelivered``; a nacked message goes to
  another consumer when one has credit.
- A message expires at its own ``expiry`` or after the queue's ``message_ttl``,
  whichever is first. An expired message is dropped (or dead-lettered) when it reaches
  the head, and, when the queue has ``timers``, as soon as it is at the head.
- Dead-lettering: with ``dead_letter_exchange`` set, messages rejected without requeue
  (``rejected``), expired (``expired``) or pushed out by ``x-max-length`` (``maxlen``)
  go to ``dead_letterer`` (the exchanges); purged and deleted ones do not.
- ``get`` takes the head message without a consumer (AMQP basic.get).
- A queue is also a router subscriber (``deliver``, ``client_id = None``), so topic
  bindings can route into it.
- Persistence: ``store`` (``persistence.StoreJournal`` when the broker has a store,
  else None) is told when a persistent message enters a durable queue, when it is
  first handed out awaiting an acknowledgement (so that after a restart it comes back
  flagged redelivered) and when it leaves the queue for good. ``restore`` puts back
  what the store kept, in arrival order.
"""

import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Protocol, Self

import trio

from .message import Message
from .overflow import DROPPED_OLDEST, DropCounter, RoomSignal
from .queue_acks import QueueAcks
from .queue_bounds import QueueBounds
from .queue_entries import (
    BLOCK,
    DROP_HEAD,
    DROP_NEW,
    EXPIRED,
    LIMIT_OVERFLOWS,
    MAX_NAME_BYTES,
    MAXLEN,
    OVERFLOW_POLICIES,
    QUEUE_OVERFLOW,
    REJECT_PUBLISH,
    REJECT_PUBLISH_DLX,
    REJECTED,
    QueueEntry,
    check_queue_name,
)
from .queue_expiry import QueueExpiry
from .queue_state import Prefetch
from .refusals import AccessRefused, ResourceLocked
from .timers import TimerHandle, Timers

# Where each part of a queue lives: the constants and QueueEntry in ``queue_entries``, the
# bounds and dead-lettering in ``queue_bounds``, expiry in ``queue_expiry``, the
# acknowledgements in ``queue_acks``, the state they share (typed) in ``queue_state``; the
# names are imported from here.
__all__ = [
    "BLOCK",
    "DROP_HEAD",
    "DROP_NEW",
    "EXPIRED",
    "LIMIT_OVERFLOWS",
    "MAXLEN",
    "MAX_NAME_BYTES",
    "OVERFLOW_POLICIES",
    "QUEUE_OVERFLOW",
    "REJECTED",
    "REJECT_PUBLISH",
    "REJECT_PUBLISH_DLX",
    "Queue",
    "QueueConsumer",
    "QueueEntry",
    "QueueLifecycle",
    "QueueStore",
    "SharedPrefetch",
    "check_queue_name",
]


class QueueConsumer(Protocol):
    """What a queue needs from a consumer (a STOMP subscription, an AMQP consumer)."""

    def deliver_from_queue(self, queue: "Queue", entry: "QueueEntry", tag: int | None) -> None:
        """Send ``entry`` to the client; ``tag`` is None when no acknowledgement follows."""

    def has_credit(self) -> bool:
        """False while the consumer cannot take another message."""

    # Optional: ``queue_deleted(queue)`` is called, if the consumer has it, when the queue
    # is deleted under it (queue.delete, x-expires cannot, exclusive owner gone...): AMQP
    # answers with a broker-side basic.cancel. The consumer is already removed then, and
    # its unacknowledged messages are gone with the queue.


class QueueStore(Protocol):
    """The persistence hook (implemented by the store integration)."""

    def enqueued(self, queue: "Queue", entry: "QueueEntry") -> None: ...

    def delivered(self, queue: "Queue", entry: "QueueEntry") -> None: ...

    def removed(self, queue: "Queue", entry: "QueueEntry") -> None: ...

    def queue_declared(self, queue: "Queue") -> None: ...

    def queue_deleted(self, queue: "Queue") -> None: ...


class SharedPrefetch:
    """A bound on the unacknowledged messages of several consumers together, on any
    queues: AMQP ``basic.qos`` with global=True (RabbitMQ: per channel). Give the same
    object to ``add_consumer`` for each consumer of the channel; ``set_limit`` applies at
    once (more room dispatches)."""

    __slots__ = ("limit", "queues", "unacked")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit  # 0: no bound
        self.unacked = 0  # messages held by its consumers (and by cancelled ones)
        self.queues: dict[Queue, int] = {}  # queues with consumers under it -> how many

    def has_room(self) -> bool:
        return not self.limit or self.unacked < self.limit

    def set_limit(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("prefetch must not be negative")
        self.limit = limit
        self.dispatch()

    def dispatch(self) -> None:
        for queue in list(self.queues):
            queue.dispatch()


class _ConsumerState:
    __slots__ = ("ack_required", "consumer", "exclusive", "prefetch", "shared", "unacked")

    def __init__(
        self, consumer: QueueConsumer, ack_required: bool, prefetch: int,
        shared: SharedPrefetch | None, exclusive: bool,
    ) -> None:
        self.consumer = consumer
        self.ack_required = ack_required
        self.prefetch = prefetch
        self.shared = shared if ack_required else None
        self.exclusive = exclusive
        self.unacked = 0

    def ready(self) -> bool:
        if self.ack_required:
            if self.prefetch and self.unacked >= self.prefetch:
                return False
            shared = self.shared
            if shared is not None and shared.limit and shared.unacked >= shared.limit:
                return False
        return self.consumer.has_credit()


class Queue(QueueBounds, QueueExpiry, QueueAcks, RoomSignal):
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
        timers: Timers | None = None,
        drop_totals: Counter[str] | None = None,
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
        self.timers = timers  # for expiring messages at the head without a dequeue
        # Declaration (``queue_registry``); STOMP's queues keep the defaults.
        self.declared = False  # declared by a client (AMQP), not just used (STOMP)
        self.owner: object = None  # the connection an exclusive queue belongs to
        self.auto_delete = False
        self.arguments: dict[str, object] = {}  # as declared (x-arguments), for equivalence checks
        self.message_ttl: float | None = None  # seconds (x-message-ttl)
        self.expires: float | None = None  # seconds unused before deletion (x-expires)
        self.limit_length: int | None = None  # ready messages (x-max-length)
        self.limit_bytes: int | None = None  # their payload bytes (x-max-length-bytes)
        self.limit_overflow = DROP_HEAD  # x-overflow
        self.dead_letter_exchange: str | None = None
        self.dead_letter_routing_key: str | None = None
        self.dead_letterer = None  # where dead letters go (the exchanges); typed in QueueState
        self.registry: QueueLifecycle | None = None  # told when the last consumer goes
        self.had_consumer = False
        self.last_used = clock()  # consumer gone, get, (re)declare: for x-expires
        self.deleted = False
        self.ready: deque[QueueEntry] = deque()
        # Messages refused or pushed out by a length bound, per reason; and the broker's.
        self.drops = DropCounter(drop_totals)
        # Messages taken in, handed to consumers (or basic.get) and acknowledged, for the
        # operator's rates; plain integers on the hot path.
        self.published = 0
        self.delivered = 0
        self.acknowledged = 0
        self._room: trio.Event | None = None  # made when a publisher waits (BLOCK)
        self._gave_up = False  # BLOCK: publishers waited too long; drop new until room
        self._consumers: dict[object, _ConsumerState] = {}
        self._order: list[QueueConsumer] = []  # consumers in turn order
        self._turn = 0
        # tag -> (entry, holder, the holder's shared prefetch or None)
        self._unacked: dict[int, tuple[QueueEntry, object, Prefetch | None]] = {}
        self._unacked_bytes = 0
        self._expiry_timer: TimerHandle | None = None
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

    @property
    def exclusive(self) -> bool:
        return self.owner is not None

    @property
    def ready_bytes(self) -> int:
        """Payload bytes of the ready messages."""
        return self.bytes - self._unacked_bytes

    @property
    def consumers(self) -> list[QueueConsumer]:
        return list(self._order)

    def check_owner(self, owner: object) -> None:
        """Raise ResourceLocked (405) if the queue is exclusive to another connection."""
        if self.owner is not None and owner is not self.owner:
            raise ResourceLocked(
                f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
                f"'{self.name}' in vhost '/'. It could be originally declared on another "
                "connection or the exclusive property value does not match that of the "
                "original declaration."
            )

    # -- producing ------------------------------------------------------------------------

    def deliver(
        self, message: Message, qos: int, retain: bool, subscription_ids: tuple[int, ...] = ()
    ) -> int:
        """The router's subscriber interface: a topic binding routes ``message`` here.
        Returns TAKEN, HELD or DROPPED (``overflow``).

        Persistent: an AMQP persistent message, or a QoS 1/2 one from the topic space
        (MQTT, STOMP ``/topic/``), as RabbitMQ's MQTT plugin makes them."""
        persistent = message.amqp.persistent if message.amqp is not None else qos > 0
        return self.offer(message, qos, persistent=persistent)

    @property
    def backlog(self) -> "Queue":
        return self

    def put(self: Self, message: Message, *, persistent: bool = False) -> bool:
        """Append ``message`` and hand it out if a consumer can take it; False if a
        length bound refused it (``DROP_NEW``, ``reject-publish``)."""
        size = len(message.payload)
        entry = QueueEntry(message, 0, persistent and self.durable and self.owner is None)
        if self.limit_length is not None or self.limit_bytes is not None:
            verdict = self._make_room(entry, size)
            if verdict is not None:
                return verdict
        while self._full(size) and self.overflow == DROP_HEAD and self.ready:
            self._overflowed(DROPPED_OLDEST)
            self._discard(self.ready.popleft(), MAXLEN)
        if self._full(size) and (self.overflow != BLOCK or self._gave_up):
            self._overflowed()
            return False
        self.bytes += size
        self.published += 1
        entry.seq = next(self._seq)
        expiry = message.expiry
        if self.message_ttl is not None:
            deadline = self.clock() + self.message_ttl
            expiry = deadline if expiry is None else min(expiry, deadline)
        if entry.persistent and self.store is not None:
            self.store.enqueued(self, entry)
        self.ready.append(entry)
        self.dispatch()
        # The deadline applies from now on: a consumer ready at once gets even a message
        # with TTL 0 (as in RabbitMQ); a requeued one can still expire.
        entry.expires_at = expiry
        if expiry is not None and self.ready:
            self._arm_expiry(expiry)
        return True

    def restore(self, entries: Iterable[QueueEntry]) -> int:
        """Put back entries the store kept (ascending ``seq``) without recording them
        again; new messages follow them. Entries beyond ``max_length`` are dropped (and
        their records deleted), unless the policy is ``BLOCK``: each was taken with a
        promise, over the bound or not. Returns how many were put back."""
        count = 0
        last = -1
        now = self.clock()
        for entry in entries:
            last = max(last, entry.seq)
            entry.expires_at = entry.message.expiry
            if self.message_ttl is not None:  # the TTL starts again at the restart
                deadline = now + self.message_ttl
                entry.expires_at = min(entry.expires_at or deadline, deadline)
            size = len(entry.message.payload)
            if self._full(size) and self.overflow != BLOCK:
                self._overflowed()
                self.bytes += size  # entered, and leaves at once through _discard
                self._discard(entry)
                continue
            self.bytes += size
            self.ready.append(entry)
            count += 1
        if last >= 0:
            self._seq = itertools.count(max(last + 1, next(self._seq)))
        if self.ready and self.ready[0].expires_at is not None:
            self._arm_expiry(self.ready[0].expires_at)
        return count

    def entries(self) -> list[QueueEntry]:
        """Every message in the queue: ready ones, then unacknowledged ones."""
        return [*self.ready, *(held[0] for held in self._unacked.values())]

    # -- consumers ------------------------------------------------------------------------

    def add_consumer(
        self,
        consumer: QueueConsumer,
        *,
        ack_required: bool = True,
        prefetch: int = 0,
        dispatch: bool = True,
        owner: object = None,
        shared: SharedPrefetch | None = None,
        exclusive: bool = False,
    ) -> None:
        """Add a consumer; it takes the last turn. ``prefetch`` bounds its unacknowledged
        messages (0: no bound), ``shared`` bounds them together with other consumers'
        (AMQP global qos). With ``dispatch=False`` the caller dispatches later (to answer
        its client first).

        ``owner`` is the consuming connection: ResourceLocked (405) if the queue is
        exclusive to another one (None: not checked). ``exclusive`` (basic.consume's
        flag): AccessRefused (403) if the queue has other consumers, and while it
        consumes no other consumer is accepted."""
        if consumer in self._consumers:
            raise ValueError(f"{consumer!r} already consumes from {self!r}")
        if prefetch < 0:
            raise ValueError("prefetch must not be negative")
        if owner is not None:
            self.check_owner(owner)
        if (exclusive and self._consumers) or any(
            state.exclusive for state in self._consumers.values()
        ):
            raise AccessRefused(f"ACCESS_REFUSED - queue '{self.name}' in vhost '/' in "
                                "exclusive use")
        state = _ConsumerState(consumer, ack_required, prefetch, shared, exclusive)
        self._consumers[consumer] = state
        self._order.append(consumer)
        self.had_consumer = True
        if state.shared is not None:
            state.shared.queues[self] = state.shared.queues.get(self, 0) + 1
        if dispatch:
            self.dispatch()

    def set_prefetch(self, consumer: QueueConsumer, prefetch: int) -> None:
        self._consumers[consumer].prefetch = prefetch
        self.dispatch()

    def remove_consumer(
        self, consumer: QueueConsumer, *, requeue: bool = True, settle: bool = True
    ) -> int:
        """Remove a consumer and settle what it has not acknowledged (see ``release``);
        return how many messages that was. With ``settle=False`` (AMQP basic.cancel) its
        unacknowledged messages stay pending under their tags until ``ack``/``nack`` or
        ``release(consumer)`` (when its channel closes).

        An ``auto_delete`` queue that had a consumer is deleted when its last one goes."""
        state = self._consumers.pop(consumer, None)
        if state is None:
            return 0
        index = self._order.index(consumer)
        del self._order[index]
        if index < self._turn:
            self._turn -= 1
        shared = state.shared
        if shared is not None:
            left = shared.queues.get(self, 0) - 1
            if left > 0:
                shared.queues[self] = left
            else:
                shared.queues.pop(self, None)
        count = self.release(consumer, requeue=requeue) if settle else 0
        if not self._consumers:
            self.last_used = self.clock()
            if self.registry is not None and not self.deleted:
                self.registry.consumers_gone(self)
        return count

    def release(self, holder: object, *, requeue: bool = True) -> int:
        """Settle every message ``holder`` (a consumer, or the holder given to ``get``)
        has not acknowledged: back to the queue (default) or dropped."""
        tags = [tag for tag, held in self._unacked.items() if held[1] is holder]
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
                    self._discard(ready.popleft(), EXPIRED)
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
        self.delivered += 1
        if state.ack_required:
            tag = self._track(entry, state.consumer)
        else:
            tag = None
            self._settled(entry)
        state.consumer.deliver_from_queue(self, entry, tag)

    def _track(self: Self, entry: QueueEntry, holder: object) -> int:
        if entry.persistent and not entry.marked and self.store is not None:
            self.store.delivered(self, entry)
            entry.marked = True
        tag = next(self._tags)
        state = self._consumers.get(holder)
        shared = None
        if state is not None:
            state.unacked += 1
            shared = state.shared
            if shared is not None:
                shared.unacked += 1
        self._unacked[tag] = (entry, holder, shared)
        self._unacked_bytes += len(entry.message.payload)
        return tag

    def _untrack(self, tag: int) -> QueueEntry:
        """Forget the delivery under ``tag``, which the callers found pending."""
        entry, holder, shared = self._unacked.pop(tag)
        self._unacked_bytes -= len(entry.message.payload)
        state = self._consumers.get(holder)
        if state is not None:
            state.unacked -= 1
        if shared is not None:
            shared.unacked -= 1
        return entry

    def get(self, holder: object = None) -> tuple[QueueEntry, int | None] | None:
        """Take the next ready message without a consumer (AMQP basic.get); None if there
        is none. With a ``holder`` the message stays unacknowledged under the returned
        tag; without, it is settled at once. Counts as a use (x-expires)."""
        self.last_used = self.clock()
        ready = self.ready
        while ready:
            entry = ready.popleft()
            if self._expired(entry):
                self._discard(entry, EXPIRED)
                continue
            entry.deliveries += 1
            self.delivered += 1
            if holder is None:
                self._settled(entry)
                return entry, None
            return entry, self._track(entry, holder)
        return None

    # -- deletion -------------------------------------------------------------------------

    def drop_everything(self) -> int:
        """The queue is being deleted: forget every message (nothing is dead-lettered; the
        store deletes its records with the queue's) and every consumer; return how many
        ready messages there were."""
        count = len(self.ready)
        self.deleted = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self.ready.clear()
        if self._room is not None:
            self._room.set()  # nobody waits for a deleted queue
            self._room = None
        freed = {held[2] for held in self._unacked.values() if held[2] is not None}
        for tag in list(self._unacked):
            self._untrack(tag)
        self.bytes = 0
        for state in self._consumers.values():
            if state.shared is not None:
                state.shared.queues.pop(self, None)
        self._consumers.clear()
        self._order.clear()
        self._turn = 0
        for shared in freed:  # their room goes to the channel's other queues
            shared.dispatch()
        return count


class QueueLifecycle(Protocol):
    """What a queue tells its registry (``queue_registry.QueueRegistry``)."""

    def consumers_gone(self, queue: Queue) -> None: ...

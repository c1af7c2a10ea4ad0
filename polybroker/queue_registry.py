"""The broker's named queues (``broker.queues``) and their life cycle, shared by every protocol.

STOMP declares a queue by using it (``declare``). AMQP declares explicitly
(``declare_queue``), with RabbitMQ's rules:

- Name ``''``: the broker names the queue ``amq.gen-<random>``. Creating any other
  ``amq.`` name is refused (403); redeclaring an existing one is allowed.
- ``passive``: only look it up (404 if missing).
- Exclusive queues belong to the declaring connection (``owner``, any object): another
  connection gets 405 RESOURCE_LOCKED on declare (passive too), consume, get, bind,
  purge and delete (``lookup``), and they are deleted when ``owner_closed(owner)``.
  They are never stored, whatever ``durable`` says.
- ``auto_delete``: deleted when its last consumer goes, if it ever had one.
- Redeclaring must be equivalent: same durable, exclusive and auto_delete flags and the
  same x-arguments (406). A queue STOMP created by use takes the flags and arguments of
  its first AMQP declaration instead.
- x-arguments (integers in ms, checked: 406 for a bad one): ``x-expires`` (deleted after
  that long unused: no consumer, no basic.get, no redeclaration), ``x-message-ttl``,
  ``x-max-length``, ``x-max-length-bytes``, ``x-overflow`` (``drop-head``,
  ``reject-publish``, ``reject-publish-dlx``), ``x-dead-letter-exchange``,
  ``x-dead-letter-routing-key``. Others are kept (and compared) but have no effect.
- ``delete_queue``: ``if_unused`` (406 while it has consumers), ``if_empty`` (406 while
  it has ready messages); returns the number of ready messages deleted; every consumer
  is told (``QueueConsumer.queue_deleted``). Deleting a missing queue is no error.
- ``x-queue-type = stream`` declares a stream (``streams``), kept in a log from
  ``streams`` (in memory unless the store gives it a directory); STOMP declares one with
  ``declare_stream``.
- Durable (and not exclusive) queues are recorded with their flags and arguments when
  declared (``QueueStore.queue_declared``) and come back at start-up (``persistence``).
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TypedDict

from .queues import (
    DROP_HEAD,
    DROP_NEW,
    LIMIT_OVERFLOWS,
    Queue,
    QueueEntry,
    QueueStore,
    check_queue_name,
)
from .refusals import AccessRefused, NotFound, PreconditionFailed, Refused
from .streams import (
    MemoryStreams,
    StreamBackend,
    StreamQueue,
    is_stream,
    parse_stream_arguments,
)
from .timers import TimerHandle, Timers

__all__ = ["QueueRegistry", "QueueSettings", "parse_arguments"]

log = logging.getLogger("polybroker.queues")

SERVER_NAMED_PREFIX = "amq.gen-"
_INT_ARGUMENTS = {  # name -> smallest value allowed
    "x-expires": 1, "x-message-ttl": 0, "x-max-length": 0, "x-max-length-bytes": 0,
}
_TEXT_ARGUMENTS = ("x-overflow", "x-dead-letter-exchange", "x-dead-letter-routing-key")


class QueueSettings:
    """The effect of a queue's x-arguments, checked."""

    __slots__ = ("dead_letter_exchange", "dead_letter_routing_key", "expires", "max_bytes",
                 "max_length", "message_ttl", "overflow")

    def __init__(self) -> None:
        self.expires: float | None = None
        self.message_ttl: float | None = None
        self.max_length: int | None = None
        self.max_bytes: int | None = None
        self.overflow = DROP_HEAD
        self.dead_letter_exchange: str | None = None
        self.dead_letter_routing_key: str | None = None

    def apply(self, queue: Queue) -> None:
        queue.expires = self.expires
        queue.message_ttl = self.message_ttl
        queue.limit_length = self.max_length
        queue.limit_bytes = self.max_bytes
        queue.limit_overflow = self.overflow
        queue.dead_letter_exchange = self.dead_letter_exchange
        queue.dead_letter_routing_key = self.dead_letter_routing_key


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def parse_arguments(name: str, arguments: Mapping[str, object]) -> QueueSettings:
    """Check a declaration's x-arguments; PreconditionFailed names the first bad one."""
    settings = QueueSettings()
    for key, minimum in _INT_ARGUMENTS.items():
        if key not in arguments:
            continue
        value = arguments[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise PreconditionFailed(
                f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{name}' in vhost '/': "
                f"{value!r}"
            )
        if key == "x-expires":
            settings.expires = value / 1000
        elif key == "x-message-ttl":
            settings.message_ttl = value / 1000
        elif key == "x-max-length":
            settings.max_length = value
        else:
            settings.max_bytes = value
    texts = {}
    for key in _TEXT_ARGUMENTS:
        if key in arguments:
            text = _text(arguments[key])
            if text is None or (key == "x-overflow" and text not in LIMIT_OVERFLOWS):
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - invalid arg '{key}' for queue '{name}' in vhost "
                    f"'/': {arguments[key]!r}"
                )
            texts[key] = text
    settings.overflow = texts.get("x-overflow", DROP_HEAD)
    settings.dead_letter_exchange = texts.get("x-dead-letter-exchange")
    settings.dead_letter_routing_key = texts.get("x-dead-letter-routing-key")
    if settings.dead_letter_routing_key is not None and settings.dead_letter_exchange is None:
        raise PreconditionFailed(
            f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue "
            f"'{name}' in vhost '/': no x-dead-letter-exchange"
        )
    return settings


def _normalized(arguments: Mapping[str, object]) -> dict[str, object]:
    """Arguments as compared for equivalence (text the same whether str or bytes)."""
    return {key: (_text(value) if isinstance(value, bytes) else value)
            for key, value in arguments.items()}


class _QueueOptions(TypedDict):
    """What every queue of the registry is made with (``Queue``'s keywords)."""

    clock: Callable[[], float]
    max_length: int
    max_bytes: int
    overflow: str
    durable: bool
    store: QueueStore | None
    timers: Timers | None
    drop_totals: Counter[str] | None


class QueueRegistry:
    """The broker's named queues, shared by every protocol."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_length: int,
        max_bytes: int = 0,
        overflow: str = DROP_NEW,
        store: QueueStore | None = None,
        timers: Timers | None = None,
        drop_totals: Counter[str] | None = None,
    ) -> None:
        self.clock = clock
        self.drop_totals = drop_totals  # the broker's drop counts, for every queue
        self.max_length = max_length
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.store = store
        self.timers = timers
        # Told when a queue is deleted (the exchanges drop its bindings).
        self.on_deleted: list[Callable[[Queue], None]] = []
        # Where dead letters go (the exchanges), for queues with x-dead-letter-exchange.
        self.dead_letterer: Callable[[Queue, QueueEntry, str], None] | None = None
        self._queues: dict[str, Queue] = {}
        self._owned: dict[object, dict[str, None]] = {}  # owner -> its exclusive queues
        self._expiry: dict[Queue, TimerHandle] = {}  # x-expires timers
        self.streams: StreamBackend = MemoryStreams()  # where streams keep their logs

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

    def _new(self, name: str, durable: bool, stream: dict[str, object] | None = None) -> Queue:
        """A new queue; with ``stream`` (its checked arguments), a stream."""
        common = _QueueOptions(clock=self.clock, max_length=self.max_length,
                               max_bytes=self.max_bytes, overflow=self.overflow,
                               durable=durable, store=self.store, timers=self.timers,
                               drop_totals=self.drop_totals)
        if stream is None:
            queue = Queue(name, **common)
        else:
            settings = parse_stream_arguments(name, stream, durable=True, exclusive=False,
                                              auto_delete=False)
            queue = StreamQueue(name, stream_log=self.streams.open(name, settings),
                                backend=self.streams, settings=settings, **common)
        queue.registry = self
        queue.dead_letterer = self.dead_letterer
        self._queues[name] = queue
        return queue

    # -- STOMP: declared by use -------------------------------------------------------------

    def declare(self, name: str, *, durable: bool = True) -> Queue:
        """The queue called ``name``, created if it does not exist yet. Raises
        ValueError for a name no protocol can carry (``check_queue_name``)."""
        queue = self._queues.get(name)
        if queue is None:
            check_queue_name(name)
            queue = self._new(name, durable)
            log.info("queue %s: created", name)
        return queue

    def declare_stream(self, name: str) -> Queue:
        """The stream called ``name`` for STOMP (``x-queue-type: stream`` on SUBSCRIBE),
        declared durable if new. PreconditionFailed if a plain queue has that name."""
        queue = self._queues.get(name)
        if queue is not None and not isinstance(queue, StreamQueue):
            raise PreconditionFailed(f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' "
                                     f"for queue '{name}' in vhost '/'")
        return queue or self.declare_queue(name, durable=True,
                                           arguments={"x-queue-type": "stream"})

    def delete(self, name: str) -> Queue | None:
        """Delete the queue called ``name`` with its messages; its consumers must be gone
        (the protocol ends them first). Returns the queue, or None if there was none."""
        queue = self._queues.get(name)
        if queue is None:
            return None
        if queue.consumer_count:
            raise ValueError(f"queue {name} still has consumers")
        self._remove(queue)
        return queue

    # -- AMQP: declared explicitly ----------------------------------------------------------

    def declare_queue(
        self,
        name: str,
        *,
        owner: object = None,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, object] | None = None,
    ) -> Queue:
        """queue.declare by connection ``owner``; returns the queue (its ``name``,
        ``message_count`` and ``consumer_count`` make declare-ok).

        Raises NotFound (passive, missing), ResourceLocked (exclusive to another owner),
        AccessRefused (a new ``amq.`` name), PreconditionFailed (not equivalent to the
        existing queue, a bad argument or name). Any declaration counts as a use
        (x-expires)."""
        arguments = dict(arguments or {})
        if passive:
            found = self.lookup(name, owner)
            found.last_used = self.clock()
            return found
        server_named = not name
        if server_named:
            name = self._server_name()
        queue = self._queues.get(name)
        if queue is not None and queue.declared:
            queue.check_owner(owner)
            self._check_equivalent(queue, durable, exclusive, auto_delete, arguments)
            queue.last_used = self.clock()
            return queue
        if queue is None and name.startswith("amq.") and not server_named:
            raise AccessRefused(f"ACCESS_REFUSED - queue name '{name}' contains reserved "
                                "prefix 'amq.*'")
        try:
            check_queue_name(name)
        except ValueError as exc:
            raise PreconditionFailed(f"PRECONDITION_FAILED - {exc}") from None
        stream = is_stream(arguments)
        if stream:
            parse_stream_arguments(name, arguments, durable=durable, exclusive=exclusive,
                                   auto_delete=auto_delete)
            if queue is not None:  # STOMP used it as a plain queue first
                raise PreconditionFailed(f"PRECONDITION_FAILED - inequivalent arg "
                                         f"'x-queue-type' for queue '{name}' in vhost '/'")
        settings = parse_arguments(name, {} if stream else arguments)
        if exclusive and owner is None:
            raise ValueError("an exclusive queue needs an owner")
        if queue is None:
            queue = self._new(name, durable, arguments if stream else None)
            log.info("queue %s: declared%s%s%s", name, " durable" if durable else "",
                     " exclusive" if exclusive else "", " auto_delete" if auto_delete else "")
        else:  # created by STOMP's use: its first declaration sets it up
            queue.durable = durable
        self._set_up(queue, settings, owner if exclusive else None, auto_delete, arguments)
        if durable and not exclusive and self.store is not None:
            self.store.queue_declared(queue)
        return queue

    def restore_queue(
        self, name: str, *, auto_delete: bool, arguments: Mapping[str, object],
        declared: bool = True,
    ) -> Queue:
        """Recreate a durable queue the store kept, without recording it again."""
        stream = is_stream(arguments)
        queue = self._queues.get(name) or self._new(name, True, dict(arguments) if stream
                                                    else None)
        if declared:
            settings = parse_arguments(name, {} if stream else arguments)
            self._set_up(queue, settings, None, auto_delete, dict(arguments))
        return queue

    def _set_up(
        self, queue: Queue, settings: QueueSettings, owner: object, auto_delete: bool,
        arguments: dict[str, object],
    ) -> None:
        queue.declared = True
        queue.owner = owner
        queue.auto_delete = auto_delete
        queue.arguments = arguments
        queue.last_used = self.clock()
        settings.apply(queue)
        if owner is not None:
            self._owned.setdefault(owner, {})[queue.name] = None
        if settings.expires is not None:
            self._arm_expires(queue, queue.last_used + settings.expires)

    def _check_equivalent(
        self, queue: Queue, durable: bool, exclusive: bool, auto_delete: bool,
        arguments: dict[str, object],
    ) -> None:
        for flag, mine, theirs in (
            ("durable", queue.durable, durable),
            ("exclusive", queue.exclusive, exclusive),
            ("auto_delete", queue.auto_delete, auto_delete),
        ):
            if mine != theirs:
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - inequivalent arg '{flag}' for queue "
                    f"'{queue.name}' in vhost '/': received '{str(theirs).lower()}' but "
                    f"current is '{str(mine).lower()}'"
                )
        if _normalized(queue.arguments) != _normalized(arguments):
            keys = sorted(set(queue.arguments) ^ set(arguments)) or sorted(
                key for key in arguments if queue.arguments.get(key) != arguments[key]
            )
            raise PreconditionFailed(
                f"PRECONDITION_FAILED - inequivalent arg '{keys[0] if keys else '?'}' for "
                f"queue '{queue.name}' in vhost '/'"
            )

    def _server_name(self) -> str:
        while True:
            name = SERVER_NAMED_PREFIX + secrets.token_urlsafe(16)[:22]
            if name not in self._queues:
                return name

    def lookup(self, name: str, owner: object = None) -> Queue:
        """The queue called ``name`` for a request of connection ``owner`` (consume, get,
        bind, purge...): NotFound if missing, ResourceLocked if exclusive to another."""
        queue = self._queues.get(name)
        if queue is None:
            raise NotFound(f"NOT_FOUND - no queue '{name}' in vhost '/'")
        queue.check_owner(owner)
        return queue

    def purge(self, name: str, owner: object = None) -> int:
        """queue.purge: drop the ready messages; return how many."""
        return self.lookup(name, owner).purge()

    def delete_queue(
        self,
        name: str,
        *,
        owner: object = None,
        if_unused: bool = False,
        if_empty: bool = False,
    ) -> int:
        """queue.delete; return how many ready messages went with it (0 for a missing
        queue). Raises ResourceLocked and PreconditionFailed (``if_unused`` with consumers,
        ``if_empty`` with ready messages). Its consumers are told (``queue_deleted``)."""
        queue = self._queues.get(name)
        if queue is None:
            return 0
        queue.check_owner(owner)
        if if_unused and queue.consumer_count:
            raise PreconditionFailed(f"PRECONDITION_FAILED - queue '{name}' in vhost '/' in "
                                     "use")
        if if_empty and queue.message_count:
            raise PreconditionFailed(f"PRECONDITION_FAILED - queue '{name}' in vhost '/' not "
                                     "empty")
        return self._remove(queue)

    def owner_closed(self, owner: object) -> int:
        """Connection ``owner`` closed: delete its exclusive queues; return how many."""
        names = self._owned.pop(owner, {})
        count = 0
        for name in names:
            queue = self._queues.get(name)
            if queue is not None and queue.owner is owner:
                self._remove(queue)
                count += 1
        return count

    # -- deletion ---------------------------------------------------------------------------

    def _remove(self, queue: Queue) -> int:
        """Delete ``queue``: tell its consumers, drop its bindings, records and messages."""
        if self._queues.get(queue.name) is not queue:
            return 0
        del self._queues[queue.name]
        consumers = queue.consumers
        for listener in self.on_deleted:  # its bindings go first (their records too)
            listener(queue)
        deleted = getattr(self.store, "queue_deleted", None)
        if deleted is not None:
            deleted(queue)
        count = queue.drop_everything()
        timer = self._expiry.pop(queue, None)
        if timer is not None:
            timer.cancel()
        if queue.owner is not None:
            self._owned.get(queue.owner, {}).pop(queue.name, None)
        for consumer in consumers:
            tell = getattr(consumer, "queue_deleted", None)
            if tell is not None:
                try:
                    tell(queue)
                except Refused:  # pragma: no cover - a consumer must not refuse
                    log.exception("queue %s: consumer %r failed on deletion", queue.name,
                                  consumer)
        log.info("queue %s: deleted (%d ready messages)", queue.name, count)
        return count

    def consumers_gone(self, queue: Queue) -> None:
        """A queue's last consumer went: an auto_delete queue goes with it."""
        if queue.auto_delete and queue.had_consumer:
            log.info("queue %s: auto-deleted (last consumer gone)", queue.name)
            self._remove(queue)

    def _arm_expires(self, queue: Queue, deadline: float) -> None:
        if self.timers is None:
            return
        old = self._expiry.get(queue)
        if old is not None:
            old.cancel()
        self._expiry[queue] = self.timers.call_at(deadline, lambda: self._check_expires(queue))

    def _check_expires(self, queue: Queue) -> None:
        """x-expires: delete the queue if unused for that long, else look again later."""
        self._expiry.pop(queue, None)
        if queue.deleted or queue.expires is None:
            return
        now = self.clock()
        if queue.consumer_count:
            self._arm_expires(queue, now + queue.expires)
            return
        deadline = queue.last_used + queue.expires
        if deadline > now:
            self._arm_expires(queue, deadline)
            return
        log.info("queue %s: expired (unused for %.0f s)", queue.name, queue.expires)
        self._remove(queue)

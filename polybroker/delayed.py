"""Delayed delivery: messages held by the core until they are due, then routed as if
published at that moment.

Every protocol hands its delayed messages to ``Broker.delayed`` (a ``DelayedStore``):

- MQTT (and any topic publish): the topic ``$delayed/{seconds}/{topic}``, as EMQX has it
  (``split_delayed_topic``); ``Broker.publish`` takes such a message here, and
  ``Security.may_publish`` checks the real topic.
- STOMP: the ``AMQ_SCHEDULED_DELAY``, ``delay`` or ``x-delay`` header on SEND, in
  milliseconds (``stomp_delay``); to a topic or into a queue.
- AMQP: an exchange of type ``x-delayed-message`` with an ``x-delay`` header (ms), routed
  by its ``x-delayed-type`` when due (``exchanges``).

The store keeps its messages in a heap ordered by due time (O(log n) per message) and
holds one deadline in ``Broker.timers``, for the earliest: never a task or a timer per
message. Each pending message is one record in the store (``journal.delayed_added``),
deleted when it is delivered or cancelled, so that it survives a restart or a crash; a
message that fell due while the broker was down goes out at start, in due order.

Bounds (``[limits]``): ``max_delayed_messages``, ``max_delayed_bytes`` (payload bytes)
and ``max_delay`` (seconds). A message over one of them is refused: counted in
``Broker.drops`` (``delayed-limit``), logged, and the publish result says so
(``PublishResult.refusal``) for the adapter to tell its client.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .message import Message
from .overflow import PublishResult, all_taken

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .config import Limits
    from .timers import TimerHandle, Timers

__all__ = [
    "DELAYED_LIMIT", "DELAYED_PREFIX", "EXCHANGE", "MAX_EMQX_INTERVAL", "QUEUE", "TOPIC",
    "DelayedStore", "Pending", "Target", "split_delayed_topic", "stomp_delay",
]

log = logging.getLogger("polybroker.delayed")

DELAYED_PREFIX = "$delayed/"
MAX_EMQX_INTERVAL = 4294967  # EMQX's longest ``$delayed`` interval, in seconds
DELAYED_LIMIT = "delayed-limit"  # the drop reason of a message over the delayed bounds
STOMP_DELAY_HEADERS = ("AMQ_SCHEDULED_DELAY", "delay", "x-delay")
TOPIC, QUEUE, EXCHANGE = "topic", "queue", "exchange"  # the kinds of target
BATCH = 500  # messages delivered per timer call: a backlog due at start yields in between


@dataclass(frozen=True, slots=True)
class Target:
    """Where a message goes when due: the topic space (``message.topic``), a named queue
    (``name``; ``persistent``: recorded there), or an exchange (``name``) with
    ``routing_key``, routed by the exchange's underlying type."""

    kind: str = TOPIC
    name: str = ""
    routing_key: str = ""
    persistent: bool = False


TO_TOPIC = Target()


@dataclass(order=True, slots=True)
class Pending:
    """One delayed message: due at ``due`` (the broker's clock), ``id`` unique and in
    arrival order (it breaks ties, so equal due times keep their order)."""

    due: float
    id: int
    message: Message = field(compare=False)
    target: Target = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.message.payload)


class DelayedJournal(Protocol):
    """What the store records (``journal.Journal``)."""

    def atomic(self) -> AbstractContextManager[None]: ...

    def delayed_added(self, pending: Pending) -> None: ...

    def delayed_removed(self, pending: Pending) -> None: ...


class Core(Protocol):
    """What the store uses of the broker it belongs to."""

    timers: Timers
    limits: Limits
    drops: Counter[str]
    clock: Callable[[], float]

    @property
    def journal(self) -> DelayedJournal: ...

    def deliver_delayed(self, pending: Pending) -> None: ...


def split_delayed_topic(topic: str) -> tuple[int, str] | None:
    """``$delayed/{seconds}/{topic}`` -> (seconds, topic); None when ``topic`` does not
    start with ``$delayed/`` or is malformed there (seconds not a decimal integer, no
    topic after it). The seconds are not bounded here (``max_delay`` does that)."""
    if not topic.startswith(DELAYED_PREFIX):
        return None
    seconds, sep, real = topic[len(DELAYED_PREFIX):].partition("/")
    if not sep or not real or not seconds.isascii() or not seconds.isdigit():
        return None
    return int(seconds), real


def stomp_delay(headers: Iterable[tuple[str, str]]) -> float | None:
    """The delay a STOMP SEND asks for, in seconds (None: none): the first of its
    ``AMQ_SCHEDULED_DELAY``, ``delay`` or ``x-delay`` headers, in milliseconds. ValueError
    names a header that is not a whole number of milliseconds of 0 or more."""
    for name, value in headers:
        if name in STOMP_DELAY_HEADERS:
            text = value.strip()
            if not text.isascii() or not text.isdigit():
                raise ValueError(f"header {name}: not a number of milliseconds: {value!r}")
            return int(text) / 1000
    return None


class DelayedStore:
    """The pending delayed messages of one broker (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.limits = core.limits
        self._heap: list[Pending] = []
        self._by_id: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._cancelled = 0  # cancelled entries still in the heap (skipped when popped)
        self.bytes = 0  # payload bytes pending
        self._timer: TimerHandle | None = None
        self._timer_at = math.inf
        self.delivered = 0

    def __len__(self) -> int:
        return len(self._by_id)

    # -- adding ---------------------------------------------------------------------------

    def schedule(self, message: Message, delay: float, target: Target = TO_TOPIC,
                 client: str = "?") -> PublishResult:
        """Hold ``message`` for ``delay`` seconds, then deliver it to ``target``; or refuse
        it (over a bound: ``PublishResult.refusal`` says which). A delay of 0 or less
        delivers at the next timer round, still in order with the others."""
        limits = self.limits
        why = None
        if delay > limits.max_delay:
            why = f"delay {delay:g}s is longer than max_delay {limits.max_delay:g}s"
        elif len(self._by_id) >= limits.max_delayed_messages:
            why = f"max_delayed_messages ({limits.max_delayed_messages}) reached"
        elif self.bytes + len(message.payload) > limits.max_delayed_bytes:
            why = f"max_delayed_bytes ({limits.max_delayed_bytes}) reached"
        if why is not None:
            return self._refuse(why, client, message)
        pending = Pending(self.core.clock() + max(delay, 0.0), next(self._ids), message, target)
        self._add(pending)
        self.core.journal.delayed_added(pending)
        return all_taken(1)

    def _refuse(self, why: str, client: str, message: Message) -> PublishResult:
        self.core.drops[DELAYED_LIMIT] += 1
        log.warning("client %s: delayed message for %s refused: %s", client,
                    message.topic, why)
        result = PublishResult(1)
        result.dropped = 1
        result.refusal = f"delayed message refused: {why}"
        return result

    def restore(self, due: float, message: Message, target: Target, ident: int) -> None:
        """A pending message read back from the store at start-up (no bounds applied: it
        was accepted once); ``due`` on the broker's clock."""
        self._ids = itertools.count(max(ident + 1, next(self._ids)))
        self._add(Pending(due, ident, message, target))

    def _add(self, pending: Pending) -> None:
        heapq.heappush(self._heap, pending)
        self._by_id[pending.id] = pending
        self.bytes += pending.size
        self._arm(pending.due)

    # -- listing and cancelling -----------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[Pending]:
        """The pending messages, earliest due first (the first ``limit`` of them)."""
        live = (p for p in self._heap if not p.cancelled)
        if limit is None:
            return sorted(live)
        return heapq.nsmallest(limit, live)

    def get(self, ident: int) -> Pending | None:
        return self._by_id.get(ident)

    def cancel(self, ident: int) -> bool:
        """Drop a pending message (and its record); False if there is none by that id."""
        pending = self._by_id.pop(ident, None)
        if pending is None:
            return False
        pending.cancelled = True
        self.bytes -= pending.size
        self._cancelled += 1
        self.core.journal.delayed_removed(pending)
        if self._cancelled > 1000 and self._cancelled * 2 > len(self._heap):
            self._heap = [p for p in self._heap if not p.cancelled]  # lazily compacted
            heapq.heapify(self._heap)
            self._cancelled = 0
        log.info("delayed message %d for %s cancelled", ident, pending.message.topic)
        return True

    # -- delivering -----------------------------------------------------------------------

    def _arm(self, due: float) -> None:
        """Keep the one timer at the earliest due time."""
        if due >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self.core.timers.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap = self._heap
        now = self.core.clock()
        for _ in range(BATCH):
            while heap and heap[0].cancelled:
                heapq.heappop(heap)
                self._cancelled -= 1
            if not heap or heap[0].due > now:
                break
            pending = heapq.heappop(heap)
            del self._by_id[pending.id]
            self.bytes -= pending.size
            self.delivered += 1
            with self.core.journal.atomic():  # the copies it makes and its removal
                self.core.deliver_delayed(pending)
                self.core.journal.delayed_removed(pending)
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap:
            # More due already: a moment later, so the loop serves clients in between.
            self._arm(max(heap[0].due, math.nextafter(now, math.inf)))

"""Full backlogs: what a subscriber did with a message, what a publish came to, and how a
publisher is held back (``limits.queue_overflow``).

An acknowledgement (PUBACK, PUBREC, RECEIPT, AMQP confirm) is a promise, so a full
backlog (a session's queue, a STOMP topic subscription's) never drops a message after
its publisher was told it was taken:

- ``block`` (the default): the backlog takes the message over its bound and says so
  (``HELD``); the publisher's adapter withholds its acknowledgement and stops reading
  from it until every backlog it filled has room again (``wait_for_room``), at most
  ``max_block_time`` seconds. Then those backlogs are told to ``give_up_blocking``:
  they drop new messages (as ``drop-new``) until they have room again, so a persistent
  session whose client never returns cannot hold its publishers for ever.
- ``drop-new``: the backlog does not take it (``DROPPED``); a publisher whose message
  reached no backlog at all is told where its protocol can say it.
- ``drop-oldest``: the oldest queued message makes room.

Every drop is counted per backlog and reason, and broker-wide (``Broker.drops``).
"""

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

import trio

BLOCK, DROP_NEW, DROP_OLDEST = "block", "drop-new", "drop-oldest"

# What a subscriber did with one message (``Session.deliver``, ``Queue.deliver``).
TAKEN = 0  # sent or queued
HELD = 1  # queued, and its backlog is full now: a blocking publisher waits for room
DROPPED = 2  # not taken: its backlog is full

# Drop reasons (the keys of the drop counters).
QUEUE_FULL = "queue-full"  # drop-new, or block past max_block_time
STORED_BOUND = "stored-bound"  # the same, at a persistent session's stored bounds
DROPPED_OLDEST = "drop-oldest"
EXPIRED = "expired"
TOO_LARGE = "too-large"  # larger than the client's Maximum Packet Size
SLOW_READER_QOS0 = "slow-reader-qos0"  # QoS 0 past max_outgoing_bytes

LOG_EVERY = 1000  # a backlog's drops are logged at the first and every 1000th


class Backlog(Protocol):
    """A bounded backlog a blocked publisher waits for (a session, a queue)."""

    def has_room(self) -> bool: ...

    def room(self) -> trio.Event:
        """Set once the backlog has room again (or is gone)."""

    def give_up_blocking(self) -> None:
        """Publishers waited ``max_block_time``: drop new messages until there is room."""


class RoomSignal:
    """``Backlog.room`` for a backlog that keeps its event in ``_room``, made only when a
    publisher first waits (and set, and dropped, by the backlog once it has room)."""

    __slots__ = ("_room",)
    _room: trio.Event | None

    def has_room(self) -> bool:
        raise NotImplementedError

    def room(self) -> trio.Event:
        """Set once the backlog has room again (``has_room``)."""
        room = self._room
        if room is None:
            room = self._room = trio.Event()
            if self.has_room():
                room.set()
        return room


def excluding_own(full: Iterable[Backlog], own: Iterable[object], name: str, what: str,
                  logger: logging.Logger) -> list[Backlog]:
    """The full backlogs a publisher is held back for: all but those it reads itself
    (``own``; held back, it could not acknowledge them), which drop new messages until
    they have room instead (logged, naming them as ``what``)."""
    own = set(own)
    waiting = []
    for backlog in full:
        if backlog in own:
            backlog.give_up_blocking()
            logger.warning("client %s: %s is full: messages for it are dropped until it "
                           "has room", name, what)
        else:
            waiting.append(backlog)
    return waiting


class PublishResult:
    """What one publish came to: subscribers matched, messages dropped because a backlog
    was full, the full backlogs a blocking publisher waits for (None: none), and why the
    core refused it outright (``refusal``: a delayed message over its bounds), which the
    adapter tells its client."""

    __slots__ = ("dropped", "full", "matched", "refusal")

    def __init__(self, matched: int = 0) -> None:
        self.matched = matched
        self.dropped = 0
        self.full: list[Backlog] | None = None
        self.refusal: str | None = None

    def __repr__(self) -> str:
        return f"PublishResult(matched={self.matched}, dropped={self.dropped}, full={self.full})"

    @property
    def delivered(self) -> int:
        """Subscribers that took it."""
        return self.matched - self.dropped

    @property
    def refused(self) -> bool:
        """It matched subscribers and every one of them dropped it (``drop-new``)."""
        return self.matched > 0 and self.dropped == self.matched

    def note(self, outcome: int, backlog: Backlog) -> None:
        """Record a subscriber's outcome other than TAKEN."""
        if outcome == DROPPED:
            self.dropped += 1
        elif outcome == HELD:
            if self.full is None:
                self.full = [backlog]
            elif backlog not in self.full:
                self.full.append(backlog)

    def merge(self, other: "PublishResult") -> None:
        self.matched += other.matched
        self.dropped += other.dropped
        self.refusal = self.refusal or other.refusal
        for backlog in other.full or ():
            self.note(HELD, backlog)


# Publishes that matched nothing share this one (never changed).
NOTHING_MATCHED = PublishResult()
# Publishes every subscriber took share one per count (never changed): none is made for
# the common case.
_ALL_TAKEN = tuple(PublishResult(count) for count in range(256))


def all_taken(matched: int) -> PublishResult:
    """The result of a publish that ``matched`` subscribers all took (do not change it)."""
    return _ALL_TAKEN[matched] if matched < 256 else PublishResult(matched)


class DropCounter:
    """A backlog's drops per reason, added to the broker-wide ``totals`` too; the first
    and every 1000th are logged through ``describe`` (one line naming the backlog)."""

    __slots__ = ("counts", "totals")

    def __init__(self, totals: Counter[str] | None) -> None:
        self.counts: Counter[str] = Counter()
        self.totals = totals

    def add(self, reason: str) -> bool:
        """Count one; True when this one should be logged."""
        self.counts[reason] += 1
        if self.totals is not None:
            self.totals[reason] += 1
        total = self.counts.total()
        return total == 1 or total % LOG_EVERY == 0

    def summary(self) -> str:
        return ", ".join(f"{reason} {count}" for reason, count in sorted(self.counts.items()))


async def wait_for_room(backlogs: Iterable[Backlog], max_block_time: float) -> list[Backlog]:
    """Wait until every backlog has room, at most ``max_block_time`` seconds; return
    those still full then (told to ``give_up_blocking``)."""
    waiting = [b for b in backlogs if not b.has_room()]
    with trio.move_on_after(max_block_time):
        while waiting:
            await waiting[-1].room().wait()
            waiting = [b for b in waiting if not b.has_room()]
    for backlog in waiting:
        backlog.give_up_blocking()
    return waiting


class Holdback:
    """A publishing connection held back under "block": the full backlogs its messages
    went to and the acknowledgements withheld meanwhile, in order (whatever each
    adapter needs to send them later). Made when a connection is first held back."""

    __slots__ = ("acks", "waiting")

    def __init__(self) -> None:
        self.waiting: list[Backlog] = []
        self.acks: list[object] = []

    def add(self, full: Iterable[Backlog]) -> None:
        for backlog in full:
            if backlog not in self.waiting:
                self.waiting.append(backlog)

    async def wait(
        self, max_block_time: float, name: str, logger: logging.Logger
    ) -> list[object]:
        """Wait for room (at most ``max_block_time``), log backlogs still full, and return
        the withheld acknowledgements (emptied)."""
        still_full = await wait_for_room(self.waiting, max_block_time)
        if still_full:
            logger.warning("client %s: held back %gs by full queues (%s): new messages for "
                           "them are dropped until they have room", name, max_block_time,
                           ", ".join(map(repr, still_full)))
        self.waiting = []
        acks, self.acks = self.acks, []
        return acks

"""What the parts of a named queue share (``queues``): ``QueueState`` declares the state
``queues.Queue`` sets up and the methods one part calls on another, so that the bounds,
expiry and acknowledgement halves are typed against it. Annotations and stubs only: the
values are the ``Queue``'s own, and every stub is defined by ``Queue`` or one of its halves,
which come before this class in its method order."""

from collections import deque
from collections.abc import Callable
from typing import Protocol, Self, TypeVar

import trio

from .message import Message
from .overflow import DropCounter
from .queue_entries import QueueEntry
from .timers import TimerHandle, Timers

Q_contra = TypeVar("Q_contra", contravariant=True)


class EntryStore(Protocol[Q_contra]):
    """The part of ``queues.QueueStore`` that a queue of type ``Q_contra`` calls itself."""

    def enqueued(self, queue: Q_contra, entry: QueueEntry) -> None: ...

    def delivered(self, queue: Q_contra, entry: QueueEntry) -> None: ...

    def removed(self, queue: Q_contra, entry: QueueEntry) -> None: ...


class Prefetch(Protocol):
    """What a queue does with the ``queues.SharedPrefetch`` a delivery counts toward."""

    unacked: int

    def dispatch(self) -> None: ...


class QueueState:
    """The state of ``queues.Queue`` that its halves use (see ``Queue.__init__``). The
    hooks take the queue itself: a method that passes ``self`` to one says ``self: Self``."""

    # No __slots__ (as the halves have): the state is in the Queue's __dict__.
    name: str
    clock: Callable[[], float]
    max_length: int
    max_bytes: int
    bytes: int
    overflow: str
    store: EntryStore[Self] | None
    timers: Timers | None
    limit_length: int | None
    limit_bytes: int | None
    limit_overflow: str
    dead_letter_exchange: str | None
    dead_letterer: Callable[[Self, QueueEntry, str], None] | None
    deleted: bool
    ready: deque[QueueEntry]
    drops: DropCounter
    acknowledged: int
    _room: trio.Event | None
    _gave_up: bool
    # tag -> (entry, holder, the holder's shared prefetch or None)
    _unacked: dict[int, tuple[QueueEntry, object, Prefetch | None]]
    _unacked_bytes: int
    _expiry_timer: TimerHandle | None

    # -- defined by Queue -----------------------------------------------------------------

    def put(self, message: Message, *, persistent: bool = False) -> bool:
        raise NotImplementedError

    def dispatch(self) -> None:
        raise NotImplementedError

    @property
    def ready_bytes(self) -> int:
        raise NotImplementedError

    def _untrack(self, tag: int) -> QueueEntry:
        raise NotImplementedError

    # -- defined by QueueBounds -----------------------------------------------------------

    def _discard(self, entry: QueueEntry, reason: str | None = None) -> None:
        raise NotImplementedError

    def _signal_room(self) -> None:
        raise NotImplementedError

    # -- defined by QueueAcks -------------------------------------------------------------

    def _settled(self, entry: QueueEntry) -> None:
        raise NotImplementedError

"""What the core tells about its durable state, and what it asks about durability: the
interfaces the core owns and ``persistence`` implements over the log store.

The defaults here keep nothing and count everything as durable at once: the broker with
``persistence = false``, and the core on its own (tests).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .delayed import Pending
    from .exchanges import Binding, Exchange
    from .message import Message
    from .sessions import Session, SubscriptionOptions

__all__ = ["AlwaysDurable", "Durability", "Journal", "StoreFull", "Storing"]


class StoreFull(Exception):
    """A record of what a client asked for could not be written (a full disk, or another
    store error). The state is kept in memory all the same; the client is refused."""


class Journal:
    """Where the broker core reports durable state changes. This one keeps nothing."""

    failures = 0  # writes that failed (the store's journal counts them; ``Storing`` looks)

    def atomic(self) -> AbstractContextManager[None]:
        """The records written inside survive a crash all together or not at all."""
        return nullcontext()

    def session_opened(self, session: Session) -> None: ...

    def session_closed(self, session: Session) -> None: ...

    def session_discarded(self, session: Session) -> None: ...

    def subscription_set(
        self, session: Session, topic_filter: str, options: SubscriptionOptions
    ) -> None: ...

    def subscription_removed(self, session: Session, topic_filter: str) -> None: ...

    def retained_set(self, message: Message) -> None: ...

    def retained_cleared(self, topic: str) -> None: ...

    def exchange_declared(self, exchange: Exchange) -> None: ...

    def exchange_deleted(self, exchange: Exchange) -> None: ...

    def binding_added(self, binding: Binding) -> None: ...

    def binding_removed(self, binding: Binding) -> None: ...

    def delayed_added(self, pending: Pending) -> None: ...

    def delayed_removed(self, pending: Pending) -> None: ...


class Storing:
    """The writes of one client request (``Broker.storing``): ``StoreFull`` at the end if
    one of them failed; with ``atomic``, they survive a crash all together or not at all."""

    __slots__ = ("_failures", "_group", "_journal")

    def __init__(self, journal: Journal, atomic: bool = False) -> None:
        self._journal = journal
        self._group = journal.atomic() if atomic else None
        self._failures = 0

    def __enter__(self) -> None:
        self._failures = self._journal.failures
        if self._group is not None:
            self._group.__enter__()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._group is not None:
            self._group.__exit__(kind, value, traceback)
        if kind is None and self._journal.failures != self._failures:
            raise StoreFull("a record could not be written")


class Durability(Protocol):
    """When what the journal recorded is on disk: connections acknowledge nothing before
    (``durability.Durability`` over the store)."""

    def mark(self) -> int:
        """A position in the record sequence; a change around a call means it wrote."""

    def pending(self) -> bool:
        """Whether some record is written but not yet known durable (and that matters)."""

    async def wait_durable(self, timeout: float) -> bool:
        """Wait until every record written so far is durable; False after ``timeout``."""


class AlwaysDurable:
    """Durability without a store: everything counts as durable at once."""

    store = None
    syncs = 0

    def mark(self) -> int:
        return 0

    def pending(self) -> bool:
        return False

    async def wait_durable(self, timeout: float) -> bool:
        return True

"""A named queue's bounds (``queues``): ``max_length`` and ``max_bytes`` with their
overflow policy, AMQP's ``x-max-length`` and ``x-max-length-bytes`` with ``x-overflow``,
the publisher's outcome (TAKEN, HELD, DROPPED) and room for a blocked one, and what
happens to a message that leaves unconsumed (dropped or dead-lettered)."""

import logging
from typing import Self

from .message import Message
from .overflow import DROPPED, HELD, QUEUE_FULL, TAKEN
from .queue_entries import BLOCK, DROP_HEAD, EXPIRED, MAXLEN, REJECT_PUBLISH_DLX, QueueEntry
from .queue_state import QueueState

log = logging.getLogger("polybroker.queues")


class QueueBounds(QueueState):
    """The bounds half of ``queues.Queue``, whose state it uses."""

    __slots__ = ()

    def offer(self, message: Message, qos: int, *, persistent: bool = False) -> int:
        """``put`` with the outcome a publisher needs: TAKEN, HELD (taken, and the queue is
        full now: a blocking publisher waits for ``room``) or DROPPED. Under ``BLOCK`` a
        QoS 0 message over the bound is dropped (nothing was promised for it)."""
        if self.overflow == BLOCK and not qos and self._full(len(message.payload)):
            self._overflowed()
            return DROPPED
        if not self.put(message, persistent=persistent):
            return DROPPED
        if self.overflow == BLOCK and not self.has_room():
            return HELD
        return TAKEN

    @property
    def dropped(self) -> int:
        return self.drops.counts.total()

    def has_room(self) -> bool:
        """Whether one more message fits (or the queue is gone)."""
        return self.deleted or not self._full(1)

    def give_up_blocking(self) -> None:
        """Publishers waited ``max_block_time`` (the caller logs it): drop new messages
        until there is room."""
        self._gave_up = True

    def _signal_room(self) -> None:
        if (self._room is not None or self._gave_up) and self.has_room():
            if self._room is not None:
                self._room.set()
                self._room = None
            self._gave_up = False

    def _make_room(self, entry: QueueEntry, size: int) -> bool | None:
        """Apply x-max-length / x-max-length-bytes to a new message of ``size`` bytes:
        None if it may enter, False if it is refused (reject-publish), True if it was
        accepted but is itself the head that drop-head pushes out at once."""
        length, nbytes = self.limit_length, self.limit_bytes
        ready = self.ready

        def over() -> bool:
            return (length is not None and len(ready) + 1 > length) or (
                nbytes is not None and self.ready_bytes + size > nbytes
            )

        if not over():
            return None
        if self.limit_overflow != DROP_HEAD:
            self.drops.add(self.limit_overflow)
            if self.limit_overflow == REJECT_PUBLISH_DLX:
                self._dead_letter(entry, MAXLEN)
            return False
        while ready and over():
            self.drops.add("x-max-length")  # drop-head: the oldest ready one goes
            self._discard(ready.popleft(), MAXLEN)
        if over():  # room for no message at all: the new one is the head that goes
            self._dead_letter(entry, MAXLEN)
            return True
        return None

    def _full(self, size: int) -> bool:
        """Would one more message of ``size`` payload bytes break a bound?"""
        if len(self.ready) + len(self._unacked) >= self.max_length:
            return True
        return bool(self.max_bytes) and self.bytes + size > self.max_bytes

    def _overflowed(self, reason: str = QUEUE_FULL) -> None:
        if self.drops.add(reason):
            log.warning(
                "queue %s: full (%d messages or %d bytes), message dropped (%s); dropped "
                "so far: %s", self.name, self.max_length, self.max_bytes, reason,
                self.drops.summary(),
            )

    def _discard(self, entry: QueueEntry, reason: str | None = None) -> None:
        """``entry`` leaves the queue unconsumed: dead-lettered for ``reason`` when the
        queue has a dead-letter exchange, else dropped."""
        self._settled(entry)
        if reason == EXPIRED:
            self.drops.add(EXPIRED)  # counted like a session's expired message
        if reason is not None:
            self._dead_letter(entry, reason)

    def _dead_letter(self: Self, entry: QueueEntry, reason: str) -> None:
        if self.dead_letter_exchange is not None and self.dead_letterer is not None:
            self.dead_letterer(self, entry, reason)

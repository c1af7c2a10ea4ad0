"""Expiry of a named queue's messages (``queues``): per-message expiry and the queue's
``message_ttl``, checked at the head, and a timer for the head when the queue has one."""

from .queue_entries import EXPIRED, QueueEntry
from .queue_state import QueueState


class QueueExpiry(QueueState):
    """The expiry half of ``queues.Queue``, whose state it uses."""

    __slots__ = ()

    def _expired(self, entry: QueueEntry) -> bool:
        expiry = entry.expires_at
        return expiry is not None and expiry <= self.clock()

    def _arm_expiry(self, deadline: float) -> None:
        timer = self._expiry_timer
        if self.timers is None or self.deleted:
            return
        if timer is not None and not timer.cancelled and timer.deadline <= deadline:
            return
        if timer is not None:
            timer.cancel()
        self._expiry_timer = self.timers.call_at(deadline, self._expire_head)

    def _expire_head(self) -> None:
        """Drop (or dead-letter) the expired messages at the head; wait for the next."""
        self._expiry_timer = None
        if self.deleted:
            return
        ready = self.ready
        while ready and self._expired(ready[0]):
            self._discard(ready.popleft(), EXPIRED)
        if ready and ready[0].expires_at is not None:
            self._arm_expiry(ready[0].expires_at)

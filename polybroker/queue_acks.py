"""Acknowledgements of a named queue's deliveries (``queues``, which hands out the delivery
tags and counts what each consumer and shared prefetch holds): settling (ack), taking back
(nack, reject, release) and requeueing in arrival order, and purging."""

import heapq
from collections.abc import Iterable
from typing import Self

from .queue_entries import REJECTED, QueueEntry, _by_seq
from .queue_state import Prefetch, QueueState


class QueueAcks(QueueState):
    """The acknowledgement half of ``queues.Queue``, whose state it uses."""

    __slots__ = ()

    # -- acknowledgements -----------------------------------------------------------------

    def ack(self, tag: int) -> bool:
        """The message under ``tag`` was consumed; False if the tag is not pending."""
        return self.ack_many((tag,)) == 1

    def ack_many(self, tags: Iterable[int]) -> int:
        count = 0
        freed: set[Prefetch] = set()
        unacked = self._unacked
        for tag in tags:
            held = unacked.get(tag)
            if held is None:
                continue
            if held[2] is not None:
                freed.add(held[2])
            self._settled(self._untrack(tag))
            count += 1
        if count:
            self.acknowledged += count
            self.dispatch()
            for shared in freed:  # the room may be for a consumer of another queue
                shared.dispatch()
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
        freed: set[Prefetch] = set()
        for tag in tags:
            held = self._unacked.get(tag)
            if held is None:
                continue
            entry = self._untrack(tag)
            if held[2] is not None:
                freed.add(held[2])
            if rejected:
                entry.rejected_by = held[1]  # so that another consumer gets it next
            entries.append(entry)
        if requeue:
            self._requeue(entries)
        else:
            for entry in entries:
                self._discard(entry, REJECTED if rejected else None)
        if entries:
            self.dispatch()
            for shared in freed:
                shared.dispatch()
        return len(entries)

    def purge(self) -> int:
        """Drop every ready message (not dead-lettered); return how many."""
        count = len(self.ready)
        while self.ready:
            self._discard(self.ready.popleft())
        return count

    # -- bookkeeping ----------------------------------------------------------------------

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

    def _settled(self: Self, entry: QueueEntry) -> None:
        self.bytes -= len(entry.message.payload)
        if entry.persistent and self.store is not None:
            self.store.removed(self, entry)
        if self._room is not None or self._gave_up:
            self._signal_room()

"""Deadlines for the broker core (session expiry, delayed wills), run by one trio task.

The core stays synchronous: it schedules callbacks here, and ``Timers.run`` sleeps
until the earliest deadline (or until an earlier one is added) and calls what is due.
"""

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio


@dataclass(order=True, slots=True)
class TimerHandle:
    deadline: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self.clock = clock
        self._heap: list[TimerHandle] = []
        self._seq = itertools.count()
        self._wakeup: trio.Event | None = None

    def __len__(self) -> int:
        return sum(1 for handle in self._heap if not handle.cancelled)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self.clock() + delay, callback)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(deadline, next(self._seq), callback)
        earliest = self._heap[0].deadline if self._heap else math.inf
        heapq.heappush(self._heap, handle)
        if deadline < earliest and self._wakeup is not None:
            self._wakeup.set()
        return handle

    def run_due(self) -> float:
        """Call every callback whose deadline has passed; return the next deadline."""
        now = self.clock()
        heap = self._heap
        while heap and (heap[0].cancelled or heap[0].deadline <= now):
            handle = heapq.heappop(heap)
            if not handle.cancelled:
                handle.callback()
        return heap[0].deadline if heap else math.inf

    async def run(self) -> None:
        """Run deadlines forever (until cancelled)."""
        while True:
            self._wakeup = trio.Event()
            with trio.move_on_at(self.run_due()):
                await self._wakeup.wait()

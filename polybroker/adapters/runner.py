"""One connection's I/O, the same for every protocol that fits the shape (STOMP, AMQP).

A ``ConnectionRunner`` drives one stream for one protocol adapter (its ``Handler``):

- a reader hands whatever one receive returns to ``Handler.receive``, which handles
  every frame in it synchronously (awaiting only a login check); the next read waits
  for ``Handler.read_deadline`` (connect timeout, then heart-beats / keep-alive);
  silence until then is ``Handler.read_timed_out``;
- after a read, the reader pauses while the client is held back under
  ``queue_overflow = block`` (``hold_back``), while more than ``max_outgoing_bytes``
  of replies wait to be written, and for the publish-rate throttle, if any;
- a writer sends what the handler has buffered (``Handler.data_to_send``) in one write
  within ``send_timeout``, and a heart-beat when it has sent nothing for
  ``Handler.heartbeat_interval``. The durability gate: output buffered before
  ``hold_durable`` waits until the store says its records are on disk;
- when the reader is done, ``Handler.end`` releases what the connection held, the
  writer flushes, and a lingering close (``io.linger``) lets the client read our last
  words when ``linger`` is set.
"""

import logging
import math
from collections.abc import Iterable
from typing import Protocol

import trio

from ..broker import Broker
from ..limits import PublishThrottle
from ..overflow import Backlog, Holdback
from .io import linger, receive_before


class Handler(Protocol):
    """What a protocol adapter gives the runner."""

    @property
    def name(self) -> str: ...

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered for the client, not yet taken by ``data_to_send``."""
        ...

    def data_to_send(self) -> bytes: ...

    async def receive(self, data: bytes) -> bool:
        """Handle one read; False ends the connection."""
        ...

    def read_deadline(self, deadline: float) -> float:
        """The deadline of the next read, after a read (``deadline``: the current one)."""
        ...

    def read_timed_out(self) -> None:
        """Nothing arrived before the read deadline (log why; the connection ends)."""
        ...

    def heartbeat_interval(self) -> float:
        """Seconds of write silence after which ``send_heartbeat`` is called; 0: never."""
        ...

    def send_heartbeat(self) -> None: ...

    def release(self, held: list) -> None:
        """Send the acknowledgements withheld while the client was held back."""
        ...

    def sent(self) -> None:
        """A write went out: deliveries that waited for room may go on."""
        ...

    def end(self) -> None:
        """The connection is over: release what it held."""
        ...


class ConnectionRunner:
    """Runs one connection: ``await runner.run()``."""

    def __init__(self, stream: trio.abc.Stream, broker: Broker, handler: Handler,
                 log: logging.Logger, throttle: PublishThrottle | None = None) -> None:
        self.stream = stream
        self.broker = broker
        self.limits = broker.limits
        self.handler = handler
        self.log = log
        self.throttle = throttle  # max_publish_rate, for protocols that have it
        self.linger = False  # our last words (an error, a close) must reach the client
        self.finished = False  # the reader is done: the writer flushes and ends
        # queue_overflow "block": the full backlogs this read's publishes went to, and the
        # acknowledgements withheld until they have room (None: not held back).
        self.holdback: Holdback | None = None
        self._hold = False  # buffered output vouches for records not yet durable
        self._wakeup = trio.Event()
        self._drained = trio.Event()  # set by the writer after each write
        self._read_scope = trio.CancelScope()

    async def run(self) -> None:
        handler = self.handler
        self.info = self.broker.connection_opened(handler)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                try:
                    with self._read_scope:
                        await self._read_loop()
                finally:
                    handler.end()
                    self.finished = True
                    self._wakeup.set()
            if self.linger:
                await linger(self.stream, self.broker.linger_deadline)
        finally:
            self.broker.connection_closed(handler)
            await trio.aclose_forcefully(self.stream)

    # -- what handlers call ---------------------------------------------------------------

    def wake(self) -> None:
        """Output was buffered: let the writer send it."""
        self._wakeup.set()

    def hold_durable(self) -> None:
        """What is buffered now vouches for records: send it once they are on disk."""
        self._hold = True

    def hold_back(self, full: Iterable[Backlog]) -> None:
        """Stop reading from the client until ``full`` have room (``max_block_time`` at
        most); acknowledgements go into ``withhold`` meanwhile."""
        if self.holdback is None:
            self.holdback = Holdback()
        self.holdback.add(full)

    def withhold(self, ack: object) -> bool:
        """Keep ``ack`` for ``Handler.release`` if the client is held back."""
        if self.holdback is None:
            return False
        self.holdback.acks.append(ack)
        return True

    def stop_reading(self) -> None:
        self._read_scope.cancel()

    def stop_reading_by(self, deadline: float) -> None:
        self._read_scope.deadline = min(self._read_scope.deadline, deadline)

    # -- the loops ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        handler = self.handler
        deadline = trio.current_time() + self.limits.connect_timeout
        while True:
            data = await receive_before(self.stream, deadline, handler.name, self.log)
            if data is None:
                self.info.closed_by_client()
                return
            self.info.bytes_in += len(data)
            try:
                if not data:
                    handler.read_timed_out()
                    return
                if not await handler.receive(data):
                    return
            finally:
                if handler.pending_bytes:
                    self._wakeup.set()
            if self.holdback is not None:
                await self._wait_for_room()  # before the next deadline: not idle time
            # Replies (receipts, returns, confirms) are not bounded by the deliveries'
            # credit: while more than max_outgoing_bytes wait, read no more.
            while handler.pending_bytes > self.limits.max_outgoing_bytes:
                self._drained = trio.Event()
                await self._drained.wait()
            deadline = handler.read_deadline(deadline)
            if self.throttle is not None:
                deadline += await self.throttle.settle()  # max_publish_rate

    async def _wait_for_room(self) -> None:
        assert self.holdback is not None
        held = await self.holdback.wait(self.limits.max_block_time, self.handler.name,
                                        self.log)
        self.holdback = None
        self.handler.release(held)
        self._wakeup.set()

    async def _write_loop(self) -> None:
        handler = self.handler
        log = self.log
        last_sent = trio.current_time()
        try:
            while True:
                if handler.pending_bytes:
                    data = handler.data_to_send()
                    hold, self._hold = self._hold, False
                    if hold and not await self.broker.durability.wait_durable(
                        self.limits.send_timeout
                    ):
                        log.error("client %s: closing: storage did not confirm in time",
                                  handler.name)
                        self.linger = False
                        break
                    with trio.move_on_after(self.limits.send_timeout) as timer:
                        await self.stream.send_all(data)
                    if timer.cancelled_caught:
                        log.warning("client %s: closing: send timed out", handler.name)
                        self.linger = False
                        break
                    self.info.bytes_out += len(data)
                    last_sent = trio.current_time()
                    self._drained.set()
                    handler.sent()
                elif self.finished:
                    return
                else:
                    interval = handler.heartbeat_interval()
                    beat_at = last_sent + interval if interval else math.inf
                    with trio.move_on_at(beat_at) as idle:
                        await self._wakeup.wait()
                    if idle.cancelled_caught:
                        handler.send_heartbeat()
                    else:
                        self._wakeup = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.linger = False
        self._read_scope.cancel()

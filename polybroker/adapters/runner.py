"""One connection's I/O, the same for every protocol (MQTT, STOMP, AMQP).

A ``ConnectionRunner`` drives one stream for one protocol adapter (its ``Handler``).
Thousands of connections wait idle at once, so an idle one costs one task and little
else:

- ``run`` reads inline (no task, no nursery of its own; a plain TCP socket is read
  directly, ``io.receive_socket``) and hands whatever one receive returns to
  ``Handler.receive``, which handles every frame in it synchronously (awaiting only a
  login check). Only the wait for bytes is bounded: by ``Handler.read_deadline``
  (connect timeout, then keep-alive / heart-beats), and by the next heart-beat when
  ``Handler.heartbeat_interval`` asks for them: timers, not tasks;
- after a read, the reader pauses while the client is held back under
  ``queue_overflow = block`` (``hold_back``), for the publish-rate throttle, and (for
  protocols whose replies are not bounded by credit) while more than
  ``max_outgoing_bytes`` of replies wait;
- what the handler buffers (``wake``) is written by one of two strategies. Over a plain
  TCP socket the connection joins this run's outbox: once the tasks running now have
  run, it writes everything buffered for it meanwhile in one system call, directly
  when the socket takes it all. A writer task, started only when there is something
  to send and gone when the buffer is empty, sends the rest, and everything over
  other streams (TLS, WebSocket), within ``send_timeout``. The durability gate:
  output buffered after ``hold_durable`` leaves only once the store says its records
  are on disk;
- when the reader is done, ``Handler.end`` releases what the connection held, the
  buffer is flushed, and a lingering close (``io.linger``) lets the client read our
  last words when ``linger`` is set;
- why the connection ended is one word of ``END_REASONS`` (``end_reason``, given by
  ``ending``: the first reason counts), and one log line says it, the same for every
  protocol: ``mqtt client c1 (127.0.0.1:5555) disconnected: keep-alive timeout``.
"""

import logging
import math
from collections.abc import Iterable
from typing import Protocol, cast

import trio

from ..broker import Broker
from ..limits import PublishThrottle
from ..overflow import Backlog, Holdback
from ..stats import ConnectionInfo
from .io import RECEIVE_SIZE, linger, plain_socket_fd, receive_socket, send_socket

# Why a connection ended: the word kept on the runner (``end_reason``, for counting)
# and the words of the log line.
END_REASONS = {
    "client_disconnect": "client disconnect",  # DISCONNECT, connection.close
    "peer_closed": "peer closed",  # end of stream or reset, without a goodbye
    "protocol_error": "protocol error",
    "connect_refused": "connect refused",  # a CONNECT the broker cannot accept
    "login_refused": "login refused",
    "connect_timeout": "connect timeout",
    "keepalive_timeout": "keep-alive timeout",
    "heartbeat_timeout": "heart-beat timeout",
    "send_timeout": "send timeout",
    "slow_reader": "slow reader",  # more buffered for the client than it may have
    "storage_full": "storage full",
    "storage_timeout": "storage timeout",  # the disk did not confirm in send_timeout
    "taken_over": "taken over",  # a new connection took the session
    "shutdown": "shutdown",
    "kicked": "kicked",  # an operator closed it
    "internal_error": "internal error",
}
# Reasons an operator should look at; the others are logged at INFO.
_WARNING_REASONS = frozenset((
    "protocol_error", "connect_timeout", "keepalive_timeout", "heartbeat_timeout",
    "send_timeout", "slow_reader", "storage_full", "storage_timeout", "internal_error",
))

# Seconds the closing handshake of the transport (TLS close_notify, WebSocket close)
# may take before the connection is dropped regardless.
CLOSE_TIMEOUT = 2.0


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

    def release(self, held: list[object]) -> None:
        """Send the acknowledgements withheld while the client was held back."""
        ...

    def sent(self) -> None:
        """A write went out: deliveries that waited for room may go on."""
        ...

    def end(self) -> None:
        """The connection is over: release what it held."""
        ...

    def close_for_shutdown(self) -> None:
        """The broker is stopping: say so to the client and stop reading."""
        ...

    def close_by_administrator(self) -> None:
        """An operator closes the connection: say so (where the protocol can), stop reading."""
        ...


class _Outbox:
    """Connections with bytes to send over plain sockets, sent by one task per run once
    the tasks running when they were added have run: all a connection is given by the
    readers of one scheduling round goes out in one write."""

    __slots__ = ("_parked", "_pending", "_task")

    def __init__(self) -> None:
        self._pending: list[ConnectionRunner] = []
        self._task: trio.lowlevel.Task | None = None
        self._parked = False

    def add(self, runner: "ConnectionRunner") -> None:
        self._pending.append(runner)
        if self._parked and self._task is not None:
            self._parked = False
            trio.lowlevel.reschedule(self._task)

    async def run(self) -> None:
        self._task = trio.lowlevel.current_task()
        while True:
            if not self._pending:
                self._parked = True
                await trio.lowlevel.wait_task_rescheduled(_abort)
            else:
                # Once per round even when busy: readers that run after it this round
                # add to the next batch.
                await trio.lowlevel.cancel_shielded_checkpoint()
            batch, self._pending = self._pending, []
            for runner in batch:
                try:
                    runner._send_batched()
                except Exception:
                    runner.log.exception("client %s: internal error while sending",
                                         runner.handler.name)
                    runner.ending("internal_error", "while sending")
                    runner._write_failed = True
                    runner.stop_reading()


def _abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


_OUTBOX: trio.lowlevel.RunVar[_Outbox] = trio.lowlevel.RunVar("polybroker.outbox")


def _outbox() -> _Outbox:
    """This run's outbox, and its task, made on first use."""
    try:
        return _OUTBOX.get()
    except LookupError:
        outbox = _Outbox()
        _OUTBOX.set(outbox)
        trio.lowlevel.spawn_system_task(outbox.run, name="polybroker outbox")
        return outbox


class ConnectionRunner:
    """Runs one connection: ``await runner.run()``."""

    # Thousands of these live at once, most of them idle: no per-instance dict.
    __slots__ = (
        "_beating", "_flushed", "_hold", "_last_sent", "_read_scope", "_room", "_socket",
        "_stop_by", "_stopped", "_write_failed", "_writing", "bound_replies", "broker",
        "end_detail", "end_reason", "finished", "handler", "heartbeats", "holdback", "info",
        "limits", "linger", "log", "protocol", "queued", "stream", "throttle",
    )

    info: ConnectionInfo  # the broker's record of the connection, made by run()

    def __init__(self, stream: trio.abc.Stream, broker: Broker, handler: Handler,
                 log: logging.Logger, protocol: str, throttle: PublishThrottle | None = None,
                 bound_replies: bool = True, heartbeats: bool = True) -> None:
        self.protocol = protocol  # "mqtt", "stomp", "amqp": the first word of the end line
        self.stream = stream
        self.broker = broker
        self.limits = broker.limits
        self.handler = handler
        self.log = log
        self.throttle = throttle  # max_publish_rate, for protocols that have it
        # Replies (receipts, returns, confirms) are not bounded by the deliveries' credit
        # in STOMP and AMQP: while more than max_outgoing_bytes wait, read no more.
        self.bound_replies = bound_replies
        # Whether the server sends heart-beats at all (Handler.heartbeat_interval); MQTT
        # does not, and its reads skip asking.
        self.heartbeats = heartbeats
        self.linger = False  # our last words (an error, a close) must reach the client
        self.finished = False  # the reader is done: what is buffered is flushed, then closed
        self.end_reason = ""  # a key of END_REASONS, once the connection is ending
        self.end_detail = ""  # what the reason's words leave out ("topic alias 0", say)
        # queue_overflow "block": the full backlogs this read's publishes went to, and the
        # acknowledgements withheld until they have room (None: not held back).
        self.holdback: Holdback | None = None
        # Plain TCP: the socket is read and written directly (io.py), until run() closes it.
        self._socket = plain_socket_fd(stream)
        self._hold = False  # buffered output vouches for records not yet durable
        self._writing = False  # the writer task runs (only while there is something to send)
        # In the outbox's batch: what is buffered now goes out with it (``wake`` need
        # not be called; a caller that buffers often may skip the call).
        self.queued = False
        self._beating = False  # heart-beats are due: writes note when they went out
        self._write_failed = False
        self._last_sent = 0.0  # when a write last went out, for heart-beats
        # Bounds the wait for bytes; its deadline is the read deadline (or the next
        # heart-beat) while a read waits; stop_reading cancels it. Made by run().
        self._read_scope: trio.CancelScope | None = None
        self._stopped = False  # stop_reading was called, or the reader is done
        self._stop_by = math.inf  # stop_reading_by
        self._flushed: trio.Event | None = None  # set when the writer ends, once finished
        self._room: trio.Event | None = None  # set after a write, while the reader waits

    async def run(self) -> None:
        # The read loop is written out here rather than in a method of its own: a frame
        # less for as long as the connection lives.
        handler = self.handler
        broker = self.broker
        stream = self.stream
        sock = self._socket
        info = self.info = broker.connection_opened(handler)
        now = self._last_sent = trio.current_time()
        deadline = now + self.limits.connect_timeout
        try:
            while not self._stopped:
                # One pass per scope: a heart-beat due ends one (a cancelled scope
                # cannot be used again), the next pass starts after the heart-beat.
                scope = self._read_scope = trio.CancelScope()
                with scope:
                    interval = 0.0
                    while True:
                        wait_until = deadline if deadline < self._stop_by else self._stop_by
                        if self.heartbeats:
                            interval = handler.heartbeat_interval()
                            if interval:
                                if not self._beating:  # the first: counted from now
                                    self._beating = True
                                    self._last_sent = trio.current_time()
                                wait_until = min(wait_until, self._last_sent + interval)
                        scope.deadline = wait_until
                        data: bytes | None
                        try:
                            if sock is not None:
                                data = await receive_socket(sock)
                            else:
                                # Every stream of ours returns bytes (never a bytearray).
                                data = cast(bytes, await stream.receive_some(RECEIVE_SIZE))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            self.ending("peer_closed", "connection lost")
                            data = None
                        if not data:
                            self._peer_closed()
                            break
                        info.bytes_in += len(data)
                        try:
                            carry_on = await handler.receive(data)
                        finally:
                            if handler.pending_bytes:
                                self.wake()
                        if not carry_on:
                            self._stopped = True
                            break
                        if (self.holdback is not None or self.throttle is not None
                                or (self.bound_replies and handler.pending_bytes
                                    > self.limits.max_outgoing_bytes)):
                            deadline = await self._after_read(scope, deadline)
                        else:  # the common case, without a coroutine of its own
                            deadline = handler.read_deadline(deadline)
                if scope.cancelled_caught and not self._stopped:
                    now = trio.current_time()
                    if now >= self._stop_by:
                        self._stopped = True
                    elif now >= deadline:
                        self._stopped = True
                        handler.read_timed_out()
                        self.ending("connect_timeout")  # unless the handler said otherwise
                    elif interval and now >= self._last_sent + interval:
                        self._last_sent = now  # the next one counts from this one
                        handler.send_heartbeat()
                        self.wake()
        except BaseException as exc:
            self.ending("shutdown" if isinstance(exc, trio.Cancelled) else "internal_error")
            raise
        finally:
            try:
                self._stopped = True
                handler.end()
                self.finished = True
                self._log_end()  # the reason is known: the flush and linger that follow
                # end what has ended already (our last words reach the client, or not)
                if handler.pending_bytes and not self._writing and not self._write_failed:
                    self._start_writer(b"")  # what is still buffered (a DISCONNECT, say)
                if self._writing:
                    self._flushed = trio.Event()
                    await self._flushed.wait()  # bounded: the writer gives up in send_timeout
                if self.linger and not self._write_failed:
                    await linger(stream, broker.linger_deadline)
            finally:
                broker.connection_closed(handler)
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await stream.aclose()  # closed even when cancelled, as trio promises

    async def _after_read(self, scope: trio.CancelScope, deadline: float) -> float:
        """The waits between two reads (not idle time: they extend ``deadline``), then
        the next read's deadline."""
        waited = 0.0
        if self.holdback is not None or (
                self.bound_replies
                and self.handler.pending_bytes > self.limits.max_outgoing_bytes):
            scope.deadline = math.inf
            start = trio.current_time()
            if self.holdback is not None:
                await self._wait_for_room()
            if self.bound_replies:
                while self.handler.pending_bytes > self.limits.max_outgoing_bytes:
                    self._room = trio.Event()
                    await self._room.wait()
            waited = trio.current_time() - start
        deadline = self.handler.read_deadline(deadline + waited)
        if self.throttle is not None:
            scope.deadline = math.inf
            deadline += await self.throttle.settle()  # max_publish_rate
        return deadline

    def _peer_closed(self) -> None:
        """The client closed or broke the connection: nobody is left to linger for."""
        self.ending("peer_closed")
        self._stopped = True
        self.linger = False

    def _log_end(self) -> None:
        """The one line that says why the connection ended; the reason goes to its info."""
        reason = self.end_reason = self.end_reason or "protocol_error"
        self.info.close_reason = reason  # what polybroker_connections_closed_total counts
        words = END_REASONS[reason]
        if self.end_detail:
            words = f"{words}: {self.end_detail}"
        level = logging.WARNING if reason in _WARNING_REASONS else logging.INFO
        self.log.log(level, "%s client %s disconnected: %s", self.protocol, self.handler.name,
                     words)

    async def _wait_for_room(self) -> None:
        assert self.holdback is not None
        held = await self.holdback.wait(self.limits.max_block_time, self.handler.name,
                                        self.log)
        self.holdback = None
        self.handler.release(held)
        if self.handler.pending_bytes:
            self.wake()

    # -- what handlers call ---------------------------------------------------------------

    def ending(self, reason: str, detail: str = "") -> None:
        """Why the connection ends (a key of ``END_REASONS``); the first reason given
        counts, later ones are consequences of it."""
        if self.end_reason:
            return
        assert reason in END_REASONS, reason
        self.end_reason = reason
        self.end_detail = "" if detail == END_REASONS[reason] else detail

    def wake(self) -> None:
        """Output was buffered: have it sent (see the module's description)."""
        if self._writing or self.queued or self._write_failed or self.finished:
            return  # the writer will see the new bytes (or nothing is sent any more)
        if self._socket is None:
            self._start_writer(b"")
        else:
            self.queued = True
            _outbox().add(self)

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

    def lift_deadline(self) -> None:
        """The handler is about to wait (a login check): the read deadline does not bound
        it (the next read gets its deadline again)."""
        if self._read_scope is not None:
            self._read_scope.deadline = math.inf

    def stop_reading(self) -> None:
        """End the read loop (the connection then closes after sending what is buffered)."""
        self._stopped = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    def stop_reading_by(self, deadline: float) -> None:
        self._stop_by = min(self._stop_by, deadline)
        scope = self._read_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, deadline)

    # -- writing --------------------------------------------------------------------------

    def _send_batched(self) -> None:
        """The outbox's turn: send what is buffered directly, or have the writer send it
        (the part the socket does not take, or all of it when it must wait for the disk
        first)."""
        self.queued = False
        handler = self.handler
        if self._writing or self._write_failed or self.finished or not handler.pending_bytes:
            return
        if self._hold and self.broker.durability.pending():
            self._start_writer(b"")
            return
        self._hold = False
        data = handler.data_to_send()
        assert self._socket is not None
        try:
            sent = send_socket(self._socket, data)
            self.info.bytes_out += sent
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ending("peer_closed", "connection lost")
            self._write_failed = True
            self.linger = False
            self.stop_reading()
            return
        if sent < len(data):
            self._start_writer(data[sent:])
        else:
            self._wrote()

    def _wrote(self) -> None:
        if self._beating:
            self._last_sent = trio.current_time()
        if self._room is not None:
            self._room.set()
        self.handler.sent()

    def _start_writer(self, unsent: bytes) -> None:
        """Start the writer task; ``unsent``: bytes taken from the buffer to send first.

        It is a system task rather than a child of a nursery of the connection's own,
        which would cost every idle connection a cancel scope and its bookkeeping:
        ``run`` waits for it before closing the stream instead, and it catches whatever
        it raises."""
        self._writing = True
        trio.lowlevel.spawn_system_task(self._write_loop, unsent, name="connection writer")

    async def _write_loop(self, unsent: bytes) -> None:
        try:
            if await self._write_all(unsent):
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ending("peer_closed", "connection lost")
        except Exception:
            self.log.exception("client %s: internal error while sending", self.handler.name)
            self.ending("internal_error", "while sending")
        finally:
            self._writing = False
            if self._flushed is not None:
                self._flushed.set()
        self._write_failed = True
        self.linger = False
        self.stop_reading()

    async def _write_all(self, data: bytes) -> bool:
        """Send ``data``, then what is buffered, until nothing is (True), or give up
        (False, logged)."""
        handler = self.handler
        while True:
            if data:
                with trio.move_on_after(self.limits.send_timeout) as timer:
                    await self.stream.send_all(data)
                if timer.cancelled_caught:
                    self.ending("send_timeout")
                    return False
                self.info.bytes_out += len(data)
                self._wrote()
            if not handler.pending_bytes:
                return True  # and _writing is cleared in this same step: no gap
            hold, self._hold = self._hold, False
            data = handler.data_to_send()
            if hold and not await self.broker.durability.wait_durable(self.limits.send_timeout):
                self.ending("storage_timeout", "storage did not confirm in time")
                return False

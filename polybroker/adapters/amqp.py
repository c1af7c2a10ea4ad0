"""AMQP 0-9-1 adapter: one connection's events in, broker core calls out.

The protocol (handshake, channel states, connection.close, the output buffer) is the
sans-IO ``protocols.amqp.connection.AMQPConnection``; this adapter does the I/O and
acts on its events: the reader hands whatever one receive returns to it and handles
every event that comes out synchronously; the writer sends what it has buffered in one
write, and a heartbeat frame when it has sent nothing for half the negotiated interval.
Channels live in ``amqp_channel``, what connection.start and tune offer in
``amqp_negotiation``, message conversion in ``amqp_messages``.

What the adapter adds to the protocol's life cycle:

- The login of a start-ok is checked with the broker's security settings (PLAIN or
  AMQPLAIN; a refused login is connection.close 403 ACCESS_REFUSED,
  authentication_failure_close). The whole handshake must end within
  ``limits.connect_timeout``.
- Heartbeats: a heartbeat frame goes out when nothing else has for half the interval;
  a client that sends nothing for two intervals is dropped (without connection.close,
  as RabbitMQ does).
- A channel error (``amqp_channel``) closes just that channel with channel.close; a
  connection error there closes the connection with the spec's code.
- After our connection.close the broker waits up to ``CLOSE_TIMEOUT`` for close-ok,
  then closes the socket with a lingering close (``io.linger``), so that a client still
  publishing reads the close. On shutdown clients get connection.close 320
  CONNECTION_FORCED.
- When the connection ends, its channels close (unacknowledged messages go back to
  their queues) and its exclusive queues are deleted.
"""

import logging
import math

import trio

from ..auth import Client, Refusal
from ..broker import Broker
from ..overflow import Backlog, Holdback
from ..protocols.amqp import (
    CONNECTION_FORCED,
    HEARTBEAT_FRAME,
    AMQPError,
    Content,
    Method,
    MethodFrame,
)
from ..protocols.amqp.connection import (
    CLOSING,
    NEED_DATA,
    OPEN,
    PAUSED,
    AMQPConnection,
    ChannelCloseConfirmed,
    ChannelClosed,
    ChannelOpened,
    Closed,
    Fault,
    HeaderMismatch,
    LoginRequested,
    Opened,
    reply_text,
)
from ..queues import Queue
from .amqp_channel import Channel, ConnectionFault
from .amqp_negotiation import connection_start, connection_tune
from .io import linger, receive_before

log = logging.getLogger("polybroker.amqp")

CLOSE_TIMEOUT = 2.0  # seconds to wait for close-ok after our connection.close
HEARTBEAT_TOLERANCE = 2  # intervals of silence before a client is dropped


class AMQPClientConnection:
    """Serves one AMQP client over one stream; the protocol state is ``self.amqp``."""

    def __init__(self, stream: trio.abc.Stream, broker: Broker, peer: str,
                 identity: str | None = None, allow_anonymous: bool = True) -> None:
        self.stream = stream
        self.broker = broker
        self.limits = broker.limits
        self.settings = broker.config.amqp
        self.peer = peer
        self.identity = identity
        self.allow_anonymous = allow_anonymous  # the listener's setting
        self.client = Client(None, "")  # who the ACL sees, once logged in
        self._login: LoginRequested | None = None  # being checked
        self.amqp = AMQPConnection(connection_start(), connection_tune(self.settings),
                                   self.limits.max_packet_size)
        self.user: str | None = None
        self.channels: dict[int, Channel] = {}
        self.tx_bytes = 0  # message bodies held by open transactions, all channels
        self._to_dispatch: list[Queue] = []
        self._starved = False  # a delivery waited for the send buffer to drain
        self._hold = False  # buffered replies vouch for records not yet durable
        # queue_overflow "block": the full backlogs this read's publishes went to, and
        # the confirms withheld until they have room (None: not held back).
        self._holdback: Holdback | None = None
        self._finished = False  # the reader is done: the writer flushes and ends
        self._linger = False  # our connection.close (or header) must reach the client
        self._wakeup = trio.Event()
        self._drained = trio.Event()  # set by the writer after each write
        self._read_scope = trio.CancelScope()

    @property
    def name(self) -> str:
        return f"{self.user or '<no login>'} ({self.peer})"

    @property
    def frame_max(self) -> int:
        return self.amqp.frame_max

    @property
    def pending_bytes(self) -> int:
        return self.amqp.pending_bytes

    async def run(self) -> None:
        self.broker.connection_opened(self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                try:
                    with self._read_scope:
                        await self._read_loop()
                finally:
                    self._end()
                    self._finished = True
                    self._wakeup.set()
            if self._linger:
                # The client reads our connection.close even while it publishes.
                await linger(self.stream, self.broker.linger_deadline)
        finally:
            self.broker.connection_closed(self)
            await trio.aclose_forcefully(self.stream)

    def close_for_shutdown(self) -> None:
        """The broker is stopping: connection.close 320, then close-ok or a timeout."""
        state = self.amqp.state
        if state is OPEN:
            log.info("client %s: closing: server shutting down", self.name)
            self._close(CONNECTION_FORCED, "CONNECTION_FORCED - broker shutdown")
            self._read_scope.deadline = min(self._read_scope.deadline,
                                            trio.current_time() + CLOSE_TIMEOUT)
        elif state is not CLOSING:
            self._read_scope.cancel()

    # -- output -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.amqp.send(data)
        self._wakeup.set()

    def send_method(self, channel: int, method: Method) -> None:
        self.amqp.send_method(channel, method)
        self._wakeup.set()

    def can_send(self) -> bool:
        """Whether a delivery may be buffered now; when not, queues wait for the writer
        to drain the buffer (``_resume``)."""
        if self.amqp.state is not OPEN:
            return False
        if self.amqp.pending_bytes < self.limits.max_outgoing_bytes:
            return True
        self._starved = True
        return False

    def confirm(self, channel: int, method: Method) -> None:
        """Send a publisher confirm, or withhold it while the client is held back."""
        if self._holdback is not None:
            self._holdback.acks.append((channel, method))
        else:
            self.send_method(channel, method)

    def hold_back(self, full: list[Backlog]) -> None:
        """Withhold this client's confirms and stop reading from it until the backlogs
        its publish filled have room. The queues it consumes from itself are not waited
        for (it could not acknowledge meanwhile): they drop new messages until they have
        room."""
        own = {c.queue for channel in self.channels.values() for c in channel.consumers.values()}
        waiting = []
        for backlog in full:
            if backlog in own:
                backlog.give_up_blocking()
                log.warning("client %s: a queue it consumes from is full: messages for it are "
                            "dropped until it has room", self.name)
            else:
                waiting.append(backlog)
        if waiting:
            if self._holdback is None:
                self._holdback = Holdback()
            self._holdback.add(waiting)

    async def _wait_for_room(self) -> None:
        """Wait (not reading) until the backlogs this client filled have room, at most
        ``max_block_time``; then send the withheld confirms, once durable."""
        assert self._holdback is not None
        held = await self._holdback.wait(self.limits.max_block_time, self.name, log)
        self._holdback = None
        for channel, method in held:
            if channel in self.channels:
                self.send_method(channel, method)
        self._hold = True  # the confirms vouch for records written while holding them

    def dispatch_later(self, queue: Queue) -> None:
        """Dispatch ``queue`` once the current frame's reply is buffered (consume-ok
        before the first delivery)."""
        self._to_dispatch.append(queue)

    def _resume(self) -> None:
        self._starved = False
        for channel in list(self.channels.values()):
            channel.resume()

    # -- I/O loops --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        deadline = trio.current_time() + self.limits.connect_timeout
        amqp = self.amqp
        while True:
            data = await receive_before(self.stream, deadline, self.name, log)
            if data is None:
                return
            if not data:
                if amqp.state is CLOSING:
                    log.info("client %s: no close-ok within %gs", self.name, CLOSE_TIMEOUT)
                elif amqp.state is OPEN:
                    log.info("client %s: dropped: heartbeat timeout (nothing received for "
                             "%ds)", self.name, HEARTBEAT_TOLERANCE * amqp.heartbeat)
                else:
                    log.info("client %s: connection not opened within %gs", self.name,
                             self.limits.connect_timeout)
                return
            durability = self.broker.durability
            mark = durability.mark()
            try:
                amqp.receive_data(data)
                carry_on = self._process()
                while carry_on and self._login is not None:
                    await self._finish_login()
                    carry_on = self._process()
            finally:
                if durability.mark() != mark:
                    self._hold = True  # replies buffered now follow records: wait for disk
                for queue in self._to_dispatch:
                    queue.dispatch()
                self._to_dispatch.clear()
                if amqp.pending_bytes:
                    self._wakeup.set()
            if not carry_on:
                return
            if self._holdback is not None:
                await self._wait_for_room()  # queue_overflow "block"
            # Replies (returns, confirms, -oks) are not bounded by the deliveries' credit:
            # while more than max_outgoing_bytes wait, read no more from this client.
            while amqp.pending_bytes > self.limits.max_outgoing_bytes:
                self._drained = trio.Event()
                await self._drained.wait()
            if amqp.state is CLOSING:
                deadline = min(deadline, trio.current_time() + CLOSE_TIMEOUT)
            elif amqp.state is OPEN:
                deadline = (trio.current_time() + HEARTBEAT_TOLERANCE * amqp.heartbeat
                            if amqp.heartbeat else math.inf)

    def _process(self) -> bool:
        """Handle the connection's events in order; False ends the connection. Stops at
        a login to check first (``_finish_login``)."""
        amqp = self.amqp
        while True:
            event = amqp.next_event()
            kind = type(event)
            try:
                if kind is MethodFrame:
                    self.channels[event.channel].handle(event.method)
                elif kind is Content:
                    self.channels[event.channel].handle(event.method,
                                                        (event.properties, event.body))
                elif event is NEED_DATA or event is PAUSED:
                    return True
                elif not self._on_event(event):
                    return False
            except ConnectionFault as exc:
                self._fault(exc.code, exc.text, exc.class_id, exc.method_id)
            except AMQPError as exc:  # properties of a publish that do not decode
                self._fault(exc.reply_code, reply_text(exc.reply_code, exc.text),
                            exc.class_id, exc.method_id)

    def _on_event(self, event: object) -> bool:
        """One connection-level event; False ends the connection."""
        kind = type(event)
        if kind is ChannelOpened:
            self.channels[event.channel] = Channel(self, event.channel)
        elif kind is ChannelClosed:
            self.channels.pop(event.channel).close_down()
        elif kind is ChannelCloseConfirmed:
            del self.channels[event.channel]
        elif kind is LoginRequested:
            self._login = event
        elif kind is Opened:
            log.info("client %s: connected (AMQP 0-9-1, heartbeat %ds, frame_max %d, "
                     "channel_max %d)", self.name, self.amqp.heartbeat, self.amqp.frame_max,
                     self.amqp.channel_max)
        elif kind is Fault:
            log.warning("client %s: connection error %d: %s", self.name, event.code,
                        event.text)
            self._linger = True
        elif kind is Closed:
            if event.by_client:
                log.info("client %s: closed the connection (%d %s)", self.name,
                         event.reply_code, event.reply_text)
            return False
        elif kind is HeaderMismatch:
            log.info("connection from %s closed: %s", self.peer, event.text)
            self._linger = True
            return False
        return True

    async def _write_loop(self) -> None:
        last_sent = trio.current_time()
        amqp = self.amqp
        try:
            while True:
                if amqp.pending_bytes:
                    data = amqp.data_to_send()
                    # Confirms and -oks go out once the records they vouch for are on disk.
                    hold, self._hold = self._hold, False
                    if hold and not await self.broker.durability.wait_durable(
                        self.limits.send_timeout
                    ):
                        log.error("client %s: closing: storage did not confirm in time",
                                  self.name)
                        self._linger = False
                        break
                    with trio.move_on_after(self.limits.send_timeout) as timer:
                        await self.stream.send_all(data)
                    if timer.cancelled_caught:
                        log.warning("client %s: closing: send timed out", self.name)
                        self._linger = False
                        break
                    last_sent = trio.current_time()
                    self._drained.set()
                    if self._starved:
                        self._resume()
                elif self._finished:
                    return
                else:
                    beat = amqp.heartbeat if amqp.state is OPEN else 0
                    beat_at = last_sent + beat / 2 if beat else math.inf
                    with trio.move_on_at(beat_at) as idle:
                        await self._wakeup.wait()
                    if idle.cancelled_caught:
                        amqp.send(HEARTBEAT_FRAME)
                    else:
                        self._wakeup = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._linger = False
        self._read_scope.cancel()

    def _end(self) -> None:
        """The connection is over: close its channels, delete its exclusive queues."""
        self.amqp.connection_lost()  # no more deliveries (messages requeued below go elsewhere)
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            channel.close_down()
        deleted = self.broker.queues.owner_closed(self)
        if deleted:
            log.debug("client %s: %d exclusive queue(s) deleted", self.name, deleted)

    async def _finish_login(self) -> None:
        """Check the start-ok's credentials with the broker's security settings: tune on
        success, connection.close 403 after the refusal delay otherwise (never saying
        which part was wrong)."""
        login_request = self._login
        assert login_request is not None
        user, client_id = login_request.user, login_request.client_name
        security = self.broker.security
        if user is None:  # unknown mechanism or an unreadable response
            login = await security.refuse(Refusal.BAD_CREDENTIALS, username=None,
                                          peer=self.peer, client_id=client_id, protocol="AMQP")
        else:
            # An empty user name (PLAIN "\0\0") is an anonymous login.
            login = await security.login(user or None, login_request.password,
                                         allow_anonymous=self.allow_anonymous,
                                         identity=self.identity, peer=self.peer,
                                         client_id=client_id, protocol="AMQP")
        self._login = None
        if not login.ok:
            self.amqp.refuse_login()
            self._linger = True
            return
        # The claimed name stays the connection's user (basic.properties user_id is
        # checked against it) even where anonymous clients are let in.
        self.user = login.user or user
        self.client = Client(login.user, client_id)
        self.amqp.accept_login()

    # -- closing ----------------------------------------------------------------------------

    def _fault(self, code: int, text: str, class_id: int, method_id: int) -> None:
        log.warning("client %s: connection error %d: %s", self.name, code, text)
        self.amqp.fault(code, text, class_id, method_id)
        self._linger = True

    def close_channel(self, number: int, method: Method) -> None:
        """Send channel.close (a channel error); the channel then takes only close-ok."""
        self.amqp.close_channel(number, method)
        self._wakeup.set()

    def _close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Send connection.close; from now on only close-ok (or close) is awaited."""
        self.amqp.close(code, text, class_id, method_id)
        self._linger = True
        self._wakeup.set()


async def serve_amqp(
    stream: trio.abc.Stream, broker: Broker, peer: str, *, identity: str | None = None,
    allow_anonymous: bool = True,
) -> None:
    """Serve one AMQP 0-9-1 client until it goes away. ``identity`` is the TLS client
    certificate's name and ``allow_anonymous`` the listener's setting, both for the login
    check (``broker.security.login``)."""
    await AMQPClientConnection(stream, broker, peer, identity, allow_anonymous).run()

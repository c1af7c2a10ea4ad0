"""AMQP 0-9-1 adapter: one connection's frames in, broker core calls out.

Same shape as the MQTT and STOMP adapters: the reader parses whatever one receive
returns and handles every frame in it synchronously; the writer sends what the
connection has buffered in one write, and a heartbeat frame when it has sent nothing
for half the negotiated interval. Channels live in ``amqp_channel``, negotiation in
``amqp_negotiation``, message conversion in ``amqp_messages``.

Connection life cycle (0-9-1 section 2.2.4 and RabbitMQ's behaviour):

- Protocol header: anything but ``AMQP 0 0 9 1`` is answered with that header and a
  close. Then connection.start; start-ok (PLAIN or AMQPLAIN; a refused login is
  connection.close 403 ACCESS_REFUSED, authentication_failure_close); tune, whose
  answer the client may lower; open (virtual host ``/`` only: others are 530
  NOT_ALLOWED). The whole handshake must end within ``limits.connect_timeout``.
- Heartbeats: a heartbeat frame goes out when nothing else has for half the interval;
  a client that sends nothing for two intervals is dropped (without connection.close,
  as RabbitMQ does).
- Channels: channel.open on a new number up to channel_max; a channel error
  (``amqp_channel``) closes just that channel with channel.close, and the channel
  ignores everything but close / close-ok until the client confirms.
- Connection errors (a frame the codec refuses, a method on a channel that is not open,
  a second channel.open, ...) are answered with connection.close and the spec's code;
  the broker then waits up to ``CLOSE_TIMEOUT`` for close-ok, then closes the socket with
  a lingering close (``io.linger``), so that a client still publishing reads the close.
  connection.close from the client is answered with close-ok. On shutdown clients get
  connection.close 320 CONNECTION_FORCED.
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
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    HEARTBEAT_FRAME,
    NOT_ALLOWED,
    PROTOCOL_HEADER,
    REPLY_SUCCESS,
    AMQPError,
    ChannelClose,
    ChannelCloseOk,
    ChannelOpen,
    ChannelOpenOk,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionOpen,
    ConnectionOpenOk,
    ConnectionStartOk,
    ConnectionTuneOk,
    Content,
    FrameParser,
    Heartbeat,
    Method,
    MethodFrame,
    ProtocolHeader,
    ProtocolHeaderMismatch,
    encode_method,
)
from ..queues import Queue
from .amqp_channel import Channel, ConnectionFault
from .amqp_negotiation import (
    connection_start,
    connection_tune,
    credentials,
    negotiated,
)
from .io import linger, receive_before

log = logging.getLogger("polybroker.amqp")

CLOSE_TIMEOUT = 2.0  # seconds to wait for close-ok after our connection.close
HEARTBEAT_TOLERANCE = 2  # intervals of silence before a client is dropped

# Connection states, in order.
AWAIT_HEADER, AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING = range(6)
_EXPECTED = {AWAIT_START_OK: ConnectionStartOk, AWAIT_TUNE_OK: ConnectionTuneOk,
             AWAIT_OPEN: ConnectionOpen}


class AMQPClientConnection:
    """Serves one AMQP client over one stream."""

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
        self._login: tuple[str | None, str | None, str, str] | None = None  # being checked
        self._backlog: list[object] = []  # events that came after a start-ok being checked
        self.parser = FrameParser(frame_max=self.settings.frame_max,
                                  max_body_size=self.limits.max_packet_size)
        self.state = AWAIT_HEADER
        self.user: str | None = None
        self.channel_max = self.settings.channel_max
        self.frame_max = self.settings.frame_max
        self.heartbeat = 0
        self.channels: dict[int, Channel] = {}
        self._out: list[bytes] = []
        self.pending_bytes = 0
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
        if self.state == OPEN:
            log.info("client %s: closing: server shutting down", self.name)
            self._close(CONNECTION_FORCED, "CONNECTION_FORCED - broker shutdown")
            self._read_scope.deadline = min(self._read_scope.deadline,
                                            trio.current_time() + CLOSE_TIMEOUT)
        elif self.state != CLOSING:
            self._read_scope.cancel()

    # -- output -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self.pending_bytes += len(data)
        self._wakeup.set()

    def send_method(self, channel: int, method: Method) -> None:
        self.send(encode_method(channel, method))

    def can_send(self) -> bool:
        """Whether a delivery may be buffered now; when not, queues wait for the writer
        to drain the buffer (``_resume``)."""
        if self.state != OPEN:
            return False
        if self.pending_bytes < self.limits.max_outgoing_bytes:
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
        while True:
            data = await receive_before(self.stream, deadline, self.name, log)
            if data is None:
                return
            if not data:
                if self.state == CLOSING:
                    log.info("client %s: no close-ok within %gs", self.name, CLOSE_TIMEOUT)
                elif self.state == OPEN:
                    log.info("client %s: dropped: heartbeat timeout (nothing received for "
                             "%ds)", self.name, HEARTBEAT_TOLERANCE * self.heartbeat)
                else:
                    log.info("client %s: connection not opened within %gs", self.name,
                             self.limits.connect_timeout)
                return
            durability = self.broker.durability
            mark = durability.mark()
            try:
                carry_on = self._receive(data)
                while carry_on and self._login is not None:
                    await self._finish_login()
                    backlog, self._backlog = self._backlog, []
                    carry_on = self._process(backlog)
            finally:
                if durability.mark() != mark:
                    self._hold = True  # replies buffered now follow records: wait for disk
                for queue in self._to_dispatch:
                    queue.dispatch()
                self._to_dispatch.clear()
            if not carry_on:
                return
            if self._holdback is not None:
                await self._wait_for_room()  # queue_overflow "block"
            # Replies (returns, confirms, -oks) are not bounded by the deliveries' credit:
            # while more than max_outgoing_bytes wait, read no more from this client.
            while self.pending_bytes > self.limits.max_outgoing_bytes:
                self._drained = trio.Event()
                await self._drained.wait()
            if self.state == CLOSING:
                deadline = min(deadline, trio.current_time() + CLOSE_TIMEOUT)
            elif self.state == OPEN:
                deadline = (trio.current_time() + HEARTBEAT_TOLERANCE * self.heartbeat
                            if self.heartbeat else math.inf)

    def _receive(self, data: bytes) -> bool:
        """Handle one read's worth of frames; False ends the connection."""
        if self.state == CLOSING and self.parser is None:
            return True  # the stream failed to parse: wait for the close or the timeout
        try:
            events = self.parser.receive_data(data)
        except ProtocolHeaderMismatch as exc:
            log.info("connection from %s closed: %s", self.peer, exc.text)
            self.send(PROTOCOL_HEADER)
            self._linger = True
            return False
        except AMQPError as exc:
            if self.state != CLOSING:  # one connection.close is enough
                self._fault(exc.reply_code, _reply_text(exc.reply_code, exc.text),
                            exc.class_id, exc.method_id)
            self.parser = None
            return True
        return self._process(events)

    def _process(self, events: list) -> bool:
        """Handle parsed events in order; False ends the connection. Stops at a start-ok
        whose login must be checked first (``_finish_login``), keeping the rest."""
        for index, event in enumerate(events):
            if self._login is not None:
                self._backlog = events[index:]
                return True
            try:
                if not self._handle(event):
                    return False
            except ConnectionFault as exc:
                self._fault(exc.code, exc.text, exc.class_id, exc.method_id)
                return True
            except AMQPError as exc:  # properties of a publish that do not decode
                self._fault(exc.reply_code, _reply_text(exc.reply_code, exc.text),
                            exc.class_id, exc.method_id)
                return True
        return True

    async def _write_loop(self) -> None:
        last_sent = trio.current_time()
        try:
            while True:
                if self._out:
                    data = b"".join(self._out)
                    self._out.clear()
                    self.pending_bytes = 0
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
                    beat = self.heartbeat if self.state == OPEN else 0
                    beat_at = last_sent + beat / 2 if beat else math.inf
                    with trio.move_on_at(beat_at) as idle:
                        await self._wakeup.wait()
                    if idle.cancelled_caught:
                        self._out.append(HEARTBEAT_FRAME)
                    else:
                        self._wakeup = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._linger = False
        self._read_scope.cancel()

    def _end(self) -> None:
        """The connection is over: close its channels, delete its exclusive queues."""
        self.state = CLOSING  # no more deliveries to it (messages requeued below go elsewhere)
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            channel.close_down()
        deleted = self.broker.queues.owner_closed(self)
        if deleted:
            log.debug("client %s: %d exclusive queue(s) deleted", self.name, deleted)

    # -- frames -----------------------------------------------------------------------------

    def _handle(self, event: object) -> bool:
        """One parser event; False ends the connection."""
        if isinstance(event, Heartbeat):
            return True
        if isinstance(event, ProtocolHeader):
            self.send_method(0, connection_start())
            self.state = AWAIT_START_OK
            return True
        channel = event.channel
        method = event.method
        if self.state == CLOSING:
            # After our connection.close only close / close-ok count (0-9-1 2.2.4).
            if isinstance(method, ConnectionCloseOk):
                return False
            if isinstance(method, ConnectionClose):
                self.send_method(0, ConnectionCloseOk())
                return False
            return True
        if channel == 0:
            return self._connection_method(method)
        if self.state != OPEN:
            raise ConnectionFault(COMMAND_INVALID, "COMMAND_INVALID - expected "
                                  f"'{_EXPECTED[self.state].NAME}'", method.CLASS_ID,
                                  method.METHOD_ID)
        self._channel_event(channel, event)
        return True

    def _connection_method(self, method: Method) -> bool:
        expected = _EXPECTED.get(self.state)
        if isinstance(method, ConnectionClose):
            log.info("client %s: closed the connection (%d %s)", self.name, method.reply_code,
                     method.reply_text)
            self.send_method(0, ConnectionCloseOk())
            return False
        if expected is not None and not isinstance(method, expected):
            raise ConnectionFault(COMMAND_INVALID, f"COMMAND_INVALID - expected "
                                  f"'{expected.NAME}'", method.CLASS_ID, method.METHOD_ID)
        if isinstance(method, ConnectionStartOk):
            return self._on_start_ok(method)
        if isinstance(method, ConnectionTuneOk):
            self._on_tune_ok(method)
        elif isinstance(method, ConnectionOpen):
            self._on_open(method)
        else:  # close-ok without our close, or any other connection method now
            raise ConnectionFault(COMMAND_INVALID, f"COMMAND_INVALID - unexpected "
                                  f"'{method.NAME}'", method.CLASS_ID, method.METHOD_ID)
        return True

    def _on_start_ok(self, method: ConnectionStartOk) -> bool:
        """Remember the credentials; the read loop checks them (``_finish_login``) before
        any later frame is handled."""
        user, password = credentials(method) or (None, None)
        name = method.client_properties.get("connection_name")
        self._login = (user, password, method.mechanism[:40], name if isinstance(name, str)
                       else "")
        return True

    async def _finish_login(self) -> None:
        """Check the start-ok's credentials with the broker's security settings: tune on
        success, connection.close 403 after the refusal delay otherwise (never saying
        which part was wrong)."""
        user, password, mechanism, client_id = self._login
        security = self.broker.security
        if user is None:  # unknown mechanism or an unreadable response
            login = await security.refuse(Refusal.BAD_CREDENTIALS, username=None,
                                          peer=self.peer, client_id=client_id, protocol="AMQP")
        else:
            # An empty user name (PLAIN "\0\0") is an anonymous login.
            login = await security.login(user or None, password,
                                         allow_anonymous=self.allow_anonymous,
                                         identity=self.identity, peer=self.peer,
                                         client_id=client_id, protocol="AMQP")
        self._login = None
        if not login.ok:
            self._close(ACCESS_REFUSED, f"ACCESS_REFUSED - Login was refused using "
                        f"authentication mechanism {mechanism}")
            return
        # The claimed name stays the connection's user (basic.properties user_id is
        # checked against it) even where anonymous clients are let in.
        self.user = login.user or user
        self.client = Client(login.user, client_id)
        self.send_method(0, connection_tune(self.settings))
        self.state = AWAIT_TUNE_OK

    def _on_tune_ok(self, method: ConnectionTuneOk) -> None:
        try:
            self.channel_max, self.frame_max, self.heartbeat = negotiated(self.settings, method)
        except ValueError as exc:
            raise ConnectionFault(NOT_ALLOWED, f"NOT_ALLOWED - {exc}", method.CLASS_ID,
                                  method.METHOD_ID) from None
        self.parser.frame_max = self.frame_max
        self.state = AWAIT_OPEN

    def _on_open(self, method: ConnectionOpen) -> None:
        if method.virtual_host != "/":
            raise ConnectionFault(NOT_ALLOWED, f"NOT_ALLOWED - vhost "
                                  f"{method.virtual_host[:100]} not found", method.CLASS_ID,
                                  method.METHOD_ID)
        self.send_method(0, ConnectionOpenOk())
        self.state = OPEN
        log.info("client %s: connected (AMQP 0-9-1, heartbeat %ds, frame_max %d, "
                 "channel_max %d)", self.name, self.heartbeat, self.frame_max,
                 self.channel_max)

    def _channel_event(self, number: int, event: MethodFrame | Content) -> None:
        method = event.method
        channel = self.channels.get(number)
        if channel is None:
            # A close crossing ours, or racing the end of the channel: answered or ignored
            # (as RabbitMQ does), not a connection error.
            if isinstance(method, ChannelClose):
                self.send_method(number, ChannelCloseOk())
                return
            if isinstance(method, ChannelCloseOk):
                return
            if not isinstance(method, ChannelOpen):
                raise ConnectionFault(CHANNEL_ERROR, f"CHANNEL_ERROR - expected "
                                      f"'channel.open' on channel {number}", method.CLASS_ID,
                                      method.METHOD_ID)
            if number > self.channel_max:
                raise ConnectionFault(CHANNEL_ERROR, f"CHANNEL_ERROR - channel {number} "
                                      f"above channel_max {self.channel_max}", method.CLASS_ID,
                                      method.METHOD_ID)
            self.channels[number] = Channel(self, number)
            self.send_method(number, ChannelOpenOk())
            return
        if isinstance(method, ChannelOpen):
            raise ConnectionFault(CHANNEL_ERROR, f"CHANNEL_ERROR - second 'channel.open' on "
                                  f"channel {number}", method.CLASS_ID, method.METHOD_ID)
        if isinstance(method, ChannelClose):
            del self.channels[number]
            if not channel.closing:
                channel.close_down()
            self.send_method(number, ChannelCloseOk())
            return
        if isinstance(method, ChannelCloseOk):
            if channel.closing:
                del self.channels[number]
                return
            raise ConnectionFault(CHANNEL_ERROR, "CHANNEL_ERROR - unexpected "
                                  "'channel.close-ok'", method.CLASS_ID, method.METHOD_ID)
        if isinstance(event, Content):
            channel.handle(method, (event.properties, event.body))
        else:
            channel.handle(method)

    # -- closing ----------------------------------------------------------------------------

    def _fault(self, code: int, text: str, class_id: int, method_id: int) -> None:
        log.warning("client %s: connection error %d: %s", self.name, code, text)
        self._close(code, text, class_id, method_id)

    def _close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Send connection.close; from now on only close-ok (or close) is awaited."""
        self.send_method(0, ConnectionClose(reply_code=code, reply_text=text[:255],
                                            class_id=class_id, method_id=method_id))
        self.state = CLOSING
        self._linger = True


def _reply_text(code: int, text: str) -> str:
    names = {501: "FRAME_ERROR", 502: "SYNTAX_ERROR", 503: "COMMAND_INVALID",
             504: "CHANNEL_ERROR", 505: "UNEXPECTED_FRAME", 540: "NOT_IMPLEMENTED",
             311: "CONTENT_TOO_LARGE", REPLY_SUCCESS: "OK"}
    return f"{names.get(code, 'ERROR')} - {text}"


async def serve_amqp(
    stream: trio.abc.Stream, broker: Broker, peer: str, *, identity: str | None = None,
    allow_anonymous: bool = True,
) -> None:
    """Serve one AMQP 0-9-1 client until it goes away. ``identity`` is the TLS client
    certificate's name and ``allow_anonymous`` the listener's setting, both for the login
    check (``broker.security.login``)."""
    await AMQPClientConnection(stream, broker, peer, identity, allow_anonymous).run()

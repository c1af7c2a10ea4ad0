"""AMQP 0-9-1 adapter: one connection's events in, broker core calls out.

The protocol (handshake, channel states, connection.close, the output buffer) is the
sans-IO ``protocols.amqp.connection.AMQPConnection``; the I/O is the ``runner``'s; this
adapter acts on the protocol's events: the runner hands whatever one receive returns
to ``receive``, which handles every event that comes out synchronously, and sends what
is buffered in one write, or a heartbeat frame when it has sent nothing for half the
negotiated interval.
Channels live in ``channel``, what connection.start and tune offer in
``negotiation``, message conversion in ``convert``.

What the adapter adds to the protocol's life cycle:

- The login of a start-ok is checked with the broker's security settings (PLAIN or
  AMQPLAIN; a refused login is connection.close 403 ACCESS_REFUSED,
  authentication_failure_close). The whole handshake must end within
  ``limits.connect_timeout``.
- Heartbeats: a heartbeat frame goes out when nothing else has for half the interval;
  a client that sends nothing for two intervals is dropped (without connection.close,
  as RabbitMQ does).
- A channel error (``channel``) closes just that channel with channel.close; a
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
from typing import Any, cast

import trio

from ...auth import Client, Refusal
from ...broker import Broker
from ...overflow import Backlog, excluding_own
from ...protocols.amqp import (
    CONNECTION_FORCED,
    HEARTBEAT_FRAME,
    AMQPError,
    ChannelClose,
    Content,
    Method,
    MethodFrame,
)
from ...protocols.amqp.connection import (
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
from ...queues import Queue
from ...stats import Holdings, HoldsConsumers
from ..runner import ConnectionRunner
from .channel import Channel
from .channel_support import ConnectionFault
from .negotiation import connection_start, connection_tune

log = logging.getLogger("polybroker.amqp")

CLOSE_TIMEOUT = 2.0  # seconds to wait for close-ok after our connection.close
HEARTBEAT_TOLERANCE = 2  # intervals of silence before a client is dropped


class AMQPClientConnection(HoldsConsumers):
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
        self.runner = ConnectionRunner(stream, broker, self, log, "amqp")

    @property
    def name(self) -> str:
        return f"{self.user or '<no login>'} ({self.peer})"

    @property
    def frame_max(self) -> int:
        return self.amqp.frame_max

    @property
    def pending_bytes(self) -> int:
        return self.amqp.pending_bytes

    def data_to_send(self) -> bytes:
        return self.amqp.data_to_send()

    async def run(self) -> None:
        await self.runner.run()

    def close_for_shutdown(self) -> None:
        """The broker is stopping: connection.close 320, then close-ok or a timeout."""
        self._close_forced("shutdown", "CONNECTION_FORCED - broker shutdown")

    def close_by_administrator(self) -> None:
        """An operator closes the connection (``Broker.close_connection``): 320 too."""
        self._close_forced("kicked", "CONNECTION_FORCED - closed by an administrator")

    def _close_forced(self, reason: str, text: str) -> None:
        state = self.amqp.state
        self.runner.ending(reason)
        if state is OPEN:
            self._close(CONNECTION_FORCED, text)
            self.runner.stop_reading_by(trio.current_time() + CLOSE_TIMEOUT)
        elif state is not CLOSING:
            self.runner.stop_reading()

    def holdings(self) -> Holdings:
        """The consumers and unacknowledged deliveries, for the management API."""
        held = Holdings()
        for channel in list(self.channels.values()):
            for consumer in list(channel.consumers.values()):
                held.consumers.append({"id": consumer.tag, "channel": channel.number,
                                       "queue": consumer.queue.name})
            held.inflight += len(channel.unacked)
        return held

    # -- output -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.runner.info.messages_out += 1  # a delivery, get-ok or return
        self.amqp.send(data)
        self.runner.wake()

    def send_method(self, channel: int, method: Method) -> None:
        self.amqp.send_method(channel, method)
        self.runner.wake()

    def can_send(self) -> bool:
        """Whether a delivery may be buffered now; when not, queues wait for the writer
        to drain the buffer (``sent``)."""
        if self.amqp.state is not OPEN:
            return False
        if self.amqp.pending_bytes < self.limits.max_outgoing_bytes:
            return True
        self._starved = True
        return False

    def confirm(self, channel: int, method: Method) -> None:
        """Send a publisher confirm, or withhold it while the client is held back."""
        if not self.runner.withhold((channel, method)):
            self.send_method(channel, method)

    def hold_back(self, full: list[Backlog]) -> None:
        """Withhold this client's confirms and stop reading from it until the backlogs
        its publish filled have room. The queues it consumes from itself are not waited
        for (it could not acknowledge meanwhile): they drop new messages until they have
        room."""
        own = (c.queue for channel in self.channels.values() for c in channel.consumers.values())
        waiting = excluding_own(full, own, self.name, "a queue it consumes from", log)
        if waiting:
            self.runner.hold_back(waiting)

    def release(self, held: list[Any]) -> None:
        """The backlogs this client filled have room (or ``max_block_time`` passed): send
        the withheld confirms, once durable."""
        for channel, method in held:
            if channel in self.channels:
                self.send_method(channel, method)
        self.runner.hold_durable()  # the confirms vouch for records written meanwhile

    def dispatch_later(self, queue: Queue) -> None:
        """Dispatch ``queue`` once the current frame's reply is buffered (consume-ok
        before the first delivery)."""
        self._to_dispatch.append(queue)

    def sent(self) -> None:
        if self._starved:
            self._starved = False
            for channel in list(self.channels.values()):
                channel.resume()

    # -- I/O loops --------------------------------------------------------------------------

    async def receive(self, data: bytes) -> bool:
        """One read's worth of frames; False ends the connection."""
        durability = self.broker.durability
        mark = durability.mark()
        try:
            self.amqp.receive_data(data)
            carry_on = self._process()
            while carry_on and self._login is not None:
                await self._finish_login()
                carry_on = self._process()
        finally:
            if durability.mark() != mark:
                self.runner.hold_durable()  # replies buffered now follow records
            for queue in self._to_dispatch:
                queue.dispatch()
            self._to_dispatch.clear()
        return carry_on

    def read_deadline(self, deadline: float) -> float:
        amqp = self.amqp
        if amqp.state is CLOSING:
            return min(deadline, trio.current_time() + CLOSE_TIMEOUT)
        if amqp.state is OPEN:
            return (trio.current_time() + HEARTBEAT_TOLERANCE * amqp.heartbeat
                    if amqp.heartbeat else math.inf)
        return deadline

    def read_timed_out(self) -> None:
        amqp = self.amqp
        if amqp.state is CLOSING:  # the reason is the close's (the first one counts)
            self.runner.ending("protocol_error", f"no close-ok within {CLOSE_TIMEOUT:g}s")
        elif amqp.state is OPEN:
            self.runner.ending("heartbeat_timeout", "nothing received for "
                                                    f"{HEARTBEAT_TOLERANCE * amqp.heartbeat}s")
        else:
            self.runner.ending("connect_timeout", "connection not opened within "
                                                  f"{self.limits.connect_timeout:g}s")

    def heartbeat_interval(self) -> float:
        amqp = self.amqp
        return amqp.heartbeat / 2 if amqp.state is OPEN else 0

    def send_heartbeat(self) -> None:
        self.amqp.send(HEARTBEAT_FRAME)

    def _process(self) -> bool:
        """Handle the connection's events in order; False ends the connection. Stops at
        a login to check first (``_finish_login``)."""
        amqp = self.amqp
        while True:
            event = amqp.next_event()
            kind = type(event)
            try:
                # ``kind is`` rather than isinstance: exact types, the cheapest test per frame.
                if kind is MethodFrame:
                    frame = cast(MethodFrame, event)
                    self.channels[frame.channel].handle(frame.method)
                elif kind is Content:
                    content = cast(Content, event)
                    self.runner.info.messages_in += 1
                    self.channels[content.channel].handle(content.method,
                                                          (content.properties, content.body))
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
        if isinstance(event, ChannelOpened):
            self.channels[event.channel] = Channel(self, event.channel)
        elif isinstance(event, ChannelClosed):
            self.channels.pop(event.channel).close_down()
        elif isinstance(event, ChannelCloseConfirmed):
            del self.channels[event.channel]
        elif isinstance(event, LoginRequested):
            self._login = event
        elif isinstance(event, Opened):
            log.info("client %s: connected (AMQP 0-9-1, heartbeat %ds, frame_max %d, "
                     "channel_max %d)", self.name, self.amqp.heartbeat, self.amqp.frame_max,
                     self.amqp.channel_max)
        elif isinstance(event, Fault):
            self.runner.ending("protocol_error", f"{event.code} {event.text}")
            self.runner.linger = True
        elif isinstance(event, Closed):
            if event.by_client:
                self.runner.ending("client_disconnect",
                                   f"{event.reply_code} {event.reply_text}")
            return False
        elif isinstance(event, HeaderMismatch):
            self.runner.ending("protocol_error", event.text)
            self.runner.linger = True
            return False
        return True

    def end(self) -> None:
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
        self.runner.lift_deadline()  # the connect timeout bounds the wait for bytes only
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
            self.runner.ending("login_refused")
            self.amqp.refuse_login()
            self.runner.linger = True
            return
        # The claimed name stays the connection's user (basic.properties user_id is
        # checked against it) even where anonymous clients are let in.
        self.user = login.user or user
        self.runner.info.user = self.user
        self.client = Client(login.user, client_id)
        self.amqp.accept_login()

    # -- closing ----------------------------------------------------------------------------

    def _fault(self, code: int, text: str, class_id: int, method_id: int) -> None:
        self.runner.ending("protocol_error", f"{code} {text}")
        self.amqp.fault(code, text, class_id, method_id)
        self.runner.linger = True

    def close_channel(self, number: int, method: Method) -> None:
        """Send channel.close (a channel error); the channel then takes only close-ok."""
        assert isinstance(method, ChannelClose)
        self.amqp.close_channel(number, method)
        self.runner.wake()

    def _close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Send connection.close; from now on only close-ok (or close) is awaited."""
        self.amqp.close(code, text, class_id, method_id)
        self.runner.linger = True
        self.runner.wake()


async def serve_amqp(
    stream: trio.abc.Stream, broker: Broker, peer: str, *, identity: str | None = None,
    allow_anonymous: bool = True,
) -> None:
    """Serve one AMQP 0-9-1 client until it goes away. ``identity`` is the TLS client
    certificate's name and ``allow_anonymous`` the listener's setting, both for the login
    check (``broker.security.login``)."""
    await AMQPClientConnection(stream, broker, peer, identity, allow_anonymous).run()

"""STOMP adapter (1.0, 1.1, 1.2): one connection's frames in, broker core calls out.

The I/O is the ``runner``'s (read deadlines, bounded writes, the durability gate, the
publish-rate throttle, the lingering close): it hands whatever one receive returns to
``receive``, which handles every frame in it synchronously, and it sends what the
connection has buffered, or a heart-beat (EOL) when it has had nothing to send for the
negotiated interval.

How STOMP meets the core (destinations: see ``polybroker.destinations``):

- Every SUBSCRIBE is a consumer of a ``Queue``: ``/queue/x`` consumes the named
  queue ``x`` (competing consumers, round-robin); ``/topic/f`` gets a private queue,
  bound in the router under filter ``f`` and removed with the subscription. So every
  ack mode, the prefetch bound and redelivery work the same on both kinds.
- A SEND to ``/topic/t`` is published on the router at QoS 1 (each MQTT subscriber
  gets it at its granted QoS); a SEND to ``/queue/x`` enters queue ``x`` (created on
  first use) and waits there for a consumer.
- ``content-type`` and user headers pass through both ways (MQTT 5.0 user
  properties); the headers STOMP defines for its own use do not.
- ``auto`` subscriptions settle a message when it is written; ``client`` and
  ``client-individual`` ones hold it until ACK (``client``: cumulative over the
  subscription's earlier messages) or NACK (requeued, ``redelivered:true``, for
  another consumer when there is one; ``requeue:false`` drops it). Unsubscribing or
  disconnecting requeues what is unacknowledged.
- A subscription's ``prefetch-count`` (or ActiveMQ's ``activemq.prefetchSize``)
  header bounds its unacknowledged messages (0 or none: no bound); a full send buffer
  (``max_outgoing_bytes``) pauses deliveries to the connection.
- BEGIN / COMMIT / ABORT buffer SEND, ACK and NACK frames of the transaction and
  apply them in order at COMMIT; open transactions are aborted when the connection
  ends.
- The CONNECT frame's ``login`` and ``passcode`` go to ``broker.security.login``; a
  refusal is the ERROR "access refused" (whatever was wrong), sent after the security's
  delay. A SEND or SUBSCRIBE the ACL does not allow (topics: ``may_publish`` /
  ``may_subscribe``; queues: ``may_write_queue`` / ``may_read_queue``) is answered with
  an ERROR "access refused: ..." and the connection closes, as STOMP has no other way
  to refuse one frame. ACL ``%c`` is the CONNECT ``client-id`` header, else the session id.
- Any fault is answered with an ERROR frame (``message`` header, and ``receipt-id``
  when the faulty frame asked for a receipt), then the connection ends with a lingering
  close (``io.linger``) so the client can read it. On shutdown connected clients get an
  ERROR "server shutting down" first, as RabbitMQ does.

Each frame's handling is in the module of its concern: ``send``, ``subscribe`` (with
ACK and NACK), ``transactions``; deliveries in ``consumer``.
"""

import math
from collections.abc import Callable
from typing import Any

import trio

from ...auth import Client
from ...broker import Broker
from ...protocols.stomp import Frame, ProtocolError, StompError
from ...stats import HoldsConsumers
from ..runner import ConnectionRunner
from .send import Sending
from .state import CONNECT_COMMANDS, SERVER_NAME, log
from .subscribe import Subscribing

HEART_BEAT_TOLERANCE = 2.0  # a client silent for twice its interval is dropped (as RabbitMQ)


class StompClientConnection(Sending, Subscribing, HoldsConsumers):
    """Serves one STOMP client over one stream."""

    def __init__(self, stream: trio.abc.Stream, broker: Broker, peer: str,
                 identity: str | None = None, allow_anonymous: bool = True) -> None:
        super().__init__(stream, broker, peer, identity, allow_anonymous)
        self.runner = ConnectionRunner(stream, broker, self, log, "stomp", self.throttle)

    @property
    def pending_bytes(self) -> int:
        return self.conn.pending_bytes

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    async def run(self) -> None:
        await self.runner.run()

    def close_for_shutdown(self) -> None:
        """The broker is stopping: a connected client gets an ERROR saying so."""
        self._close_with("shutdown", "server shutting down")

    def close_by_administrator(self) -> None:
        """An operator closes the connection (``Broker.close_connection``)."""
        self._close_with("kicked", "disconnected by an administrator")

    def _close_with(self, reason: str, text: str) -> None:
        if self.runner.finished:
            return  # already on its way out: nothing to tell it
        if self.connected:
            self.conn.send(StompError(text).to_frame())
            self.runner.linger = True
        self.runner.ending(reason)
        self.runner.stop_reading()

    # -- I/O loops ------------------------------------------------------------------------

    async def receive(self, data: bytes) -> bool:
        """One read's worth of frames; False ends the connection."""
        try:
            return await self._receive(data)
        except StompError as exc:
            self._fail(exc)
            return False

    def read_deadline(self, deadline: float) -> float:
        receive_ms = self.conn.heart_beat[1]
        if self.connected and receive_ms:
            return trio.current_time() + HEART_BEAT_TOLERANCE * receive_ms / 1000
        if self.connected:
            return math.inf  # no heart-beats: a silent client stays
        return deadline

    def read_timed_out(self) -> None:
        if not self.connected:
            self.runner.ending("connect_timeout")
            self._fail(ProtocolError("no CONNECT frame in time"))
            return
        silent = HEART_BEAT_TOLERANCE * self.conn.heart_beat[1] / 1000
        self.runner.ending("heartbeat_timeout", f"nothing received for {silent:g}s")
        self._fail(ProtocolError(f"heart-beat timeout: nothing received for {silent:g}s"))

    def heartbeat_interval(self) -> float:
        return self.conn.heart_beat[0] / 1000 if self.connected else 0

    def send_heartbeat(self) -> None:
        self.conn.send_heart_beat()

    async def _receive(self, data: bytes) -> bool:
        """Handle one read's worth of frames; False ends the connection."""
        for event in self.conn.receive_data(data):
            if not isinstance(event, Frame):
                continue
            if event.command in CONNECT_COMMANDS and not self.connected:
                await self._login(event)
            if not self._handle(event):
                return False
        if self.conn.error_pending:
            # A bad frame after these in the same read: judged only now that they are
            # answered (a CONNECT has its CONNECTED, then the ERROR says what was wrong).
            self.conn.receive_data(b"")
        return True

    async def _login(self, frame: Frame) -> None:
        """Check ``login`` and ``passcode``; ProtocolError "access refused" if refused."""
        client_id = frame.get("client-id") or self.session_id
        self.runner.lift_deadline()  # the connect timeout bounds the wait for bytes only
        login = await self.broker.security.login(
            frame.get("login"), frame.get("passcode"), allow_anonymous=self.allow_anonymous,
            identity=self.identity, peer=self.peer, client_id=client_id, protocol="STOMP",
        )
        if not login.ok:
            self.runner.ending("login_refused")
            raise ProtocolError("access refused")  # never which part was wrong
        self.client = Client(login.user, client_id)

    def _fail(self, exc: StompError) -> None:
        """Send the ERROR frame for ``exc``; the connection closes after it."""
        self.conn.send(exc.to_frame())
        self.runner.linger = True
        self.runner.ending("protocol_error", exc.message)

    def end(self) -> None:
        """The connection is over: abort its transactions, end its subscriptions."""
        if self._transactions:
            log.info("client %s: %d open transaction(s) aborted", self.name,
                     len(self._transactions))
            self._transactions.clear()
        for sub in list(self.subscriptions.values()):
            self._cancel(sub)
        self.subscriptions.clear()

    # -- frames ---------------------------------------------------------------------------

    def _handle(self, frame: Frame) -> bool:
        """Handle one frame, then send its RECEIPT when asked; False ends the connection."""
        receipt = frame.get("receipt")
        durability = self.broker.durability
        mark = durability.mark()
        carry_on = _HANDLERS[frame.command](self, frame)
        if receipt is not None and frame.command not in CONNECT_COMMANDS:
            durable = durability.mark() != mark  # it wrote records (a persistent SEND, its ACK)
            if not self.runner.withhold((receipt, durable)):  # held back: after the room
                self._receipt(receipt, durable)
        for queue in self._to_dispatch:
            queue.dispatch()
        self._to_dispatch.clear()
        return carry_on

    def _receipt(self, receipt: str, durable: bool) -> None:
        self.conn.send(Frame("RECEIPT", (("receipt-id", receipt),)))
        if durable:
            self.runner.hold_durable()  # it goes out once those records are on disk

    def release(self, held: list[Any]) -> None:
        """Queue_overflow "block": the backlogs this client's SENDs filled have room (or
        ``max_block_time`` passed): send the RECEIPTs withheld meanwhile."""
        for receipt, durable in held:
            self._receipt(receipt, durable)

    def _on_connect(self, frame: Frame) -> bool:
        login = frame.get("login")
        self.login = login
        self.runner.info.user = login
        self.host = frame.get("host")
        self.conn.send(self.conn.connected_frame(session=self.session_id, server=SERVER_NAME))
        self.connected = True
        send_ms, receive_ms = self.conn.heart_beat
        log.info("client %s: connected (STOMP %s, login %s, heart-beat send %dms receive %dms)",
                 self.name, self.conn.version, login or "-", send_ms, receive_ms)
        return True

    def _on_disconnect(self, frame: Frame) -> bool:
        self.runner.ending("client_disconnect")
        self.runner.linger = True
        return False

# Each command's handler; False ends the connection.
_HANDLERS: dict[str, Callable[[StompClientConnection, Frame], bool]] = {
    "CONNECT": StompClientConnection._on_connect,
    "STOMP": StompClientConnection._on_connect,
    "SEND": StompClientConnection._on_send,
    "SUBSCRIBE": StompClientConnection._on_subscribe,
    "UNSUBSCRIBE": StompClientConnection._on_unsubscribe,
    "ACK": StompClientConnection._on_ack,
    "NACK": StompClientConnection._on_nack,
    "BEGIN": StompClientConnection._on_begin,
    "COMMIT": StompClientConnection._on_commit,
    "ABORT": StompClientConnection._on_abort,
    "DISCONNECT": StompClientConnection._on_disconnect,
}


async def serve_stomp(
    stream: trio.abc.Stream, broker: Broker, peer: str, *, identity: str | None = None,
    allow_anonymous: bool = True,
) -> None:
    """Serve one STOMP client until it goes away (``server.ProtocolHandler``).
    ``identity`` is the TLS client certificate's name, which is then the user."""
    if identity is not None:
        log.info("stomp connection %s: certificate identity %s", peer, identity)
    await StompClientConnection(stream, broker, peer, identity, allow_anonymous).run()


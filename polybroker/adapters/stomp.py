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
"""

import logging
import math
import secrets
from dataclasses import dataclass, field

import trio

from .. import __version__
from ..auth import Client
from ..broker import Broker
from ..destinations import Destination, DestinationError, parse_destination, topic_destination
from ..journal import StoreFull
from ..limits import PublishThrottle
from ..message import Message
from ..overflow import PublishResult, excluding_own
from ..protocols.stomp import (
    DEFAULT_MAX_FRAME_SIZE,
    V1_2,
    Frame,
    ProtocolError,
    ServerConnection,
    StompError,
    encode_frame,
    encode_message,
)
from ..queues import Queue, QueueEntry
from .runner import ConnectionRunner

log = logging.getLogger("polybroker.stomp")

SERVER_NAME = f"polybroker/{__version__}"
HEART_BEAT_TOLERANCE = 2.0  # a client silent for twice its interval is dropped (as RabbitMQ)
MAX_SUBSCRIPTIONS = 1000  # per connection
MAX_TRANSACTIONS = 100  # open at once, per connection
MAX_TRANSACTION_FRAMES = 10_000  # per transaction
MAX_TRANSACTION_BYTES = 64 * 1024 * 1024  # SEND bodies buffered by open transactions
PREFETCH_HEADERS = ("prefetch-count", "activemq.prefetchSize")
MAX_PREFETCH = 2**31 - 1

# Headers STOMP uses for itself: not taken from a SEND into the message, nor from a
# message's headers into a MESSAGE (content-type travels as Message.content_type).
_RESERVED_HEADERS = frozenset((
    "destination", "content-length", "content-type", "receipt", "transaction",
    "message-id", "subscription", "ack", "redelivered",
))
_REDELIVERED = (("redelivered", "true"),)
_CONNECT_COMMANDS = ("CONNECT", "STOMP")


@dataclass(eq=False, slots=True)
class _Transaction:
    actions: list = field(default_factory=list)
    size: int = 0  # SEND body bytes buffered


class StompSubscription:
    """One SUBSCRIBE of one connection: a consumer of its queue."""

    __slots__ = ("ack_mode", "connection", "destination", "id", "pending", "queue")

    def __init__(
        self,
        connection: "StompClientConnection",
        sub_id: str,
        destination: Destination,
        ack_mode: str,
        queue: Queue,
    ) -> None:
        self.connection = connection
        self.id = sub_id
        self.destination = destination
        self.ack_mode = ack_mode
        self.queue = queue
        self.pending: dict[str, int] = {}  # message-id -> delivery tag, in delivery order

    def __repr__(self) -> str:
        return f"StompSubscription({self.id!r}, {self.destination.wire!r})"

    @property
    def private(self) -> bool:
        """A topic subscription: its queue is its own, bound in the router."""
        return not self.destination.is_queue

    def deliver_from_queue(self, queue: Queue, entry: QueueEntry, tag: int | None) -> None:
        self.connection.send_message(self, entry, tag)

    def has_credit(self) -> bool:
        return self.connection.can_send()

    def take(self, message_id: str) -> list[tuple[str, int]]:
        """Remove and return (message-id, tag) of ``message_id`` and, in ``client`` mode,
        of every earlier message of the subscription (cumulative)."""
        if self.ack_mode != "client":
            return [(message_id, self.pending.pop(message_id))]
        taken = []
        for pending_id in self.pending:
            taken.append(pending_id)
            if pending_id == message_id:
                break
        return [(pending_id, self.pending.pop(pending_id)) for pending_id in taken]


class StompClientConnection:
    """Serves one STOMP client over one stream."""

    def __init__(self, stream: trio.abc.Stream, broker: Broker, peer: str,
                 identity: str | None = None, allow_anonymous: bool = True) -> None:
        self.stream = stream
        self.broker = broker
        self.limits = broker.limits
        self.peer = peer
        settings = broker.config.stomp
        self.conn = ServerConnection(
            heart_beat=(_ms(settings.heart_beat_send), _ms(settings.heart_beat_receive)),
            min_send_heart_beat=_ms(settings.heart_beat_min),
            max_frame_size=min(self.limits.max_packet_size, DEFAULT_MAX_FRAME_SIZE),
        )
        self.session_id = secrets.token_hex(8)
        self.login: str | None = None
        self.identity = identity  # the TLS client certificate's name, if it is the user
        self.allow_anonymous = allow_anonymous  # the listener's setting
        self.client = Client(None, self.session_id)  # for access checks, set at login
        self.host: str | None = None
        self.connected = False
        self.subscriptions: dict[str, StompSubscription] = {}
        self._unacked: dict[str, StompSubscription] = {}  # message-id -> its subscription
        self._transactions: dict[str, _Transaction] = {}
        self._transaction_bytes = 0
        self._message_count = 0
        self.throttle = PublishThrottle(self.limits.max_publish_rate, self.limits.max_publish_burst)
        self._to_dispatch: list[Queue] = []  # new consumers: dispatch after the RECEIPT
        self._starved = False  # a delivery waited for the send buffer to drain
        self.runner = ConnectionRunner(stream, broker, self, log, "stomp", self.throttle)

    @property
    def name(self) -> str:
        return f"{self.session_id} ({self.peer})"

    @property
    def pending_bytes(self) -> int:
        return self.conn.pending_bytes

    def data_to_send(self) -> bytes:
        return self.conn.data_to_send()

    async def run(self) -> None:
        await self.runner.run()

    def close_for_shutdown(self) -> None:
        """The broker is stopping: a connected client gets an ERROR saying so."""
        if self.runner.finished:
            return  # already on its way out: nothing to tell it
        if self.connected:
            self.conn.send(StompError("server shutting down").to_frame())
            self.runner.linger = True
        self.runner.ending("shutdown")
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
            if event.command in _CONNECT_COMMANDS and not self.connected:
                await self._login(event)
            if not self._handle(event):
                return False
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
        if receipt is not None and frame.command not in _CONNECT_COMMANDS:
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

    def release(self, held: list) -> None:
        """Queue_overflow "block": the backlogs this client's SENDs filled have room (or
        ``max_block_time`` passed): send the RECEIPTs withheld meanwhile."""
        for receipt, durable in held:
            self._receipt(receipt, durable)

    def _on_connect(self, frame: Frame) -> bool:
        login = frame.get("login")
        self.login = login
        self.host = frame.get("host")
        self.conn.send(self.conn.connected_frame(session=self.session_id, server=SERVER_NAME))
        self.connected = True
        send_ms, receive_ms = self.conn.heart_beat
        log.info("client %s: connected (STOMP %s, login %s, heart-beat send %dms receive %dms)",
                 self.name, self.conn.version, login or "-", send_ms, receive_ms)
        return True

    def _on_send(self, frame: Frame) -> bool:
        self.throttle.count()
        destination = self._destination(frame, subscribe=False)
        security, name = self.broker.security, destination.name
        if not (security.may_write_queue(self.client, name) if destination.is_queue
                else security.may_publish(self.client, name)):
            raise _error(frame, f"access refused: SEND to {destination.wire}")
        if not self._in_transaction(frame, lambda: self._publish(destination, frame)):
            self._publish(destination, frame)
        return True

    def _publish(self, destination: Destination, frame: Frame) -> None:
        headers = tuple((k, v) for k, v in frame.headers if k not in _RESERVED_HEADERS)
        message = Message(
            destination.name, frame.body, qos=1, content_type=frame.get("content-type"),
            headers=headers, origin_protocol="stomp", origin_client=self.session_id,
        )
        if destination.is_queue:
            queue = self.broker.queues.declare(destination.name)
            # persistent:true: recorded in the store (``persistence``), kept across a restart.
            persistent = frame.get("persistent") == "true"
            try:
                with self.broker.storing():
                    outcome = queue.offer(message, 1, persistent=persistent)
            except StoreFull:
                raise ProtocolError("message not stored: storage failure") from None
            result = PublishResult(1)
            if outcome:
                result.note(outcome, queue)
        else:
            result = self.broker.publish(message)
        if result.full is not None:
            self._hold_back(result.full)
        if result.refused and frame.get("receipt") is not None:
            # queue_overflow "drop-new": no RECEIPT for a message nobody took; STOMP's
            # only other answer is an ERROR (and the close that follows it).
            raise _error(frame, f"message to {destination.wire} dropped: queue full")

    def _hold_back(self, full: list) -> None:
        """Withhold this client's RECEIPTs and stop reading from it until the backlogs
        its message filled have room. Its own subscriptions are not waited for (it could
        not send their ACKs meanwhile): they drop new messages until they have room."""
        own = (sub.queue for sub in self.subscriptions.values())
        waiting = excluding_own(full, own, self.name, "its own subscription's queue", log)
        if waiting:
            self.runner.hold_back(waiting)

    def _on_subscribe(self, frame: Frame) -> bool:
        version = self.conn.version
        sub_id = frame.get("id")
        if sub_id is None:  # 1.0 only (the connection requires it from 1.1 on)
            sub_id = frame.get("destination")
        if sub_id in self.subscriptions:
            raise _error(frame, f"subscription id {sub_id!r} already in use [SUBSCRIBE id Header]")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise _error(frame, f"more than {MAX_SUBSCRIPTIONS} subscriptions on one connection")
        destination = self._destination(frame, subscribe=True)
        security, name = self.broker.security, destination.name
        if not (security.may_read_queue(self.client, name) if destination.is_queue
                else security.may_subscribe(self.client, name)):
            raise _error(frame, f"access refused: SUBSCRIBE to {destination.wire}")
        prefetch = _prefetch(frame)
        ack_mode = frame.get("ack", "auto")
        if destination.is_queue:
            queue = self.broker.queues.declare(destination.name)
            if queue.owner is not None:  # an AMQP exclusive queue (0-9-1: 405 for others)
                raise _error(frame, f"resource locked: {destination.wire} is exclusive to "
                                    f"another connection")
        else:
            queue = self.broker.topic_queue(f"stomp:{self.session_id}:{sub_id}", destination.name)
        sub = StompSubscription(self, sub_id, destination, ack_mode, queue)
        self.subscriptions[sub_id] = sub
        queue.add_consumer(sub, ack_required=ack_mode != "auto", prefetch=prefetch, dispatch=False)
        self._to_dispatch.append(queue)
        log.debug("client %s: subscribed %r to %s (ack %s, prefetch %d, STOMP %s)",
                  self.name, sub_id, destination.wire, ack_mode, prefetch, version)
        return True

    def _on_unsubscribe(self, frame: Frame) -> bool:
        sub_id = frame.get("id")
        if sub_id is not None:
            sub = self.subscriptions.get(sub_id)
        else:  # 1.0 may name the destination instead
            wire = frame.get("destination")
            sub = next((s for s in self.subscriptions.values() if s.destination.wire == wire), None)
        if sub is None:
            raise _error(frame, f"no subscription {sub_id or frame.get('destination')!r} "
                                "to remove [UNSUBSCRIBE]")
        del self.subscriptions[sub.id]
        self._cancel(sub)
        return True

    def _cancel(self, sub: StompSubscription) -> None:
        """End a subscription: its unacknowledged messages go back to the queue."""
        for message_id in sub.pending:
            self._unacked.pop(message_id, None)
        sub.pending.clear()
        if sub.private:
            self.broker.end_topic_queue(sub.destination.name, sub.queue)
        sub.queue.remove_consumer(sub, requeue=not sub.private)

    def _on_ack(self, frame: Frame) -> bool:
        return self._acknowledge(frame, True)

    def _on_nack(self, frame: Frame) -> bool:
        return self._acknowledge(frame, False)

    def _acknowledge(self, frame: Frame, positive: bool) -> bool:
        command = frame.command
        version = self.conn.version
        id_header = "id" if version == V1_2 else "message-id"
        message_id = frame.get(id_header)
        sub = self._unacked.get(message_id)
        if sub is None:
            raise _error(frame, f"{command} of {id_header} {message_id!r}: no such message "
                                f"awaits acknowledgement [{command}]")
        named = frame.get("subscription")
        if version != V1_2 and named is not None and named != sub.id:
            raise _error(frame, f"{command}: message {message_id!r} did not come through "
                                f"subscription {named!r} [{command}]")
        requeue = frame.get("requeue", "true") != "false"
        action = lambda: self._settle(sub, message_id, positive, requeue)  # noqa: E731
        if not self._in_transaction(frame, action):
            action()
        return True

    def _settle(self, sub: StompSubscription, message_id: str, positive: bool,
                requeue: bool) -> None:
        if message_id not in sub.pending:
            return  # settled since (a transaction's ACK after a cumulative one)
        tags = []
        for pending_id, tag in sub.take(message_id):  # cumulative in client mode
            del self._unacked[pending_id]
            tags.append(tag)
        if positive:
            sub.queue.ack_many(tags)
        else:
            sub.queue.nack_many(tags, requeue=requeue)

    # -- transactions ---------------------------------------------------------------------

    def _in_transaction(self, frame: Frame, action) -> bool:
        """Buffer ``action`` in the frame's transaction; False if it names none."""
        name = frame.get("transaction")
        if name is None:
            return False
        transaction = self._transactions.get(name)
        if transaction is None:
            raise _error(frame, f"{frame.command} in unknown transaction {name!r} [BEGIN]")
        size = len(frame.body)
        if (len(transaction.actions) >= MAX_TRANSACTION_FRAMES
                or self._transaction_bytes + size > MAX_TRANSACTION_BYTES):
            raise _error(frame, f"transaction {name!r} too large [Size Limits]")
        transaction.actions.append(action)
        transaction.size += size
        self._transaction_bytes += size
        return True

    def _on_begin(self, frame: Frame) -> bool:
        name = frame.get("transaction")
        if name in self._transactions:
            raise _error(frame, f"transaction {name!r} already begun [BEGIN]")
        if len(self._transactions) >= MAX_TRANSACTIONS:
            raise _error(frame, f"more than {MAX_TRANSACTIONS} open transactions")
        self._transactions[name] = _Transaction()
        return True

    def _on_commit(self, frame: Frame) -> bool:
        for action in self._end_transaction(frame).actions:
            action()
        return True

    def _on_abort(self, frame: Frame) -> bool:
        self._end_transaction(frame)
        return True

    def _end_transaction(self, frame: Frame) -> _Transaction:
        name = frame.get("transaction")
        transaction = self._transactions.pop(name, None)
        if transaction is None:
            raise _error(frame, f"{frame.command} of unknown transaction {name!r} "
                                f"[{frame.command}]")
        self._transaction_bytes -= transaction.size
        return transaction

    def _on_disconnect(self, frame: Frame) -> bool:
        self.runner.ending("client_disconnect")
        self.runner.linger = True
        return False

    # -- deliveries to the client ---------------------------------------------------------

    def can_send(self) -> bool:
        """Whether a delivery may be written now; when not, the queues wait for the
        writer to drain the buffer (``sent``)."""
        if self.runner.finished:
            return False
        if self.conn.pending_bytes < self.limits.max_outgoing_bytes:
            return True
        self._starved = True
        return False

    def sent(self) -> None:
        if self._starved:
            self._starved = False
            for sub in list(self.subscriptions.values()):
                sub.queue.dispatch()

    def send_message(self, sub: StompSubscription, entry: QueueEntry, tag: int | None) -> None:
        """Write one MESSAGE frame (the queue's consumer callback)."""
        self._message_count += 1
        message_id = f"{self.session_id}-{self._message_count}"
        message = entry.message
        destination = sub.destination.wire if sub.destination.is_queue else topic_destination(
            message.topic)
        headers = _message_headers(message)
        if entry.redelivered:
            headers = _REDELIVERED + headers
        ack = message_id if tag is not None and self.conn.version == V1_2 else None
        data = self._encode(destination, message_id, sub.id, headers, message.payload, ack)
        if data is None:
            log.warning("client %s: message to %s dropped: STOMP %s cannot carry its "
                        "destination", self.name, destination, self.conn.version)
            if tag is not None:
                sub.queue.ack(tag)
            return
        self.conn.send_bytes(data)
        if tag is not None:
            sub.pending[message_id] = tag
            self._unacked[message_id] = sub
        self.runner.wake()

    def _encode(self, destination: str, message_id: str, sub_id: str,
                headers: tuple[tuple[str, str], ...], body: bytes, ack: str | None) -> bytes | None:
        version = self.conn.version
        try:
            return encode_message(destination, message_id, sub_id, headers, body, version, ack)
        except ValueError:
            pass
        # A header this version cannot carry (LF in 1.0, CR in 1.1): leave it out.
        headers = tuple(h for h in headers if _encodable(h, version))
        try:
            return encode_message(destination, message_id, sub_id, headers, body, version, ack)
        except ValueError:
            return None

    def _destination(self, frame: Frame, *, subscribe: bool) -> Destination:
        try:
            return parse_destination(frame.get("destination"), subscribe=subscribe)
        except DestinationError as exc:
            raise _error(frame, f"{frame.command}: {exc}") from None


def _error(frame: Frame, message: str) -> ProtocolError:
    """The error for a frame at fault, carrying its receipt ("ERROR")."""
    return ProtocolError(message, receipt_id=frame.get("receipt"))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _prefetch(frame: Frame) -> int:
    for name in PREFETCH_HEADERS:
        value = frame.get(name)
        if value is None:
            continue
        if not (value.isascii() and value.isdigit()) or int(value) > MAX_PREFETCH:
            raise _error(frame, f"invalid {name} header {value[:20]!r}")
        return int(value)
    return 0


def _message_headers(message: Message) -> tuple[tuple[str, str], ...]:
    """A message's headers as a MESSAGE frame carries them, computed once per message."""
    headers = message.wire_cache.get("stomp-headers")
    if headers is None:
        pairs = [(k, v) for k, v in message.headers if k and k not in _RESERVED_HEADERS]
        if message.content_type is not None:
            pairs.insert(0, ("content-type", message.content_type))
        headers = message.wire_cache["stomp-headers"] = tuple(pairs)
    return headers


def _encodable(header: tuple[str, str], version: str) -> bool:
    try:
        encode_frame(Frame("SEND", (header,)), version)
    except ValueError:
        return False
    return True


_HANDLERS = {
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

"""One STOMP client connection's state, its subscriptions, and what every concern uses."""

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ... import __version__
from ...auth import Client
from ...broker import Broker
from ...destinations import Destination, DestinationError, parse_destination
from ...limits import PublishThrottle
from ...protocols.stomp import DEFAULT_MAX_FRAME_SIZE, Frame, ProtocolError, ServerConnection
from ...queues import Queue, QueueEntry
from ..runner import ConnectionRunner

log = logging.getLogger("polybroker.stomp")

SERVER_NAME = f"polybroker/{__version__}"

# Headers STOMP uses for itself: not taken from a SEND into the message, nor from a
# message's headers into a MESSAGE (content-type travels as Message.content_type).
RESERVED_HEADERS = frozenset((
    "destination", "content-length", "content-type", "receipt", "transaction",
    "message-id", "subscription", "ack", "redelivered",
))
CONNECT_COMMANDS = ("CONNECT", "STOMP")


@dataclass(eq=False, slots=True)
class Transaction:
    actions: list[Callable[[], None]] = field(default_factory=list)
    size: int = 0  # SEND body bytes buffered


class StompSubscription:
    """One SUBSCRIBE of one connection: a consumer of its queue."""

    __slots__ = ("ack_mode", "connection", "destination", "id", "pending", "queue")

    def __init__(
        self,
        connection: "SubscriptionLink",
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


class SubscriptionLink(Protocol):
    """What a subscription uses of its connection."""

    def send_message(self, sub: "StompSubscription", entry: QueueEntry,
                     tag: int | None) -> None: ...

    def can_send(self) -> bool: ...


class ClientState:
    """What one STOMP client connection holds; the concerns (``send``, ``subscribe``,
    ``transactions``, ``consumer``) extend it, ``connection`` joins them into
    ``StompClientConnection``."""

    runner: ConnectionRunner  # made by StompClientConnection, the runner's handler

    def __init__(self, stream: trio.abc.Stream, broker: Broker, peer: str,
                 identity: str | None = None, allow_anonymous: bool = True) -> None:
        self.stream = stream
        self.broker = broker
        self.limits = broker.limits
        self.peer = peer
        settings = broker.config.stomp
        self.conn = ServerConnection(
            heart_beat=(ms(settings.heart_beat_send), ms(settings.heart_beat_receive)),
            min_send_heart_beat=ms(settings.heart_beat_min),
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
        self._transactions: dict[str, Transaction] = {}
        self._transaction_bytes = 0
        self._message_count = 0
        # max_publish_rate; None when there is none (the runner then has nothing to wait
        # for between two reads).
        limits = self.limits
        self.throttle = (PublishThrottle(limits.max_publish_rate, limits.max_publish_burst)
                         if limits.max_publish_rate > 0 else None)
        self._to_dispatch: list[Queue] = []  # new consumers: dispatch after the RECEIPT
        self._starved = False  # a delivery waited for the send buffer to drain

    @property
    def name(self) -> str:
        return f"{self.session_id} ({self.peer})"

    def _destination(self, frame: Frame, *, subscribe: bool) -> Destination:
        try:
            # The codec requires the header on SEND and SUBSCRIBE.
            return parse_destination(frame.get("destination", ""), subscribe=subscribe)
        except DestinationError as exc:
            raise error(frame, f"{frame.command}: {exc}") from None


def error(frame: Frame, message: str) -> ProtocolError:
    """The error for a frame at fault, carrying its receipt ("ERROR")."""
    return ProtocolError(message, receipt_id=frame.get("receipt"))


def ms(seconds: float) -> int:
    return round(seconds * 1000)



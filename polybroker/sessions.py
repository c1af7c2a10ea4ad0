"""Sessions: per-client state that outlives a connection, with the QoS delivery engine.

Outbound rules (one session, any protocol adapter on the other side):
- QoS 1/2 take a packet id and enter the in-flight window; beyond it they wait in
  ``queued`` in arrival order. The window is the smaller of ``max_inflight_messages``
  and what the client accepts (MQTT 5.0 Receive Maximum).
- QoS 0 goes straight to the connection, unless messages already wait in ``queued``:
  then it waits behind them, so the client sees messages in the order they came.
  While offline, QoS 0 is not kept.
- ``queued`` is bounded by ``max_queued_messages`` and its payload bytes by
  ``max_queued_bytes``; when full the *new* message is dropped for this session and
  counted (policy "drop new", as Mosquitto does).
- A message whose expiry deadline has passed is dropped instead of sent.
- QoS 1: PUBLISH -> PUBACK frees the slot. QoS 2: PUBLISH -> PUBREC, we send PUBREL
  -> PUBCOMP frees the slot.
- On reconnect every in-flight message is resent in order: PUBLISH with DUP for those
  not yet acknowledged, PUBREL for those already received [MQTT-4.4.0-1].
Inbound QoS 2 ids live in ``inbound_qos2`` from PUBLISH until PUBREL, so a resent
PUBLISH (DUP) is acknowledged but not routed again.

A persistent session has a ``journal`` (``persistence``) that it tells about every QoS 1/2
message it keeps, sends, releases and forgets; the journal may refuse to keep one more
(the session's stored-message bounds), which drops it like a full queue does.
"""

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .config import Limits
from .message import Message

if TYPE_CHECKING:
    from .persistence import SessionJournal
    from .shared import SharedGroup
    from .timers import TimerHandle

log = logging.getLogger("polybroker.sessions")

MAX_PACKET_ID = 65535
NEVER_EXPIRES = 0xFFFFFFFF


class SessionLink(Protocol):
    """The connection side of a session; each protocol adapter implements it."""

    def send_publish(self, delivery: "Delivery", packet_id: int | None, dup: bool) -> bool:
        """Write a PUBLISH; False if the client cannot take it (too large: drop it)."""

    def send_pubrel(self, packet_id: int) -> None: ...

    def session_taken_over(self) -> None:
        """Another connection took this session: close this one. Like any close without
        DISCONNECT, it publishes the connection's will (MQTT 5.0 says the same for a
        Will Delay of 0, the only delay 3.1.1 knows)."""


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    subscription_id: int | None = None


@dataclass(slots=True)
class Delivery:
    """A message on its way to one session, at the QoS it is delivered with."""

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    group: "SharedGroup | None" = None  # set when it came through a shared subscription
    released: bool = False  # QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP
    store_id: int = 0  # the record keeping it in a persistent session's journal (0: none)


class Session:
    """One client's session: subscriptions, in-flight window and queued messages."""

    __slots__ = (
        "_inbound_qos2",
        "_next_id",
        "_queued",
        "client_id",
        "clock",
        "dropped",
        "expiry_interval",
        "expiry_timer",
        "inflight",
        "journal",
        "limits",
        "link",
        "queued_bytes",
        "receive_maximum",
        "subscriptions",
        "will_timer",
    )

    def __init__(
        self, client_id: str, limits: Limits, clock: Callable[[], float], expiry_interval: int
    ) -> None:
        self.client_id = client_id
        self.limits = limits
        self.clock = clock
        # Seconds the session outlives its connection; NEVER_EXPIRES for ever (3.1.1
        # clean session 0), 0 to end with the connection (clean session 1).
        self.expiry_interval = expiry_interval
        self.expiry_timer: TimerHandle | None = None
        self.will_timer: TimerHandle | None = None
        self.subscriptions: dict[str, SubscriptionOptions] = {}
        self.link: SessionLink | None = None
        self.receive_maximum = limits.max_inflight_messages
        self.inflight: dict[int, Delivery] = {}  # insertion order is send order
        self.queued_bytes = 0  # payload bytes in ``queued``
        # Made on first use (``queued``, ``inbound_qos2``): most sessions never need them,
        # and an empty deque alone takes over 600 bytes.
        self._queued: deque[Delivery] | None = None
        self._inbound_qos2: set[int] | None = None
        self.journal: SessionJournal | None = None  # set while the session is persistent
        self.dropped = 0
        self._next_id = 1

    def __repr__(self) -> str:
        return f"Session({self.client_id!r})"

    @property
    def queued(self) -> deque[Delivery]:
        """Messages waiting behind the in-flight window (or for the client), in order."""
        queued = self._queued
        if queued is None:
            queued = self._queued = deque()
        return queued

    @queued.setter
    def queued(self, queued: deque[Delivery]) -> None:
        self._queued = queued

    @property
    def inbound_qos2(self) -> set[int]:
        """Packet ids of QoS 2 messages received and not yet released (PUBREL)."""
        inbound = self._inbound_qos2
        if inbound is None:
            inbound = self._inbound_qos2 = set()
        return inbound

    @inbound_qos2.setter
    def inbound_qos2(self, inbound: set[int]) -> None:
        self._inbound_qos2 = inbound

    # -- delivery to the client -------------------------------------------------------

    def deliver(
        self,
        message: Message,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...] = (),
        group: "SharedGroup | None" = None,
    ) -> None:
        """Deliver at ``qos`` (already downgraded to the granted QoS)."""
        link = self.link
        if link is None:
            if qos:  # QoS 0 is not kept for an offline client
                self._enqueue(Delivery(message, qos, retain, subscription_ids, group))
        elif self._queued or (qos and len(self.inflight) >= self.receive_maximum):
            self._enqueue(Delivery(message, qos, retain, subscription_ids, group))
        else:
            self._send(link, Delivery(message, qos, retain, subscription_ids, group))

    def _enqueue(self, delivery: Delivery) -> None:
        journal = self.journal
        limits = self.limits
        size = len(delivery.message.payload)
        queued = self.queued
        if (
            len(queued) < limits.max_queued_messages
            and self.queued_bytes + size <= limits.max_queued_bytes
            and (journal is None or not delivery.qos or journal.message_added(delivery))
        ):
            queued.append(delivery)
            self.queued_bytes += size
            return
        self._drop_new()

    def restore_queued(self, delivery: Delivery) -> None:
        """Put back a message queued before a restart (no bounds: it was admitted then)."""
        self.queued.append(delivery)
        self.queued_bytes += len(delivery.message.payload)

    def _drop_new(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "client %s: queue full (%d messages, %d bytes queued, or the stored-message "
                "limit), dropped %d message(s) so far",
                self.client_id, len(self._queued or ()), self.queued_bytes, self.dropped,
            )

    def _send(self, link: SessionLink, delivery: Delivery) -> None:
        expiry = delivery.message.expiry
        if expiry is not None and expiry <= self.clock():
            self._forget(delivery)
            return  # expired while waiting: not delivered (MQTT 5.0 [MQTT-3.3.2-5])
        if not delivery.qos:
            link.send_publish(delivery, None, False)
            return
        packet_id = self._allocate_packet_id()
        journal = self.journal
        if journal is not None and not journal.message_sent(delivery, packet_id):
            self._drop_new()
            return
        if link.send_publish(delivery, packet_id, False):
            self.inflight[packet_id] = delivery
        else:
            self._forget(delivery)

    def _forget(self, delivery: Delivery) -> None:
        """The message is done with (acknowledged, expired or refused): unrecord it."""
        if delivery.store_id and self.journal is not None:
            self.journal.message_removed(delivery)

    def _allocate_packet_id(self) -> int:
        # The window is far smaller than the id space, so a free id is always near.
        packet_id = self._next_id
        while packet_id in self.inflight:
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        return packet_id

    def _fill_window(self) -> None:
        link = self.link
        queued = self._queued
        while link is not None and queued and (
            queued[0].qos == 0 or len(self.inflight) < self.receive_maximum
        ):
            delivery = queued.popleft()
            self.queued_bytes -= len(delivery.message.payload)
            self._send(link, delivery)

    # -- acknowledgements from the client ---------------------------------------------

    def puback(self, packet_id: int) -> bool:
        delivery = self.inflight.get(packet_id)
        if delivery is None or delivery.qos != 1:
            return False
        del self.inflight[packet_id]
        self._forget(delivery)
        self._fill_window()
        return True

    def pubrec(self, packet_id: int) -> bool:
        """Mark a QoS 2 message received; the caller answers with PUBREL."""
        delivery = self.inflight.get(packet_id)
        if delivery is None or delivery.qos != 2:
            return False
        delivery.released = True
        if self.journal is not None:
            self.journal.message_released(delivery, packet_id)
        return True

    def pubcomp(self, packet_id: int) -> bool:
        delivery = self.inflight.get(packet_id)
        if delivery is None or not delivery.released:
            return False
        del self.inflight[packet_id]
        self._forget(delivery)
        self._fill_window()
        return True

    def drop_inflight(self, packet_id: int) -> None:
        """The client refused a message (MQTT 5.0 PUBACK/PUBREC reason >= 0x80)."""
        delivery = self.inflight.pop(packet_id, None)
        if delivery is not None:
            self._forget(delivery)
            self._fill_window()

    # -- connection life cycle ---------------------------------------------------------

    def attach(self, link: SessionLink) -> None:
        """Bind a connection and resend what is unacknowledged [MQTT-4.4.0-1]."""
        self.link = link
        for packet_id, delivery in list(self.inflight.items()):
            if delivery.released:
                link.send_pubrel(packet_id)
            elif not link.send_publish(delivery, packet_id, True):
                del self.inflight[packet_id]
                self._forget(delivery)
        self._fill_window()

    def detach(self) -> None:
        self.link = None

    def take_shared_deliveries(self) -> list[Delivery]:
        """Remove and return what came through shared subscriptions and may go to another
        member: everything still queued, and QoS 1 messages sent but not acknowledged.
        A QoS 2 message once sent is completed with this client only [MQTT-4.8.2-4, -5]."""
        def movable(d: Delivery) -> bool:
            return d.group is not None and d.qos == 1

        taken = [d for d in self.inflight.values() if movable(d)]
        self.inflight = {pid: d for pid, d in self.inflight.items() if not movable(d)}
        taken.extend(d for d in self.queued if d.group is not None)
        self.queued = deque(d for d in self.queued if d.group is None)
        self.queued_bytes = sum(len(d.message.payload) for d in self.queued)
        for delivery in taken:
            self._forget(delivery)
        return taken

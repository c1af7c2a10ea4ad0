"""Sessions: per-client state that outlives a connection, with the QoS delivery engine.

Outbound rules (one session, any protocol adapter on the other side):
- QoS 1/2 take a packet id and enter the in-flight window; beyond it they wait in
  ``queued`` in arrival order. The window is the smaller of ``max_inflight_messages``
  and what the client accepts (MQTT 5.0 Receive Maximum).
- QoS 0 goes straight to the connection, unless messages already wait in ``queued``:
  then it waits behind them, so the client sees messages in the order they came.
  While offline, QoS 0 is not kept.
- ``queued`` is bounded by ``max_queued_messages`` and its payload bytes by
  ``max_queued_bytes``; a persistent session (with a ``journal``) lives on disk and is
  bounded by its stored bounds instead (``storage.max_stored_*_per_session``, counting
  in-flight messages too). When full, ``limits.queue_overflow`` applies (``overflow``):
  ``block`` takes a QoS 1/2 message over the bound and ``deliver`` says HELD, so that
  its publisher waits for ``room()``; ``drop-new`` drops the new message (DROPPED);
  ``drop-oldest`` drops the oldest queued one. QoS 0 over the bound is dropped under
  every policy (no promise was made for it). Every drop is counted per reason
  (``drops``) and in the broker's totals.
- A message whose expiry deadline has passed is dropped instead of sent.
- QoS 1: PUBLISH -> PUBACK frees the slot. QoS 2: PUBLISH -> PUBREC, we send PUBREL
  -> PUBCOMP frees the slot.
- On reconnect every in-flight message is resent in order: PUBLISH with DUP for those
  not yet acknowledged, PUBREL for those already received [MQTT-4.4.0-1].
Inbound QoS 2 ids live in ``inbound_qos2`` from PUBLISH until PUBREL, so a resent
PUBLISH (DUP) is acknowledged but not routed again.

A persistent session has a ``journal`` (``persistence``) that it tells about every QoS 1/2
message it keeps, sends, releases and forgets; the session asks it whether one more fits
(the session's stored-message bounds) before queueing.
"""

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from .config import Limits
from .message import Message
from .overflow import (
    BLOCK,
    DROP_OLDEST,
    DROPPED,
    DROPPED_OLDEST,
    EXPIRED,
    HELD,
    QUEUE_FULL,
    STORED_BOUND,
    TAKEN,
    TOO_LARGE,
    DropCounter,
    RoomSignal,
)

if TYPE_CHECKING:
    from .timers import TimerHandle

log = logging.getLogger("polybroker.sessions")

# Client ids of sessions the broker holds for itself (a bridge's backlog: ``$bridge/NAME``);
# a client asking for one is refused.
RESERVED_CLIENT_ID_PREFIX = "$bridge/"
MAX_PACKET_ID = 65535
NEVER_EXPIRES = 0xFFFFFFFF
# Session._blocking: publishers may wait for room; they waited too long (drop new
# messages until there is room); the session is gone (nobody waits for it any more).
_MAY_BLOCK, _GAVE_UP, _GONE = 0, 1, 2


class SessionLink(Protocol):
    """The connection side of a session; each protocol adapter implements it."""

    def send_publish(self, delivery: "Delivery", packet_id: int | None, dup: bool) -> bool:
        """Write a PUBLISH; False if the client cannot take it (too large: drop it)."""

    def send_pubrel(self, packet_id: int) -> None: ...

    def session_taken_over(self) -> None:
        """Another connection took this session: close this one. Like any close without
        DISCONNECT, it publishes the connection's will (MQTT 5.0 says the same for a
        Will Delay of 0, the only delay 3.1.1 knows)."""


class SessionStore(Protocol):
    """A persistent session's records (``persistence.SessionJournal``): every QoS 1/2
    message queued or in flight for it, within the session's stored bounds."""

    count: int  # messages stored
    nbytes: int  # their payload bytes
    max_messages: int  # the bounds of those two
    max_bytes: int

    def has_room(self, size: int) -> bool:
        """Whether one more message of ``size`` payload bytes is within the bounds."""

    def tighten_bounds(self, max_messages: int, max_bytes: int) -> None:
        """Bounds of the session's own (a bridge's backlog), within the store's."""

    def message_added(self, delivery: "Delivery") -> None: ...

    def message_sent(self, delivery: "Delivery", packet_id: int) -> bool:
        """Record it before it goes out with ``packet_id``; False: over the bounds."""

    def message_released(self, delivery: "Delivery", packet_id: int) -> None: ...

    def message_removed(self, delivery: "Delivery") -> None: ...


class Group(Protocol):
    """A shared subscription a delivery came through (``shared.SharedGroup``)."""

    name: str
    topic_filter: str

    def choose(self, exclude: "Session | None" = None) -> "Session | None": ...

    def deliver_to(self, member: "Session", message: Message) -> int: ...


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
    group: "Group | None" = None  # set when it came through a shared subscription
    released: bool = False  # QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP
    store_id: int = 0  # the record keeping it in a persistent session's journal (0: none)


class Session(RoomSignal):
    """One client's session: subscriptions, in-flight window and queued messages."""

    __slots__ = (
        "_blocking",
        "_drops",
        "_inbound_qos2",
        "_next_id",
        "_queued",
        "client_id",
        "clock",
        "drop_totals",
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
        self, client_id: str, limits: Limits, clock: Callable[[], float], expiry_interval: int,
        drop_totals: Counter[str] | None = None,
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
        self.journal: SessionStore | None = None  # set while the session is persistent
        # Drops per reason, made at the first; ``drop_totals`` is the broker's count.
        self._drops: DropCounter | None = None
        self.drop_totals = drop_totals
        self._room: trio.Event | None = None  # made when a publisher waits for room
        self._blocking = _MAY_BLOCK
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
        group: "Group | None" = None,
    ) -> int:
        """Deliver at ``qos`` (already downgraded to the granted QoS). Returns TAKEN,
        HELD (taken; the session is full now: a blocking publisher waits for ``room``)
        or DROPPED (the session was full: not taken)."""
        link = self.link
        if link is None:
            if qos:  # QoS 0 is not kept for an offline client
                return self._enqueue(Delivery(message, qos, retain, subscription_ids, group))
        elif self._queued or (qos and (
            len(self.inflight) >= self.receive_maximum
            # The stored bounds, when the in-flight window alone fills them (they are
            # smaller than it): the policy applies, as for a full queue.
            or (self.journal is not None and not self.journal.has_room(len(message.payload)))
        )):
            return self._enqueue(Delivery(message, qos, retain, subscription_ids, group))
        else:
            self._send(link, Delivery(message, qos, retain, subscription_ids, group))
        return TAKEN

    def _enqueue(self, delivery: Delivery) -> int:
        size = len(delivery.message.payload)
        outcome = TAKEN
        if not self._fits(size):
            policy = self.limits.queue_overflow
            if policy == BLOCK and delivery.qos and self._blocking == _MAY_BLOCK:
                outcome = HELD  # taken over the bound: its publisher waits
            elif policy != DROP_OLDEST or not self._drop_oldest(size):
                self.count_drop(QUEUE_FULL if self.journal is None else STORED_BOUND)
                return DROPPED
        journal = self.journal
        if journal is not None and delivery.qos:
            journal.message_added(delivery)
        self.queued.append(delivery)
        self.queued_bytes += size
        if outcome == TAKEN and self.limits.queue_overflow == BLOCK and not self.has_room():
            outcome = HELD  # it took the last place: the next one would go over
        return outcome

    def _fits(self, size: int) -> bool:
        """Whether one more queued message of ``size`` payload bytes is within bounds."""
        journal = self.journal
        if journal is None:
            limits = self.limits
            return (len(self._queued or ()) < limits.max_queued_messages
                    and self.queued_bytes + size <= limits.max_queued_bytes)
        # On disk: the stored bounds, which count in-flight messages too. They bound the
        # QoS 0 messages waiting behind the others as well.
        return (journal.has_room(size)
                and len(self._queued or ()) < journal.max_messages)

    def has_room(self) -> bool:
        """Whether a message can be queued without going over a bound (or the session
        is gone)."""
        return self._blocking == _GONE or self._fits(1)

    @property
    def backlog(self) -> "Session":
        """What a blocked publisher waits for (``overflow.Backlog``): the session itself."""
        return self

    def give_up_blocking(self) -> None:
        """Publishers waited ``max_block_time`` (the caller logs it): drop new messages
        until there is room."""
        if self._blocking == _MAY_BLOCK:
            self._blocking = _GAVE_UP

    def end_blocking(self) -> None:
        """The session is gone: wake whoever waits for it."""
        self._blocking = _GONE
        self._signal_room()

    def _signal_room(self) -> None:
        """Called as the backlog shrinks: wake waiting publishers once there is room."""
        if (self._room is not None or self._blocking == _GAVE_UP) and self.has_room():
            if self._room is not None:
                self._room.set()
                self._room = None
            if self._blocking == _GAVE_UP:
                self._blocking = _MAY_BLOCK

    def _drop_oldest(self, size: int) -> bool:
        """Drop the oldest queued messages until ``size`` more bytes fit; False if even
        an empty queue would not (the in-flight ones fill the stored bounds)."""
        queued = self._queued
        while queued and not self._fits(size):
            oldest = queued.popleft()
            self.queued_bytes -= len(oldest.message.payload)
            self._forget(oldest)
            self.count_drop(DROPPED_OLDEST)
        return self._fits(size)

    def restore_queued(self, delivery: Delivery) -> None:
        """Put back a message queued before a restart (no bounds: it was admitted then)."""
        self.queued.append(delivery)
        self.queued_bytes += len(delivery.message.payload)

    @property
    def drops(self) -> Counter[str]:
        """Messages dropped for this session, per reason."""
        return Counter() if self._drops is None else self._drops.counts

    @property
    def dropped(self) -> int:
        """Messages dropped for this session, all reasons."""
        return 0 if self._drops is None else self._drops.counts.total()

    def count_drop(self, reason: str) -> None:
        """A message for this session was dropped: count it (and log the first and every
        1000th)."""
        drops = self._drops
        if drops is None:
            drops = self._drops = DropCounter(self.drop_totals)
        if drops.add(reason):
            log.warning("client %s: message dropped (%s; %s); dropped so far: %s",
                        self.client_id, reason, self._bounds(), drops.summary())

    def _bounds(self) -> str:
        queued = f"{len(self._queued or ())} messages, {self.queued_bytes} bytes queued"
        journal = self.journal
        if journal is None:
            return queued
        return f"{queued}, {journal.count} messages, {journal.nbytes} bytes stored"

    def _send(self, link: SessionLink, delivery: Delivery) -> None:
        expiry = delivery.message.expiry
        if expiry is not None and expiry <= self.clock():
            self._forget(delivery)
            self.count_drop(EXPIRED)
            return  # expired while waiting: not delivered (MQTT 5.0 [MQTT-3.3.2-5])
        if not delivery.qos:
            link.send_publish(delivery, None, False)
            return
        packet_id = self._allocate_packet_id()
        journal = self.journal
        if journal is not None and not journal.message_sent(delivery, packet_id):
            self.count_drop(STORED_BOUND)
            return
        if link.send_publish(delivery, packet_id, False):
            self.inflight[packet_id] = delivery
        else:
            self._forget(delivery)
            self.count_drop(TOO_LARGE)

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
        if self._room is not None or self._blocking:
            self._signal_room()

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
                self.count_drop(TOO_LARGE)
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
        self._signal_room()
        return taken

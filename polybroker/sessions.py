"""Sessions: per-client state that outlives a connection, with the QoS delivery engine.

Outbound rules (one session, any protocol adapter on the other side):
- QoS 1/2 take a packet id and enter the in-flight window (``max_inflight_messages``);
  beyond it they wait in ``queued`` in arrival order.
- QoS 0 goes straight to the connection, unless messages already wait in ``queued``:
  then it waits behind them, so the client sees messages in the order they came.
  While offline, QoS 0 is not kept.
- ``queued`` is bounded by ``max_queued_messages``; when full the *new* message is
  dropped for this session and counted (policy "drop new", as Mosquitto does).
- QoS 1: PUBLISH -> PUBACK frees the slot. QoS 2: PUBLISH -> PUBREC, we send PUBREL
  -> PUBCOMP frees the slot.
- On reconnect every in-flight message is resent in order: PUBLISH with DUP for those
  not yet acknowledged, PUBREL for those already received [MQTT-4.4.0-1].
Inbound QoS 2 ids live in ``inbound_qos2`` from PUBLISH until PUBREL, so a resent
PUBLISH (DUP) is acknowledged but not routed again.
"""

import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .config import Limits
from .message import Message

log = logging.getLogger("polybroker.sessions")

MAX_PACKET_ID = 65535


class SessionLink(Protocol):
    """The connection side of a session; each protocol adapter implements it."""

    def send_publish(
        self, message: Message, qos: int, packet_id: int | None, retain: bool, dup: bool
    ) -> None: ...

    def send_pubrel(self, packet_id: int) -> None: ...

    def session_taken_over(self) -> None:
        """Another connection took this session: close this one. Like any close without
        DISCONNECT, it publishes the connection's will (MQTT 5.0 says the same for a
        Will Delay of 0, the only delay 3.1.1 knows)."""


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    qos: int


@dataclass(slots=True)
class Inflight:
    message: Message
    qos: int
    retain: bool
    released: bool = False  # QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP


class Session:
    """One client's session: subscriptions, in-flight window and queued messages."""

    __slots__ = (
        "_next_id",
        "client_id",
        "dropped",
        "inbound_qos2",
        "inflight",
        "limits",
        "link",
        "persistent",
        "queued",
        "subscriptions",
    )

    def __init__(self, client_id: str, persistent: bool, limits: Limits) -> None:
        self.client_id = client_id
        self.persistent = persistent
        self.limits = limits
        self.subscriptions: dict[str, SubscriptionOptions] = {}
        self.link: SessionLink | None = None
        self.inflight: dict[int, Inflight] = {}  # insertion order is send order
        self.queued: deque[tuple[Message, int, bool]] = deque()
        self.inbound_qos2: set[int] = set()
        self.dropped = 0
        self._next_id = 1

    def __repr__(self) -> str:
        return f"Session({self.client_id!r})"

    # -- delivery to the client -------------------------------------------------------

    def deliver(self, message: Message, qos: int, retain: bool) -> None:
        """Deliver at ``qos`` (already downgraded to the granted QoS)."""
        link = self.link
        if link is None:
            if qos:  # QoS 0 is not kept for an offline client
                self._enqueue(message, qos, retain)
        elif self.queued:
            self._enqueue(message, qos, retain)  # behind what waits, to keep the order
        elif qos == 0:
            link.send_publish(message, 0, None, retain, False)
        elif len(self.inflight) < self.limits.max_inflight_messages:
            self._send_new(link, message, qos, retain)
        else:
            self._enqueue(message, qos, retain)

    def _enqueue(self, message: Message, qos: int, retain: bool) -> None:
        if len(self.queued) < self.limits.max_queued_messages:
            self.queued.append((message, qos, retain))
            return
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "client %s: queue full (%d messages), dropped %d message(s) so far",
                self.client_id, len(self.queued), self.dropped,
            )

    def _send_new(self, link: SessionLink, message: Message, qos: int, retain: bool) -> None:
        packet_id = self._allocate_packet_id()
        self.inflight[packet_id] = Inflight(message, qos, retain)
        link.send_publish(message, qos, packet_id, retain, False)

    def _allocate_packet_id(self) -> int:
        # The window is far smaller than the id space, so a free id is always near.
        packet_id = self._next_id
        while packet_id in self.inflight:
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        return packet_id

    def _fill_window(self) -> None:
        link = self.link
        limit = self.limits.max_inflight_messages
        queued = self.queued
        while link is not None and queued and (queued[0][1] == 0 or len(self.inflight) < limit):
            message, qos, retain = queued.popleft()
            if qos:
                self._send_new(link, message, qos, retain)
            else:
                link.send_publish(message, 0, None, retain, False)

    # -- acknowledgements from the client ---------------------------------------------

    def puback(self, packet_id: int) -> bool:
        entry = self.inflight.get(packet_id)
        if entry is None or entry.qos != 1:
            return False
        del self.inflight[packet_id]
        self._fill_window()
        return True

    def pubrec(self, packet_id: int) -> bool:
        """Mark a QoS 2 message received; the caller's link gets the PUBREL."""
        entry = self.inflight.get(packet_id)
        known = entry is not None and entry.qos == 2
        if known:
            entry.released = True
        # A PUBREC for an id we no longer hold still gets a PUBREL, so the client
        # can finish its side of the flow instead of waiting forever.
        if self.link is not None:
            self.link.send_pubrel(packet_id)
        return known

    def pubcomp(self, packet_id: int) -> bool:
        entry = self.inflight.get(packet_id)
        if entry is None or not entry.released:
            return False
        del self.inflight[packet_id]
        self._fill_window()
        return True

    # -- connection life cycle ---------------------------------------------------------

    def attach(self, link: SessionLink) -> None:
        """Bind a connection and resend what is unacknowledged [MQTT-4.4.0-1]."""
        self.link = link
        for packet_id, entry in list(self.inflight.items()):
            if entry.released:
                link.send_pubrel(packet_id)
            else:
                link.send_publish(entry.message, entry.qos, packet_id, entry.retain, True)
        self._fill_window()

    def detach(self) -> None:
        self.link = None

"""The journals over the store: ``StoreJournal`` records the core's state changes as they
happen, ``SessionJournal`` one persistent session's messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..journal import Journal
from ..message import Message
from ..queues import Queue, QueueEntry
from ..sessions import Delivery, Session, SubscriptionOptions
from ..storage import DELETE, LogStore, StoreError

if TYPE_CHECKING:
    from ..broker import Broker
    from ..config import StorageConfig
    from ..delayed import Pending
    from ..exchanges import Binding, Exchange

from .records import (
    EXCHANGE,
    FORMAT,
    HANDED_OUT,
    INBOUND_QOS2,
    MESSAGE,
    QUEUE,
    QUEUE_MESSAGE,
    RETAINED,
    SEP,
    SESSION,
    SUBSCRIPTION,
    binding_key,
    delayed_key,
    encode_binding,
    encode_delayed,
    encode_delivery,
    encode_exchange,
    encode_message,
    encode_queue,
    encode_released,
    encode_session,
    encode_subscription,
)

log = logging.getLogger("polybroker.persistence")

# --------------------------------------------------------------------------- journals


@dataclass
class RestoreSummary:
    sessions: int = 0
    subscriptions: int = 0
    messages: int = 0
    inbound_qos2: int = 0
    retained: int = 0
    queues: int = 0
    queue_messages: int = 0
    exchanges: int = 0
    bindings: int = 0
    delayed: int = 0
    expired_sessions: int = 0
    dropped_records: int = 0  # undecodable, or belonging to no session: deleted

    def __str__(self) -> str:
        text = (f"{self.sessions} sessions, {self.subscriptions} subscriptions, "
                f"{self.messages} messages, {self.inbound_qos2} inbound QoS 2 ids, "
                f"{self.retained} retained, {self.queues} queues with "
                f"{self.queue_messages} persistent messages, {self.exchanges} exchanges, "
                f"{self.bindings} bindings, {self.delayed} delayed messages")
        if self.expired_sessions:
            text += f", {self.expired_sessions} sessions expired while stopped"
        if self.dropped_records:
            text += f", {self.dropped_records} unusable records dropped"
        return text


class StoreJournal(Journal):
    """Turns the broker's state changes into records of a ``LogStore``."""

    def __init__(self, store: LogStore, broker: Broker, settings: StorageConfig) -> None:
        self.store = store
        self.clock = broker.clock
        self.max_messages = settings.max_stored_messages_per_session
        self.max_bytes = settings.max_stored_bytes_per_session
        self.failures = 0
        self.next_id = 1  # of m/ records: never reused, so a late delete cannot hit a new one
        self._failing = 0  # failures in the current run of failures
        self._undeleted: dict[bytes, None] = {}  # tombstones that could not be written
        self.summary: RestoreSummary | None = None  # what the replay at start-up found
        self.queues: set[str] = set()  # names of the queues with a ``Q/`` record

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> bool:
        try:
            self.store.put(key, value)
        except StoreError as exc:
            self._failed(exc, key)
            return False
        if self._failing or self._undeleted:
            self._recovered(key)
        return True

    def delete(self, key: bytes) -> None:
        try:
            self.store.delete(key)
        except StoreError as exc:
            self._failed(exc, key)
            self._undeleted[key] = None  # retried once writes succeed again

    def _failed(self, exc: StoreError, key: bytes) -> None:
        self.failures += 1
        self._failing += 1
        if self._failing == 1 or self._failing % 1000 == 0:
            log.error(
                "STORAGE WRITE FAILED (%d in a row): %s; record %r kept in memory only, "
                "clients are refused until the store accepts writes again",
                self._failing, exc, key[:80],
            )

    def _recovered(self, key: bytes) -> None:
        if self._failing:
            log.warning("storage: writes succeed again after %d failure(s)", self._failing)
            self._failing = 0
        self._undeleted.pop(key, None)  # written again since: its old tombstone is moot
        for old in list(self._undeleted):
            del self._undeleted[old]
            self.delete(old)
            if self._failing:
                return

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Write the records made inside as one atomic group of the store (nested calls
        join the outer group). A failed group is logged and counted like a failed write."""
        store = self.store
        if store.group_open:
            yield
            return
        store.begin_group()
        try:
            yield
        except BaseException:
            store.abandon_group()  # nothing of it reached the disk, or the state in memory
            raise
        deletes = [key for kind, key, _ in store.group_writes if kind == DELETE]
        try:
            store.commit_group()
        except StoreError as exc:
            self._failed(exc, b"(atomic group)")
            self._undeleted.update(dict.fromkeys(deletes))  # retried once writes succeed

    def to_wall(self) -> float:
        """Add to a deadline on the broker's clock to get wall-clock time."""
        return time.time() - self.clock()

    # -- sessions --------------------------------------------------------------------------

    def session_opened(self, session: Session) -> None:
        journal = journal_of(session)
        if session.expiry_interval == 0:
            if journal is not None:
                self._forget_session(session, journal)  # no longer persistent
            return
        if journal is None:
            journal = SessionJournal.attach(self, session)
        self.put(SESSION + journal.client, encode_session(session, None))

    def session_closed(self, session: Session) -> None:
        journal = journal_of(session)
        if journal is not None:
            self.put(SESSION + journal.client, encode_session(session, time.time()))

    def session_discarded(self, session: Session) -> None:
        journal = journal_of(session)
        if journal is not None:
            self._forget_session(session, journal)

    def _forget_session(self, session: Session, journal: SessionJournal) -> None:
        for topic_filter in session.subscriptions:
            self.delete(journal.subscription_key(topic_filter))
        for delivery in (*session.inflight.values(), *session.queued):
            if delivery.store_id:
                self.delete(journal.message_key(delivery.store_id))
                delivery.store_id = 0
        for packet_id in session.inbound_qos2:
            self.delete(journal.inbound_key(packet_id))
        self.delete(SESSION + journal.client)  # last: see the package docstring
        session.journal = None
        session.inbound_qos2 = set(session.inbound_qos2)

    # -- subscriptions and retained messages -----------------------------------------------

    def subscription_set(
        self, session: Session, topic_filter: str, options: SubscriptionOptions
    ) -> None:
        journal = journal_of(session)
        if journal is not None:
            self.put(journal.subscription_key(topic_filter), encode_subscription(options))

    def subscription_removed(self, session: Session, topic_filter: str) -> None:
        journal = journal_of(session)
        if journal is not None:
            self.delete(journal.subscription_key(topic_filter))

    def retained_set(self, message: Message) -> None:
        self.put(RETAINED + message.topic.encode(), self.message_body(message))

    def retained_cleared(self, topic: str) -> None:
        self.delete(RETAINED + topic.encode())

    # -- named queues (``queues.QueueStore``) ------------------------------------------------

    @staticmethod
    def queue_message_key(queue: Queue, entry: QueueEntry) -> bytes:
        return QUEUE_MESSAGE + queue.name.encode() + SEP + entry.seq.to_bytes(8, "big")

    def enqueued(self, queue: Queue, entry: QueueEntry) -> None:
        if queue.name not in self.queues:
            if not self.put(QUEUE + queue.name.encode(), bytes((FORMAT,))):
                return  # no message record without its queue's (the adapter refuses it)
            self.queues.add(queue.name)
        self.put(self.queue_message_key(queue, entry), self.message_body(entry.message))

    def delivered(self, queue: Queue, entry: QueueEntry) -> None:
        self.put(self.queue_message_key(queue, entry) + HANDED_OUT, b"")

    def removed(self, queue: Queue, entry: QueueEntry) -> None:
        key = self.queue_message_key(queue, entry)
        if entry.marked:
            self.delete(key + HANDED_OUT)
        self.delete(key)

    def queue_declared(self, queue: Queue) -> None:
        """A durable queue was declared (AMQP): its flags and arguments."""
        if self.put(QUEUE + queue.name.encode(), encode_queue(queue)):
            self.queues.add(queue.name)

    def queue_deleted(self, queue: Queue) -> None:
        """The queue is gone with whatever it held."""
        if queue.name not in self.queues:
            return
        for entry in queue.entries():
            if entry.persistent:
                self.removed(queue, entry)
        self.queues.discard(queue.name)
        self.delete(QUEUE + queue.name.encode())  # last: see the package docstring

    # -- AMQP exchanges and bindings --------------------------------------------------------

    def exchange_declared(self, exchange: Exchange) -> None:
        self.put(EXCHANGE + exchange.name.encode(), encode_exchange(exchange))

    def exchange_deleted(self, exchange: Exchange) -> None:
        self.delete(EXCHANGE + exchange.name.encode())

    def binding_added(self, binding: Binding) -> None:
        self.put(binding_key(binding), encode_binding(binding))

    def binding_removed(self, binding: Binding) -> None:
        self.delete(binding_key(binding))

    # -- delayed messages -------------------------------------------------------------------

    def delayed_added(self, pending: Pending) -> None:
        self.put(delayed_key(pending), encode_delayed(pending, self.to_wall()))

    def delayed_removed(self, pending: Pending) -> None:
        self.delete(delayed_key(pending))

    def message_body(self, message: Message) -> bytes:
        """The stored form of a message, made once however many sessions keep it."""
        cache = message.wire_cache
        body = cache.get("store")
        if body is None:
            to_wall = 0.0 if message.expiry is None else self.to_wall()
            body = cache["store"] = encode_message(message, to_wall)
        return body


def journal_of(session: Session) -> SessionJournal | None:
    """The session's records when they are kept in this store (it is persistent)."""
    journal = session.journal
    return journal if isinstance(journal, SessionJournal) else None


class SessionJournal:
    """The records of one persistent session's messages (``Session.journal``)."""

    __slots__ = ("client", "count", "max_bytes", "max_messages", "nbytes", "owner", "prefix")

    def __init__(self, owner: StoreJournal, client: bytes) -> None:
        self.owner = owner
        self.client = client
        self.prefix = MESSAGE + client + SEP
        self.count = 0  # messages stored
        self.nbytes = 0  # their payload bytes
        # The session's stored bounds: the store's settings, unless the session has
        # tighter ones of its own (a bridge's backlog).
        self.max_messages = owner.max_messages
        self.max_bytes = owner.max_bytes

    @classmethod
    def attach(cls, owner: StoreJournal, session: Session) -> SessionJournal:
        journal = session.journal = cls(owner, session.client_id.encode())
        session.inbound_qos2 = JournaledPacketIds(journal, session.inbound_qos2)
        return journal

    def tighten_bounds(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = min(self.owner.max_messages, max_messages)
        self.max_bytes = min(self.owner.max_bytes, max_bytes)

    def message_key(self, store_id: int) -> bytes:
        return self.prefix + store_id.to_bytes(8, "big")

    def subscription_key(self, topic_filter: str) -> bytes:
        return SUBSCRIPTION + self.client + SEP + topic_filter.encode()

    def inbound_key(self, packet_id: int) -> bytes:
        return INBOUND_QOS2 + self.client + SEP + packet_id.to_bytes(2, "big")

    def has_room(self, size: int) -> bool:
        """Whether one more message of ``size`` payload bytes is within the session's
        stored bounds (the session applies ``limits.queue_overflow`` when it is not)."""
        return self.count < self.max_messages and self.nbytes + size <= self.max_bytes

    def _store(self, delivery: Delivery, packet_id: int, bounded: bool = True) -> bool:
        """Record a delivery not recorded yet; False if over the session's bounds
        (unless not ``bounded``: the session has decided to keep it)."""
        size = len(delivery.message.payload)
        if bounded and not self.has_room(size):
            return False
        owner = self.owner
        store_id = owner.next_id
        value = encode_delivery(delivery, packet_id, owner.message_body(delivery.message))
        if owner.put(self.message_key(store_id), value):
            owner.next_id = store_id + 1
            delivery.store_id = store_id
            self.count += 1
            self.nbytes += size
        return True  # a failed write keeps it in memory: the adapter refuses the publisher

    def message_added(self, delivery: Delivery) -> None:
        """A QoS 1/2 message was queued for the session (which checked ``has_room``, and
        may keep one over the bounds: ``limits.queue_overflow`` "block")."""
        self._store(delivery, 0, bounded=False)

    def message_sent(self, delivery: Delivery, packet_id: int) -> bool:
        """A QoS 1/2 message goes out with ``packet_id``. A QoS 2 message's packet id is
        recorded before the PUBLISH leaves, so that after a restart it is resent with the
        same id and the client can tell it is the same message."""
        if not delivery.store_id:
            return self._store(delivery, packet_id)
        if delivery.qos == 2:
            body = self.owner.message_body(delivery.message)
            self.owner.put(self.message_key(delivery.store_id),
                           encode_delivery(delivery, packet_id, body))
        return True

    def message_released(self, delivery: Delivery, packet_id: int) -> None:
        """PUBREC came: from now on only the packet id matters (PUBREL until PUBCOMP)."""
        if delivery.store_id:
            self.owner.put(self.message_key(delivery.store_id), encode_released(packet_id))

    def message_removed(self, delivery: Delivery) -> None:
        self.owner.delete(self.message_key(delivery.store_id))
        delivery.store_id = 0
        self.count -= 1
        self.nbytes -= len(delivery.message.payload)


class JournaledPacketIds(set[int]):
    """A persistent session's inbound QoS 2 packet ids (``Session.inbound_qos2``): a set
    that records its changes, so a PUBLISH resent after a restart is not routed twice."""

    __slots__ = ("journal",)

    def __init__(self, journal: SessionJournal, ids: Iterable[int] = ()) -> None:
        super().__init__(ids)
        self.journal = journal

    def add(self, packet_id: int) -> None:
        if packet_id not in self:
            super().add(packet_id)
            self.journal.owner.put(self.journal.inbound_key(packet_id), b"")

    def discard(self, packet_id: object) -> None:
        if isinstance(packet_id, int) and packet_id in self:
            super().discard(packet_id)
            self.journal.owner.delete(self.journal.inbound_key(packet_id))

    def remove(self, packet_id: int) -> None:
        if packet_id not in self:
            raise KeyError(packet_id)
        self.discard(packet_id)



"""The replay at start-up: the broker's state rebuilt from the store's records.
"""

from __future__ import annotations

import gc
import logging
import math
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..queues import QueueEntry
from ..refusals import Refused
from ..sessions import NEVER_EXPIRES, Delivery, Session
from ..storage import LogStore

if TYPE_CHECKING:
    from ..broker import Broker
    from ..config import StorageConfig

from .journal import RestoreSummary, SessionJournal, StoreJournal
from .records import (
    BINDING,
    DELAYED,
    EXCHANGE,
    HANDED_OUT,
    INBOUND_QOS2,
    MESSAGE,
    QUEUE,
    QUEUE_MESSAGE,
    RETAINED,
    SEP,
    SESSION,
    SUBSCRIPTION,
    StringCache,
    decode_binding,
    decode_delayed,
    decode_delivery,
    decode_exchange,
    decode_message,
    decode_queue,
    decode_session,
    decode_subscription,
    encode_delivery,
)

log = logging.getLogger("polybroker.persistence")

# --------------------------------------------------------------------------- replay


def restore(store: LogStore, broker: Broker, settings: StorageConfig) -> StoreJournal:
    """Rebuild the broker's durable state from ``store`` and attach the journal to it.

    Call on a fresh broker (no sessions, nothing retained), inside trio (the broker's
    clock). Returns the journal; its ``summary`` says what was restored.
    """
    journal = StoreJournal(store, broker, settings)
    broker.queues.attach_store(journal)
    replay = _Replay(store, broker, journal)
    with bulk_load():
        replay.run()
    broker.journal = journal
    replay.expire_sessions()
    journal.summary = replay.summary
    return journal


@contextmanager
def bulk_load() -> Iterator[None]:
    """For building millions of long-lived objects: without the cyclic collector, which
    would walk the growing heap again and again (more than doubling a large replay), and
    moving what was built out of its sight afterwards (``gc.freeze``); reference counting
    still frees whatever is acknowledged later."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


class _Replay:
    def __init__(self, store: LogStore, broker: Broker, journal: StoreJournal) -> None:
        self.store = store
        self.broker = broker
        self.journal = journal
        self.summary = RestoreSummary()
        self.to_clock = broker.clock() - time.time()
        self.strings = StringCache()
        self.sessions: dict[bytes, Session] = {}
        self.journals: dict[Session, SessionJournal] = {}  # the sessions' records
        self.remaining: dict[Session, float] = {}  # seconds left before expiry
        self.unusable: list[bytes] = []
        # Messages whose shared subscription is gone: recorded again without it, so that
        # the next restart does not join them to a group of that name subscribed since.
        self.ungrouped: list[tuple[Session, Delivery, int]] = []

    def run(self) -> None:
        self._sessions()
        self._subscriptions()
        self._messages()
        self._inbound_qos2()
        self._retained()
        self._exchanges()
        self._queues()
        self._bindings()
        self._delayed()
        for key in self.unusable:
            self.journal.delete(key)
        self.summary.dropped_records = len(self.unusable)
        for session, delivery, packet_id in self.ungrouped:
            body = self.journal.message_body(delivery.message)
            self.journal.put(self.journals[session].message_key(delivery.store_id),
                             encode_delivery(delivery, packet_id, body))

    def _records(self, prefix: bytes) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
        """(key, client, rest of the key, value) of one kind of per-client records."""
        for key, value in self.store.scan(prefix):
            client, _, rest = key[len(prefix):].partition(SEP)
            yield key, client, rest, value

    def _unusable(self, key: bytes, why: str) -> None:
        log.error("storage: dropping record %r: %s", key[:80], why)
        self.unusable.append(key)

    def _sessions(self) -> None:
        now = time.time()
        broker = self.broker
        for key, value in self.store.scan(SESSION):
            client = key[len(SESSION):]
            try:
                interval, disconnected_at = decode_session(value)
                client_id = client.decode()
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            session = Session(client_id, broker.limits, broker.clock, interval, broker.drops)
            self.journals[session] = SessionJournal.attach(self.journal, session)
            broker.sessions[client_id] = session
            self.sessions[client] = session
            if interval != NEVER_EXPIRES:
                # Connected when the broker stopped: its clock starts now.
                gone = 0.0 if math.isnan(disconnected_at) else max(0.0, now - disconnected_at)
                self.remaining[session] = interval - gone
        self.summary.sessions = len(self.sessions)

    def _subscriptions(self) -> None:
        for key, client, topic_filter, value in self._records(SUBSCRIPTION):
            session = self.sessions.get(client)
            if session is None or not topic_filter:
                self._unusable(key, "no such session")
                continue
            try:
                options = decode_subscription(value)
                self.broker.subscribe(session, topic_filter.decode(), options)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            self.summary.subscriptions += 1

    def _messages(self) -> None:
        groups = self.broker.shared_groups
        for key, client, store_id, value in self._records(MESSAGE):
            session = self.sessions.get(client)
            if session is None or len(store_id) != 8:
                self._unusable(key, "no such session")
                continue
            try:
                delivery, pid, group = decode_delivery(value, self.to_clock, self.strings)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            delivery.store_id = int.from_bytes(store_id, "big")
            if group is not None:
                delivery.group = groups.get(group)
                if delivery.group is None:
                    self.ungrouped.append((session, delivery, pid))
            self.journal.next_id = max(self.journal.next_id, delivery.store_id + 1)
            journal = self.journals[session]
            journal.count += 1
            journal.nbytes += len(delivery.message.payload)
            if not pid:
                session.restore_queued(delivery)
                self.summary.messages += 1
                continue
            # Sent before: resent with the same packet id (QoS 2 depends on it). A packet id
            # is only reused once its previous message is done with and its record deleted,
            # so if two records claim one, that delete was lost (a power cut can keep later
            # pages and lose earlier ones): the older message is finished, drop its record.
            stale = session.inflight.pop(pid, None)
            if stale is not None:
                self._unusable(journal.message_key(stale.store_id), "packet id reused later")
                journal.count -= 1
                journal.nbytes -= len(stale.message.payload)
                self.summary.messages -= 1
            session.inflight[pid] = delivery
            self.summary.messages += 1

    def _inbound_qos2(self) -> None:
        for key, client, packet_id, _ in self._records(INBOUND_QOS2):
            session = self.sessions.get(client)
            if session is None or len(packet_id) != 2:
                self._unusable(key, "no such session")
                continue
            set.add(session.inbound_qos2, int.from_bytes(packet_id, "big"))  # no new record
            self.summary.inbound_qos2 += 1

    def _retained(self) -> None:
        retained = self.broker.retained
        now = self.broker.clock()
        for key, value in self.store.scan(RETAINED):
            try:
                message = decode_message(value, 0, self.to_clock, self.strings)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            if message.expiry is not None and message.expiry <= now:
                self.unusable.append(key)  # expired while the broker was stopped
                continue
            retained.set(message.topic, message)
            self.summary.retained += 1

    def _exchanges(self) -> None:
        exchanges = self.broker.exchanges
        for key, value in self.store.scan(EXCHANGE):
            try:
                name = key[len(EXCHANGE):].decode()
                kind, auto_delete, internal, arguments = decode_exchange(value)
                exchanges.declare(name, kind, durable=True, auto_delete=auto_delete,
                                  internal=internal, arguments=arguments)
            except (ValueError, SyntaxError, struct.error, IndexError, Refused) as exc:
                self._unusable(key, str(exc))
                continue
            self.summary.exchanges += 1

    def _bindings(self) -> None:
        exchanges = self.broker.exchanges
        for key, value in self.store.scan(BINDING):
            try:
                exchange, queue, routing_key, arguments = decode_binding(value)
                exchanges.bind(queue, exchange, routing_key, arguments)
            except (ValueError, SyntaxError, struct.error, IndexError, Refused) as exc:
                self._unusable(key, str(exc))
                continue
            self.summary.bindings += 1

    def _delayed(self) -> None:
        """Pending delayed messages; those due while the broker was stopped go out as soon
        as the timers run, in due order."""
        delayed = self.broker.delayed
        for key, value in self.store.scan(DELAYED):
            try:
                ident = int.from_bytes(key[len(DELAYED):], "big")
                due, target, message = decode_delayed(value, self.to_clock)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            delayed.restore(due, message, target, ident)
            self.summary.delayed += 1

    def _queues(self) -> None:
        registry = self.broker.queues
        for key, value in self.store.scan(QUEUE):
            try:
                name = key[len(QUEUE):].decode()
                declared, auto_delete, arguments = decode_queue(value)
                if declared:
                    registry.restore_queue(name, auto_delete=auto_delete, arguments=arguments)
                else:
                    registry.declare(name)
            except (ValueError, SyntaxError, struct.error, IndexError, Refused) as exc:
                self._unusable(key, str(exc))
                continue
            self.journal.queues.add(name)
            self.summary.queues += 1
        current: tuple[bytes, list[QueueEntry]] | None = None
        for key, queue_name, rest, value in self._records(QUEUE_MESSAGE):
            if current is None or current[0] != queue_name:
                self._refill(current)
                current = (queue_name, [])
            entries = current[1]
            if len(rest) == 9 and rest[8:] == HANDED_OUT:
                if entries and entries[-1].seq == int.from_bytes(rest[:8], "big"):
                    entries[-1].marked = entries[-1].redelivered = True
                else:
                    self._unusable(key, "no such queued message")
                continue
            if len(rest) != 8 or queue_name.decode(errors="replace") not in self.journal.queues:
                self._unusable(key, "no such queue")
                continue
            try:
                message = decode_message(value, 0, self.to_clock)
            except (ValueError, struct.error, IndexError) as exc:
                self._unusable(key, str(exc))
                continue
            entries.append(QueueEntry(message, int.from_bytes(rest, "big"), persistent=True))
        self._refill(current)

    def _refill(self, batch: tuple[bytes, list[QueueEntry]] | None) -> None:
        if batch is not None and batch[1]:
            queue = self.broker.queues.get(batch[0].decode())
            if queue is not None:  # it is: its messages are read only if it was restored
                self.summary.queue_messages += queue.restore(batch[1])

    def expire_sessions(self) -> None:
        """Start the expiry clocks; sessions whose time ran out while stopped end now."""
        for session, remaining in self.remaining.items():
            if remaining <= 0:
                log.info("client %s: session expired while the broker was stopped",
                         session.client_id)
                self.broker.discard_session(session)
                self.summary.expired_sessions += 1
            else:
                self.broker.expire_later(session, remaining)


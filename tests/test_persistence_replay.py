"""Property test: random broker operations, then a restart, give back the same durable state.

The broker core is driven directly (no adapter), with a fake connection per online client
and a small in-flight window, so messages queue, go out, get acknowledged, released and
dropped in every order. At any point the broker may restart (clean or crashed) or compact;
the persistent state rebuilt from the store must equal the one in memory before.
"""

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits, StorageConfig
from polybroker.message import Message
from polybroker.persistence import restore
from polybroker.sessions import NEVER_EXPIRES, SubscriptionOptions
from polybroker.storage import LogStore

from .durable_state import persistent_state

CLIENTS = st.sampled_from(["a", "b", "c"])
FILTERS = st.sampled_from(["t/#", "t/+", "t/1", "u", "$share/g/t/#", "$share/h/u"])
TOPICS = st.sampled_from(["t/1", "t/2", "u", "t/1/x"])
EXPIRY = st.sampled_from([0, 5000, NEVER_EXPIRES])
SETTINGS = StorageConfig(max_stored_messages_per_session=6)
STORE_OPTIONS = {"segment_size": 600, "compaction_threshold": 0.6}


class FakeLink:
    """The connection side of a session: accepts every PUBLISH."""

    def __init__(self) -> None:
        self.closed = False

    def send_publish(self, delivery, packet_id, dup) -> bool:
        return True

    def send_pubrel(self, packet_id) -> None:
        pass

    def session_taken_over(self) -> None:
        self.closed = True


class BrokerMachine(RuleBasedStateMachine):
    # Nothing holds a publisher back here (no adapter), so the stored bound is kept by
    # dropping: the new message, or (below) the oldest queued one.
    POLICY = "drop-new"

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="polybroker-replay-"))
        self.now = 1000.0
        self.links: dict[str, FakeLink] = {}
        self.count = 0
        self._open()

    def _open(self) -> None:
        config = BrokerConfig(limits=Limits(max_inflight_messages=2, max_queued_messages=5,
                                            queue_overflow=self.POLICY))
        self.broker = Broker(config, clock=lambda: self.now)
        self.store = LogStore.open(self.directory, **STORE_OPTIONS)
        restore(self.store, self.broker, SETTINGS)
        self.links = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory)

    def _online(self, client: str):
        session = self.broker.sessions.get(client)
        link = self.links.get(client)
        if session is None or link is None or session.link is not link:
            return None
        return session

    # -- clients ----------------------------------------------------------------------------

    @initialize(qos=st.integers(1, 2), shared=st.booleans())
    def persistent_subscriber(self, qos: int, shared: bool) -> None:
        """Start with one persistent subscriber, so that messages are stored from step one."""
        self.connect("a", False, NEVER_EXPIRES)
        self.subscribe("a", "$share/g/t/#" if shared else "t/#", qos, None)

    @rule(client=CLIENTS, clean=st.booleans(), expiry=EXPIRY)
    def connect(self, client: str, clean: bool, expiry: int) -> None:
        session, _ = self.broker.open_session(client, clean, expiry)
        link = self.links[client] = FakeLink()
        session.attach(link)

    @rule(client=CLIENTS)
    def disconnect(self, client: str) -> None:
        session = self._online(client)
        if session is not None:
            self.broker.close_session(session, self.links.pop(client))

    @rule(client=CLIENTS, topic_filter=FILTERS, qos=st.integers(0, 2),
          sub_id=st.sampled_from([None, 7]))
    def subscribe(self, client: str, topic_filter: str, qos: int, sub_id) -> None:
        session = self._online(client)
        if session is not None:
            options = SubscriptionOptions(qos, subscription_id=sub_id)
            self.broker.subscribe(session, topic_filter, options)

    @rule(client=CLIENTS, topic_filter=FILTERS)
    def unsubscribe(self, client: str, topic_filter: str) -> None:
        session = self._online(client)
        if session is not None:
            self.broker.unsubscribe(session, topic_filter)

    @rule(topic=TOPICS, qos=st.integers(0, 2), retain=st.booleans(), empty=st.booleans())
    def publish(self, topic: str, qos: int, retain: bool, empty: bool) -> None:
        self.count += 1
        payload = b"" if empty and retain else b"m%d" % self.count
        self.broker.publish(Message(topic, payload, qos, retain, origin_protocol="mqtt",
                                    origin_client="x"))

    @rule(client=CLIENTS, pick=st.integers(0, 10), refuse=st.booleans())
    def acknowledge(self, client: str, pick: int, refuse: bool) -> None:
        """The client answers one in-flight message: PUBACK, PUBREC, PUBCOMP, or refuses."""
        session = self._online(client)
        if session is None or not session.inflight:
            return
        packet_id = list(session.inflight)[pick % len(session.inflight)]
        delivery = session.inflight[packet_id]
        if refuse and not delivery.released:
            session.drop_inflight(packet_id)
        elif delivery.qos == 1:
            session.puback(packet_id)
        elif delivery.released:
            session.pubcomp(packet_id)
        else:
            session.pubrec(packet_id)

    @rule(client=CLIENTS, complete=st.booleans())
    def acknowledge_all(self, client: str, complete: bool) -> None:
        """The client answers every in-flight message at once (PUBCOMP only if asked)."""
        session = self._online(client)
        if session is None:
            return
        for packet_id, delivery in list(session.inflight.items()):
            if delivery.qos == 1:
                session.puback(packet_id)
            elif not delivery.released:
                session.pubrec(packet_id)
            elif complete:
                session.pubcomp(packet_id)

    @rule(client=CLIENTS, packet_id=st.integers(1, 4), release=st.booleans())
    def inbound_qos2(self, client: str, packet_id: int, release: bool) -> None:
        """The client publishes at QoS 2 (PUBLISH holds the id, PUBREL frees it)."""
        session = self._online(client)
        if session is None:
            return
        if release:
            session.inbound_qos2.discard(packet_id)
        else:
            session.inbound_qos2.add(packet_id)

    # -- the broker -------------------------------------------------------------------------

    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        """Stop (clean: synced; crash: the page cache keeps what was written) and reopen."""
        before = persistent_state(self.broker)
        if crash:
            self.store._close_files()
        else:
            self.store.close()
        self._open()
        assert persistent_state(self.broker) == before
        assert self.store.recovery_issues == []

    @precondition(lambda self: len(self.store.segment_ids()) > 1)
    @rule(stepwise=st.booleans())
    def compact(self, stepwise: bool) -> None:
        if not stepwise:
            self.store.compact(max_segments=2)
            return
        job = self.store.begin_compaction()
        if job is not None:
            job.read()
            while not job.copy(3):
                pass
            self.store.sync()
            if job.detach():
                job.unlink()
                job.finish()

    @invariant()
    def stored_counts_match_the_store(self) -> None:
        for session in self.broker.sessions.values():
            journal = session.journal
            if journal is None:
                continue
            keys = list(self.store.scan(journal.prefix))
            assert journal.count == len(keys)
            assert journal.count <= SETTINGS.max_stored_messages_per_session


BrokerMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReplay = BrokerMachine.TestCase


class DropOldestMachine(BrokerMachine):
    POLICY = "drop-oldest"  # the dropped messages' records go too


DropOldestMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReplayDropOldest = DropOldestMachine.TestCase

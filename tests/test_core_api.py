"""The core's calls and answers to an adapter: a request whose records could not be written
ends in ``StoreFull`` (its state kept in memory all the same); what an adapter changes in
the core, it changes through a call."""

import ast
import re
from pathlib import Path

import pytest

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, StorageConfig
from polybroker.durability import open_durable_state
from polybroker.journal import StoreFull
from polybroker.message import AmqpPart, Message
from polybroker.sessions import SubscriptionOptions
from polybroker.storage import StoreFullError


class Recorder:
    """A session link that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_publish(self, delivery, packet_id, dup) -> bool:
        self.sent.append(delivery.message.payload)
        return True

    def send_pubrel(self, packet_id: int) -> None: ...

    def session_taken_over(self) -> None: ...


def full(key: bytes, value: bytes) -> None:
    raise StoreFullError(28, "No space left on device")


async def persistent_subscriber(broker: Broker) -> Recorder:
    session, _ = broker.open_session("sub", clean=False, expiry_interval=60)
    broker.subscribe(session, "t", SubscriptionOptions(qos=1))
    link = Recorder()
    session.attach(link)
    return link


async def test_storing_says_nothing_when_every_record_was_written(tmp_path):
    broker = Broker(BrokerConfig(data_dir=tmp_path))
    async with open_durable_state(broker):
        link = await persistent_subscriber(broker)
        with broker.storing():
            result = broker.publish(Message("t", b"kept", qos=1))
        assert result.delivered == 1
        assert link.sent == [b"kept"]


async def test_storing_raises_store_full_and_keeps_the_state_in_memory(tmp_path):
    broker = Broker(BrokerConfig(data_dir=tmp_path))
    async with open_durable_state(broker):
        link = await persistent_subscriber(broker)
        broker.durability.store.put = full
        with pytest.raises(StoreFull), broker.storing():
            broker.publish(Message("t", b"unstored", qos=1))
        assert link.sent == [b"unstored"]  # routed all the same
        del broker.durability.store.put  # space again
        with broker.storing():
            broker.publish(Message("t", b"stored", qos=1))


async def test_storing_atomic_raises_store_full_when_the_group_cannot_be_written(tmp_path):
    broker = Broker(BrokerConfig(data_dir=tmp_path))
    async with open_durable_state(broker):
        await persistent_subscriber(broker)
        store = broker.durability.store

        def commit_fails() -> None:
            store.abandon_group()  # as a write that did not reach the disk leaves it
            full(b"", b"")

        store.commit_group = commit_fails
        with pytest.raises(StoreFull), broker.storing(atomic=True):
            broker.publish(Message("t", b"x", qos=1))
        assert not store.group_open


async def test_storing_lets_other_exceptions_through_and_abandons_the_group(tmp_path):
    broker = Broker(BrokerConfig(data_dir=tmp_path))
    async with open_durable_state(broker):
        await persistent_subscriber(broker)
        store = broker.durability.store
        with pytest.raises(KeyError), broker.storing(atomic=True):
            broker.publish(Message("t", b"x", qos=1))
            raise KeyError("the adapter's own failure")
        assert not store.group_open
        assert list(store.scan(b"m/")) == []  # nothing of the group was written


def test_storing_without_a_store_never_raises():
    broker = Broker(BrokerConfig(storage=StorageConfig(persistence=False)))
    with broker.storing(atomic=True):
        assert broker.publish(Message("t", b"x")).matched == 0


async def test_topic_queue_takes_what_is_published_on_its_filter_until_ended():
    broker = Broker(BrokerConfig())
    queue = broker.topic_queue("private", "a/+")
    assert broker.publish(Message("a/b", b"1")).delivered == 1
    assert broker.publish(Message("c", b"2")).matched == 0
    broker.end_topic_queue("a/+", queue)
    assert broker.publish(Message("a/b", b"3")).matched == 0
    assert [entry.message.payload for entry in queue.ready] == [b"1"]


def test_discard_session_ends_it_with_its_subscriptions():
    broker = Broker(BrokerConfig())
    session, _ = broker.open_session("gone", clean=False, expiry_interval=60)
    broker.subscribe(session, "t", SubscriptionOptions(qos=1))
    broker.discard_session(session)
    assert "gone" not in broker.sessions
    assert broker.publish(Message("t", b"x")).matched == 0


def core_reaches(path: Path) -> list[str]:
    """Where a module reaches into the core past its calls: a private name of the broker
    (or of anything reached through it), or the broker's router."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        chain = ast.unparse(node)
        if not re.match(r"(self\.)?broker\.", chain):
            continue
        names = chain.split(".")[1 if chain.startswith("broker") else 2:]
        if any(n.startswith("_") and not n.startswith("__") for n in names) or (
            names[0] == "router"
        ):
            found.append(f"{path.name}:{node.lineno}: {chain}")
    return sorted(set(found))


def test_adapters_and_persistence_change_the_core_only_through_its_calls():
    top = Path(__file__).resolve().parent.parent / "polybroker"
    paths = [*(top / "adapters").glob("*.py"), *(top / "persistence").glob("*.py")]
    assert paths
    assert [reach for path in paths for reach in core_reaches(path)] == []


def test_core_reaches_are_found(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("self.broker._discard(s)\nbroker.router.add(f, q, o)\nbroker.publish(m)\n")
    assert core_reaches(module) == ["m.py:1: self.broker._discard", "m.py:2: broker.router",
                                    "m.py:2: broker.router.add"]


@pytest.fixture
def frozen_messages():
    """Any change to a built Message or its AmqpPart raises (a write-once guard; not on by
    default, as a frozen dataclass costs several times as much to build)."""

    def write_once(built: object, name: str, value: object) -> None:
        try:
            getattr(built, name)
        except AttributeError:  # being built
            object.__setattr__(built, name, value)
            return
        raise AttributeError(f"{type(built).__name__}.{name} changed after it was built")

    for kind in (Message, AmqpPart):
        kind.__setattr__ = write_once
    yield
    for kind in (Message, AmqpPart):
        del kind.__setattr__


def test_the_guard_catches_a_change(frozen_messages):
    message = Message("t", b"x", amqp=AmqpPart("", "t"))
    with pytest.raises(AttributeError):
        message.topic = "u"
    with pytest.raises(AttributeError):
        message.amqp.routing_key = "u"


async def test_routing_never_changes_a_message(frozen_messages, tmp_path):
    broker = Broker(BrokerConfig(data_dir=tmp_path))
    async with open_durable_state(broker):
        link = await persistent_subscriber(broker)
        broker.publish(Message("t", b"mqtt", qos=1, retain=True))
        queues, exchanges = broker.queues, broker.exchanges
        queues.declare_queue("dead", durable=True)
        queues.declare_queue("work", durable=True, arguments={"x-dead-letter-exchange": "dlx"})
        exchanges.declare("dlx", "fanout", durable=True)
        exchanges.bind("dead", "dlx", "")
        exchanges.bind("work", "amq.topic", "t")
        persistent = AmqpPart("", "", persistent=True)  # as a publish makes it
        exchanges.publish("", "work", Message("", b"direct", amqp=persistent))
        exchanges.publish("amq.topic", "t", Message("", b"topic", amqp=persistent))
        work = queues.get("work")
        while (taken := work.get(holder=link)) is not None:
            work.reject(taken[1], requeue=False)  # dead-lettered: a copy with its death
        dead = [entry.message for entry in queues.get("dead").ready]
        assert [(m.payload, m.amqp.deaths[0].reason) for m in dead] == [
            (b"direct", "rejected"), (b"topic", "rejected"),
        ]
        assert link.sent == [b"mqtt", b"topic"]

"""Delayed delivery in the core (``polybroker.delayed``): due order and times under a mock
clock, one timer for all, the bounds, listing and cancelling, the ``$delayed/`` prefix
and its access check, delayed exchanges, and recovery from the store after a restart."""

import dataclasses
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from polybroker import persistence
from polybroker.auth import Client, Security
from polybroker.broker import Broker
from polybroker.config import BrokerConfig, ConfigError, Limits, config_from_dict
from polybroker.delayed import EXCHANGE, QUEUE, Target, split_delayed_topic, stomp_delay
from polybroker.durability import open_durable_state
from polybroker.message import AmqpPart, Message
from polybroker.refusals import AccessRefused, PreconditionFailed
from polybroker.sessions import SubscriptionOptions


class Recorder:
    """A subscriber that notes each message with the broker's clock when it came."""

    client_id = "recorder"

    def __init__(self, clock) -> None:
        self.clock = clock
        self.got: list[tuple[float, str, bytes, bool]] = []

    def deliver(self, message: Message, qos: int, retain: bool, ids: tuple) -> int:
        self.got.append((self.clock(), message.topic, message.payload, message.retain))
        return 0

    @property
    def backlog(self) -> "Recorder":
        return self


def subscribe(broker: Broker, topic_filter: str = "#") -> Recorder:
    recorder = Recorder(broker.clock)
    broker.router.add(topic_filter, recorder, SubscriptionOptions(qos=2))
    return recorder


def headed(headers: dict) -> AmqpPart:
    """The AMQP part of a message published with ``headers``."""
    return AmqpPart("", "", headers=headers)


def msg(topic: str, payload: bytes = b"x", **fields) -> Message:
    return Message(topic, payload, origin_protocol="mqtt", origin_client="pub", **fields)


async def test_messages_go_out_when_due_in_due_order(broker, autojump_clock):
    got = subscribe(broker)
    start = trio.current_time()
    for seconds, name in ((5, b"five"), (1, b"one"), (3, b"three"), (1, b"one again")):
        result = broker.publish(msg(f"$delayed/{seconds}/a/b", name))
        assert result.matched == 1 and result.refusal is None
    assert got.got == []
    await trio.sleep(10)
    assert [(t - start, p) for t, _, p, _ in got.got] == [
        (1, b"one"), (1, b"one again"), (3, b"three"), (5, b"five"),
    ]
    assert {topic for _, topic, _, _ in got.got} == {"a/b"}
    assert len(broker.delayed) == 0 and broker.delayed.bytes == 0


async def test_not_before_it_is_due(broker, autojump_clock):
    got = subscribe(broker)
    broker.publish(msg("$delayed/2/a/b"))
    await trio.sleep(1.999)
    await trio.testing.wait_all_tasks_blocked()
    assert got.got == []
    await trio.sleep(0.001)
    await trio.testing.wait_all_tasks_blocked()
    assert len(got.got) == 1


async def test_one_timer_for_every_pending_message(broker, autojump_clock):
    for n in range(1000):
        broker.publish(msg(f"$delayed/{1000 - n}/t"))
    assert len(broker.timers) == 1
    assert len(broker.delayed) == 1000


async def test_a_backlog_due_at_once_is_delivered_whole_and_in_order(broker, autojump_clock):
    got = subscribe(broker)
    for n in range(1234):
        broker.delayed.schedule(msg("t", str(n).encode()), 1)
    await trio.sleep(2)
    assert [int(p) for _, _, p, _ in got.got] == list(range(1234))


async def test_retained_flag_and_properties_are_kept(broker, autojump_clock):
    got = subscribe(broker)
    expiry = trio.current_time() + 60
    broker.publish(msg("$delayed/1/r/t", b"v", retain=True, qos=1, expiry=expiry,
                       content_type="text/plain", headers=(("k", "v"),)))
    assert not list(broker.retained.match("#"))  # not retained until it is published
    await trio.sleep(1.5)
    assert got.got[0][1:] == ("r/t", b"v", True)
    (stored,) = broker.retained.match("r/t")
    # The message expiry counts from the publish, not from the delivery (as EMQX).
    assert (stored.expiry, stored.content_type, stored.headers, stored.qos) == (
        expiry, "text/plain", (("k", "v"),), 1)


async def test_a_malformed_prefix_is_dropped(broker, autojump_clock):
    got = subscribe(broker)
    for topic in ("$delayed/x/a", "$delayed/5", "$delayed/5/", "$delayed//a", "$delayed/-1/a"):
        assert broker.publish(msg(topic)).matched == 0
    await trio.sleep(10)
    assert got.got == [] and len(broker.delayed) == 0


def test_split_delayed_topic():
    assert split_delayed_topic("$delayed/15/x/y") == (15, "x/y")
    assert split_delayed_topic("$delayed/0/$SYS/t") == (0, "$SYS/t")
    assert split_delayed_topic("a/b") is None
    assert split_delayed_topic("$delayed/1.5/a") is None
    assert split_delayed_topic("$delayed/\u0661/a") is None  # a non-ASCII digit


def test_stomp_delay_headers():
    assert stomp_delay([("AMQ_SCHEDULED_DELAY", "2500")]) == 2.5
    assert stomp_delay([("delay", "10")]) == 0.01
    assert stomp_delay([("x-delay", "0")]) == 0
    assert stomp_delay([("destination", "/queue/a")]) is None
    with pytest.raises(ValueError, match="AMQ_SCHEDULED_DELAY"):
        stomp_delay([("AMQ_SCHEDULED_DELAY", "-5")])


# ------------------------------------------------------------------ bounds


@pytest.mark.parametrize(("limits", "payload", "delay"), [
    ({"max_delayed_messages": 2}, b"x", 1),
    ({"max_delayed_bytes": 10}, b"12345", 1),
    ({"max_delay": 60}, b"x", 61),
])
async def test_over_a_bound_is_refused_and_counted(make_broker, autojump_clock, limits,
                                                    payload, delay, caplog):
    broker = make_broker(limits=Limits(**limits))
    got = subscribe(broker)
    results = [broker.publish(msg(f"$delayed/{delay}/t", payload)) for _ in range(3)]
    refused = [r for r in results if r.refusal is not None]
    assert refused and all(r.refused for r in refused)
    assert broker.drops["delayed-limit"] == len(refused)
    assert "delayed message for t refused" in caplog.text
    await trio.sleep(100)
    assert len(got.got) == 3 - len(refused)


def test_limits_config_keys():
    config = config_from_dict({"limits": {
        "max_delayed_messages": 10, "max_delayed_bytes": 1000, "max_delay": 3600}})
    limits = config.limits
    assert (limits.max_delayed_messages, limits.max_delayed_bytes, limits.max_delay) == (
        10, 1000, 3600)
    with pytest.raises(ConfigError, match="max_delay"):
        config_from_dict({"limits": {"max_delay": 4294968}})


# ------------------------------------------------------------------ listing and cancelling


async def test_list_and_cancel(broker, autojump_clock):
    got = subscribe(broker)
    for seconds in (3, 1, 2):
        broker.publish(msg(f"$delayed/{seconds}/t{seconds}", b"abc"))
    listed = broker.delayed.pending()
    assert [p.message.topic for p in listed] == ["t1", "t2", "t3"]
    assert [p.message.topic for p in broker.delayed.pending(limit=2)] == ["t1", "t2"]
    assert broker.delayed.get(listed[0].id) is listed[0]
    assert broker.delayed.cancel(listed[0].id)
    assert not broker.delayed.cancel(listed[0].id)
    assert len(broker.delayed) == 2 and broker.delayed.bytes == 6
    await trio.sleep(5)
    assert [topic for _, topic, _, _ in got.got] == ["t2", "t3"]


async def test_many_cancelled_do_not_pile_up(broker, autojump_clock):
    for n in range(3000):
        broker.delayed.schedule(msg("t"), 10 + n)
    ids = [p.id for p in broker.delayed.pending()]
    for ident in ids[:-1]:
        broker.delayed.cancel(ident)
    assert len(broker.delayed) == 1
    assert len(broker.delayed._heap) < 1500


# ------------------------------------------------------------------ access check


def test_may_publish_checks_the_real_topic(auth_config):
    acl = "user alice\ntopic write a/#\n"
    security = Security.load(auth_config({"alice": "pw"}, acl))
    alice = Client("alice", "c")
    assert security.may_publish(alice, "$delayed/5/a/b")
    assert not security.may_publish(alice, "$delayed/5/b/c")
    assert not security.may_publish(alice, "$delayed/x/a/b")
    open_door = Security.load(auth_config(None, None))
    anyone = Client(None, "c")
    assert open_door.may_publish(anyone, "$delayed/5/b/c")
    assert not open_door.may_publish(anyone, "$delayed/5/$SYS/x")
    assert not open_door.may_publish(anyone, "$delayed/5/$other")
    assert not open_door.may_publish(anyone, "$delayed/5")


# ------------------------------------------------------------------ exchanges


async def test_delayed_exchange_routes_by_its_type_when_due(broker, autojump_clock):
    ex = broker.exchanges
    with pytest.raises(PreconditionFailed):
        ex.declare("bad", "x-delayed-message")
    ex.declare("later", "x-delayed-message", arguments={"x-delayed-type": "direct"})
    queue = broker.queues.declare_queue("q")
    ex.bind(queue, "later", "k")
    start = trio.current_time()
    message = msg("t", b"held", amqp=headed({"x-delay": 1500}))
    assert ex.publish("later", "k", message) == 1
    assert ex.publish("later", "k", msg("t", b"now", amqp=headed({}))) == 1
    assert ex.publish("later", "other", msg("t", b"nowhere", amqp=headed({}))) == 0
    assert [e.message.payload for e in queue.entries()] == [b"now"]
    await trio.sleep(1.499)
    assert [e.message.payload for e in queue.entries()] == [b"now"]
    await trio.sleep(0.001)
    await trio.testing.wait_all_tasks_blocked()
    assert [e.message.payload for e in queue.entries()] == [b"now", b"held"]
    assert trio.current_time() - start == pytest.approx(1.5)
    # Under an ACL the publisher must be allowed into every queue it would reach now.
    with pytest.raises(AccessRefused):
        ex.publish("later", "k", message, admit=lambda queue: False)
    assert ex.publish("later", "k", message, admit=lambda queue: True) == 1


# ------------------------------------------------------------------ the store


@asynccontextmanager
async def running(data_dir: Path, **limits):
    broker = Broker(BrokerConfig(data_dir=data_dir, limits=Limits(**limits)))
    async with open_durable_state(broker) as tasks, trio.open_nursery() as nursery:
        tasks.start(nursery)
        yield broker, nursery
        nursery.cancel_scope.cancel()


async def test_pending_messages_survive_a_restart_and_late_ones_go_out_first_in_order(
    tmp_path, monkeypatch
):
    async with running(tmp_path) as (broker, _):
        for seconds, payload in ((30, b"c"), (10, b"a"), (20, b"b"), (7200, b"later")):
            broker.publish(msg(f"$delayed/{seconds}/t", payload, retain=seconds == 10))
        broker.delayed.schedule(msg("t", b"q"), 15, Target(QUEUE, "jobs", persistent=True))
        broker.exchanges.declare("dx", "x-delayed-message", durable=True,
                                 arguments={"x-delayed-type": "fanout"})
        broker.exchanges.publish("dx", "k", msg("t", b"x", amqp=headed({"x-delay": 25000})))
        cancelled = broker.delayed.pending()[-1]
        broker.delayed.cancel(cancelled.id)
        assert len(broker.delayed) == 5
    real_time = persistence.time.time
    monkeypatch.setattr(persistence.time, "time", lambda: real_time() + 60)  # a minute later
    async with running(tmp_path) as (broker, nursery):
        assert broker.durability.store is not None
        pending = broker.delayed.pending()
        assert [(p.message.payload, p.target.kind) for p in pending] == [
            (b"a", "topic"), (b"q", QUEUE), (b"b", "topic"), (b"x", EXCHANGE), (b"c", "topic"),
        ]
        assert pending[0].message.retain and pending[1].target.persistent
        assert pending[3].target == Target(EXCHANGE, "dx", "k")
        queue = broker.queues.declare_queue("bound")
        broker.exchanges.bind(queue, "dx", "")
        got = subscribe(broker)
        nursery.start_soon(broker.timers.run)
        # The timer task delivers the due backlog, then waits for a deadline that never comes.
        await trio.testing.wait_all_tasks_blocked()
        assert not broker.delayed
        assert [p for _, _, p, _ in got.got] == [b"a", b"b", b"c"]
        assert [e.message.payload for e in broker.queues.get("jobs").entries()] == [b"q"]
        assert [e.message.payload for e in queue.entries()] == [b"x"]
        assert [k for k, _ in broker.durability.store.scan(b"d/")] == []


async def test_a_crash_keeps_pending_messages(tmp_path):
    import shutil

    async with running(tmp_path / "a") as (broker, _):
        broker.publish(msg("$delayed/3600/t", b"kept"))
        shutil.copytree(tmp_path / "a" / "store", tmp_path / "b" / "store",
                        ignore=shutil.ignore_patterns("LOCK"))
    async with running(tmp_path / "b") as (broker, _):
        assert [p.message.payload for p in broker.delayed.pending()] == [b"kept"]
        new = broker.delayed.schedule(msg("t"), 10)
        assert new.refusal is None
        assert len({p.id for p in broker.delayed.pending()}) == 2


def test_pending_is_ordered_by_due_then_arrival():
    from polybroker.delayed import Pending

    a = Pending(1.0, 2, msg("a"), Target())
    b = Pending(1.0, 1, msg("b"), Target())
    assert sorted([a, b]) == [b, a]
    assert dataclasses.replace(a, due=0.5) < b

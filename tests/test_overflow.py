"""limits.queue_overflow: what a full session backlog does with a new message, and what
its publisher is told (``polybroker.overflow``), over the in-memory MQTT harness."""

import contextlib
import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, ConfigError, Limits, StorageConfig, config_from_dict
from polybroker.durability import open_durable_state
from polybroker.message import Message
from polybroker.overflow import DROPPED, HELD, TAKEN
from polybroker.protocols.mqtt import Disconnect, PingReq, PubAck, Publish, PubRec
from polybroker.protocols.mqtt import reason_codes as rc
from polybroker.sessions import SubscriptionOptions

from .rawclient import RawClient, connect_client

V5 = 5


def start_broker(nursery: trio.Nursery, **limits: object) -> Broker:
    broker = Broker(BrokerConfig(limits=Limits(**limits)))
    nursery.start_soon(broker.timers.run)
    return broker


async def client(nursery, broker, client_id: str, level: int = 4, **fields) -> RawClient:
    c = await connect_client(nursery, broker)
    if level == V5:
        c.parser.protocol_level = V5
    await c.connect(client_id, protocol_level=level, **fields)
    return c


async def nothing_arrives(c: RawClient, within: float = 1.0) -> bool:
    """True if no packet comes within ``within`` seconds (virtual time: autojump clock)."""
    with trio.move_on_after(within):
        packet = await c.receive(timeout=within + 1)
        raise AssertionError(f"unexpected {packet}")
    return True


def publishes(first: int, count: int, qos: int = 1, topic: str = "t") -> list[Publish]:
    return [Publish(topic, b"%d" % i, qos, packet_id=i) for i in range(first, first + count)]


async def ack_everything(sub: RawClient, count: int) -> list[bytes]:
    """Receive ``count`` QoS 1 messages, acknowledging each; their payloads."""
    payloads = []
    for _ in range(count):
        packet = await sub.receive()
        assert isinstance(packet, Publish), packet
        payloads.append(packet.payload)
        await sub.send(PubAck(packet.packet_id))
    return payloads


# -- configuration ----------------------------------------------------------------------------


def test_queue_overflow_defaults_to_block_and_is_validated():
    assert Limits().queue_overflow == "block" and Limits().max_block_time == 30.0
    limits = config_from_dict({"limits": {"queue_overflow": "drop-oldest",
                                          "max_block_time": 2.5}}).limits
    assert (limits.queue_overflow, limits.max_block_time) == ("drop-oldest", 2.5)
    with pytest.raises(ConfigError, match=r"^limits.queue_overflow: must be one of block, "):
        config_from_dict({"limits": {"queue_overflow": "drop-head"}})
    with pytest.raises(ConfigError, match=r"^limits.queue_overflow: expected str"):
        config_from_dict({"limits": {"queue_overflow": 1}})
    with pytest.raises(ConfigError, match=r"^limits.max_block_time: must be greater than 0"):
        config_from_dict({"limits": {"max_block_time": 0}})


# -- the core says what happened ------------------------------------------------------------


async def test_deliver_and_publish_say_what_happened_to_the_message():
    broker = Broker(BrokerConfig(limits=Limits(max_queued_messages=2, queue_overflow="drop-new")))
    session, _ = broker.open_session("s", clean=False)
    broker.subscribe(session, "t", broker_options(1))
    assert session.deliver(Message("t", b"1", 1), 1, False) == TAKEN
    assert session.deliver(Message("t", b"2", 1), 1, False) == TAKEN
    assert session.deliver(Message("t", b"3", 1), 1, False) == DROPPED
    result = broker.publish(Message("t", b"4", 1))
    assert (result.matched, result.dropped, result.delivered, result.refused) == (1, 1, 0, True)
    assert broker.publish(Message("nobody", b"x", 1)).matched == 0
    assert session.drops == {"queue-full": 2} and broker.drops == {"queue-full": 2}


async def test_a_full_session_under_block_takes_the_message_and_says_held():
    broker = Broker(BrokerConfig(limits=Limits(max_queued_messages=2)))
    session, _ = broker.open_session("s", clean=False)
    broker.subscribe(session, "t", broker_options(1))
    assert session.deliver(Message("t", b"1", 1), 1, False) == TAKEN
    assert session.deliver(Message("t", b"2", 1), 1, False) == HELD  # the last place
    result = broker.publish(Message("t", b"3", 1))
    assert result.full == [session] and result.dropped == 0
    assert len(session.queued) == 3
    # QoS 0 over the bound is dropped even under block: nothing was promised for it.
    session.link = FakeLink()
    assert session.deliver(Message("t", b"q0", 0), 0, False) == DROPPED
    assert session.drops == {"queue-full": 1}


async def test_a_shared_message_goes_to_a_member_with_room_before_a_full_one():
    broker = Broker(BrokerConfig(limits=Limits(max_queued_messages=2, queue_overflow="drop-new")))
    full, _ = broker.open_session("full", clean=False)
    free, _ = broker.open_session("free", clean=False)
    for session in (full, free):
        broker.subscribe(session, "$share/g/t", broker_options(1))
    broker.subscribe(full, "other", broker_options(1))
    for n in range(2):
        broker.publish(Message("other", b"%d" % n, 1))
    assert not full.has_room()
    results = [broker.publish(Message("t", b"%d" % n, 1)) for n in range(2)]
    assert [r.dropped for r in results] == [0, 0]
    assert len(free.queued) == 2 and len(full.queued) == 2
    # Every member full: the policy of the one in turn applies, and the drop is counted.
    assert broker.publish(Message("t", b"x", 1)).dropped == 1
    assert broker.drops == {"queue-full": 1}


class FakeLink:
    def send_publish(self, delivery, packet_id, dup) -> bool:
        return True


def broker_options(qos: int) -> SubscriptionOptions:
    return SubscriptionOptions(qos)


# -- block ----------------------------------------------------------------------------------


async def test_block_holds_puback_and_reading_until_the_subscriber_drains(nursery, autojump_clock):
    broker = start_broker(nursery, max_queued_messages=5, max_inflight_messages=2)
    sub = await client(nursery, broker, "sub")
    await sub.subscribe("t", 1)
    pub = await client(nursery, broker, "pub", keep_alive=2)
    await pub.send(*publishes(1, 10))  # one read: all taken, over the bound
    session = broker.sessions["sub"]
    # 2 in flight, 5 queued: the 7th took the last place, so from it on the acks wait.
    assert [await pub.receive() for _ in range(6)] == [PubAck(i) for i in range(1, 7)]
    assert len(session.inflight) + len(session.queued) == 10
    assert await nothing_arrives(pub, within=10)  # no PUBACK; 10 s > 1.5 x keep alive
    await pub.send(*publishes(11, 1))
    await trio.testing.wait_all_tasks_blocked()
    assert len(session.inflight) + len(session.queued) == 10  # not read while held back
    payloads = await ack_everything(sub, 11)
    assert payloads == [b"%d" % i for i in range(1, 12)]
    assert [await pub.receive() for _ in range(5)] == [PubAck(i) for i in range(7, 12)]
    await pub.send(PingReq())  # still connected: the time held back is not idle time
    assert (await pub.receive()).__class__.__name__ == "PingResp"
    assert session.dropped == 0 and broker.drops == {}


async def test_block_holds_pubrec_of_qos2_in_order(nursery, autojump_clock):
    broker = start_broker(nursery, max_queued_messages=2, max_inflight_messages=1)
    sub = await client(nursery, broker, "sub")
    await sub.subscribe("t", 1)
    pub = await client(nursery, broker, "pub")
    await pub.send(*publishes(1, 4, qos=2))
    assert [await pub.receive() for _ in range(2)] == [PubRec(1), PubRec(2)]
    assert await nothing_arrives(pub)
    assert await ack_everything(sub, 4) == [b"1", b"2", b"3", b"4"]
    assert [await pub.receive() for _ in range(2)] == [PubRec(3), PubRec(4)]


async def test_block_ends_after_max_block_time_and_then_drops_with_a_log_line(
    nursery, autojump_clock, caplog
):
    caplog.set_level(logging.WARNING)
    broker = start_broker(nursery, max_queued_messages=3, max_inflight_messages=1,
                          max_block_time=5)
    sub = await client(nursery, broker, "sub")
    await sub.subscribe("t", 1)  # then never acknowledges
    pub = await client(nursery, broker, "pub", V5)
    start = trio.current_time()
    await pub.send(*publishes(1, 6), level=V5)
    acks = [await pub.receive(timeout=60) for _ in range(6)]
    assert 5 <= trio.current_time() - start < 6
    assert acks == [PubAck(i) for i in range(1, 7)]  # what it handed in was taken
    assert "client pub (memory): held back 5s by full queues (Session('sub'))" in caplog.text
    # Still full: new messages for it are dropped, and a 5.0 publisher is told so.
    await pub.send(*publishes(7, 2), level=V5)
    assert [(await pub.receive()).reason_code for _ in range(2)] == [rc.QUOTA_EXCEEDED] * 2
    assert broker.sessions["sub"].drops == {"queue-full": 2}
    assert "client sub: message dropped (queue-full" in caplog.text
    # Once it has room again, publishers are held back again rather than dropped.
    assert await ack_everything(sub, 6) == [b"%d" % i for i in range(1, 7)]
    await pub.send(*publishes(9, 5), level=V5)
    assert [await pub.receive() for _ in range(3)] == [PubAck(i) for i in range(9, 12)]
    assert await nothing_arrives(pub)  # held back: the queue filled up again


async def test_block_releases_a_publisher_when_the_full_session_ends(nursery, autojump_clock):
    broker = start_broker(nursery, max_queued_messages=2, max_inflight_messages=1)
    sub = await client(nursery, broker, "sub", clean_session=True)
    await sub.subscribe("t", 1)
    pub = await client(nursery, broker, "pub")
    await pub.send(*publishes(1, 4))
    assert [await pub.receive() for _ in range(2)] == [PubAck(1), PubAck(2)]
    assert await nothing_arrives(pub)
    await sub.send(Disconnect())  # a clean session ends with its connection
    assert [await pub.receive() for _ in range(2)] == [PubAck(3), PubAck(4)]


async def test_a_client_is_not_held_back_by_its_own_session(nursery, autojump_clock, caplog):
    caplog.set_level(logging.WARNING)
    broker = start_broker(nursery, max_queued_messages=2, max_inflight_messages=1)
    loop = await client(nursery, broker, "loop")
    await loop.subscribe("t", 1)
    await loop.send(*publishes(1, 5))
    packets = [await loop.receive() for _ in range(6)]
    assert sorted(type(p).__name__ for p in packets) == ["PubAck"] * 5 + ["Publish"]
    assert "client loop (memory): its own session is full" in caplog.text


# -- drop-new ---------------------------------------------------------------------------------


async def test_drop_new_v5_gets_quota_exceeded_only_when_every_session_was_full(nursery):
    broker = start_broker(nursery, max_queued_messages=1, max_inflight_messages=1,
                          queue_overflow="drop-new")
    full = await client(nursery, broker, "full")
    await full.subscribe("a/#", 1)
    pub = await client(nursery, broker, "pub", V5)
    await pub.send(*publishes(1, 3, topic="a/x"), level=V5)
    assert [await pub.receive() for _ in range(3)] == [
        PubAck(1), PubAck(2), PubAck(3, rc.QUOTA_EXCEEDED)]
    free = await client(nursery, broker, "free")
    await free.subscribe("a/+", 1)
    await pub.send(*publishes(4, 1, topic="a/x"), level=V5)
    assert await pub.receive() == PubAck(4)  # one session took it: success
    await pub.send(Publish("a/x", b"q2", 2, packet_id=5), level=V5)
    assert await pub.receive() == PubRec(5)
    assert broker.sessions["full"].drops == {"queue-full": 3}
    # A refused QoS 2 message is finished: the same packet id may carry a new one.
    await free.send(Disconnect())
    await trio.testing.wait_all_tasks_blocked()
    await pub.send(Publish("a/x", b"again", 2, packet_id=7), level=V5)
    assert await pub.receive() == PubRec(7, rc.QUOTA_EXCEEDED)
    assert 7 not in broker.sessions["pub"].inbound_qos2


async def test_drop_new_v311_is_acknowledged_counted_and_logged(nursery, caplog):
    caplog.set_level(logging.WARNING)
    broker = start_broker(nursery, max_queued_messages=1, max_inflight_messages=1,
                          queue_overflow="drop-new")
    sub = await client(nursery, broker, "sub")
    await sub.subscribe("t", 1)
    pub = await client(nursery, broker, "pub")
    await pub.send(*publishes(1, 4))
    assert [await pub.receive() for _ in range(4)] == [PubAck(i) for i in range(1, 5)]
    assert broker.drops == {"queue-full": 2}
    assert "client sub: message dropped (queue-full; 1 messages, 1 bytes queued)" in caplog.text


# -- drop-oldest ------------------------------------------------------------------------------


async def test_drop_oldest_keeps_the_newest_messages(nursery):
    broker = start_broker(nursery, max_queued_messages=3, max_inflight_messages=1,
                          queue_overflow="drop-oldest")
    sub = await client(nursery, broker, "sub", clean_session=False)
    await sub.subscribe("t", 1)
    await sub.send(Disconnect())
    await sub.receive_until_closed()
    pub = await client(nursery, broker, "pub")
    await pub.send(*publishes(1, 10))
    assert [await pub.receive() for _ in range(10)] == [PubAck(i) for i in range(1, 11)]
    back = await client(nursery, broker, "sub", clean_session=False)
    assert await ack_everything(back, 3) == [b"8", b"9", b"10"]
    assert broker.sessions["sub"].drops == {"drop-oldest": 7}
    assert broker.drops == {"drop-oldest": 7}


# -- persistent sessions live on disk ---------------------------------------------------------


@contextlib.asynccontextmanager
async def running(data_dir: Path, **limits: object):
    """A broker with its store on ``data_dir``, and a nursery for its clients."""
    broker = Broker(BrokerConfig(data_dir=data_dir, limits=Limits(**limits),
                                 storage=StorageConfig(fsync="never")))
    async with open_durable_state(broker) as tasks, trio.open_nursery() as nursery:
        nursery.start_soon(broker.timers.run)
        tasks.start(nursery)
        yield broker, nursery
        nursery.cancel_scope.cancel()


async def park(nursery: trio.Nursery, broker: Broker, client_id: str) -> None:
    """A persistent session subscribed to ``t`` at QoS 1, its client gone."""
    sub = await client(nursery, broker, client_id, clean_session=False)
    await sub.subscribe("t", 1)
    await sub.send(Disconnect())
    await sub.receive_until_closed()


async def test_persistent_session_at_defaults_keeps_more_than_max_queued_messages(tmp_path):
    async with running(tmp_path) as (broker, nursery):
        await park(nursery, broker, "sub")
        pub = await client(nursery, broker, "pub")
        for first in range(1, 1501, 100):
            await pub.send(*publishes(first, 100))
            assert [await pub.receive() for _ in range(100)] == [
                PubAck(i) for i in range(first, first + 100)]
        assert len(broker.sessions["sub"].queued) == 1500 > Limits().max_queued_messages
        back = await client(nursery, broker, "sub", clean_session=False)
        assert await ack_everything(back, 1500) == [b"%d" % i for i in range(1, 1501)]
        assert broker.drops == {}


async def test_the_stored_bound_follows_the_policy(tmp_path):
    async with running(tmp_path, queue_overflow="drop-oldest") as (broker, nursery):
        broker.journal.max_messages = 4  # storage.max_stored_messages_per_session
        await park(nursery, broker, "sub")
        pub = await client(nursery, broker, "pub")
        await pub.send(*publishes(1, 10))
        assert [await pub.receive() for _ in range(10)] == [PubAck(i) for i in range(1, 11)]
        session = broker.sessions["sub"]
        assert session.journal.count == 4 and session.drops == {"drop-oldest": 6}
        back = await client(nursery, broker, "sub", clean_session=False)
        assert await ack_everything(back, 4) == [b"7", b"8", b"9", b"10"]


def test_a_blocking_queue_restored_over_its_bound_keeps_every_message():
    from polybroker.queues import BLOCK, DROP_NEW, Queue, QueueEntry

    def entries() -> list[QueueEntry]:
        return [QueueEntry(Message("q", b"%d" % i, 1), i, persistent=True) for i in range(3)]

    blocking = Queue("q", clock=lambda: 0.0, max_length=2, overflow=BLOCK)
    assert blocking.restore(entries()) == 3  # taken over the bound, acknowledged
    dropping = Queue("q", clock=lambda: 0.0, max_length=2, overflow=DROP_NEW)
    assert dropping.restore(entries()) == 2 and dropping.drops.counts == {"queue-full": 1}


def test_queue_drops_are_counted_per_reason_and_broker_wide():
    from collections import Counter

    from polybroker.queues import DROP_HEAD, DROP_NEW, Queue

    now = [0.0]
    totals: Counter[str] = Counter()
    dropping = Queue("a", clock=lambda: now[0], max_length=1, overflow=DROP_NEW,
                     drop_totals=totals)
    assert dropping.put(Message("a", b"1", 1)) and not dropping.put(Message("a", b"2", 1))
    oldest = Queue("b", clock=lambda: now[0], max_length=1, overflow=DROP_HEAD,
                   drop_totals=totals)
    assert oldest.put(Message("b", b"1", 1)) and oldest.put(Message("b", b"2", 1))
    oldest.message_ttl = 1.0
    oldest.put(Message("b", b"3", 1))
    now[0] = 5.0
    assert oldest.get() is None  # "3" expired at the head
    assert dropping.drops.counts == {"queue-full": 1}
    assert oldest.drops.counts == {"drop-oldest": 2, "expired": 1}
    assert totals == {"queue-full": 1, "drop-oldest": 2, "expired": 1}


async def test_stored_bounds_smaller_than_the_window_follow_the_policy_too(tmp_path):
    async with running(tmp_path) as (broker, nursery):
        broker.journal.max_messages = 2  # below max_inflight_messages (20)
        sub = await client(nursery, broker, "sub", clean_session=False)
        await sub.subscribe("t", 1)
        pub = await client(nursery, broker, "pub")
        await pub.send(*publishes(1, 4))
        # 1 and 2 go out at once and fill the stored bound: 3 is taken over it.
        assert [await pub.receive() for _ in range(2)] == [PubAck(1), PubAck(2)]
        assert await nothing_arrives(pub, within=0.5)  # ok: real time, the store runs
        assert await ack_everything(sub, 4) == [b"1", b"2", b"3", b"4"]
        assert [await pub.receive() for _ in range(2)] == [PubAck(3), PubAck(4)]
        assert broker.drops == {}

"""The queue life cycle on the core (AMQP's rules, RabbitMQ's semantics): declaring,
exclusive owners, auto-delete, x-expires, TTLs, length limits, dead-lettering, purge,
delete, and prefetch shared by the consumers of a channel. Time is a fake clock; the
broker's timers are run by hand."""

import pytest
import trio

from polybroker.broker import Broker
from polybroker.message import Message
from polybroker.queues import SharedPrefetch
from polybroker.refusals import AccessRefused, NotFound, PreconditionFailed, ResourceLocked


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Consumer:
    def __init__(self, name: str = "c") -> None:
        self.name = name
        self.received: list[tuple[bytes, int | None, bool]] = []
        self.deleted: list = []

    def __repr__(self) -> str:
        return f"Consumer({self.name})"

    def deliver_from_queue(self, queue, entry, tag):
        self.received.append((entry.message.payload, tag, entry.redelivered))

    def has_credit(self) -> bool:
        return True

    def queue_deleted(self, queue) -> None:
        self.deleted.append(queue.name)

    @property
    def payloads(self) -> list[bytes]:
        return [payload for payload, _, _ in self.received]

    @property
    def tags(self) -> list[int]:
        return [tag for _, tag, _ in self.received]


class Owner:
    """A connection, as the adapter passes it."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(clock) -> Broker:
    return Broker(clock=clock)


def advance(core: Broker, clock: FakeClock, seconds: float) -> None:
    clock.now += seconds
    core.timers.run_due()


def msg(body: bytes = b"x", **fields) -> Message:
    return Message("", body, origin_protocol="amqp", **fields)


def publish(core: Broker, queue: str, *bodies: bytes, **fields) -> None:
    for body in bodies:
        assert core.exchanges.publish("", queue, msg(body, **fields)) == 1


def ready(queue) -> list[bytes]:
    return [entry.message.payload for entry in queue.ready]


# -- declaring ------------------------------------------------------------------------------


def test_server_named_queues(core):
    owner = Owner()
    first = core.queues.declare_queue("", owner=owner, exclusive=True)
    second = core.queues.declare_queue("", owner=owner, exclusive=True)
    assert first.name.startswith("amq.gen-") and second.name.startswith("amq.gen-")
    assert first.name != second.name and len(first.name) == len("amq.gen-") + 22
    # redeclaring the name it was given is fine; creating a new amq. name is not
    assert core.queues.declare_queue(first.name, owner=owner, exclusive=True) is first
    with pytest.raises(AccessRefused):
        core.queues.declare_queue("amq.mine", owner=owner)


def test_passive_declare_and_declare_ok_counts(core):
    with pytest.raises(NotFound):
        core.queues.declare_queue("hello", passive=True)
    queue = core.queues.declare_queue("hello", durable=True)
    publish(core, "hello", b"1", b"2", b"3")
    queue.add_consumer(Consumer(), prefetch=1)
    found = core.queues.declare_queue("hello", passive=True)
    assert found is queue
    assert (found.message_count, found.consumer_count) == (2, 1)


def test_redeclaring_must_be_equivalent(core):
    core.queues.declare_queue("q", durable=True, arguments={"x-expires": 1000})
    for flags in ({"durable": False, "arguments": {"x-expires": 1000}},
                  {"durable": True, "auto_delete": True, "arguments": {"x-expires": 1000}},
                  {"durable": True, "arguments": {"x-expires": 2000}},
                  {"durable": True}):
        with pytest.raises(PreconditionFailed):
            core.queues.declare_queue("q", **flags)
    owner = Owner()
    with pytest.raises(PreconditionFailed):
        core.queues.declare_queue("q", owner=owner, exclusive=True, durable=True,
                                  arguments={"x-expires": 1000})
    core.queues.declare_queue("q", durable=True, arguments={"x-expires": 1000})
    core.queues.declare_queue("t", arguments={"x-overflow": "reject-publish"})
    core.queues.declare_queue("t", arguments={"x-overflow": b"reject-publish"})  # same text


@pytest.mark.parametrize("arguments", [
    {"x-expires": 0}, {"x-expires": "10"}, {"x-message-ttl": -1}, {"x-max-length": True},
    {"x-overflow": "drop-tail"}, {"x-dead-letter-routing-key": "k"},
    {"x-dead-letter-exchange": 5},
])
def test_bad_arguments_are_refused(core, arguments):
    with pytest.raises(PreconditionFailed):
        core.queues.declare_queue("q", arguments=arguments)
    assert "q" not in core.queues


def test_a_queue_stomp_created_takes_its_first_declaration(core):
    stomp_queue = core.queues.declare("jobs")  # STOMP: by use, durable
    queue = core.queues.declare_queue("jobs", durable=False, auto_delete=True,
                                      arguments={"x-message-ttl": 5})
    assert queue is stomp_queue
    assert (queue.durable, queue.auto_delete, queue.message_ttl) == (False, True, 0.005)
    with pytest.raises(PreconditionFailed):
        core.queues.declare_queue("jobs", durable=True)


# -- exclusive queues -----------------------------------------------------------------------


def test_exclusive_queues_are_locked_to_their_connection(core):
    mine, other = Owner(), Owner()
    queue = core.queues.declare_queue("reply", owner=mine, exclusive=True, durable=True)
    assert queue.exclusive and queue.owner is mine
    for attempt in (
        lambda: core.queues.declare_queue("reply", owner=other, passive=True),
        lambda: core.queues.declare_queue("reply", owner=other, exclusive=True, durable=True),
        lambda: core.queues.lookup("reply", other),
        lambda: core.queues.purge("reply", other),
        lambda: core.queues.delete_queue("reply", owner=other),
        lambda: queue.add_consumer(Consumer(), owner=other),
    ):
        with pytest.raises(ResourceLocked) as refused:
            attempt()
        assert refused.value.code == 405
    assert core.queues.lookup("reply", mine) is queue
    queue.add_consumer(Consumer(), owner=mine)
    publish(core, "reply", b"anyone may publish")


def test_exclusive_queues_go_when_their_owner_closes(core):
    mine, other = Owner(), Owner()
    consumer = Consumer()
    a = core.queues.declare_queue("", owner=mine, exclusive=True)
    core.queues.declare_queue("b", owner=mine, exclusive=True)
    core.queues.declare_queue("c", owner=other, exclusive=True)
    core.queues.declare_queue("shared", owner=mine)  # not exclusive: stays
    a.add_consumer(consumer)
    assert core.queues.owner_closed(mine) == 2
    assert sorted(q.name for q in core.queues) == ["c", "shared"]
    assert consumer.deleted == [a.name]
    assert core.queues.owner_closed(mine) == 0


def test_an_exclusive_consumer_keeps_others_out(core):
    queue = core.queues.declare_queue("q")
    queue.add_consumer(Consumer("a"), exclusive=True)
    with pytest.raises(AccessRefused):
        queue.add_consumer(Consumer("b"))
    other = core.queues.declare_queue("r")
    other.add_consumer(Consumer("a"))
    with pytest.raises(AccessRefused):
        other.add_consumer(Consumer("b"), exclusive=True)


# -- auto-delete and x-expires ----------------------------------------------------------------


def test_auto_delete_after_the_last_consumer_only_if_it_ever_had_one(core):
    queue = core.queues.declare_queue("pidbox", auto_delete=True)
    core.exchanges.declare("celery.pidbox", "fanout")
    core.exchanges.bind("pidbox", "celery.pidbox")
    a, b = Consumer("a"), Consumer("b")
    assert "pidbox" in core.queues  # never consumed: stays
    queue.add_consumer(a)
    queue.add_consumer(b)
    queue.remove_consumer(a)
    assert "pidbox" in core.queues
    queue.remove_consumer(b)
    assert "pidbox" not in core.queues
    assert core.exchanges.publish("celery.pidbox", "", msg()) == 0  # binding gone too
    assert b.deleted == []  # a consumer that left is not told


def test_x_expires_deletes_an_unused_queue(core, clock):
    core.queues.declare_queue("q", arguments={"x-expires": 1000})
    advance(core, clock, 0.9)
    assert "q" in core.queues
    advance(core, clock, 0.2)
    assert "q" not in core.queues


def test_x_expires_counts_consumers_gets_and_redeclarations_as_use(core, clock):
    queue = core.queues.declare_queue("q", arguments={"x-expires": 1000})
    advance(core, clock, 0.8)
    core.queues.declare_queue("q", arguments={"x-expires": 1000})  # redeclared: use
    advance(core, clock, 0.8)
    assert queue.get() is None  # basic.get: use
    advance(core, clock, 0.8)
    consumer = Consumer()
    queue.add_consumer(consumer)
    advance(core, clock, 5)  # consumed all along
    assert "q" in core.queues
    queue.remove_consumer(consumer)
    advance(core, clock, 0.9)
    assert "q" in core.queues
    core.queues.declare_queue("q", passive=True)  # passive redeclaration: use as well
    advance(core, clock, 0.9)
    assert "q" in core.queues
    advance(core, clock, 0.2)
    assert "q" not in core.queues


# -- message expiry -------------------------------------------------------------------------


def test_x_message_ttl_expires_messages_at_the_head_without_a_dequeue(core, clock):
    queue = core.queues.declare_queue("events", arguments={"x-message-ttl": 5000})
    publish(core, "events", b"old")
    advance(core, clock, 3)
    publish(core, "events", b"new")
    advance(core, clock, 2.5)
    assert ready(queue) == [b"new"]
    advance(core, clock, 3)
    assert queue.message_count == 0


def test_x_message_ttl_is_enforced_at_dequeue(core, clock):
    queue = core.queues.declare_queue("q", arguments={"x-message-ttl": 1000})
    publish(core, "q", b"a")
    clock.now += 2  # the timer has not run: the dequeue must see it anyway
    assert queue.get() is None
    publish(core, "q", b"b")
    consumer = Consumer()
    clock.now += 0.5
    queue.add_consumer(consumer)
    assert consumer.payloads == [b"b"]


def test_per_message_expiration_and_the_queue_ttl_whichever_first(core, clock):
    queue = core.queues.declare_queue("q", arguments={"x-message-ttl": 10000})
    publish(core, "q", b"short", expiry=clock.now + 1)
    publish(core, "q", b"long", expiry=clock.now + 60)
    clock.now += 2
    entry, _ = queue.get()
    assert entry.message.payload == b"long"  # "short" expired at its own deadline
    publish(core, "q", b"capped", expiry=clock.now + 60)
    advance(core, clock, 11)
    assert queue.message_count == 0  # the queue's TTL came first


# -- length limits --------------------------------------------------------------------------


def test_x_max_length_drop_head(core):
    queue = core.queues.declare_queue("q", arguments={"x-max-length": 2})
    publish(core, "q", b"1", b"2", b"3")
    assert ready(queue) == [b"2", b"3"]
    consumer = Consumer()
    queue.add_consumer(consumer, prefetch=2)  # unacknowledged ones do not count
    publish(core, "q", b"4", b"5")
    assert ready(queue) == [b"4", b"5"] and queue.unacked_count == 2


def test_x_max_length_bytes_drop_head(core):
    queue = core.queues.declare_queue("q", arguments={"x-max-length-bytes": 10})
    publish(core, "q", b"aaaa", b"bbbb", b"cccc")
    assert ready(queue) == [b"bbbb", b"cccc"]
    refused: list = []
    core.exchanges.publish("", "q", msg(b"x" * 11), refused=refused)
    assert ready(queue) == [] and refused == []  # it goes itself, but was not refused


def test_x_overflow_reject_publish_refuses_new_messages(core):
    queue = core.queues.declare_queue(
        "q", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    refused: list = []
    core.exchanges.publish("", "q", msg(b"1"), refused=refused)
    core.exchanges.publish("", "q", msg(b"2"), refused=refused)
    assert ready(queue) == [b"1"] and refused == [queue]


# -- dead-lettering -------------------------------------------------------------------------


def dead_letter_setup(core, **arguments):
    core.exchanges.declare("dlx", "direct")
    dead = core.queues.declare_queue("dead")
    core.exchanges.bind("dead", "dlx", "work")
    core.exchanges.bind("dead", "dlx", "elsewhere")
    work = core.queues.declare_queue(
        "work", arguments={"x-dead-letter-exchange": "dlx", **arguments})
    return work, dead


def test_rejected_messages_are_dead_lettered_with_their_history(core):
    work, dead = dead_letter_setup(core)
    publish(core, "work", b"bad", b"good")
    consumer = Consumer()
    work.add_consumer(consumer)
    first, second = consumer.tags
    work.nack(first, requeue=False)
    work.nack(second, requeue=True)  # requeued: not dead
    assert ready(dead) == [b"bad"]
    message = dead.ready[0].message
    assert (message.amqp.exchange, message.amqp.routing_key) == ("dlx", "work")
    [death] = message.amqp.deaths
    assert (death.queue, death.reason, death.exchange, death.routing_keys, death.count) == (
        "work", "rejected", "", ("work",), 1)


def test_expired_and_pushed_out_messages_are_dead_lettered(core, clock):
    _, dead = dead_letter_setup(core, **{"x-message-ttl": 1000, "x-max-length": 1})
    publish(core, "work", b"pushed", b"expires")
    advance(core, clock, 2)
    assert ready(dead) == [b"pushed", b"expires"]
    assert [m.message.amqp.deaths[0].reason for m in dead.ready] == ["maxlen", "expired"]
    assert dead.ready[1].message.expiry is None  # the expiration does not follow it


def test_dead_letter_routing_key_and_what_is_not_dead_lettered(core):
    work, dead = dead_letter_setup(core, **{"x-dead-letter-routing-key": "elsewhere"})
    publish(core, "work", b"a", b"b")
    assert work.purge() == 2  # purged: not dead-lettered
    publish(core, "work", b"c")
    consumer = Consumer()
    work.add_consumer(consumer)
    work.reject(consumer.tags[0], requeue=False)
    assert ready(dead) == [b"c"]
    assert dead.ready[0].message.amqp.routing_key == "elsewhere"
    publish(core, "work", b"d")
    core.queues.delete_queue("work")  # deleted: not dead-lettered
    assert ready(dead) == [b"c"]


def test_dead_letter_cycles_without_rejection_are_dropped(core, clock):
    # expired messages go back to their own queue: RabbitMQ drops the second time round
    queue = core.queues.declare_queue("loop", arguments={
        "x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "loop"})
    publish(core, "loop", b"m")
    advance(core, clock, 1.5)
    assert ready(queue) == [b"m"]
    assert [(d.queue, d.reason, d.count) for d in queue.ready[0].message.amqp.deaths] == [
        ("loop", "expired", 1)]
    advance(core, clock, 1.5)
    assert queue.message_count == 0
    # a rejection in the cycle keeps it going, counting
    publish(core, "loop", b"r")
    consumer = Consumer()
    queue.add_consumer(consumer)
    queue.nack(consumer.tags[-1], requeue=False)
    queue.nack(consumer.tags[-1], requeue=False)
    assert consumer.payloads == [b"r", b"r", b"r"]
    assert [(d.reason, d.count) for d in queue.entries()[0].message.amqp.deaths] == [
        ("rejected", 2)]


def test_a_missing_dead_letter_exchange_drops_the_message(core):
    work = core.queues.declare_queue("work", arguments={"x-dead-letter-exchange": "nowhere"})
    publish(core, "work", b"m")
    consumer = Consumer()
    work.add_consumer(consumer)
    work.nack(consumer.tags[0], requeue=False)
    assert work.message_count == work.unacked_count == 0


# -- purge and delete -----------------------------------------------------------------------


def test_purge_returns_the_count_and_keeps_unacknowledged_ones(core):
    queue = core.queues.declare_queue("q")
    publish(core, "q", b"1", b"2", b"3")
    queue.add_consumer(Consumer(), prefetch=1)
    assert core.queues.purge("q") == 2
    assert (queue.message_count, queue.unacked_count) == (0, 1)
    with pytest.raises(NotFound):
        core.queues.purge("missing")


def test_delete_conditions_and_count(core):
    queue = core.queues.declare_queue("q")
    publish(core, "q", b"1", b"2")
    with pytest.raises(PreconditionFailed):
        core.queues.delete_queue("q", if_empty=True)
    consumer = Consumer()
    queue.add_consumer(consumer, prefetch=1)
    with pytest.raises(PreconditionFailed):
        core.queues.delete_queue("q", if_unused=True)
    assert core.queues.delete_queue("q") == 1  # ready ones; the unacknowledged one goes too
    assert consumer.deleted == ["q"] and queue.consumer_count == 0
    assert queue.ack(consumer.tags[0]) is False  # a late ack is harmless
    assert core.queues.delete_queue("q") == 0  # missing: no error


def test_deleting_a_queue_tells_every_consumer_and_drops_its_bindings(core):
    queue = core.queues.declare_queue("q")
    core.exchanges.bind("q", "amq.direct", "k")
    core.exchanges.bind("q", "amq.topic", "a.*")
    consumers = [Consumer("a"), Consumer("b")]
    for consumer in consumers:
        queue.add_consumer(consumer)
    core.queues.delete_queue("q")
    assert [c.deleted for c in consumers] == [["q"], ["q"]]
    assert core.exchanges.publish("amq.direct", "k", msg()) == 0
    assert core.router.match("a/b") == []
    assert core.exchanges.bindings_of(queue) == []


# -- consumers ------------------------------------------------------------------------------


def test_channel_prefetch_is_shared_by_the_consumers_of_several_queues(core):
    a, b = core.queues.declare_queue("a"), core.queues.declare_queue("b")
    publish(core, "a", b"a1", b"a2", b"a3")
    publish(core, "b", b"b1", b"b2")
    channel = SharedPrefetch(2)  # basic.qos(prefetch_count=2, global=True)
    first, second = Consumer("1"), Consumer("2")
    a.add_consumer(first, shared=channel)
    b.add_consumer(second, shared=channel)
    assert (first.payloads, second.payloads) == ([b"a1", b"a2"], [])
    a.ack(first.tags[0])  # the room goes to whoever can take it
    assert len(first.payloads) + len(second.payloads) == 3
    channel.set_limit(10)  # raised at run time: applies at once
    assert sorted(first.payloads + second.payloads) == [b"a1", b"a2", b"a3", b"b1", b"b2"]
    assert channel.unacked == 4


def test_per_consumer_and_channel_prefetch_both_apply(core):
    queue = core.queues.declare_queue("q")
    publish(core, "q", *[str(i).encode() for i in range(6)])
    channel = SharedPrefetch(3)
    a, b = Consumer("a"), Consumer("b")
    queue.add_consumer(a, prefetch=1, shared=channel)
    queue.add_consumer(b, prefetch=5, shared=channel)
    assert (len(a.payloads), len(b.payloads)) == (1, 2)
    no_ack = Consumer("n")  # no_ack consumers are bounded by neither
    queue.add_consumer(no_ack, ack_required=False, shared=channel)
    assert len(no_ack.payloads) == 3 and channel.unacked == 3


def test_cancel_keeps_unacknowledged_messages_pending(core):
    queue = core.queues.declare_queue("q")
    publish(core, "q", b"x", b"y", b"z")
    channel = SharedPrefetch(2)
    consumer = Consumer()
    queue.add_consumer(consumer, shared=channel)
    assert queue.remove_consumer(consumer, settle=False) == 0  # basic.cancel
    assert (queue.unacked_count, channel.unacked) == (2, 2)
    assert queue.ack(consumer.tags[0])
    assert channel.unacked == 1
    assert queue.release(consumer) == 1  # the channel closes: back, redelivered, in order
    assert ready(queue) == [b"y", b"z"] and queue.ready[0].redelivered


def test_deleting_a_queue_gives_its_channel_prefetch_room_to_other_queues(core):
    a, b = core.queues.declare_queue("a"), core.queues.declare_queue("b")
    publish(core, "a", b"a1")
    publish(core, "b", b"b1")
    channel = SharedPrefetch(1)
    first, second = Consumer("1"), Consumer("2")
    a.add_consumer(first, shared=channel)
    b.add_consumer(second, shared=channel)
    assert (first.payloads, second.payloads) == ([b"a1"], [])
    core.queues.delete_queue("a")
    assert second.payloads == [b"b1"] and channel.unacked == 1


def test_x_overflow_reject_publish_dlx_refuses_and_dead_letters(core):
    work, dead = dead_letter_setup(core, **{"x-max-length": 1,
                                            "x-overflow": "reject-publish-dlx"})
    refused: list = []
    core.exchanges.publish("", "work", msg(b"1"), refused=refused)
    core.exchanges.publish("", "work", msg(b"2"), refused=refused)
    assert (ready(work), ready(dead), refused) == ([b"1"], [b"2"], [work])
    assert dead.ready[0].message.amqp.deaths[0].reason == "maxlen"


def test_ttl_zero_reaches_a_ready_consumer_and_nobody_else(core, clock):
    queue = core.queues.declare_queue("q", arguments={"x-message-ttl": 0})
    publish(core, "q", b"nobody")
    advance(core, clock, 0)
    assert queue.message_count == 0
    consumer = Consumer()
    queue.add_consumer(consumer)
    publish(core, "q", b"now")
    assert consumer.payloads == [b"now"]
    queue.nack(consumer.tags[0], requeue=True)  # back in the queue: its time is up
    assert consumer.payloads == [b"now"] and queue.message_count == 0


async def test_the_broker_timer_task_expires_idle_queues_and_messages(broker, autojump_clock):
    queue = broker.queues.declare_queue("celeryev.x", arguments={
        "x-expires": 60000, "x-message-ttl": 5000})
    broker.exchanges.publish("", "celeryev.x", msg(b"event"))
    await trio.sleep(6)  # ok: mock clock
    assert "celeryev.x" in broker.queues and queue.message_count == 0
    await trio.sleep(60)  # ok: mock clock
    assert "celeryev.x" not in broker.queues

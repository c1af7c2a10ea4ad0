"""The queue subscriber kind: competing consumers, prefetch, acks, redelivery, bounds."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.broker import ANY_QOS, Broker
from polybroker.message import Message
from polybroker.queue_registry import QueueRegistry
from polybroker.queues import DROP_HEAD, Queue


class Consumer:
    """Records what it is given; ``credit`` is what ``has_credit`` answers."""

    def __init__(self, name: str, credit: bool = True) -> None:
        self.name = name
        self.credit = credit
        self.received: list[tuple[bytes, int | None, bool]] = []

    def __repr__(self) -> str:
        return f"Consumer({self.name})"

    def deliver_from_queue(self, queue, entry, tag):
        self.received.append((entry.message.payload, tag, entry.redelivered))

    def has_credit(self) -> bool:
        return self.credit

    @property
    def payloads(self) -> list[bytes]:
        return [payload for payload, _, _ in self.received]

    def tags(self) -> list[int]:
        return [tag for _, tag, _ in self.received]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_queue(max_length: int = 1000, **kwargs) -> Queue:
    return Queue("q", clock=kwargs.pop("clock", FakeClock()), max_length=max_length, **kwargs)


def msg(payload: bytes | str, **kwargs) -> Message:
    if isinstance(payload, str):
        payload = payload.encode()
    return Message("q", payload, **kwargs)


def put_all(queue: Queue, *payloads: str) -> None:
    for payload in payloads:
        assert queue.put(msg(payload))


# -- holding and competing ----------------------------------------------------------------


def test_messages_sent_before_any_consumer_are_kept_in_order():
    queue = make_queue()
    put_all(queue, "1", "2", "3")
    assert queue.message_count == 3
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    assert consumer.payloads == [b"1", b"2", b"3"]
    assert queue.message_count == 0 and queue.unacked_count == 3


def test_competing_consumers_take_turns_and_each_message_goes_to_one():
    queue = make_queue()
    consumers = [Consumer(name) for name in "abc"]
    for consumer in consumers:
        queue.add_consumer(consumer)
    assert queue.consumer_count == 3
    put_all(queue, *"123456")
    assert [c.payloads for c in consumers] == [[b"1", b"4"], [b"2", b"5"], [b"3", b"6"]]


def test_backlog_is_shared_between_consumers_present_when_it_is_dispatched():
    queue = make_queue()
    put_all(queue, *"1234")
    a, b = Consumer("a", credit=False), Consumer("b")
    queue.add_consumer(a)
    queue.add_consumer(b, prefetch=1)
    assert b.payloads == [b"1"]
    a.credit = True
    queue.dispatch()
    assert a.payloads == [b"2", b"3", b"4"]


def test_consumer_without_credit_is_skipped_until_it_dispatches_again():
    queue = make_queue()
    a, b = Consumer("a", credit=False), Consumer("b", credit=False)
    queue.add_consumer(a)
    queue.add_consumer(b)
    put_all(queue, "1", "2")
    assert queue.message_count == 2
    b.credit = True
    queue.dispatch()
    assert (a.payloads, b.payloads) == ([], [b"1", b"2"])


def test_prefetch_bounds_unacknowledged_messages_per_consumer():
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer, prefetch=2)
    put_all(queue, *"12345")
    assert consumer.payloads == [b"1", b"2"]
    assert queue.ack(consumer.tags()[0])
    assert consumer.payloads == [b"1", b"2", b"3"]
    queue.set_prefetch(consumer, 0)  # 0: no bound
    assert consumer.payloads == [b"1", b"2", b"3", b"4", b"5"]


def test_prefetch_does_not_apply_without_acks():
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer, ack_required=False, prefetch=1)
    put_all(queue, "1", "2", "3")
    assert consumer.received == [(b"1", None, False), (b"2", None, False), (b"3", None, False)]
    assert queue.unacked_count == 0


def test_add_consumer_twice_or_with_negative_prefetch_is_refused():
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    with pytest.raises(ValueError):
        queue.add_consumer(consumer)
    with pytest.raises(ValueError):
        queue.add_consumer(Consumer("b"), prefetch=-1)


def test_add_consumer_without_dispatch_waits_for_the_caller():
    queue = make_queue()
    put_all(queue, "1")
    consumer = Consumer("a")
    queue.add_consumer(consumer, dispatch=False)
    assert consumer.received == []
    queue.dispatch()
    assert consumer.payloads == [b"1"]


# -- acknowledgements and redelivery ---------------------------------------------------------


def test_ack_settles_once_and_unknown_tags_are_refused():
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    put_all(queue, "1")
    [tag] = consumer.tags()
    assert queue.ack(tag) is True
    assert queue.ack(tag) is False
    assert queue.nack(tag) is False
    assert queue.unacked_count == 0 and queue.message_count == 0


def test_the_queue_counts_what_it_takes_in_hands_out_and_is_acknowledged():
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    put_all(queue, "1", "2")
    first, second = consumer.tags()
    queue.ack(first)
    queue.nack(second)  # requeued to the same consumer: a second delivery
    queue.remove_consumer(consumer, requeue=True)
    put_all(queue, "3")
    assert queue.get() is not None
    assert (queue.published, queue.delivered, queue.acknowledged) == (3, 4, 1)


def test_tags_are_unique_and_increasing():
    queue = make_queue()
    a, b = Consumer("a"), Consumer("b")
    queue.add_consumer(a)
    queue.add_consumer(b)
    put_all(queue, *"1234")
    tags = sorted(a.tags() + b.tags())
    assert tags == list(range(tags[0], tags[0] + 4))


def test_nack_requeues_for_another_consumer_flagged_redelivered():
    queue = make_queue()
    a, b = Consumer("a"), Consumer("b")
    queue.add_consumer(a)
    queue.add_consumer(b)
    put_all(queue, "1")
    assert a.payloads == [b"1"]
    # Round-robin would give the next message to b anyway; take b's turn first.
    put_all(queue, "2")
    queue.ack(b.tags()[0])
    assert queue.nack(a.tags()[0])
    assert b.received[-1][0::2] == (b"1", True)
    assert len(a.received) == 1


def test_nack_prefers_another_consumer_even_out_of_turn():
    queue = make_queue()
    a, b = Consumer("a"), Consumer("b")
    queue.add_consumer(a)
    queue.add_consumer(b)
    put_all(queue, "1", "2")  # a has 1, b has 2; a's turn next
    queue.nack(b.tags()[0])
    assert a.received[-1] == (b"2", a.received[-1][1], True)
    assert len(b.received) == 1


def test_nack_with_a_single_consumer_redelivers_to_it():
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    put_all(queue, "1")
    queue.nack(consumer.tags()[0])
    assert consumer.received[1][0::2] == (b"1", True)
    assert consumer.received[1][1] != consumer.received[0][1]


@pytest.mark.parametrize("method", ["nack", "reject"])
def test_nack_without_requeue_drops_the_message(method):
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    put_all(queue, "1")
    assert getattr(queue, method)(consumer.tags()[0], requeue=False)
    assert len(consumer.received) == 1
    assert queue.message_count == queue.unacked_count == 0


def test_removed_consumer_messages_go_back_in_arrival_order_before_later_ones():
    queue = make_queue()
    a, b = Consumer("a"), Consumer("b")
    queue.add_consumer(a, prefetch=2)
    queue.add_consumer(b, prefetch=2)
    put_all(queue, *"123456")  # a: 1 3, b: 2 4, ready: 5 6
    assert queue.remove_consumer(a) == 2
    # b is at its prefetch: 1 and 3 wait, ahead of 5 and 6.
    assert [e.message.payload for e in queue.ready] == [b"1", b"3", b"5", b"6"]
    assert queue.remove_consumer(b) == 2
    assert [(e.message.payload, e.redelivered) for e in queue.ready] == [
        (b"1", True), (b"2", True), (b"3", True), (b"4", True), (b"5", False), (b"6", False),
    ]
    assert queue.remove_consumer(b) == 0


def test_removed_consumer_messages_are_redelivered_to_the_others():
    queue = make_queue()
    a, b = Consumer("a"), Consumer("b")
    queue.add_consumer(a)
    queue.add_consumer(b)
    put_all(queue, "1", "2")
    queue.remove_consumer(a)
    assert b.received[1][0::2] == (b"1", True)


def test_remove_consumer_without_requeue_drops_its_messages():
    queue = make_queue()
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    put_all(queue, "1")
    assert queue.remove_consumer(consumer, requeue=False) == 1
    assert queue.message_count == 0


def test_remove_consumer_keeps_the_turn_order():
    queue = make_queue()
    a, b, c = Consumer("a"), Consumer("b"), Consumer("c")
    for consumer in (a, b, c):
        queue.add_consumer(consumer, ack_required=False)
    put_all(queue, "1", "2")  # a, b; c is next
    queue.remove_consumer(a)
    put_all(queue, "3", "4")
    assert (b.payloads, c.payloads) == ([b"2", b"4"], [b"3"])


def test_consumer_acking_inside_its_callback_keeps_dispatch_going():
    queue = make_queue()

    class AckingConsumer(Consumer):
        def deliver_from_queue(self, queue, entry, tag):
            super().deliver_from_queue(queue, entry, tag)
            queue.ack(tag)  # re-enters: the running dispatch carries on

    consumer = AckingConsumer("a")
    queue.add_consumer(consumer, prefetch=1)
    put_all(queue, *"123")
    assert consumer.payloads == [b"1", b"2", b"3"]
    assert queue.unacked_count == 0


# -- get ------------------------------------------------------------------------------------


def test_get_takes_the_head_without_a_consumer():
    queue = make_queue()
    assert queue.get() is None
    put_all(queue, "1", "2")
    entry, tag = queue.get()
    assert (entry.message.payload, tag) == (b"1", None)
    holder = object()
    entry, tag = queue.get(holder)
    assert entry.message.payload == b"2" and queue.unacked_count == 1
    assert queue.release(holder) == 1
    entry, tag = queue.get(holder)
    assert (entry.message.payload, entry.redelivered) == (b"2", True)
    assert queue.ack(tag)


# -- bounds and expiry ---------------------------------------------------------------------


def test_length_bound_drops_new_messages_counting_unacknowledged_ones():
    queue = make_queue(max_length=2)
    queue.add_consumer(Consumer("a"), prefetch=1)
    put_all(queue, "1", "2")  # 1 unacknowledged, 2 ready
    assert queue.put(msg("3")) is False
    assert queue.dropped == 1
    assert [e.message.payload for e in queue.ready] == [b"2"]


def test_length_bound_drop_head_pushes_out_the_oldest_ready_message():
    queue = make_queue(max_length=2, overflow=DROP_HEAD)
    put_all(queue, "1", "2", "3")
    assert [e.message.payload for e in queue.ready] == [b"2", b"3"]
    assert queue.dropped == 1


def test_length_bound_drop_head_drops_new_when_all_are_unacknowledged():
    queue = make_queue(max_length=1, overflow=DROP_HEAD)
    queue.add_consumer(Consumer("a"))
    put_all(queue, "1")
    assert queue.put(msg("2")) is False


def test_bad_queue_parameters_are_refused():
    with pytest.raises(ValueError):
        make_queue(overflow="drop-everything")
    with pytest.raises(ValueError):
        make_queue(max_length=0)


def test_expired_messages_are_dropped_at_the_head():
    clock = FakeClock()
    queue = make_queue(clock=clock)
    queue.put(msg("old", expiry=clock.now + 5))
    queue.put(msg("new", expiry=clock.now + 50))
    queue.put(msg("forever"))
    clock.now += 10
    consumer = Consumer("a")
    queue.add_consumer(consumer)
    assert consumer.payloads == [b"new", b"forever"]
    clock.now += 100
    queue.put(msg("late", expiry=clock.now - 1))
    assert queue.get() is None
    queue.remove_consumer(consumer, requeue=False)
    queue.put(msg("late", expiry=clock.now + 1))
    queue.put(msg("live"))
    clock.now += 2
    assert queue.get()[0].message.payload == b"live"


def test_purge_drops_ready_messages_only():
    queue = make_queue()
    put_all(queue, "1", "2")
    queue.add_consumer(Consumer("a"), prefetch=1)
    assert queue.purge() == 1
    assert queue.unacked_count == 1


# -- in the router ---------------------------------------------------------------------------


async def test_queue_sits_in_the_router_as_a_subscriber():
    broker = Broker()
    queue = broker.queues.declare("bound")
    assert queue.client_id is None
    broker.router.add("sensors/+", queue, ANY_QOS)
    assert broker.publish(Message("sensors/t1", b"21.5", qos=1)).matched == 1
    assert broker.publish(Message("other", b"x")).matched == 0
    assert [e.message.topic for e in queue.ready] == ["sensors/t1"]


# -- persistence hook -------------------------------------------------------------------------


class RecordingStore:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, bytes]] = []

    def enqueued(self, queue, entry):
        self.events.append(("enqueued", queue.name, entry.message.payload))

    def delivered(self, queue, entry):
        self.events.append(("delivered", queue.name, entry.message.payload))

    def removed(self, queue, entry):
        self.events.append(("removed", queue.name, entry.message.payload))


def test_store_hears_of_persistent_messages_in_durable_queues_only():
    store = RecordingStore()
    durable = make_queue(durable=True, store=store)
    transient = Queue("t", clock=FakeClock(), max_length=10, store=store)
    durable.put(msg("kept"), persistent=True)
    durable.put(msg("not persistent"))
    transient.put(msg("not durable"), persistent=True)
    assert store.events == [("enqueued", "q", b"kept")]
    consumer = Consumer("a")
    durable.add_consumer(consumer)
    kept = [("enqueued", "q", b"kept"), ("delivered", "q", b"kept")]
    assert store.events == kept
    durable.nack(consumer.tags()[0])  # back to the queue: still stored
    assert store.events == kept  # handed out again: known already
    durable.ack_many(consumer.tags())
    assert store.events == [*kept, ("removed", "q", b"kept")]


# -- registry ------------------------------------------------------------------------------


def test_registry_creates_on_first_use_and_shares_the_queue():
    registry = QueueRegistry(FakeClock(), max_length=7)
    assert registry.get("a") is None and "a" not in registry
    queue = registry.declare("a")
    assert registry.declare("a") is queue and registry.get("a") is queue
    assert queue.max_length == 7 and queue.durable
    assert "a" in registry and len(registry) == 1 and list(registry) == [queue]


@pytest.mark.parametrize("name", ["", "x" * 256, "é" * 128, "a\0b"])
def test_registry_refuses_names_no_protocol_can_carry(name):
    with pytest.raises(ValueError):
        QueueRegistry(FakeClock(), max_length=1).declare(name)


# -- property: every message is settled exactly once -------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 0)),
        st.tuples(st.just("add"), st.integers(0, 2)),
        st.tuples(st.just("remove"), st.integers(0, 2)),
        st.tuples(st.just("ack"), st.integers(0, 30)),
        st.tuples(st.just("nack"), st.integers(0, 30)),
        st.tuples(st.just("drop"), st.integers(0, 30)),
        st.tuples(st.just("credit"), st.integers(0, 2)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 3))
def test_property_each_message_is_consumed_at_most_once_and_none_is_lost(ops, prefetch):
    queue = make_queue(max_length=1000)
    consumers = [Consumer(str(i)) for i in range(3)]
    active: set[int] = set()
    outstanding: dict[int, bytes] = {}  # tag -> payload, as the consumers see it
    consumed: list[bytes] = []
    dropped: list[bytes] = []
    sent = 0
    seen = [0, 0, 0]

    def collect():
        for i, consumer in enumerate(consumers):
            for payload, tag, _ in consumer.received[seen[i]:]:
                outstanding[tag] = payload
            seen[i] = len(consumer.received)

    for op, arg in ops:
        if op == "put":
            queue.put(msg(str(sent)))
            sent += 1
        elif op == "add" and arg not in active:
            queue.add_consumer(consumers[arg], prefetch=prefetch)
            active.add(arg)
        elif op == "remove" and arg in active:
            active.discard(arg)
            collect()
            queue.remove_consumer(consumers[arg])
            for tag in [t for t in outstanding if t in consumers[arg].tags()]:
                del outstanding[tag]
        elif op == "credit":
            consumers[arg].credit = not consumers[arg].credit
            queue.dispatch()
        elif op in ("ack", "nack", "drop") and outstanding:
            collect()
            tag = sorted(outstanding)[arg % len(outstanding)]
            payload = outstanding.pop(tag)
            if op == "ack":
                assert queue.ack(tag)
                consumed.append(payload)
            elif op == "nack":
                assert queue.nack(tag)
            else:
                assert queue.nack(tag, requeue=False)
                dropped.append(payload)
        collect()
        for i in active:
            assert queue._consumers[consumers[i]].unacked <= prefetch
    # Conservation: each message sent is consumed, dropped, pending or ready, exactly once.
    ready = [e.message.payload for e in queue.ready]
    everything = consumed + dropped + list(outstanding.values()) + ready
    assert sorted(everything, key=int) == [str(i).encode() for i in range(sent)]
    # Ready messages stay in arrival order.
    assert ready == sorted(ready, key=int)


def test_byte_bound_counts_ready_and_unacknowledged_payloads():
    queue = make_queue(max_bytes=10)
    consumer = Consumer("a")
    queue.add_consumer(consumer, prefetch=1)
    assert queue.put(msg("1234"))  # handed out, unacknowledged: still counted
    assert queue.put(msg("5678"))  # ready
    assert not queue.put(msg("abc"))  # 11 bytes would break the bound: dropped
    assert queue.dropped == 1 and queue.bytes == 8
    [tag] = consumer.tags()
    assert queue.ack(tag)  # frees 4 bytes and hands out "5678"
    assert queue.put(msg("abc"))
    assert queue.bytes == 7
    assert consumer.payloads == [b"1234", b"5678"]


def test_byte_bound_with_drop_head_pushes_out_the_oldest_ready():
    queue = make_queue(max_bytes=8, overflow="drop-head")
    put_all(queue, "aaaa", "bbbb")
    assert queue.put(msg("cccccc"))  # needs both old ones out
    assert [e.message.payload for e in queue.entries()] == [b"cccccc"]
    assert queue.bytes == 6 and queue.dropped == 2

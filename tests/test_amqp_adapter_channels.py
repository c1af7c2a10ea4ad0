"""The AMQP 0-9-1 adapter's channel semantics in memory: consumers and delivery tags,
acknowledgements, QoS, broker-sent cancel, publisher confirms and returns,
transactions, user_id, expiration, dead-letter headers, and messages crossing to and
from the MQTT topic space. Client: ``AmqpTestClient`` (``test_amqp_adapter``).
"""

import trio
import trio.testing

from polybroker.adapters import amqp as amqp_adapter
from polybroker.adapters.amqp import channel as amqp_channel
from polybroker.config import Limits
from polybroker.message import Message
from polybroker.protocols.amqp import (
    BasicAck,
    BasicCancel,
    BasicCancelOk,
    BasicConsume,
    BasicConsumeOk,
    BasicDeliver,
    BasicGet,
    BasicGetEmpty,
    BasicGetOk,
    BasicNack,
    BasicQos,
    BasicQosOk,
    BasicReject,
    BasicReturn,
    ChannelClose,
    ChannelCloseOk,
    ChannelFlow,
    ChannelFlowOk,
    ConfirmSelect,
    ConfirmSelectOk,
    Content,
    ExchangeDeclare,
    ExchangeDeclareOk,
    MethodFrame,
    QueueBind,
    QueueBindOk,
    QueueDelete,
    QueueDeleteOk,
    TxCommit,
    TxCommitOk,
    TxRollback,
    TxRollbackOk,
    TxSelect,
    TxSelectOk,
    decode_properties,
    encode_properties,
)
from polybroker.sessions import SubscriptionOptions

from .stompclient import connect_client as connect_stomp
from .test_amqp_adapter import AmqpTestClient, assert_close, open_client


async def consume(client: AmqpTestClient, channel: int, queue: str, tag: str = "",
                  no_ack: bool = False) -> str:
    await client.send(channel, BasicConsume(queue=queue, consumer_tag=tag, no_ack=no_ack))
    return (await client.expect(channel, BasicConsumeOk)).consumer_tag


async def deliveries(client: AmqpTestClient, channel: int, count: int) -> list[Content]:
    got = [await client.content(channel, BasicDeliver) for _ in range(count)]
    return got


async def get(client: AmqpTestClient, channel: int, queue: str, no_ack: bool = False):
    """basic.get: the get-ok Content, or None for get-empty."""
    await client.send(channel, BasicGet(queue=queue, no_ack=no_ack))
    event = await client.event()
    if isinstance(event, MethodFrame):
        assert isinstance(event.method, BasicGetEmpty), event
        return None
    assert isinstance(event.method, BasicGetOk), event
    return event


async def barrier(client: AmqpTestClient, channel: int) -> None:
    """A round trip on ``channel``: whatever the broker sent before has arrived."""
    await client.send(channel, ExchangeDeclare(exchange="amq.direct", passive=True))
    await client.expect(channel, ExchangeDeclareOk)


async def test_server_generated_consumer_tag_and_delivery_tags_per_channel(nursery, broker):
    client = await open_client(nursery, broker, channels=2)
    await client.declare(1, "q")
    for body in (b"a", b"b", b"c"):
        await client.publish(1, "", "q", body)
    first = await get(client, 2, "q")
    assert (first.method.delivery_tag, first.method.message_count, first.body) == (1, 2, b"a")
    tag = await consume(client, 2, "q")
    assert tag.startswith("amq.ctag-")
    delivered = await deliveries(client, 2, 2)
    assert [d.method.consumer_tag for d in delivered] == [tag, tag]
    assert [d.method.delivery_tag for d in delivered] == [2, 3]  # one count per channel
    assert [(d.method.exchange, d.method.routing_key) for d in delivered] == [("", "q")] * 2
    await client.send(2, BasicAck(delivery_tag=3, multiple=True))
    await barrier(client, 2)
    assert broker.queues.get("q").unacked_count == 0


async def test_unknown_delivery_tag_is_precondition_failed(nursery, broker):
    client = await open_client(nursery, broker)
    await client.send(1, BasicAck(delivery_tag=42))
    close = await client.expect(1, ChannelClose)
    assert_close(close, 406, 60, 80)


async def test_ack_of_a_tag_twice_is_precondition_failed(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.publish(1, "", "q", b"x")
    got = await get(client, 1, "q")
    await client.send(1, BasicAck(delivery_tag=got.method.delivery_tag))
    await client.send(1, BasicReject(delivery_tag=got.method.delivery_tag))
    assert_close(await client.expect(1, ChannelClose), 406, 60, 90)


async def test_nack_multiple_requeues_in_order_flagged_redelivered(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    for body in (b"x", b"y", b"z"):
        await client.publish(1, "", "q", body)
    tags = [(await get(client, 1, "q")).method.delivery_tag for _ in range(3)]
    await client.send(1, BasicAck(delivery_tag=tags[0]))
    await client.send(1, BasicNack(delivery_tag=tags[2], multiple=True, requeue=True))
    again = [await get(client, 1, "q", no_ack=True) for _ in range(2)]
    assert [(g.body, g.method.redelivered) for g in again] == [(b"y", True), (b"z", True)]
    assert await get(client, 1, "q") is None


async def test_reject_without_requeue_dead_letters_with_x_death(nursery, broker):
    client = await open_client(nursery, broker)
    await client.send(1, ExchangeDeclare(exchange="dlx", type="fanout"))
    await client.expect(1, ExchangeDeclareOk)
    await client.declare(1, "dead")
    await client.send(1, QueueBind(queue="dead", exchange="dlx"))
    await client.expect(1, QueueBindOk)
    await client.declare(1, "work", arguments={"x-dead-letter-exchange": "dlx"})
    await client.publish(1, "", "work", b"poison", encode_properties(
        content_type="text/plain", headers={"k": "v"}, expiration="60000"))
    got = await get(client, 1, "work")
    await client.send(1, BasicReject(delivery_tag=got.method.delivery_tag, requeue=False))
    dead = await get(client, 1, "dead", no_ack=True)
    props = decode_properties(dead.properties)
    assert dead.body == b"poison" and props.content_type == "text/plain"
    assert props.headers["k"] == "v" and props.expiration is None
    (death,) = props.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("rejected", "work", 1)
    assert (death["exchange"], death["routing-keys"]) == ("", ["work"])


async def test_consumer_prefetch_changed_on_a_live_channel(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    for n in range(4):
        await client.publish(1, "", "q", str(n).encode())
    await client.send(1, BasicQos(prefetch_count=1))
    await client.expect(1, BasicQosOk)
    await consume(client, 1, "q", "c1")
    await deliveries(client, 1, 1)
    await barrier(client, 1)
    assert broker.queues.get("q").message_count == 3
    # global=False raised while the consumer holds a message: applies at once.
    await client.send(1, BasicQos(prefetch_count=3))
    await client.expect(1, BasicQosOk)
    more = await deliveries(client, 1, 2)
    assert [d.body for d in more] == [b"1", b"2"]
    await barrier(client, 1)
    assert broker.queues.get("q").message_count == 1


async def test_global_qos_bounds_the_channel_across_queues(nursery, broker):
    client = await open_client(nursery, broker)
    await client.send(1, BasicQos(prefetch_count=2, global_=True))
    await client.expect(1, BasicQosOk)
    for name in ("a", "b"):
        await client.declare(1, name)
        await consume(client, 1, name, f"c{name}")
    for name in ("a", "b"):
        for n in range(3):
            await client.publish(1, "", name, f"{name}{n}".encode())
    got = await deliveries(client, 1, 2)
    await barrier(client, 1)
    ready = broker.queues.get("a").message_count + broker.queues.get("b").message_count
    assert ready == 4  # two held by the channel, whatever their queues
    await client.send(1, BasicAck(delivery_tag=got[0].method.delivery_tag))
    await deliveries(client, 1, 1)


async def test_channel_flow_pauses_deliveries(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.send(1, ChannelFlow(active=False))
    assert (await client.expect(1, ChannelFlowOk)).active is False
    await consume(client, 1, "q", "c", no_ack=True)
    await client.publish(1, "", "q", b"held")
    await barrier(client, 1)
    assert broker.queues.get("q").message_count == 1
    await client.send(1, ChannelFlow(active=True))
    assert (await client.expect(1, ChannelFlowOk)).active is True
    assert (await deliveries(client, 1, 1))[0].body == b"held"


async def test_cancel_keeps_unacked_pending_until_the_channel_closes(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    for body in (b"1", b"2"):
        await client.publish(1, "", "q", body)
    await consume(client, 1, "q", "c")
    first, _ = await deliveries(client, 1, 2)
    await client.send(1, BasicCancel(consumer_tag="c"))
    assert (await client.expect(1, BasicCancelOk)).consumer_tag == "c"
    await client.send(1, BasicAck(delivery_tag=first.method.delivery_tag))  # still valid
    await client.send(1, ChannelClose(reply_code=200))
    await client.expect(1, ChannelCloseOk)
    queue = broker.queues.get("q")
    assert queue.message_count == 1 and queue.ready[0].redelivered
    await client.open_channel(1)
    again = await get(client, 1, "q", no_ack=True)
    assert (again.body, again.method.redelivered) == (b"2", True)


async def test_unacked_messages_return_when_the_connection_drops(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q", durable=True)
    for body in (b"1", b"2", b"3"):
        await client.publish(1, "", "q", body)
    await consume(client, 1, "q", "c")
    await deliveries(client, 1, 3)
    await client.stream.aclose()  # no connection.close
    queue = broker.queues.get("q")
    await trio.testing.wait_all_tasks_blocked()  # the broker has seen the end of the stream
    assert not broker.connections
    assert [e.message.payload for e in queue.ready] == [b"1", b"2", b"3"]
    assert all(e.redelivered for e in queue.ready) and queue.consumer_count == 0


async def test_deleting_a_consumed_queue_cancels_its_consumer(nursery, broker):
    client = await open_client(nursery, broker, channels=2)
    await client.declare(1, "q")
    await consume(client, 1, "q", "watcher")
    await client.send(2, QueueDelete(queue="q"))
    cancel = await client.expect(1, BasicCancel)
    assert cancel.consumer_tag == "watcher"
    await client.expect(2, QueueDeleteOk)


async def test_confirms_count_and_return_comes_before_the_ack(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.send(1, ConfirmSelect())
    await client.expect(1, ConfirmSelectOk)
    await client.publish(1, "", "q", b"routed")
    await client.publish(1, "amq.direct", "nowhere", b"dropped")
    await client.publish(1, "amq.direct", "nowhere", b"back", mandatory=True)
    assert (await client.expect(1, BasicAck)).delivery_tag == 1
    assert (await client.expect(1, BasicAck)).delivery_tag == 2
    returned = await client.content(1, BasicReturn)
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    assert returned.body == b"back"
    ack = await client.expect(1, BasicAck)
    assert (ack.delivery_tag, ack.multiple) == (3, False)


async def test_publish_to_a_missing_exchange_closes_the_channel_404(nursery, broker):
    client = await open_client(nursery, broker)
    await client.publish(1, "nope", "k", b"x")
    assert_close(await client.expect(1, ChannelClose), 404, 60, 40)


async def test_transaction_holds_publishes_and_acks_until_commit(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.publish(1, "", "q", b"before")
    got = await get(client, 1, "q")
    await client.send(1, TxSelect())
    await client.expect(1, TxSelectOk)
    await client.publish(1, "", "q", b"dropped")
    await client.send(1, BasicAck(delivery_tag=got.method.delivery_tag))
    await client.send(1, TxRollback())
    await client.expect(1, TxRollbackOk)
    queue = broker.queues.get("q")
    assert (queue.message_count, queue.unacked_count) == (0, 1)
    await client.publish(1, "", "q", b"kept")
    await client.send(1, BasicAck(delivery_tag=got.method.delivery_tag))
    assert (queue.message_count, queue.unacked_count) == (0, 1)
    await client.send(1, TxCommit())
    await client.expect(1, TxCommitOk)
    assert [e.message.payload for e in queue.ready] == [b"kept"]
    assert queue.unacked_count == 0


async def test_transactions_hold_a_bounded_number_of_bytes(nursery, broker, monkeypatch):
    monkeypatch.setattr(amqp_channel, "MAX_TX_BYTES", 1000)
    client = await open_client(nursery, broker, channels=2)
    await client.declare(1, "q")
    for number in (1, 2):
        await client.send(number, TxSelect())
        await client.expect(number, TxSelectOk)
    await client.publish(1, "", "q", b"a" * 600)
    await client.publish(2, "", "q", b"b" * 600)  # the connection's 1000 bytes are passed
    close = await client.expect(2, ChannelClose)
    assert_close(close, 406, 60, 40)
    assert "transactions hold more than 1000 bytes" in close.reply_text
    await client.send(1, TxRollback())  # gives its 600 bytes back
    await client.expect(1, TxRollbackOk)
    await client.publish(1, "", "q", b"c" * 900)
    await client.send(1, TxCommit())
    await client.expect(1, TxCommitOk)
    assert [e.message.payload for e in broker.queues.get("q").ready] == [b"c" * 900]


async def test_confirm_and_tx_exclude_each_other(nursery, broker):
    client = await open_client(nursery, broker, channels=2)
    await client.send(1, TxSelect())
    await client.expect(1, TxSelectOk)
    await client.send(1, ConfirmSelect())
    assert_close(await client.expect(1, ChannelClose), 406, 85, 10)
    await client.send(2, TxCommit())  # never selected
    assert_close(await client.expect(2, ChannelClose), 406, 90, 20)


async def test_user_id_must_match_the_login(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.publish(1, "", "q", b"ok", encode_properties(user_id="guest"))
    await client.publish(1, "", "q", b"forged", encode_properties(user_id="root"))
    close = await client.expect(1, ChannelClose)
    assert_close(close, 406, 60, 40)
    assert "user_id" in close.reply_text
    assert [e.message.payload for e in broker.queues.get("q").ready] == [b"ok"]


async def test_expiration_drops_the_message_once_it_passed(nursery, broker, autojump_clock):
    client = await open_client(nursery, broker)
    await client.declare(1, "q")
    await client.publish(1, "", "q", b"short", encode_properties(expiration="1000"))
    await client.publish(1, "", "q", b"long", encode_properties(expiration="60000"))
    await trio.sleep(2)  # ok: mock clock
    assert (await get(client, 1, "q", no_ack=True)).body == b"long"
    await client.publish(1, "", "q", b"bad", encode_properties(expiration="soon"))
    assert_close(await client.expect(1, ChannelClose), 406, 60, 40)


async def test_queue_name_empty_means_the_last_declared_queue(nursery, broker):
    client = await open_client(nursery, broker)
    declared = await client.declare(1, "", exclusive=True)
    await client.publish(1, "", declared.queue, b"x")
    tag = await consume(client, 1, "", "c")
    delivery = (await deliveries(client, 1, 1))[0]
    assert (delivery.method.consumer_tag, delivery.method.routing_key) == (tag, declared.queue)


async def test_bodies_are_split_at_the_negotiated_frame_max(nursery, broker):
    client = await open_client(nursery, broker, frame_max=4096)
    client.parser.frame_max = 4096  # a larger frame from the broker fails the test
    await client.declare(1, "q")
    body = bytes(range(256)) * 40 + b"tail"
    await client.publish(1, "", "q", body, frame_max=4096)
    await client.publish(1, "", "q", b"", frame_max=4096)
    await consume(client, 1, "q", "c", no_ack=True)
    large, empty = await deliveries(client, 1, 2)
    assert large.body == body
    assert (empty.body_size, empty.body) == (0, b"")


class Recorder:
    """A subscriber in the broker's router (what an MQTT session is to it)."""

    client_id = "recorder"

    def __init__(self) -> None:
        self.messages: list[tuple[Message, int]] = []

    def deliver(self, message: Message, qos: int, retain: bool, ids=()) -> None:
        self.messages.append((message, qos))


async def test_publish_to_amq_topic_reaches_the_topic_space(nursery, broker):
    recorder = Recorder()
    broker.router.add("cmd/+", recorder, SubscriptionOptions(qos=2))
    client = await open_client(nursery, broker)
    await client.publish(1, "amq.topic", "cmd.dev1", b"reboot", encode_properties(
        content_type="text/plain", delivery_mode=2, correlation_id="c-1",
        headers={"who": "ops", "n": 5}))
    await client.publish(1, "amq.topic", "cmd.dev2", b"transient")
    await barrier(client, 1)
    (first, qos1), (second, qos2) = recorder.messages
    assert (first.topic, first.payload, qos1) == ("cmd/dev1", b"reboot", 1)
    assert first.content_type == "text/plain" and first.correlation_data == b"c-1"
    assert first.headers == (("who", "ops"),)  # string headers only
    assert (second.topic, qos2) == ("cmd/dev2", 0)


async def test_publish_to_amq_topic_on_a_dollar_topic_is_refused(nursery, broker):
    # [MQTT-4.7.2-1]: "$SYS.broker.uptime" maps to $SYS/broker/uptime, the server's own:
    # refused as an ACL denial (403), though this broker has no ACL.
    recorder = Recorder()
    broker.router.add("$SYS/#", recorder, SubscriptionOptions(qos=1))
    broker.router.add("$foo/#", recorder, SubscriptionOptions(qos=1))
    client = await open_client(nursery, broker, channels=2)
    await client.publish(1, "amq.topic", "$SYS.broker.uptime", b"spoofed")
    assert_close(await client.expect(1, ChannelClose), 403, 60, 40)
    await client.publish(2, "amq.topic", "$foo.bar", b"spoofed")
    assert_close(await client.expect(2, ChannelClose), 403, 60, 40)
    assert recorder.messages == []


async def test_message_from_the_topic_space_gets_properties(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "readings")
    await client.send(1, QueueBind(queue="readings", exchange="amq.topic",
                                   routing_key="sensors.*"))
    await client.expect(1, QueueBindOk)
    broker.publish(Message("sensors/t1", b"21.5", qos=1, content_type="text/plain",
                           headers=(("unit", "C"),), origin_protocol="mqtt"))
    broker.publish(Message("sensors/t2", b"19", qos=0, origin_protocol="mqtt"))
    first = await get(client, 1, "readings", no_ack=True)
    assert (first.method.exchange, first.method.routing_key) == ("amq.topic", "sensors.t1")
    props = decode_properties(first.properties)
    assert (props.content_type, props.headers, props.delivery_mode) == (
        "text/plain", {"unit": "C"}, 2)
    second = await get(client, 1, "readings", no_ack=True)
    assert decode_properties(second.properties).delivery_mode == 1


async def test_a_connection_that_does_not_read_leaves_messages_to_others(nursery, make_broker):
    broker = make_broker(limits=Limits(max_outgoing_bytes=4000))
    # lockstep: the broker's writes to ``slow`` block until the test reads them.
    slow_stream, server_stream = trio.testing.lockstep_stream_pair()
    nursery.start_soon(amqp_adapter.serve_amqp, server_stream, broker, "slow-peer")
    slow = AmqpTestClient(slow_stream)
    await slow.handshake()
    await slow.open_channel()
    fast = await open_client(nursery, broker)
    await fast.declare(1, "q")
    await consume(slow, 1, "q", "slow", no_ack=True)
    await consume(fast, 1, "q", "fast", no_ack=True)
    for n in range(30):
        await fast.publish(1, "", "q", bytes([n]) * 1000)
    # The slow connection's buffer fills up (its writer is blocked): the rest goes to fast.
    fast_got = []
    await fast.send(1, ExchangeDeclare(exchange="amq.direct", passive=True))
    while not isinstance(event := await fast.event(), MethodFrame):  # the barrier's reply
        fast_got.append(event.body[0])
    assert len(fast_got) >= 20
    slow_got = [d.body[0] for d in await deliveries(slow, 1, 30 - len(fast_got))]
    assert sorted(fast_got + slow_got) == list(range(30))
    assert broker.queues.get("q").message_count == 0


async def test_stomp_subscriber_is_refused_another_connections_exclusive_queue(nursery, broker):
    client = await open_client(nursery, broker)
    await client.declare(1, "private", exclusive=True)
    stomp = await connect_stomp(nursery, broker)
    await stomp.connect()
    await stomp.send("SUBSCRIBE", {"destination": "/queue/private", "id": "0"})
    frames = await stomp.receive_until_closed()
    assert [f.command for f in frames] == ["ERROR"]
    assert "resource locked" in frames[0].get("message")
    assert broker.queues.get("private").consumer_count == 0

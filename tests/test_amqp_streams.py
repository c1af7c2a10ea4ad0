"""Streams over the AMQP adapter in memory: declaration, what a stream consumer must set,
x-stream-offset and x-stream-consumer-name on basic.consume, the offset header, and
what streams refuse (basic.get)."""

from polybroker.protocols.amqp import (
    BasicAck,
    BasicConsume,
    BasicConsumeOk,
    BasicDeliver,
    BasicGet,
    BasicNack,
    BasicQos,
    BasicQosOk,
    ChannelClose,
    ConnectionClose,
    QueueDeclare,
    QueueDeclareOk,
    decode_properties,
)
from polybroker.streams import StreamQueue

from .test_amqp_adapter import AmqpTestClient, assert_close, open_client
from .test_amqp_adapter_channels import barrier

STREAM = {"x-queue-type": "stream"}


async def declare_stream(client: AmqpTestClient, name: str = "s", **arguments) -> None:
    await client.send(1, QueueDeclare(queue=name, durable=True,
                                      arguments={**STREAM, **arguments}))
    await client.expect(1, QueueDeclareOk)


async def consume(client: AmqpTestClient, queue: str, prefetch: int = 10, channel: int = 1,
                  **arguments) -> str:
    await client.send(channel, BasicQos(prefetch_count=prefetch))
    await client.expect(channel, BasicQosOk)
    await client.send(channel, BasicConsume(queue=queue, arguments=arguments))
    return (await client.expect(channel, BasicConsumeOk)).consumer_tag


async def received(client: AmqpTestClient, count: int, channel: int = 1) -> list:
    """(body, x-stream-offset header, delivery tag) of the next ``count`` deliveries."""
    got = []
    for _ in range(count):
        content = await client.content(channel, BasicDeliver)
        headers = decode_properties(content.properties).headers or {}
        got.append((content.body, headers.get("x-stream-offset"), content.method.delivery_tag))
    return got


async def test_declare_a_stream_and_read_it_from_first(nursery, broker):
    client = await open_client(nursery, broker)
    await declare_stream(client)
    assert isinstance(broker.queues.get("s"), StreamQueue)
    for n in range(5):
        await client.publish(1, "", "s", b"m%d" % n)
    await consume(client, "s", **{"x-stream-offset": "first"})
    got = await received(client, 5)
    assert [(body, offset) for body, offset, _tag in got] == [
        (b"m%d" % n, n) for n in range(5)]
    assert broker.queues.get("s").message_count == 5  # nothing was removed


async def test_prefetch_is_the_window_and_acks_move_it(nursery, broker):
    client = await open_client(nursery, broker)
    await declare_stream(client)
    for n in range(10):
        await client.publish(1, "", "s", b"m%d" % n)
    await consume(client, "s", prefetch=3, **{"x-stream-offset": 0})
    got = await received(client, 3)
    await barrier(client, 1)
    stream = broker.queues.get("s")
    assert stream.unacked_count == 3
    await client.send(1, BasicAck(delivery_tag=got[1][2], multiple=True))
    await client.send(1, BasicNack(delivery_tag=got[2][2], requeue=True))  # not requeued
    more = await received(client, 3)
    assert [offset for _b, offset, _t in more] == [3, 4, 5]


async def test_offsets_next_and_a_number_and_two_consumers(nursery, broker):
    client = await open_client(nursery, broker, channels=2)
    await declare_stream(client)
    for n in range(4):
        await client.publish(1, "", "s", b"old%d" % n)
    await consume(client, "s", channel=1, **{"x-stream-offset": "next"})
    await consume(client, "s", channel=2, **{"x-stream-offset": 2})
    assert [b for b, _o, _t in await received(client, 2, channel=2)] == [b"old2", b"old3"]
    await client.publish(1, "", "s", b"new")
    first, second = await client.content(1, BasicDeliver), await client.content(2, BasicDeliver)
    assert first.body == second.body == b"new"


async def test_a_named_consumer_resumes_on_a_new_connection(nursery, broker):
    client = await open_client(nursery, broker)
    await declare_stream(client)
    for n in range(6):
        await client.publish(1, "", "s", b"m%d" % n)
    await consume(client, "s", prefetch=2, **{"x-stream-offset": "first",
                                             "x-stream-consumer-name": "app"})
    got = await received(client, 2)
    await client.send(1, BasicAck(delivery_tag=got[1][2], multiple=True))
    await received(client, 2)  # offsets 2 and 3, never acknowledged
    await client.close_connection()
    again = await open_client(nursery, broker)
    await consume(again, "s", prefetch=10, **{"x-stream-offset": "next",
                                             "x-stream-consumer-name": "app"})
    assert [offset for _b, offset, _t in await received(again, 4)] == [2, 3, 4, 5]


async def test_stream_consumers_must_set_a_prefetch_and_acknowledge(nursery, broker):
    client = await open_client(nursery, broker)
    await declare_stream(client)
    await client.send(1, BasicConsume(queue="s"))
    assert_close(await client.expect(1, ChannelClose), 406, 60, 20)
    client = await open_client(nursery, broker)
    await client.send(1, BasicQos(prefetch_count=5))
    await client.expect(1, BasicQosOk)
    await client.send(1, BasicConsume(queue="s", no_ack=True))
    assert_close(await client.expect(1, ChannelClose), 406, 60, 20)
    client = await open_client(nursery, broker)
    await client.send(1, BasicQos(prefetch_count=5))
    await client.expect(1, BasicQosOk)
    await client.send(1, BasicConsume(queue="s", arguments={"x-stream-offset": "soon"}))
    assert_close(await client.expect(1, ChannelClose), 406, 60, 20)


async def test_declaring_a_stream_wrongly_is_refused(nursery, broker):
    client = await open_client(nursery, broker)
    await client.send(1, QueueDeclare(queue="s", durable=False, arguments=STREAM))
    assert_close(await client.expect(1, ChannelClose), 406, 50, 10)
    client = await open_client(nursery, broker)
    await client.send(1, QueueDeclare(queue="s", durable=True,
                                      arguments={**STREAM, "x-max-age": "forever"}))
    assert_close(await client.expect(1, ChannelClose), 406, 50, 10)


async def test_basic_get_on_a_stream_is_not_implemented(nursery, broker):
    client = await open_client(nursery, broker)
    await declare_stream(client)
    await client.send(1, BasicGet(queue="s"))
    assert_close(await client.expect(0, ConnectionClose), 540, 60, 70)

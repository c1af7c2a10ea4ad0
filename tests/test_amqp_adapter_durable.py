"""The AMQP adapter with the store: a publisher confirm for a persistent message routed
to a durable queue goes out only once its record is on disk, and durable exchanges,
queues, bindings and persistent messages (with their raw properties) come back after a
restart."""

import threading

import trio

from polybroker.protocols.amqp import (
    BasicAck,
    ConfirmSelect,
    ConfirmSelectOk,
    ExchangeDeclare,
    ExchangeDeclareOk,
    QueueBind,
    QueueBindOk,
    QueueDeclare,
    QueueDeclareOk,
    encode_properties,
)

from .test_amqp_adapter import open_client
from .test_amqp_adapter_channels import get
from .test_persistence import running

PERSISTENT = encode_properties(delivery_mode=2, content_type="text/plain",
                               headers={"n": 1, "big": 2**40, "flag": True})


async def confirmed(client) -> int:
    return (await client.expect(1, BasicAck)).delivery_tag


async def test_confirm_of_a_persistent_message_waits_for_the_fsync(tmp_path):
    async with running(tmp_path, fsync="batch") as broker:
        client = await open_client(broker.nursery, broker)
        await client.declare(1, "durable", durable=True)
        await client.declare(1, "memory")
        await client.send(1, ConfirmSelect())
        await client.expect(1, ConfirmSelectOk)
        await client.publish(1, "", "durable", b"first", PERSISTENT)
        assert await confirmed(client) == 1
        store = broker.durability.store
        release = threading.Event()
        real_sync = store.sync

        def slow_sync() -> int:
            release.wait(10)
            return real_sync()

        store.sync = slow_sync
        # Transient, or persistent in a non-durable queue: nothing to wait for.
        await client.publish(1, "", "durable", b"transient")
        await client.publish(1, "", "memory", b"kept in memory", PERSISTENT)
        assert [await confirmed(client) for _ in range(2)] == [2, 3]
        await client.publish(1, "", "durable", b"on disk", PERSISTENT)
        with trio.move_on_after(0.3) as early:
            await client.event()
        assert early.cancelled_caught, "confirm before the record was synced"
        assert broker.durability.pending()
        release.set()
        assert await confirmed(client) == 4
        assert store.synced_seq == store.last_seq


async def test_durable_exchange_queue_binding_and_messages_survive_a_restart(tmp_path):
    async with running(tmp_path) as broker:
        client = await open_client(broker.nursery, broker)
        await client.send(1, ExchangeDeclare(exchange="orders", type="direct", durable=True))
        await client.expect(1, ExchangeDeclareOk)
        await client.declare(1, "orders.q", durable=True, arguments={"x-max-length": 100})
        await client.send(1, QueueBind(queue="orders.q", exchange="orders",
                                       routing_key="new"))
        await client.expect(1, QueueBindOk)
        await client.send(1, ConfirmSelect())
        await client.expect(1, ConfirmSelectOk)
        for n in range(3):
            await client.publish(1, "orders", "new", f"o{n}".encode(), PERSISTENT)
        await client.publish(1, "orders", "new", b"transient")
        assert [await confirmed(client) for _ in range(4)] == [1, 2, 3, 4]
        handed_out = await get(client, 1, "orders.q")  # unacked at the restart
        assert handed_out.body == b"o0"
        await client.close_connection()
    async with running(tmp_path) as broker:
        client = await open_client(broker.nursery, broker)
        declared = await client.declare(1, "orders.q", durable=True,
                                        arguments={"x-max-length": 100})
        assert declared.message_count == 3
        await client.publish(1, "orders", "new", b"after", PERSISTENT)  # binding is back
        got = [await get(client, 1, "orders.q", no_ack=True) for _ in range(4)]
        assert [g.body for g in got] == [b"o0", b"o1", b"o2", b"after"]
        assert [g.method.redelivered for g in got] == [True, False, False, False]
        assert all(g.properties == PERSISTENT for g in got)
        assert [(g.method.exchange, g.method.routing_key) for g in got] == [
            ("orders", "new")] * 4
        await client.close_connection()


async def test_confirm_of_a_message_into_a_stream_waits_for_the_stream_logs_fsync(tmp_path):
    async with running(tmp_path, fsync="batch") as broker:
        client = await open_client(broker.nursery, broker)
        await client.send(1, QueueDeclare(queue="s", durable=True,
                                          arguments={"x-queue-type": "stream"}))
        await client.expect(1, QueueDeclareOk)
        await client.send(1, ConfirmSelect())
        await client.expect(1, ConfirmSelectOk)
        await client.publish(1, "", "s", b"first")
        assert await confirmed(client) == 1
        stream_log = broker.queues.streams.logs["s"]
        release = threading.Event()
        real_sync = stream_log.sync
        synced = []

        def slow_sync() -> None:
            release.wait(10)
            real_sync()
            synced.append(True)

        stream_log.sync = slow_sync
        await client.publish(1, "", "s", b"appended")
        with trio.move_on_after(0.3) as early:
            await client.event()
        assert early.cancelled_caught, "confirm before the stream's log was synced"
        assert broker.durability.pending()
        release.set()
        assert await confirmed(client) == 2
        assert synced and not broker.durability.pending()

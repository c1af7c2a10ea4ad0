"""Durable named queues: STOMP ``persistent:true`` messages survive a restart (or a crash),
in order, handed-out ones flagged redelivered; acknowledged and non-persistent ones do
not come back; a RECEIPT for such a SEND waits for the fsync of its record."""

import threading

import trio

from polybroker import persistence
from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits
from polybroker.durability import open_durable_state

from .stompclient import connect_client
from .test_persistence import crash_image, running


async def stomp(broker):
    client = await connect_client(broker.nursery, broker)
    await client.connect()
    return client


def bodies(frames):
    return [frame.body for frame in frames if frame.command == "MESSAGE"]


def queue_records(broker):
    store = broker.durability.store
    return [key for key, _ in store.scan(persistence.QUEUE_MESSAGE)]


async def test_persistent_messages_survive_a_restart_in_order(tmp_path):
    async with running(tmp_path) as broker:
        pub = await stomp(broker)
        for i in range(5):
            await pub.publish("/queue/jobs", f"p{i}", persistent="true")
            await pub.publish("/queue/jobs", f"t{i}")  # not persistent: memory only
        await pub.publish("/queue/other", "o", persistent="true")
        await pub.publish("/queue/transient-only", "x")
    async with running(tmp_path) as broker:
        assert broker.journal.summary.queues == 2
        assert broker.journal.summary.queue_messages == 6
        assert "transient-only" not in broker.queues
        sub = await stomp(broker)
        await sub.subscribe("/queue/jobs")
        frames = await sub.messages_until_idle()
        assert bodies(frames) == [f"p{i}".encode() for i in range(5)]
        assert all(frame.get("redelivered") is None for frame in frames)
        await sub.subscribe("/queue/other", "1")
        assert bodies(await sub.messages_until_idle()) == [b"o"]
        # auto acknowledged: the records are gone
        assert queue_records(broker) == []
    async with running(tmp_path) as broker:
        assert broker.journal.summary.queue_messages == 0
        assert broker.journal.summary.queues == 2  # the queues stay, empty
        assert broker.queues.get("jobs").message_count == 0


async def test_a_crash_keeps_unacked_ones_redelivered_and_drops_acked_ones(tmp_path):
    async with running(tmp_path) as broker:
        pub = await stomp(broker)
        for i in range(6):
            await pub.publish("/queue/jobs", str(i), persistent="true")
        sub = await stomp(broker)
        await sub.subscribe("/queue/jobs", ack="client-individual", prefetch_count="3")
        frames = await sub.messages_until_idle()
        assert bodies(frames) == [b"0", b"1", b"2"]
        await sub.request("ACK", {"id": frames[1].get("ack")})  # "3" is handed out next
        # New messages after the restart must follow the old ones (the sequence goes on).
        image = crash_image(tmp_path, tmp_path / "crash")
    async with running(image) as broker:
        pub = await stomp(broker)
        await pub.publish("/queue/jobs", "new", persistent="true")
        sub = await stomp(broker)
        await sub.subscribe("/queue/jobs", ack="client-individual")
        frames = await sub.messages_until_idle()
        assert bodies(frames) == [b"0", b"2", b"3", b"4", b"5", b"new"]
        assert [f.get("redelivered") for f in frames] == ["true", "true", "true", None, None, None]
        for frame in frames:
            await sub.request("ACK", {"id": frame.get("ack")})
        assert queue_records(broker) == []
    async with running(image) as broker:
        assert broker.journal.summary.queue_messages == 0


async def test_nack_without_requeue_and_overflow_delete_records(tmp_path):
    async with running(tmp_path) as broker:
        small = broker.queues.declare("small")
        small.max_length, small.overflow = 2, "drop-new"
        pub = await stomp(broker)
        for body in ("a", "b"):
            await pub.publish("/queue/small", body, persistent="true")
        # "c": dropped, the queue is full (without a receipt to ask for: no ERROR)
        await pub.send("SEND", {"destination": "/queue/small", "persistent": "true"}, b"c")
        sub = await stomp(broker)
        await sub.subscribe("/queue/small", ack="client-individual")
        frames = await sub.messages_until_idle()
        await sub.request("NACK", {"id": frames[0].get("ack"), "requeue": "false"})
        assert len(queue_records(broker)) == 2  # "b" and its handed-out mark
    async with running(tmp_path) as broker:
        sub = await stomp(broker)
        await sub.subscribe("/queue/small")
        frames = await sub.messages_until_idle()
        assert bodies(frames) == [b"b"]
        assert frames[0].get("redelivered") == "true"


async def test_deleting_a_queue_deletes_its_records(tmp_path):
    async with running(tmp_path) as broker:
        pub = await stomp(broker)
        await pub.publish("/queue/gone", "x", persistent="true")
        broker.queues.delete("gone")
        assert queue_records(broker) == []
        assert list(broker.durability.store.scan(persistence.QUEUE)) == []
    async with running(tmp_path) as broker:
        assert "gone" not in broker.queues


async def test_restore_respects_the_queue_length_bound(tmp_path):
    async with running(tmp_path) as broker:
        queue = broker.queues.declare("q")
        for i in range(5):
            queue.put(persistence.Message("q", str(i).encode()), persistent=True)
    # Restarted with a lower bound (max_queue_length = 3) and a dropping policy: the oldest
    # three come back. (Under "block" all five would: each was taken with a promise.)
    limits = Limits(max_queue_length=3, queue_overflow="drop-new")
    broker = Broker(BrokerConfig(data_dir=tmp_path, limits=limits))
    async with open_durable_state(broker):
        queue = broker.queues.get("q")
        assert [e.message.payload for e in queue.ready] == [b"0", b"1", b"2"]
        assert len(queue_records(broker)) == 3  # the overflow's records are deleted


async def test_receipt_for_a_persistent_send_waits_for_the_fsync(tmp_path):
    async with running(tmp_path, fsync="batch") as broker:
        pub = await stomp(broker)
        await pub.publish("/queue/jobs", "first", persistent="true")
        await pub.messages_until_idle()  # everything so far is durable
        store = broker.durability.store
        release = threading.Event()
        real_sync = store.sync

        def slow_sync() -> int:
            release.wait(10)
            return real_sync()

        store.sync = slow_sync
        # Not persistent: nothing recorded, the RECEIPT goes out at once.
        await pub.publish("/queue/jobs", "transient")
        await pub.send("SEND", {"destination": "/queue/jobs", "persistent": "true",
                                "receipt": "r-durable"}, b"x")
        with trio.move_on_after(0.3) as early:
            await pub.receive()
        assert early.cancelled_caught, "RECEIPT before the record was synced"
        assert broker.durability.pending()
        release.set()
        receipt = await pub.receive()
        assert (receipt.command, receipt.get("receipt-id")) == ("RECEIPT", "r-durable")
        assert store.synced_seq == store.last_seq

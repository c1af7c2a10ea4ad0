"""Durable broker state over the MQTT adapter, in memory: stop (or crash), reopen, compare.

The broker runs with a temporary data directory; clients talk to it over trio memory
streams. A "crash" copies the store files as they are at that moment (what SIGKILL leaves:
everything written, nothing more) and restarts from the copy.
"""

import logging
import shutil
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from polybroker import persistence
from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits, StorageConfig
from polybroker.durability import compact_once, open_durable_state
from polybroker.protocols.mqtt import (
    MQTT_5,
    ConnAck,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
)
from polybroker.protocols.mqtt import properties as prop
from polybroker.protocols.mqtt import reason_codes as rc
from polybroker.storage import StoreFullError
from polybroker.storage.segment import Segment

from .durable_state import persistent_state
from .rawclient import RawClient, connect_client


@asynccontextmanager
async def running(data_dir: Path, limits: Limits | None = None, **storage: object):
    """A broker on ``data_dir`` with its storage tasks; stopped cleanly on exit."""
    config = BrokerConfig(
        data_dir=data_dir, limits=limits or Limits(connect_timeout=10),
        storage=StorageConfig(**storage),
    )
    broker = Broker(config)
    async with open_durable_state(broker) as tasks, trio.open_nursery() as nursery:
        nursery.start_soon(broker.timers.run)
        tasks.start(nursery)
        broker.nursery = nursery
        yield broker
        nursery.cancel_scope.cancel()


def crash_image(data_dir: Path, image: Path) -> Path:
    """The store files as a process killed right now would leave them."""
    shutil.copytree(data_dir / "store", image / "store", ignore=shutil.ignore_patterns("LOCK"))
    return image


async def client(broker: Broker, client_id: str, clean: bool = False, **fields) -> RawClient:
    c = await connect_client(broker.nursery, broker)
    await c.connect(client_id, clean_session=clean, **fields)
    return c


async def client5(broker: Broker, client_id: str, props: dict | None = None) -> RawClient:
    c = await connect_client(broker.nursery, broker)
    c.parser.protocol_level = MQTT_5
    await c.send(_connect5(client_id, props or {}), level=MQTT_5)
    connack = await c.receive()
    assert isinstance(connack, ConnAck)
    return c


def _connect5(client_id: str, props: dict):
    from polybroker.protocols.mqtt import Connect

    return Connect(client_id, MQTT_5, clean_session=False, properties=props)


# ------------------------------------------------------------------ restart: what survives


async def test_sessions_subscriptions_queued_and_retained_survive_a_restart(tmp_path):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t/#", 2, packet_id=1)
        await sub.subscribe("$share/g/s/+", 1, packet_id=2)
        await sub.close()
        pub = await client(broker, "pub", clean=True)
        for i, qos in enumerate((0, 1, 2, 1)):
            await pub.send(Publish(f"t/{i}", b"m%d" % i, qos=qos, packet_id=i + 1 if qos else None))
        await pub.send(Publish("s/x", b"shared", qos=1, packet_id=9))
        await pub.send(Publish("r/a", b"kept", qos=1, packet_id=10, retain=True))
        await pub.send(Publish("r/b", b"gone", retain=True), Publish("r/b", b"", retain=True))
        await pub.publishes_until_idle()  # every ack in: everything is durable
        before = persistent_state(broker)
    assert before["sessions"]["sub"][2]  # messages were stored
    async with running(tmp_path) as broker:
        assert persistent_state(broker) == before
        sub = await connect_client(broker.nursery, broker)
        assert await sub.connect("sub", clean_session=False) == ConnAck(session_present=True)
        got = await sub.publishes_until_idle()
        # QoS 0 is not kept for an offline client; the rest arrive in order, at their QoS.
        assert [(p.topic, p.payload, p.qos) for p in got] == [
            ("t/1", b"m1", 1), ("t/2", b"m2", 2), ("t/3", b"m3", 1), ("s/x", b"shared", 1),
        ]
        fresh = await client(broker, "fresh", clean=True)
        await fresh.subscribe("r/#", 1)
        assert [(p.topic, p.payload, p.retain) for p in await fresh.publishes_until_idle()] == [
            ("r/a", b"kept", True)
        ]


async def test_clean_sessions_leave_nothing_on_disk(tmp_path):
    async with running(tmp_path) as broker:
        c = await client(broker, "ephemeral", clean=True)
        await c.subscribe("t", 1)
        pub = await client(broker, "pub", clean=True)
        await pub.send(Publish("t", b"x", qos=1, packet_id=1))
        assert await pub.receive() == PubAck(1)
        store = broker.durability.store
        assert list(store.scan()) == []
    async with running(tmp_path) as broker:
        assert broker.sessions == {}


async def test_a_crash_keeps_everything_that_was_acknowledged(tmp_path):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        pub = await client(broker, "pub", clean=True)
        for i in range(1, 21):
            await pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i))
        acked = [await pub.receive() for _ in range(20)]
        assert acked == [PubAck(i) for i in range(1, 21)]
        image = crash_image(tmp_path, tmp_path / "crash")
        before = persistent_state(broker)
    async with running(image) as broker:
        assert persistent_state(broker) == before
        sub = await client(broker, "sub")
        assert [p.payload for p in await sub.publishes_until_idle()] == [
            b"%d" % i for i in range(1, 21)
        ]


async def test_a_torn_tail_is_cut_off_and_reported_not_fatal(tmp_path, caplog):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        before = persistent_state(broker)
    segment = sorted((tmp_path / "store").glob("*.seg"))[-1]
    with open(segment, "ab") as f:
        f.write(b"\xb7\x01\x01\x00\x00\x00\x00\x09half a record")
    with caplog.at_level(logging.INFO):
        async with running(tmp_path) as broker:
            assert persistent_state(broker) == before
    assert any("torn" in r.message and "truncated" in r.message for r in caplog.records)
    assert any("1 recovery issue" in r.message for r in caplog.records)


async def test_a_corrupt_record_in_the_middle_is_reported_with_its_offset(tmp_path, caplog):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        pub = await client(broker, "pub", clean=True)
        for i in range(1, 4):
            await pub.send(Publish("t", b"message-%d" % i, qos=1, packet_id=i))
        assert [await pub.receive() for _ in range(3)] == [PubAck(i) for i in range(1, 4)]
    segment = sorted((tmp_path / "store").glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    at = data.index(b"message-2")
    data[at] ^= 0xFF  # a bit flip in the middle of the log
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        async with running(tmp_path) as broker:
            sub = await client(broker, "sub")
            got = [p.payload for p in await sub.publishes_until_idle()]
    assert got == [b"message-1", b"message-3"]  # the rest of the state is intact
    issues = [r.message for r in caplog.records if "corrupt record" in r.message]
    assert len(issues) == 1 and "segment 1 offset " in issues[0], issues


async def test_qos2_in_flight_is_resent_with_its_packet_id_and_pubrel_after_release(tmp_path):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 2)
        pub = await client(broker, "pub", clean=True)
        await pub.send(Publish("t", b"a", qos=2, packet_id=1),
                       Publish("t", b"b", qos=2, packet_id=2))
        first, second = await sub.receive(), await sub.receive()
        await sub.send(PubRec(first.packet_id))
        assert await sub.receive() == PubRel(first.packet_id)
        # the sub neither completes the first nor acknowledges the second
    async with running(tmp_path) as broker:
        sub = await connect_client(broker.nursery, broker)
        await sub.connect("sub", clean_session=False)
        # [MQTT-4.4.0-1]: PUBREL for the released one, PUBLISH with DUP and the same id
        # for the other; so the client can tell neither is new.
        assert await sub.receive() == PubRel(first.packet_id)
        again = await sub.receive()
        assert (again.packet_id, again.payload, again.dup) == (second.packet_id, b"b", True)
        await sub.send(PubComp(first.packet_id), PubRec(second.packet_id))
        assert await sub.receive() == PubRel(second.packet_id)
        await sub.send(PubComp(second.packet_id))
        assert await sub.publishes_until_idle() == []
        assert broker.sessions["sub"].inflight == {}
    async with running(tmp_path) as broker:
        assert persistent_state(broker)["sessions"]["sub"][2] == []


async def test_inbound_qos2_resent_after_a_restart_is_not_routed_twice(tmp_path):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 2)
        await sub.close()
        pub = await client(broker, "pub")
        await pub.send(Publish("t", b"once", qos=2, packet_id=7))
        assert await pub.receive() == PubRec(7)
        # crash before the PUBREL arrives
        image = crash_image(tmp_path, tmp_path / "crash")
    async with running(image) as broker:
        assert broker.sessions["pub"].inbound_qos2 == {7}
        pub = await client(broker, "pub")
        await pub.send(Publish("t", b"once", qos=2, packet_id=7, dup=True))
        assert await pub.receive() == PubRec(7)
        await pub.send(PubRel(7))
        assert await pub.receive() == PubComp(7)
        sub = await client(broker, "sub")
        got = await sub.publishes_until_idle()
        assert [p.payload for p in got] == [b"once"]
        assert broker.sessions["pub"].inbound_qos2 == set()
    async with running(image) as broker:
        assert broker.sessions["pub"].inbound_qos2 == set()


async def test_a_crash_at_any_write_of_an_inbound_qos2_publish_routes_it_once(
    tmp_path, monkeypatch
):
    """SIGKILL can fall between any two writes. The copies for the subscribers and the
    inbound packet id are one atomic group: after a crash at any point, the publisher's
    resend reaches each subscriber exactly once."""
    data = tmp_path / "data"
    images = []

    def image_now() -> None:
        images.append(crash_image(data, tmp_path / f"image{len(images)}"))

    real_append = Segment.append

    def append_then_image(segment, record: bytes) -> int:
        offset = real_append(segment, record)
        image_now()
        return offset

    async with running(data) as broker:
        for name in ("sub1", "sub2"):
            sub = await client(broker, name)
            await sub.subscribe("t", 2)
            await sub.close()
        pub = await client(broker, "pub")
        image_now()
        monkeypatch.setattr(Segment, "append", append_then_image)
        await pub.send(Publish("t", b"once", qos=2, packet_id=7))
        assert await pub.receive() == PubRec(7)
        monkeypatch.undo()
    assert len(images) >= 2  # before the PUBLISH, and after each append it made
    for image in images:
        async with running(image) as broker:
            pub = await client(broker, "pub")
            await pub.send(Publish("t", b"once", qos=2, packet_id=7, dup=True))
            assert await pub.receive() == PubRec(7)
            await pub.send(PubRel(7))
            assert await pub.receive() == PubComp(7)
            for name in ("sub1", "sub2"):
                sub = await client(broker, name)
                got = await sub.publishes_until_idle()
                assert [p.payload for p in got] == [b"once"], (image.name, name)


async def test_mqtt5_subscription_options_and_message_properties_survive(tmp_path):
    props = {prop.SESSION_EXPIRY_INTERVAL: 3600}
    async with running(tmp_path) as broker:
        sub = await client5(broker, "sub5", props)
        await sub.send(Subscribe(1, (Subscription("t/#", 1, no_local=True,
                                                  retain_as_published=True),),
                                 {prop.SUBSCRIPTION_IDENTIFIER: 42}), level=MQTT_5)
        assert await sub.receive() == SubAck(1, (1,))
        await sub.send(Disconnect(), level=MQTT_5)
        pub = await client(broker, "pub", clean=True)
        await pub.publishes_until_idle()
        message_props = {prop.CONTENT_TYPE: "text/plain", prop.USER_PROPERTY: (("k", "v"),),
                         prop.MESSAGE_EXPIRY_INTERVAL: 600, prop.CORRELATION_DATA: b"c"}
        pub5 = await client5(broker, "pub5")
        await pub5.send(Publish("t/1", b"p", qos=1, packet_id=1, retain=True,
                                properties=message_props), level=MQTT_5)
        assert (await pub5.receive()).packet_id == 1
        before = persistent_state(broker)
    async with running(tmp_path) as broker:
        assert persistent_state(broker) == before
        session = broker.sessions["sub5"]
        assert session.expiry_interval == 3600
        assert session.subscriptions["t/#"].subscription_id == 42
        sub = await client5(broker, "sub5", props)
        delivered = await sub.receive()
        assert delivered.retain is True  # retain as published
        assert delivered.properties[prop.SUBSCRIPTION_IDENTIFIER] == (42,)
        assert delivered.properties[prop.CONTENT_TYPE] == "text/plain"
        assert delivered.properties[prop.USER_PROPERTY] == (("k", "v"),)
        assert delivered.properties[prop.CORRELATION_DATA] == b"c"
        assert 590 <= delivered.properties[prop.MESSAGE_EXPIRY_INTERVAL] <= 600


async def test_session_expiry_counts_the_time_the_broker_was_stopped(tmp_path, monkeypatch):
    async with running(tmp_path) as broker:
        short = await client5(broker, "short", {prop.SESSION_EXPIRY_INTERVAL: 60})
        long = await client5(broker, "long", {prop.SESSION_EXPIRY_INTERVAL: 7200})
        for c in (short, long):
            await c.send(Disconnect(), level=MQTT_5)
            # The broker closes the stream only after it has let go of the session.
            assert await c.receive_until_closed() == []
        assert broker.sessions["short"].link is None and broker.sessions["long"].link is None
    real_time = persistence.time.time
    monkeypatch.setattr(persistence.time, "time", lambda: real_time() + 3600)  # an hour later
    async with running(tmp_path) as broker:
        assert set(broker.sessions) == {"long"}
        assert [k for k, _ in broker.durability.store.scan(b"s/")] == [b"s/long"]


async def test_a_session_that_reconnects_clean_forgets_its_records(tmp_path):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        pub = await client(broker, "pub", clean=True)
        await pub.send(Publish("t", b"x", qos=1, packet_id=1))
        assert await pub.receive() == PubAck(1)
        await client(broker, "sub", clean=True)
        assert list(broker.durability.store.scan()) == []


# ------------------------------------------------------------------ the write path


async def test_puback_waits_for_the_fsync_of_its_records(tmp_path):
    async with running(tmp_path, fsync="batch") as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        pub = await client(broker, "pub", clean=True)
        await pub.publishes_until_idle()  # everything so far is durable
        store = broker.durability.store
        release = threading.Event()
        real_sync = store.sync

        def slow_sync() -> int:
            release.wait(10)
            return real_sync()

        store.sync = slow_sync
        await pub.send(Publish("t", b"x", qos=1, packet_id=1))
        with trio.move_on_after(0.3) as early:
            await pub.receive()
        assert early.cancelled_caught, "PUBACK before the record was synced"
        assert broker.durability.pending()
        release.set()
        assert await pub.receive() == PubAck(1)
        assert store.synced_seq == store.last_seq


@pytest.mark.parametrize("qos", [1, 2])
async def test_qos1_deliveries_go_out_before_the_fsync_qos2_ones_after(tmp_path, qos):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 2)
        pub = await client(broker, "pub", clean=True)
        await pub.publishes_until_idle()
        store = broker.durability.store
        release = threading.Event()
        real_sync = store.sync

        def slow_sync() -> int:
            release.wait(10)
            return real_sync()

        store.sync = slow_sync
        await pub.send(Publish("t", b"x", qos=qos, packet_id=1))
        if qos == 1:
            # A crash now would lose the record, but the publisher has no PUBACK and sends
            # again: a duplicate, which QoS 1 allows.
            assert (await sub.receive()).payload == b"x"
        else:
            # A restart must not be able to deliver it again as a new message: it waits.
            with trio.move_on_after(0.3) as early:
                await sub.receive()
            assert early.cancelled_caught, "QoS 2 PUBLISH before its record was synced"
        with trio.move_on_after(0.3) as early:
            await pub.receive()
        assert early.cancelled_caught, "acknowledged before the record was synced"
        release.set()
        assert await pub.receive() == (PubAck(1) if qos == 1 else PubRec(1))
        if qos == 2:
            assert (await sub.receive()).payload == b"x"


async def test_fsync_never_acknowledges_without_waiting(tmp_path):
    async with running(tmp_path, fsync="never") as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        pub = await client(broker, "pub", clean=True)
        store = broker.durability.store
        store.sync = lambda: pytest.fail("no fsync expected")
        await pub.send(Publish("t", b"x", qos=1, packet_id=1))
        assert await pub.receive() == PubAck(1)
        assert store.synced_seq < store.last_seq
        del store.sync  # a clean stop syncs


@pytest.mark.parametrize("policy", ["always", "batch"])
async def test_group_commit_covers_many_records_with_few_fsyncs(tmp_path, policy):
    async with running(tmp_path, fsync=policy) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        publishers = [await client(broker, f"p{i}", clean=True) for i in range(4)]
        syncs = broker.durability.syncs
        for pub in publishers:
            await pub.send(*(Publish("t", b"x", qos=1, packet_id=n) for n in range(1, 51)))
        for pub in publishers:
            assert [await pub.receive() for _ in range(50)] == [PubAck(n) for n in range(1, 51)]
        assert broker.durability.syncs - syncs < 100  # 200 records, far fewer fsyncs
        assert not broker.durability.pending()


async def test_full_disk_refuses_publishers_cleanly_and_recovers(tmp_path, caplog):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 2)
        await sub.close()
        store = broker.durability.store
        real_put = store.put

        def full(key: bytes, value: bytes) -> int:
            raise StoreFullError(28, "No space left on device")

        store.put = full
        with caplog.at_level(logging.ERROR):
            # 3.1.1 has no negative PUBACK: the connection closes unacknowledged.
            old = await client(broker, "old", clean=True)
            await old.send(Publish("t", b"x", qos=1, packet_id=1))
            assert await old.receive_until_closed() == []
            # 5.0: PUBACK / PUBREC with 0x97 Quota exceeded.
            new = await client5(broker, "new")
            await new.send(Publish("t", b"y", qos=1, packet_id=2), level=MQTT_5)
            assert await new.receive() == PubAck(2, rc.QUOTA_EXCEEDED)
            await new.send(Publish("t", b"z", qos=2, packet_id=3), level=MQTT_5)
            assert await new.receive() == PubRec(3, rc.QUOTA_EXCEEDED)
            assert 3 not in broker.sessions["new"].inbound_qos2
        assert any("STORAGE WRITE FAILED" in r.message for r in caplog.records)
        store.put = real_put  # space again
        await new.send(Publish("t", b"w", qos=1, packet_id=4), level=MQTT_5)
        assert await new.receive() == PubAck(4)
        assert [k[:2] for k, _ in store.scan(b"m/")] == [b"m/"]  # only the last one stored


async def test_full_disk_qos2_on_311_keeps_the_packet_id_so_the_resend_is_not_routed_again(
    tmp_path,
):
    async with running(tmp_path) as broker:
        sub = await client(broker, "sub", clean=True)
        await sub.subscribe("t", 2)
        store = broker.durability.store
        store.put = lambda key, value: (_ for _ in ()).throw(StoreFullError(28, "full"))
        pub = await client(broker, "pub")
        await pub.send(Publish("t", b"once", qos=2, packet_id=5))
        assert await pub.receive_until_closed() == []
        del store.put  # the instance attribute: back to the class's method
        pub = await client(broker, "pub")
        await pub.send(Publish("t", b"once", qos=2, packet_id=5, dup=True))
        assert await pub.receive() == PubRec(5)
        got = await sub.publishes_until_idle()
        assert [p.payload for p in got] == [b"once"]


async def test_stored_messages_per_session_are_bounded_new_ones_dropped(tmp_path, caplog):
    drop_new = Limits(connect_timeout=10, queue_overflow="drop-new")
    async with running(tmp_path, drop_new, max_stored_messages_per_session=3) as broker:
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        await sub.close()
        pub = await client(broker, "pub", clean=True)
        with caplog.at_level(logging.WARNING):
            for i in range(1, 6):
                await pub.send(Publish("t", b"%d" % i, qos=1, packet_id=i))
            assert [await pub.receive() for _ in range(5)] == [PubAck(i) for i in range(1, 6)]
        assert any("dropped" in r.message and "sub" in r.message for r in caplog.records)
    async with running(tmp_path, max_stored_bytes_per_session=2) as broker:
        sub = await client(broker, "sub")
        assert [p.payload for p in await sub.publishes_until_idle()] == [b"1", b"2", b"3"]


# ------------------------------------------------------------------ compaction


async def test_disk_use_stays_bounded_under_an_endless_publish_ack_load(tmp_path, monkeypatch):
    monkeypatch.setattr("polybroker.durability.COMPACTION_INTERVAL", 3600)  # compacted below
    segment_size = 16 * 1024
    async with running(tmp_path, segment_size=segment_size) as broker:
        store = broker.durability.store
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        pub = await client(broker, "pub", clean=True)
        worst = written = 0
        for round_ in range(60):
            await pub.send(*(Publish("t", b"p" * 64, qos=1, packet_id=n) for n in range(1, 41)))
            for _ in range(40):
                delivered = await sub.receive()
                await sub.send(PubAck(delivered.packet_id))
            assert [await pub.receive() for _ in range(40)] == [PubAck(n) for n in range(1, 41)]
            await sub.publishes_until_idle()
            written = store.last_seq
            while await compact_once(store, broker.durability):
                pass
            stats = store.stats()
            if round_ > 5:
                worst = max(worst, stats.total_bytes)
        assert stats.live_keys == 2  # the session and its subscription
        assert written > 4800  # records written: 2400 messages, stored then deleted
        assert worst <= 4 * segment_size, worst


async def test_compaction_runs_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr("polybroker.durability.COMPACTION_INTERVAL", 0.01)
    async with running(tmp_path, segment_size=4096) as broker:
        store = broker.durability.store
        sub = await client(broker, "sub")
        await sub.subscribe("t", 1)
        pub = await client(broker, "pub", clean=True)
        for n in range(1, 301):
            await pub.send(Publish("t", b"p" * 64, qos=1, packet_id=n))
            delivered = await sub.receive()
            await sub.send(PubAck(delivered.packet_id))
            assert await pub.receive() == PubAck(n)
        first_segment = store.segment_ids()[0]
        assert first_segment > 1 or len(store.segment_ids()) < 5
        with trio.fail_after(10):
            while store.segment_ids()[0] == 1:
                await trio.sleep(0.01)  # ok: compaction signals nothing; bounded look

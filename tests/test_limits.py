"""Limits for peers the broker does not control: connection rate per listener, publish
rate per client, retained-message bounds, and the existing bounds under hostile peers
(a CONNECT that never completes, a subscriber that never reads)."""

import contextlib
import logging
from dataclasses import replace

import pytest
import trio
import trio.testing

from polybroker.broker import Broker
from polybroker.config import (
    ConfigError,
    Limits,
    config_from_dict,
    parse_listen_url,
)
from polybroker.limits import ConnectionRate, RateLimitedLog, TokenBucket
from polybroker.protocols.mqtt import (
    MQTT_5,
    Connect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    encode,
)
from polybroker.server import open_broker

from .rawclient import RawClient
from .rawclient import connect_client as connect_mqtt
from .stompclient import connect_client as connect_stomp


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the building blocks --------------------------------------------------------------------


def test_token_bucket_starts_full_refills_at_its_rate_and_saves_at_most_its_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.now += 100  # saved up: no more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_token_bucket_debt_is_repaid_at_its_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=10, clock=clock)
    bucket.spend(30)
    assert bucket.delay() == pytest.approx(2.0)
    clock.now += 1.5
    assert bucket.delay() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.delay() == 0


def test_rate_limited_log_writes_one_line_per_interval_and_counts_the_rest(caplog):
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.limits"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "test.limits"):
        for i in range(1000):
            limited.warning("refused %d", i)
        clock.now += 10
        limited.warning("refused %d", 1000)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0", "refused 1000 (and 999 more like it in the last 10s)",
    ]


def test_connection_rate_admits_the_burst_then_the_rate(caplog):
    clock = FakeClock()
    rate = ConnectionRate("mqtt://x:1", 5, 2, logging.getLogger("test.limits"), clock)
    with caplog.at_level(logging.WARNING, "test.limits"):
        assert [rate.admit("p") for _ in range(50)] == [True, True] + [False] * 48
        clock.now += 1.0  # five more
        assert sum(rate.admit("p") for _ in range(50)) == 2  # at most the burst saved
    assert rate.refused == 96
    assert len(caplog.records) == 1
    assert "refused: max_connection_rate (5/s) exceeded" in caplog.text


# -- configuration --------------------------------------------------------------------------


def test_new_limits_are_read_and_default_as_documented():
    config = config_from_dict({
        "listener": [{"url": "mqtt://127.0.0.1:0", "max_connection_rate": 20,
                      "max_connection_burst": 5}],
        "limits": {"max_publish_rate": 100.5, "max_publish_burst": 10,
                   "max_retained_messages": 0, "max_retained_bytes": 1000},
    })
    (listener,) = config.listeners
    assert (listener.max_connection_rate, listener.max_connection_burst) == (20, 5)
    assert config.limits.max_publish_rate == 100.5
    assert config.limits.max_publish_burst == 10
    assert config.limits.max_retained_messages == 0
    assert config.limits.max_retained_bytes == 1000
    defaults = Limits()
    assert (defaults.max_publish_rate, defaults.max_publish_burst) == (0, 0)
    assert defaults.max_retained_messages == 1_000_000
    assert defaults.max_retained_bytes == 1024**3
    assert parse_listen_url("mqtt://127.0.0.1:0").max_connection_rate is None


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        ({"max_connection_rate": 0}, r"listener\[0\]\.max_connection_rate: must be greater"),
        ({"max_connection_rate": "fast"}, r"listener\[0\]\.max_connection_rate: expected"),
        ({"max_connection_rate": 5, "max_connection_burst": 0}, "max_connection_burst: must"),
        ({"max_connection_burst": 5}, "max_connection_burst: needs max_connection_rate"),
    ],
)
def test_bad_connection_rate_is_refused(listener, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"listener": [{"url": "mqtt://127.0.0.1:0", **listener}]})


def test_negative_publish_rate_is_refused():
    with pytest.raises(ConfigError, match=r"limits\.max_publish_rate: must be greater than 0"):
        config_from_dict({"limits": {"max_publish_rate": -1}})


# -- max_connection_rate ------------------------------------------------------------------


async def test_connections_beyond_the_rate_are_closed_after_accept_and_logged_once(
    caplog, serve_config):
    caplog.set_level(logging.INFO)
    # A rate so low that no token comes back during the test: the burst is all there is.
    listener = replace(parse_listen_url("mqtt://127.0.0.1:0"), max_connection_rate=0.001,
                       max_connection_burst=2)
    async with open_broker(serve_config(listener)) as running:
        port = running.port("mqtt")
        admitted = [RawClient(await trio.open_tcp_stream("127.0.0.1", port)) for _ in range(2)]
        for i, client in enumerate(admitted):
            assert (await client.connect(f"ok{i}")).return_code == 0
        for i in range(20):
            refused = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
            with contextlib.suppress(trio.BrokenResourceError):  # already closed by the broker
                await refused.send(Connect(f"flood{i}"))
            assert await refused.receive_until_closed() == []  # no CONNACK
            await refused.close()
        for client in admitted:  # those admitted are unaffected
            await client.send(PingReq())
            assert await client.receive() == PingResp()
            await client.close()
    lines = [r for r in caplog.records if "max_connection_rate" in r.getMessage()]
    assert len(lines) == 1
    assert "refused: max_connection_rate (0.001/s) exceeded (1 refused so far)" in caplog.text


async def test_connections_beyond_max_connections_are_logged_once_per_interval(
    caplog, serve_config):
    caplog.set_level(logging.INFO)
    listener = replace(parse_listen_url("mqtt://127.0.0.1:0"), max_connections=1)
    async with open_broker(serve_config(listener)) as running:
        port = running.port("mqtt")
        admitted = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await admitted.connect("ok")
        for _ in range(10):
            refused = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
            assert await refused.receive_until_closed() == []
            await refused.close()
        await admitted.close()
    lines = [r for r in caplog.records if "max_connections (1) reached" in r.getMessage()]
    assert len(lines) == 1


# -- max_retained_messages / max_retained_bytes ---------------------------------------------


async def retained_on_subscribe(nursery, broker: Broker, topic_filter: str) -> dict[str, bytes]:
    probe = await connect_mqtt(nursery, broker)
    await probe.connect("probe")
    await probe.subscribe(topic_filter, 0)
    got = {p.topic: p.payload for p in await probe.publishes_until_idle()}
    await probe.close()
    return got


async def test_retained_beyond_max_retained_messages_is_delivered_not_stored(
    nursery, caplog, make_broker):
    caplog.set_level(logging.WARNING)
    broker = make_broker(limits=Limits(max_retained_messages=2))
    watcher = await connect_mqtt(nursery, broker)
    await watcher.connect("watcher")
    await watcher.subscribe("r/#", 0)
    pub = await connect_mqtt(nursery, broker)
    pub.parser.protocol_level = MQTT_5
    await pub.connect("pub", protocol_level=MQTT_5)
    for i, topic in enumerate(("r/1", "r/2", "r/3", "r/4"), start=1):
        await pub.send(Publish(topic, b"v1", 1, retain=True, packet_id=i), level=MQTT_5)
        # Acknowledged as usual: the message went to the subscribers (0x00, not 0x97).
        assert await pub.receive() == PubAck(i)
    assert [p.topic for p in await watcher.publishes_until_idle()] == ["r/1", "r/2", "r/3", "r/4"]
    assert await retained_on_subscribe(nursery, broker, "r/#") == {"r/1": b"v1", "r/2": b"v1"}
    assert broker.retained_bound.refused == 2
    refusals = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert len(refusals) == 1  # once per interval, not once per message
    assert "retained message to r/3 from pub not stored: max_retained_messages (2)" in (
        refusals[0].getMessage())
    # Replacing is always allowed; clearing makes room for a new topic.
    await pub.send(Publish("r/1", b"v2", 1, retain=True, packet_id=5),
                   Publish("r/2", b"", 1, retain=True, packet_id=6),
                   Publish("r/3", b"v2", 1, retain=True, packet_id=7), level=MQTT_5)
    assert [await pub.receive() for _ in range(3)] == [PubAck(5), PubAck(6), PubAck(7)]
    assert await retained_on_subscribe(nursery, broker, "r/#") == {"r/1": b"v2", "r/3": b"v2"}


async def test_retained_beyond_max_retained_bytes_is_not_stored(nursery, make_broker):
    broker = make_broker(limits=Limits(max_retained_bytes=10))
    pub = await connect_mqtt(nursery, broker)
    await pub.connect("pub")
    await pub.send(Publish("a", b"123456", retain=True), Publish("b", b"123456", retain=True))
    assert await retained_on_subscribe(nursery, broker, "#") == {"a": b"123456"}
    await pub.send(Publish("a", b"12345678901", retain=True))  # replacing: always
    await pub.send(Publish("c", b"", retain=True))  # clearing nothing: nothing to do
    assert await retained_on_subscribe(nursery, broker, "#") == {"a": b"12345678901"}
    assert broker.retained.size == 11
    await pub.send(Publish("a", b"", retain=True))
    await pub.send(Publish("b", b"123", retain=True))
    assert await retained_on_subscribe(nursery, broker, "#") == {"b": b"123"}
    assert broker.retained.size == 3


# -- max_publish_rate -----------------------------------------------------------------------


async def publish_closed_loop(client: RawClient, topic: str, count: int) -> float:
    """QoS 1, one at a time; the (virtual) seconds it took."""
    start = trio.current_time()
    for i in range(1, count + 1):
        await client.send(Publish(topic, b"%d" % i, 1, packet_id=i))
        assert await client.receive(timeout=60) == PubAck(i)
    return trio.current_time() - start


async def test_mqtt_publish_flood_is_throttled_while_other_clients_flow(
    nursery, autojump_clock, make_broker):
    broker = make_broker(limits=Limits(max_publish_rate=10, max_publish_burst=10))
    sub = await connect_mqtt(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("#", 1)
    flooder = await connect_mqtt(nursery, broker)
    await flooder.connect("flooder")
    other = await connect_mqtt(nursery, broker)
    await other.connect("other")
    flood_time = None

    async def flood() -> None:
        nonlocal flood_time
        flood_time = await publish_closed_loop(flooder, "flood", 100)

    async with trio.open_nursery() as inner:
        inner.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()  # the flooder is throttled by now
        # Meanwhile another client publishes at its own pace, undisturbed.
        assert await publish_closed_loop(other, "other", 5) < 0.5
    # 10 from the burst, then 10 a second: the other 90 took at least 9 s.
    assert flood_time >= 8.9
    got = []
    while len(got) < 105:
        got.append(await sub.receive(timeout=60))
        await sub.send(PubAck(got[-1].packet_id))
    assert sorted(p.payload for p in got if p.topic == "flood") == sorted(
        b"%d" % i for i in range(1, 101))  # nothing lost


async def test_throttled_client_is_not_taken_for_a_silent_one(nursery, autojump_clock, make_broker):
    """The time the broker spends not reading does not count against the keep alive."""
    broker = make_broker(limits=Limits(max_publish_rate=10, max_publish_burst=10))
    flooder = await connect_mqtt(nursery, broker)
    await flooder.connect("flooder", keep_alive=2)
    start = trio.current_time()
    # 50 at once: the broker handles them, then owes 4 s; keep alive is 3 s (1.5 x 2).
    await flooder.send(*(Publish("t", b"x", 1, packet_id=i) for i in range(1, 51)))
    assert [await flooder.receive() for _ in range(50)] == [PubAck(i) for i in range(1, 51)]
    await flooder.send(PingReq())  # in time for the keep alive, read when the debt is paid
    assert await flooder.receive(timeout=60) == PingResp()
    assert trio.current_time() - start >= 3.9


async def test_stomp_send_flood_is_throttled_while_other_clients_flow(
    nursery, autojump_clock, make_broker):
    broker = make_broker(limits=Limits(max_publish_rate=10, max_publish_burst=10))
    sub = await connect_stomp(nursery, broker)
    await sub.connect()
    await sub.subscribe("/topic/#")
    flooder = await connect_stomp(nursery, broker)
    await flooder.connect()
    other = await connect_stomp(nursery, broker)
    await other.connect()
    flood_time = None

    async def flood() -> None:
        nonlocal flood_time
        start = trio.current_time()
        for i in range(40):
            await flooder.publish("/topic/flood", f"{i}")  # waits for its RECEIPT
        flood_time = trio.current_time() - start

    async with trio.open_nursery() as inner:
        inner.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for i in range(5):
            await other.publish("/topic/other", f"{i}")
        assert trio.current_time() - start < 0.5
    assert flood_time >= 2.9  # 10 from the burst, 30 at 10 a second
    got = [await sub.receive(timeout=60) for _ in range(45)]
    assert sorted(int(f.body) for f in got if f.get("destination") == "/topic/flood") == list(
        range(40))


async def test_without_a_publish_rate_nothing_waits(nursery, autojump_clock, make_broker):
    broker = make_broker()
    client = await connect_mqtt(nursery, broker)
    await client.connect("c")
    assert await publish_closed_loop(client, "t", 200) == 0


# -- hostile peers: a CONNECT that never completes, a subscriber that never reads ----------


@pytest.mark.parametrize("opening", [b"", encode(Connect("slowloris", keep_alive=60))],
                         ids=["nothing", "trickled"])
async def test_mqtt_connect_trickled_or_never_sent_is_closed_at_connect_timeout(
    nursery, autojump_clock, opening, make_broker
):
    broker = make_broker(limits=Limits(connect_timeout=3))
    slow = await connect_mqtt(nursery, broker)
    wire = opening
    start = trio.current_time()

    async def trickle() -> None:
        for byte in wire[:-1]:  # never the last byte
            await slow.send_raw(bytes((byte,)))
            await trio.sleep(0.25)  # ok: load, one byte every 250 ms (virtual time)

    nursery.start_soon(trickle)
    assert await slow.receive_until_closed(timeout=60) == []
    assert 3 <= trio.current_time() - start < 3.5
    assert broker.sessions == {}


@pytest.mark.parametrize("opening", [b"", b"CONNECT\naccept-version:1.2\nhost:h\nx:" + b"p" * 40],
                         ids=["nothing", "trickled"])
async def test_stomp_connect_trickled_or_never_sent_is_closed_at_connect_timeout(
    nursery, autojump_clock, opening, make_broker
):
    broker = make_broker(limits=Limits(connect_timeout=3))
    slow = await connect_stomp(nursery, broker)
    wire = opening

    async def trickle() -> None:
        for byte in wire:
            await slow.send_raw(bytes((byte,)))
            await trio.sleep(0.1)  # ok: load, one byte every 100 ms (virtual time)

    nursery.start_soon(trickle)
    start = trio.current_time()
    frames = await slow.receive_until_closed(timeout=60)
    assert [f.command for f in frames] == ["ERROR"]
    assert "no CONNECT frame in time" in frames[0].get("message")
    assert 3 <= trio.current_time() - start < 3 + 2.5  # the timeout, then at most the linger


async def test_mqtt_qos1_subscriber_that_never_reads_holds_a_bounded_backlog(
    nursery, caplog, make_broker):
    caplog.set_level(logging.WARNING)
    broker = make_broker(limits=Limits(max_queued_messages=50, max_inflight_messages=10,
                                       queue_overflow="drop-new"))
    slow = await connect_mqtt(nursery, broker, lockstep=True)  # reads nothing unless asked
    await slow.connect("slow")
    await slow.subscribe("t", 1)
    pub = await connect_mqtt(nursery, broker)
    await pub.connect("pub")
    await pub.send(*(Publish("t", b"x" * 100, 1, packet_id=i) for i in range(1, 501)))
    acks = [await pub.receive() for _ in range(500)]
    assert acks == [PubAck(i) for i in range(1, 501)]  # every one acknowledged
    session = broker.sessions["slow"]
    assert len(session.inflight) == 10
    assert len(session.queued) == 50  # the rest dropped, not buffered
    assert session.dropped == 440
    assert "client slow: message dropped (queue-full" in caplog.text


async def test_stomp_topic_subscriber_that_never_reads_holds_a_bounded_backlog(
    nursery, make_broker):
    broker = make_broker(limits=Limits(max_queued_messages=50, max_outgoing_bytes=2000,
                                       queue_overflow="drop-new"))
    slow = await connect_stomp(nursery, broker, lockstep=True)  # reads nothing unless asked
    await slow.connect()
    await slow.subscribe("/topic/t", ack="client")  # then never reads or ACKs again
    pub = await connect_mqtt(nursery, broker)
    await pub.connect("pub")
    await pub.send(*(Publish("t", b"x" * 100, 1, packet_id=i) for i in range(1, 501)))
    assert [await pub.receive() for _ in range(500)] == [PubAck(i) for i in range(1, 501)]
    (sub,) = slow.server.subscriptions.values()
    queue = sub.queue
    # Written up to the send buffer's bound, at most max_queued_messages held (ready and
    # unacknowledged), the rest dropped and counted.
    assert slow.server.conn.pending_bytes < 2000 + 300
    assert queue.message_count + queue.unacked_count <= 50
    assert queue.dropped == 500 - queue.message_count - queue.unacked_count


async def test_mqtt_backlog_is_bounded_in_bytes_too(nursery, caplog, make_broker):
    caplog.set_level(logging.WARNING)
    broker = make_broker(limits=Limits(max_queued_messages=1000, max_queued_bytes=5000,
                                       max_inflight_messages=10, queue_overflow="drop-new"))
    slow = await connect_mqtt(nursery, broker, lockstep=True)  # reads nothing unless asked
    await slow.connect("slow")
    await slow.subscribe("t", 1)
    pub = await connect_mqtt(nursery, broker)
    await pub.connect("pub")
    await pub.send(*(Publish("t", b"x" * 100, 1, packet_id=i) for i in range(1, 201)))
    assert [await pub.receive() for _ in range(200)] == [PubAck(i) for i in range(1, 201)]
    session = broker.sessions["slow"]
    assert len(session.inflight) == 10
    assert (len(session.queued), session.queued_bytes) == (50, 5000)  # 50 x 100 bytes
    assert session.dropped == 140
    assert "50 messages, 5000 bytes queued" in caplog.text
    # Draining the window lets the queue move; its byte count follows.
    for _ in range(10):
        publish = await slow.receive()
        await slow.send(PubAck(publish.packet_id))
    assert session.queued_bytes == 100 * len(session.queued) == 4000


async def test_stomp_topic_backlog_is_bounded_in_bytes_too(nursery, make_broker):
    broker = make_broker(limits=Limits(max_queued_bytes=1000, max_outgoing_bytes=200,
                                       queue_overflow="drop-new"))
    slow = await connect_stomp(nursery, broker, lockstep=True)
    await slow.connect()
    await slow.subscribe("/topic/t", ack="client")
    pub = await connect_mqtt(nursery, broker)
    await pub.connect("pub")
    await pub.send(*(Publish("t", b"x" * 100, 1, packet_id=i) for i in range(1, 101)))
    assert [await pub.receive() for _ in range(100)] == [PubAck(i) for i in range(1, 101)]
    (sub,) = slow.server.subscriptions.values()
    queue = sub.queue
    assert queue.bytes <= 1000
    assert queue.dropped == 100 - queue.message_count - queue.unacked_count > 0

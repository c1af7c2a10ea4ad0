"""Cluster nodes on a real redis-server: the other nodes' filters kept in step, and the
routing decision (a message crosses to another node only when that node's filters match,
local traffic never touches Redis)."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from polybroker.broker import Broker
from polybroker.certs import DEFAULT_HOSTS, issue_server, load_or_create_ca
from polybroker.cluster.config import ClusterConfig
from polybroker.cluster.node import ClusterNode, run_node
from polybroker.config import BrokerConfig, StorageConfig
from polybroker.message import Message
from polybroker.queues import Queue

from .redisproc import RedisServer, running_redis

WAIT = 10  # seconds any condition below may take at most


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory) -> Path:
    """A development CA and a server certificate for 127.0.0.1, as ``polybroker certs``
    writes them."""
    directory = tmp_path_factory.mktemp("certs")
    ca, _ = load_or_create_ca(directory)
    issue_server(ca, directory, DEFAULT_HOSTS)
    return directory


@pytest.fixture
def redis(tmp_path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


def redis_command(server: RedisServer, *args: str) -> bytes:
    return server.command(*args)


def xadd_calls(server: RedisServer) -> int:
    stats = redis_command(server, "INFO", "commandstats").decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_xadd:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


async def wait_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not condition():
            await trio.sleep(0.01)


def new_broker() -> Broker:
    return Broker(BrokerConfig(storage=StorageConfig(persistence=False)))


async def start_node(nursery: trio.Nursery, redis: RedisServer, name: str,
                     broker: Broker | None = None) -> tuple[Broker, ClusterNode]:
    broker = broker or new_broker()
    nursery.start_soon(broker.timers.run)
    node = await nursery.start(run_node, broker, ClusterConfig(redis=redis.url, node=name,
                                                               node_timeout=2))
    return broker, node


def payloads(queue: Queue) -> list[bytes]:
    return [entry.message.payload for entry in queue.ready]


# -- without Redis -------------------------------------------------------------------------


async def test_each_node_learns_the_others_filters_at_start_and_as_they_change(
        nursery, redis):
    # Subscribed before the node links (restored sessions): announced when it does.
    a_broker = new_broker()
    a_broker.topic_queue("q1", "sensors/+/temp")
    a_broker.topic_queue("q2", "sensors/+/temp")  # the same filter: announced once
    a_broker, a = await start_node(nursery, redis, "a", a_broker)
    b_broker, b = await start_node(nursery, redis, "b")  # loads a's filters at start
    assert set(b.interest.nodes_for("sensors/1/temp")) == {"a"}
    assert a.interest.filters_of("b") == set()
    b_broker.topic_queue("q3", "alerts/#")
    await wait_until(lambda: set(a.interest.nodes_for("alerts/x")) == {"b"})
    assert redis_command(redis, "SMEMBERS", "polybroker:interest:a") == (
        b"*1\r\n$14\r\nsensors/+/temp\r\n")


async def test_a_filter_given_up_is_withdrawn_from_the_others(nursery, redis):
    a_broker, a = await start_node(nursery, redis, "a")
    _b_broker, b = await start_node(nursery, redis, "b")
    first = a_broker.topic_queue("q1", "t/#")
    second = a_broker.topic_queue("q2", "t/#")
    await wait_until(lambda: set(b.interest.nodes_for("t/1")) == {"a"})
    a_broker.end_topic_queue("t/#", first)
    a_broker.end_topic_queue("t/#", second)
    await wait_until(lambda: set(b.interest.nodes_for("t/1")) == set())
    assert "t/#" not in a.local_filters


async def test_local_traffic_never_goes_through_redis(nursery, redis):
    a_broker, a = await start_node(nursery, redis, "a")
    b_broker, _b = await start_node(nursery, redis, "b")
    b_broker.topic_queue("qb", "remote/#")
    await wait_until(lambda: set(a.interest.nodes_for("remote/x")) == {"b"})
    here = a_broker.topic_queue("qa", "local/#")
    before = xadd_calls(redis)
    for i in range(50):
        assert a_broker.publish(Message("local/t", b"%d" % i, qos=1)).delivered == 1
    assert len(payloads(here)) == 50  # delivered at once, in the publish call
    assert a.local_only == 50 and a.sent == 0
    assert xadd_calls(redis) == before  # not a single stream write
    assert redis_command(redis, "XLEN", "polybroker:stream:b") == b":0\r\n"


async def test_a_node_receives_only_what_its_filters_match(nursery, redis):
    a_broker, a = await start_node(nursery, redis, "a")
    b_broker, b = await start_node(nursery, redis, "b")
    wanted = b_broker.topic_queue("qb", "b/+")
    await wait_until(lambda: set(a.interest.nodes_for("b/x")) == {"b"})
    a_broker.publish(Message("elsewhere", b"no"))
    a_broker.publish(Message("b/x", b"yes", qos=1, content_type="text/plain"))
    await wait_until(lambda: payloads(wanted) == [b"yes"])
    assert wanted.ready[0].message.content_type == "text/plain"
    assert a.sent == 1 and b.received == 1
    # Routed on b only, never handed on again.
    assert b.sent == 0 and not b._outbox
    assert redis_command(redis, "XLEN", "polybroker:stream:a") == b":0\r\n"


async def test_both_nodes_subscribed_each_delivers_once(nursery, redis):
    a_broker, a = await start_node(nursery, redis, "a")
    b_broker, b = await start_node(nursery, redis, "b")
    on_a = a_broker.topic_queue("qa", "t")
    on_b = b_broker.topic_queue("qb", "t")
    await wait_until(lambda: set(a.interest.nodes_for("t")) == {"b"}
                     and set(b.interest.nodes_for("t")) == {"a"})
    a_broker.publish(Message("t", b"1", qos=1))
    b_broker.publish(Message("t", b"2", qos=1))
    await wait_until(lambda: len(payloads(on_a)) == 2 and len(payloads(on_b)) == 2)
    assert sorted(payloads(on_a)) == sorted(payloads(on_b)) == [b"1", b"2"]
    assert a.sent == b.sent == 1 and a.received == b.received == 1


async def test_messages_cross_after_the_redis_link_drops(nursery, redis):
    a_broker, a = await start_node(nursery, redis, "a")
    b_broker, _b = await start_node(nursery, redis, "b")
    on_b = b_broker.topic_queue("qb", "t/#")
    await wait_until(lambda: set(a.interest.nodes_for("t/1")) == {"b"})
    a_broker.publish(Message("t/1", b"before", qos=1))
    await wait_until(lambda: payloads(on_b) == [b"before"])
    # Every client connection of Redis is cut, its data stays: both nodes reconnect.
    redis_command(redis, "CLIENT", "KILL", "TYPE", "normal")
    redis_command(redis, "CLIENT", "KILL", "TYPE", "pubsub")
    for i in range(20):
        a_broker.publish(Message("t/1", b"%d" % i, qos=1))
    await wait_until(lambda: len(payloads(on_b)) == 21)
    assert payloads(on_b) == [b"before", *(b"%d" % i for i in range(20))]
    # Still following each other's changes after the reconnect.
    b_broker.topic_queue("qb2", "new/#")
    await wait_until(lambda: set(a.interest.nodes_for("new/x")) == {"b"})


async def test_entries_read_but_not_acknowledged_are_routed_after_reconnecting(
        nursery, redis):
    # An entry read by b's consumer before a link drop, never acknowledged: pending.
    stream = "polybroker:stream:b"
    redis_command(redis, "XGROUP", "CREATE", stream, "broker", "0", "MKSTREAM")
    redis_command(redis, "XADD", stream, "*", "m", '{"t":"t","q":1}', "p", "pending")
    redis_command(redis, "XREADGROUP", "GROUP", "broker", "b", "STREAMS", stream, ">")
    assert redis_command(redis, "XPENDING", stream, "broker").startswith(b"*4\r\n:1\r\n")
    b_broker = new_broker()
    on_b = b_broker.topic_queue("qb", "t")
    b_broker, _b = await start_node(nursery, redis, "b", b_broker)
    await wait_until(lambda: payloads(on_b) == [b"pending"])
    assert redis_command(redis, "XPENDING", "polybroker:stream:b", "broker").startswith(
        b"*4\r\n:0\r\n")  # and acknowledged


async def test_a_node_that_stops_heartbeating_is_forgotten(nursery, redis):
    _a_broker, a = await start_node(nursery, redis, "a")
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            b_broker, _b = await start_node(inner, redis, "b")
            b_broker.topic_queue("qb", "t")
            await wait_until(lambda: set(a.interest.nodes_for("t")) == {"b"})
            scope.cancel()
    # b said goodbye when it stopped: a no longer hands it anything.
    await wait_until(lambda: a.interest.nodes() == set())
    assert redis_command(redis, "EXISTS", "polybroker:interest:b") == b":0\r\n"
    # A node that vanishes without a word: its heartbeat runs out (node_timeout 2s).
    redis_command(redis, "SADD", "polybroker:nodes", "ghost")
    redis_command(redis, "SADD", "polybroker:interest:ghost", "g")
    redis_command(redis, "SET", "polybroker:alive:ghost", "1")
    redis_command(redis, "PUBLISH", "polybroker:interest", "sync\x00ghost")
    await wait_until(lambda: set(a.interest.nodes_for("g")) == {"ghost"})
    # Only once a has seen it alive does its heartbeat run out (not before, on a slow day).
    redis_command(redis, "EXPIRE", "polybroker:alive:ghost", "1")
    await wait_until(lambda: a.interest.nodes() == set())
    assert redis_command(redis, "SISMEMBER", "polybroker:nodes", "ghost") == b":0\r\n"
    assert redis_command(redis, "EXISTS", "polybroker:interest:ghost") == b":0\r\n"


async def test_nodes_announce_themselves_again_after_redis_restarts_empty(nursery, redis):
    a_broker, a = await start_node(nursery, redis, "a")
    b_broker, _b = await start_node(nursery, redis, "b")
    on_b = b_broker.topic_queue("qb", "t")
    await wait_until(lambda: set(a.interest.nodes_for("t")) == {"b"})
    redis.stop()  # no persistence: it comes back empty
    redis.start(port=redis.port)
    # Each node notices (a failed command, or its own name gone from the node set) and
    # writes its filters and consumer group again.
    await wait_until(lambda: redis.command("SISMEMBER", "polybroker:nodes", "b") == b":1\r\n"
                     and redis.command("EXISTS", "polybroker:stream:b") == b":1\r\n")
    await wait_until(lambda: set(a.interest.nodes_for("t")) == {"b"})
    a_broker.publish(Message("t", b"after", qos=1))
    await wait_until(lambda: payloads(on_b) == [b"after"])


async def test_a_password_in_the_redis_url_is_used(nursery, tmp_path):
    with running_redis(tmp_path / "secured", password="s3cret") as secured:
        assert secured.command("SMEMBERS", "polybroker:nodes").startswith(b"*0")
        a_broker, a = await start_node(nursery, secured, "a")
        b_broker, _b = await start_node(nursery, secured, "b")
        on_b = b_broker.topic_queue("qb", "t")
        await wait_until(lambda: set(a.interest.nodes_for("t")) == {"b"})
        a_broker.publish(Message("t", b"authenticated", qos=1))
        await wait_until(lambda: payloads(on_b) == [b"authenticated"])
        nursery.cancel_scope.cancel()  # the nodes stop before their Redis does


async def test_nodes_reach_redis_over_tls(nursery, tmp_path, certs_dir):
    with running_redis(tmp_path / "tls", tls_dir=certs_dir) as secured:
        assert secured.url.startswith("rediss://")
        a_broker, a = await start_node(nursery, secured, "a")
        b_broker, _b = await start_node(nursery, secured, "b")
        on_b = b_broker.topic_queue("qb", "t")
        await wait_until(lambda: set(a.interest.nodes_for("t")) == {"b"})
        a_broker.publish(Message("t", b"encrypted", qos=1))
        await wait_until(lambda: payloads(on_b) == [b"encrypted"])
        nursery.cancel_scope.cancel()

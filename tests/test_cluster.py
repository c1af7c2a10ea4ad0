"""The cluster's parts that need no Redis: the router's watch hook, the other nodes'
interest, the stream entry codec and the [cluster] table. (On a real redis-server:
``interop/test_cluster_nodes.py``.)"""

import pytest

from polybroker.broker import Broker
from polybroker.cluster import node as cluster_node
from polybroker.cluster.codec import decode, encode
from polybroker.cluster.config import ClusterConfig, parse_cluster
from polybroker.cluster.interest import RemoteInterest
from polybroker.config import BrokerConfig, ConfigError, StorageConfig, config_from_dict
from polybroker.message import AmqpPart, Message


def new_broker() -> Broker:
    return Broker(BrokerConfig(storage=StorageConfig(persistence=False)))



async def test_the_router_tells_a_filter_s_first_and_last_subscriber_and_lists_filters():
    broker = new_broker()
    seen: list[tuple[str, bool]] = []
    first = broker.topic_queue("q1", "a/+")
    broker.router.watch = lambda topic_filter, added: seen.append((topic_filter, added))
    second = broker.topic_queue("q2", "a/+")  # not the first: nothing to tell
    broker.topic_queue("q3", "#")
    broker.end_topic_queue("a/+", first)
    assert seen == [("#", True)]
    broker.end_topic_queue("a/+", second)
    assert seen == [("#", True), ("a/+", False)]
    assert sorted(broker.router.filters()) == ["#"]


def test_remote_interest_matches_nodes_by_their_filters():
    interest = RemoteInterest()
    interest.add("a", "sensors/+/temp")
    interest.add("b", "sensors/#")
    interest.add("b", "sensors/+/temp")
    assert set(interest.nodes_for("sensors/1/temp")) == {"a", "b"}
    assert set(interest.nodes_for("sensors/1/hum")) == {"b"}
    assert set(interest.nodes_for("other")) == set()
    interest.remove("b", "sensors/#")
    assert set(interest.nodes_for("sensors/1/hum")) == set()
    interest.replace("a", {"x"})
    assert set(interest.nodes_for("sensors/1/temp")) == {"b"}
    assert set(interest.nodes_for("x")) == {"a"}
    interest.forget("b")
    assert set(interest.nodes_for("sensors/1/temp")) == set()
    assert interest.nodes() == {"a"}


def test_a_message_crosses_in_a_stream_entry_whole():
    clock = iter([100.0, 5.0]).__next__
    message = Message(
        "a/b", b"\x00\xffdata", qos=2, retain=True, expiry=130.0, payload_format=1,
        content_type="text/plain", correlation_data=b"\x01\x02", response_topic="r/t",
        headers=(("k", "v"), ("k", "w")), origin_protocol="amqp", origin_client="c1",
        amqp=AmqpPart("amq.topic", "a.b", b"\x90\x00", persistent=True),
    )
    back = decode(encode(message, clock()), clock)
    assert (back.topic, back.payload, back.qos, back.retain) == ("a/b", b"\x00\xffdata", 2, True)
    assert back.expiry == 35.0  # 30 seconds left, on the receiving node's clock
    assert (back.payload_format, back.content_type, back.correlation_data) == (
        1, "text/plain", b"\x01\x02")
    assert back.response_topic == "r/t" and back.headers == (("k", "v"), ("k", "w"))
    assert (back.origin_protocol, back.origin_client) == ("amqp", "c1")
    assert back.amqp is not None
    assert (back.amqp.exchange, back.amqp.routing_key, back.amqp.properties,
            back.amqp.persistent) == ("amq.topic", "a.b", b"\x90\x00", True)


def test_cluster_table_is_checked():
    config = config_from_dict({"cluster": {"redis": "rediss://:secret@redis.example:6380/0",
                                           "node": "n1"}})
    assert config.cluster.redis == "rediss://:secret@redis.example:6380/0"
    assert config.cluster.node_name() == "n1"
    assert BrokerConfig().cluster.redis is None
    with pytest.raises(ConfigError, match=r"cluster\.redis: expected a redis://"):
        parse_cluster({"redis": "http://x"})
    with pytest.raises(ConfigError, match=r"cluster\.nodes: unknown key"):
        parse_cluster({"nodes": 2})


async def test_messages_for_other_nodes_dropped_from_a_full_outbox_are_counted(monkeypatch):
    monkeypatch.setattr(cluster_node, "MAX_OUTBOX", 3)
    broker = new_broker()
    node = cluster_node.ClusterNode(broker, ClusterConfig(redis="redis://127.0.0.1:1/0",
                                                          node="a"))
    node.interest.add("b", "t/#")
    for n in range(5):  # the link is down: nothing takes them from the outbox
        node.publish(Message("t/x", b"%d" % n, qos=1))
    node.publish(Message("elsewhere", b"local only"))
    assert (node.dropped, node.local_only) == (2, 1)
    assert broker.drops == {"cluster-outbox-full": 2}

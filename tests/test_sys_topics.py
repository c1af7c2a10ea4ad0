"""The $SYS tree: Mosquitto's topics and formats, on a timer, under trio's MockClock."""

import pytest
import trio
import trio.testing

from polybroker.config import ConfigError, config_from_dict
from polybroker.message import Message
from polybroker.sessions import SubscriptionOptions
from polybroker.sys_topics import SysTree

from .rawclient import connect_client


def retained(broker) -> dict[str, str]:
    return {m.topic: m.payload.decode() for m in broker.sys_retained.match("$SYS/#")}


def test_sys_interval_is_read_from_the_broker_table():
    assert config_from_dict({}).broker.sys_interval == 10
    assert config_from_dict({"broker": {"sys_interval": 0}}).broker.sys_interval == 0
    with pytest.raises(ConfigError, match=r"broker\.sys_interval: expected int"):
        config_from_dict({"broker": {"sys_interval": "10"}})
    with pytest.raises(ConfigError, match=r"broker\.sys_interval: must be between"):
        config_from_dict({"broker": {"sys_interval": -1}})
    with pytest.raises(ConfigError, match=r"broker\.interval: unknown key"):
        config_from_dict({"broker": {"interval": 1}})


@pytest.mark.parametrize("mock_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_the_tree_is_published_retained_every_interval(nursery, broker, mock_clock):
    tree = SysTree(broker, "1.2.3")
    nursery.start_soon(tree.run, 10)
    await trio.testing.wait_all_tasks_blocked()
    first = retained(broker)
    assert first["$SYS/broker/version"] == "polybroker version 1.2.3"
    assert first["$SYS/broker/uptime"] == "0 seconds"
    for name in ("connected", "disconnected", "total", "maximum", "expired", "active",
                 "inactive"):
        assert first[f"$SYS/broker/clients/{name}"] == "0"
    for name in ("messages/received", "messages/sent", "publish/messages/received",
                 "publish/messages/sent", "publish/messages/dropped", "bytes/received",
                 "bytes/sent", "subscriptions/count"):
        assert first[f"$SYS/broker/{name}"] == "0", name
    # The tree's own retained messages are in the counts, as in Mosquitto's.
    stored = first["$SYS/broker/retained messages/count"]
    assert int(stored) > 0 and first["$SYS/broker/messages/stored"] == stored
    assert first["$SYS/broker/store/messages/count"] == stored
    assert int(first["$SYS/broker/store/messages/bytes"]) > 0
    assert first["$SYS/broker/load/messages/received/1min"] == "0.00"
    assert first["$SYS/broker/load/connections/15min"] == "0.00"
    assert int(first["$SYS/broker/heap/current"]) > 0
    assert all(m.retain and m.qos == 0 for m in broker.sys_retained.match("$SYS/#"))
    assert len(broker.retained) == 0  # apart from the clients' retained messages
    await trio.sleep(10)
    await trio.testing.wait_all_tasks_blocked()
    assert retained(broker)["$SYS/broker/uptime"] == "10 seconds"


@pytest.mark.parametrize("mock_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_counts_cover_clients_and_traffic_of_every_protocol(nursery, broker, mock_clock):
    tree = SysTree(broker, "x")
    sub = await connect_client(nursery, broker)
    await sub.connect("watcher")
    await sub.subscribe("$SYS/broker/clients/connected")  # `#` would not match $SYS
    pub = await connect_client(nursery, broker)
    await pub.connect("pub", clean_session=False)
    await pub.subscribe("t")
    for _ in range(3):
        broker.publish(Message("t", b"x"))  # delivered to pub: 3 sent
    # A STOMP connection's traffic counts the same way (a registered connection).
    info = broker.stats.opening(object(), "stomp", "peer")
    info.messages_in, info.bytes_in = 2, 100
    tree.update()
    tree_now = retained(broker)
    assert tree_now["$SYS/broker/clients/connected"] == "3"
    assert tree_now["$SYS/broker/clients/total"] == "3"
    assert tree_now["$SYS/broker/publish/messages/received"] == "2"
    assert tree_now["$SYS/broker/messages/sent"] == "3"
    assert tree_now["$SYS/broker/subscriptions/count"] == "2"
    assert int(tree_now["$SYS/broker/bytes/received"]) > 100
    packet = await sub.receive()
    assert packet.topic == "$SYS/broker/clients/connected" and packet.payload == b"3"
    await pub.close()
    broker.stats.closing(info.connection)
    await trio.testing.wait_all_tasks_blocked()
    tree.update()
    after = retained(broker)
    assert after["$SYS/broker/clients/connected"] == "1"
    assert after["$SYS/broker/clients/disconnected"] == "1"  # pub's persistent session
    assert after["$SYS/broker/clients/total"] == "2"
    assert after["$SYS/broker/clients/maximum"] == "3"
    assert (await sub.receive()).payload == b"1"


@pytest.mark.parametrize("mock_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_loads_are_mosquittos_smoothed_per_minute_rates(nursery, broker, mock_clock):
    tree = SysTree(broker, "x")
    tree.update()
    info = broker.stats.opening(object(), "mqtt", "peer")
    info.messages_in = 60  # 60 in 60 seconds: one a second, 60 a minute
    await trio.sleep(60)
    tree.update()
    loads = retained(broker)
    # 60 + e^-1 (0 - 60) = 37.93; over 5 minutes 60 (1 - e^-0.2) = 10.88
    assert loads["$SYS/broker/load/messages/received/1min"] == "37.93"
    assert loads["$SYS/broker/load/messages/received/5min"] == "10.88"
    assert loads["$SYS/broker/load/publish/received/15min"] == "3.87"
    assert loads["$SYS/broker/load/connections/1min"] == "0.63"  # one connection opened


@pytest.mark.parametrize("mock_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_unchanged_values_are_not_published_again(nursery, broker, mock_clock):
    tree = SysTree(broker, "x")
    tree.update()
    tree.update()  # the first round's messages are in this one's retained counts
    seen = []

    class Recorder:
        client_id = "recorder"
        backlog = None

        def deliver(self, message, qos, retain, ids):
            seen.append(message.topic)
            return 0

    broker.router.add("$SYS/#", Recorder(), SubscriptionOptions(qos=0))
    await trio.sleep(10)
    tree.update()
    # Nothing else moved; but the process's memory may, and with it (and the uptime) the
    # size of the tree's own retained payloads.
    moving = ("$SYS/broker/heap/current", "$SYS/broker/heap/maximum",
              "$SYS/broker/store/messages/bytes")
    assert [topic for topic in seen if topic not in moving] == ["$SYS/broker/uptime"]


@pytest.mark.parametrize("mock_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_the_tree_is_outside_the_clients_retained_bound(nursery, make_broker, mock_clock):
    from polybroker.config import Limits

    broker = make_broker(limits=Limits(max_retained_messages=1))
    SysTree(broker, "x").update()
    broker.publish(Message("a", b"kept", retain=True))
    assert broker.retained.get("a") is not None  # the tree took none of the one place
    late = await connect_client(nursery, broker)
    await late.connect("late")
    await late.subscribe("$SYS/broker/clients/+")
    packets = await late.publishes_until_idle()
    assert {p.topic for p in packets} >= {"$SYS/broker/clients/total",
                                          "$SYS/broker/clients/connected"}
    assert all(p.retain for p in packets)

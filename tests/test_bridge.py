"""Bridges between two brokers in one trio run: forwarding both ways with the topic
prefixes, store and forward while the remote is down and across a restart, no loops
between two brokers bridged both ways, reload, and the ``[[bridge]]`` tables."""

import contextlib
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from polybroker.bridge.bridge import Bridge
from polybroker.bridge.config import BridgeConfig
from polybroker.bridge.remote import MARKER
from polybroker.config import BrokerConfig, ConfigError, config_from_dict, parse_listen_url
from polybroker.protocols.mqtt import (
    ConnAck,
    Connect,
    PubAck,
    Publish,
    PubRec,
    SubAck,
    Subscribe,
    Subscription,
)
from polybroker.protocols.mqtt import (
    properties as prop,
)
from polybroker.server import RunningBroker, open_broker, serve

from .rawclient import RawClient
from .stompclient import connect_client as stomp_client

TIMEOUT = 10


def bridge_table(port: int, **fields) -> dict:
    table = {
        "name": "up", "url": f"mqtt://127.0.0.1:{port}", "client_id": "edge-1",
        "reconnect_min": 0.05, "reconnect_max": 0.2, "keep_alive": 30,
        "topic": [{"topic": "#", "direction": "out", "qos": 1}],
    }
    table.update(fields)
    return table


def broker_config(data_dir: Path, *bridges: dict, port: int = 0, persistence: bool = True,
                  websocket: bool = False) -> BrokerConfig:
    config = config_from_dict({"bridge": list(bridges)}) if bridges else BrokerConfig()
    urls = [f"mqtt://127.0.0.1:{port}", *(["mqtt+ws://127.0.0.1:0"] if websocket else [])]
    return replace(
        config, listeners=tuple(parse_listen_url(url) for url in urls), data_dir=data_dir,
        storage=replace(config.storage, persistence=persistence, fsync="never"),
    )


@asynccontextmanager
async def broker(data_dir: Path, *bridges: dict, port: int = 0, persistence: bool = True,
                 websocket: bool = False):
    data_dir.mkdir(parents=True, exist_ok=True)
    async with open_broker(broker_config(data_dir, *bridges, port=port, persistence=persistence,
                                         websocket=websocket)) as running:
        yield running


class Stoppable:
    """A broker in the test's nursery that the test can stop before the others."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.running: RunningBroker | None = None

    async def run(self, config: BrokerConfig, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await serve(config, task_status=task_status)
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


async def start(nursery: trio.Nursery, data_dir: Path, *bridges: dict,
                port: int = 0) -> Stoppable:
    data_dir.mkdir(parents=True, exist_ok=True)
    stoppable = Stoppable()
    stoppable.running = await nursery.start(stoppable.run,
                                            broker_config(data_dir, *bridges, port=port))
    return stoppable


async def client(running: RunningBroker, client_id: str, level: int = 4,
                 clean: bool = True) -> RawClient:
    c = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port()))
    c.parser.protocol_level = level
    connack = await c.connect(client_id, protocol_level=level, clean_session=clean)
    assert connack.return_code == 0
    return c


async def backend_session(cloud: RunningBroker, topic_filter: str) -> None:
    """A persistent subscriber at the cloud, so that what arrives while it is away waits."""
    backend = await client(cloud, "backend", clean=False)
    await backend.subscribe(topic_filter, qos=1)
    await backend.close()


async def subscribe(c: RawClient, topic_filter: str, level: int = 4) -> None:
    await c.send(Subscribe(1, (Subscription(topic_filter, 1),)), level=level)
    assert isinstance(await c.receive(), SubAck)


async def drained(running: RunningBroker, name: str = "up") -> None:
    """Until the bridge has nothing waiting for the remote (its last PUBACK came)."""
    bridge = running.bridges.bridges[name]
    with trio.fail_after(TIMEOUT):
        await bridge.wait_until(lambda: not bridge.refresh_status().backlog_messages)


async def connected(running: RunningBroker, name: str = "up") -> None:
    with trio.fail_after(TIMEOUT):
        await running.bridges.bridges[name].wait_for_state("connected")


async def publish_acked(c: RawClient, topic: str, payload: bytes, packet_id: int,
                        level: int = 4, **fields) -> None:
    await c.send(Publish(topic, payload, qos=1, packet_id=packet_id, **fields), level=level)
    assert isinstance(await c.receive(), PubAck)


async def receive_publish(c: RawClient, qos: int = 1, level: int = 4) -> Publish:
    packet = await c.receive(TIMEOUT)
    assert isinstance(packet, Publish), packet
    if packet.qos:
        await c.send(PubAck(packet.packet_id), level=level)
    return packet


# -- forwarding ----------------------------------------------------------------------------


async def test_out_rule_forwards_with_prefixes_and_properties(tmp_path):
    async with broker(tmp_path / "cloud") as cloud:
        rule = {"topic": "sensors/#", "direction": "out", "qos": 1,
                "local_prefix": "", "remote_prefix": "site1/"}
        async with broker(tmp_path / "edge", bridge_table(cloud.port(), topic=[rule])) as edge:
            await connected(edge)
            backend = await client(cloud, "backend", level=5)
            await subscribe(backend, "site1/#", level=5)
            device = await client(edge, "device", level=5)
            props = {prop.CONTENT_TYPE: "text/plain", prop.USER_PROPERTY: (("k", "v"),)}
            await publish_acked(device, "sensors/t", b"21.5", 1, level=5, retain=True,
                                properties=props)
            await publish_acked(device, "other/x", b"not bridged", 2, level=5)
            got = await receive_publish(backend, level=5)
            assert (got.topic, got.payload, got.qos) == ("site1/sensors/t", b"21.5", 1)
            assert got.properties[prop.CONTENT_TYPE] == "text/plain"
            assert got.properties[prop.USER_PROPERTY] == (("k", "v"), (MARKER, "up"))
            assert cloud.broker.retained.match("site1/sensors/t")  # retained carried over
            assert await backend.publishes_until_idle() == []
            await drained(edge)
            status = edge.bridges.status()[0]
            assert (status.state, status.forwarded, status.backlog_messages) == ("connected", 1, 0)
            state = edge.broker.retained.match("$SYS/broker/connection/up/state")
            assert [m.payload for m in state] == [b"1"]


async def test_in_rule_brings_commands_to_the_edge(tmp_path):
    async with broker(tmp_path / "cloud") as cloud:
        rules = [{"topic": "+/set", "direction": "in", "qos": 2,
                  "local_prefix": "cmd/", "remote_prefix": "devices/edge-1/"}]
        async with broker(tmp_path / "edge", bridge_table(cloud.port(), topic=rules)) as edge:
            device = await client(edge, "device")
            await device.subscribe("cmd/#", qos=1)
            await connected(edge)
            backend = await client(cloud, "backend")
            # The bridge's subscription is in place at the remote once its SUBACK came.
            bridge = edge.bridges.bridges["up"]
            with trio.fail_after(TIMEOUT):
                await bridge.wait_until(lambda: bridge.status.subacks > 0)
            await publish_acked(backend, "devices/edge-1/lamp/set", b"on", 1)
            got = await receive_publish(device)
            assert (got.topic, got.payload) == ("cmd/lamp/set", b"on")
            assert edge.bridges.status()[0].received == 1


async def test_over_websocket(tmp_path):
    async with broker(tmp_path / "cloud", websocket=True) as cloud:
        url = f"mqtt+ws://127.0.0.1:{cloud.port('mqtt', 'ws')}/mqtt"
        async with broker(tmp_path / "edge", bridge_table(0, url=url)) as edge:
            backend = await client(cloud, "backend")
            await backend.subscribe("t", qos=1)
            await connected(edge)
            device = await client(edge, "device")
            await publish_acked(device, "t", b"over ws", 1)
            assert (await receive_publish(backend)).payload == b"over ws"


async def test_fail_over_and_back_to_the_first_remote(tmp_path):
    async with trio.open_nursery() as nursery:
        primary = await start(nursery, tmp_path / "primary")
        primary_port = primary.running.port()
        await primary.stop()
        async with broker(tmp_path / "secondary") as secondary:
            urls = [f"mqtt://127.0.0.1:{primary_port}", f"mqtt://127.0.0.1:{secondary.port()}"]
            table = bridge_table(0, urls=urls, primary_retry=0.1)
            del table["url"]
            async with broker(tmp_path / "edge", table) as edge:
                bridge = edge.bridges.bridges["up"]
                with trio.fail_after(TIMEOUT):
                    await bridge.wait_for_state("connected", urls[1])
                primary = await start(nursery, tmp_path / "primary", port=primary_port)
                with trio.fail_after(TIMEOUT):
                    await bridge.wait_for_state("connected", urls[0])
                assert bridge.status.reconnects == 1
        await primary.stop()


def test_reconnect_delays_double_with_jitter_up_to_the_bound(tmp_path):
    config = config_from_dict({"bridge": [bridge_table(1, reconnect_min=1, reconnect_max=8)]})
    bridge = Bridge.__new__(Bridge)  # the back-off alone: no broker needed
    bridge.config = config.bridges[0]
    for attempt, high in ((0, 1), (1, 2), (2, 4), (3, 8), (4, 8), (40, 8)):
        delays = [bridge._backoff(attempt) for _ in range(50)]
        assert all(high / 2 <= d <= high for d in delays)
        assert len(set(delays)) > 1  # jittered


async def test_a_remote_with_maximum_qos_1_and_no_retain(tmp_path):
    """A QoS 2 message goes as QoS 1 and is done at its PUBACK; no retain flag is sent to
    a remote without Retain Available (MQTT 5.0 CONNACK)."""
    got: list[Publish] = []
    arrived = trio.Event()

    async def remote(stream: trio.SocketStream) -> None:
        peer = RawClient(stream)
        assert isinstance(await peer.receive(), Connect)  # sets the parser to 5.0
        await peer.send(ConnAck(properties={prop.MAXIMUM_QOS: 1, prop.RETAIN_AVAILABLE: 0}),
                        level=5)
        with contextlib.suppress(EOFError):  # the edge stops at the end of the test
            while True:
                packet = await peer.receive(TIMEOUT * 2)
                if isinstance(packet, Publish):
                    got.append(packet)
                    await peer.send(PubAck(packet.packet_id), level=5)
                    arrived.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, remote, 0)
        port = listeners[0].socket.getsockname()[1]
        table = bridge_table(port, topic=[{"topic": "#", "qos": 2}])
        async with broker(tmp_path / "edge", table) as edge:
            device = await client(edge, "device")
            await device.send(Publish("t", b"x", qos=2, packet_id=1, retain=True))
            assert isinstance(await device.receive(), PubRec)
            with trio.fail_after(TIMEOUT):
                await arrived.wait()
            assert (got[0].qos, got[0].retain) == (1, False)
            await drained(edge)
        nursery.cancel_scope.cancel()


# -- store and forward -----------------------------------------------------------------------


async def test_messages_wait_while_the_remote_is_down_and_arrive_in_order(tmp_path):
    async with trio.open_nursery() as nursery:
        cloud = await start(nursery, tmp_path / "cloud")
        port = cloud.running.port()
        await backend_session(cloud.running, "t/#")
        async with broker(tmp_path / "edge", bridge_table(port)) as edge:
            await connected(edge)
            device = await client(edge, "device")
            await cloud.stop()
            with trio.fail_after(TIMEOUT):
                await edge.bridges.bridges["up"].wait_for_state("disconnected")
            for i in range(50):
                await publish_acked(device, f"t/{i % 3}", b"%d" % i, i + 1)
            assert edge.bridges.status()[0].backlog_messages == 50
            state = edge.broker.retained.match("$SYS/broker/connection/up/state")
            assert [m.payload for m in state] == [b"0"]
            cloud = await start(nursery, tmp_path / "cloud", port=port)
            backend = await client(cloud.running, "backend", clean=False)
            got = [(await receive_publish(backend)).payload for _ in range(50)]
            assert got == [b"%d" % i for i in range(50)]
            await drained(edge)
        await cloud.stop()


async def test_backlog_survives_a_restart_of_the_edge(tmp_path):
    async with broker(tmp_path / "cloud") as cloud:
        port = cloud.port()
        await backend_session(cloud, "t")
    async with broker(tmp_path / "edge", bridge_table(port)) as edge:
        device = await client(edge, "device")
        for i in range(10):
            await publish_acked(device, "t", b"%d" % i, i + 1)
    async with broker(tmp_path / "cloud", port=port) as cloud, \
            broker(tmp_path / "edge", bridge_table(port)) as edge:
        backend = await client(cloud, "backend", clean=False)
        got = [(await receive_publish(backend)).payload for _ in range(10)]
        assert got == [b"%d" % i for i in range(10)]
        await drained(edge)
        assert edge.bridges.status()[0].forwarded == 10


@pytest.mark.parametrize(("level", "code"), [(4, 0x02), (5, 0x85)])
async def test_a_client_cannot_take_the_bridges_session(tmp_path, level, code):
    async with broker(tmp_path / "cloud") as cloud:
        port = cloud.port()
    async with broker(tmp_path / "edge", bridge_table(port)) as edge:
        device = await client(edge, "device")
        await publish_acked(device, "t", b"kept", 1)
        thief = RawClient(await trio.open_tcp_stream("127.0.0.1", edge.port()))
        thief.parser.protocol_level = level
        connack = await thief.connect("$bridge/up", protocol_level=level, clean_session=True)
        assert connack.return_code == code
        assert edge.bridges.status()[0].backlog_messages == 1  # still waiting for the remote


async def test_stomp_messages_are_bridged_like_mqtt_ones(tmp_path):
    async with broker(tmp_path / "cloud") as cloud:
        port = cloud.port()
        await backend_session(cloud, "sensors/#")
    async with broker(tmp_path / "edge", bridge_table(port)) as edge, \
            trio.open_nursery() as nursery:
        stomp = await stomp_client(nursery, edge.broker)
        await stomp.connect()
        await stomp.publish("/topic/sensors/t", b"via stomp", content_type="text/plain")
        assert edge.bridges.status()[0].backlog_messages == 1  # kept while the remote is down
        async with broker(tmp_path / "cloud", port=port) as cloud:
            backend = await client(cloud, "backend", clean=False)
            got = await receive_publish(backend)
            assert (got.topic, got.payload) == ("sensors/t", b"via stomp")
        await stomp.close()


async def test_backlog_is_bounded_and_drops_are_counted(tmp_path):
    async with broker(tmp_path / "cloud", persistence=False) as cloud:
        port = cloud.port()
    table = bridge_table(port, max_queued_messages=5, max_inflight_messages=1)
    async with broker(tmp_path / "edge", table) as edge:
        device = await client(edge, "device")
        for i in range(10):
            await publish_acked(device, "t", b"%d" % i, i + 1)
        status = edge.bridges.status()[0]
        assert (status.backlog_messages, status.queue_full_drops) == (5, 5)


# -- loops -------------------------------------------------------------------------------------


async def test_two_brokers_bridged_both_ways_exchange_each_message_once(tmp_path):
    async with broker(tmp_path / "b", persistence=False) as b:
        b_port = b.port()
    async with broker(tmp_path / "a", bridge_table(b_port, name="to-b")) as a, \
            broker(tmp_path / "b", bridge_table(a.port(), name="to-a"), port=b_port,
                   persistence=False) as b:
        await connected(a, "to-b")
        await connected(b, "to-a")
        watch_a = await client(a, "watch-a")
        await watch_a.subscribe("#", qos=1)
        watch_b = await client(b, "watch-b")
        await watch_b.subscribe("#", qos=1)
        pub = await client(a, "pub-a")
        await publish_acked(pub, "x/1", b"from a", 1)
        pub_b = await client(b, "pub-b")
        await publish_acked(pub_b, "y/1", b"from b", 1)
        assert (await receive_publish(watch_b)).topic in ("x/1", "y/1")
        assert (await receive_publish(watch_b)).topic in ("x/1", "y/1")
        assert (await receive_publish(watch_a)).topic in ("x/1", "y/1")
        assert (await receive_publish(watch_a)).topic in ("x/1", "y/1")
        assert await watch_a.publishes_until_idle() == []
        assert await watch_b.publishes_until_idle() == []
        await drained(a, "to-b")
        await drained(b, "to-a")
        assert a.bridges.status()[0].forwarded == 1
        assert b.bridges.status()[0].forwarded == 1


# -- configuration ----------------------------------------------------------------------------


async def test_reload_changes_a_rule_and_keeps_the_backlog(tmp_path):
    async with broker(tmp_path / "cloud", persistence=False) as cloud:
        port = cloud.port()
    async with broker(tmp_path / "edge", bridge_table(port)) as edge:
        device = await client(edge, "device")
        await publish_acked(device, "a/1", b"queued", 1)
        new = config_from_dict({"bridge": [bridge_table(port, topic=[
            {"topic": "#", "direction": "out", "qos": 1, "remote_prefix": "edge/"}])]})
        edge.bridges.reload(new.bridges)
        bridge = edge.bridges.bridges["up"]
        assert bridge.remote_topic("a/1") == "edge/a/1"
        assert bridge.refresh_status().backlog_messages == 1
        edge.bridges.reload(())
        assert edge.bridges.bridges == {}
        assert "$bridge/up" not in edge.broker.sessions


async def test_unloadable_tls_files_stop_the_start_naming_the_bridge(tmp_path):
    table = bridge_table(1, url="mqtts://127.0.0.1:1", tls={"cafile": str(tmp_path / "no.crt")})
    with pytest.raises(BaseExceptionGroup) as info:
        async with broker(tmp_path / "edge", table):
            pass
    errors = info.value.split(ConfigError)[0].exceptions
    while isinstance(errors[0], BaseExceptionGroup):
        errors = errors[0].exceptions
    assert str(errors[0]).startswith("bridge up: tls: cannot load certificates")


def test_bridge_tables():
    config = config_from_dict({"bridge": [{
        "name": "cloud", "urls": ["mqtts://a.example:8883", "mqtt+wss://b.example/mqtt"],
        "mqtt_version": 4, "tls": {"cafile": "ca.crt", "alpn": ["x-amzn-mqtt-ca"]},
        "topic": [{"topic": "#", "direction": "both", "qos": 2, "local_prefix": "l/"}],
    }]})
    bridge: BridgeConfig = config.bridges[0]
    assert [r.port for r in bridge.remotes] == [8883, 443]
    assert bridge.remotes[1].websocket and bridge.remotes[1].path == "/mqtt"
    assert bridge.rules[0].local_filter == "l/#" and bridge.tls.alpn == ("x-amzn-mqtt-ca",)


@pytest.mark.parametrize(("table", "message"), [
    ({"url": "mqtt://h"}, "name: required"),
    ({"name": "x", "topic": [{"topic": "#"}]}, "url"),
    ({"name": "x", "url": "http://h", "topic": [{"topic": "#"}]}, "unsupported scheme"),
    ({"name": "x", "url": "mqtt://h"}, "at least one"),
    ({"name": "x", "url": "mqtt://h", "topic": [{"topic": "#", "direction": "up"}]},
     "direction"),
    ({"name": "x", "url": "mqtt://h", "topic": [{"topic": "a/#/b"}]}, "not a valid"),
    ({"name": "x", "url": "mqtt://h", "topic": [{"topic": "#"}], "colour": 1}, "unknown key"),
])
def test_bad_bridge_tables(table, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"bridge": [table]})

"""Two ``polybroker serve`` processes on one real redis-server, as one broker to their
clients: paho-mqtt on each node exchanging QoS 1 messages both ways, stomp.py on one and
pika on the other. A node learns of a subscription on the other a moment after the
SUBACK; the tests wait for that node's log line saying so (debug level)."""

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from .amqp_support import pika_params, pump
from .brokerproc import BrokerProcess
from .redisproc import RedisServer, running_redis
from .test_paho_mqtt import PahoClient
from .test_stomp_py import StompPy, _get

ALL = ("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0", "amqp://127.0.0.1:0")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


def cluster_config(directory: Path, redis: RedisServer, node: str) -> Path:
    path = directory / f"{node}.toml"
    path.write_text(f'[cluster]\nredis = "{redis.url}"\nnode = "{node}"\n')
    return path


def start_node(tmp_path: Path, redis: RedisServer, node: str) -> BrokerProcess:
    return BrokerProcess(tmp_path / node, "--config", str(cluster_config(tmp_path, redis, node)),
                         "--log-level", "debug", listen=ALL)


@pytest.fixture
def nodes(tmp_path: Path, redis: RedisServer) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    a = start_node(tmp_path, redis, "a")
    try:
        b = start_node(tmp_path, redis, "b")
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def wait_subscribed(node: BrokerProcess, other: str, topic_filter: str) -> None:
    node.wait_for_log(rf"cluster: node {other} subscribed to {re.escape(topic_filter)}$")


def test_paho_clients_on_two_nodes_exchange_qos1_both_ways(nodes):
    a, b = nodes
    on_a = PahoClient(a.port, "paho-on-a")
    on_b = PahoClient(b.port, "paho-on-b")
    try:
        on_a.connect()
        on_b.connect()
        on_a.subscribe(("to/a", 1))
        on_b.subscribe(("to/b/#", 1))
        wait_subscribed(b, "a", "to/a")
        wait_subscribed(a, "b", "to/b/#")
        for i in range(5):
            on_a.publish("to/b/x", b"from a %d" % i, qos=1)
            on_b.publish("to/a", b"from b %d" % i, qos=1)
        got_b = on_b.receive(5)
        got_a = on_a.receive(5)
        assert [m.payload for m in got_b] == [b"from a %d" % i for i in range(5)]
        assert [m.payload for m in got_a] == [b"from b %d" % i for i in range(5)]
        assert {(m.topic, m.qos) for m in got_b} == {("to/b/x", 1)}
        assert {(m.topic, m.qos) for m in got_a} == {("to/a", 1)}
    finally:
        on_a.stop()
        on_b.stop()


def test_an_offline_persistent_session_on_one_node_gets_what_the_other_publishes(nodes):
    a, b = nodes
    subscriber = PahoClient(b.port, "away-on-b", clean_session=False)
    subscriber.connect()
    subscriber.subscribe(("jobs/#", 1))
    subscriber.disconnect()
    wait_subscribed(a, "b", "jobs/#")
    publisher = PahoClient(a.port, "publisher-on-a")
    try:
        publisher.connect()
        for i in range(5):
            publisher.publish(f"jobs/{i}", b"job %d" % i, qos=1)
        for i in range(5):  # queued in b's session while its client is away
            b.wait_for_log(rf"cluster: message on jobs/{i} from another node$")
    finally:
        publisher.stop()
    back = PahoClient(b.port, "away-on-b", clean_session=False)
    try:
        back.connect()
        assert back.session_present
        got = back.receive(5)
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            (f"jobs/{i}", b"job %d" % i, 1) for i in range(5)]
    finally:
        back.stop()


def test_stomp_on_one_node_and_pika_on_the_other(nodes):
    a, b = nodes
    stomp_client = StompPy(a.stomp_port)
    connection = pika.BlockingConnection(pika_params(b.amqp_port))
    try:
        channel = connection.channel()
        channel.queue_declare("from-stomp", exclusive=True)
        channel.queue_bind("from-stomp", "amq.topic", "plant.*")
        stomp_client.subscribe("/topic/office/+", "s1")
        wait_subscribed(a, "b", "plant/+")
        wait_subscribed(b, "a", "office/+")
        stomp_client.send("/topic/plant/boiler", "hot", content_type="text/plain")
        channel.basic_publish("amq.topic", "office.lamp", b"on",
                              pika.BasicProperties(delivery_mode=2))
        got = []
        channel.basic_consume("from-stomp", lambda ch, method, props, body:
                              got.append((method.routing_key, body)), auto_ack=True)
        pump(connection, lambda: got)
        assert got == [("plant.boiler", b"hot")]
        frame = _get(stomp_client.listener.messages, "MESSAGE from pika")
        assert frame.body == "on"
        assert frame.headers["destination"] == "/topic/office/lamp"
    finally:
        if connection.is_open:
            connection.close()
        stomp_client.conn.disconnect()


def test_workers_share_one_port_and_exchange_messages(tmp_path, redis):
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\nredis = "{redis.url}"\nnode = "w"\n')
    broker = BrokerProcess(tmp_path / "data", "--config", str(config), "--workers", "2",
                           "--log-level", "debug")
    clients = [PahoClient(broker.port, f"worker-client-{i}") for i in range(16)]
    try:
        for client in clients:
            client.connect()
        for i, client in enumerate(clients):
            client.subscribe((f"ring/{i}", 1))
        # The kernel spread the connections over both workers: both hold subscriptions.
        members = [redis.command("SCARD", f"polybroker:interest:w-w{n}") for n in (0, 1)]
        assert all(reply != b":0\r\n" for reply in members), members
        learnt: set[str] = set()  # each worker learns of the other's subscriptions
        while len(learnt) < 16:
            line = broker.wait_for_log(r"cluster: node w-w\d subscribed to ring/\d+$")
            learnt.add(line.rsplit(" ", 1)[1])
        for i, client in enumerate(clients):
            client.publish(f"ring/{(i + 1) % 16}", b"from %d" % i, qos=1)
        for i, client in enumerate(clients):
            (message,) = client.receive(1)
            assert (message.topic, message.payload, message.qos) == (
                f"ring/{i}", b"from %d" % ((i - 1) % 16), 1)
    finally:
        for client in clients:
            client.stop()
        assert broker.stop() == 0
    assert (tmp_path / "data" / "node-0" / "store").is_dir()
    assert (tmp_path / "data" / "node-1" / "store").is_dir()


def test_workers_need_a_cluster_redis(tmp_path):
    with pytest.raises(RuntimeError, match="--workers needs \\[cluster\\] redis"):
        BrokerProcess(tmp_path / "data", "--workers", "2")


def test_a_worker_that_dies_stops_them_all(tmp_path, redis):
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\nredis = "{redis.url}"\n')
    broker = BrokerProcess(tmp_path / "data", "--config", str(config), "--workers", "2")
    try:
        pids = [int(m.group(1)) for line in broker.lines
                if (m := re.search(r"worker \d started \(pid (\d+)\)", line))]
        assert len(pids) == 2
        os.kill(pids[1], signal.SIGKILL)
        broker.wait_for_log(rf"worker 1 \(pid {pids[1]}\) exited with status -9: "
                            "stopping all workers")
        assert broker.proc.wait(timeout=20) == 1
        with pytest.raises(ProcessLookupError):  # the other worker is gone too
            os.kill(pids[0], 0)
    finally:
        broker.stop()

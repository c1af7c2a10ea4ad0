"""Bridges of a real ``polybroker serve`` process to a real Mosquitto (the Debian package)
and to another polybroker: the backlog kept while the remote is down (and across a SIGKILL
of the edge) arrives in order, commands come back in, TLS with client certificates, two
brokers bridged both ways pass each message once, SIGHUP changes a rule, and what
stomp.py and pika publish leaves like MQTT messages.

Every wait is for a log line or a message, with a timeout; every process is stopped in
``finally``.
"""

import queue
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika
import pytest

from .amqp_support import pika_params
from .brokerproc import BrokerProcess
from .clients import OutputProcess
from .mosquittoproc import Mosquitto
from .test_paho_mqtt import PahoClient
from .test_readme import Session, blocks, commands, named_file, sections
from .test_stomp_py import StompPy

COUNT = 100  # messages published while the remote is down


def write_config(path: Path, name: str, url: str, rules: list[str], *,
                 version: int = 4, extra: str = "") -> Path:
    """A configuration file with one bridge; ``rules`` are inline TOML tables."""
    path.write_text(
        f'[[bridge]]\nname = "{name}"\nurl = "{url}"\nclient_id = "{name}-client"\n'
        f"mqtt_version = {version}\nreconnect_min = 0.1\nreconnect_max = 0.5\n{extra}"
        f"topic = [{', '.join(rules)}]\n"
    )
    return path


@contextmanager
def running(*things: object) -> Iterator[None]:
    """Stop every process and client, whatever happened."""
    try:
        yield
    finally:
        for thing in reversed(things):
            if thing is not None:
                thing.stop()


@contextmanager
def client(port: int, client_id: str, clean: bool = True,
           tls_context: ssl.SSLContext | None = None) -> Iterator[PahoClient]:
    paho = PahoClient(port, client_id, clean_session=clean)
    if tls_context is not None:
        paho.client.tls_set_context(tls_context)
    paho.connect()
    try:
        yield paho
    finally:
        paho.stop()


def persistent_subscriber(port: int, client_id: str, topic_filter: str) -> None:
    """A subscriber's session at the remote, left to collect what arrives while away."""
    with client(port, client_id, clean=False) as sub:
        sub.subscribe((topic_filter, 1))
        sub.disconnect()


def no_more_messages(paho: PahoClient, wait: float = 1.0) -> bool:
    """True if nothing else arrives within ``wait`` seconds (a loop would keep sending)."""
    try:
        paho.messages.get(timeout=wait)
    except queue.Empty:
        return True
    return False


@pytest.mark.parametrize("version", [4, 5])
def test_backlog_arrives_in_order_once_mosquitto_is_back(tmp_path, version):
    remote = Mosquitto(tmp_path / "mosquitto").start()
    edge = None
    with running(remote):
        persistent_subscriber(remote.port, "backend", "site1/#")
        config = write_config(tmp_path / "edge.toml", "up", f"mqtt://127.0.0.1:{remote.port}",
                              ['{topic = "#", direction = "out", qos = 1, '
                               'remote_prefix = "site1/"}'], version=version)
        edge = BrokerProcess(tmp_path / "edge", "--config", str(config))
        with running(edge):
            edge.wait_for_log("bridge up: connected to", seen=True)
            remote.stop()
            edge.wait_for_log("bridge up: disconnected")
            with client(edge.port, "device") as device:
                for i in range(COUNT):
                    device.publish(f"t/{i % 3}", b"%d" % i, qos=1)
            remote.start()
            edge.wait_for_log(rf"bridge up: connected to .*\({COUNT} message\(s\) waiting\)")
            with client(remote.port, "backend", clean=False) as backend:
                got = backend.receive(COUNT)
    assert [m.payload for m in got] == [b"%d" % i for i in range(COUNT)]
    assert [m.topic for m in got[:3]] == ["site1/t/0", "site1/t/1", "site1/t/2"]


def test_backlog_survives_a_sigkill_of_the_edge_while_the_remote_is_down(tmp_path):
    remote = Mosquitto(tmp_path / "mosquitto").start()
    with running(remote):
        persistent_subscriber(remote.port, "backend", "#")
        config = write_config(tmp_path / "edge.toml", "up", f"mqtt://127.0.0.1:{remote.port}",
                              ['{topic = "#", direction = "out", qos = 2}'], version=5)
        edge = BrokerProcess(tmp_path / "edge", "--config", str(config))
        with running(edge):
            edge.wait_for_log("bridge up: connected to", seen=True)
            remote.stop()
            edge.wait_for_log("bridge up: disconnected")
            with client(edge.port, "device") as device:
                for i in range(COUNT):
                    device.publish("t", b"%d" % i, qos=1)
            edge.stop(signal.SIGKILL)
        edge = BrokerProcess(tmp_path / "edge", "--config", str(config))
        with running(edge):
            # Logged while it starts, before "ready".
            assert f"bridge up: {COUNT} message(s) waiting for the remote from before" in (
                "\n".join(edge.lines))
            remote.start()
            edge.wait_for_log("bridge up: connected to")
            with client(remote.port, "backend", clean=False) as backend:
                got = backend.receive(COUNT)
                assert no_more_messages(backend, 0.5)  # QoS 2: exactly once
    assert [m.payload for m in got] == [b"%d" % i for i in range(COUNT)]


def test_commands_and_retained_messages_come_in_and_nothing_echoes(tmp_path):
    remote = Mosquitto(tmp_path / "mosquitto").start()
    edge = None
    with running(remote), client(remote.port, "backend") as backend:
        backend.subscribe(("edge-1/#", 1))
        backend.publish("edge-1/config", b"v7", qos=1, retain=True)
        config = write_config(tmp_path / "edge.toml", "up", f"mqtt://127.0.0.1:{remote.port}",
                              ['{topic = "#", direction = "both", qos = 1, '
                               'remote_prefix = "edge-1/"}'])
        assert backend.next_message().payload == b"v7"
        edge = BrokerProcess(tmp_path / "edge", "--config", str(config))
        with running(edge):
            edge.wait_for_log("bridge up: connected to", seen=True)
            remote.wait_for_log("Sending SUBACK to up-client")
            with client(edge.port, "device") as device:
                device.subscribe(("#", 1))
                assert device.next_message()[:2] == ("config", b"v7")
                # The retained message came in through the bridge and is kept here too.
                with client(edge.port, "late") as late:
                    late.subscribe(("config", 1))
                    assert late.next_message() == ("config", b"v7", 1, True)
                backend.publish("edge-1/lamp/set", b"on", qos=1)
                assert backend.next_message()[:2] == ("edge-1/lamp/set", b"on")  # its own
                assert device.next_message()[:2] == ("lamp/set", b"on")
                device.publish("status", b"up", qos=1)
                assert backend.next_message()[:2] == ("edge-1/status", b"up")
                assert device.next_message()[:2] == ("status", b"up")
                # try_private: Mosquitto sends nothing back to the bridge it came from; No
                # Local here: the command does not go back out.
                assert no_more_messages(device)
                assert no_more_messages(backend, 0.1)


def test_tls_with_client_certificates(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, "-m", "polybroker", "certs", "--dir", str(certs),
                    "--client", "edge-1"], check=True, capture_output=True)
    remote = Mosquitto(tmp_path / "mosquitto", tls_dir=certs).start()
    edge = None
    tls = (f'tls = {{ cafile = "{certs / "ca.crt"}", certfile = "{certs / "edge-1.crt"}", '
           f'keyfile = "{certs / "edge-1.key"}", server_name = "localhost" }}\n')
    with running(remote):
        config = write_config(tmp_path / "edge.toml", "up", f"mqtts://127.0.0.1:{remote.port}",
                              ['{topic = "#", direction = "out", qos = 1}'], version=5,
                              extra=tls)
        edge = BrokerProcess(tmp_path / "edge", "--config", str(config))
        with running(edge):
            edge.wait_for_log("bridge up: connected to mqtts://", seen=True)
            remote.wait_for_log("Sending CONNACK to up-client")
            with client(edge.port, "device") as device:
                device.publish("t", b"over tls", qos=1, retain=True)
            with client(remote.port, "reader", tls_context=_client_tls(certs)) as reader:
                reader.subscribe(("t", 1))
                assert reader.next_message()[:2] == ("t", b"over tls")


def _client_tls(certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(certs / "edge-1.crt", certs / "edge-1.key")
    return context


def test_sighup_changes_a_rule(tmp_path):
    remote = Mosquitto(tmp_path / "mosquitto").start()
    edge = None
    with running(remote), client(remote.port, "backend") as backend:
        backend.subscribe(("#", 1))
        url = f"mqtt://127.0.0.1:{remote.port}"
        config = write_config(tmp_path / "edge.toml", "up", url, [
            '{topic = "#", direction = "out", qos = 1, remote_prefix = "v1/"}'])
        edge = BrokerProcess(tmp_path / "edge", "--config", str(config))
        with running(edge), client(edge.port, "device") as device:
            edge.wait_for_log("bridge up: connected to", seen=True)
            device.publish("a", b"1", qos=1)
            assert backend.next_message()[:2] == ("v1/a", b"1")
            write_config(config, "up", url, [
                '{topic = "#", direction = "out", qos = 1, remote_prefix = "v2/"}'])
            edge.proc.send_signal(signal.SIGHUP)
            edge.wait_for_log("bridge up: configuration changed")
            edge.wait_for_log("bridge up: connected to")
            device.publish("b", b"2", qos=1)
            assert backend.next_message()[:2] == ("v2/b", b"2")
            # A broken file is logged, and the bridge goes on as it was.
            write_config(config, "up", url, ['{topic = "#", direction = "sideways"}'])
            edge.proc.send_signal(signal.SIGHUP)
            edge.wait_for_log("bridges not reloaded: .*direction")
            device.publish("c", b"3", qos=1)
            assert backend.next_message()[:2] == ("v2/c", b"3")


def test_two_polybrokers_bridged_both_ways_pass_each_message_once(tmp_path):
    b_config = tmp_path / "b.toml"
    b_config.write_text("")
    b = BrokerProcess(tmp_path / "b", "--config", str(b_config))
    a = None
    with running(b):
        a_config = write_config(tmp_path / "a.toml", "to-b", f"mqtt://127.0.0.1:{b.port}",
                                ['{topic = "#", direction = "out", qos = 1}'], version=5)
        a = BrokerProcess(tmp_path / "a", "--config", str(a_config))
        with running(a):
            a.wait_for_log("bridge to-b: connected to", seen=True)
            # B gets its bridge back to A by SIGHUP: added without a restart.
            write_config(b_config, "to-a", f"mqtt://127.0.0.1:{a.port}",
                         ['{topic = "#", direction = "out", qos = 1}'], version=5)
            b.proc.send_signal(signal.SIGHUP)
            b.wait_for_log("bridge to-a: connected to")
            with client(a.port, "watch-a") as watch_a, \
                    client(b.port, "watch-b") as watch_b:
                watch_a.subscribe(("#", 1))
                watch_b.subscribe(("#", 1))
                watch_a.publish("from/a", b"1", qos=1)
                watch_b.publish("from/b", b"2", qos=1)
                got_a = sorted(m.topic for m in watch_a.receive(2))
                got_b = sorted(m.topic for m in watch_b.receive(2))
                assert got_a == got_b == ["from/a", "from/b"]
                assert no_more_messages(watch_a) and no_more_messages(watch_b, 0.1)


class BothBrokers(Session):
    """The README's commands, with the cloud and the edge running side by side (the
    README starts them in two terminals)."""

    def serve(self, command: str, words: list[str]) -> None:
        broker = OutputProcess(["bash", "-c", f"exec {command}"], cwd=self.dir, env=self.env)
        self.background.append(broker)
        broker.wait_for_line(r"polybroker \S+ ready", timeout=20)


def test_readme_bridging_example_runs(tmp_path):
    session = BothBrokers(tmp_path)
    try:
        for block in blocks(sections()["Bridging"]):
            name = named_file(block)
            if name is not None:
                session.write(name, block)
            for command in commands(block) if name is None else ():
                session.run(command)
        assert session.subscribers, "the example has a subscriber"
        session.subscribers[0].wait_for_line(r"^site1/sensors/t1 21\.5$")
    finally:
        session.close()


def test_stomp_and_amqp_messages_wait_and_leave_like_mqtt_ones(tmp_path):
    remote = Mosquitto(tmp_path / "mosquitto").start()
    with running(remote):
        persistent_subscriber(remote.port, "backend", "sensors/#")
        config = write_config(tmp_path / "edge.toml", "up", f"mqtt://127.0.0.1:{remote.port}",
                              ['{topic = "sensors/#", direction = "out", qos = 1}'])
        edge = BrokerProcess(tmp_path / "edge", "--config", str(config), listen=(
            "mqtt://127.0.0.1:0", "stomp://127.0.0.1:0", "amqp://127.0.0.1:0"))
        with running(edge):
            edge.wait_for_log("bridge up: connected to", seen=True)
            remote.stop()
            edge.wait_for_log("bridge up: disconnected")
            stomp = StompPy(edge.stomp_port)
            try:
                stomp.send("/topic/sensors/s", "via stomp")  # waits for its RECEIPT
            finally:
                stomp.conn.disconnect()
            connection = pika.BlockingConnection(pika_params(edge.amqp_port))
            try:
                channel = connection.channel()
                channel.confirm_delivery()  # basic_publish returns once it is confirmed
                channel.basic_publish("amq.topic", "sensors.a", b"via amqp",
                                      pika.BasicProperties(delivery_mode=2))
            finally:
                connection.close()
            remote.start()
            edge.wait_for_log(r"bridge up: connected to .*\(2 message\(s\) waiting\)")
            with client(remote.port, "backend", clean=False) as backend:
                got = [m[:2] for m in backend.receive(2)]
    assert got == [("sensors/s", b"via stomp"), ("sensors/a", b"via amqp")]

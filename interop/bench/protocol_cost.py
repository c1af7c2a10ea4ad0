"""What a message costs the broker per protocol: broker CPU time per message.

The shared load generator speaks MQTT only, and Python clients for STOMP and AMQP are far
slower than the broker, so their throughput would measure the client. What they cannot
hide is the broker's own CPU time: one ``polybroker serve`` process runs every scenario,
and each scenario's cost is the process's CPU seconds (user + system, from /proc) spent
while N messages went from a real client publisher to a real client consumer, divided by
N. Medians over the repeats; the MQTT QoS 0 row is the reference the others are
compared with.

    .venv/bin/python -m interop.bench.protocol_cost [-n 20000] [-r 3]
"""

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
import stomp
from paho.mqtt.client import CallbackAPIVersion, MQTTv311

from interop.brokerproc import BrokerProcess

PAYLOAD = b"x" * 64
TIMEOUT = 120.0  # seconds: the bound on one scenario run
# Python subscribers are slower than the broker: as in the MQTT benchmark, session
# backlogs may grow instead of dropping messages at the default bounds.
BOUNDS = "[limits]\nmax_queued_messages = 10000000\nmax_queued_bytes = 4294967296\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counter:
    """Counts received messages; ``wait`` until there are ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.done = threading.Event()

    def hit(self, *_args: object) -> None:
        self.count += 1
        if self.count >= self.n:
            self.done.set()

    def wait(self) -> None:
        if not self.done.wait(TIMEOUT):
            raise TimeoutError(f"{self.count} of {self.n} messages arrived")


def paho(port: int, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTv311)
    client.max_inflight_messages_set(64)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(TIMEOUT):  # paho drops QoS 0 publishes made before CONNACK
        raise TimeoutError("no CONNACK")
    return client


def mqtt_scenario(qos: int) -> Callable[[BrokerProcess, int], None]:
    def run(broker: BrokerProcess, n: int) -> None:
        counter = Counter(n)
        subscribed = threading.Event()
        sub = paho(broker.port_of("mqtt"), f"sub-{uuid.uuid4().hex[:8]}")
        sub.on_message = counter.hit
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.subscribe("bench/t", qos)
        subscribed.wait(TIMEOUT)
        pub = paho(broker.port_of("mqtt"), f"pub-{uuid.uuid4().hex[:8]}")
        for _ in range(n):
            pub.publish("bench/t", PAYLOAD, qos)
        counter.wait()
        for client in (pub, sub):
            client.loop_stop()
            client.disconnect()
    return run


def stomp_scenario(destination: str, persistent: bool) -> Callable[[BrokerProcess, int], None]:
    def run(broker: BrokerProcess, n: int) -> None:
        counter = Counter(n)
        listener = stomp.ConnectionListener()
        listener.on_message = counter.hit
        subscribed = threading.Event()
        listener.on_receipt = lambda _frame: subscribed.set()
        sub = stomp.Connection12([("127.0.0.1", broker.stomp_port)])
        sub.set_listener("count", listener)
        sub.connect(wait=True)
        sub.subscribe(destination, id="1", ack="auto", receipt="subscribed")
        subscribed.wait(TIMEOUT)
        pub = stomp.Connection12([("127.0.0.1", broker.stomp_port)])
        pub.connect(wait=True)
        headers = {"persistent": "true"} if persistent else {}
        for _ in range(n):
            pub.send(destination, PAYLOAD, headers=headers)
        counter.wait()
        pub.disconnect()
        sub.disconnect()
    return run


def take(channel, queue: str, n: int, *, ack: bool) -> None:
    """Consume ``n`` messages from ``queue``, acknowledging each one when ``ack``."""
    messages = channel.consume(queue, auto_ack=not ack, inactivity_timeout=TIMEOUT)
    for received, (method, _props, _body) in enumerate(messages, 1):
        if method is None:
            raise TimeoutError(f"{received - 1} of {n} messages arrived")
        if ack:
            channel.basic_ack(method.delivery_tag)
        if received == n:
            break
    channel.cancel()


def amqp_scenario(durable: bool) -> Callable[[BrokerProcess, int], None]:
    def run(broker: BrokerProcess, n: int) -> None:
        params = pika.ConnectionParameters("127.0.0.1", broker.amqp_port)
        consumer = pika.BlockingConnection(params)
        channel = consumer.channel()
        name = f"bench-{uuid.uuid4().hex[:8]}"
        channel.queue_declare(name, durable=durable, auto_delete=not durable)
        publisher = pika.BlockingConnection(params)
        out = publisher.channel()
        properties = pika.BasicProperties(delivery_mode=2 if durable else 1)
        if durable:
            out.confirm_delivery()  # each publish waits for its ack: after the fsync
        for _ in range(n):
            out.basic_publish("", name, PAYLOAD, properties)
        take(channel, name, n, ack=True)
        channel.queue_delete(name)
        publisher.close()
        consumer.close()
    return run


def mqtt_to_amqp(broker: BrokerProcess, n: int) -> None:
    """MQTT QoS 0 publishes into an AMQP queue bound on amq.topic."""
    params = pika.ConnectionParameters("127.0.0.1", broker.amqp_port)
    consumer = pika.BlockingConnection(params)
    channel = consumer.channel()
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(name, "amq.topic", "cross.*")
    pub = paho(broker.port_of("mqtt"), f"pub-{uuid.uuid4().hex[:8]}")
    for _ in range(n):
        pub.publish("cross/t", PAYLOAD, 0)
    take(channel, name, n, ack=False)
    pub.loop_stop()
    pub.disconnect()
    consumer.close()


SCENARIOS: dict[str, tuple[Callable[[BrokerProcess, int], None], float]] = {
    # name: (run, share of N it sends: the fsync-bound one sends fewer)
    "mqtt qos0": (mqtt_scenario(0), 1.0),
    "mqtt qos1": (mqtt_scenario(1), 1.0),
    "stomp /topic": (stomp_scenario("/topic/bench", False), 1.0),
    "stomp /queue persistent": (stomp_scenario("/queue/bench", True), 1.0),
    "amqp queue": (amqp_scenario(False), 1.0),
    "amqp durable + confirms": (amqp_scenario(True), 0.05),
    "mqtt -> amqp (amq.topic)": (mqtt_to_amqp, 1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="messages per scenario run")
    parser.add_argument("-r", type=int, default=3, help="repeats (medians are reported)")
    args = parser.parse_args()
    costs: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    with tempfile.TemporaryDirectory() as data:
        config = Path(data) / "bench.toml"
        config.write_text(BOUNDS)
        broker = BrokerProcess(Path(data) / "data", "--config", str(config), listen=(
            "mqtt://127.0.0.1:0", "stomp://127.0.0.1:0", "amqp://127.0.0.1:0"))
        try:
            for _ in range(args.r):
                for name, (run, share) in SCENARIOS.items():
                    n = max(100, int(args.n * share))
                    before, start = cpu_seconds(broker.proc.pid), time.monotonic()
                    run(broker, n)
                    spent = cpu_seconds(broker.proc.pid) - before
                    costs[name].append(spent / n * 1e6)
                    print(f"{name}: {n} messages, broker CPU {spent:.2f}s, "
                          f"wall {time.monotonic() - start:.1f}s", flush=True)
        finally:
            broker.stop()
            for line in broker.lines:
                if " WARNING " in line or " ERROR " in line:
                    print(line)
    reference = statistics.median(costs["mqtt qos0"])
    print("\n| scenario | broker CPU per message (median) | vs MQTT QoS 0 |")
    print("|---|---|---|")
    for name, values in costs.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} us | {median / reference:.1f}x |")


if __name__ == "__main__":
    main()

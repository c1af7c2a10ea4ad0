"""The Prometheus exposition, parsed by prometheus_client's own parser, against the
counters of real traffic: paho-mqtt, stomp.py and pika on an in-process broker (the
blocking clients run in worker threads while the broker runs in the test's loop)."""

import queue

import paho.mqtt.client as paho
import pika
import stomp
import trio
from paho.mqtt.client import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from polybroker.broker import Broker
from polybroker.config import BrokerSettings
from polybroker.management.prometheus import exposition
from polybroker.server import open_broker
from polybroker.stats import Histogram

WAIT = 10
LISTENERS = ("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0", "amqp://127.0.0.1:0")


def scrape(broker: Broker) -> dict[str, dict[tuple, float]]:
    """Metric family name -> {sorted label items (and sample name) -> value}."""
    body, content_type = exposition(broker)
    assert content_type.startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, *sorted(sample.labels.items()))
            out.setdefault(family.name, {})[key] = sample.value
    return out


def value(metrics: dict, family: str, sample: str | None = None, **labels: str) -> float:
    key = (sample or family, *sorted(labels.items()))
    return metrics.get(family, {}).get(key, 0.0)


def mqtt_traffic(port: int) -> None:
    """One paho client subscribes at QoS 1, another publishes three messages to it."""
    received: queue.Queue = queue.Queue()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="sub")
    sub.on_message = lambda client, userdata, message: received.put(message.payload)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        sub.subscribe("m/#", qos=1)
        # A retained marker: the subscription is in place once it comes back.
        pub.publish("m/ready", b"r", qos=1, retain=True).wait_for_publish(WAIT)
        assert received.get(timeout=WAIT) == b"r"
        for n in range(3):
            pub.publish("m/x", f"{n}".encode(), qos=1).wait_for_publish(WAIT)
        assert sorted(received.get(timeout=WAIT) for _ in range(3)) == [b"0", b"1", b"2"]
    finally:
        for client in (sub, pub):
            client.disconnect()
            client.loop_stop()


def stomp_traffic(port: int) -> None:
    """stomp.py sends two messages to a queue nobody consumes yet (with receipts)."""
    conn = stomp.Connection([("127.0.0.1", port)])
    conn.connect("alice", "x", wait=True)
    listener = stomp.listener.WaitingListener("last")
    conn.set_listener("wait", listener)
    conn.send("/queue/work", "one")
    conn.send("/queue/work", "two", headers={"receipt": "last"})
    listener.wait_on_receipt()
    conn.disconnect()


def amqp_traffic(port: int) -> list[bytes]:
    """pika publishes four messages to the same queue, then gets all six."""
    params = pika.ConnectionParameters(host="127.0.0.1", port=port, connection_attempts=1,
                                       credentials=pika.PlainCredentials("guest", "guest"))
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for n in range(4):
            channel.basic_publish("", "work", f"amqp {n}".encode())
        bodies = []
        while (got := channel.basic_get("work", auto_ack=True))[0] is not None:
            bodies.append(got[2])
        return bodies
    finally:
        connection.close()


async def test_counters_follow_paho_stomp_py_and_pika_traffic(serve_config):
    # No $SYS tree: its retained messages would be in the retained counts.
    config = serve_config(*LISTENERS, broker=BrokerSettings(sys_interval=0))
    async with open_broker(config) as running:
        broker = running.broker
        before = scrape(broker)
        assert value(before, "polybroker_connections_opened") == 0
        await trio.to_thread.run_sync(mqtt_traffic, running.port("mqtt"))
        await trio.to_thread.run_sync(stomp_traffic, running.port("stomp"))
        mid = scrape(broker)
        assert value(mid, "polybroker_queue_messages_ready", queue="work") == 2
        bodies = await trio.to_thread.run_sync(amqp_traffic, running.port("amqp"))
        assert sorted(bodies) == [b"amqp 0", b"amqp 1", b"amqp 2", b"amqp 3", b"one", b"two"]
        with trio.fail_after(WAIT):  # the server side of the last close may lag its client
            while broker.stats.live:
                await broker.stats.changed()
        metrics = scrape(broker)

    received = "polybroker_messages_received"
    assert value(metrics, received, received + "_total", protocol="mqtt") == 4  # marker + 3
    assert value(metrics, received, received + "_total", protocol="stomp") == 2
    assert value(metrics, received, received + "_total", protocol="amqp") == 4
    delivered = "polybroker_messages_delivered"
    assert value(metrics, delivered, delivered + "_total", protocol="mqtt") == 4
    assert value(metrics, delivered, delivered + "_total", protocol="amqp") == 6
    mqtt_url, stomp_url, amqp_url = (lc.url for lc in running.listeners)
    opened, closed = "polybroker_connections_opened", "polybroker_connections_closed"
    assert value(metrics, opened, opened + "_total", protocol="mqtt", listener=mqtt_url) == 2
    assert value(metrics, opened, opened + "_total", protocol="stomp", listener=stomp_url) == 1
    assert value(metrics, opened, opened + "_total", protocol="amqp", listener=amqp_url) == 1
    for protocol, url, count in (("mqtt", mqtt_url, 2), ("stomp", stomp_url, 1),
                                 ("amqp", amqp_url, 1)):
        assert value(metrics, closed, closed + "_total", protocol=protocol, listener=url,
                     reason="client_disconnect") == count
        for direction in ("received", "sent"):
            name = f"polybroker_bytes_{direction}"
            assert value(metrics, name, name + "_total", protocol=protocol) > 0
    assert "polybroker_connections" not in metrics or not any(metrics["polybroker_connections"])
    assert value(metrics, "polybroker_retained_messages") == 1
    assert value(metrics, "polybroker_retained_bytes") == 1
    assert value(metrics, "polybroker_queue_messages_ready", queue="work") == 0
    for counter, count in (("published", 6), ("delivered", 6), ("acknowledged", 0)):
        name = f"polybroker_queue_messages_{counter}"  # 2 by stomp.py, 4 by pika; basic.get
        assert value(metrics, name, name + "_total", queue="work") == count
    assert value(metrics, "polybroker_sessions") == 0  # clean sessions end with their client
    # The store fsynced the retained message and the confirms: the histogram saw it.
    fsync = "polybroker_store_fsync_seconds"
    assert value(metrics, fsync, fsync + "_count") >= 1
    assert value(metrics, fsync, fsync + "_bucket", le="+Inf") == value(
        metrics, fsync, fsync + "_count")
    assert value(metrics, "polybroker_store_bytes") > 0


async def test_refused_logins_are_counted_by_protocol_and_reason(serve_config, auth_config):
    config = serve_config("mqtt://127.0.0.1:0", auth=auth_config({"u": "right"}, None,
                                                                 allow_anonymous=False))
    async with open_broker(config) as running:

        def bad_login(port: int) -> int:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bad")
            client.username_pw_set("u", "wrong")
            client.connect("127.0.0.1", port)
            codes: queue.Queue = queue.Queue()
            client.on_connect = lambda c, u, flags, reason, props: codes.put(reason.value)
            client.loop_start()
            try:
                return codes.get(timeout=WAIT)
            finally:
                client.loop_stop()

        assert await trio.to_thread.run_sync(bad_login, running.port("mqtt")) != 0
        metrics = scrape(running.broker)
    refused = "polybroker_logins_refused"
    assert value(metrics, refused, refused + "_total", protocol="mqtt",
                 reason="bad_credentials") == 1


def test_histogram_buckets_are_cumulative():
    histogram = Histogram((0.01, 0.1))
    for seconds in (0.005, 0.05, 0.05, 2.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [(0.01, 1), (0.1, 3), (float("inf"), 4)]
    assert histogram.count == 4 and round(histogram.sum, 3) == 2.105


def test_openmetrics_when_the_scraper_asks():
    body, content_type = exposition(Broker(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")

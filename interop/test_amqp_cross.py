"""AMQP meets MQTT and STOMP on one broker process: amq.topic shares the MQTT topic
space (``.`` for ``/``, ``*`` for ``+``), and an AMQP queue is the STOMP queue of the
same name. Real clients on every side: paho-mqtt, kombu, pika and stomp.py.
"""

import pika
import pytest
from kombu import Connection, Exchange, Producer

from .amqp_support import broker_url, pika_params, pump
from .brokerproc import BrokerProcess
from .clients import WAIT
from .test_paho_mqtt import PahoClient
from .test_stomp_py import StompPy


@pytest.fixture
def broker(polybroker_process):
    """The real ``polybroker serve`` with every protocol on free ports: the pytest fixture
    that ships with the package."""
    return polybroker_process


@pytest.fixture
def pika_connection(broker):
    connection = pika.BlockingConnection(pika_params(broker.amqp_port))
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def paho(broker):
    client = PahoClient(broker.mqtt_port, "cross-paho")
    client.connect()
    try:
        yield client
    finally:
        client.stop()


def test_mqtt_publish_reaches_queue_bound_to_amq_topic(pika_connection, paho):
    channel = pika_connection.channel()
    channel.queue_declare("sensor-readings")
    channel.queue_bind("sensor-readings", "amq.topic", "sensors.*")
    paho.publish("sensors/t1", b"21.5", qos=1)
    paho.publish("sensors/t1/raw", b"not matched", qos=1)
    paho.publish("sensors/t2", b"19.0", qos=0)
    got = []
    channel.basic_consume("sensor-readings",
                          lambda ch, method, props, body: got.append((method, props, body)),
                          auto_ack=True)
    pump(pika_connection, lambda: len(got) >= 2)
    (first, props1, body1), (second, props2, body2) = got
    assert (first.exchange, first.routing_key, body1) == ("amq.topic", "sensors.t1", b"21.5")
    assert props1.delivery_mode == 2  # QoS 1
    assert (second.routing_key, body2, props2.delivery_mode) == ("sensors.t2", b"19.0", 1)


def test_kombu_publish_to_amq_topic_reaches_mqtt_subscriber(broker, paho):
    paho.subscribe(("cmd/dev1", 1))
    with Connection(broker_url(broker.amqp_port), connect_timeout=WAIT) as connection:
        producer = Producer(connection)
        producer.publish(b"reboot", exchange=Exchange("amq.topic", "topic", passive=True),
                         routing_key="cmd.dev1", content_type="application/octet-stream",
                         content_encoding="binary", delivery_mode=2)
        producer.publish(b"other", exchange="amq.topic", routing_key="cmd.dev2",
                         content_type="application/octet-stream", content_encoding="binary")
    message = paho.next_message()
    assert (message.topic, message.payload, message.qos) == ("cmd/dev1", b"reboot", 1)


def test_stomp_send_to_queue_is_consumed_by_pika(broker, pika_connection):
    channel = pika_connection.channel()
    channel.queue_declare("jobs", durable=True)
    stomp_client = StompPy(broker.stomp_port)
    try:
        stomp_client.send("/queue/jobs", "job-1", content_type="text/plain", priority_hint="hi")
    finally:
        stomp_client.stop()
    got = []
    channel.basic_consume("jobs", lambda ch, method, props, body: got.append(
        (method, props, body)))
    pump(pika_connection, lambda: got)
    method, properties, body = got[0]
    assert body == b"job-1"
    assert (method.exchange, method.routing_key) == ("", "jobs")
    assert properties.content_type == "text/plain"
    assert properties.headers.get("priority-hint") == "hi"
    channel.basic_ack(method.delivery_tag)


def test_pika_publish_to_queue_reaches_stomp_subscriber(broker, pika_connection):
    channel = pika_connection.channel()
    channel.queue_declare("orders")
    stomp_client = StompPy(broker.stomp_port)
    try:
        stomp_client.subscribe("/queue/orders")
        channel.basic_publish("", "orders", b"order-7", pika.BasicProperties(
            content_type="text/plain", headers={"region": "eu", "count": 3}))
        frame = stomp_client.next_message()
        assert frame.body == "order-7"
        assert frame.headers["content-type"].startswith("text/plain")
        assert frame.headers["region"] == "eu"
        assert "count" not in frame.headers  # only string headers cross
    finally:
        stomp_client.stop()


def test_auto_listener_recognises_amqp(tmp_path):
    proc = BrokerProcess(tmp_path / "data", listen=("auto://127.0.0.1:0",))
    try:
        connection = pika.BlockingConnection(pika_params(proc.port_of("auto")))
        try:
            channel = connection.channel()
            channel.queue_declare("sniffed")
            channel.basic_publish("", "sniffed", b"over auto")
            assert channel.basic_get("sniffed", auto_ack=True)[2] == b"over auto"
        finally:
            connection.close()
        proc.wait_for_log(r"detected as amqp|connected \(AMQP 0-9-1")
    finally:
        proc.stop()

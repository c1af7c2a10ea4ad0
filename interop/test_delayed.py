"""Delayed delivery with real clients against a real ``polybroker serve`` process:
mosquitto_pub with ``$delayed/2/a/b``, paho (MQTT 5.0) with its properties, stomp.py with
``AMQ_SCHEDULED_DELAY``, pika with an ``x-delayed-message`` exchange, and pending delayed
messages surviving SIGKILL of the broker.

Timing: a delayed message must never arrive before its delay has passed since its
publisher started (measured from before the publish, so the bound is strict), and
arrives within ``TOLERANCE`` seconds after it (publisher round trip, the broker's timer,
delivery, the subscriber's output). Every wait is bounded and waits on a client's
output, a callback or a broker log line.
"""

import queue
import signal
import time

import pika
import pytest
import stomp

from .amqp_support import pika_params, pump
from .brokerproc import BrokerProcess
from .clients import WAIT
from .test_mosquitto_clients import MosquittoClients
from .test_paho_mqtt5 import PahoClient5

TOLERANCE = 1.0  # seconds a delayed message may arrive after it is due
LISTEN = ("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0", "amqp://127.0.0.1:0")


@pytest.fixture
def broker(tmp_path):
    proc = BrokerProcess(tmp_path / "data", listen=LISTEN)
    try:
        yield proc
    finally:
        proc.stop()


def test_mosquitto_pub_delayed_2_arrives_after_2_seconds_and_not_before(broker):
    cli = MosquittoClients(broker.port)
    with cli.sub("-t", "a/b", "-q", "1", "-C", "1", "-W", str(WAIT), "-F", "got %t %p") as sub:
        sub.wait_for_line("received SUBACK")
        sent = time.monotonic()
        cli.pub("-t", "$delayed/2/a/b", "-m", "later", "-q", "1")
        with pytest.raises(AssertionError, match="no line matching"):  # not before 2 s
            sub.wait_for_line(r"^got a/b later$", timeout=sent + 1.95 - time.monotonic())
        sub.wait_for_line(r"^got a/b later$")
        arrived = time.monotonic()
        assert sub.finish() == 0
    assert 2.0 <= arrived - sent <= 2.0 + TOLERANCE


def test_paho5_delayed_message_keeps_retain_and_properties(broker):
    sub = PahoClient5(broker.port, "sub")
    pub = PahoClient5(broker.port, "pub")
    try:
        sub.connect()
        assert sub.subscribe("dev/1/cmd", 1) == 1
        pub.connect()
        sent = time.monotonic()
        assert pub.publish(
            "$delayed/1/dev/1/cmd", b"go", 1, retain=True, ContentType="text/plain",
            ResponseTopic="dev/1/reply", CorrelationData=b"42", UserProperty=[("k", "v")],
            PayloadFormatIndicator=1, MessageExpiryInterval=600,
        ) == 0
        got = sub.next_message()
        waited = time.monotonic() - sent
        assert 1.0 <= waited <= 1.0 + TOLERANCE
        assert (got.topic, got.payload, got.qos) == ("dev/1/cmd", b"go", 1)
        props = got.props
        assert (props["ContentType"], props["ResponseTopic"], props["CorrelationData"],
                props["UserProperty"], props["PayloadFormatIndicator"]) == (
            "text/plain", "dev/1/reply", b"42", [("k", "v")], 1)
        # The expiry counts from the publish (as EMQX): a second of it is gone.
        assert 590 <= props["MessageExpiryInterval"] <= 599
        late = PahoClient5(broker.port, "late")
        try:
            late.connect()
            late.subscribe("dev/1/cmd", 1)
            retained = late.next_message()
            assert (retained.topic, retained.payload, retained.retain) == (
                "dev/1/cmd", b"go", True)
        finally:
            late.stop()
    finally:
        sub.stop()
        pub.stop()


class Messages(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.frames: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()

    def on_message(self, frame) -> None:
        self.frames.put((time.monotonic(), frame))

    def on_receipt(self, frame) -> None:
        self.receipts.put(frame.headers["receipt-id"])


def test_stomp_py_amq_scheduled_delay(broker):
    conn = stomp.Connection12([("127.0.0.1", broker.stomp_port)], reconnect_attempts_max=1)
    listener = Messages()
    conn.set_listener("messages", listener)
    conn.connect(wait=True)
    try:
        conn.subscribe("/queue/jobs", id="1", ack="auto", headers={"receipt": "sub"})
        assert listener.receipts.get(timeout=WAIT) == "sub"
        sent = time.monotonic()
        conn.send("/queue/jobs", "in 1.5 s", headers={"AMQ_SCHEDULED_DELAY": "1500",
                                                       "receipt": "sent"})
        assert listener.receipts.get(timeout=WAIT) == "sent"
        conn.send("/queue/jobs", "now", headers={"receipt": "now"})
        arrived, frame = listener.frames.get(timeout=WAIT)
        assert frame.body == "now"
        arrived, frame = listener.frames.get(timeout=WAIT)
        assert frame.body == "in 1.5 s"
        assert frame.headers["AMQ_SCHEDULED_DELAY"] == "1500"
        assert 1.5 <= arrived - sent <= 1.5 + TOLERANCE
    finally:
        conn.disconnect()


def test_pika_x_delayed_message_exchange(broker):
    connection = pika.BlockingConnection(pika_params(broker.amqp_port))
    try:
        channel = connection.channel()
        channel.exchange_declare("later", "x-delayed-message",
                                 arguments={"x-delayed-type": "direct"})
        channel.queue_declare("jobs")
        channel.queue_bind("jobs", "later", "job")
        channel.confirm_delivery()
        got: list[tuple[float, bytes, dict]] = []
        channel.basic_consume("jobs", lambda ch, method, props, body: got.append(
            (time.monotonic(), body, props.headers)), auto_ack=True)
        sent = time.monotonic()
        channel.basic_publish("later", "job", b"in 1.5 s",
                              pika.BasicProperties(headers={"x-delay": 1500}))
        channel.basic_publish("later", "job", b"now")
        pump(connection, lambda: len(got) == 2)
        assert [body for _, body, _ in got] == [b"now", b"in 1.5 s"]
        assert got[1][2] == {"x-delay": 1500}
        assert 1.5 <= got[1][0] - sent <= 1.5 + TOLERANCE
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-delayed-type"):
            channel.exchange_declare("bad", "x-delayed-message")
    finally:
        connection.close()


def test_delayed_messages_survive_sigkill(tmp_path):
    data = tmp_path / "data"
    first = BrokerProcess(data, listen=LISTEN)
    keeper = PahoClient5(first.port, "keeper")
    try:
        keeper.connect(clean_start=False, SessionExpiryInterval=3600)
        keeper.subscribe("k/#", 1)
        keeper.disconnect()
        pub = PahoClient5(first.port, "pub")
        pub.connect()
        sent = time.monotonic()
        # Acknowledged only once their records are on disk.
        assert pub.publish("$delayed/3/k/second", b"2", 1) == 0
        assert pub.publish("$delayed/2/k/first", b"1", 1) == 0
        pub.stop()
    finally:
        keeper.stop()
        first.stop(signal.SIGKILL)
    second = BrokerProcess(data, listen=LISTEN)
    try:
        (restored,) = [line for line in second.lines if "storage: restored" in line]
        assert "2 delayed messages" in restored
        keeper = PahoClient5(second.port, "keeper")
        try:
            keeper.connect(clean_start=False, SessionExpiryInterval=3600)
            assert keeper.session_present
            first_msg, second_msg = keeper.receive(2)
            assert time.monotonic() - sent >= 3.0
            assert [(m.topic, m.payload) for m in (first_msg, second_msg)] == [
                ("k/first", b"1"), ("k/second", b"2")]
        finally:
            keeper.stop()
    finally:
        second.stop()

"""``limits.queue_overflow`` against real clients: what a publisher is told when the backlog
its message goes to is full.

The full backlog is a persistent MQTT session whose client is away (bounded by
``storage.max_stored_messages_per_session``, 3 here) or a named queue
(``max_queue_length``, 2 here). Publishers: paho-mqtt 3.1.1 and 5.0, stomp.py, pika.
Every wait is bounded; the checks that something does *not* happen (an acknowledgement
withheld) wait a short while for it on purpose.
"""

import queue
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
import pytest
import stomp
from paho.mqtt.client import CallbackAPIVersion, MQTTv5, MQTTv311

from .amqp_support import pika_params
from .brokerproc import BrokerProcess
from .clients import WAIT

QUOTA_EXCEEDED = 0x97
STORED = 3  # storage.max_stored_messages_per_session in these tests
QUEUE_LENGTH = 2  # limits.max_queue_length
WITHHELD = 1.0  # seconds a withheld acknowledgement is watched for (a deliberate wait)


def start(tmp_path: Path, policy: str, max_block_time: float = 30) -> BrokerProcess:
    config = tmp_path / "polybroker.toml"
    config.write_text(
        f'[limits]\nqueue_overflow = "{policy}"\nmax_block_time = {max_block_time}\n'
        f"max_queue_length = {QUEUE_LENGTH}\n"
        f"[storage]\nmax_stored_messages_per_session = {STORED}\n"
    )
    return BrokerProcess(tmp_path / "data", "--config", str(config),
                         listen=("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0",
                                 "amqp://127.0.0.1:0"))


@pytest.fixture(params=["block", "drop-new", "drop-oldest"])
def policy(request) -> str:
    return request.param


@pytest.fixture
def started(tmp_path):
    brokers: list[BrokerProcess] = []

    def make(policy: str, **options) -> BrokerProcess:
        brokers.append(start(tmp_path, policy, **options))
        return brokers[-1]

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


def _get(source: queue.Queue, what: str, timeout: float = WAIT):
    try:
        return source.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout}s") from None


def _nothing(source: queue.Queue, within: float = WITHHELD) -> bool:
    try:
        got = source.get(timeout=within)  # ok: watching for what must not come
    except queue.Empty:
        return True
    raise AssertionError(f"unexpected {got}")


# -- MQTT (paho) --------------------------------------------------------------------------------


class Paho:
    """One paho client on its own network thread; acknowledgements and messages queued."""

    def __init__(self, port: int, client_id: str, protocol: int, clean: bool = True) -> None:
        kwargs = {"clean_session": clean} if protocol != MQTTv5 else {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, reconnect_on_failure=False, **kwargs)
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()  # (mid, reason code)
        self.messages: queue.Queue[bytes] = queue.Queue()
        self.events: queue.Queue[str] = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.events.put("connected")
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.events.put("subscribed")
        self.client.on_publish = lambda c, u, mid, rc, props: self.acks.put((mid, rc.value))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg.payload)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert _get(self.events, "CONNACK") == "connected"

    def publish_all(self, count: int) -> None:
        for i in range(1, count + 1):
            self.client.publish("overflow/t", b"%d" % i, qos=1)

    def acks_of(self, count: int) -> list[int]:
        """The reason codes of the next ``count`` acknowledgements, in publish order."""
        return [code for _, code in sorted(_get(self.acks, "PUBACK") for _ in range(count))]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def park_subscriber(broker: BrokerProcess) -> None:
    """A persistent session subscribed to ``overflow/t`` at QoS 1, its client gone."""
    sub = Paho(broker.port, "parked", MQTTv311, clean=False)
    sub.client.subscribe("overflow/t", qos=1)
    assert _get(sub.events, "SUBACK") == "subscribed"
    sub.close()
    broker.wait_for_log(r"client parked \(.*\) disconnected: client disconnect")


def come_back(broker: BrokerProcess) -> Paho:
    return Paho(broker.port, "parked", MQTTv311, clean=False)


@pytest.mark.parametrize("protocol", [MQTTv311, MQTTv5], ids=["3.1.1", "5.0"])
def test_paho_publisher_is_told_what_its_policy_says(started, policy, protocol):
    broker = started(policy)
    park_subscriber(broker)
    pub = Paho(broker.port, "pub", protocol)
    try:
        pub.publish_all(5)
        if policy == "block":
            # The third fills the session: its PUBACK and the later ones wait for room.
            assert pub.acks_of(2) == [0, 0]
            assert _nothing(pub.acks)
            sub = come_back(broker)
            got = [_get(sub.messages, "message") for _ in range(5)]
            assert got == [b"1", b"2", b"3", b"4", b"5"]
            assert pub.acks_of(3) == [0, 0, 0]
        elif policy == "drop-new":
            codes = pub.acks_of(5)
            # 5.0 is told the last two reached nobody; 3.1.1 cannot be told.
            assert codes == [0, 0, 0] + [QUOTA_EXCEEDED if protocol == MQTTv5 else 0] * 2
            broker.wait_for_log(r"client parked: message dropped \(stored-bound")
            sub = come_back(broker)
            assert [_get(sub.messages, "message") for _ in range(3)] == [b"1", b"2", b"3"]
        else:  # drop-oldest: every message was taken; the oldest made room
            assert pub.acks_of(5) == [0] * 5
            broker.wait_for_log(r"client parked: message dropped \(drop-oldest")
            sub = come_back(broker)
            assert [_get(sub.messages, "message") for _ in range(3)] == [b"3", b"4", b"5"]
        assert _nothing(sub.messages)
        sub.close()
    finally:
        pub.close()


def test_paho_publisher_held_back_past_max_block_time_is_acknowledged_and_logged(started):
    broker = started("block", max_block_time=1)
    park_subscriber(broker)
    pub = Paho(broker.port, "pub", MQTTv5)
    try:
        pub.publish_all(5)
        codes = pub.acks_of(5)  # all of them come, the held ones after max_block_time
        assert codes[:3] == [0, 0, 0] and set(codes[3:]) <= {0, QUOTA_EXCEEDED}
        broker.wait_for_log(r"client pub \(.*\): held back 1s by full queues "
                            r"\(Session\('parked'\)\)")
        sub = come_back(broker)
        taken = 3 + codes[3:].count(0)
        assert [_get(sub.messages, "message") for _ in range(taken)] == [
            b"%d" % i for i in range(1, taken + 1)]
        sub.close()
    finally:
        pub.close()


# -- STOMP (stomp.py) ---------------------------------------------------------------------------


class Recorder(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.receipts: queue.Queue[str] = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()

    def on_receipt(self, frame) -> None:
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame) -> None:
        self.errors.put(frame)

    def on_message(self, frame) -> None:
        self.messages.put(frame.body)

    def on_disconnected(self) -> None:
        self.disconnected.set()


def stomp_client(broker: BrokerProcess) -> tuple[stomp.Connection12, Recorder]:
    conn = stomp.Connection12([("127.0.0.1", broker.stomp_port)], reconnect_attempts_max=1)
    recorder = Recorder()
    conn.set_listener("recorder", recorder)
    conn.connect(wait=True)
    return conn, recorder


def test_stomp_py_send_with_receipt(started, policy):
    broker = started(policy)
    conn, recorder = stomp_client(broker)
    try:
        for i in range(1, 4):  # the queue holds 2
            conn.send("/queue/overflow", f"m{i}", receipt=f"r{i}")
        if policy == "block":
            assert [_get(recorder.receipts, "RECEIPT") for _ in range(1)] == ["r1"]
            assert _nothing(recorder.receipts)  # r2 filled the queue: r2, r3 wait
            worker, work = stomp_client(broker)
            worker.subscribe("/queue/overflow", id="w", ack="auto")
            assert [_get(work.messages, "MESSAGE") for _ in range(3)] == ["m1", "m2", "m3"]
            assert [_get(recorder.receipts, "RECEIPT") for _ in range(2)] == ["r2", "r3"]
            worker.disconnect()
        elif policy == "drop-new":
            assert [_get(recorder.receipts, "RECEIPT") for _ in range(2)] == ["r1", "r2"]
            error = _get(recorder.errors, "ERROR")
            assert error.headers["receipt-id"] == "r3"
            assert error.headers["message"] == "message to /queue/overflow dropped: queue full"
            assert recorder.disconnected.wait(WAIT)  # the broker closes after an ERROR
        else:  # drop-oldest: taken, the oldest made room
            assert [_get(recorder.receipts, "RECEIPT") for _ in range(3)] == ["r1", "r2", "r3"]
            worker, work = stomp_client(broker)
            worker.subscribe("/queue/overflow", id="w", ack="auto")
            assert [_get(work.messages, "MESSAGE") for _ in range(2)] == ["m2", "m3"]
            worker.disconnect()
    finally:
        if conn.is_connected():
            conn.disconnect()


# -- AMQP (pika) --------------------------------------------------------------------------------


def test_pika_confirm_nack_under_drop_new(started):
    broker = started("drop-new")
    connection = pika.BlockingConnection(pika_params(broker.amqp_port))
    try:
        channel = connection.channel()
        channel.queue_declare("overflow")
        channel.confirm_delivery()
        channel.basic_publish("", "overflow", b"1")
        channel.basic_publish("", "overflow", b"2")
        with pytest.raises(pika.exceptions.NackError):
            channel.basic_publish("", "overflow", b"3")
        # The same for a message to MQTT sessions that are all full (through amq.topic).
        park_subscriber(broker)
        persistent = pika.BasicProperties(delivery_mode=2)  # QoS 1 in the topic space
        for i in range(STORED):
            channel.basic_publish("amq.topic", "overflow.t", b"%d" % i, persistent)
        with pytest.raises(pika.exceptions.NackError):
            channel.basic_publish("amq.topic", "overflow.t", b"more", persistent)
    finally:
        connection.close()


def test_pika_confirm_ack_under_drop_oldest_and_the_oldest_goes(started):
    broker = started("drop-oldest")
    connection = pika.BlockingConnection(pika_params(broker.amqp_port))
    try:
        channel = connection.channel()
        channel.queue_declare("overflow")
        channel.confirm_delivery()
        for body in (b"1", b"2", b"3"):  # each returns once acknowledged (no NackError)
            channel.basic_publish("", "overflow", body)
        kept = []
        while (got := channel.basic_get("overflow", auto_ack=True))[0] is not None:
            kept.append(got[2])
        assert kept == [b"2", b"3"]  # the oldest made room for the newest
    finally:
        connection.close()


def test_pika_confirm_withheld_under_block_until_the_consumer_drains(started):
    broker = started("block")
    confirmed: queue.Queue[bytes] = queue.Queue()
    failed: list[BaseException] = []

    def publisher() -> None:
        connection = pika.BlockingConnection(pika_params(broker.amqp_port))
        try:
            channel = connection.channel()
            channel.queue_declare("overflow")
            channel.confirm_delivery()
            for body in (b"1", b"2", b"3"):
                channel.basic_publish("", "overflow", body)  # returns once confirmed
                confirmed.put(body)
        except BaseException as exc:  # reported to the test below
            failed.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    try:
        assert _get(confirmed, "confirm") == b"1"
        assert _nothing(confirmed)  # 2 filled the queue: its confirm waits
        connection = pika.BlockingConnection(pika_params(broker.amqp_port))
        try:
            channel = connection.channel()
            got = []
            for method, _, body in channel.consume("overflow", auto_ack=True,
                                                   inactivity_timeout=WAIT):
                assert method is not None, "no delivery"
                got.append(body)
                if len(got) == 3:
                    break
            assert got == [b"1", b"2", b"3"]
            assert [_get(confirmed, "confirm") for _ in range(2)] == [b"2", b"3"]
        finally:
            connection.close()
    finally:
        thread.join(WAIT)
    assert not failed, failed

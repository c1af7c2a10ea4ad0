"""stomp.py (STOMP 1.0, 1.1, 1.2) and paho-mqtt against a real ``polybroker serve`` process.

Every wait is bounded and on something a client reports: a listener callback turned
into a queue or event, a RECEIPT (a frame with a receipt is a barrier: whatever the
broker sent that connection before it has arrived), or a broker log line. Nothing
sleeps. The broker listens on 127.0.0.1 only and is stopped after each test.
"""

import itertools
import queue
import re
import socket
import threading
import time

import pytest
import stomp

from .brokerproc import BrokerProcess
from .clients import WAIT
from .test_paho_mqtt import PahoClient

HEART_BEAT = 0.5  # seconds: the broker's heart-beat offer (both ways) in these tests
VERSIONS = ("1.0", "1.1", "1.2")
CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


class Recorder(stomp.ConnectionListener):
    """Turns stomp.py's callbacks (on its receiver thread) into queues and events."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected_frame = None
        self.disconnected = threading.Event()
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue[str] = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.heart_beats: queue.Queue[float] = queue.Queue()
        self.heart_beat_timeouts = 0

    def on_connected(self, frame) -> None:
        self.connected_frame = frame
        self.connected.set()

    def on_message(self, frame) -> None:
        self.messages.put(frame)

    def on_receipt(self, frame) -> None:
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame) -> None:
        self.errors.put(frame)

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def on_heartbeat(self) -> None:
        self.heart_beats.put(time.monotonic())

    def on_heartbeat_timeout(self) -> None:
        self.heart_beat_timeouts += 1


def _get(source: queue.Queue, what: str, timeout: float = WAIT):
    try:
        return source.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout}s") from None


def _names(headers: dict[str, str]) -> dict[str, str]:
    """Keyword arguments to header names: ``content_type`` is ``content-type``."""
    return {name.replace("_", "-"): value for name, value in headers.items()}


class StompPy:
    """One stomp.py connection; each action waits for the broker's RECEIPT."""

    def __init__(self, port: int, version: str = "1.2", heartbeats=(0, 0), **connect) -> None:
        self.version = version
        # stomp.py drops a broker silent for 1.5 times the interval; allow 2 under load.
        options = ({} if version == "1.0"
                   else {"heartbeats": heartbeats, "heart_beat_receive_scale": 2.0})
        self.conn = CONNECTIONS[version](
            [("127.0.0.1", port)], reconnect_attempts_max=1, **options
        )
        self.listener = Recorder()
        self.conn.set_listener("recorder", self.listener)
        self._ids = itertools.count()
        self.conn.connect(wait=True, **connect)
        assert self.listener.connected.wait(WAIT), "no CONNECTED"

    def _receipt(self) -> str:
        return f"{self.version}-{next(self._ids)}"

    def wait_receipt(self, receipt: str) -> None:
        while (got := _get(self.listener.receipts, f"RECEIPT {receipt}")) != receipt:
            assert got.startswith(self.version), got

    def subscribe(self, destination: str, sub_id: str = "0", ack: str = "auto",
                  **headers: str) -> None:
        receipt = self._receipt()
        self.conn.subscribe(destination=destination, id=sub_id, ack=ack,
                            headers={**_names(headers), "receipt": receipt})
        self.wait_receipt(receipt)

    def unsubscribe(self, sub_id: str) -> None:
        receipt = self._receipt()
        if self.version == "1.0":
            self.conn.unsubscribe(id=sub_id, headers={"receipt": receipt})
        else:
            self.conn.unsubscribe(sub_id, headers={"receipt": receipt})
        self.wait_receipt(receipt)

    def send(self, destination: str, body: str, **headers: str) -> None:
        receipt = self._receipt()
        self.conn.send(destination, body, headers={**_names(headers), "receipt": receipt})
        self.wait_receipt(receipt)

    def settle(self, frame, positive: bool = True, transaction: str | None = None) -> None:
        """ACK (or NACK) ``frame`` the way this version says."""
        receipt = self._receipt()
        method = self.conn.ack if positive else self.conn.nack
        headers = frame.headers
        if self.version == "1.2":
            method(headers["ack"], transaction=transaction, receipt=receipt)
        elif self.version == "1.1":
            method(headers["message-id"], headers["subscription"], transaction=transaction,
                   receipt=receipt)
        else:
            method(headers["message-id"], transaction=transaction, receipt=receipt)
        self.wait_receipt(receipt)

    def begin(self) -> str:
        receipt = self._receipt()
        transaction = self.conn.begin(receipt=receipt)
        self.wait_receipt(receipt)
        return transaction

    def end(self, transaction: str, commit: bool) -> None:
        receipt = self._receipt()
        (self.conn.commit if commit else self.conn.abort)(transaction, receipt=receipt)
        self.wait_receipt(receipt)

    def next_message(self, timeout: float = WAIT):
        return _get(self.listener.messages, "MESSAGE", timeout)

    def messages_until_idle(self) -> list:
        """Everything the broker has sent us so far: a receipt round trip, then drain."""
        transaction = self.begin()
        self.end(transaction, commit=False)
        frames = []
        while not self.listener.messages.empty():
            frames.append(self.listener.messages.get_nowait())
        return frames

    def disconnect(self) -> None:
        """DISCONNECT with a receipt, waiting for stomp.py to see the connection end."""
        self.conn.disconnect(receipt=self._receipt())
        assert self.listener.disconnected.wait(WAIT), "not disconnected"

    def stop(self) -> None:
        try:
            if self.conn.is_connected():
                self.disconnect()
        finally:
            self.conn.transport.stop()


@pytest.fixture
def broker(tmp_path):
    config = tmp_path / "stomp.toml"
    config.write_text(
        f"[stomp]\nheart_beat_send = {HEART_BEAT}\nheart_beat_receive = {HEART_BEAT}\n"
    )
    proc = BrokerProcess(tmp_path / "data", "--listen", "stomp://127.0.0.1:0",
                         "--config", str(config))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def stomp_client(broker):
    made: list[StompPy] = []

    def make(version: str = "1.2", **kwargs) -> StompPy:
        client = StompPy(broker.stomp_port, version, **kwargs)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.stop()


@pytest.fixture
def paho_client(broker):
    made: list[PahoClient] = []

    def make(client_id: str) -> PahoClient:
        client = PahoClient(broker.port, client_id)
        made.append(client)
        client.connect()
        return client

    try:
        yield make
    finally:
        for client in made:
            client.stop()


def bodies(frames) -> list[str]:
    return [frame.body for frame in frames]


# -- connecting --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_connect_negotiates_each_version(stomp_client, version):
    client = stomp_client(version)
    headers = client.listener.connected_frame.headers
    assert headers.get("version") == (None if version == "1.0" else version)
    assert headers["server"].startswith("polybroker/")
    assert headers["session"]


def test_connect_with_login_and_passcode(stomp_client, broker):
    stomp_client("1.2", username="alice", passcode="secret")
    broker.wait_for_log(r"connected \(STOMP 1\.2, login alice")


# -- topics and queues -------------------------------------------------------------------


def test_topic_fan_out_to_every_version(stomp_client):
    subscribers = [stomp_client(version) for version in VERSIONS]
    for sub in subscribers:
        sub.subscribe("/topic/news")
    publisher = stomp_client("1.2")
    publisher.send("/topic/news", "extra", content_type="text/plain", edition="morning")
    for sub in subscribers:
        frame = sub.next_message()
        assert frame.body == "extra"
        assert frame.headers["destination"] == "/topic/news"
        assert frame.headers["content-type"] == "text/plain"
        assert frame.headers["edition"] == "morning"
        assert frame.headers["subscription"] == "0"
        assert frame.headers["message-id"]
        assert sub.messages_until_idle() == []


def test_topic_wildcard_subscription(stomp_client):
    sub = stomp_client("1.2")
    sub.subscribe("/topic/sensors/+/temp", "plus")
    sub.subscribe("/topic/sensors/#", "hash")
    pub = stomp_client("1.1")
    pub.send("/topic/sensors/t1/temp", "21")
    pub.send("/topic/sensors/t1/hum", "40")
    got = sorted((f.headers["subscription"], f.headers["destination"], f.body)
                 for f in [sub.next_message() for _ in range(3)])
    assert got == [
        ("hash", "/topic/sensors/t1/hum", "40"),
        ("hash", "/topic/sensors/t1/temp", "21"),
        ("plus", "/topic/sensors/t1/temp", "21"),
    ]


def test_queue_keeps_messages_sent_before_any_consumer(stomp_client):
    pub = stomp_client("1.2")
    for i in range(3):
        pub.send("/queue/backlog", f"job {i}")
    consumer = stomp_client("1.0")
    consumer.subscribe("/queue/backlog")
    assert bodies([consumer.next_message() for _ in range(3)]) == ["job 0", "job 1", "job 2"]


def test_queue_competing_consumers_each_message_once(stomp_client):
    workers = [stomp_client("1.1"), stomp_client("1.2")]
    for worker in workers:
        worker.subscribe("/queue/jobs")
    pub = stomp_client("1.2")
    for i in range(10):
        pub.send("/queue/jobs", str(i))
    got = [bodies(worker.messages_until_idle()) for worker in workers]
    assert got == [["0", "2", "4", "6", "8"], ["1", "3", "5", "7", "9"]]


# -- acknowledgements --------------------------------------------------------------------


def fill(client: StompPy, destination: str, count: int) -> None:
    for i in range(count):
        client.send(destination, str(i))


@pytest.mark.parametrize("version", VERSIONS)
def test_ack_auto_settles_on_delivery(stomp_client, version):
    consumer = stomp_client(version)
    consumer.subscribe("/queue/q", ack="auto")
    fill(consumer, "/queue/q", 2)
    assert bodies(consumer.messages_until_idle()) == ["0", "1"]
    consumer.disconnect()
    other = stomp_client("1.2")
    other.subscribe("/queue/q")
    other.send("/queue/q", "marker")
    assert other.next_message().body == "marker"  # nothing came back


@pytest.mark.parametrize("version", VERSIONS)
def test_ack_client_is_cumulative(stomp_client, version):
    consumer = stomp_client(version)
    consumer.subscribe("/queue/q", ack="client")
    fill(consumer, "/queue/q", 3)
    frames = consumer.messages_until_idle()
    if version == "1.2":
        assert all(frame.headers["ack"] for frame in frames)
    consumer.settle(frames[1])  # 0 and 1
    consumer.disconnect()  # 2 was never acknowledged
    other = stomp_client("1.2")
    other.subscribe("/queue/q")
    frame = other.next_message()
    assert (frame.body, frame.headers.get("redelivered")) == ("2", "true")
    other.send("/queue/q", "marker")
    assert other.next_message().body == "marker"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_ack_client_individual_acks_only_that_message(stomp_client, version):
    consumer = stomp_client(version)
    consumer.subscribe("/queue/q", ack="client-individual")
    fill(consumer, "/queue/q", 3)
    frames = consumer.messages_until_idle()
    consumer.settle(frames[1])
    consumer.disconnect()
    other = stomp_client("1.2")
    other.subscribe("/queue/q")
    got = [other.next_message() for _ in range(2)]
    assert [(f.body, f.headers.get("redelivered")) for f in got] == [
        ("0", "true"), ("2", "true"),
    ]


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_redelivers_to_another_consumer(stomp_client, version):
    a, b = stomp_client(version), stomp_client(version)
    a.subscribe("/queue/q", ack="client-individual")
    b.subscribe("/queue/q", ack="client-individual")
    a.send("/queue/q", "retry me")
    held = {name: c.messages_until_idle() for name, c in (("a", a), ("b", b))}
    holder, other = (a, b) if held["a"] else (b, a)
    [frame] = held["a"] or held["b"]
    holder.settle(frame, positive=False)
    again = other.next_message()
    assert (again.body, again.headers.get("redelivered")) == ("retry me", "true")
    other.settle(again)
    assert holder.messages_until_idle() == []


def test_prefetch_count_limits_unacknowledged_messages(stomp_client):
    consumer = stomp_client("1.2")
    consumer.subscribe("/queue/q", ack="client-individual", **{"prefetch-count": "1"})
    fill(consumer, "/queue/q", 3)
    [first] = consumer.messages_until_idle()
    consumer.settle(first)
    [second] = consumer.messages_until_idle()
    assert (first.body, second.body) == ("0", "1")


def test_unsubscribe_stops_deliveries(stomp_client):
    client = stomp_client("1.1")
    client.subscribe("/topic/t", "s")
    client.unsubscribe("s")
    client.send("/topic/t", "after")
    assert client.messages_until_idle() == []


# -- transactions ------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_transaction_sends_are_delivered_at_commit_only(stomp_client, version):
    sub = stomp_client("1.2")
    sub.subscribe("/topic/t")
    pub = stomp_client(version)
    transaction = pub.begin()
    pub.send("/topic/t", "in 1", transaction=transaction)
    pub.send("/topic/t", "in 2", transaction=transaction)
    pub.send("/topic/t", "outside")
    assert bodies(sub.messages_until_idle()) == ["outside"]
    pub.end(transaction, commit=True)
    assert bodies([sub.next_message(), sub.next_message()]) == ["in 1", "in 2"]
    aborted = pub.begin()
    pub.send("/topic/t", "never", transaction=aborted)
    pub.end(aborted, commit=False)
    pub.send("/topic/t", "marker")
    assert sub.next_message().body == "marker"


def test_transaction_covers_acks(stomp_client):
    consumer = stomp_client("1.2")
    consumer.subscribe("/queue/q", ack="client-individual")
    fill(consumer, "/queue/q", 2)
    first, second = consumer.messages_until_idle()
    aborted = consumer.begin()
    consumer.settle(first, transaction=aborted)
    consumer.end(aborted, commit=False)  # first stays unacknowledged
    committed = consumer.begin()
    consumer.settle(second, transaction=committed)
    consumer.end(committed, commit=True)
    consumer.disconnect()
    other = stomp_client("1.2")
    other.subscribe("/queue/q")
    frame = other.next_message()
    assert (frame.body, frame.headers.get("redelivered")) == ("0", "true")
    other.send("/queue/q", "marker")
    assert other.next_message().body == "marker"


# -- receipts, errors, disconnect ---------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_receipts_for_each_frame_and_disconnect(stomp_client, version):
    client = stomp_client(version)
    client.subscribe("/queue/r", "s", ack="client")  # each of these waits for its RECEIPT
    client.send("/queue/r", "x")
    client.settle(client.next_message())
    client.end(client.begin(), commit=True)
    client.unsubscribe("s")
    client.conn.disconnect(receipt="bye")
    assert client.listener.disconnected.wait(WAIT)
    assert "bye" in list(client.listener.receipts.queue)


def test_error_frame_for_a_bad_destination_then_close(stomp_client, broker):
    client = stomp_client("1.2")
    client.conn.send("/exchange/nowhere", "x", headers={"receipt": "bad-1"})
    error = _get(client.listener.errors, "ERROR")
    assert "unknown destination" in error.headers["message"]
    assert error.headers["receipt-id"] == "bad-1"
    assert client.listener.disconnected.wait(WAIT)
    broker.wait_for_log(r"error: SEND: unknown destination")


def test_error_frame_for_an_unknown_ack(stomp_client):
    client = stomp_client("1.1")
    client.conn.ack("no-such-message", "0")
    error = _get(client.listener.errors, "ERROR")
    assert "no such message" in error.headers["message"]
    assert client.listener.disconnected.wait(WAIT)


def test_shutdown_tells_stomp_clients_and_closes(stomp_client, broker):
    client = stomp_client("1.2")
    assert broker.stop() == 0
    error = _get(client.listener.errors, "ERROR")
    assert error.headers["message"] == "server shutting down"
    assert client.listener.disconnected.wait(WAIT)


# -- heart-beating -----------------------------------------------------------------------


def test_heart_beats_at_the_rate_the_client_asks_below_the_default(tmp_path):
    # Default settings (heart_beat_send 10 s): a client that wants a beat every 500 ms
    # to notice a dead link gets one every 500 ms, as from RabbitMQ.
    broker = BrokerProcess(tmp_path / "data", listen=("stomp://127.0.0.1:0",))
    client = None
    try:
        client = StompPy(broker.stomp_port, "1.2", heartbeats=(0, 500))
        assert client.listener.connected_frame.headers["heart-beat"] == "500,10000"
        beats = [_get(client.listener.heart_beats, "heart-beat", 2.0) for _ in range(6)]
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert max(gaps) < 1.0 and beats[-1] - beats[0] < 5 * 1.0
    finally:
        if client is not None:
            client.stop()
        assert broker.stop() == 0


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_heart_beats_both_ways_keep_an_idle_connection(stomp_client, broker, version):
    interval = int(HEART_BEAT * 1000)
    client = stomp_client(version, heartbeats=(interval, interval))
    assert client.listener.connected_frame.headers["heart-beat"] == f"{interval},{interval}"
    beats = [_get(client.listener.heart_beats, "heart-beat", 4 * HEART_BEAT) for _ in range(8)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert max(gaps) < 2 * HEART_BEAT  # the broker beats at the interval
    # Idle for several times the broker's drop threshold: the client's beats kept it.
    assert beats[-1] - beats[0] > 3 * 2 * HEART_BEAT
    assert client.listener.heart_beat_timeouts == 0
    client.subscribe("/topic/alive")
    client.send("/topic/alive", "still here")
    assert client.next_message().body == "still here"
    assert not any("heart-beat timeout" in line for line in broker.lines)


def test_silent_client_is_dropped_after_twice_the_interval(broker):
    interval = int(HEART_BEAT * 1000)
    with socket.create_connection(("127.0.0.1", broker.stomp_port), timeout=WAIT) as sock:
        sock.sendall(f"CONNECT\naccept-version:1.2\nhost:h\nheart-beat:{interval},0\n\n\0"
                     .encode())
        start = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):  # bounded by the socket timeout
            received += chunk
        elapsed = time.monotonic() - start
    assert received.startswith(b"CONNECTED\n")
    assert b"\nERROR\n" in received or b"\0ERROR\n" in received
    assert re.search(rb"message:heart-beat timeout", received)
    assert 2 * HEART_BEAT <= elapsed < WAIT


# -- cross-protocol with paho-mqtt ---------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_mqtt_publish_reaches_stomp_topic_subscribers(stomp_client, paho_client, version):
    sub = stomp_client(version)
    sub.subscribe("/topic/home/+/temp", "wild")
    sub.subscribe("/topic/home/kitchen/temp", "exact")
    paho_client("mqtt-pub").publish("home/kitchen/temp", b"21.5", qos=1)
    got = sorted([sub.next_message(), sub.next_message()],
                 key=lambda frame: frame.headers["subscription"])
    assert [(f.headers["subscription"], f.headers["destination"], f.body) for f in got] == [
        ("exact", "/topic/home/kitchen/temp", "21.5"),
        ("wild", "/topic/home/kitchen/temp", "21.5"),
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_stomp_send_reaches_mqtt_wildcard_subscribers(stomp_client, paho_client, version):
    mqtt = paho_client("mqtt-sub")
    assert mqtt.subscribe(("home/+/temp", 1)) == [1]
    stomp_client(version).send("/topic/home/hall/temp", "19.0")
    message = mqtt.next_message()
    assert (message.topic, message.payload, message.qos) == ("home/hall/temp", b"19.0", 1)


def test_error_reaches_a_client_still_sending(stomp_client):
    # A SEND the broker refuses (unknown destination kind) in the middle of a stream of
    # SENDs larger than one read: the broker half-closes and reads on, so stomp.py gets
    # the ERROR rather than a reset.
    client = stomp_client()
    body = "x" * 1000
    try:
        client.conn.send("/bogus/place", "refused")
        for _ in range(500):
            client.conn.send("/topic/flood", body)
    except (stomp.exception.StompException, OSError):
        pass  # the broker has closed and stomp.py with it: no further sends
    error = _get(client.listener.errors, "ERROR")
    assert "/bogus/place" in error.headers["message"], error.headers
    assert client.listener.disconnected.wait(WAIT), "not disconnected"

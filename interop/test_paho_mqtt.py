"""paho-mqtt (MQTT 3.1.1) against a real ``polybroker serve`` process.

Every wait is on an event set by a paho callback, a queue fed by one, a broker log
line or a child process's output line, and is bounded; nothing sleeps.
"""

import contextlib
import os
import queue
import signal
import socket
import sys
import threading
import time
from typing import NamedTuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion, MQTTv311

from .clients import WAIT, OutputProcess


class Received(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool


class PahoClient:
    """One paho client on its own network thread, its callbacks turned into waits."""

    def __init__(self, port: int, client_id: str, clean_session: bool = True,
                 **options: object) -> None:
        self.port = port
        self.client = mqtt.Client(  # options: transport="websockets", for one
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
            protocol=MQTTv311, reconnect_on_failure=False, **options,
        )
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.connect_reason: mqtt.ReasonCode | None = None
        self.messages: queue.Queue[Received] = queue.Queue()
        self._subacks: queue.Queue[tuple[int, list[int]]] = queue.Queue()
        self._unsubacks: queue.Queue[int] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe

    # -- callbacks (paho's network thread) --------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.session_present = flags.session_present
        self.connect_reason = reason_code
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnected.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(message.topic, message.payload, message.qos, message.retain))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._subacks.put((mid, [code.value for code in reason_codes]))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._unsubacks.put(mid)

    # -- actions, each waiting for the broker's answer --------------------------------

    def connect(self, keepalive: int = 60) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=keepalive)
        self.client.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"
        assert not self.connect_reason.is_failure, self.connect_reason

    def subscribe(self, *subscriptions: tuple[str, int]) -> list[int]:
        """Subscribe and wait for the SUBACK; the granted QoS per filter."""
        result, mid = self.client.subscribe(list(subscriptions))
        assert result == mqtt.MQTT_ERR_SUCCESS
        return _wait_for_mid(self._subacks, mid, lambda item: item[0])[1]

    def unsubscribe(self, *topic_filters: str) -> None:
        result, mid = self.client.unsubscribe(list(topic_filters))
        assert result == mqtt.MQTT_ERR_SUCCESS
        _wait_for_mid(self._unsubacks, mid, lambda item: item)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish and wait until the flow for ``qos`` is complete (sent, PUBACK, PUBCOMP)."""
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"{topic} {payload!r} not acknowledged"

    def next_message(self, timeout: float = WAIT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def receive(self, count: int, timeout: float = WAIT) -> list[Received]:
        """The next ``count`` messages, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        received = []
        for _ in range(count):
            try:
                received.append(
                    self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
                )
            except queue.Empty:
                raise AssertionError(
                    f"got {len(received)} of {count} messages within {timeout}s"
                ) from None
        return received

    def disconnect(self) -> None:
        """Clean DISCONNECT, waiting for paho to report the connection closed."""
        self.client.disconnect()
        assert self.disconnected.wait(WAIT), "no on_disconnect after disconnect()"
        self.client.loop_stop()

    def stop(self) -> None:
        """Teardown: whatever state the client is in, end its connection and thread."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def _wait_for_mid(answers: queue.Queue, mid: int, mid_of):
    deadline = time.monotonic() + WAIT
    while True:
        try:
            item = answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no acknowledgement for packet id {mid}") from None
        if mid_of(item) == mid:
            return item


@pytest.fixture
def connect(broker):
    """``connect(client_id, clean_session=True, will=None)``: a connected PahoClient."""
    with contextlib.ExitStack() as stack:  # stops every client, even if one stop fails

        def factory(client_id: str, clean_session: bool = True,
                    will: tuple[str, bytes, int, bool] | None = None) -> PahoClient:
            client = PahoClient(broker.port, client_id, clean_session)
            stack.callback(client.stop)
            if will is not None:
                client.client.will_set(*will)
            client.connect()
            return client

        yield factory


# -- QoS --------------------------------------------------------------------------------


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_qos_0_1_2_published_are_delivered_at_min_of_published_and_granted_qos(
    connect, sub_qos
):
    subscriber = connect("sub")
    publisher = connect("pub")
    assert subscriber.subscribe(("qos/test", sub_qos)) == [sub_qos]

    for qos in (0, 1, 2):
        publisher.publish("qos/test", f"at qos {qos}".encode(), qos)

    assert subscriber.receive(3) == [
        Received("qos/test", f"at qos {qos}".encode(), min(qos, sub_qos), False)
        for qos in (0, 1, 2)
    ]


def test_overlapping_subscriptions_deliver_one_copy_at_highest_granted_qos(connect):
    subscriber = connect("sub")
    publisher = connect("pub")
    assert subscriber.subscribe(("over/#", 0), ("over/+", 2), ("over/lap", 1)) == [0, 2, 1]

    publisher.publish("over/lap", b"once", 2)
    publisher.publish("marker", b"after", 0)  # not subscribed: nothing comes of it
    publisher.publish("over/other", b"next", 2)

    assert subscriber.receive(2) == [
        Received("over/lap", b"once", 2, False),
        Received("over/other", b"next", 2, False),
    ]


# -- retained messages ------------------------------------------------------------------


def test_retained_message_reaches_later_subscriber_with_retain_flag(connect):
    live = connect("live")
    assert live.subscribe(("sensor/temp", 1)) == [1]
    publisher = connect("pub")
    publisher.publish("sensor/temp", b"21.5", qos=1, retain=True)

    # An established subscription gets it as a normal message [MQTT-3.3.1-9] ...
    assert live.next_message() == Received("sensor/temp", b"21.5", 1, False)
    # ... a new one gets the stored copy, flagged retained [MQTT-3.3.1-8].
    later = connect("later")
    assert later.subscribe(("sensor/#", 2)) == [2]
    assert later.next_message() == Received("sensor/temp", b"21.5", 1, True)


def test_newer_retained_message_replaces_older_one(connect):
    publisher = connect("pub")
    publisher.publish("state", b"first", qos=1, retain=True)
    publisher.publish("state", b"second", qos=1, retain=True)

    later = connect("later")
    assert later.subscribe(("state", 1)) == [1]
    publisher.publish("state", b"marker", qos=1)  # not retained

    assert later.receive(2) == [
        Received("state", b"second", 1, True),
        Received("state", b"marker", 1, False),
    ]


def test_empty_retained_payload_clears_retained_message(connect):
    publisher = connect("pub")
    publisher.publish("state", b"kept", qos=1, retain=True)
    publisher.publish("state", b"", qos=1, retain=True)

    later = connect("later")
    assert later.subscribe(("state", 1)) == [1]
    publisher.publish("state", b"marker", qos=1)

    assert later.next_message() == Received("state", b"marker", 1, False)


# -- wills ------------------------------------------------------------------------------

# A paho client in a child process, so the test can kill or freeze it like a crash would.
WILL_CLIENT = """
import sys
import paho.mqtt.client as mqtt

port, client_id, keepalive = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                     protocol=mqtt.MQTTv311, reconnect_on_failure=False)
client.will_set("will/" + client_id, b"lost " + client_id.encode(), qos=1)
client.on_connect = lambda c, u, flags, rc, props: print("connected", rc, flush=True)
client.connect("127.0.0.1", port, keepalive=keepalive)
client.loop_forever()
"""


def test_will_is_published_when_client_process_is_killed(broker, connect):
    watcher = connect("watcher")
    assert watcher.subscribe(("will/#", 2)) == [2]
    with OutputProcess([sys.executable, "-c", WILL_CLIENT, str(broker.port), "doomed", "60"]) \
            as child:
        assert child.wait_for_line(r"^connected") == "connected Success"
        child.send_signal(signal.SIGKILL)
        assert watcher.next_message() == Received("will/doomed", b"lost doomed", 1, False)
    assert "publishing will to will/doomed" in broker.wait_for_log(r"client doomed .*will")


def test_will_is_published_when_frozen_client_misses_keep_alive(broker, connect):
    watcher = connect("watcher")
    assert watcher.subscribe(("will/#", 1)) == [1]
    with OutputProcess([sys.executable, "-c", WILL_CLIENT, str(broker.port), "frozen", "1"]) \
            as child:
        child.wait_for_line(r"^connected")
        child.send_signal(signal.SIGSTOP)  # the socket stays open; no more PINGREQ
        # The broker waits one and a half keep-alive periods [MQTT-3.1.2-24].
        assert watcher.next_message() == Received("will/frozen", b"lost frozen", 1, False)
        broker.wait_for_log(r"client frozen .*keep-alive timeout")


def test_retained_will_is_published_when_connection_drops_without_disconnect(connect):
    watcher = connect("watcher")
    assert watcher.subscribe(("status/#", 1)) == [1]
    device = connect("device", will=("status/device", b"offline", 1, True))

    # Drop the TCP connection without DISCONNECT (as a network failure would).
    device.client.socket().shutdown(socket.SHUT_RDWR)
    assert device.disconnected.wait(WAIT)

    assert watcher.next_message() == Received("status/device", b"offline", 1, False)
    later = connect("later")
    assert later.subscribe(("status/#", 1)) == [1]
    assert later.next_message() == Received("status/device", b"offline", 1, True)


def test_no_will_after_clean_disconnect(broker, connect):
    watcher = connect("watcher")
    assert watcher.subscribe(("will/#", 1)) == [1]
    polite = connect("polite", will=("will/polite", b"should not appear", 1, False))

    polite.disconnect()
    broker.wait_for_log(r"client polite \(.*\) disconnected: client disconnect")
    connect("pub").publish("will/marker", b"marker", qos=1)

    assert watcher.next_message() == Received("will/marker", b"marker", 1, False)
    assert not any("publishing will" in line for line in broker.lines)


# -- persistent sessions ----------------------------------------------------------------


def test_persistent_session_keeps_qos1_and_qos2_messages_while_offline_in_order(
    broker, connect
):
    first = connect("keeper", clean_session=False)
    assert first.session_present is False
    assert first.subscribe(("offline/q1", 1), ("offline/q2", 2)) == [1, 2]
    first.disconnect()
    broker.wait_for_log(r"client keeper \(.*\) disconnected: client disconnect")

    publisher = connect("pub")
    expected = []
    for i in range(10):
        topic, qos = ("offline/q1", 1) if i % 2 == 0 else ("offline/q2", 2)
        publisher.publish(topic, f"m{i}".encode(), qos)
        expected.append(Received(topic, f"m{i}".encode(), qos, False))
    # Published at QoS 2 on a QoS 1 subscription: kept, delivered at QoS 1.
    publisher.publish("offline/q1", b"downgraded", 2)
    expected.append(Received("offline/q1", b"downgraded", 1, False))

    again = connect("keeper", clean_session=False)
    assert again.session_present is True
    received = again.receive(len(expected))
    # paho hands a QoS 2 message over only at PUBREL, a round trip after the PUBLISH,
    # so QoS 1 and QoS 2 messages interleave differently; each topic keeps its order.
    for topic in ("offline/q1", "offline/q2"):
        assert [m for m in received if m.topic == topic] == [
            m for m in expected if m.topic == topic
        ]

    # The session still holds the subscriptions: live messages flow without subscribing.
    publisher.publish("offline/q2", b"live", 2)
    assert again.next_message() == Received("offline/q2", b"live", 2, False)


def test_clean_session_connect_discards_persistent_session(broker, connect):
    first = connect("keeper", clean_session=False)
    assert first.subscribe(("offline/t", 1)) == [1]
    first.disconnect()
    broker.wait_for_log(r"client keeper \(.*\) disconnected: client disconnect")
    publisher = connect("pub")
    publisher.publish("offline/t", b"queued for the old session", 1)

    fresh = connect("keeper", clean_session=True)
    assert fresh.session_present is False
    assert fresh.subscribe(("offline/t", 1)) == [1]
    publisher.publish("offline/t", b"marker", 1)
    assert fresh.next_message() == Received("offline/t", b"marker", 1, False)


# -- takeover ---------------------------------------------------------------------------


def test_second_connection_with_same_client_id_takes_over_and_first_is_disconnected(
    broker, connect
):
    first = connect("twin")
    assert first.subscribe(("twin/t", 1)) == [1]

    second = connect("twin")
    assert first.disconnected.wait(WAIT), "first connection not closed on takeover"
    broker.wait_for_log(r"client twin: session taken over")

    assert second.subscribe(("twin/t", 1)) == [1]
    connect("pub").publish("twin/t", b"to the second", 1)
    assert second.next_message() == Received("twin/t", b"to the second", 1, False)
    assert first.messages.empty()


def test_takeover_of_persistent_session_keeps_its_subscriptions(broker, connect):
    first = connect("twin", clean_session=False)
    assert first.subscribe(("twin/#", 2)) == [2]

    second = connect("twin", clean_session=False)
    assert first.disconnected.wait(WAIT)
    assert second.session_present is True
    broker.wait_for_log(r"client twin: session taken over")

    publisher = connect("pub")
    publisher.publish("twin/a", b"one", 1)
    publisher.publish("twin/b", b"two", 2)
    assert second.receive(2) == [
        Received("twin/a", b"one", 1, False),
        Received("twin/b", b"two", 2, False),
    ]
    assert first.messages.empty()


# -- unsubscribe and volume -------------------------------------------------------------


def test_unsubscribe_stops_delivery(connect):
    subscriber = connect("sub")
    publisher = connect("pub")
    assert subscriber.subscribe(("news/#", 1), ("marker", 1)) == [1, 1]
    publisher.publish("news/today", b"before", 1)
    assert subscriber.next_message() == Received("news/today", b"before", 1, False)

    subscriber.unsubscribe("news/#")
    publisher.publish("news/today", b"after", 1)
    publisher.publish("marker", b"marker", 1)

    assert subscriber.next_message() == Received("marker", b"marker", 1, False)


@pytest.mark.parametrize(("qos", "count"), [(1, 1000), (2, 300)])
def test_many_messages_arrive_complete_and_in_order(connect, qos, count):
    subscriber = connect("sub")
    publisher = connect("pub")
    assert subscriber.subscribe(("bulk", qos)) == [qos]

    infos = [publisher.client.publish("bulk", f"{i:04d}".encode(), qos) for i in range(count)]
    deadline = time.monotonic() + WAIT
    for info in infos:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        assert info.is_published()

    received = subscriber.receive(count)
    assert [m.payload for m in received] == [f"{i:04d}".encode() for i in range(count)]
    assert {(m.topic, m.qos, m.retain) for m in received} == {("bulk", qos, False)}


def test_3_mib_payload_arrives_intact_live_and_retained(connect):
    subscriber = connect("sub")
    publisher = connect("pub")
    assert subscriber.subscribe(("big/blob", 2)) == [2]
    payload = os.urandom(3 * 1024 * 1024 + 7)  # spans many reads on both sides

    publisher.publish("big/blob", payload, qos=2, retain=True)

    assert subscriber.next_message() == Received("big/blob", payload, 2, False)
    later = connect("later")
    assert later.subscribe(("big/#", 1)) == [1]
    assert later.next_message() == Received("big/blob", payload, 1, True)


def test_utf8_topics_match_filters_level_by_level(connect):
    subscriber = connect("sub")
    publisher = connect("pub")
    assert subscriber.subscribe(("température/+", 1)) == [1]

    publisher.publish("température/salle/à manger", b"deeper level: no match", 1)
    publisher.publish("température/cuisine", "21,5 °C".encode(), 1)

    assert subscriber.next_message() == Received("température/cuisine", "21,5 °C".encode(), 1,
                                                 False)

"""Crash test: the real broker is killed with SIGKILL under load, again and again, and
restarted on the same data directory; nothing acknowledged may be lost.

paho-mqtt clients with persistent sessions (clean session 0): a QoS 1 publisher, a QoS 2
publisher and a subscriber. Each runs its own network loop on a thread that, when the
broker goes away, waits for the port of the next broker process and reconnects to it with
the same client object, so paho resends what it has not seen acknowledged (PUBLISH with
DUP, or PUBREL) as a real device would. The broker is killed each time the subscriber
has received another share of the messages, i.e. in the middle of the load.

Asserted at the end: every QoS 1 message the broker PUBACKed reached the subscriber at
least once; every QoS 2 message reached it exactly once; the retained messages and the
subscription (never renewed by the client) are intact; the session was present after
every restart. Every wait is bounded and waits on a callback or a broker log line.
"""

import signal
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
from paho.mqtt.client import CallbackAPIVersion, MQTTv5, MQTTv311
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .brokerproc import BrokerProcess

QOS1_MESSAGES = 2000
QOS2_MESSAGES = 1000
KILLS = 6
WAIT = 20  # seconds: the bound on every wait here
TOTAL = 55  # seconds: the whole test (it takes about 4 here)


class Follower:
    """A client with its own thread that follows the broker to the port of its next process;
    subclasses connect and call ``_connected`` on each CONNACK."""

    def __init__(self, client_id: str, port: int) -> None:
        self.client_id = client_id
        self.port = port
        self.connected_port: int | None = None  # the port of the last CONNACK's broker
        self.connects = 0
        self.session_present: list[bool] = []
        self.changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=client_id, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()
        self.wait_connected(1)

    def _connected(self, port: int | None, session_present: bool) -> None:
        with self.changed:
            self.connects += 1
            self.connected_port = port
            self.session_present.append(session_present)
            self.changed.notify_all()

    def _wait_for_new_port(self, port: int | None) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self._stop or self.port != port, timeout=WAIT)

    def follow(self, port: int) -> None:
        with self.changed:
            self.port = port
            self.changed.notify_all()

    def wait_connected(self, connects: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.connects >= connects, timeout=WAIT), (
                f"{self.client_id!r} did not reconnect"
            )

    def wait_connected_to(self, port: int, timeout: float = WAIT) -> None:
        """Wait until the client has its CONNACK from the broker on ``port``."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.connected_port == port, timeout), (
                f"{self.client_id!r} did not reconnect"
            )

    def stop(self) -> None:
        with self.changed:
            self._stop = True
            self.changed.notify_all()
        self._thread.join(WAIT)


class Driver(Follower):
    """A paho client with its own network loop that follows the broker to its next port."""

    def __init__(self, client_id: str, port: int, protocol: int = MQTTv311) -> None:
        super().__init__(client_id, port)
        # A persistent session: clean session 0 (3.1.1), or clean start 0 with a session
        # that outlives the connection (5.0).
        persistent = {"clean_session": False} if protocol != MQTTv5 else {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
            reconnect_on_failure=False, **persistent,
        )
        self.protocol = protocol
        self.client.max_queued_messages_set(0)  # unbounded: the test decides the load
        self.client.on_connect = self._on_connect
        self._connecting_port: int | None = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        assert not reason_code.is_failure, reason_code
        self._connected(self._connecting_port, flags.session_present)

    def _run(self) -> None:
        port = None
        while not self._stop:
            if port != self.port:
                port = self._connecting_port = self.port
                try:
                    if self.protocol == MQTTv5:
                        properties = Properties(PacketTypes.CONNECT)
                        properties.SessionExpiryInterval = 3600
                        self.client.connect("127.0.0.1", port, keepalive=30, clean_start=False,
                                            properties=properties)
                    else:
                        self.client.connect("127.0.0.1", port, keepalive=30)
                except OSError:
                    self._wait_for_new_port(port)
                    port = None
                    continue
            if self.client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                self._wait_for_new_port(port)  # the broker is gone: wait for the next one

    def stop(self) -> None:
        super().stop()
        self.client.disconnect()


class Publisher(Driver):
    """Counts what the broker acknowledged: PUBACK (QoS 1) or PUBCOMP (QoS 2)."""

    def __init__(self, client_id: str, port: int, protocol: int = MQTTv311) -> None:
        super().__init__(client_id, port, protocol)
        self.payloads: dict[int, str] = {}  # mid -> payload
        self.acknowledged_mids: set[int] = set()
        self.client.on_publish = self._on_publish

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.changed:
            self.acknowledged_mids.add(mid)
            self.changed.notify_all()

    def publish(self, topic: str, payload: str, qos: int, retain: bool = False) -> None:
        # Not under our lock: paho calls on_publish holding its own locks.
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        with self.changed:
            self.payloads[info.mid] = payload

    @property
    def acknowledged(self) -> set[str]:
        return {self.payloads[mid] for mid in self.acknowledged_mids if mid in self.payloads}

    def wait_acknowledged(self, payloads: set[str], timeout: float = WAIT) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: payloads <= self.acknowledged, timeout), (
                f"{len(payloads - self.acknowledged)} message(s) never acknowledged"
            )


class Subscriber(Driver):
    def __init__(self, client_id: str, port: int) -> None:
        super().__init__(client_id, port)
        self.received: Counter[str] = Counter()
        self.suback = False
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self.changed:
            self.suback = True
            self.changed.notify_all()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.received[message.payload.decode()] += 1
            self.changed.notify_all()

    def wait_received(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, timeout=WAIT), (
                f"only {len(self.received)} of {count} distinct messages arrived"
            )

    def wait_for_all(self, payloads: set[str], timeout: float = WAIT) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: payloads <= set(self.received), timeout), (
                f"missing: {sorted(payloads - set(self.received))[:10]}"
            )


def retained_now(port: int) -> dict[str, str]:
    """The retained messages under retained/#, as a new clean client sees them."""
    got: dict[str, str] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retained-check",
                         protocol=MQTTv311)

    def on_message(client, userdata, message):
        got[message.topic] = message.payload.decode()

    client.on_message = on_message
    client.on_subscribe = lambda *args: client.publish("retained-check/done", "", qos=1)
    client.on_publish = lambda *args: done.set()  # after the retained ones, in order
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe("retained/#", 1)
        assert done.wait(WAIT), "no answer from the broker"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_sigkill_under_load_loses_no_acknowledged_message(tmp_path):
    started = time.monotonic()
    data = tmp_path / "data"
    # The subscriber is slower than the publishers: room for the whole load in its queue
    # (past the bound, new messages would be dropped by policy, and logged).
    config = tmp_path / "crash.toml"
    config.write_text("[limits]\nmax_queued_messages = 100000\n")
    options = ("--config", str(config))
    broker = BrokerProcess(data, *options)
    clients: list[Driver] = []
    try:
        sub = Subscriber("crash-sub", broker.port)
        q1 = Publisher("crash-pub1", broker.port)
        q2 = Publisher("crash-pub2", broker.port)
        clients = [sub, q1, q2]
        for client in clients:
            client.start()
        sub.client.subscribe("load/#", 2)  # never renewed: the broker must keep it
        retained = {f"retained/{name}": f"value-{name}" for name in "abcde"}
        for topic, value in retained.items():
            q1.publish(topic, value, qos=1, retain=True)
        q1.wait_acknowledged(set(retained.values()))

        qos1 = [f"q1-{n}" for n in range(QOS1_MESSAGES)]
        qos2 = [f"q2-{n}" for n in range(QOS2_MESSAGES)]
        # The whole load is handed to paho at once; it keeps 20 in flight per client.
        for n in range(max(len(qos1), len(qos2))):
            if n < len(qos1):
                q1.publish(f"load/q1/{n % 10}", qos1[n], qos=1)
            if n < len(qos2):
                q2.publish(f"load/q2/{n % 10}", qos2[n], qos=2)

        total = len(qos1) + len(qos2)
        for kill in range(1, KILLS + 1):
            sub.wait_received(total * kill // (KILLS + 2))  # mid-load
            broker.stop(signal.SIGKILL)
            broker = BrokerProcess(data, *options)
            assert any("storage: restored 3 sessions" in line for line in broker.lines), (
                "\n".join(broker.lines)
            )
            for client in clients:
                client.follow(broker.port)
            for client in clients:
                client.wait_connected(kill + 1)
            if kill == 1:  # change the retained set between two crashes
                q1.publish("retained/e", "", qos=1, retain=True)
                q1.publish("retained/f", "value-f", qos=1, retain=True)
                retained.pop("retained/e")
                retained["retained/f"] = "value-f"
                q1.wait_acknowledged({"", "value-f"})

        q1.wait_acknowledged(set(qos1), timeout=TOTAL - (time.monotonic() - started))
        q2.wait_acknowledged(set(qos2))
        sub.wait_for_all(set(qos1) | set(qos2))

        # Every acknowledged QoS 1 message at least once (duplicates are allowed) ...
        assert all(sub.received[p] >= 1 for p in q1.acknowledged & set(qos1))
        # ... every QoS 2 message exactly once.
        twice = {p: n for p, n in sub.received.items() if p.startswith("q2-") and n != 1}
        assert not twice, f"QoS 2 messages delivered more than once: {twice}"
        assert all(sub.received[p] == 1 for p in qos2)
        # The subscriber's session (and so its subscription) came back every time.
        assert sub.session_present == [False] + [True] * KILLS
        assert retained_now(broker.port) == retained
        assert time.monotonic() - started < TOTAL
    finally:
        for client in clients:
            client.stop()
        broker.stop()

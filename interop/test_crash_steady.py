"""Crash hunt: the real broker is killed with SIGKILL at fixed intervals under a steady load,
at its default configuration, so that messages are caught in every state of their QoS flows.

Load: two paho publishers with persistent sessions send at a steady rate for the whole run,
one at QoS 1 (MQTT 3.1.1) and one at QoS 2 (MQTT 5.0). Two subscribers with persistent
sessions take ``crash/#`` at QoS 2, one for each way a receiver may complete QoS 2 (the
specification's figure 4.3):

- paho (3.1.1), which delivers a QoS 2 message when PUBREL arrives;
- ``RawSubscriber``, a bare-socket client that delivers at PUBLISH, keeps the packet ids it
  has answered with PUBREC until PUBREL, records every PUBLISH with its packet id and DUP
  flag, and acknowledges at its own pace (acknowledgements are held back and sent in
  batches, so some are in flight, or lost, at every kill).

The broker is killed every ``KILL_EVERY`` seconds, ``KILLS`` times, and restarted on the
same data directory; the clients follow it to its new port and resume their sessions.

Asserted at the end: every QoS 1 message the broker PUBACKed reached both subscribers at
least once; every QoS 2 message reached each of them exactly once (and every one was
PUBCOMPed); both sessions were present after every restart.
"""

import random
import signal
import socket
import struct
import threading
import time
from collections import Counter

from paho.mqtt.client import MQTTv5, MQTTv311

from .brokerproc import BrokerProcess
from .test_crash import WAIT, Follower, Publisher, Subscriber

KILLS = 10
KILL_EVERY = 1.5  # seconds between a broker's start and its kill
RATE = 400  # messages a second, per publisher
# The raw subscriber sends its acknowledgements in batches of this many (fewer than the
# broker's in-flight window of 20, so it is never left waiting for the rest of a batch) ...
ACK_BATCH = 8
ACK_LAG = 0.02  # ... or after this long without more data
QUIET = 5  # seconds without a new delivery after which what has not arrived is lost
TOTAL = 100  # seconds: the bound on the whole test


class PacedPublisher(Publisher):
    """A paho publisher that sends ``RATE`` messages a second from its own thread."""

    def __init__(self, client_id: str, port: int, qos: int, protocol: int) -> None:
        super().__init__(client_id, port, protocol=protocol)
        self.qos = qos
        self.sent: list[str] = []
        self._pacing = threading.Event()  # set to stop the load
        self._load = threading.Thread(target=self._publish_steadily, daemon=True,
                                      name=f"{client_id} load")

    def start_load(self) -> None:
        self._load.start()

    def stop_load(self) -> None:
        self._pacing.set()
        self._load.join(WAIT)

    def _publish_steadily(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._pacing.is_set():
            due = start + n / RATE
            delay = due - time.monotonic()
            if delay > 0 and self._pacing.wait(delay):  # pacing, not synchronisation
                break
            payload = f"q{self.qos}-{n}"
            self.publish(f"crash/q{self.qos}/{n % 10}", payload, qos=self.qos)
            self.sent.append(payload)
            n += 1


class RawSubscriber(Follower):
    """An MQTT 3.1.1 subscriber on a bare socket that delivers QoS 2 at PUBLISH.

    Its session state (the QoS 2 packet ids answered with PUBREC and not yet released)
    lives in the object, so it outlives connections as a persistent client's must."""

    def __init__(self, client_id: str, port: int, topic_filter: str) -> None:
        super().__init__(client_id, port)
        self.topic_filter = topic_filter
        self.received: Counter[str] = Counter()  # deliveries by payload
        self.log: list[tuple[float, str, int, bool, int]] = []  # (time, payload, pid, dup, qos)
        self.awaiting_pubrel: set[int] = set()

    def _run(self) -> None:
        while not self._stop:
            port = self.port
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                    self._session(sock, port)
            except OSError:
                pass  # the broker was killed: wait for the next one
            self._wait_for_new_port(port)

    def _session(self, sock: socket.socket, port: int) -> None:
        client_id = self.client_id.encode()
        connect = (b"\x00\x04MQTT\x04\x00\x00\x1e"  # 3.1.1, clean session 0, keep alive 30
                   + struct.pack(">H", len(client_id)) + client_id)
        sock.sendall(_packet(0x10, connect))
        buffer = b""
        pending_acks: list[bytes] = []
        subscribed = False
        sock.settimeout(ACK_LAG)
        while not self._stop and self.port == port:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = None
            if data == b"":
                return
            if data:
                buffer += data
            packets, buffer = _split(buffer)
            for first, body in packets:
                kind = first >> 4
                if kind == 2:  # CONNACK
                    assert body[1] == 0, f"CONNACK refused: {body!r}"
                    self._connected(port, bool(body[0] & 1))
                    if not subscribed:  # the subscription is made once and must persist
                        topic = self.topic_filter.encode()
                        sock.sendall(_packet(0x82, b"\x00\x01" + struct.pack(">H", len(topic))
                                             + topic + b"\x02"))
                        subscribed = True
                elif kind == 3:
                    pending_acks.append(self._on_publish(first, body))
                elif kind == 6:  # PUBREL: the exchange is over; answer PUBCOMP
                    packet_id = struct.unpack(">H", body[:2])[0]
                    self.awaiting_pubrel.discard(packet_id)
                    pending_acks.append(_packet(0x70, body[:2]))
            if pending_acks and (data is None or len(pending_acks) >= ACK_BATCH):
                sock.sendall(b"".join(pending_acks))
                pending_acks.clear()

    def _on_publish(self, first: int, body: bytes) -> bytes:
        qos = (first >> 1) & 3
        length = struct.unpack(">H", body[:2])[0]
        pos = 2 + length
        packet_id = struct.unpack(">H", body[pos:pos + 2])[0] if qos else 0
        payload = body[pos + 2 if qos else pos:].decode()
        dup = bool(first & 8)
        with self.changed:
            self.log.append((time.monotonic(), payload, packet_id, dup, qos))
            if qos == 2 and packet_id in self.awaiting_pubrel:
                pass  # the same message again: acknowledged, not delivered again
            else:
                self.received[payload] += 1
                if qos == 2:
                    self.awaiting_pubrel.add(packet_id)
            self.changed.notify_all()
        if qos == 1:
            return _packet(0x40, struct.pack(">H", packet_id))
        if qos == 2:
            return _packet(0x50, struct.pack(">H", packet_id))
        return b""

    def wait_for_all(self, payloads: set[str], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: payloads <= set(self.received), timeout)

    def wait_until_quiet(self, payloads: set[str], deadline: float) -> None:
        """Wait until every payload arrived, or none has for ``QUIET`` seconds (or the
        deadline, on the monotonic clock, passed)."""
        with self.changed:
            while not payloads <= set(self.received):
                seen = len(self.log)
                left = deadline - time.monotonic()
                if left <= 0 or not self.changed.wait_for(
                    lambda seen=seen: len(self.log) > seen, timeout=min(QUIET, left)
                ):
                    return

    def history(self, payload: str) -> list[tuple[float, int, bool]]:
        return [(t, pid, dup) for t, p, pid, dup, _ in self.log if p == payload]


def _packet(first: int, body: bytes) -> bytes:
    length = bytearray()
    size = len(body)
    while True:
        digit, size = size % 128, size // 128
        length.append(digit | (128 if size else 0))
        if not size:
            return bytes((first,)) + bytes(length) + body


def _split(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole packets at the start of ``buffer`` and what is left of it."""
    packets = []
    pos = 0
    while len(buffer) - pos >= 2:
        size = multiplier = 0
        i = pos + 1
        while True:
            if i >= len(buffer):
                return packets, buffer[pos:]
            byte = buffer[i]
            size += (byte & 127) << multiplier
            multiplier += 7
            i += 1
            if not byte & 128:
                break
        if len(buffer) - i < size:
            break
        packets.append((buffer[pos], buffer[i:i + size]))
        pos = i + size
    return packets, buffer[pos:]


def _describe(payload: str, raw: RawSubscriber, kills: list[float]) -> str:
    seen = ", ".join(f"t={t:.3f} pid={pid} dup={int(dup)}" for t, pid, dup in raw.history(payload))
    near = [f"{k:.3f}" for k in kills]
    return f"{payload}: {seen} (kills at {near})"


def test_steady_load_with_kills_acknowledged_arrive_qos2_exactly_once(tmp_path):
    started = time.monotonic()
    data = tmp_path / "data"
    broker = BrokerProcess(data)  # the default configuration: bounds as shipped
    clients: list = []
    kills: list[float] = []
    try:
        sub = Subscriber("crash-paho", broker.port)
        raw = RawSubscriber("crash-raw", broker.port, "crash/#")
        pub1 = PacedPublisher("crash-pub1", broker.port, qos=1, protocol=MQTTv311)
        pub2 = PacedPublisher("crash-pub2", broker.port, qos=2, protocol=MQTTv5)
        clients = [sub, raw, pub1, pub2]
        sub.start()
        sub.client.subscribe("crash/#", 2)  # never renewed: the broker must keep it
        raw.start()
        with sub.changed:  # both subscriptions are in place before the load starts
            assert sub.changed.wait_for(lambda: sub.suback, WAIT)
        pub1.start()
        pub2.start()
        probe = "probe"
        pub1.publish("crash/probe", probe, qos=1)
        assert raw.wait_for_all({probe}, WAIT)
        pub1.start_load()
        pub2.start_load()

        rng = random.Random()
        stop = threading.Event()
        for _ in range(KILLS):
            # Fixed intervals, with a little jitter so that successive runs catch messages
            # at different points of their flows.
            stop.wait(KILL_EVERY + rng.uniform(-0.2, 0.2))
            broker.stop(signal.SIGKILL)
            kills.append(time.monotonic())
            broker = BrokerProcess(data)
            for client in clients:
                client.follow(broker.port)
        pub1.stop_load()
        pub2.stop_load()
        for client in clients:
            client.wait_connected_to(broker.port)

        left = TOTAL - (time.monotonic() - started)
        pub1.wait_acknowledged(set(pub1.sent), timeout=left)
        pub2.wait_acknowledged(set(pub2.sent), timeout=left)
        # Everything was acknowledged in the end; what has not arrived once deliveries have
        # stopped is lost (the assertions below say which).
        everything = set(pub1.sent) | set(pub2.sent)
        raw.wait_until_quiet(everything, started + TOTAL)
        with sub.changed:
            sub.changed.wait_for(lambda: everything <= set(sub.received), timeout=QUIET)

        qos2 = set(pub2.sent)
        for name, received in (("paho", sub.received), ("raw", raw.received)):
            lost = sorted(p for p in pub1.acknowledged | pub2.acknowledged if not received[p])
            assert not lost, (
                f"{name}: {len(lost)} acknowledged message(s) lost: {lost[:10]} after "
                f"{time.monotonic() - started:.1f} s; the broker said:\n"
                + "\n".join(line for line in broker.lines if "WARNING" in line or "ERROR" in line)
            )
            twice = sorted(p for p in qos2 if received[p] > 1)
            assert not twice, f"{name}: {len(twice)} QoS 2 message(s) delivered twice:\n" + (
                "\n".join(_describe(p, raw, kills) for p in twice[:10])
            )
        # The sessions came back after every restart (a client may miss a broker that
        # lived only while it was reconnecting).
        for present in (sub.session_present, raw.session_present):
            assert present[0] is False and all(present[1:]) and len(present) > KILLS // 2
        assert len(pub1.sent) > RATE * KILLS and len(pub2.sent) > RATE * KILLS
        print(f"crash-steady: {len(pub1.sent)} QoS 1 + {len(pub2.sent)} QoS 2 messages, "
              f"{KILLS} kills, {time.monotonic() - started:.1f} s")
    finally:
        for client in clients:
            if isinstance(client, PacedPublisher):
                client.stop_load()
            client.stop()
        broker.stop()

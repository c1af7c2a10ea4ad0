"""The ``$SYS/broker/...`` topics, as Mosquitto publishes them, so that its dashboards and
exporters read polybroker unchanged.

Every ``sys_interval`` seconds one timer publishes the tree: retained, QoS 0, payloads
as plain text in Mosquitto's formats (integers, ``N seconds``, loads with ``%.2f``). As
Mosquitto does, a topic is published again only when its value changed, except the
uptime; the version is published once. The loads are Mosquitto's: a per-minute rate over
the last interval, smoothed exponentially over 1, 5 and 15 minutes.

The counts cover every protocol: clients are connections of any protocol (plus the
disconnected MQTT sessions), messages are application messages (PUBLISH, SEND,
basic.publish in; PUBLISH, MESSAGE, basic.deliver out). The messages are retained in
memory only, apart from the clients' retained messages (``Broker.sys_retained``): not
bounded by max_retained_*, never recorded in the store, so a restart starts afresh. ``#`` does not
match them ([MQTT-4.7.2-1]); the ACL decides who may subscribe to ``$SYS/#``.
"""

import math
import os
import resource
from collections.abc import Callable

import trio

from .broker import Broker
from .message import Message
from .stats import held, private_queues

PREFIX = "$SYS/broker/"
LOAD_PERIODS = ((1, 60.0), (5, 300.0), (15, 900.0))  # (name in minutes, seconds)
# $SYS/broker/load/<name>/<period> -> what its rate is computed from.
LOADS = ("messages/received", "messages/sent", "publish/dropped", "publish/received",
         "publish/sent", "bytes/received", "bytes/sent", "sockets", "connections")


class SysTree:
    """Publishes the tree into a broker; ``update`` is one round, ``run`` the timer."""

    def __init__(self, broker: Broker, version: str,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.broker = broker
        self.version = version
        self.clock = clock
        self._started = clock()  # the tree starts with the listeners
        self._published: dict[str, str] = {}  # topic -> last payload
        self._loads: dict[str, float] = {}
        self._previous: dict[str, int] | None = None
        self._last_update = 0.0
        self._heap_maximum = 0

    async def run(self, interval: float) -> None:
        """Publish the version, then the tree every ``interval`` seconds, until cancelled."""
        self._publish("version", f"polybroker version {self.version}")
        while True:
            self.update()
            await trio.sleep(interval)

    def update(self) -> None:
        broker = self.broker
        stats = broker.stats
        # Every value as it is before this round's own messages.
        counts = self._counts()
        backlog = held(broker.sessions.values(), [*broker.queues, *private_queues(stats)])
        # Mosquitto counts its own $SYS messages among the retained ones.
        retained = len(broker.retained) + len(broker.sys_retained)
        retained_bytes = broker.retained.size + broker.sys_retained.size
        self._publish("uptime", f"{int(self.clock() - self._started)} seconds", always=True)
        self._clients()
        self._load(counts)
        stored = backlog.queued + backlog.inflight + retained
        self._publish("messages/stored", str(stored))
        self._publish("store/messages/count", str(stored))
        self._publish("store/messages/bytes", str(backlog.bytes + retained_bytes))
        self._publish("subscriptions/count", str(
            sum(len(session.subscriptions) for session in broker.sessions.values())))
        self._publish("retained messages/count", str(retained))
        heap = _heap_bytes()
        self._heap_maximum = max(self._heap_maximum, heap)
        self._publish("heap/current", str(heap))
        self._publish("heap/maximum", str(self._heap_maximum))
        for name in ("messages/received", "messages/sent", "publish/messages/dropped",
                     "publish/messages/received", "publish/messages/sent", "bytes/received",
                     "bytes/sent"):
            self._publish(name, str(counts[name]))

    def _clients(self) -> None:
        broker = self.broker
        stats = broker.stats
        connected = len(stats.live)
        disconnected = sum(1 for session in broker.sessions.values() if session.link is None)
        total = connected + disconnected
        stats.note_clients(total)
        self._publish("clients/total", str(total))
        self._publish("clients/maximum", str(stats.clients_maximum))
        for name, value in (("inactive", disconnected), ("disconnected", disconnected),
                            ("active", connected), ("connected", connected),
                            ("expired", stats.sessions_expired)):
            self._publish(f"clients/{name}", str(value))

    def _counts(self) -> dict[str, int]:
        stats = self.broker.stats
        traffic = stats.traffic()
        received = sum(t["messages_in"] for t in traffic.values())
        sent = sum(t["messages_out"] for t in traffic.values())
        opened = sum(stats.opened.values())
        return {
            "messages/received": received, "messages/sent": sent,
            "publish/messages/received": received, "publish/messages/sent": sent,
            "publish/messages/dropped": sum(self.broker.drops.values()),
            "bytes/received": sum(t["bytes_in"] for t in traffic.values()),
            "bytes/sent": sum(t["bytes_out"] for t in traffic.values()),
            "sockets": opened, "connections": opened,
        }

    def _load(self, counts: dict[str, int]) -> None:
        now = self.clock()
        previous, self._previous = self._previous, counts
        initial = previous is None
        previous = previous or counts
        elapsed = max(now - self._last_update, 1e-9)
        self._last_update = now
        for name in LOADS:
            source = name.replace("publish/", "publish/messages/") if name.startswith(
                "publish/") else name
            rate = 0.0 if initial else (counts[source] - previous[source]) * 60.0 / elapsed
            for minutes, period in LOAD_PERIODS:
                topic = f"load/{name}/{minutes}min"
                current = self._loads.get(topic, 0.0)
                if initial:
                    value = current
                else:
                    value = rate + math.exp(-elapsed / period) * (current - rate)
                    if abs(value - current) < 0.01:
                        continue  # Mosquitto republishes a load only when it moved
                self._loads[topic] = value
                self._publish(topic, f"{value:.2f}")

    def _publish(self, name: str, payload: str, always: bool = False) -> None:
        topic = PREFIX + name
        if not always and self._published.get(topic) == payload:
            return
        self._published[topic] = payload
        message = Message(topic, payload.encode(), qos=0, retain=True, origin_protocol="$SYS")
        # Retained in memory only, apart from the clients' (not bounded, never stored).
        self.broker.sys_retained.set(topic, message)
        self.broker.route(message)


def _heap_bytes() -> int:
    """The process's resident memory (Linux: /proc/self/statm), else its peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

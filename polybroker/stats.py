"""What the broker counts for its operators: live connections and broker-wide totals.

The hot path only adds to plain integers: a connection counts its own messages and
bytes in its ``ConnectionInfo``; when it closes, its counts move to the retired totals
of its protocol. A reader (``$SYS``, Prometheus, the management API) sums the retired
totals and the live connections when it asks, so nothing is aggregated per message.
"""

import bisect
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

if TYPE_CHECKING:
    from .queues import Queue
    from .sessions import Session

# Where a connection came in (listener URL, transport): set by the listener before it
# hands the stream to the adapter, read when the adapter registers the connection, so
# that the adapters need not pass it along.
ARRIVAL: ContextVar[tuple[str, str]] = ContextVar("arrival", default=("", "tcp"))

# The ``reason`` label of a connection nothing recorded an end reason for (the runner
# records one for every connection it runs).
UNRECORDED = "internal_error"

PROTOCOLS = ("mqtt", "stomp", "amqp")  # always reported, with zeros until used

# The counts each connection keeps, summed per protocol.
TRAFFIC = ("messages_in", "messages_out", "bytes_in", "bytes_out")

LAG_INTERVAL = 1.0  # seconds between two measures of the event loop's lag
# Upper bounds (seconds) of the fsync latency histogram's buckets.
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True, eq=False)
class ConnectionInfo:
    """One live connection as an operator sees it. The adapter adds to the traffic counts
    and fills in ``id``, ``user`` and ``session`` once the client has logged in."""

    connection: Any  # the adapter's connection (``broker.Closable``)
    id: str  # the MQTT client id; a generated one (stomp-17, amqp-3) for STOMP and AMQP
    protocol: str
    transport: str
    listener: str
    peer: str
    since: float  # wall clock (seconds since the epoch)
    user: str | None = None
    session: "Session | None" = None  # the MQTT session, once connected
    messages_in: int = 0  # application messages (PUBLISH, SEND, basic.publish)
    messages_out: int = 0  # deliveries written (PUBLISH, MESSAGE, basic.deliver / get-ok)
    bytes_in: int = 0
    bytes_out: int = 0
    # Why it ended: the connection runner's ``end_reason``, a word of
    # ``adapters.runner.END_REASONS`` (``client_disconnect``, ``kicked``, ...).
    close_reason: str = ""

    def identify(self, client_id: str, user: str | None,
                 session: "Session | None" = None) -> None:
        """The client logged in: its id (MQTT), user and session."""
        self.id = client_id
        self.user = user
        self.session = session


class Histogram:
    """Observations in fixed buckets (upper bounds, seconds), as Prometheus histograms
    expose them: cumulative counts per bound, their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = FSYNC_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


@dataclass(slots=True)
class Stats:
    """The broker's counters (``Broker.stats``)."""

    started: float = field(default_factory=time.time)  # wall clock
    started_monotonic: float = field(default_factory=time.monotonic)
    live: dict[object, ConnectionInfo] = field(default_factory=dict)
    opened: Counter[tuple[str, str]] = field(default_factory=Counter)  # (protocol, listener)
    # (protocol, listener, reason)
    closed: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    retired: Counter[tuple[str, str]] = field(default_factory=Counter)  # (protocol, TRAFFIC)
    # The most clients (connected and disconnected sessions) seen at once, and the
    # sessions that ended by expiry (Mosquitto's clients/maximum and clients/expired).
    clients_maximum: int = 0
    sessions_expired: int = 0
    loop_lag: float = 0.0  # seconds the last periodic wake-up came late
    loop_lag_max: float = 0.0
    fsync_seconds: Histogram = field(default_factory=Histogram)  # the store's, when it has one
    _serial: int = 0
    _changed: trio.Event | None = None  # made by a waiter of ``changed``

    def opening(self, connection: object, protocol: str, peer: str) -> ConnectionInfo:
        listener, transport = ARRIVAL.get()
        self._serial += 1
        info = ConnectionInfo(connection, f"{protocol}-{self._serial}", protocol, transport,
                              listener, peer, time.time())
        self.live[connection] = info
        self.opened[protocol, listener] += 1
        self._signal()
        return info

    def closing(self, connection: object) -> ConnectionInfo | None:
        info = self.live.pop(connection, None)
        if info is None:
            return None
        self.closed[info.protocol, info.listener, info.close_reason or UNRECORDED] += 1
        retired = self.retired
        for name in TRAFFIC:
            retired[info.protocol, name] += getattr(info, name)
        self._signal()
        return info

    async def changed(self) -> None:
        """Wait until a connection opens or closes."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def traffic(self) -> dict[str, dict[str, int]]:
        """Protocol -> TRAFFIC name -> total since start (closed and live connections)."""
        totals = {protocol: dict.fromkeys(TRAFFIC, 0) for protocol in PROTOCOLS}
        for (protocol, name), value in self.retired.items():
            totals.setdefault(protocol, dict.fromkeys(TRAFFIC, 0))[name] += value
        for info in self.live.values():
            counts = totals.setdefault(info.protocol, dict.fromkeys(TRAFFIC, 0))
            for name in TRAFFIC:
                counts[name] += getattr(info, name)
        return totals

    def total(self, name: str) -> int:
        """One TRAFFIC count over every protocol."""
        return sum(counts[name] for counts in self.traffic().values())

    def find(self, client_id: str) -> ConnectionInfo | None:
        return next((info for info in self.live.values() if info.id == client_id), None)

    def __iter__(self) -> Iterator[ConnectionInfo]:
        return iter(list(self.live.values()))

    def note_clients(self, count: int) -> None:
        if count > self.clients_maximum:
            self.clients_maximum = count

    async def measure_lag(self, interval: float = LAG_INTERVAL) -> None:
        """Until cancelled: how late a sleep of ``interval`` wakes is how long other tasks
        held the loop (a busy loop delays every connection as much)."""
        while True:
            due = trio.current_time() + interval
            await trio.sleep_until(due)
            self.loop_lag = max(0.0, trio.current_time() - due)
            self.loop_lag_max = max(self.loop_lag_max, self.loop_lag)


def uptime(stats: Stats) -> float:
    return time.monotonic() - stats.started_monotonic


def broker_version() -> str:
    try:
        return version("polybroker")
    except PackageNotFoundError:
        return "unknown"


# What a connection holds, for the management API. MQTT's is in its session; STOMP and
# AMQP keep their consumers in the adapter, which says what they hold (``holdings``).


@dataclass(slots=True)
class Holdings:
    """What a STOMP or AMQP connection holds, as the management API shows it."""

    # One row per subscription or consumer: id, queue, and destination and
    # unacknowledged (STOMP) or channel (AMQP).
    consumers: list[dict[str, Any]] = field(default_factory=list)
    queued: int = 0  # messages waiting in its private queues (STOMP topic subscriptions)
    inflight: int = 0  # deliveries not acknowledged yet
    private_queues: "list[Queue]" = field(default_factory=list)  # not among the named ones


@runtime_checkable
class HoldsConsumers(Protocol):
    """A connection whose consumers live in its adapter (STOMP, AMQP); the adapters
    name it as a base class, so that the type checker holds them to it."""

    def holdings(self) -> Holdings: ...


def _holdings(info: ConnectionInfo) -> Holdings | None:
    connection = info.connection
    return connection.holdings() if isinstance(connection, HoldsConsumers) else None


def consumers_of(info: ConnectionInfo) -> list[dict[str, Any]]:
    """A STOMP or AMQP connection's subscriptions and consumers."""
    holdings = _holdings(info)
    return holdings.consumers if holdings is not None else []


def private_queues(stats: "Stats") -> "list[Queue]":
    """The queues of live STOMP topic subscriptions (not among the named queues)."""
    return [queue for info in stats if (holdings := _holdings(info)) is not None
            for queue in holdings.private_queues]


def backlog_of(info: ConnectionInfo) -> tuple[int, int]:
    """(queued, in flight): an MQTT session's queued and unacknowledged messages; for
    STOMP topic subscriptions the messages waiting in their private queues and, for
    STOMP and AMQP, the deliveries not yet acknowledged."""
    session = info.session
    if session is not None:
        return len(session.queued), len(session.inflight)
    holdings = _holdings(info)
    return (holdings.queued, holdings.inflight) if holdings is not None else (0, 0)


@dataclass(slots=True)
class Held:
    """Messages the broker holds for delivery, counted when read: MQTT sessions'
    queued and in-flight, named and STOMP-topic queues' ready and unacknowledged."""

    queued: int = 0
    inflight: int = 0
    bytes: int = 0  # their payload bytes


def held(sessions: "Iterable[Session]", queues: "Iterable[Queue]") -> Held:
    total = Held()
    for session in sessions:
        # Not ``session.queued``: that would make the deque of every session that has none.
        total.queued += len(session._queued or ())
        total.inflight += len(session.inflight)
        total.bytes += session.queued_bytes + sum(
            len(d.message.payload) for d in session.inflight.values())
    for queue in queues:
        total.queued += queue.message_count
        total.inflight += queue.unacked_count
        total.bytes += queue.bytes
    return total

"""The broker's counters in the Prometheus exposition format.

A custom collector reads ``Broker.stats`` and the core's state when scraped, so nothing
of ``prometheus_client`` runs on the message path. Names are under ``polybroker_``,
counters end in ``_total``, units are seconds and bytes; labels are only ``protocol``,
``listener`` and ``reason``, and ``queue`` on the per-queue gauges.
"""

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from ..broker import Broker
from ..stats import TRAFFIC, held, private_queues

PREFIX = "polybroker_"


class BrokerCollector(Collector):
    """Reads one broker's counters at every scrape."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        yield from self._connections()
        yield from self._traffic()
        yield from self._state()
        yield from self._queues()
        yield from self._runtime()

    def _connections(self) -> Iterator[Metric]:
        stats = self.broker.stats
        current: Counter[tuple[str, str]] = Counter(
            (info.protocol, info.listener) for info in stats.live.values())
        yield _family(GaugeMetricFamily, "connections", "Open client connections.",
                      ("protocol", "listener"), current)
        yield _family(CounterMetricFamily, "connections_opened", "Client connections opened.",
                      ("protocol", "listener"), stats.opened)
        yield _family(CounterMetricFamily, "connections_closed",
                      "Client connections closed, by reason (the end of connection log "
                      "line's: client_disconnect, peer_closed, kicked, shutdown, ...).",
                      ("protocol", "listener", "reason"), stats.closed)
        yield _family(CounterMetricFamily, "logins_refused", "Refused logins, by reason.",
                      ("protocol", "reason"), self.broker.security.refused)

    def _traffic(self) -> Iterator[Metric]:
        broker = self.broker
        traffic = broker.stats.traffic()
        helps = {
            "messages_in": ("messages_received", "Application messages received from "
                            "clients (PUBLISH, SEND, basic.publish)."),
            "messages_out": ("messages_delivered", "Messages written to clients (PUBLISH, "
                             "MESSAGE, basic.deliver, basic.get-ok, basic.return)."),
            "bytes_in": ("bytes_received", "Bytes read from client connections."),
            "bytes_out": ("bytes_sent", "Bytes written to client connections."),
        }
        for name in TRAFFIC:
            metric, help_text = helps[name]
            values = {(protocol,): counts[name] for protocol, counts in traffic.items()}
            yield _family(CounterMetricFamily, metric, help_text, ("protocol",), values)
        yield _family(CounterMetricFamily, "messages_dropped",
                      "Messages dropped, by reason (full backlogs, expiry and the like).",
                      ("reason",), {(reason,): n for reason, n in broker.drops.items()})
        yield CounterMetricFamily(PREFIX + "retained_refused", "Retained messages not stored: "
                                  "max_retained_messages or max_retained_bytes reached.",
                                  broker.retained_bound.refused)

    def _state(self) -> Iterator[Metric]:
        broker = self.broker
        sessions = broker.sessions
        yield _gauge("sessions", "Sessions (connected or not).", len(sessions))
        yield _gauge("sessions_disconnected", "Sessions without a connection.",
                     sum(1 for session in sessions.values() if session.link is None))
        yield CounterMetricFamily(PREFIX + "sessions_expired", "Sessions ended by expiry.",
                                  broker.stats.sessions_expired)
        yield _gauge("subscriptions", "MQTT subscriptions of every session.",
                     sum(len(session.subscriptions) for session in sessions.values()))
        yield _gauge("retained_messages", "Retained messages.", len(broker.retained))
        yield _gauge("retained_bytes", "Payload bytes of the retained messages.",
                     broker.retained.size)
        yield _gauge("delayed_messages", "Delayed messages waiting until they are due.",
                     len(broker.delayed))
        yield _gauge("delayed_bytes", "Payload bytes of the delayed messages.",
                     broker.delayed.bytes)
        backlog = held(sessions.values(), [*broker.queues, *private_queues(broker.stats)])
        yield _gauge("messages_queued", "Messages waiting for delivery (MQTT sessions' queues, "
                     "ready messages of queues).", backlog.queued)
        yield _gauge("messages_inflight", "Messages delivered and not yet acknowledged.",
                     backlog.inflight)
        yield _gauge("messages_held_bytes", "Payload bytes of queued and in-flight messages.",
                     backlog.bytes)

    def _queues(self) -> Iterator[Metric]:
        queues = list(self.broker.queues)
        for name, help_text, attribute in (
            ("queue_messages_ready", "Messages ready for delivery, per named queue.",
             "message_count"),
            ("queue_messages_unacknowledged", "Messages delivered and not yet acknowledged, "
             "per named queue.", "unacked_count"),
            ("queue_consumers", "Consumers, per named queue.", "consumer_count"),
        ):
            yield _family(GaugeMetricFamily, name, help_text, ("queue",),
                          {(queue.name,): getattr(queue, attribute) for queue in queues})
        for name, help_text, attribute in (
            ("queue_messages_published", "Messages taken into the named queue.", "published"),
            ("queue_messages_delivered", "Messages handed to the named queue's consumers "
             "(redeliveries too).", "delivered"),
            ("queue_messages_acknowledged", "Deliveries of the named queue acknowledged.",
             "acknowledged"),
        ):
            yield _family(CounterMetricFamily, name, help_text, ("queue",),
                          {(queue.name,): getattr(queue, attribute) for queue in queues})

    def _runtime(self) -> Iterator[Metric]:
        broker = self.broker
        stats = broker.stats
        yield _gauge("start_time_seconds", "When the broker started (seconds since the epoch).",
                     stats.started)
        yield _gauge("event_loop_lag_seconds", "How late the last periodic wake-up of the "
                     "event loop came (time other work held the loop).", stats.loop_lag)
        yield _gauge("event_loop_lag_max_seconds", "The longest event loop lag measured.",
                     stats.loop_lag_max)
        store = getattr(broker.durability, "store", None)  # None: nothing stored
        size = store.stats().total_bytes if store is not None else 0
        yield _gauge("store_bytes", "Bytes of the store's segment files.", size)
        histogram = stats.fsync_seconds
        buckets = [(_le(bound), count) for bound, count in histogram.cumulative()]
        yield HistogramMetricFamily(PREFIX + "store_fsync_seconds",
                                    "How long each fsync of the store took.",
                                    buckets=buckets, sum_value=histogram.sum)


def registry_for(broker: Broker) -> CollectorRegistry:
    """A registry holding only this broker's collector (not the process-wide default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker))
    return registry


def exposition(broker: Broker, accept: str | None = None) -> tuple[bytes, str]:
    """The body and content type of ``GET /metrics``: the text format, or OpenMetrics
    when the scraper's ``Accept`` header asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry_for(broker)), content_type


def _family(kind: type, name: str, help_text: str, labels: tuple[str, ...],
            values: Mapping[Any, float]) -> Metric:
    """A labelled family; ``values`` maps each tuple of label values to its value."""
    family = kind(PREFIX + name, help_text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return cast(Metric, family)


def _gauge(name: str, help_text: str, value: float) -> Metric:
    return GaugeMetricFamily(PREFIX + name, help_text, value)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)

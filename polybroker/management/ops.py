"""What the management API reads and does on a running broker, as plain functions.

Each takes the ``RunningBroker`` and returns JSON-ready dicts and lists; the HTTP layer
only maps arguments in and errors out: ``NotFound`` (404) and ``Invalid`` (400), each
with a one-line message naming the thing. Reads are plain functions; what changes
durable state is ``async``: it returns once its records are on disk, as a client's
acknowledgement would. The API user is an administrator: no ACL applies.
"""

import base64
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .. import stats as stats_module
from ..message import Message
from ..protocols.mqtt.topics import is_valid_topic_filter, is_valid_topic_name
from ..queues import Queue
from ..server import RunningBroker
from ..sessions import Session
from ..stats import PROTOCOLS, ConnectionInfo

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# How long a changing operation waits for its records to reach the disk.
DURABLE_TIMEOUT = 10.0

Json = dict[str, Any]


class NotFound(Exception):
    """No such client, queue or retained message (HTTP 404)."""


class Invalid(Exception):
    """A request that cannot be carried out as asked (HTTP 400)."""


# -- the broker as a whole ----------------------------------------------------------------


def overview(running: RunningBroker) -> Json:
    """Counts at a glance: uptime, clients, sessions, subscriptions, queues, retained
    messages, traffic and drops."""
    broker = running.broker
    stats = broker.stats
    traffic = stats.traffic()
    return {
        "version": stats_module.broker_version(),
        "started": stats.started,
        "uptime": round(stats_module.uptime(stats), 3),
        "connections": len(stats.live),
        "connections_by_protocol": {p: _count(stats, p) for p in PROTOCOLS},
        "connections_by_transport": _by_transport(stats),
        "sessions": len(broker.sessions),
        "subscriptions": sum(len(s.subscriptions) for s in broker.sessions.values()),
        "queues": len(broker.queues),
        "retained_messages": len(broker.retained),
        "retained_bytes": broker.retained.size,
        "store_bytes": _store_bytes(running),
        "messages_in": sum(t["messages_in"] for t in traffic.values()),
        "messages_out": sum(t["messages_out"] for t in traffic.values()),
        "bytes_in": sum(t["bytes_in"] for t in traffic.values()),
        "bytes_out": sum(t["bytes_out"] for t in traffic.values()),
        "dropped": dict(broker.drops),
        "traffic": traffic,
    }


def listeners(running: RunningBroker) -> list[Json]:
    return [{
        "url": listener.config.url,
        "protocol": listener.config.protocol,
        "transport": listener.config.transport,
        "host": listener.config.host,
        "port": listener.config.port,
        "tls": listener.tls is not None,
        "connections": listener.connections,
    } for listener in running.bound]


def health(running: RunningBroker) -> Json:
    """``live``: the process answers; ``ready``: the store is restored and every
    listener is bound and accepting."""
    return {"live": True, "ready": running.ready}


# -- clients ------------------------------------------------------------------------------


def clients(running: RunningBroker, *, offset: int = 0, limit: int = DEFAULT_LIMIT,
            protocol: str | None = None, search: str | None = None) -> Json:
    """A page of the connected clients, oldest first, filtered by protocol and by a
    substring of their id; ``total`` counts every match."""
    matching = list(_matching(running, protocol, search))
    offset, limit = _page(offset, limit)
    return {"total": len(matching), "offset": offset, "limit": limit,
            "items": [_client_summary(info) for info in matching[offset:offset + limit]]}


def client(running: RunningBroker, client_id: str) -> Json:
    """One connected client, with its subscriptions, queued and in-flight counts; or a
    disconnected MQTT client's session."""
    info = running.broker.stats.find(client_id)
    if info is not None:
        detail = _client_summary(info)
        detail["subscriptions"] = _subscriptions_of(info)
        if info.session is not None:
            detail.update(_session_counts(info.session))
        return detail
    session = running.broker.sessions.get(client_id)
    if session is None:
        raise NotFound(f"no client {client_id!r}")
    return {"id": client_id, "protocol": "mqtt", "connected": False,
            **_session_counts(session), "subscriptions": _session_subscriptions(session)}


def disconnect(running: RunningBroker, client_id: str, *, discard_session: bool = False) -> Json:
    """Close a client's connection (reason ``kicked``); ``discard_session`` ends its MQTT
    session too (a disconnected client's session can only be discarded)."""
    broker = running.broker
    info = broker.stats.find(client_id)
    if info is not None:
        broker.close_connection(info.connection, discard_session)
        return {"id": client_id, "disconnected": True, "session_discarded": discard_session}
    session = broker.sessions.get(client_id)
    if session is None or not discard_session:
        raise NotFound(f"no connected client {client_id!r}")
    broker.discard_session(session)
    return {"id": client_id, "disconnected": False, "session_discarded": True}


def disconnect_many(running: RunningBroker, *, ids: Iterable[str] | None = None,
                    protocol: str | None = None, search: str | None = None,
                    discard_session: bool = False) -> Json:
    """Close every connected client named in ``ids``, or matching the filters; at least
    one of them must be given (Invalid otherwise: no accidental kick of everyone)."""
    if ids is None and protocol is None and not search:
        raise Invalid("disconnect many: give ids, a protocol or a search")
    chosen = list(_matching(running, protocol, search))
    if ids is not None:
        wanted = set(ids)
        chosen = [info for info in chosen if info.id in wanted]
    for info in chosen:
        running.broker.close_connection(info.connection, discard_session)
    return {"disconnected": [info.id for info in chosen]}


def subscriptions(running: RunningBroker, *, offset: int = 0, limit: int = DEFAULT_LIMIT,
                  client_id: str | None = None) -> Json:
    """Every subscription: MQTT sessions' (connected or not), STOMP and AMQP consumers."""
    rows: list[Json] = []
    broker = running.broker
    for session in broker.sessions.values():
        if client_id is None or client_id == session.client_id:
            rows += ({"client": session.client_id, **row}
                     for row in _session_subscriptions(session))
    for info in broker.stats:
        if info.protocol != "mqtt" and client_id in (None, info.id):
            rows += ({"client": info.id, **row} for row in _subscriptions_of(info))
    offset, limit = _page(offset, limit)
    return {"total": len(rows), "offset": offset, "limit": limit,
            "items": rows[offset:offset + limit]}


# -- named queues -------------------------------------------------------------------------


def queues(running: RunningBroker) -> list[Json]:
    return [_queue_summary(queue) for queue in running.broker.queues]


def queue(running: RunningBroker, name: str) -> Json:
    return _queue_summary(_queue(running, name))


async def purge_queue(running: RunningBroker, name: str) -> Json:
    """Drop the queue's ready messages (not those delivered and unacknowledged)."""
    queue = _queue(running, name)
    broker = running.broker
    with broker.storing():
        count = queue.purge()
    await _durable(running)
    return {"queue": name, "purged": count}


async def delete_queue(running: RunningBroker, name: str) -> Json:
    """Delete the queue with its messages; its consumers are told (AMQP basic.cancel,
    STOMP ERROR), as when a client deletes it."""
    _queue(running, name)
    broker = running.broker
    with broker.storing():
        count = broker.queues.delete_queue(name)
    await _durable(running)
    return {"queue": name, "deleted": True, "messages": count}


# -- retained messages --------------------------------------------------------------------


def retained(running: RunningBroker, topic_filter: str = "#", *, offset: int = 0,
             limit: int = DEFAULT_LIMIT) -> Json:
    """A page of the retained messages matching ``topic_filter``, by topic."""
    if not is_valid_topic_filter(topic_filter):
        raise Invalid(f"invalid topic filter {topic_filter!r}")
    messages = sorted(running.broker.retained.match(topic_filter),
                      key=lambda m: m.topic)
    offset, limit = _page(offset, limit)
    return {"total": len(messages), "offset": offset, "limit": limit,
            "items": [_message(m, payload=False) for m in messages[offset:offset + limit]]}


def retained_message(running: RunningBroker, topic: str) -> Json:
    message = running.broker.retained.get(topic)
    if not isinstance(message, Message):
        raise NotFound(f"no retained message on {topic!r}")
    return _message(message)


async def delete_retained(running: RunningBroker, topic: str) -> Json:
    """Clear a topic's retained message, recorded in the store as a client's clear is
    (without sending an empty message to the subscribers)."""
    broker = running.broker
    with broker.storing():
        if not broker.retained.clear(topic):
            raise NotFound(f"no retained message on {topic!r}")
        broker.journal.retained_cleared(topic)
    await _durable(running)
    return {"topic": topic, "deleted": True}


# -- publishing ---------------------------------------------------------------------------


async def publish(running: RunningBroker, topic: str, payload: bytes | str, *, qos: int = 0,
                  retain: bool = False) -> Json:
    """Publish as a client would (retained store, routing to every protocol's
    subscribers and queues); returns once what it stored is on disk."""
    if not isinstance(topic, str) or not is_valid_topic_name(topic) or "\0" in topic:
        raise Invalid(f"invalid topic {topic!r}")
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise Invalid(f"invalid qos {qos!r}: 0, 1 or 2")
    if isinstance(payload, str):
        payload = payload.encode()
    message = Message(topic, bytes(payload), qos=qos, retain=bool(retain),
                      origin_protocol="api", origin_client="$api")
    broker = running.broker
    with broker.storing():
        result = broker.publish(message)
    await _durable(running)
    return {"topic": topic, "matched": result.matched, "dropped": result.dropped}


# -- helpers ------------------------------------------------------------------------------


def _matching(running: RunningBroker, protocol: str | None,
              search: str | None) -> Iterator[ConnectionInfo]:
    if protocol is not None and protocol not in PROTOCOLS:
        raise Invalid(f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    for info in sorted(running.broker.stats, key=lambda i: i.since):
        if protocol is not None and info.protocol != protocol:
            continue
        if search and search not in info.id:
            continue
        yield info


def _page(offset: int, limit: int) -> tuple[int, int]:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise Invalid(f"invalid offset {offset!r}: a whole number from 0")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"invalid limit {limit!r}: from 1 to {MAX_LIMIT}")
    return offset, limit


def _count(stats: stats_module.Stats, protocol: str) -> int:
    return sum(1 for info in stats.live.values() if info.protocol == protocol)


def _by_transport(stats: stats_module.Stats) -> dict[str, int]:
    counts: dict[str, int] = {}
    for info in stats.live.values():
        counts[info.transport] = counts.get(info.transport, 0) + 1
    return counts


def _store_bytes(running: RunningBroker) -> int:
    store = getattr(running.broker.durability, "store", None)  # None: nothing stored
    return int(store.stats().total_bytes) if store is not None else 0


def _client_summary(info: ConnectionInfo) -> Json:
    queued, inflight = stats_module.backlog_of(info)
    return {
        "id": info.id, "protocol": info.protocol, "transport": info.transport,
        "listener": info.listener, "peer": info.peer, "user": info.user,
        "connected": True, "connected_since": info.since,
        "connected_for": round(time.time() - info.since, 3),
        "messages_in": info.messages_in, "messages_out": info.messages_out,
        "bytes_in": info.bytes_in, "bytes_out": info.bytes_out,
        "subscription_count": len(_subscriptions_of(info)),
        "queued": queued, "inflight": inflight,
    }


def _subscriptions_of(info: ConnectionInfo) -> list[Json]:
    if isinstance(info.session, Session):
        return _session_subscriptions(info.session)
    return stats_module.consumers_of(info)


def _session_subscriptions(session: Session) -> list[Json]:
    return [{"filter": topic_filter, "qos": options.qos}
            for topic_filter, options in session.subscriptions.items()]


def _session_counts(session: Session) -> Json:
    return {"queued": len(session.queued), "inflight": len(session.inflight),
            "expiry_interval": session.expiry_interval, "dropped": dict(session.drops)}


def _queue(running: RunningBroker, name: str) -> Queue:
    queue = running.broker.queues.get(name)
    if queue is None:
        raise NotFound(f"no queue {name!r}")
    return queue


def _queue_summary(queue: Queue) -> Json:
    return {
        "name": queue.name, "durable": queue.durable, "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete, "ready": queue.message_count,
        "unacknowledged": queue.unacked_count, "consumers": queue.consumer_count,
        "bytes": queue.bytes, "dropped": dict(queue.drops.counts),
    }


def _message(message: Message, payload: bool = True) -> Json:
    out: Json = {"topic": message.topic, "qos": message.qos, "size": len(message.payload),
                 "content_type": message.content_type}
    if payload:
        try:
            out["payload"] = message.payload.decode()
        except UnicodeDecodeError:
            out["payload"] = None  # not text: read payload_base64
        out["payload_base64"] = base64.b64encode(message.payload).decode()
    return out


async def _durable(running: RunningBroker) -> None:
    if not await running.broker.durability.wait_durable(DURABLE_TIMEOUT):
        raise TimeoutError("storage did not confirm in time")

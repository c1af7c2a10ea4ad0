"""History for an MQTT 5.0 subscription, read from a stream.

A SUBSCRIBE carrying the user property ``x-stream`` (a stream's name) and optionally
``x-stream-offset`` (``first``, ``last``, ``next``, an offset, ``offset=N``,
``timestamp=SECONDS``, an interval such as ``1h``; default ``first``) asks for the
messages the stream holds from that offset: each of its non-shared filters gets, after
SUBACK and the retained messages, the stream's messages from the offset up to the end
the stream had when the SUBSCRIBE came, those whose topic the filter matches, at the
lower of the granted and the message's QoS, not flagged retained. Live messages arrive
through the subscription itself as ever, so nothing comes twice.

The replay goes at the session's pace: it reads on while the session has room
(``Session.has_room``), at most ``BATCH`` messages per turn of the broker's timers, and
looks again ``PAUSE`` seconds later when the session is full. It stops when it reaches
its end, when the session is gone or taken over, or when the stream is deleted.

Refused, with one log line and no replay (the subscription itself stands): a stream the
client may not read (``Security.may_read_queue``), an unknown one, a bad offset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .auth import Client
from .auth.filters import filter_matches
from .broker import Broker
from .sessions import Session
from .shared import split_shared_filter
from .streams import StreamQueue, parse_offset

__all__ = ["BATCH", "PAUSE", "replay_history"]

log = logging.getLogger("polybroker.streams")

BATCH = 256  # messages per turn
PAUSE = 0.02  # seconds before looking again at a full session
TURN = 0.001  # seconds between two turns (a timer due at once would run in the same turn)
STREAM_PROPERTY, OFFSET_PROPERTY = "x-stream", "x-stream-offset"


def replay_history(
    broker: Broker, session: Session, client: Client,
    user_properties: Iterable[tuple[str, str]], granted: Iterable[tuple[str, int]],
    subscription_id: int | None = None,
) -> int:
    """Start replays for the ``granted`` (filter, QoS) pairs of one SUBSCRIBE if its user
    properties ask for one; return how many started."""
    properties = dict(user_properties)
    name = properties.get(STREAM_PROPERTY)
    if name is None:
        return 0
    stream = broker.queues.get(name)
    if not isinstance(stream, StreamQueue):
        log.warning("client %s: no history: %r is no stream", session.client_id, name)
        return 0
    if not broker.security.may_read_queue(client, name):
        log.warning("client %s: no history: reading stream %s refused", session.client_id,
                    name)
        return 0
    try:
        offset = parse_offset(properties.get(OFFSET_PROPERTY, "first"))
    except ValueError as exc:
        log.warning("client %s: no history: %s", session.client_id, exc)
        return 0
    start = offset.resolve(stream.log, stream.backend.wall_clock())
    count = 0
    for topic_filter, qos in granted:
        if split_shared_filter(topic_filter) is None:
            _Replay(broker, stream, session, topic_filter, qos, subscription_id, start).step()
            count += 1
    return count


class _Replay:
    """One filter's replay, driven by the broker's timers."""

    __slots__ = ("broker", "cursor", "end", "ids", "qos", "session", "stream", "topic_filter")

    def __init__(self, broker: Broker, stream: StreamQueue, session: Session,
                 topic_filter: str, qos: int, subscription_id: int | None, start: int) -> None:
        self.broker = broker
        self.stream = stream
        self.session = session
        self.topic_filter = topic_filter
        self.qos = qos
        self.ids = (subscription_id,) if subscription_id else ()
        self.cursor = stream.log.cursor(start)
        self.end = stream.log.next_offset
        log.info("client %s: history of %s from stream %s, offsets %d to %d",
                 session.client_id, topic_filter, stream.name, start, self.end - 1)

    def _live(self) -> bool:
        session = self.session
        return (not self.stream.deleted and self.broker.sessions.get(session.client_id)
                is session and self.topic_filter in session.subscriptions)

    def step(self) -> None:
        if not self._live():
            return
        decode, session, cursor = self.stream.backend.decode, self.session, self.cursor
        sent = 0
        while sent < BATCH:
            want = min(BATCH - sent, self.end - cursor.offset)
            batch = cursor.read(want) if want > 0 else []
            if not batch:
                return  # the end: done
            for offset, _timestamp, value, _size in batch:
                if offset >= self.end:
                    return
                if not session.has_room():
                    cursor.seek(offset)
                    self.broker.timers.call_later(PAUSE, self.step)
                    return
                message = decode(value)
                if filter_matches(self.topic_filter, message.topic):
                    session.deliver(message, min(self.qos, message.qos), False, self.ids)
                sent += 1
        self.broker.timers.call_later(TURN, self.step)  # the next turn, after other work

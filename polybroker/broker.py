"""The broker core: sessions, queues, exchanges, routing and retained messages. No I/O, no
protocol bytes.

Adapters call into it synchronously; deliveries come back out through each
session's link, which buffers bytes for its connection's writer task. Deadlines
(session expiry, delayed wills) run on ``timers``, driven by one trio task.

Every change to durable state is told to ``journal``, and ``durability`` says when what
was recorded is on disk, so that connections acknowledge nothing before: interfaces of the
core (``journal``) that ``persistence`` implements over the store; the defaults keep
nothing.
"""

import dataclasses
import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import trio

from .auth import Authenticator, Security
from .config import BrokerConfig
from .delayed import DELAYED_PREFIX, EXCHANGE, QUEUE, DelayedStore, Pending, split_delayed_topic
from .exchanges import ExchangeRegistry
from .journal import AlwaysDurable, Durability, Journal, Storing
from .limits import RetainedBound
from .message import Message
from .overflow import NOTHING_MATCHED, PublishResult, all_taken
from .queue_registry import QueueRegistry
from .queues import QUEUE_OVERFLOW, Queue
from .retained import RetainedStore
from .router import Subscriber, TopicTrie
from .sessions import NEVER_EXPIRES, Session, SessionLink, SubscriptionOptions
from .shared import SharedGroup, split_shared_filter
from .stats import ConnectionInfo, Stats
from .timers import TimerHandle, Timers

log = logging.getLogger("polybroker.broker")

ANY_QOS = SubscriptionOptions(qos=2)  # how a shared group sits in the trie


class Closable(Protocol):
    def close_for_shutdown(self) -> None: ...

    def close_by_administrator(self) -> None: ...


class Remote(Protocol):
    """Other brokers that share the traffic (``polybroker.cluster``, plugged in by the
    server): told every message routed here and every change of the filters subscribed
    here. Both calls must return at once: they sit on the publish and subscribe paths."""

    def publish(self, message: Message) -> None: ...

    def filter_changed(self, topic_filter: str, subscribed: bool) -> None: ...


class Broker:
    def __init__(
        self, config: BrokerConfig | None = None, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.config = config or BrokerConfig()
        self.limits = self.config.limits
        self.clock = clock
        # What operators see: live connections and the broker-wide counters.
        self.stats = Stats()
        # Messages dropped for full backlogs (and the like), per reason, broker-wide.
        self.drops: Counter[str] = Counter()
        self.timers = Timers(clock)
        self.router: TopicTrie[Subscriber, SubscriptionOptions] = TopicTrie()
        self.retained: RetainedStore[Message] = RetainedStore(size_of=_payload_size)
        # The broker's own $SYS topics (``sys_topics``), retained apart from the clients'
        # messages: max_retained_* do not count them and they are never stored.
        self.sys_retained: RetainedStore[Message] = RetainedStore(size_of=_payload_size)
        self.retained_bound = RetainedBound(
            self.limits.max_retained_messages, self.limits.max_retained_bytes, log
        )
        self.sessions: dict[str, Session] = {}
        self.shared_groups: dict[tuple[str, str], SharedGroup] = {}
        # Named queues (STOMP /queue/x, AMQP queues) and AMQP's exchanges in front of them.
        # Their broker-wide bound (max_queue_length, _bytes) follows queue_overflow too.
        self.queues = QueueRegistry(
            clock, max_length=self.limits.max_queue_length,
            max_bytes=self.limits.max_queue_bytes, timers=self.timers,
            overflow=QUEUE_OVERFLOW[self.limits.queue_overflow], drop_totals=self.drops,
        )
        self.exchanges = ExchangeRegistry(self)
        self.queues.on_deleted.append(self.exchanges.queue_deleted)
        self.queues.dead_letterer = self.exchanges.dead_letter
        # MQTT 5.0 enhanced authentication methods by name.
        self.authenticators: dict[str, Authenticator] = {}
        # Logins and access rights ([auth]: password file, ACL file); ConfigError if broken.
        self.security = Security.load(self.config.auth)
        # Open client connections (any protocol), told to close on shutdown.
        self.connections: set[Closable] = set()
        self._all_closed: trio.Event | None = None
        # When a lingering close (``adapters.io.linger``) must end at the latest: set by
        # ``shutdown`` to half its grace, leaving the other half for the closes.
        self.linger_deadline = math.inf
        # In memory only until ``durability.open_durable_state`` attaches the store.
        self.journal: Journal = Journal()
        self.durability: Durability = AlwaysDurable()
        # Messages held until they are due (``delayed``): $delayed/ topics, STOMP delay
        # headers, AMQP x-delayed-message exchanges.
        self.delayed = DelayedStore(self)
        # Other nodes of a cluster (``attach_remote``); None: this process alone.
        self.remote: Remote | None = None

    def attach_remote(self, remote: Remote) -> None:
        """From now on tell ``remote`` what is published and subscribed here, starting
        with the filters subscribed already (restored sessions)."""
        self.remote = remote
        self.router.watch = remote.filter_changed
        for topic_filter in self.router.filters():
            remote.filter_changed(topic_filter, True)

    def detach_remote(self) -> None:
        self.remote = None
        self.router.watch = None

    # -- connections ----------------------------------------------------------------------

    def connection_opened(self, connection: "Closable") -> ConnectionInfo:
        """Register a connection; the adapter counts its traffic in what this returns."""
        self.connections.add(connection)
        return self.stats.opening(connection, _protocol_of(connection),
                                  getattr(connection, "peer", "?"))

    def connection_closed(self, connection: "Closable") -> None:
        self.connections.discard(connection)
        self.stats.closing(connection)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def shutdown(self, grace: float) -> None:
        """Ask every connection to close (MQTT 5.0 clients are told why), and wait up to
        ``grace`` seconds for them to finish."""
        self._all_closed = trio.Event()
        self.linger_deadline = trio.current_time() + grace / 2
        for connection in list(self.connections):
            connection.close_for_shutdown()
        if self.connections:
            with trio.move_on_after(grace):
                await self._all_closed.wait()

    def close_connection(self, connection: "Closable", discard_session: bool = False) -> None:
        """Close a client's connection for the operator (``kicked``); with
        ``discard_session`` its session ends with it instead of waiting for it."""
        info = self.stats.live.get(connection)
        session = info.session if info is not None else None
        if discard_session and isinstance(session, Session):
            session.expiry_interval = 0  # close_session then discards it
        connection.close_by_administrator()

    # -- sessions -------------------------------------------------------------------------

    @staticmethod
    def generate_client_id() -> str:
        return "auto-" + uuid.uuid4().hex

    def open_session(
        self, client_id: str, clean: bool, expiry_interval: int = NEVER_EXPIRES
    ) -> tuple[Session, bool]:
        """Find or create the client's session; return it and whether it already existed.

        A connection already holding the session is told to close (takeover,
        [MQTT-3.1.4-2]). ``clean`` discards any previous state [MQTT-3.1.2-6]. A
        pending delayed will of the session is cancelled [MQTT-3.1.3-9]. The caller
        answers its client, then binds its link with ``Session.attach`` (which resends
        what is unacknowledged, so it must come after CONNACK).
        """
        session = self.sessions.get(client_id)
        if session is not None and session.link is not None:
            previous = session.link
            session.detach()
            log.info("client %s: session taken over by a new connection", client_id)
            previous.session_taken_over()
        if session is not None:
            _cancel(session.will_timer)
            _cancel(session.expiry_timer)
            session.will_timer = session.expiry_timer = None
        # A clean session (expiry 0) lasts as long as its connection, which a takeover
        # ends: the new connection never resumes it [MQTT-3.1.2-6].
        if session is not None and (clean or session.expiry_interval == 0):
            self.discard_session(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, self.limits, self.clock, expiry_interval, self.drops)
            self.sessions[client_id] = session
        session.expiry_interval = expiry_interval
        self.journal.session_opened(session)
        return session, present

    def close_session(
        self,
        session: Session,
        link: SessionLink | None,
        will: Message | None = None,
        will_delay: int = 0,
    ) -> None:
        """The connection behind ``link`` ended: publish or schedule its will, and end the
        session now or when its expiry interval has passed. (``link`` None: a session
        no connection holds.)"""
        if session.link is not link:
            return  # already taken over by another connection
        session.detach()
        for delivery in session.take_shared_deliveries():
            group = delivery.group
            if group is None:
                continue  # not taken: only shared deliveries are
            member = group.choose(exclude=session)
            if member is not None:
                group.deliver_to(member, delivery.message)
        interval = session.expiry_interval
        if will is not None:
            if will_delay <= 0 or interval == 0:
                self.publish(will)
            else:
                delay = min(will_delay, interval)
                session.will_timer = self.timers.call_later(
                    delay, lambda: self._publish_will(session, will)
                )
        if interval == 0:
            self.discard_session(session)
            return
        self.journal.session_closed(session)
        if interval != NEVER_EXPIRES:
            self.expire_later(session, interval)

    def expire_later(self, session: Session, delay: float) -> None:
        session.expiry_timer = self.timers.call_later(delay, lambda: self._expire(session))

    def _publish_will(self, session: Session, will: Message) -> None:
        session.will_timer = None  # published once, by the delay or by the session's end
        self.publish(will)

    def _expire(self, session: Session) -> None:
        if session.link is None and self.sessions.get(session.client_id) is session:
            log.info("client %s: session expired", session.client_id)
            self.stats.sessions_expired += 1
            self.discard_session(session)

    def discard_session(self, session: Session) -> None:
        """End a session now: its subscriptions, its delayed will (published now), its
        records."""
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)
        if session.will_timer is not None:
            # The session ends before the will delay: the will goes out now [MQTT-3.1.3-9].
            callback = session.will_timer.callback
            session.will_timer.cancel()
            session.will_timer = None
            callback()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        self.journal.session_discarded(session)
        session.end_blocking()  # publishers waiting for its room go on

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, options: SubscriptionOptions) -> bool:
        """Add or replace a subscription [MQTT-3.8.4-3]; return whether it existed."""
        existed = topic_filter in session.subscriptions
        session.subscriptions[topic_filter] = options
        self.journal.subscription_set(session, topic_filter, options)
        shared = split_shared_filter(topic_filter)
        if shared is None:
            self.router.add(topic_filter, session, options)
            return existed
        group = self.shared_groups.get(shared)
        if group is None:
            group = self.shared_groups[shared] = SharedGroup(*shared)
            self.router.add(group.topic_filter, group, ANY_QOS)
        group.members[session] = options
        return existed

    def send_retained(self, session: Session, topic_filter: str, qos: int) -> None:
        """Deliver the retained messages matching a new subscription, flagged retained.

        Not for shared subscriptions, which receive no retained messages on subscribe.
        """
        if split_shared_filter(topic_filter) is not None:
            return
        options = session.subscriptions.get(topic_filter)
        ids = (options.subscription_id,) if options and options.subscription_id else ()
        matching = self.retained.match(topic_filter)
        if topic_filter.startswith("$"):  # only such a filter matches a $SYS topic
            matching += self.sys_retained.match(topic_filter)
        for message in matching:
            session.deliver(message, min(qos, message.qos), True, ids)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        self.journal.subscription_removed(session, topic_filter)
        shared = split_shared_filter(topic_filter)
        if shared is None:
            self.router.remove(topic_filter, session)
            return True
        group = self.shared_groups[shared]
        del group.members[session]
        if not group.members:
            self.router.remove(group.topic_filter, group)
            del self.shared_groups[shared]
        return True

    def topic_queue(self, name: str, topic_filter: str) -> Queue:
        """A private queue that the messages on ``topic_filter`` are routed into (a STOMP
        /topic subscription), bounded like a session's backlog."""
        limits = self.limits
        queue = Queue(
            name, clock=self.clock, max_length=limits.max_queued_messages,
            max_bytes=limits.max_queued_bytes, overflow=QUEUE_OVERFLOW[limits.queue_overflow],
            drop_totals=self.drops,
        )
        self.router.add(topic_filter, queue, ANY_QOS)
        return queue

    def end_topic_queue(self, topic_filter: str, queue: Queue) -> None:
        """Route nothing more into a ``topic_queue``."""
        self.router.remove(topic_filter, queue)

    # -- publishing -----------------------------------------------------------------------

    def storing(self, atomic: bool = False) -> Storing:
        """Around the core calls of one client request: raises ``journal.StoreFull`` at
        its end if a record could not be written (the state is kept in memory all the
        same: refuse the client). ``atomic``: its records survive a crash all together or
        not at all."""
        return Storing(self.journal, atomic)

    def publish(self, message: Message) -> PublishResult:
        """Store it if retained (an empty payload clears; a new topic beyond the retained
        bounds is not stored), then route it to subscribers; return what came of it. A
        ``$delayed/{seconds}/{topic}`` message is held until due (``delayed``), retained
        flag and all; the caller checked the real topic (``Security.may_publish``)."""
        if message.topic.startswith(DELAYED_PREFIX):
            return self._publish_delayed(message)
        if message.retain:
            if message.payload:
                if self.retained_bound.admits(self.retained, message):
                    self.retained.set(message.topic, message)
                    self.journal.retained_set(message)
            elif self.retained.clear(message.topic):
                self.journal.retained_cleared(message.topic)
        return self.route(message)

    def _publish_delayed(self, message: Message) -> PublishResult:
        parsed = split_delayed_topic(message.topic)
        if parsed is None:  # may_publish refuses these: a caller that did not ask
            log.info("client %s: malformed delayed topic %s: message dropped",
                     message.origin_client, message.topic)
            return NOTHING_MATCHED
        seconds, topic = parsed
        message = dataclasses.replace(message, topic=topic, wire_cache={})
        return self.delayed.schedule(message, seconds, client=message.origin_client or "?")

    def deliver_delayed(self, pending: Pending) -> None:
        """A delayed message is due: publish it to its target, as if published now (its
        message expiry still counts from when it was first published)."""
        message, target = pending.message, pending.target
        if target.kind == QUEUE:
            self.queues.declare(target.name).offer(message, 1, persistent=target.persistent)
        elif target.kind == EXCHANGE:
            self.exchanges.deliver_delayed(target.name, target.routing_key, message)
        else:
            self.publish(message)

    def route(self, message: Message) -> PublishResult:
        """Deliver to every matching subscriber once, here and (``remote``) on the other
        nodes of a cluster; return what came of it here (how many matched, how many
        dropped it, which backlogs are full)."""
        if self.remote is not None:
            self.remote.publish(message)
        return self.route_local(message)

    def route_local(self, message: Message) -> PublishResult:
        """``route`` to the subscribers of this node only (a message from another node)."""
        matches = self.router.match(message.topic)
        if not matches:
            return NOTHING_MATCHED
        qos = message.qos
        origin = message.origin_client if message.origin_protocol == "mqtt" else None
        if len(matches) == 1:
            result = None
            count = 0
            for subscriber, options in matches[0].items():
                if options.no_local and subscriber.client_id == origin:
                    continue  # [MQTT-3.8.3-3]
                retain = message.retain and options.retain_as_published
                ids = (options.subscription_id,) if options.subscription_id else ()
                outcome = subscriber.deliver(message, min(options.qos, qos), retain, ids)
                if outcome:  # not TAKEN: rare, so the common case allocates nothing
                    if result is None:
                        result = PublishResult()
                    _note(result, outcome, subscriber)
                count += 1
            if result is None:
                return all_taken(count)
            result.matched = count
            return result
        return self._route_overlapping(message, matches, origin)

    def _route_overlapping(
        self, message: Message, matches: list[dict[Subscriber, SubscriptionOptions]],
        origin: str | None,
    ) -> PublishResult:
        # One subscriber matched by several filters gets one copy, at the highest QoS
        # granted, with every matching subscription identifier [MQTT-3.3.4-2, -3].
        merged: dict[Subscriber, _Merged] = {}
        for subscribers in matches:
            for subscriber, options in subscribers.items():
                if options.no_local and subscriber.client_id == origin:
                    continue
                entry = merged.get(subscriber)
                if entry is None:
                    entry = merged[subscriber] = _Merged()
                entry.qos = max(entry.qos, options.qos)
                entry.retain = entry.retain or (message.retain and options.retain_as_published)
                if options.subscription_id:
                    entry.ids.append(options.subscription_id)
        result = None
        for subscriber, entry in merged.items():
            outcome = subscriber.deliver(
                message, min(entry.qos, message.qos), entry.retain, tuple(entry.ids)
            )
            if outcome:
                if result is None:
                    result = PublishResult(len(merged))
                _note(result, outcome, subscriber)
        return all_taken(len(merged)) if result is None else result


class _Merged:
    """One subscriber's subscriptions that match a topic, merged."""

    __slots__ = ("ids", "qos", "retain")

    def __init__(self) -> None:
        self.qos = -1
        self.retain = False
        self.ids: list[int] = []


def _note(result: PublishResult, outcome: int, subscriber: Subscriber) -> None:
    backlog = subscriber.backlog  # a shared group's: the member that took it
    if backlog is not None:
        result.note(outcome, backlog)


def _protocol_of(connection: object) -> str:
    """The protocol of an adapter's connection: the adapter package's name
    (polybroker.adapters.<protocol>...)."""
    parts = type(connection).__module__.split(".")
    if "adapters" in parts[:-1]:
        return parts[parts.index("adapters") + 1]
    return parts[-1]


def _payload_size(message: Message) -> int:
    return len(message.payload)


def _cancel(handle: TimerHandle | None) -> None:
    if handle is not None:
        handle.cancel()

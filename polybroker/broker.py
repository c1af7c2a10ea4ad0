"""The broker core: sessions, routing and retained messages. No I/O, no protocol bytes.

Adapters call into it synchronously; deliveries come back out through each
session's link, which buffers bytes for its connection's writer task.
"""

import logging
import uuid

from .config import BrokerConfig
from .message import Message
from .retained import RetainedStore
from .router import TopicTrie
from .sessions import Session, SessionLink, SubscriptionOptions

log = logging.getLogger("polybroker.broker")


class Broker:
    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.limits = self.config.limits
        self.router = TopicTrie()
        self.retained = RetainedStore()
        self.sessions: dict[str, Session] = {}

    # -- sessions -------------------------------------------------------------------------

    @staticmethod
    def generate_client_id() -> str:
        return "auto-" + uuid.uuid4().hex

    def open_session(self, client_id: str, clean: bool) -> tuple[Session, bool]:
        """Find or create the client's session; return it and whether it already existed.

        A connection already holding the session is told to close (takeover,
        [MQTT-3.1.4-2]). ``clean`` discards any previous state [MQTT-3.1.2-6]. The
        caller answers its client, then binds its link with ``Session.attach`` (which
        resends what is unacknowledged, so it must come after CONNACK).
        """
        session = self.sessions.get(client_id)
        if session is not None and session.link is not None:
            previous = session.link
            session.detach()
            log.info("client %s: session taken over by a new connection", client_id)
            previous.session_taken_over()
        if session is not None and clean:
            self._discard(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, persistent=not clean, limits=self.limits)
            self.sessions[client_id] = session
        session.persistent = not clean
        return session, present

    def close_session(self, session: Session, link: SessionLink) -> None:
        """The connection behind ``link`` ended; keep the session only if persistent."""
        if session.link is not link:
            return  # already taken over by another connection
        session.detach()
        if not session.persistent:
            self._discard(session)

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.router.remove(topic_filter, session)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, qos: int) -> int:
        """Add or replace a subscription [MQTT-3.8.4-3]; return the granted QoS."""
        options = SubscriptionOptions(qos=qos)
        session.subscriptions[topic_filter] = options
        self.router.add(topic_filter, session, options)
        return qos

    def send_retained(self, session: Session, topic_filter: str, qos: int) -> None:
        """Deliver the retained messages matching a new subscription, flagged retained."""
        for message in self.retained.match(topic_filter):
            session.deliver(message, min(qos, message.qos), True)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        self.router.remove(topic_filter, session)
        return True

    # -- publishing -----------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        """Store it if retained (an empty payload clears), then route it to subscribers."""
        if message.retain:
            if message.payload:
                self.retained.set(message.topic, message)
            else:
                self.retained.clear(message.topic)
        self.route(message)

    def route(self, message: Message) -> None:
        matches = self.router.match(message.topic)
        if not matches:
            return
        qos = message.qos
        if len(matches) == 1:
            for subscriber, options in matches[0].items():
                subscriber.deliver(message, min(options.qos, qos), False)
            return
        # Overlapping filters of one subscriber: deliver once, at the highest QoS granted.
        best: dict[Session, int] = {}
        for subscribers in matches:
            for subscriber, options in subscribers.items():
                if best.get(subscriber, -1) < options.qos:
                    best[subscriber] = options.qos
        for subscriber, granted in best.items():
            subscriber.deliver(message, min(granted, qos), False)

"""A bridge: a persistent local session that collects what goes out, and a reconnecting
client connection to the remote broker that drains it and brings messages back in.

The local side is an ordinary persistent session of the core (``$bridge/NAME``), subscribed
to the local filters of the "out" rules with No Local (what the bridge itself brought in
does not go back) and Retain As Published. Its QoS 1/2 messages are therefore kept in the
durable store, in order, within its bounds, resent after a reconnect or a restart and
deleted only when the remote acknowledged them. QoS 0 messages go out only while the
remote is connected (at most once: nothing is kept for them).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace

import trio

from ..auth.filters import filter_matches
from ..broker import Broker
from ..config import ConfigError
from ..message import Message
from ..protocols.mqtt import MQTTError
from ..queues import DROP_NEW
from ..sessions import NEVER_EXPIRES, Session, SubscriptionOptions
from .config import BridgeConfig, RemoteAddress
from .remote import RemoteConnection, RemoteError, client_context, open_stream, session_id
from .status import BridgeStatus

log = logging.getLogger("polybroker.bridge")

SESSION_PREFIX = "$bridge/"
OPEN_TIMEOUT = 10.0  # seconds for TCP, TLS and WebSocket set-up
_FAILURES = (RemoteError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
             trio.TooSlowError, MQTTError)


class Bridge:
    def __init__(self, broker: Broker, config: BridgeConfig) -> None:
        self.broker = broker
        self.config = config
        self.context = self._context(config)
        self.status = BridgeStatus(config.name)
        self.session = self._open_session()
        self.connection: RemoteConnection | None = None
        self.remote_filters: set[str] = set()  # subscribed at the remote
        self._scope: trio.CancelScope | None = None
        self._connection_scope: trio.CancelScope | None = None
        self._restart = False
        self._to_primary = False
        self._sys_state: bytes | None = None
        self._changed = trio.Event()
        self._publish_state()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def client_id(self) -> str:
        return self.config.client_id or f"{socket.gethostname()}.{self.config.name}"

    @staticmethod
    def _context(config: BridgeConfig) -> ssl.SSLContext | None:
        if not any(remote.tls for remote in config.remotes):
            return None
        try:
            return client_context(config.tls)
        except ConfigError as exc:
            raise ConfigError(f"bridge {config.name}: {exc}") from None

    # -- the local side ---------------------------------------------------------------------

    def _open_session(self) -> Session:
        session, present = self.broker.open_session(
            session_id(self), clean=False, expiry_interval=NEVER_EXPIRES)
        if present:
            log.info("bridge %s: %d message(s) waiting for the remote from before",
                     self.name, len(session.inflight) + len(session.queued))
        self._apply_local(session)
        return session

    def _apply_local(self, session: Session) -> None:
        """Bounds and subscriptions of the local session, as the configuration says."""
        config = self.config
        session.limits = replace(
            self.broker.limits, max_queued_messages=config.max_queued_messages,
            max_queued_bytes=config.max_queued_bytes,
            max_inflight_messages=config.max_inflight_messages, queue_overflow=DROP_NEW)
        journal = session.journal
        if journal is not None:  # on disk: the bridge's bounds within the store's
            journal.tighten_bounds(config.max_queued_messages, config.max_queued_bytes)
        wanted: dict[str, int] = {}
        for rule in config.rules:
            if rule.outbound:
                wanted[rule.local_filter] = max(rule.qos, wanted.get(rule.local_filter, 0))
        for topic_filter in list(session.subscriptions):
            if topic_filter not in wanted:
                self.broker.unsubscribe(session, topic_filter)
        for topic_filter, qos in wanted.items():
            options = SubscriptionOptions(qos, no_local=True, retain_as_published=True)
            if session.subscriptions.get(topic_filter) == options:
                continue
            if not self.broker.subscribe(session, topic_filter, options):
                # A new subscription: the remote gets the retained messages it matches.
                self.broker.send_retained(session, topic_filter, qos)

    def remote_topic(self, topic: str) -> str | None:
        """Where a local message goes at the remote (the first outbound rule it matches)."""
        for rule in self.config.rules:
            if rule.outbound and filter_matches(rule.local_filter, topic):
                return rule.remote_prefix + topic[len(rule.local_prefix):]
        return None

    def local_topic(self, topic: str) -> str | None:
        """Where a message from the remote goes here (the first inbound rule it matches)."""
        for rule in self.config.rules:
            if rule.inbound and filter_matches(rule.remote_filter, topic):
                return rule.local_prefix + topic[len(rule.remote_prefix):]
        return None

    def remote_subscriptions(self) -> dict[str, int]:
        wanted: dict[str, int] = {}
        for rule in self.config.rules:
            if rule.inbound:
                wanted[rule.remote_filter] = max(rule.qos, wanted.get(rule.remote_filter, 0))
        return wanted

    async def wait_for_state(self, state: str, url: str | None = None) -> None:
        """Return once the bridge is in ``state`` (with the remote ``url``, if given)."""
        while self.status.state != state or url not in (None, self.status.remote):
            await self._changed.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; it is looked at again after every change of
        state and every acknowledgement from the remote."""
        while not condition():
            await self._changed.wait()

    def notify(self) -> None:
        """Something an operator sees changed: wake those waiting (``wait_until``)."""
        self._changed.set()
        self._changed = trio.Event()

    def refresh_status(self) -> BridgeStatus:
        session, status = self.session, self.status
        status.backlog_messages = len(session.inflight) + len(session.queued)
        status.backlog_bytes = session.queued_bytes + sum(
            len(d.message.payload) for d in session.inflight.values())
        status.queue_full_drops = session.dropped
        return status

    # -- changes ----------------------------------------------------------------------------

    def update(self, config: BridgeConfig, context: ssl.SSLContext | None) -> None:
        """A changed configuration: new rules and bounds apply at once, and the connection
        starts again with the new settings. Waiting messages stay."""
        log.info("bridge %s: configuration changed, reconnecting", self.name)
        self.config = config
        self.context = context
        self._apply_local(self.session)
        self._restart = True
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    def remove(self) -> None:
        """The bridge is gone from the configuration: stop it and end its session (what
        still waited for the remote is dropped, and logged)."""
        if self._scope is not None:
            self._scope.cancel()
        waiting = len(self.session.inflight) + len(self.session.queued)
        log.info("bridge %s: removed (%d message(s) for the remote discarded)",
                 self.name, waiting)
        discard_session(self.broker, session_id(self))
        self._sys_state = None
        self.broker.publish(Message(self._sys_topic(), b"", retain=True,
                                    origin_protocol="internal"))

    # -- the remote side --------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, and reconnect with jittered exponential back-off, until
        cancelled (shutdown) or removed."""
        with trio.CancelScope() as self._scope:
            index, attempt, connected_before = 0, 0, False
            while True:
                remote = self.config.remotes[index]
                self._set_state("connecting", remote.url)
                reason = "cancelled"
                with trio.CancelScope() as self._connection_scope:
                    try:
                        await self._serve(remote, index, connected_before)
                    except _FAILURES as exc:
                        reason = _describe(exc)
                    except BaseExceptionGroup as group:  # from the connection's tasks
                        failures, others = group.split(_FAILURES)
                        if others is not None:
                            raise others from None
                        reason = _describe(failures if failures is not None else group)
                self._connection_scope = None
                if self.status.state == "connected":
                    connected_before = True
                    attempt = 0
                self._set_state("disconnected", remote.url, reason)
                if self._restart or self._to_primary:
                    self._restart = self._to_primary = False
                    index = 0
                    continue
                index = (index + 1) % len(self.config.remotes)
                await trio.sleep(self._backoff(attempt))
                attempt += 1

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.reconnect_max, self.config.reconnect_min * 2 ** min(attempt, 30))
        return random.uniform(delay / 2, delay)

    async def _serve(self, remote: RemoteAddress, index: int, reconnect: bool) -> None:
        with trio.fail_after(OPEN_TIMEOUT):
            stream = await open_stream(remote, self.config.tls, self.context)
        connection = RemoteConnection(self, stream, self.config.mqtt_version)
        try:
            await connection.login()
            wanted = self.remote_subscriptions()
            connection.subscribe(wanted, self.remote_filters - set(wanted))
            self.remote_filters = set(wanted)
            self.connection = connection
            if reconnect:
                self.status.reconnects += 1
            self._set_state("connected", remote.url)
            async with trio.open_nursery() as nursery:
                if index > 0:
                    nursery.start_soon(self._return_to_primary)
                await connection.run()
        finally:
            self.connection = None
            with trio.CancelScope(shield=True):
                await connection.close()

    async def _return_to_primary(self) -> None:
        """On a fail-over remote: try the first one now and then, and go back once it
        answers."""
        primary = self.config.remotes[0]
        while True:
            await trio.sleep(self.config.primary_retry)
            try:
                with trio.fail_after(OPEN_TIMEOUT):
                    stream = await open_stream(primary, self.config.tls, self.context)
            except _FAILURES:
                continue
            await trio.aclose_forcefully(stream)
            log.info("bridge %s: %s answers again, returning to it", self.name, primary.url)
            self._to_primary = True
            if self._connection_scope is not None:
                self._connection_scope.cancel()
            return

    def _set_state(self, state: str, url: str, reason: str = "") -> None:
        status = self.status
        if status.state == state and status.remote == url:
            return
        status.state, status.remote = state, url
        self.refresh_status()
        if state == "connected":
            log.info("bridge %s: connected to %s (%d message(s) waiting)",
                     self.name, url, status.backlog_messages)
        elif state == "disconnected":
            log.warning("bridge %s: disconnected from %s: %s (%d message(s) waiting)",
                        self.name, url, reason, status.backlog_messages)
        else:
            log.info("bridge %s: connecting to %s", self.name, url)
        self._publish_state()
        self.notify()

    def _sys_topic(self) -> str:
        return f"$SYS/broker/connection/{self.name}/state"

    def _publish_state(self) -> None:
        """Mosquitto's ``$SYS/broker/connection/NAME/state``: "1" connected, "0" not."""
        value = b"1" if self.status.state == "connected" else b"0"
        if value != self._sys_state:
            self._sys_state = value
            self.broker.publish(Message(self._sys_topic(), value, retain=True,
                                        origin_protocol="internal"))


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def discard_session(broker: Broker, client_id: str) -> None:
    """End a bridge's local session with everything it held."""
    session, _ = broker.open_session(client_id, clean=True, expiry_interval=0)
    broker.close_session(session, session.link)


class BridgeManager:
    """The configured bridges of a running broker; ``reload`` applies a new list."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.bridges: dict[str, Bridge] = {}
        self._nursery: trio.Nursery | None = None

    def status(self) -> list[BridgeStatus]:
        return [bridge.refresh_status() for bridge in self.bridges.values()]

    async def run(
        self, configs: tuple[BridgeConfig, ...],
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            names = {config.name for config in configs}
            for client_id in [c for c in self.broker.sessions if c.startswith(SESSION_PREFIX)]:
                if client_id[len(SESSION_PREFIX):] not in names:
                    log.info("bridge %s: no longer configured, its session ends",
                             client_id[len(SESSION_PREFIX):])
                    discard_session(self.broker, client_id)
            self.reload(configs)
            task_status.started()
            await trio.sleep_forever()

    def reload(self, configs: tuple[BridgeConfig, ...]) -> None:
        """Add, change and remove bridges (SIGHUP). ConfigError (nothing changed) if a
        new TLS setting cannot be loaded."""
        assert self._nursery is not None
        contexts = {c.name: Bridge._context(c) for c in configs
                    if c != getattr(self.bridges.get(c.name), "config", None)}
        wanted = {config.name: config for config in configs}
        for name in list(self.bridges):
            if name not in wanted:
                self.bridges.pop(name).remove()
        for name, config in wanted.items():
            bridge = self.bridges.get(name)
            if bridge is None:
                bridge = self.bridges[name] = Bridge(self.broker, config)
                self._nursery.start_soon(bridge.run)
            elif bridge.config != config:
                bridge.update(config, contexts[name])

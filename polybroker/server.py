"""Listeners: bind every configured address, run each connection up its transport stack
(TLS, WebSocket upgrade, protocol sniffing) and hand it to its protocol's adapter.
"""

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import trio

from .adapters.amqp import serve_amqp
from .adapters.mqtt import serve_mqtt
from .adapters.stomp import serve_stomp
from .auth import ScramSha256, ScramUserStore, anonymous_allowed
from .auth.security import is_loopback
from .bridge.bridge import BridgeManager
from .broker import Broker
from .config import (
    DEFAULT_PATHS,
    WEBSOCKET_TRANSPORTS,
    BrokerConfig,
    ConfigError,
    ListenerConfig,
)
from .durability import open_durable_state
from .limits import ConnectionRate, RateLimitedLog
from .management.http import Handler, serve_http
from .stats import ARRIVAL, broker_version
from .sys_topics import SysTree
from .transports.sniff import UnknownProtocol, sniff
from .transports.tls import ReloadableContext, accept_tls, certificate_identity, handshake_error
from .transports.trace import traced
from .transports.upgrade import UpgradePolicy, UpgradeRefused, accept_websocket

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

log = logging.getLogger("polybroker.server")

class ProtocolHandler(Protocol):
    """An adapter's entry point: serve one client on ``stream`` until it goes away.

    ``peer`` names the remote address for log lines; ``identity`` is the verified
    client certificate's name on listeners with ``use_identity_as_username``;
    ``allow_anonymous`` the listener's setting, for ``broker.security.login``.
    """

    async def __call__(
        self, stream: trio.abc.Stream, broker: Broker, peer: str, *,
        identity: str | None = None, allow_anonymous: bool = True,
    ) -> None: ...


# Protocol name -> adapter. A protocol joins by adding its entry here; listeners for a
# protocol without one are refused at start-up, and `auto` connections that turn out
# to speak it are closed with a log line.
PROTOCOL_HANDLERS: dict[str, ProtocolHandler] = {
    "mqtt": serve_mqtt, "stomp": serve_stomp, "amqp": serve_amqp,
}


class Listener:
    """One bound listener: its sockets, its TLS context and its open connections."""

    def __init__(self, config: ListenerConfig, broker: Broker,
                 tls: ReloadableContext | None, sockets: list[trio.SocketListener]) -> None:
        self.config = replace(config, port=sockets[0].socket.getsockname()[1])
        self.broker = broker
        self.tls = tls
        self.sockets = sockets
        self.connections = 0
        self.http: Handler | None = None  # http(s) listeners: the management API
        self._refusals = RateLimitedLog(log)  # a flood must not flood the log
        rate = self.config.max_connection_rate
        self.rate = (None if rate is None else
                     ConnectionRate(self.config.url, rate, config.max_connection_burst, log))

    async def serve(
        self, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled. The connection tasks inherit this task's
        ``ARRIVAL`` (for their stats), set once here rather than once per connection."""
        ARRIVAL.set((self.config.url, self.config.transport))
        await trio.serve_listeners(self.handle, self.sockets, task_status=task_status)

    async def handle(self, tcp: trio.SocketStream) -> None:
        peer = _peer_name(tcp)
        if self.rate is not None and not self.rate.admit(peer):
            await trio.aclose_forcefully(tcp)
            return
        limit = self.config.max_connections
        if limit is not None and self.connections >= limit:
            self._refusals.warning("%s: connection from %s refused: max_connections (%d) reached",
                        self.config.url, peer, limit)
            await trio.aclose_forcefully(tcp)
            return
        self.connections += 1
        try:
            opened = await self._open(tcp, peer)
            if opened is not None and opened[0] == "http" and self.http is not None:
                await serve_http(opened[1], self.http, peer, self.config.url)
            elif opened is not None:
                protocol, stream, identity = opened
                handler = self._handler(protocol, peer)
                if handler is None:
                    await trio.aclose_forcefully(stream)
                else:
                    # Awaited here, not in a helper: one coroutine frame less for as long as
                    # the connection lives.
                    anonymous = anonymous_allowed(self.config, self.broker.config.auth)
                    stream = traced(stream, protocol, peer)  # debug: every packet logged
                    await handler(stream, self.broker, peer, identity=identity,
                                  allow_anonymous=anonymous)
        except Exception:
            # One connection's fault must never take the listener down with it.
            log.exception("connection from %s: internal error, connection closed", peer)
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(tcp)  # whatever the layers above left open

    async def _open(
        self, tcp: trio.SocketStream, peer: str
    ) -> tuple[str, trio.abc.Stream, str | None] | None:
        """TLS, WebSocket upgrade and sniffing as configured, within the connect timeout.

        The protocol, the stream to serve it on and the client's identity, or None
        (the reason logged) when the connection does not get that far.
        """
        config = self.config
        stream: trio.abc.Stream = tcp
        protocol, identity = config.protocol, None
        timeout = self.broker.limits.connect_timeout
        with trio.move_on_after(timeout):
            try:
                if self.tls is not None:
                    tls_stream = await accept_tls(tcp, self.tls.context)
                    if config.tls is not None and config.tls.use_identity_as_username:
                        identity = certificate_identity(tls_stream.getpeercert())
                    stream = tls_stream
                if config.transport in WEBSOCKET_TRANSPORTS:
                    path = config.path or DEFAULT_PATHS[protocol]  # parse_listen_url sets one
                    policy = UpgradePolicy(protocol, path, config.allowed_origins)
                    protocol, stream = await accept_websocket(stream, policy, peer)
                if protocol == "auto":
                    protocol, stream = await sniff(stream)
                return protocol, stream, identity
            except trio.BrokenResourceError as exc:
                what = "TLS handshake" if stream is tcp and self.tls else "connection"
                log.info("%s: %s with %s failed: %s", config.url, what, peer, handshake_error(exc))
            except UpgradeRefused as exc:
                log.info("%s: WebSocket upgrade from %s refused: %s", config.url, peer, exc)
            except UnknownProtocol as exc:
                log.info("%s: connection from %s closed: %s", config.url, peer, exc)
            return None
        log.info("%s: connection from %s closed: not opened within %gs",
                 config.url, peer, timeout)
        return None

    def _handler(self, protocol: str, peer: str) -> ProtocolHandler | None:
        """The adapter for ``protocol``; None (logged) if this broker does not serve it."""
        handler = PROTOCOL_HANDLERS.get(protocol)
        if handler is None:
            log.warning("%s: connection from %s speaks %s, which this broker does not serve "
                        "yet: closed", self.config.url, peer, protocol)
        elif self.config.protocol == "auto":
            log.debug("%s: connection from %s detected as %s", self.config.url, peer, protocol)
        return handler


class RunningBroker:
    """What a started broker offers its embedder: the core and the bound listeners."""

    def __init__(self, broker: Broker, bound: tuple[Listener, ...]) -> None:
        self.broker = broker
        self.bound = bound
        self.bridges = BridgeManager(broker)
        self.restored = False  # the durable state is back (or there is none)
        self.serving = False  # every listener accepts connections
        self.cluster: ClusterNode | None = None  # its link to the others ([cluster])

    @property
    def ready(self) -> bool:
        """Ready for clients: the store is restored and every listener accepts."""
        return self.restored and self.serving

    @property
    def listeners(self) -> tuple[ListenerConfig, ...]:
        """The configured listeners with the ports actually bound."""
        return tuple(listener.config for listener in self.bound)

    def port(self, protocol: str = "mqtt", transport: str | None = None) -> int:
        return next(lc.port for lc in self.listeners if lc.protocol == protocol
                    and transport in (None, lc.transport))

    def reload_certificates(self) -> int:
        """Re-read every TLS listener's files (SIGHUP); how many reloaded."""
        contexts = [listener.tls for listener in self.bound if listener.tls is not None]
        if not contexts:
            log.info("no TLS listeners: nothing to reload")
        return sum(context.reload() for context in contexts)


def make_broker(config: BrokerConfig) -> Broker:
    """The broker core with what the configuration plugs into it."""
    broker = Broker(config)
    if config.mqtt.scram_users_file is not None:
        try:
            users = ScramUserStore.load(config.mqtt.scram_users_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"mqtt.scram_users_file: {exc}") from None
        broker.authenticators[ScramSha256.method] = ScramSha256(users)
    return broker


def check_listeners(config: BrokerConfig) -> dict[int, ReloadableContext]:
    """Refuse listeners no adapter serves; load TLS files. Index -> context for TLS ones."""
    contexts = {}
    for index, listener in enumerate(config.listeners):
        if listener.protocol == "http":
            if not (listener.allow_remote or is_loopback(listener.host)):
                raise ConfigError(f"listener {listener.url}: the management API listens on "
                                  "loopback addresses only, unless the listener sets "
                                  "allow_remote = true")
        elif listener.protocol != "auto" and listener.protocol not in PROTOCOL_HANDLERS:
            served = ", ".join([*sorted(PROTOCOL_HANDLERS), "auto"])
            raise ConfigError(f"listener {listener.url}: this broker does not serve "
                              f"{listener.protocol} yet (it serves {served})")
        if listener.tls is not None:
            try:
                contexts[index] = ReloadableContext(listener.tls, listener.url)
            except ConfigError as exc:
                raise ConfigError(f"listener {listener.url}: {exc}") from None
    return contexts


# Builds the request handler of the http(s) listeners for a running broker: the
# management API (``management.api.ManagementApi``), which is built on this module.
HttpApp = Callable[[RunningBroker], Handler]


async def start_listeners(config: BrokerConfig, http_app: HttpApp | None = None, *,
                          reuse_port: bool = False) -> RunningBroker:
    """Check the configuration and bind every listener; nothing is served yet.
    ``reuse_port``: other processes may listen on the same ports (SO_REUSEPORT).

    Raises ConfigError or OSError (an address in use, say), with nothing left bound.
    """
    contexts = check_listeners(config)
    if http_app is None and any(lc.protocol == "http" for lc in config.listeners):
        raise ConfigError("http listeners need the management API: start the broker with "
                          "`polybroker serve`, or pass http_app=ManagementApi")
    broker = make_broker(config)
    bound: list[Listener] = []
    try:
        for index, listener in enumerate(config.listeners):
            try:
                if reuse_port:
                    sockets = await _shared_listeners(listener.port, listener.host)
                else:
                    sockets = await trio.open_tcp_listeners(listener.port, host=listener.host)
            except OSError as exc:  # which listener: several may share a host or a port
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"listener {listener.url}: {reason}") from None
            bound.append(Listener(listener, broker, contexts.get(index), sockets))
        running = RunningBroker(broker, tuple(bound))
        http = [served for served in bound if served.config.protocol == "http"]
        if http and http_app is not None:
            api = http_app(running)  # reads the token file: may fail the start
            for served in http:
                served.http = api
    except BaseException:
        for done in bound:
            for sock in done.sockets:
                await trio.aclose_forcefully(sock)
        raise
    return running


async def serve_listeners(
    running: RunningBroker,
    *,
    task_status: trio.TaskStatus[RunningBroker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on every bound listener until cancelled."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.broker.timers.run)
        nursery.start_soon(running.broker.stats.measure_lag)
        interval = running.broker.config.broker.sys_interval
        if interval:
            nursery.start_soon(SysTree(running.broker, broker_version()).run, interval)
        for listener in running.bound:
            log.info("listening on %s", listener.config.url)
            await nursery.start(listener.serve)
        running.serving = True
        task_status.started(running)


async def serve(
    config: BrokerConfig, *, http_app: HttpApp | None = None,
    task_status: trio.TaskStatus[RunningBroker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the broker until cancelled; ``task_status.started`` reports the bound ports.

    The durable state is restored before any connection is accepted, and the store is
    closed after the last connection has ended."""
    running = await start_listeners(config, http_app)
    await serve_with_storage(running, task_status=task_status)


async def serve_with_storage(
    running: RunningBroker,
    *,
    task_status: trio.TaskStatus[RunningBroker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Restore the durable state, then accept connections on the bound listeners until
    cancelled; the store closes after the last connection has ended."""
    async with open_durable_state(running.broker) as storage_tasks, \
            trio.open_nursery() as nursery:
        storage_tasks.start(nursery)
        running.restored = True
        # After the restore: a bridge takes up its stored session and what waits in it.
        await nursery.start(running.bridges.run, running.broker.config.bridges)
        if running.broker.config.cluster.redis is not None:
            # Imported only here: a broker without [cluster] never loads the Redis client.
            from .cluster.node import run_node
            running.cluster = await nursery.start(run_node, running.broker,
                                                  running.broker.config.cluster)
        await serve_listeners(running, task_status=task_status)


@asynccontextmanager
async def open_broker(
    config: BrokerConfig, http_app: HttpApp | None = None
) -> AsyncIterator[RunningBroker]:
    """Run a broker for the duration of an ``async with`` block (for embedding and tests);
    ``http_app`` serves its http(s) listeners (``management.api.ManagementApi``)."""
    async with trio.open_nursery() as nursery:
        running = await nursery.start(functools.partial(serve, config, http_app=http_app))
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


async def _shared_listeners(port: int, host: str) -> list[trio.SocketListener]:
    """Listeners on ``host``:``port`` that other processes may listen on as well: the
    kernel spreads the connections over them (Linux SO_REUSEPORT)."""
    listeners: list[trio.SocketListener] = []
    addresses = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM,
                                              flags=trio.socket.AI_PASSIVE)
    try:
        for family, kind, proto, _name, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen()
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for done in listeners:
            await trio.aclose_forcefully(done)
        raise
    return listeners


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

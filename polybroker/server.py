"""Listeners: bind every configured address and hand each connection to its adapter."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import trio

from .adapters.mqtt import serve_mqtt
from .broker import Broker
from .config import BrokerConfig, ListenerConfig
from .durability import open_durable_state

log = logging.getLogger("polybroker.server")


@dataclass(frozen=True, slots=True)
class RunningBroker:
    """What a started broker offers its embedder: the core and the bound listeners."""

    broker: Broker
    listeners: tuple[ListenerConfig, ...]  # with the ports actually bound

    def port(self, protocol: str = "mqtt") -> int:
        return next(lc.port for lc in self.listeners if lc.protocol == protocol)


async def serve(
    config: BrokerConfig, *, task_status: trio.TaskStatus[RunningBroker] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the broker until cancelled; ``task_status.started`` reports the bound ports.

    The durable state is restored before any listener opens, and the store is closed after
    the last connection has ended."""
    broker = Broker(config)
    async with open_durable_state(broker) as storage_tasks, trio.open_nursery() as nursery:
        nursery.start_soon(broker.timers.run)
        storage_tasks.start(nursery)
        bound = []
        for listener in config.listeners:
            sockets = await trio.open_tcp_listeners(listener.port, host=listener.host)
            actual = replace(listener, port=sockets[0].socket.getsockname()[1])
            bound.append(actual)
            log.info("listening on %s", actual.url)
            nursery.start_soon(trio.serve_listeners, _connection_handler(broker), sockets)
        task_status.started(RunningBroker(broker, tuple(bound)))


@asynccontextmanager
async def open_broker(config: BrokerConfig) -> AsyncIterator[RunningBroker]:
    """Run a broker for the duration of an ``async with`` block (for embedding and tests)."""
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, config)
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()


def _connection_handler(broker: Broker):
    async def handle(stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        try:
            await serve_mqtt(stream, broker, peer)
        except Exception:
            # One connection's fault must never take the listener down with it.
            log.exception("connection from %s: internal error, connection closed", peer)

    return handle


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

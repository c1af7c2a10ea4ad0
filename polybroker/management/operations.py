"""What the API's routes call: the broker's management operations, awaited one way.

A thin binding of the running broker's operations; the routes know nothing else of
the broker.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..server import RunningBroker


class NotFound(LookupError):
    """No such client, queue or retained message (HTTP 404)."""


class Invalid(ValueError):
    """A request the operation refuses as it stands (HTTP 400)."""


class BrokerOperations:
    def __init__(self, running: "RunningBroker") -> None:
        self.running = running

    async def listeners(self) -> list[dict[str, Any]]:
        return [{"url": listener.config.url, "protocol": listener.config.protocol,
                 "transport": listener.config.transport, "host": listener.config.host,
                 "port": listener.config.port, "connections": listener.connections}
                for listener in self.running.bound]

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.running.ready, {}

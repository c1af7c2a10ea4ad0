"""What the API's routes call: the running broker's operations (``ops``), each awaited
the same way whether it is a read (plain) or a change (async, durable on return)."""

from typing import Any

from ..server import RunningBroker
from . import ops, prometheus

Json = dict[str, Any]


class BrokerOperations:
    """``ops`` bound to one running broker, under the names the routes use."""

    def __init__(self, running: RunningBroker) -> None:
        self.running = running

    async def overview(self) -> Json:
        return ops.overview(self.running)

    async def clients(self, *, protocol: str | None, search: str | None, offset: int,
                      limit: int) -> Json:
        return ops.clients(self.running, protocol=protocol, search=search, offset=offset,
                           limit=limit)

    async def client(self, client_id: str) -> Json:
        return ops.client(self.running, client_id)

    async def kick(self, client_id: str, *, discard: bool) -> Json:
        return ops.disconnect(self.running, client_id, discard_session=discard)

    async def kick_many(self, ids: list[str], *, discard: bool) -> Json:
        return ops.disconnect_many(self.running, ids=ids, discard_session=discard)

    async def subscriptions(self, *, client: str | None, offset: int, limit: int) -> Json:
        return ops.subscriptions(self.running, client_id=client, offset=offset, limit=limit)

    async def queues(self, *, offset: int, limit: int) -> Json:
        items = ops.queues(self.running)
        return {"total": len(items), "offset": offset, "limit": limit,
                "items": items[offset:offset + limit]}

    async def queue(self, name: str) -> Json:
        return ops.queue(self.running, name)

    async def purge(self, name: str) -> Json:
        return await ops.purge_queue(self.running, name)

    async def delete_queue(self, name: str) -> Json:
        return await ops.delete_queue(self.running, name)

    async def retained(self, topic_filter: str, *, offset: int, limit: int) -> Json:
        return ops.retained(self.running, topic_filter, offset=offset, limit=limit)

    async def retained_message(self, topic: str) -> Json:
        return ops.retained_message(self.running, topic)

    async def delete_retained(self, topic: str) -> Json:
        return await ops.delete_retained(self.running, topic)

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> Json:
        return await ops.publish(self.running, topic, payload, qos=qos, retain=retain)

    async def listeners(self) -> list[Json]:
        return ops.listeners(self.running)

    async def readiness(self) -> tuple[bool, Json]:
        return ops.health(self.running)["ready"], {}

    async def metrics(self, accept: str | None) -> tuple[bytes, str]:
        return prometheus.exposition(self.running.broker, accept)

"""One node of a cluster: its link to the shared Redis.

In Redis (every key under ``polybroker:``):

- ``nodes``: the set of node names; ``alive:<node>``: a heartbeat key with a time to live
  (``node_timeout``), refreshed a few times per timeout;
- ``interest:<node>``: the set of topic filters the node's subscribers hold, changed as
  they subscribe and unsubscribe, each change also announced on the ``interest`` channel
  (``+``/``-`` node filter; ``sync`` node: read its whole set again; ``bye`` node);
- ``stream:<node>``: the messages the other nodes hand to it, read by the node through a
  consumer group and acknowledged (XACK) once routed here and durable, so what was read
  but not acknowledged when the link dropped is read again after reconnecting.

The broker calls ``publish`` and ``filter_changed`` synchronously (``broker.Remote``):
both only queue work for the writer task, and ``publish`` looks at Redis only when
another node's filters match the topic. A message read from the stream is routed here
only (``Broker.route_local``), never handed on again.
"""

import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterator
from typing import Any

import anyio
import coredis
import trio
from coredis.exceptions import RedisError, StreamDuplicateConsumerGroupError

from ..broker import Broker
from ..journal import StoreFull
from ..message import Message
from .codec import Fields, decode, encode
from .config import ClusterConfig
from .interest import RemoteInterest

log = logging.getLogger("polybroker.cluster")

PREFIX = "polybroker:"
CHANNEL = PREFIX + "interest"
GROUP = "broker"
BATCH = 512  # stream entries written or read per round trip
OUTBOX_FULL = "cluster-outbox-full"  # the drop reason
MAX_OUTBOX = 100_000  # messages waiting for Redis while the link is down; then the oldest go
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
READ_BLOCK_MS = 1000
NODE_KEYS = ("alive", "interest", "version", "stream")
# What a dropped or refused link to Redis raises, also from the client's own tasks.
LINK_ERRORS = (RedisError, OSError, TimeoutError, anyio.ClosedResourceError,
               anyio.BrokenResourceError, anyio.EndOfStream)


class ClusterNode:
    """The ``broker.Remote`` of a broker in a cluster; ``run`` keeps its Redis link."""

    def __init__(self, broker: Broker, config: ClusterConfig) -> None:
        if config.redis is None:
            raise ValueError("a cluster node needs [cluster] redis")
        self.broker = broker
        self.config = config
        self.name = config.node_name()
        self.interest = RemoteInterest()
        self.local_filters: set[str] = set()
        # The version of each other node's filter set last read whole.
        self._versions: dict[str, bytes | None] = {}
        self._changes: deque[tuple[str, bool]] = deque()
        self._outbox: deque[tuple[str, Fields]] = deque()
        self._wakeup = trio.Event()
        self.linked = False  # the Redis link is up and this node announced
        self.ready = trio.Event()  # the first link is up (the others' filters loaded)
        # What operators and tests read: messages handed to other nodes, received from
        # them, published here that no other node wanted (no Redis round trip), dropped
        # from a full outbox.
        self.sent = 0
        self.received = 0
        self.local_only = 0
        self.dropped = 0

    # -- broker.Remote: synchronous, on the publish and subscribe paths ---------------------

    def publish(self, message: Message) -> None:
        if message.topic.startswith("$"):
            return  # $SYS and the like describe this node: they stay here
        nodes = self.interest.nodes_for(message.topic)
        if not nodes:
            self.local_only += 1
            return
        fields = encode(message, self.broker.clock())
        outbox = self._outbox
        for node in nodes:
            outbox.append((node, fields))
        while len(outbox) > MAX_OUTBOX:
            outbox.popleft()
            self.dropped += 1
            self.broker.drops[OUTBOX_FULL] += 1  # with every other drop the operator sees
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("cluster: %d messages for other nodes dropped so far: the link "
                            "to Redis is down and the outbox is full", self.dropped)
        self._wakeup.set()

    def filter_changed(self, topic_filter: str, subscribed: bool) -> None:
        if subscribed:
            self.local_filters.add(topic_filter)
        else:
            self.local_filters.discard(topic_filter)
        self._changes.append((topic_filter, subscribed))
        self._wakeup.set()

    # -- the link -------------------------------------------------------------------------

    def _key(self, kind: str, node: str | None = None) -> str:
        return f"{PREFIX}{kind}:{node or self.name}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep the link to Redis until cancelled, reconnecting with back-off; reports
        started once the first link is up. On cancellation the node says goodbye."""
        delay = BACKOFF_FIRST
        started = False
        try:
            while True:
                try:
                    client: coredis.Redis[bytes] = coredis.Redis.from_url(
                        self.config.redis or "", stream_timeout=None, connect_timeout=5)
                    async with client:
                        await self._link(client)
                        if not started:
                            started = True
                            task_status.started()
                        delay = BACKOFF_FIRST
                        await self._serve(client)
                except BaseException as exc:
                    failure = _link_failure(exc)
                    if failure is None:
                        raise
                    await trio.lowlevel.checkpoint_if_cancelled()  # stopping: no failure
                    self.linked = False
                    log.warning("cluster: link to Redis lost (%s); retrying in %.1fs",
                                _reason(failure), delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
        finally:
            self.linked = False
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._leave()

    async def _link(self, client: "coredis.Redis[bytes]") -> None:
        """Make sure this node's stream has its consumer group, then announce the node."""
        # Made already by this node's last link (or its previous run), or made now.
        with contextlib.suppress(StreamDuplicateConsumerGroupError):
            await client.xgroup_create(self._key("stream"), GROUP, "0", mkstream=True)
        await self._announce(client)
        self.linked = True

    async def _announce(self, client: "coredis.Redis[bytes]") -> None:
        """Register this node with all its filters (again, should Redis have lost them)."""
        # Everything queued until now is in the set written below.
        self._changes.clear()
        filters = list(self.local_filters)
        async with client.pipeline(transaction=True) as pipe:
            pipe.sadd(PREFIX + "nodes", [self.name])
            pipe.set(self._key("alive"), b"1", ex=math.ceil(self.config.node_timeout))
            pipe.delete([self._key("interest")])
            if filters:
                pipe.sadd(self._key("interest"), filters)
            pipe.incr(self._key("version"))
            pipe.publish(CHANNEL, _note("sync", self.name))
        log.info("cluster: node %s announced to Redis (%d filters here)", self.name,
                 len(filters))

    async def _serve(self, client: "coredis.Redis[bytes]") -> None:
        async with client.pubsub(channels=[CHANNEL]) as pubsub, trio.open_nursery() as nursery:
            # Subscribed before the snapshot: a change made meanwhile is applied after it.
            await self._sync_others(client)
            self.ready.set()
            nursery.start_soon(self._follow, pubsub, client)
            nursery.start_soon(self._beat, client)
            nursery.start_soon(self._write, client)
            nursery.start_soon(self._read, client)

    async def _sync_others(self, client: "coredis.Redis[bytes]") -> None:
        """Catch up with the other nodes: forget those gone or silent, read again the
        filters of those whose version moved (a notification may have been missed)."""
        names = {raw.decode() for raw in await client.smembers(PREFIX + "nodes")}
        if self.name not in names:
            await self._announce(client)  # Redis lost this node's keys (restarted)
        names.discard(self.name)
        for gone in self.interest.nodes() - names:
            self.interest.forget(gone)
            self._versions.pop(gone, None)
        if not names:
            return
        order = sorted(names)
        async with client.pipeline(transaction=False) as pipe:
            alive = [pipe.exists([self._key("alive", node)]) for node in order]
            versions = [pipe.get(self._key("version", node)) for node in order]
        for node, is_alive, version in zip(order, alive, versions, strict=True):
            if not await is_alive:
                await self._bury(client, node)
            elif await version != self._versions.get(node):
                await self._reload(client, node)

    async def _reload(self, client: "coredis.Redis[bytes]", node: str) -> None:
        async with client.pipeline(transaction=True) as pipe:
            members = pipe.smembers(self._key("interest", node))
            version = pipe.get(self._key("version", node))
        filters = {raw.decode() for raw in await members}
        for topic_filter in sorted(filters - self.interest.filters_of(node)):
            log.debug("cluster: node %s subscribed to %s", node, topic_filter)
        self.interest.replace(node, filters)
        self._versions[node] = await version

    async def _bury(self, client: "coredis.Redis[bytes]", node: str) -> None:
        """A node whose heartbeat ran out: its filters and what waits for it go."""
        if node in self.interest.nodes():
            log.warning("cluster: node %s went away (no heartbeat for %gs)", node,
                        self.config.node_timeout)
        self.interest.forget(node)
        self._versions.pop(node, None)
        async with client.pipeline(transaction=True) as pipe:
            pipe.srem(PREFIX + "nodes", [node])
            pipe.delete([self._key(kind, node) for kind in NODE_KEYS])

    async def _follow(self, pubsub: Any, client: "coredis.Redis[bytes]") -> None:
        async for item in pubsub:
            if item.get("type") != "message":
                continue
            data = item["data"]
            parts = (data.decode() if isinstance(data, bytes) else str(data)).split("\0", 2)
            kind, node = parts[0], parts[1] if len(parts) > 1 else ""
            if node == self.name or not node:
                continue
            if kind == "+" and len(parts) == 3:
                self.interest.add(node, parts[2])
                log.debug("cluster: node %s subscribed to %s", node, parts[2])
            elif kind == "-" and len(parts) == 3:
                self.interest.remove(node, parts[2])
                log.debug("cluster: node %s unsubscribed from %s", node, parts[2])
            elif kind == "sync":
                await self._reload(client, node)
            elif kind == "bye":
                self.interest.forget(node)

    async def _beat(self, client: "coredis.Redis[bytes]") -> None:
        ttl = math.ceil(self.config.node_timeout)
        while True:
            await client.set(self._key("alive"), b"1", ex=ttl)
            await self._sync_others(client)
            await trio.sleep(self.config.node_timeout / 4)

    async def _write(self, client: "coredis.Redis[bytes]") -> None:
        """Send queued filter changes and messages; an item leaves its queue only once
        Redis has it, so nothing is lost to a link that drops meanwhile."""
        maxlen = self.config.stream_maxlen
        while True:
            # What a dropped link left queued goes at once, without waiting for more.
            if not (self._changes or self._outbox):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._changes or self._outbox:
                if self._changes:
                    changes = [self._changes[i] for i in range(min(BATCH, len(self._changes)))]
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.incr(self._key("version"))
                        for topic_filter, subscribed in changes:
                            key = self._key("interest")
                            if subscribed:
                                pipe.sadd(key, [topic_filter])
                            else:
                                pipe.srem(key, [topic_filter])
                            sign = "+" if subscribed else "-"
                            pipe.publish(CHANNEL, _note(sign, self.name, topic_filter))
                    for _ in changes:
                        self._changes.popleft()
                    continue
                batch = [self._outbox[i] for i in range(min(BATCH, len(self._outbox)))]
                async with client.pipeline(transaction=False) as pipe:
                    for node, fields in batch:
                        # NOMKSTREAM: a node that left has no stream to fill again.
                        pipe.xadd(self._key("stream", node), fields, nomkstream=True,
                                  trim_strategy=coredis.PureToken.MAXLEN, threshold=maxlen,
                                  trim_operator=coredis.PureToken.APPROXIMATELY)
                for _ in batch:
                    self._outbox.popleft()
                self.sent += len(batch)

    async def _read(self, client: "coredis.Redis[bytes]") -> None:
        """Route what the other nodes handed to this one: first what was read before but
        not acknowledged (a link that dropped), then what is new."""
        stream = self._key("stream")
        position = "0"
        while True:
            reply = await client.xreadgroup(
                GROUP, self.name, {stream: position}, count=BATCH,
                block=None if position == "0" else READ_BLOCK_MS)
            entries = reply.get(stream.encode(), ()) if reply else ()
            if position == "0" and not entries:
                position = ">"  # the pending ones are done
                continue
            if not entries:
                continue
            await self._route(entries)
            await client.xack(stream, GROUP, [entry.identifier for entry in entries])

    async def _route(self, entries: Any) -> None:
        broker = self.broker
        for entry in entries:
            try:
                message = decode(entry.field_values, broker.clock)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("cluster: unreadable entry %s in stream of node %s dropped: %s",
                            entry.identifier, self.name, exc)
                continue
            self.received += 1
            log.debug("cluster: message on %s from another node", message.topic)
            try:
                with broker.storing():
                    broker.route_local(message)
            except StoreFull:  # delivered all the same, kept in memory only
                log.warning("cluster: message on %s from another node not stored: the "
                            "store is full", message.topic)
        # Acknowledged to Redis only once what the routing stored is on disk.
        durability = broker.durability
        if durability.pending() and not await durability.wait_durable(10.0):
            raise TimeoutError("the store did not confirm the routed messages")

    async def _leave(self) -> None:
        """Tell the others this node is gone, so they stop handing it messages."""
        try:
            client: coredis.Redis[bytes] = coredis.Redis.from_url(
                self.config.redis or "", connect_timeout=1)
            async with client, client.pipeline(transaction=True) as pipe:
                pipe.srem(PREFIX + "nodes", [self.name])
                pipe.delete([self._key(kind) for kind in NODE_KEYS])
                pipe.publish(CHANNEL, _note("bye", self.name))
        except BaseException as exc:
            failure = _link_failure(exc)
            if failure is None:
                raise
            log.info("cluster: could not say goodbye to the others (%s)", _reason(failure))


def _note(kind: str, node: str, topic_filter: str | None = None) -> str:
    return "\0".join([kind, node] if topic_filter is None else [kind, node, topic_filter])


def _link_failure(exc: BaseException) -> BaseException | None:
    """The first link error in ``exc`` (a group from the client's tasks, say), if all it
    holds are link errors and cancellations; None otherwise."""
    leaves = list(_leaves(exc))
    others = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if not others or not all(isinstance(leaf, LINK_ERRORS) for leaf in others):
        return None
    return others[0]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def run_node(broker: Broker, config: ClusterConfig, *,
                   task_status: trio.TaskStatus["ClusterNode"] = trio.TASK_STATUS_IGNORED
                   ) -> None:
    """Make ``broker`` a node of the cluster until cancelled; reports the node started
    once its first link to Redis is up and the other nodes' filters are loaded."""
    node = ClusterNode(broker, config)
    broker.attach_remote(node)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await node.ready.wait()
            task_status.started(node)
    finally:
        broker.detach_remote()

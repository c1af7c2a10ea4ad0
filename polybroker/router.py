"""Subscription trie: topic filter -> {subscriber: value}, matched level by level.

Matching walks the trie along the topic's levels, so its cost depends on the topic depth and
the number of wildcard branches taken, never on the number of unrelated subscriptions.
No regular expressions: every node keeps its literal children in a dict plus direct slots
for its ``+`` and ``#`` children.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .message import Message
    from .overflow import Backlog

__all__ = ["Subscriber", "TopicTrie"]

_S = TypeVar("_S", bound=Hashable)  # a subscriber
_V = TypeVar("_V")  # what it subscribed with


class Subscriber(Protocol):
    """What the broker's router delivers to: a session, a shared group, a queue."""

    def __hash__(self) -> int: ...

    @property
    def client_id(self) -> str | None:
        """Whose subscription it is (No Local); None for none of a client's own."""

    @property
    def backlog(self) -> Backlog | None:
        """Where a message it took waits (the one a blocking publisher waits for)."""

    def deliver(
        self, message: Message, qos: int, retain: bool, subscription_ids: tuple[int, ...] = ()
    ) -> int:
        """TAKEN, HELD or DROPPED (``overflow``)."""


class _Node(Generic[_S, _V]):
    """One filter level. Dicts are created lazily: most nodes are leaves or pass-throughs."""

    __slots__ = ("children", "hash", "plus", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node[_S, _V]] | None = None
        self.plus: _Node[_S, _V] | None = None
        self.hash: _Node[_S, _V] | None = None
        self.subscribers: dict[_S, _V] | None = None

    def is_empty(self) -> bool:
        return not (self.children or self.plus or self.hash or self.subscribers)


ROUTE_CACHE_SIZE = 4096  # topics whose matches are kept; the cache starts again when full


class TopicTrie(Generic[_S, _V]):
    """Maps (topic filter, subscriber) pairs to arbitrary values.

    ``generation`` is bumped on every change. ``match`` keeps the result for recently
    published topics (a hot topic is walked once, not per message) and drops them all
    when the generation moves: any subscribe or unsubscribe.
    """

    def __init__(self) -> None:
        self._root: _Node[_S, _V] = _Node()
        self._count = 0
        self.generation = 0
        self._routes: dict[str, list[dict[_S, _V]]] = {}
        self._routes_generation = 0
        # Told (filter, True) when a filter gets its first subscriber and (filter, False)
        # when it loses its last: what a cluster node tells the others it wants.
        self.watch: Callable[[str, bool], None] | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, subscriber: _S, value: _V) -> bool:
        """Store or replace the value for (filter, subscriber); True if the pair is new."""
        node = self._root
        for level in topic_filter.split("/"):
            if level == "+":
                if node.plus is None:
                    node.plus = _Node()
                node = node.plus
            elif level == "#":
                if node.hash is None:
                    node.hash = _Node()
                node = node.hash
            else:
                if node.children is None:
                    node.children = {}
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node()
                node = child
        subs = node.subscribers
        if subs is None:
            subs = node.subscribers = {}
            if self.watch is not None:
                self.watch(topic_filter, True)
        is_new = subscriber not in subs
        if not is_new and subs[subscriber] is value:
            return False  # nothing changed: keep cached routes valid
        subs[subscriber] = value
        if is_new:
            self._count += 1
        self.generation += 1
        return is_new

    def remove(self, topic_filter: str, subscriber: _S) -> bool:
        """Remove (filter, subscriber); True if it existed. Empty nodes are pruned."""
        node = self._root
        # (parent, level) for each step, so empty nodes can be unlinked bottom-up.
        path: list[tuple[_Node[_S, _V], str]] = []
        for level in topic_filter.split("/"):
            if level == "+":
                child = node.plus
            elif level == "#":
                child = node.hash
            else:
                child = node.children.get(level) if node.children else None
            if child is None:
                return False
            path.append((node, level))
            node = child
        subs = node.subscribers
        if not subs or subscriber not in subs:
            return False
        del subs[subscriber]
        if not subs:
            node.subscribers = None
            if self.watch is not None:
                self.watch(topic_filter, False)
        self._count -= 1
        self.generation += 1
        # Prune so memory does not grow with subscribe/unsubscribe churn.
        for parent, level in reversed(path):
            if not node.is_empty():
                break
            if level == "+":
                parent.plus = None
            elif level == "#":
                parent.hash = None
            else:
                assert parent.children is not None
                del parent.children[level]
                if not parent.children:
                    parent.children = None
            node = parent
        return True

    def filters(self) -> Iterator[str]:
        """Every filter that has a subscriber, once each."""
        stack: list[tuple[_Node[_S, _V], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, levels = stack.pop()
            if node.subscribers and levels:
                yield "/".join(levels)
            for child_level, child in (node.children or {}).items():
                stack.append((child, (*levels, child_level)))
            if node.plus is not None:
                stack.append((node.plus, (*levels, "+")))
            if node.hash is not None:
                stack.append((node.hash, (*levels, "#")))

    def match(self, topic: str) -> list[dict[_S, _V]]:
        """Subscriber dicts of every filter matching ``topic`` (a topic name, no wildcards).

        The returned list and dicts are the trie's own (hot path: no copies, and the list
        is cached); callers must not mutate them. A subscriber with overlapping filters
        appears in several dicts.
        """
        routes = self._routes
        if self._routes_generation != self.generation:
            routes.clear()
            self._routes_generation = self.generation
        found = routes.get(topic)
        if found is None:
            if len(routes) >= ROUTE_CACHE_SIZE:
                routes.clear()
            found = routes[topic] = self._walk(topic)
        return found

    def _walk(self, topic: str) -> list[dict[_S, _V]]:
        levels = topic.split("/")
        out: list[dict[_S, _V]] = []
        root = self._root
        first = levels[0]
        nodes: list[_Node[_S, _V]] = []
        # First level handled apart: wildcards at the root skip "$" topics [MQTT-4.7.2-1].
        if root.children:
            child = root.children.get(first)
            if child is not None:
                nodes.append(child)
        if not first.startswith("$"):
            if root.hash is not None and root.hash.subscribers:
                out.append(root.hash.subscribers)
            if root.plus is not None:
                nodes.append(root.plus)
        for i in range(1, len(levels)):
            if not nodes:
                return out
            level = levels[i]
            nxt: list[_Node[_S, _V]] = []
            for node in nodes:
                # "#" matches this level and everything below it.
                if node.hash is not None and node.hash.subscribers:
                    out.append(node.hash.subscribers)
                if node.children:
                    child = node.children.get(level)
                    if child is not None:
                        nxt.append(child)
                if node.plus is not None:
                    nxt.append(node.plus)
            nodes = nxt
        for node in nodes:
            if node.subscribers:
                out.append(node.subscribers)
            # "a/#" also matches "a" itself [MQTT-4.7.1-2].
            if node.hash is not None and node.hash.subscribers:
                out.append(node.hash.subscribers)
        return out

"""Retained-message store: topic name -> last retained value, kept in a trie of topic levels.

``match`` walks the trie along a topic *filter*, so its cost is proportional to the part of
the trie the filter covers, not to the size of the whole store.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

__all__ = ["RetainedStore"]

_V = TypeVar("_V")


class _Missing(enum.Enum):
    """Distinguishes "no value" from a stored None."""

    MISSING = enum.auto()


_MISSING: Literal[_Missing.MISSING] = _Missing.MISSING


class _Node(Generic[_V]):
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _Node[_V]] | None = None
        self.value: _V | Literal[_Missing.MISSING] = _MISSING


class RetainedStore(Generic[_V]):
    """Topic -> value. The root itself never holds a value (a topic has at least one level)."""

    def __init__(self, size_of: Callable[[_V], int] = lambda value: 0) -> None:
        self._root: _Node[_V] = _Node()
        self._count = 0
        # The total ``size_of`` the stored values (payload bytes, for max_retained_bytes).
        self._size_of = size_of
        self.size = 0

    def __len__(self) -> int:
        return self._count

    def set(self, topic: str, value: _V) -> None:
        """Store ``value`` as the retained value of ``topic``, replacing any previous one."""
        node = self._root
        for level in topic.split("/"):
            if node.children is None:
                node.children = {}
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.value is _MISSING:
            self._count += 1
        else:
            self.size -= self._size_of(node.value)
        self.size += self._size_of(value)
        node.value = value

    def get(self, topic: str) -> _V | None:
        """The retained value of ``topic``, or None."""
        node = self._find(topic)
        if node is None or node.value is _MISSING:
            return None
        return node.value

    def clear(self, topic: str) -> bool:
        """Drop the retained value of ``topic``; True if there was one. Prunes empty nodes."""
        node = self._root
        path: list[tuple[_Node[_V], str]] = []
        for level in topic.split("/"):
            child = node.children.get(level) if node.children else None
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.value is _MISSING:
            return False
        self.size -= self._size_of(node.value)
        node.value = _MISSING
        self._count -= 1
        for parent, level in reversed(path):
            if node.children or node.value is not _MISSING:
                break
            assert parent.children is not None
            del parent.children[level]
            if not parent.children:
                parent.children = None
            node = parent
        return True

    def match(self, topic_filter: str) -> list[_V]:
        """Values of all stored topics matching ``topic_filter``, in no particular order.

        A ``+`` or ``#`` first level does not match topics starting with "$" [MQTT-4.7.2-1];
        "a/#" also matches "a" itself [MQTT-4.7.1-2].
        """
        levels = topic_filter.split("/")
        depth = len(levels)
        out: list[_V] = []
        # Explicit stack instead of recursion: topics may be deep.
        stack: list[tuple[_Node[_V], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == depth:
                if node.value is not _MISSING:
                    out.append(node.value)
                continue
            level = levels[i]
            if level == "#":
                if node.value is not _MISSING:
                    out.append(node.value)  # the parent level itself
                if node.children:
                    for name, child in node.children.items():
                        if i == 0 and name.startswith("$"):
                            continue
                        self._collect(child, out)
            elif level == "+":
                if node.children:
                    for name, child in node.children.items():
                        if i == 0 and name.startswith("$"):
                            continue
                        stack.append((child, i + 1))
            elif node.children:
                next_node = node.children.get(level)
                if next_node is not None:
                    stack.append((next_node, i + 1))
        return out

    def _find(self, topic: str) -> _Node[_V] | None:
        node = self._root
        for level in topic.split("/"):
            if not node.children:
                return None
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node

    @staticmethod
    def _collect(node: _Node[_V], out: list[_V]) -> None:
        """Append every value in the subtree rooted at ``node`` (node included)."""
        stack = [node]
        while stack:
            n = stack.pop()
            if n.value is not _MISSING:
                out.append(n.value)
            if n.children:
                stack.extend(n.children.values())

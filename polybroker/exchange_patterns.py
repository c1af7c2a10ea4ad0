"""How AMQP exchanges match: topic binding keys against routing keys (``TopicPatterns``)
and headers bindings against a message's headers (``headers_match``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .queues import Queue

__all__ = ["TopicPatterns", "count_in", "headers_match", "split_words"]


_Item = TypeVar("_Item", bound=Hashable)


def count_in(counts: dict[_Item, int], item: _Item, add: bool) -> None:
    """Count ``item`` in or out of ``counts``; gone at zero."""
    if add:
        counts[item] = counts.get(item, 0) + 1
    else:
        left = counts.get(item, 0) - 1
        if left > 0:
            counts[item] = left
        else:
            counts.pop(item, None)


def headers_match(arguments: Mapping[str, object], headers: Mapping[str, object]) -> bool:
    """Does a headers-exchange binding with ``arguments`` match a message's ``headers``?

    ``x-match`` is ``all`` (default: every non-``x-`` argument must match) or ``any``
    (one suffices); a binding value of None (AMQP void) matches any value of the header.
    A binding without such arguments matches every message under ``all``, none under
    ``any``."""
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode(errors="replace")
    want_any = isinstance(mode, str) and mode.startswith("any")
    for name, value in arguments.items():
        if name.startswith("x-"):
            continue
        ok = name in headers and (value is None or headers[name] == value)
        if want_any and ok:
            return True
        if not want_any and not ok:
            return False
    return not want_any


class _PatternNode:
    __slots__ = ("children", "hash", "queues", "star")

    def __init__(self) -> None:
        self.children: dict[str, _PatternNode] = {}
        self.star: _PatternNode | None = None
        self.hash: _PatternNode | None = None
        self.queues: dict[Queue, int] = {}


def split_words(key: str) -> list[str]:
    """AMQP topic words; the empty key has none (only ``#`` matches it)."""
    return key.split(".") if key else []


class TopicPatterns:
    """AMQP topic binding keys -> queues, matched word by word (a trie: the cost depends
    on the key and the wildcard branches taken, not on the number of bindings).

    Unlike MQTT's ``#``, AMQP's may stand anywhere (``#.ERROR``, ``a.#.z``), so matching
    walks a set of (node, word index) states instead of one path."""

    def __init__(self) -> None:
        self._root = _PatternNode()

    def add(self, pattern: str, queue: Queue) -> None:
        node = self._root
        for word in split_words(pattern):
            if word == "*":
                node.star = node.star or _PatternNode()
                node = node.star
            elif word == "#":
                node.hash = node.hash or _PatternNode()
                node = node.hash
            else:
                node = node.children.setdefault(word, _PatternNode())
        count_in(node.queues, queue, True)

    def remove(self, pattern: str, queue: Queue) -> None:
        path: list[tuple[_PatternNode, str]] = []
        node = self._root
        for word in split_words(pattern):
            path.append((node, word))
            if word == "*":
                child = node.star
            elif word == "#":
                child = node.hash
            else:
                child = node.children.get(word)
            if child is None:
                return
            node = child
        count_in(node.queues, queue, False)
        for parent, word in reversed(path):  # prune what became empty
            if node.queues or node.children or node.star or node.hash:
                break
            if word == "*":
                parent.star = None
            elif word == "#":
                parent.hash = None
            else:
                del parent.children[word]
            node = parent

    def match(self, routing_key: str) -> list[Queue]:
        words = split_words(routing_key)
        end = len(words)
        found: dict[Queue, None] = {}
        seen: set[tuple[int, int]] = set()
        states = [(self._root, 0)]
        while states:
            node, i = states.pop()
            if (id(node), i) in seen:
                continue
            seen.add((id(node), i))
            if node.hash is not None:  # "#" takes zero or more of the remaining words
                states.extend((node.hash, j) for j in range(i, end + 1))
            if i == end:
                for queue in node.queues:
                    found[queue] = None
                continue
            child = node.children.get(words[i])
            if child is not None:
                states.append((child, i + 1))
            if node.star is not None:
                states.append((node.star, i + 1))
        return list(found)

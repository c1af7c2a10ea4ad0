"""Relations between MQTT topic filters, for access control.

- ``filter_matches(f, topic)``: ``topic`` is one of the topics ``f`` matches, by MQTT's
  rules: ``+`` is one level, ``#`` this level and every one below (``a/#`` matches
  ``a``), and a filter starting with a wildcard does not match a topic starting with
  ``$`` [MQTT-4.7.2-1].
- ``covers(grant, f)``: every topic ``f`` matches, ``grant`` matches too (``a/#``
  covers ``a/b/+``; ``a/+`` does not cover ``a/#``).
- ``overlaps(a, b)``: at least one topic is matched by both.

All three walk the levels once; none builds a regular expression.
"""


def _levels(topic_filter: str) -> list[str]:
    return topic_filter.split("/")


def _is_system(level: str) -> bool:
    return level.startswith("$")


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` (a topic name) is matched by ``topic_filter``."""
    pattern, levels = _levels(topic_filter), _levels(topic)
    if pattern[0] in ("+", "#") and _is_system(levels[0]):
        return False
    for index, part in enumerate(pattern):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(pattern) == len(levels)


def covers(grant: str, topic_filter: str) -> bool:
    """Whether ``grant`` matches every topic that ``topic_filter`` matches."""
    g, f = _levels(grant), _levels(topic_filter)
    # A wildcard at the first level of the grant misses $-topics, which a filter that
    # starts with such a literal level matches.
    if g[0] in ("+", "#") and f[0] not in ("+", "#") and _is_system(f[0]):
        return False
    for index, part in enumerate(g):
        if part == "#":
            return True
        if index >= len(f):
            return False  # the filter matches a shorter topic the grant does not
        level = f[index]
        if level == "#":
            # The filter reaches every depth and its parent level; the grant's "+/#"
            # misses only the parent, which is fine when it is "" (not a topic).
            empty_parent = index == 0 or (index == 1 and f[0] == "")
            return empty_parent and g[index:] == ["+", "#"]
        if part != "+" and part != level:
            return False  # a literal covers only itself (not "+")
    return len(g) == len(f)


def overlaps(first: str, second: str) -> bool:
    """Whether some topic is matched by both filters."""
    a, b = _levels(first), _levels(second)
    for one, other in ((a, b), (b, a)):
        if one[0] in ("+", "#") and other[0] not in ("+", "#") and _is_system(other[0]):
            return False
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            # "#" also matches the parent level, where the other may end; but not when
            # that parent is the empty topic "" (no topic name is empty).
            ends = x is None or y is None
            return not (ends and index == 1 and "" in (a[0], b[0]))
        if x is None or y is None:
            return False  # one ends here, the other needs more levels
        if x != "+" and y != "+" and x != y:
            return False
    return True

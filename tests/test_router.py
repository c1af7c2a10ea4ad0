"""TopicTrie: MQTT 3.1.1 topic filter matching (section 4.7) and trie bookkeeping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.router import TopicTrie, _Node


def brute_match(topic_filter: str, topic: str) -> bool:
    """Reference matcher: plain level-by-level comparison, no trie."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if f[0] in ("+", "#") and t[0].startswith("$"):
        return False
    for i, fl in enumerate(f):
        if fl == "#":
            return True
        if i >= len(t) or (fl != "+" and fl != t[i]):
            return False
    return len(f) == len(t)


def pairs(trie: TopicTrie, topic: str) -> Counter[tuple[Hashable, object]]:
    """Multiset of (subscriber, value) over all matched dicts."""
    return Counter((s, v) for d in trie.match(topic) for s, v in d.items())


def matches(trie: TopicTrie, topic: str) -> bool:
    return bool(trie.match(topic))


def one(topic_filter: str) -> TopicTrie:
    trie = TopicTrie()
    trie.add(topic_filter, "s", 1)
    return trie


# --- matching rules ---------------------------------------------------------------------


def test_plus_matches_exactly_one_level() -> None:
    """MQTT-4.7.1-3: '+' matches only a single topic level."""
    trie = one("sport/tennis/+")
    assert matches(trie, "sport/tennis/player1")
    assert matches(trie, "sport/tennis/player2")
    assert not matches(trie, "sport/tennis/player1/ranking")
    assert not matches(trie, "sport/tennis")


def test_plus_in_middle() -> None:
    """MQTT-4.7.1-3: '+' may be used at any level, e.g. 'sport/+/player1'."""
    trie = one("sport/+/player1")
    assert matches(trie, "sport/tennis/player1")
    assert not matches(trie, "sport/tennis/player2")


def test_hash_matches_multiple_levels_and_parent() -> None:
    """MQTT-4.7.1-2: 'sport/#' matches 'sport', 'sport/tennis' and deeper levels."""
    trie = one("sport/#")
    assert matches(trie, "sport")
    assert matches(trie, "sport/tennis")
    assert matches(trie, "sport/tennis/player1/ranking")
    assert matches(trie, "sport/")
    assert not matches(trie, "sports")
    assert not matches(trie, "other")


def test_sport_plus_does_not_match_sport_but_matches_sport_slash() -> None:
    """MQTT 4.7.1.3: 'sport/+' does not match 'sport' but does match 'sport/'."""
    trie = one("sport/+")
    assert not matches(trie, "sport")
    assert matches(trie, "sport/")


def test_plus_plus_matches_leading_slash() -> None:
    """MQTT 4.7.1.3: '+/+' matches '/finance' (an empty first level)."""
    assert matches(one("+/+"), "/finance")


def test_slash_plus_matches_leading_slash() -> None:
    """MQTT 4.7.1.3: '/+' matches '/finance'."""
    assert matches(one("/+"), "/finance")


def test_plus_does_not_match_leading_slash() -> None:
    """MQTT 4.7.1.3: '+' does not match '/finance' (two levels)."""
    assert not matches(one("+"), "/finance")


def test_hash_alone_matches_everything_not_dollar() -> None:
    """MQTT 4.7.1.2: '#' alone matches every topic (except '$' ones, MQTT-4.7.2-1)."""
    trie = one("#")
    for topic in ("a", "a/b/c", "/", "/finance", "", "a//b"):
        assert matches(trie, topic), topic
    assert not matches(trie, "$SYS/x")


def test_leading_wildcards_do_not_match_dollar_topics() -> None:
    """MQTT-4.7.2-1: filters starting with a wildcard don't match topics starting with '$'."""
    for f in ("#", "+/x", "+/#", "+"):
        trie = one(f)
        assert not matches(trie, "$SYS/x"), f
        assert not matches(trie, "$SYS"), f


def test_dollar_filters_match_dollar_topics() -> None:
    """MQTT 4.7.2: '$SYS/#' matches '$SYS/x' and '$SYS/+' matches '$SYS/x'."""
    assert matches(one("$SYS/#"), "$SYS/x")
    assert matches(one("$SYS/#"), "$SYS")
    assert matches(one("$SYS/+"), "$SYS/x")
    assert matches(one("$SYS/x"), "$SYS/x")


def test_dollar_rule_only_applies_to_first_level() -> None:
    """MQTT-4.7.2-1 concerns the first level only: 'a/+' matches 'a/$x'."""
    assert matches(one("a/+"), "a/$x")
    assert matches(one("a/#"), "a/$x")


def test_empty_levels() -> None:
    """MQTT 4.7.3: empty levels are valid and distinct: 'a//b' vs 'a/b'."""
    trie = one("a//b")
    assert matches(trie, "a//b")
    assert not matches(trie, "a/b")
    assert matches(one("a/+/b"), "a//b")
    assert matches(one("+"), "")
    assert matches(one(""), "")
    assert not matches(one(""), "/")
    assert matches(one("/"), "/")


def test_literal_filter_exact_only() -> None:
    trie = one("a/b")
    assert matches(trie, "a/b")
    assert not matches(trie, "a")
    assert not matches(trie, "a/b/c")
    assert not matches(trie, "a/bb")


# --- bookkeeping ------------------------------------------------------------------------


def test_overlapping_filters_of_one_subscriber_return_both_dicts() -> None:
    """MQTT 3.3.5: overlapping subscriptions of one client each yield a match."""
    trie = TopicTrie()
    trie.add("a/+", "c1", 1)
    trie.add("a/#", "c1", 2)
    trie.add("a/b", "c2", 0)
    result = trie.match("a/b")
    assert len(result) == 3
    assert pairs(trie, "a/b") == Counter({("c1", 1): 1, ("c1", 2): 1, ("c2", 0): 1})


def test_match_returns_live_dicts() -> None:
    trie = one("a")
    assert trie.match("a")[0] is trie.match("a")[0]


def test_add_replace_value() -> None:
    trie = TopicTrie()
    assert trie.add("a/b", "s", 0) is True
    assert trie.add("a/b", "s", 1) is False
    assert len(trie) == 1
    assert pairs(trie, "a/b") == Counter({("s", 1): 1})
    assert trie.add("a/b", "t", 1) is True
    assert len(trie) == 2


def test_remove_returns_existence() -> None:
    trie = one("a/+/#")
    assert trie.remove("a/+/#", "other") is False
    assert trie.remove("a/+", "s") is False
    assert trie.remove("a/+/#/x", "s") is False
    assert trie.remove("zzz", "s") is False
    assert trie.remove("a/+/#", "s") is True
    assert trie.remove("a/+/#", "s") is False
    assert len(trie) == 0
    assert trie.match("a/b/c") == []


def test_remove_prunes_everything() -> None:
    trie = TopicTrie()
    filters = ["a/b/c", "a/+/c", "a/#", "#", "+", "+/+", "/x", "", "$SYS/#", "a//b"]
    for f in filters:
        trie.add(f, 1, None)
        trie.add(f, 2, None)
    assert len(trie) == 2 * len(filters)
    for f in filters:
        assert trie.remove(f, 1)
        assert trie.remove(f, 2)
    assert len(trie) == 0
    assert trie._root.is_empty()
    assert trie._root.children is None
    assert trie._root.plus is None and trie._root.hash is None


def test_remove_keeps_shared_prefix() -> None:
    trie = TopicTrie()
    trie.add("a/b", "s", 1)
    trie.add("a/b/c", "s", 2)
    trie.remove("a/b/c", "s")
    assert pairs(trie, "a/b") == Counter({("s", 1): 1})
    node = trie._root.children["a"].children["b"]  # type: ignore[index]
    assert node.children is None


def test_generation_bumps_on_change_only() -> None:
    trie = TopicTrie()
    g = trie.generation
    trie.add("a", "s", 1)
    assert trie.generation > g
    g = trie.generation
    trie.add("a", "s", 2)  # replaced value: cached routes are stale
    assert trie.generation > g
    g = trie.generation
    v = object()
    trie.add("a", "s", v)
    g = trie.generation
    trie.add("a", "s", v)  # same object: nothing changed
    assert trie.generation == g
    trie.remove("a", "nobody")
    assert trie.generation == g
    trie.remove("a", "s")
    assert trie.generation > g


# --- property tests against the brute-force matcher ------------------------------------

LEVELS = ["", "$SYS", "a", "b"]
level_st = st.sampled_from(LEVELS)
topic_st = st.lists(level_st, min_size=1, max_size=4).map("/".join)


@st.composite
def filter_st(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


filter_any = st.one_of(topic_st, filter_st())
op_st = st.tuples(st.booleans(), filter_any, st.sampled_from(["s1", "s2", "s3"]))


def assert_pruned(node: _Node, is_root: bool = True) -> None:
    """No empty node survives below the root."""
    assert is_root or not node.is_empty()
    assert node.children is None or node.children
    assert node.subscribers is None or node.subscribers
    for child in (node.children or {}).values():
        assert_pruned(child, False)
    for child in (node.plus, node.hash):
        if child is not None:
            assert_pruned(child, False)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op_st, max_size=40), topics=st.lists(topic_st, min_size=1, max_size=8))
def test_property_match_equals_brute_force(
    ops: list[tuple[bool, str, str]], topics: list[str]
) -> None:
    trie = TopicTrie()
    model: dict[tuple[str, str], int] = {}
    for n, (is_add, f, sub) in enumerate(ops):
        gen = trie.generation
        if is_add:
            assert trie.add(f, sub, n) == ((f, sub) not in model)
            model[(f, sub)] = n
            assert trie.generation > gen
        else:
            existed = (f, sub) in model
            assert trie.remove(f, sub) == existed
            model.pop((f, sub), None)
            assert (trie.generation > gen) == existed
        assert len(trie) == len(model)
        # Matching between changes: a cached route must never outlive a change.
        topic = topics[n % len(topics)]
        expected = Counter((s, v) for (f, s), v in model.items() if brute_match(f, topic))
        assert pairs(trie, topic) == expected, topic
    assert_pruned(trie._root)
    for topic in topics:
        expected = Counter((sub, v) for (f, sub), v in model.items() if brute_match(f, topic))
        assert pairs(trie, topic) == expected, topic
    for f, sub in list(model):
        assert trie.remove(f, sub)
    assert len(trie) == 0
    assert trie._root.is_empty()


def test_routes_are_cached_per_topic_until_a_subscription_changes() -> None:
    trie = one("a/+")
    first = trie.match("a/b")
    assert trie.match("a/b") is first  # the walk is done once for a hot topic
    trie.add("a/#", "s2", 2)
    second = trie.match("a/b")
    assert second is not first and len(second) == 2
    trie.remove("a/+", "s")
    assert [list(d) for d in trie.match("a/b")] == [["s2"]]


def test_route_cache_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr("polybroker.router.ROUTE_CACHE_SIZE", 10)
    trie = one("#")
    for i in range(25):
        assert len(trie.match(f"t/{i}")) == 1
        assert len(trie._routes) <= 10

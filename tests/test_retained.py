"""RetainedStore: retained values looked up by topic filter (MQTT 3.1.1 sections 3.3.1.3, 4.7)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.retained import _MISSING, RetainedStore, _Node


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


def store_of(*topics: str) -> RetainedStore:
    """A store whose value for each topic is the topic itself."""
    store = RetainedStore()
    for t in topics:
        store.set(t, t)
    return store


def found(store: RetainedStore, topic_filter: str) -> set[object]:
    return set(store.match(topic_filter))


TOPICS = (
    "sport",
    "sport/",
    "sport/tennis",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "/finance",
    "$SYS/x",
    "$SYS",
    "a//b",
)


def test_set_get_replace_len() -> None:
    store = RetainedStore()
    assert store.get("a") is None
    store.set("a/b", 1)
    store.set("a/b", 2)
    assert store.get("a/b") == 2
    assert store.get("a") is None
    assert store.get("a/b/c") is None
    assert len(store) == 1
    store.set("a", 3)
    assert len(store) == 2


def test_clear_returns_existence_and_prunes() -> None:
    store = store_of(*TOPICS)
    assert store.clear("nope") is False
    assert store.clear("sport/tennis/player1/ranking/x") is False
    assert store.clear("sport/tennis") is True
    assert store.clear("sport/tennis") is False
    assert store.get("sport/tennis/player1") == "sport/tennis/player1"
    for t in TOPICS:
        store.clear(t)
    assert len(store) == 0
    assert store._root.children is None


def test_stored_none_is_counted() -> None:
    store = RetainedStore()
    store.set("a", None)
    assert len(store) == 1
    assert store.match("a") == [None]
    assert store.clear("a") is True


def test_plus_matches_exactly_one_level() -> None:
    """MQTT-4.7.1-3: '+' matches only a single level."""
    store = store_of(*TOPICS)
    assert found(store, "sport/tennis/+") == {"sport/tennis/player1"}
    assert found(store, "sport/+/player1") == {"sport/tennis/player1"}


def test_hash_matches_parent_and_all_below() -> None:
    """MQTT-4.7.1-2: 'sport/#' matches 'sport' itself and every level below it."""
    store = store_of(*TOPICS)
    assert found(store, "sport/#") == {t for t in TOPICS if t.startswith("sport")}
    assert found(store, "sport/tennis/player1/#") == {
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
    }


def test_sport_plus_does_not_match_sport_but_matches_sport_slash() -> None:
    """MQTT 4.7.1.3: 'sport/+' does not match 'sport' but does match 'sport/'."""
    assert found(store_of(*TOPICS), "sport/+") == {"sport/", "sport/tennis"}


def test_leading_empty_level() -> None:
    """MQTT 4.7.1.3: '+/+' and '/+' match '/finance'; '+' does not."""
    store = store_of(*TOPICS)
    assert "/finance" in found(store, "+/+")
    assert found(store, "/+") == {"/finance"}
    assert "/finance" not in found(store, "+")


def test_hash_alone_skips_dollar_topics() -> None:
    """MQTT-4.7.2-1: '#' alone matches everything except topics starting with '$'."""
    store = store_of(*TOPICS)
    assert found(store, "#") == {t for t in TOPICS if not t.startswith("$")}


def test_dollar_topics() -> None:
    """MQTT-4.7.2-1: leading wildcards skip '$' topics; '$SYS/#' matches '$SYS/x'."""
    store = store_of(*TOPICS)
    assert found(store, "+") == {"sport"}
    assert found(store, "+/x") == set()
    assert found(store, "$SYS/#") == {"$SYS", "$SYS/x"}
    assert found(store, "$SYS/+") == {"$SYS/x"}
    assert found(store_of("a/$x"), "a/+") == {"a/$x"}


def test_empty_levels() -> None:
    """MQTT 4.7.3: empty levels are distinct levels."""
    store = store_of(*TOPICS, "a/b", "")
    assert found(store, "a//b") == {"a//b"}
    assert found(store, "a/+/b") == {"a//b"}
    assert found(store, "") == {""}
    assert "" in found(store, "+")


# --- property test against the brute-force matcher -------------------------------------

LEVELS = ["", "$SYS", "a", "b"]
topic_st = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join)


@st.composite
def filter_st(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


def assert_pruned(node: _Node, is_root: bool = True) -> None:
    assert node.children is None or node.children
    assert is_root or node.children or node.value is not _MISSING
    for child in (node.children or {}).values():
        assert_pruned(child, False)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.tuples(st.booleans(), topic_st), max_size=40),
    filters=st.lists(st.one_of(topic_st, filter_st()), min_size=1, max_size=8),
)
def test_property_match_equals_brute_force(ops: list[tuple[bool, str]], filters: list[str]) -> None:
    store = RetainedStore()
    model: dict[str, int] = {}
    for n, (is_set, topic) in enumerate(ops):
        if is_set:
            store.set(topic, n)
            model[topic] = n
        else:
            assert store.clear(topic) == (topic in model)
            model.pop(topic, None)
        assert len(store) == len(model)
    assert_pruned(store._root)
    for topic, v in model.items():
        assert store.get(topic) == v
    for f in filters:
        expected = Counter(v for t, v in model.items() if brute_match(f, t))
        assert Counter(store.match(f)) == expected, f
    for topic in list(model):
        assert store.clear(topic)
    assert store._root.children is None

"""The ACL file (``polybroker.auth.acl``) and the filter relations it rests on."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.auth.acl import ACLError, glob_matches, parse_acl
from polybroker.auth.filters import covers, filter_matches, overlaps

# -- filter relations ----------------------------------------------------------------------


@pytest.mark.parametrize(("grant", "topic_filter", "expected"), [
    ("a/#", "a/b/+", True),
    ("a/#", "a", True),  # "a/#" matches "a" itself
    ("a/#", "a/#", True),
    ("a/+", "a/#", False),
    ("a/+", "a/b", True),
    ("a/+", "a/+", True),
    ("a/b", "a/+", False),
    ("+/b", "a/b", True),
    ("#", "#", True),
    ("#", "a/+/c", True),
    ("+", "#", False),
    ("#", "$SYS/x", False),  # wildcards at the first level miss $-topics
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("#", "+/x", True),
    ("a/+/c", "a/b/c/d", False),
    ("a/+/#", "a/b", True),
])
def test_covers(grant, topic_filter, expected):
    assert covers(grant, topic_filter) is expected


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("a/#", "a", True),
    ("a/+", "+/b", True),
    ("a/b", "a/c", False),
    ("a/+", "a", False),
    ("a", "a/b", False),
    ("#", "$SYS/#", False),
    ("+/#", "$SYS", False),
    ("$SYS/#", "$SYS/+", True),
    ("a/+/c", "+/b/#", True),
    ("secret/#", "#", True),
])
def test_overlaps(first, second, expected):
    assert overlaps(first, second) is expected
    assert overlaps(second, first) is expected


# A small topic space: filters of up to 3 levels over these names, topics of up to 4
# levels over the same names plus one that no filter names (a witness for "+").
NAMES = ("a", "b", "$s", "")
TOPICS = [
    "/".join(levels)
    for depth in range(1, 5)
    for levels in itertools.product((*NAMES, "z"), repeat=depth)
]


@st.composite
def topic_filters(draw):
    depth = draw(st.integers(1, 3))
    levels = [draw(st.sampled_from((*NAMES, "+"))) for _ in range(depth)]
    if draw(st.booleans()):
        levels.append("#")
    topic_filter = "/".join(levels)
    return topic_filter or "+"  # "" is not a filter


def matched(topic_filter: str) -> set[str]:
    return {t for t in TOPICS if t and filter_matches(topic_filter, t)}


@settings(max_examples=200, deadline=None)
@given(topic_filters(), topic_filters())
def test_covers_and_overlaps_agree_with_brute_force(grant, topic_filter):
    assert covers(grant, topic_filter) == (matched(topic_filter) <= matched(grant))
    assert overlaps(grant, topic_filter) == bool(matched(topic_filter) & matched(grant))


def test_covers_and_overlaps_agree_with_brute_force_for_every_small_filter():
    filters = {"/".join(levels + tail)
               for depth in range(1, 4)
               for levels in itertools.product((*NAMES, "+"), repeat=depth)
               for tail in ((), ("#",))} - {""} | {"#"}
    topics = {f: matched(f) for f in filters}
    wrong = [(g, f) for g in filters for f in filters
             if covers(g, f) != (topics[f] <= topics[g])
             or overlaps(g, f) != bool(topics[f] & topics[g])]
    assert wrong == []


def test_filter_matches_follows_mqtt():
    assert filter_matches("a/#", "a") and filter_matches("a/#", "a/b/c")
    assert filter_matches("+/+", "/x") and not filter_matches("+", "a/b")
    assert not filter_matches("#", "$SYS/x") and filter_matches("$SYS/#", "$SYS/x")


# -- parsing --------------------------------------------------------------------------------

ACL = """
# everyone
topic read public/#
queue write inbox
pattern readwrite devices/%u/#
pattern read clients/%c/#

anonymous
topic read anon/#

user alice
topic readwrite sensors/#
topic deny sensors/secret/#
topic write alice-only
queue readwrite jobs.*
queue deny jobs.private

user bob
topic sensors/+/temp
"""


@pytest.fixture
def acl():
    return parse_acl(ACL)


def test_general_rules_apply_to_everyone(acl):
    for user in (None, "alice", "bob", "carol"):
        assert acl.may_subscribe(user, "c", "public/+/x")
        assert not acl.may_publish(user, "c", "public/x")
        assert acl.may_use_queue(user, "c", "inbox", "write")
        assert not acl.may_use_queue(user, "c", "inbox", "read")


def test_user_sections_apply_to_their_user_only(acl):
    assert acl.may_publish("alice", "c", "sensors/1/temp")
    assert not acl.may_publish("carol", "c", "sensors/1/temp")
    assert acl.may_publish("bob", "c", "sensors/1/temp")  # no access word: readwrite
    assert acl.may_subscribe("bob", "c", "sensors/+/temp")
    assert not acl.may_subscribe("bob", "c", "sensors/#")
    assert acl.may_publish("alice", "c", "alice-only")


def test_anonymous_section_is_for_clients_without_a_user_name(acl):
    assert acl.may_subscribe(None, "c", "anon/#")
    assert not acl.may_subscribe("alice", "c", "anon/#")


def test_deny_wins_over_a_grant(acl):
    assert not acl.may_publish("alice", "c", "sensors/secret/x")
    assert acl.may_subscribe("alice", "c", "sensors/1/#")
    assert not acl.may_subscribe("alice", "c", "sensors/#")  # overlaps the deny
    assert not acl.may_subscribe("alice", "c", "sensors/+/x")  # sensors/secret/x
    assert acl.may_use_queue("alice", "c", "jobs.build", "read")
    assert not acl.may_use_queue("alice", "c", "jobs.private", "write")


def test_patterns_substitute_user_and_client_id(acl):
    assert acl.may_publish("carol", "c", "devices/carol/x")
    assert not acl.may_publish("carol", "c", "devices/dave/x")
    assert not acl.may_publish(None, "c", "devices/%u/x")  # %u is never anonymous
    assert acl.may_subscribe(None, "cid-9", "clients/cid-9/#")
    assert not acl.may_subscribe(None, "cid-9", "clients/other/#")
    # A user or client id with wildcards would widen the rule: it does not apply.
    assert not acl.may_subscribe("#", "c", "devices/#")
    assert not acl.may_subscribe(None, "+", "clients/+/#")


def test_queue_rules_with_substitution():
    acl = parse_acl("queue read reply.%u\nqueue write to-%c-*\n")
    assert acl.may_use_queue("alice", "c", "reply.alice", "read")
    assert not acl.may_use_queue("alice", "c", "reply.bob", "read")
    assert acl.may_use_queue(None, "k1", "to-k1-x", "write")
    assert not acl.may_use_queue(None, "k*", "to-kz-x", "write")


def test_nothing_granted_is_denied():
    acl = parse_acl("")
    assert not acl.may_publish("alice", "c", "a")
    assert not acl.may_subscribe("alice", "c", "a")
    assert not acl.may_use_queue("alice", "c", "q", "read")


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("jobs", "jobs", True), ("jobs", "jobs2", False), ("jobs.*", "jobs.", True),
    ("*", "", True), ("a*b*c", "aXbYc", True), ("a*b*c", "acb", False),
    ("*x*", "abxcd", True), ("ab*ba", "aba", False),
])
def test_glob(pattern, name, expected):
    assert glob_matches(pattern, name) is expected


@pytest.mark.parametrize(("text", "where"), [
    ("frobnicate x", "line 1: unknown statement"),
    ("user alice\ntopic read a/#/b", "line 2: topic: invalid topic filter"),
    ("user", "line 1: user: a name is needed"),
    ("anonymous x", "line 1: anonymous: unexpected .x."),
    ("pattern write a/%u+/x", "invalid topic filter"),
    ("topic read public/#   # for everyone", r"line 1: topic: unexpected '# for everyone'"),
    ("\nqueue write inbox  # STOMP /queue/inbox", r"line 2: queue: unexpected '# STOMP"),
    ("user alice # rules for alice", r"line 1: user: unexpected '# rules for alice'"),
    ("anonymous   # no user name", r"line 1: anonymous: unexpected '# no user name'"),
    ("topic a/b c/d", r"line 1: topic: unexpected 'c/d'"),
    ("pattern read a/%u x", r"line 1: pattern: unexpected 'x'"),
])
def test_malformed_lines_are_refused_with_their_number(text, where):
    with pytest.raises(ACLError, match=where):
        parse_acl(text)


def test_comment_lines_and_surrounding_whitespace_are_fine():
    acl = parse_acl("  # a comment\n\ttopic   read   public/#  \n\nuser alice\n queue jobs.*\n")
    assert acl.may_subscribe("bob", "c", "public/#")
    assert acl.may_use_queue("alice", "c", "jobs.1", "write")


def test_a_lone_word_after_topic_is_the_filter_granted_readwrite():
    acl = parse_acl("topic read")
    assert acl.may_publish(None, "c", "read") and acl.may_subscribe(None, "c", "read")


def test_resolved_rules_are_cached_within_a_bound(monkeypatch):
    monkeypatch.setattr("polybroker.auth.acl.RESOLVED_LIMIT", 3)
    acl = parse_acl("pattern write c/%c/#\n")
    for n in range(10):
        assert acl.may_publish(None, f"id{n}", f"c/id{n}/x")
        assert not acl.may_publish(None, f"id{n}", "c/other/x")
        assert len(acl._resolved) <= 3

"""AMQP exchanges on the core: declaring, binding, routing by kind, publishing, and
``amq.topic`` as the bridge to the MQTT/STOMP topic space."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.broker import Broker
from polybroker.destinations import (
    amqp_address,
    binding_key_to_filter,
    routing_key_to_topic,
    topic_to_routing_key,
)
from polybroker.exchanges import TopicPatterns, headers_match
from polybroker.message import AmqpPart, Message
from polybroker.protocols.mqtt import Publish
from polybroker.queues import REJECT_PUBLISH
from polybroker.refusals import (
    AccessRefused,
    CommandInvalid,
    NotFound,
    PreconditionFailed,
    Refused,
)

from .rawclient import connect_client
from .stompclient import connect_client as connect_stomp


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Consumer:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def deliver_from_queue(self, queue, entry, tag):
        self.received.append(entry.message.payload)

    def has_credit(self) -> bool:
        return True


@pytest.fixture
def core() -> Broker:
    return Broker(clock=FakeClock())


def amqp(body: bytes = b"x", **fields) -> Message:
    """A message as an AMQP publish makes it; ``fields`` of its AMQP part (the exchange
    and routing key are set by ``exchanges.publish``)."""
    return Message("", body, origin_protocol="amqp", amqp=AmqpPart("", "", **fields))


def queue(core: Broker, name: str, **kwargs):
    return core.queues.declare_queue(name, owner="conn", **kwargs)


def bodies(q) -> list[bytes]:
    return [entry.message.payload for entry in q.ready]


# -- refusals -------------------------------------------------------------------------------


def test_refusals_carry_amqp_reply_codes():
    assert [cls("t").code for cls in (AccessRefused, NotFound, PreconditionFailed)] == [
        403, 404, 406,
    ]
    assert issubclass(NotFound, Refused) and CommandInvalid("t").code == 503
    assert str(NotFound("NOT_FOUND - x")) == "NOT_FOUND - x"


# -- declaring ------------------------------------------------------------------------------


def test_predeclared_exchanges_exist_and_are_durable(core):
    for name, kind in (("", "direct"), ("amq.direct", "direct"), ("amq.fanout", "fanout"),
                       ("amq.topic", "topic"), ("amq.headers", "headers")):
        exchange = core.exchanges.declare(name, passive=True)
        assert (exchange.kind, exchange.durable) == (kind, True)


def test_the_default_exchange_cannot_be_declared_deleted_or_bound(core):
    queue(core, "q")
    with pytest.raises(AccessRefused):
        core.exchanges.declare("", "direct")
    with pytest.raises(AccessRefused):
        core.exchanges.delete("")
    with pytest.raises(AccessRefused):
        core.exchanges.bind("q", "", "q")
    with pytest.raises(AccessRefused):
        core.exchanges.unbind("q", "", "q")


def test_declare_rules(core):
    with pytest.raises(NotFound):
        core.exchanges.declare("logs", "fanout", passive=True)
    logs = core.exchanges.declare("logs", "fanout", durable=True)
    assert core.exchanges.declare("logs", "fanout", durable=True) is logs
    assert core.exchanges.declare("logs", passive=True) is logs  # passive ignores the type
    for kind, flags in (("direct", {"durable": True}), ("fanout", {}),
                        ("fanout", {"durable": True, "auto_delete": True}),
                        ("fanout", {"durable": True, "internal": True})):
        with pytest.raises(PreconditionFailed):
            core.exchanges.declare("logs", kind, **flags)
    with pytest.raises(AccessRefused):
        core.exchanges.declare("amq.mine", "direct")
    with pytest.raises(CommandInvalid):
        core.exchanges.declare("odd", "x-weird")
    with pytest.raises(PreconditionFailed):
        core.exchanges.declare("amq.topic", "direct", durable=True)


def test_delete_with_if_unused_and_of_a_missing_exchange(core):
    queue(core, "q")
    core.exchanges.declare("e", "direct")
    core.exchanges.bind("q", "e", "k")
    with pytest.raises(PreconditionFailed):
        core.exchanges.delete("e", if_unused=True)
    core.exchanges.delete("e")
    assert "e" not in core.exchanges
    core.exchanges.delete("e")  # no error
    with pytest.raises(AccessRefused):
        core.exchanges.delete("amq.direct")
    with pytest.raises(NotFound):
        core.exchanges.publish("e", "k", amqp())


def test_auto_delete_exchange_goes_with_its_last_binding_only_after_having_one(core):
    queue(core, "a")
    queue(core, "b")
    core.exchanges.declare("auto", "fanout", auto_delete=True)
    assert "auto" in core.exchanges  # never bound: stays
    core.exchanges.bind("a", "auto")
    core.exchanges.bind("b", "auto")
    core.exchanges.unbind("a", "auto")
    assert "auto" in core.exchanges
    core.queues.delete_queue("b", owner="conn")  # its binding goes with it
    assert "auto" not in core.exchanges


def test_bind_and_unbind_refuse_unknown_names(core):
    queue(core, "q")
    core.exchanges.declare("e", "direct")
    with pytest.raises(NotFound):
        core.exchanges.bind("nope", "e", "k")
    with pytest.raises(NotFound):
        core.exchanges.bind("q", "nope", "k")
    with pytest.raises(NotFound):
        core.exchanges.unbind("q", "nope", "k")
    assert core.exchanges.bind("q", "e", "k") is True
    assert core.exchanges.bind("q", "e", "k") is False  # binding twice is binding once
    assert core.exchanges.unbind("q", "e", "k") is True
    assert core.exchanges.unbind("q", "e", "k") is False


# -- routing --------------------------------------------------------------------------------


def test_default_exchange_routes_by_queue_name(core):
    q = queue(core, "celery")
    assert core.exchanges.publish("", "celery", amqp(b"task")) == 1
    assert core.exchanges.publish("", "nobody", amqp(b"lost")) == 0
    assert bodies(q) == [b"task"]
    part = q.ready[0].message.amqp
    assert (part.exchange, part.routing_key) == ("", "celery")


def test_direct_exchange_routes_by_exact_key(core):
    a, b = queue(core, "a"), queue(core, "b")
    core.exchanges.bind("a", "amq.direct", "info")
    core.exchanges.bind("b", "amq.direct", "error")
    core.exchanges.bind("b", "amq.direct", "info")
    assert core.exchanges.publish("amq.direct", "info", amqp(b"1")) == 2
    assert core.exchanges.publish("amq.direct", "error", amqp(b"2")) == 1
    assert core.exchanges.publish("amq.direct", "debug", amqp(b"3")) == 0
    assert (bodies(a), bodies(b)) == ([b"1"], [b"1", b"2"])


def test_fanout_reaches_every_bound_queue_once(core):
    a, b = queue(core, "a"), queue(core, "b")
    core.exchanges.bind("a", "amq.fanout", "")
    core.exchanges.bind("a", "amq.fanout", "ignored")  # a second binding: still one copy
    core.exchanges.bind("b", "amq.fanout", "x")
    assert core.exchanges.publish("amq.fanout", "whatever", amqp(b"m")) == 2
    assert (bodies(a), bodies(b)) == ([b"m"], [b"m"])
    core.exchanges.unbind("a", "amq.fanout", "")
    assert core.exchanges.publish("amq.fanout", "", amqp(b"n")) == 2  # "ignored" remains


def test_a_queue_matched_by_several_topic_bindings_gets_one_copy(core):
    core.exchanges.declare("events", "topic")
    q = queue(core, "q")
    for key in ("worker.#", "#", "*.online", "worker.online"):
        core.exchanges.bind("q", "events", key)
    assert core.exchanges.publish("events", "worker.online", amqp(b"hb")) == 1
    assert bodies(q) == [b"hb"]


def test_bindings_differing_only_by_arguments_are_distinct(core):
    q = queue(core, "q")
    core.exchanges.bind("q", "amq.direct", "k", {"a": 1})
    core.exchanges.bind("q", "amq.direct", "k", {"a": 2})
    core.exchanges.unbind("q", "amq.direct", "k", {"a": 1})
    assert core.exchanges.publish("amq.direct", "k", amqp()) == 1
    core.exchanges.unbind("q", "amq.direct", "k", {"a": 2})
    assert core.exchanges.publish("amq.direct", "k", amqp()) == 0
    assert len(q.ready) == 1


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("kern.#", "kern", True),
        ("kern.#", "kern.info", True),
        ("kern.#", "kern.info.x", True),
        ("kern.#", "kernel", False),
        ("#.ERROR", "ERROR", True),
        ("#.ERROR", "a.b.ERROR", True),
        ("#.ERROR", "a.ERROR.b", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b", False),
        ("*.orange.*", "quick.orange.rabbit", True),
        ("*.orange.*", "orange", False),
        ("*.orange.*", "quick.orange.male.rabbit", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*", "", False),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("", "", True),
        ("", "a", False),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b", True),
        ("#.#", "a", True),
        ("a..b", "a..b", True),
        ("a.*.b", "a..b", True),
        ("lazy.#", "lazy.orange.male.rabbit", True),
    ],
)
def test_topic_matching_table(pattern, key, matches):
    patterns = TopicPatterns()
    patterns.add(pattern, "q")
    assert bool(patterns.match(key)) is matches


def regex_match(pattern: str, key: str) -> bool:
    """The oracle: every word prefixed by a dot, ``*`` one word, ``#`` any number."""
    parts = []
    for word in pattern.split(".") if pattern else []:
        if word == "*":
            parts.append(r"\.[^.]*")
        elif word == "#":
            parts.append(r"(?:\.[^.]*)*")
        else:
            parts.append(r"\." + re.escape(word))
    subject = "".join("." + word for word in key.split(".")) if key else ""
    return re.fullmatch("".join(parts), subject) is not None


words = st.sampled_from(["a", "b", "", "c1"])
keys = st.lists(words, max_size=5).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "", "*", "#"]), max_size=5).map(".".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=6), keys)
def test_topic_matcher_agrees_with_a_regex_oracle(bound, key):
    trie = TopicPatterns()
    for index, pattern in enumerate(bound):
        trie.add(pattern, index)
    expected = {i for i, pattern in enumerate(bound) if regex_match(pattern, key)}
    assert set(trie.match(key)) == expected
    for index, pattern in enumerate(bound):  # removal leaves the others working
        trie.remove(pattern, index)
        expected.discard(index)
        assert set(trie.match(key)) == expected


def test_headers_exchange_all_and_any(core):
    everything, either, present = queue(core, "all"), queue(core, "any"), queue(core, "p")
    core.exchanges.bind("all", "amq.headers", "", {"format": "pdf", "type": "report"})
    core.exchanges.bind("any", "amq.headers", "",
                        {"x-match": "any", "format": "pdf", "type": "report"})
    core.exchanges.bind("p", "amq.headers", "", {"trace": None})  # void: presence only
    publish = core.exchanges.publish
    assert publish("amq.headers", "", amqp(b"1", headers={"format": "pdf"})) == 1
    assert publish("amq.headers", "", amqp(b"2", headers={
        "format": "pdf", "type": "report", "trace": 7})) == 3
    assert publish("amq.headers", "", amqp(b"3", headers={"type": "log"})) == 0
    assert publish("amq.headers", "", amqp(b"4")) == 0
    assert (bodies(everything), bodies(either), bodies(present)) == (
        [b"2"], [b"1", b"2"], [b"2"])


def test_headers_match_rules():
    assert headers_match({}, {}) is True  # all of nothing
    assert headers_match({"x-match": "any"}, {"a": 1}) is False
    assert headers_match({"x-match": b"any", "a": 1}, {"a": 1}) is True
    assert headers_match({"a": 1, "x-other": 5}, {"a": 1}) is True  # x- arguments ignored
    assert headers_match({"a": 1}, {"a": 2}) is False


def test_headers_exchange_falls_back_to_mqtt_user_properties(core):
    q = queue(core, "q")
    core.exchanges.bind("q", "amq.headers", "", {"kind": "alarm"})
    message = Message("", b"m", headers=(("kind", "alarm"),))
    assert core.exchanges.publish("amq.headers", "", message) == 1
    assert bodies(q) == [b"m"]


def test_internal_exchanges_refuse_publishes(core):
    core.exchanges.declare("inner", "fanout", internal=True)
    with pytest.raises(AccessRefused):
        core.exchanges.publish("inner", "", amqp())


def test_reject_publish_queues_count_as_reached_and_are_reported(core):
    full = queue(core, "full", arguments={"x-max-length": 1, "x-overflow": REJECT_PUBLISH})
    other = queue(core, "other")
    core.exchanges.bind("full", "amq.fanout")
    core.exchanges.bind("other", "amq.fanout")
    refused: list = []
    assert core.exchanges.publish("amq.fanout", "", amqp(b"1"), refused=refused) == 2
    assert refused == []
    assert core.exchanges.publish("amq.fanout", "", amqp(b"2"), refused=refused) == 2
    assert refused == [full]
    assert (bodies(full), bodies(other)) == ([b"1"], [b"1", b"2"])


def test_a_persistent_message_is_persistent_only_in_durable_queues(core):
    durable, transient = queue(core, "d", durable=True), queue(core, "t")
    core.exchanges.bind("d", "amq.fanout")
    core.exchanges.bind("t", "amq.fanout")
    core.exchanges.publish("amq.fanout", "", amqp(persistent=True))
    assert (durable.ready[0].persistent, transient.ready[0].persistent) == (True, False)


# -- amq.topic and the topic space ----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "topic_filter"),
    [("sensors.*", "sensors/+"), ("#", "#"), ("a.#", "a/#"), ("a.b", "a/b"), ("*.*", "+/+"),
     ("a..b", "a//b"), ("#.ERROR", None), ("a.#.z", None), ("a/b", None), ("a.+", None),
     ("a+", None), ("", None), ("a*.b", None), ("a.b#", None), ("x\0", None)],
)
def test_binding_keys_map_onto_mqtt_filters(key, topic_filter):
    assert binding_key_to_filter(key) == topic_filter


@pytest.mark.parametrize(
    ("key", "topic"),
    [("cmd.dev1", "cmd/dev1"), ("a", "a"), ("a..b", "a//b"), ("", None), ("a/b", None),
     ("a.+", None), ("a.#", None), ("x\0y", None), ("a" * 70000, None)],
)
def test_routing_keys_map_onto_mqtt_topics(key, topic):
    assert routing_key_to_topic(key) == topic


def test_amqp_address_of_messages_from_each_protocol():
    from_amqp = Message("", b"", amqp=AmqpPart("logs", "k"))
    from_mqtt = Message("sensors/t1", b"", origin_protocol="mqtt")
    stomp_queue = Message("jobs", b"", origin_protocol="stomp")
    assert amqp_address(from_amqp, "q") == ("logs", "k")
    assert amqp_address(from_mqtt, "q") == ("amq.topic", "sensors.t1")
    assert amqp_address(stomp_queue, "jobs") == ("", "jobs")
    assert topic_to_routing_key("a/b.c") == "a.b.c"


def test_amq_topic_refuses_keys_without_an_mqtt_filter(core):
    queue(core, "q")
    for key in ("#.ERROR", "a/b", "a.+", ""):
        with pytest.raises(PreconditionFailed):
            core.exchanges.bind("q", "amq.topic", key)
    core.exchanges.declare("mine", "topic")
    core.exchanges.bind("q", "mine", "#.ERROR")  # other topic exchanges take any pattern


def test_amq_topic_bindings_live_in_the_router(core):
    q = queue(core, "q")
    core.exchanges.bind("q", "amq.topic", "sensors.*")
    core.exchanges.bind("q", "amq.topic", "sensors.*", {"x": 1})  # same filter, held twice
    [subscribers] = core.router.match("sensors/t1")
    assert list(subscribers) == [q]
    core.exchanges.unbind("q", "amq.topic", "sensors.*")
    assert core.router.match("sensors/t1")  # the other binding still holds the filter
    core.exchanges.unbind("q", "amq.topic", "sensors.*", {"x": 1})
    assert core.router.match("sensors/t1") == []


def test_publishing_to_amq_topic_is_a_broker_publish(core):
    q = queue(core, "q")
    core.exchanges.bind("q", "amq.topic", "cmd.*")
    message = amqp(b"on")
    assert core.exchanges.publish("amq.topic", "cmd.dev1", message) == 1
    assert bodies(q) == [b"on"]
    assert [entry.message.topic for entry in q.ready] == ["cmd/dev1"]
    assert message.topic == ""  # the published message itself is never changed
    assert core.exchanges.publish("amq.topic", "cmd/dev1", amqp(b"bad")) == 0
    assert core.exchanges.publish("amq.topic", "cmd.#", amqp(b"bad")) == 0
    assert bodies(q) == [b"on"]


async def test_mqtt_and_amqp_meet_on_amq_topic(nursery, broker):
    # MQTT publish -> queue bound on amq.topic
    readings = broker.queues.declare_queue("readings", owner="conn")
    broker.exchanges.bind("readings", "amq.topic", "sensors.*")
    consumer = Consumer()
    readings.add_consumer(consumer, ack_required=False)
    sensor = await connect_client(nursery, broker)
    await sensor.connect("sensor")
    await sensor.send(Publish("other/t1", b"no", qos=0))
    await sensor.send(Publish("sensors/t1", b"21.5", qos=1, packet_id=1))
    await sensor.receive()  # PUBACK: both routed by now
    assert consumer.received == [b"21.5"]
    # AMQP publish on amq.topic -> MQTT subscriber
    device = await connect_client(nursery, broker)
    await device.connect("device")
    await device.subscribe("cmd/+", qos=1)
    reached = broker.exchanges.publish("amq.topic", "cmd.dev1", Message(
        "", b"reboot", qos=1, origin_protocol="amqp", amqp=AmqpPart("", "", persistent=True)))
    assert reached == 1
    [publish] = await device.publishes_until_idle()
    assert (publish.topic, publish.payload) == ("cmd/dev1", b"reboot")
    # and an AMQP queue bound with a wildcard gets the same publish through the router
    broker.exchanges.bind("readings", "amq.topic", "cmd.#")
    assert broker.exchanges.publish("amq.topic", "cmd.dev2", Message("", b"x", qos=1)) == 2
    assert consumer.received == [b"21.5", b"x"]


async def test_stomp_meets_amqp_on_amq_topic_and_on_queues(nursery, broker):
    client = await connect_stomp(nursery, broker)
    await client.connect()
    await client.subscribe("/topic/cmd/dev1", "t")
    await client.subscribe("/queue/jobs", "q")
    await client.messages_until_idle()  # subscribed
    assert broker.exchanges.publish("amq.topic", "cmd.dev1", Message("", b"on", qos=1)) == 1
    assert broker.exchanges.publish("", "jobs", Message("", b"job", qos=1)) == 1
    frames = await client.messages_until_idle()
    assert sorted((f.get("destination"), f.body) for f in frames) == [
        ("/queue/jobs", b"job"), ("/topic/cmd/dev1", b"on")]

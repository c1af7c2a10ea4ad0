"""AMQP's durable state across a restart: durable exchanges, durable queues with their
flags and arguments, bindings between the two, and persistent messages in durable
queues (in order, with their properties); everything else vanishes."""

import pytest

from polybroker import persistence
from polybroker.message import AmqpPart, Death, Message
from polybroker.persistence import decode_message, encode_message
from polybroker.refusals import PreconditionFailed

from .durable_state import persistent_state
from .test_persistence import crash_image, running

PROPERTIES = b"\x90\x00\x10application/json\x02"  # raw content properties, passed through


def amqp(body: bytes, persistent: bool = True) -> Message:
    """A message as an AMQP publish makes it (its exchange and routing key are set by
    ``exchanges.publish``)."""
    return Message("", body, qos=1, origin_protocol="amqp", origin_client="c1",
                   amqp=AmqpPart("", "", PROPERTIES, persistent=persistent))


def keys(broker, prefix: bytes) -> list[bytes]:
    return [key for key, _ in broker.durability.store.scan(prefix)]


def test_amqp_fields_round_trip_through_the_stored_form():
    death = Death("work", "rejected", "", ("work",), 2, 1.7e9)
    message = Message(
        "cmd/x", b"body", qos=1, expiry=50.0, origin_protocol="amqp",
        amqp=AmqpPart("logs", "a.b", b"\x00\x01", persistent=True, deaths=(death,)),
        headers=(("k", "v"),), content_type="text/plain",
    )
    decoded = decode_message(encode_message(message, 1000.0), 0, -1000.0)
    for name in ("topic", "payload", "qos", "expiry", "origin_protocol", "amqp", "headers",
                 "content_type"):
        assert getattr(decoded, name) == getattr(message, name), name
    plain = Message("t", b"p", origin_protocol="mqtt", origin_client="c")
    assert encode_message(plain, 0.0)[0] == persistence.FORMAT  # MQTT keeps format 1
    assert decode_message(encode_message(plain, 0.0), 0, 0.0).amqp is None


# Stored by the version whose Message carried the AMQP fields flat (exchange,
# routing_key, amqp_properties, persistent, deaths): the record format is unchanged.
WRITTEN_BEFORE = {
    "dead-lettered": bytes.fromhex(
        "0201e40000000300000007612f627061796c6f61640000000a746578742f706c61696e00000004616d"
        "717000000002633100000001000000016800000001761f0000000a616d712e6469726563740000000"
        "26b310000000d80000a746578742f706c61696e0000000100000004776f726b0000000872656a6563"
        "7465640000000a616d712e64697265637400000002000000026b31000000026b320000000341d954fc"
        "40200000"),
    "transient": bytes.fromhex(
        "0200600000000100000001787000000004616d717000000002633207000000000000000178000000"
        "020000"),
}


def test_amqp_messages_stored_before_the_amqp_part_read_back_the_same():
    dead = decode_message(WRITTEN_BEFORE["dead-lettered"], 0, 0.0)
    assert (dead.topic, dead.payload, dead.qos, dead.content_type, dead.headers) == (
        "a/b", b"payload", 1, "text/plain", (("h", "v"),))
    assert dead.amqp == AmqpPart(
        "amq.direct", "k1", b"\x80\x00\x0atext/plain", persistent=True,
        deaths=(Death("work", "rejected", "amq.direct", ("k1", "k2"), 3, 1700000000.5),))
    transient = decode_message(WRITTEN_BEFORE["transient"], 0, 0.0)
    assert (transient.origin_protocol, transient.origin_client) == ("amqp", "c2")
    assert transient.amqp == AmqpPart("", "x", b"\x00\x00")
    for name, record in WRITTEN_BEFORE.items():  # and written again, byte for byte
        assert encode_message(decode_message(record, 0, 0.0), 0.0) == record, name


async def test_durable_exchanges_queues_bindings_and_persistent_messages_survive(tmp_path):
    arguments = {"x-message-ttl": 300000, "x-expires": 600000, "x-custom": b"raw"}
    async with running(tmp_path) as broker:
        exchanges, queues = broker.exchanges, broker.queues
        exchanges.declare("celery", "direct", durable=True)
        exchanges.declare("events", "topic", durable=True, auto_delete=True)
        exchanges.declare("transient", "fanout")
        queues.declare_queue("celery", durable=True, arguments=arguments)
        queues.declare_queue("scratch")  # not durable
        queues.declare_queue("mine", owner=object(), exclusive=True, durable=True)
        exchanges.bind("celery", "celery", "celery")
        exchanges.bind("celery", "events", "worker.#")
        exchanges.bind("celery", "amq.topic", "sensors.*")
        exchanges.bind("celery", "transient", "")  # a non-durable exchange: not recorded
        exchanges.bind("scratch", "celery", "celery")  # a non-durable queue: not recorded
        for i in range(3):
            exchanges.publish("celery", "celery", amqp(f"p{i}".encode()))
            exchanges.publish("celery", "celery", amqp(f"t{i}".encode(), persistent=False))
        exchanges.publish("", "scratch", amqp(b"lost"))
    async with running(tmp_path) as broker:
        exchanges, queues = broker.exchanges, broker.queues
        assert (broker.journal.summary.exchanges, broker.journal.summary.bindings) == (2, 3)
        assert sorted(e.name for e in exchanges if not e.predeclared) == ["celery", "events"]
        events = exchanges.get("events")
        assert (events.kind, events.durable, events.auto_delete) == ("topic", True, True)
        assert sorted(q.name for q in queues) == ["celery"]
        queue = queues.get("celery")
        assert (queue.durable, queue.arguments) == (True, arguments)
        assert (queue.message_ttl, queue.expires) == (300.0, 600.0)
        queues.declare_queue("celery", durable=True, arguments=arguments)  # equivalent
        with pytest.raises(PreconditionFailed):
            queues.declare_queue("celery", durable=True)
        entries = list(queue.ready)
        assert [e.message.payload for e in entries] == [b"p0", b"p1", b"p2"]
        first = entries[0].message.amqp
        assert (first.exchange, first.routing_key, first.properties, first.persistent) == (
            "celery", "celery", PROPERTIES, True)
        # the bindings route again, amq.topic's through the router
        assert exchanges.publish("events", "worker.online", amqp(b"e")) == 1
        assert exchanges.publish("amq.topic", "sensors.t1", amqp(b"s")) == 1
        assert "transient" not in exchanges


async def test_deletes_and_unbinds_remove_their_records(tmp_path):
    async with running(tmp_path) as broker:
        exchanges, queues = broker.exchanges, broker.queues
        exchanges.declare("a", "direct", durable=True)
        exchanges.declare("b", "fanout", durable=True)
        queues.declare_queue("q", durable=True)
        queues.declare_queue("r", durable=True)
        exchanges.bind("q", "a", "k")
        exchanges.bind("q", "b")
        exchanges.bind("r", "a", "k")
        exchanges.publish("a", "k", amqp(b"m"))
        assert len(keys(broker, persistence.BINDING)) == 3
        exchanges.unbind("q", "a", "k")
        exchanges.delete("b")
        queues.delete_queue("r")
        assert keys(broker, persistence.BINDING) == []
        assert keys(broker, persistence.EXCHANGE) == [b"X/a"]
        assert keys(broker, persistence.QUEUE) == [b"Q/q"]
        assert len(keys(broker, persistence.QUEUE_MESSAGE)) == 1  # "m" in q
    async with running(tmp_path) as broker:
        assert [q.name for q in broker.queues] == ["q"]
        assert broker.exchanges.get("b") is None and broker.exchanges.get("a").bindings == {}
        assert [e.message.payload for e in broker.queues.get("q").ready] == [b"m"]


async def test_after_a_crash_handed_out_messages_come_back_redelivered_in_order(tmp_path):
    async with running(tmp_path) as broker:
        queue = broker.queues.declare_queue("work", durable=True)
        for i in range(4):
            broker.exchanges.publish("", "work", amqp(str(i).encode()))

        class Holder:
            def __init__(self) -> None:
                self.tags = []

            def deliver_from_queue(self, queue, entry, tag):
                self.tags.append(tag)

            def has_credit(self):
                return True

        holder = Holder()
        queue.add_consumer(holder, prefetch=2)
        queue.ack(holder.tags[0])  # "0" is done; "1" and "2" are out unacknowledged
        image = crash_image(tmp_path, tmp_path / "crash")
    async with running(image) as broker:
        queue = broker.queues.get("work")
        assert [(e.message.payload, e.redelivered) for e in queue.ready] == [
            (b"1", True), (b"2", True), (b"3", False)]


async def test_a_persistent_publish_is_durable_before_its_confirm(tmp_path):
    async with running(tmp_path, fsync="always") as broker:
        durability = broker.durability
        broker.queues.declare_queue("q", durable=True)
        broker.queues.declare_queue("t")
        assert await durability.wait_durable(5)
        mark = durability.mark()
        broker.exchanges.publish("", "t", amqp(b"in a transient queue"))
        broker.exchanges.publish("", "q", amqp(b"transient", persistent=False))
        assert durability.mark() == mark  # nothing recorded: confirm at once
        broker.exchanges.publish("", "q", amqp(b"persistent"))
        assert durability.mark() != mark and durability.pending()
        assert await durability.wait_durable(5)
        store = durability.store
        assert store.synced_seq >= store.last_seq


async def test_mqtt_qos1_messages_in_a_durable_queue_bound_on_amq_topic_survive(tmp_path):
    async with running(tmp_path) as broker:
        broker.queues.declare_queue("readings", durable=True)
        broker.exchanges.bind("readings", "amq.topic", "sensors.#")
        broker.publish(Message("sensors/t1", b"q1", qos=1, origin_protocol="mqtt"))
        broker.publish(Message("sensors/t2", b"q0", qos=0, origin_protocol="mqtt"))
    async with running(tmp_path) as broker:
        queue = broker.queues.get("readings")
        assert [e.message.payload for e in queue.ready] == [b"q1"]
        broker.publish(Message("sensors/a/b", b"again", qos=1, origin_protocol="mqtt"))
        assert [e.message.payload for e in queue.ready] == [b"q1", b"again"]


def amqp_state(broker) -> dict:
    """What a restart must give back of AMQP's state: durable exchanges, durable
    non-exclusive queues with their declaration and persistent messages, the bindings
    between them."""
    exchanges = {e.name: (e.kind, e.auto_delete, e.internal, e.arguments,
                          sorted((b.queue, b.routing_key, repr(b.arguments))
                                 for b in e.bindings.values()
                                 if broker.queues.get(b.queue).durable))
                 for e in broker.exchanges if e.durable}
    queues = {}
    for queue in broker.queues:
        if queue.durable and not queue.exclusive:
            messages = [(e.message.payload, e.message.amqp)
                        for e in sorted(queue.entries(), key=lambda e: e.seq) if e.persistent]
            queues[queue.name] = (queue.auto_delete, queue.arguments, messages)
    return {"exchanges": exchanges, "queues": queues}


async def test_a_restart_gives_back_the_same_durable_state(tmp_path):
    async with running(tmp_path) as broker:
        exchanges, queues = broker.exchanges, broker.queues
        exchanges.declare("dlx", "fanout", durable=True)
        exchanges.declare("logs", "topic", durable=True)
        exchanges.declare("h", "headers", durable=True, internal=True)
        queues.declare_queue("dead", durable=True)
        queues.declare_queue("work", durable=True, arguments={
            "x-dead-letter-exchange": "dlx", "x-max-length": 3})
        queues.declare_queue("notes", durable=True, auto_delete=True)
        queues.declare_queue("temp")
        exchanges.bind("dead", "dlx")
        exchanges.bind("work", "logs", "#.error")
        exchanges.bind("notes", "logs", "app.*")
        exchanges.bind("temp", "logs", "#")
        exchanges.bind("notes", "h", "", {"x-match": "any", "k": 1})
        for i in range(5):  # two pushed out into "dead"
            exchanges.publish("logs", f"db.{i}.error" if i % 2 else "error", amqp(b"%d" % i))
        exchanges.publish("logs", "app.x", amqp(b"note"))
        broker.queues.declare("stomp-made")  # STOMP: declared by use
        queues.get("stomp-made").put(Message("stomp-made", b"s", qos=1), persistent=True)
        before, sessions_before = amqp_state(broker), persistent_state(broker)
        assert len(before["queues"]["dead"][2]) == 2
    async with running(tmp_path) as broker:
        assert amqp_state(broker) == before
        assert persistent_state(broker) == sessions_before

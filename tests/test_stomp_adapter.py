"""Broker behaviour over the STOMP adapter, in memory.

Each test is named after the STOMP 1.2 section it covers (``connecting_``,
``heart_beating_``, ``send_``, ``subscribe_``, ``ack_``, ...);
``tests/STOMP-1.2-COVERAGE.md`` maps the specification's requirements to them.
"""

import pytest
import trio

from polybroker import __version__
from polybroker.adapters.stomp import subscribe as stomp_subscribe
from polybroker.adapters.stomp import transactions as stomp_transactions
from polybroker.config import Limits, StompSettings
from polybroker.message import Message
from polybroker.protocols.mqtt import Publish
from polybroker.protocols.stomp import HEART_BEAT

from .rawclient import connect_client as connect_mqtt
from .stompclient import connect_client


async def connected(nursery, broker, version: str | None = "1.2", **headers: str):
    client = await connect_client(nursery, broker)
    await client.connect(version, **headers)
    return client


async def assert_error_and_close(
    client, *words: str, receipt_id: str | None = None, timeout: float = 5
):
    """The broker answers with one ERROR frame (``message`` naming ``words``), then closes."""
    frames = await client.receive_until_closed(timeout)
    assert [f.command for f in frames] == ["ERROR"], frames
    error = frames[0]
    for word in words:
        assert word in error.get("message"), error
    assert error.get("receipt-id") == receipt_id
    return error


def payloads(frames) -> list[bytes]:
    return [f.body for f in frames]


# -- Connecting and Protocol Negotiation ---------------------------------------------------


async def test_connecting_connected_frame_1_2(nursery, broker):
    client = await connect_client(nursery, broker)
    frame = await client.connect("1.2")
    assert frame.get("version") == "1.2"
    assert frame.get("heart-beat") == "10000,10000"
    assert frame.get("server") == f"polybroker/{__version__}"
    assert frame.get("session") == client.server.session_id


async def test_connecting_stomp_frame_is_handled_as_connect(nursery, broker):
    client = await connect_client(nursery, broker)
    frame = await client.connect("1.2", command="STOMP")
    assert frame.get("version") == "1.2"


async def test_protocol_negotiation_no_accept_version_means_1_0(nursery, broker):
    client = await connect_client(nursery, broker)
    frame = await client.connect(None)
    assert frame.get("version") is None and frame.get("heart-beat") is None
    assert frame.get("session") and frame.get("server")
    assert client.server.conn.version == "1.0"


@pytest.mark.parametrize(("accept", "version"), [("1.0,1.1,2.0", "1.1"), ("1.1,1.2", "1.2")])
async def test_protocol_negotiation_highest_common_version(nursery, broker, accept, version):
    client = await connect_client(nursery, broker)
    assert (await client.connect(accept)).get("version") == version


async def test_protocol_negotiation_no_common_version_is_an_error(nursery, broker):
    client = await connect_client(nursery, broker)
    await client.send("CONNECT", {"accept-version": "2.0,2.1", "host": "h"})
    error = await assert_error_and_close(client, "no common STOMP version")
    assert error.get("version") == "1.0,1.1,1.2"


async def test_connecting_login_passcode_and_host_are_accepted_and_kept(nursery, broker):
    client = await connected(nursery, broker, login="alice", passcode="secret")
    assert (client.server.login, client.server.host) == ("alice", "localhost")


async def test_connecting_refused_login_is_an_error(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config({"good": "x"}, None))
    client = await connect_client(nursery, broker)
    await client.send("CONNECT", {"accept-version": "1.2", "host": "h", "login": "bad",
                                  "passcode": "x"})
    await assert_error_and_close(client, "access refused")
    good = await connected(nursery, broker, login="good", passcode="x")
    assert good.server.login == "good"


async def test_connecting_operation_before_connect_is_an_error(nursery, broker):
    client = await connect_client(nursery, broker)
    await client.send("SEND", {"destination": "/topic/a", "receipt": "7"}, b"x")
    await assert_error_and_close(client, "before CONNECT", receipt_id="7")


@pytest.mark.parametrize("bad", [b"\r\x00", b"MESSAGE\n\n\x00", b"CONNECT\n"])
async def test_connecting_a_bad_frame_in_the_read_of_the_connect_comes_after_connected(
        nursery, broker, bad):
    client = await connect_client(nursery, broker)
    await client.send_raw(b"CONNECT\naccept-version:1.2\nhost:h\n\n\x00" + bad)
    frames = await client.receive_until_closed()
    assert [f.command for f in frames] == ["CONNECTED", "ERROR"]  # never the ERROR alone
    assert frames[1].get("message")


async def test_connecting_second_connect_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("CONNECT", {"accept-version": "1.2", "host": "h"})
    await assert_error_and_close(client, "second CONNECT")


async def test_connecting_without_connect_in_time_is_closed(nursery, autojump_clock, make_broker):
    broker = make_broker(limits=Limits(connect_timeout=3))
    client = await connect_client(nursery, broker)
    start = trio.current_time()
    await assert_error_and_close(client, "no CONNECT")
    assert 3 <= trio.current_time() - start < 3 + 2.5  # timeout, then at most the linger


async def test_connecting_connection_is_registered_with_the_broker(nursery, broker):
    client = await connected(nursery, broker)
    assert client.server in broker.connections
    await client.request("DISCONNECT")
    await client.receive_until_closed()
    await client.close()
    with trio.fail_after(5):
        await client.server_done.wait()
    assert client.server not in broker.connections


# -- Heart-beating -------------------------------------------------------------------------


async def test_heart_beating_server_sends_at_the_negotiated_interval(
    nursery, autojump_clock, make_broker):
    broker = make_broker(stomp=StompSettings(heart_beat_send=5, heart_beat_receive=0))
    client = await connected(nursery, broker, heart_beat="0,8000")  # MAX(5000, 8000)
    assert client.server.conn.heart_beat == (8000, 0)
    start = trio.current_time()
    for beat in range(1, 4):
        assert await client.receive_event(timeout=60) is HEART_BEAT
        assert trio.current_time() - start == pytest.approx(8 * beat, abs=0.01)


@pytest.mark.parametrize(("asked", "interval"), [(500, 500), (20, 100), (60000, 60000)])
async def test_heart_beating_follows_the_client_down_to_the_floor(
    nursery, autojump_clock, asked, interval, make_broker
):
    # heart_beat_send (10 s) is no floor: a client asking for a beat every 500 ms gets
    # one every 500 ms (as from RabbitMQ), one asking for 20 ms gets heart_beat_min.
    broker = make_broker(stomp=StompSettings(heart_beat_min=0.1))
    client = await connect_client(nursery, broker)
    frame = await client.connect("1.2", heart_beat=f"0,{asked}")
    assert frame.get("heart-beat") == f"{min(interval, 10000)},10000"
    assert client.server.conn.heart_beat == (interval, 0)
    if interval > 1000:
        return
    start = trio.current_time()
    for beat in range(1, 4):
        assert await client.receive_event(timeout=60) is HEART_BEAT
        assert trio.current_time() - start == pytest.approx(interval / 1000 * beat, abs=0.01)


async def test_heart_beating_send_0_stays_off_whatever_the_client_asks(
    nursery, autojump_clock, make_broker):
    broker = make_broker(stomp=StompSettings(heart_beat_send=0))
    client = await connect_client(nursery, broker)
    frame = await client.connect("1.2", heart_beat="0,500")
    assert frame.get("heart-beat") == "0,10000"
    assert client.server.conn.heart_beat == (0, 0)


async def test_heart_beating_data_counts_as_a_beat(nursery, autojump_clock, make_broker):
    broker = make_broker(stomp=StompSettings(heart_beat_send=5, heart_beat_receive=0))
    client = await connected(nursery, broker, heart_beat="0,5000")
    await client.subscribe("/topic/t")
    for _ in range(3):
        await trio.sleep(4)  # ok: mock clock
        await client.publish("/topic/t", "data")
        assert (await client.receive_event()).command == "MESSAGE"
    start = trio.current_time()
    assert await client.receive_event(timeout=60) is HEART_BEAT
    assert trio.current_time() - start == pytest.approx(5, abs=0.01)


async def test_heart_beating_client_beats_keep_the_connection(nursery, autojump_clock, make_broker):
    broker = make_broker(stomp=StompSettings(heart_beat_send=0, heart_beat_receive=10))
    client = await connected(nursery, broker, heart_beat="5000,0")  # MAX(5000, 10000)
    assert client.server.conn.heart_beat == (0, 10000)
    for beat in range(10):
        await trio.sleep(9)  # ok: mock clock
        if beat % 2:
            await client.send_raw(b"\n")
        else:  # any data counts, frames too
            await client.send("SEND", {"destination": "/topic/nobody"}, b"data")
    assert await client.messages_until_idle() == []


async def test_heart_beating_silent_client_is_dropped_after_twice_the_interval(
    nursery, autojump_clock, make_broker
):
    broker = make_broker(stomp=StompSettings(heart_beat_send=0, heart_beat_receive=10))
    client = await connected(nursery, broker, heart_beat="5000,0")
    await client.send_raw(b"\r\n")
    start = trio.current_time()
    await assert_error_and_close(client, "heart-beat timeout", timeout=60)
    assert 20 <= trio.current_time() - start < 22.5


@pytest.mark.parametrize("header", [{"heart_beat": "0,0"}, {}])  # missing means 0,0
async def test_heart_beating_off_when_either_side_says_0(
    nursery, autojump_clock, header, make_broker):
    broker = make_broker()  # the server offers 10000,10000
    client = await connected(nursery, broker, **header)
    assert client.server.conn.heart_beat == (0, 0)
    with trio.move_on_after(300):
        await client.receive_event(timeout=600)
        pytest.fail("no heart-beat (or anything) expected")
    assert await client.messages_until_idle() == []


async def test_heart_beating_none_in_1_0(nursery, autojump_clock, broker):
    client = await connected(nursery, broker, None, heart_beat="1000,1000")
    assert client.server.conn.heart_beat == (0, 0)
    await trio.sleep(100)  # ok: mock clock
    assert await client.messages_until_idle() == []


# -- SEND and MESSAGE ----------------------------------------------------------------------


async def test_send_topic_fans_out_to_every_subscriber(nursery, broker):
    subs = [await connected(nursery, broker) for _ in range(3)]
    for sub in subs:
        await sub.subscribe("/topic/news")
    pub = await connected(nursery, broker)
    await pub.publish("/topic/news", "hello")
    for sub in subs:
        message = await sub.receive()
        assert (message.command, message.body) == ("MESSAGE", b"hello")


async def test_message_frame_headers(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/a/+", "s1")
    await sub.publish("/topic/a/b", "one", content_type="text/plain", colour="blue")
    await sub.publish("/topic/a/c", "two")
    first, second = await sub.receive(), await sub.receive()
    assert first.get("destination") == "/topic/a/b"  # as sent, not the filter
    assert first.get("subscription") == "s1"
    assert first.get("content-type") == "text/plain"
    assert first.get("colour") == "blue"  # user headers pass through
    assert first.get("content-length") == "3"
    assert first.get("ack") is None  # auto mode
    for reserved in ("receipt", "transaction", "redelivered"):
        assert first.get(reserved) is None
    assert first.get("message-id") != second.get("message-id")


async def test_value_encoding_user_headers_round_trip_escaped_and_untrimmed(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/t")
    await sub.publish("/topic/t", "x", **{"odd:name": "a:b\nc\\d\re", "spaced": "  both  "})
    message = await sub.receive()
    assert message.get("odd:name") == "a:b\nc\\d\re"
    assert message.get("spaced") == "  both  "


async def test_repeated_header_entries_the_first_counts(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/first")
    await sub.subscribe("/topic/second", "1")
    await sub.send_raw(
        b"SEND\ndestination:/topic/first\ndestination:/topic/second\n"
        b"message-id:forged\nsubscription:forged\n\nx\0"
    )
    message = await sub.receive()
    assert (message.get("destination"), message.get("subscription")) == ("/topic/first", "0")
    assert message.get("message-id") != "forged"
    assert ("message-id", "forged") not in message.headers
    assert await sub.messages_until_idle() == []


async def test_send_body_with_nul_octets_round_trips(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/queue/bin")
    body = bytes(range(256))
    await sub.publish("/queue/bin", body, content_type="application/octet-stream")
    assert (await sub.receive()).body == body


async def test_send_wildcards_follow_the_topic_trie(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/a/+", "plus")
    await sub.subscribe("/topic/a/#", "hash")
    await sub.subscribe("/topic/#", "all")
    pub = await connected(nursery, broker)
    broker.publish(Message("$SYS/x", b"$SYS/x"))  # the server's own: clients may not
    for topic in ("a", "a/b", "a/b/c", "x"):
        await pub.publish(f"/topic/{topic}", topic)
    got = sorted((f.get("subscription"), f.body.decode()) for f in await sub.messages_until_idle())
    assert got == [
        ("all", "a"), ("all", "a/b"), ("all", "a/b/c"), ("all", "x"),
        ("hash", "a"), ("hash", "a/b"), ("hash", "a/b/c"),
        ("plus", "a/b"),
    ]


@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", "$foo/bar"])
async def test_send_to_a_dollar_topic_is_refused(nursery, broker, topic):
    # [MQTT-4.7.2-1]: $ topics are the server's; refused as an ACL denial would be.
    sub = await connected(nursery, broker)
    await sub.subscribe(f"/topic/{topic}")
    pub = await connected(nursery, broker)
    await pub.send("SEND", {"destination": f"/topic/{topic}"}, b"spoofed")
    await assert_error_and_close(pub, "access refused", f"/topic/{topic}")
    assert await sub.messages_until_idle() == []


async def test_send_to_a_topic_without_subscribers_is_dropped(nursery, broker):
    pub = await connected(nursery, broker)
    await pub.publish("/topic/nobody", "lost")
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/nobody")
    assert await sub.messages_until_idle() == []


async def test_send_to_a_queue_is_kept_until_a_consumer_comes(nursery, broker):
    pub = await connected(nursery, broker)
    for i in range(3):
        await pub.publish("/queue/work", f"job{i}")
    assert broker.queues.get("work").message_count == 3
    sub = await connected(nursery, broker)
    await sub.subscribe("/queue/work")
    assert payloads(await sub.messages_until_idle()) == [b"job0", b"job1", b"job2"]


async def test_send_queue_competing_consumers_take_turns(nursery, broker):
    workers = [await connected(nursery, broker) for _ in range(3)]
    for worker in workers:
        await worker.subscribe("/queue/jobs")
    pub = await connected(nursery, broker)
    for i in range(9):
        await pub.publish("/queue/jobs", str(i))
    got = [payloads(await w.messages_until_idle()) for w in workers]
    assert got == [[b"0", b"3", b"6"], [b"1", b"4", b"7"], [b"2", b"5", b"8"]]


async def test_send_persistent_to_a_queue_reaches_the_store_hook(nursery, broker):
    events = []

    class Store:
        def enqueued(self, queue, entry):
            events.append(("enqueued", queue.name, entry.message.payload))

        def delivered(self, queue, entry):
            events.append(("delivered", queue.name, entry.message.payload))

        def removed(self, queue, entry):
            events.append(("removed", queue.name, entry.message.payload))

    broker.queues.store = Store()
    client = await connected(nursery, broker)
    await client.publish("/queue/durable", "keep", persistent="true")
    await client.publish("/queue/durable", "transient")
    await client.subscribe("/queue/durable")
    frames = await client.messages_until_idle()
    assert frames[0].get("persistent") == "true"
    assert events == [("enqueued", "durable", b"keep"), ("removed", "durable", b"keep")]


@pytest.mark.parametrize(
    ("destination", "words"),
    [
        ("/topic/a/+", "invalid topic"),
        ("/topic/", "invalid topic"),
        ("/queue/", "invalid queue name"),
        ("/exchange/x", "unknown destination"),
        ("a/b", "unknown destination"),
    ],
)
async def test_send_to_a_destination_the_broker_does_not_serve_is_an_error(
    nursery, broker, destination, words
):
    client = await connected(nursery, broker)
    await client.send("SEND", {"destination": destination, "receipt": "r"}, b"x")
    await assert_error_and_close(client, words, receipt_id="r")


async def test_send_without_destination_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("SEND", {"receipt": "r9"}, b"x")
    await assert_error_and_close(client, "destination", receipt_id="r9")


async def test_message_headers_a_version_cannot_carry_are_left_out(nursery, broker):
    old = await connected(nursery, broker, "1.1")  # 1.1 has no escape for CR
    await old.subscribe("/topic/t")
    pub = await connected(nursery, broker)
    await pub.publish("/topic/t", "x", good="yes", bad="a\rb")
    message = await old.receive()
    assert (message.body, message.get("good"), message.get("bad")) == (b"x", "yes", None)


async def test_message_to_a_destination_a_version_cannot_carry_is_dropped(nursery, broker):
    old = await connected(nursery, broker, None)  # 1.0 cannot carry LF in a header
    await old.request("SUBSCRIBE", {"destination": "/topic/#", "ack": "client"})
    pub = await connected(nursery, broker)
    await pub.send_raw(b"SEND\ndestination:/topic/a\\nb\n\nx\0")  # topic "a<LF>b"
    await pub.publish("/topic/ok", "y")
    assert payloads(await old.messages_until_idle()) == [b"y"]
    # The dropped one is settled; only "y" awaits its ACK.
    assert old.server.subscriptions["/topic/#"].queue.unacked_count == 1


# -- cross-protocol ------------------------------------------------------------------------


async def test_cross_protocol_mqtt_publish_reaches_stomp_topic_subscribers(nursery, broker):
    stomp = await connected(nursery, broker)
    await stomp.subscribe("/topic/a/b", "exact")
    await stomp.subscribe("/topic/a/+", "wild")
    mqtt = await connect_mqtt(nursery, broker)
    await mqtt.connect("pub")
    await mqtt.send(Publish("a/b", b"from mqtt", qos=0))
    frames = sorted([await stomp.receive(), await stomp.receive()],
                    key=lambda f: f.get("subscription"))
    assert [(f.get("subscription"), f.get("destination"), f.body) for f in frames] == [
        ("exact", "/topic/a/b", b"from mqtt"), ("wild", "/topic/a/b", b"from mqtt"),
    ]


async def test_cross_protocol_stomp_send_reaches_mqtt_wildcard_subscribers(nursery, broker):
    mqtt = await connect_mqtt(nursery, broker)
    await mqtt.connect("sub")
    await mqtt.subscribe("a/+", 1)
    stomp = await connected(nursery, broker)
    await stomp.publish("/topic/a/b", "from stomp")
    delivered = await mqtt.receive()
    assert (delivered.topic, delivered.payload, delivered.qos) == ("a/b", b"from stomp", 1)


async def test_cross_protocol_stomp_queue_is_not_in_the_topic_space(nursery, broker):
    mqtt = await connect_mqtt(nursery, broker)
    await mqtt.connect("sub")
    await mqtt.subscribe("#", 1)
    stomp = await connected(nursery, broker)
    await stomp.publish("/queue/private", "only for the queue")
    assert await mqtt.publishes_until_idle() == []


# -- SUBSCRIBE and UNSUBSCRIBE ------------------------------------------------------------


async def test_subscribe_id_must_be_unique_on_the_connection(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/topic/a", "dup")
    await client.send("SUBSCRIBE", {"destination": "/topic/b", "id": "dup", "receipt": "x"})
    await assert_error_and_close(client, "already in use", receipt_id="x")


async def test_subscribe_same_id_on_two_connections_is_fine(nursery, broker):
    one, two = await connected(nursery, broker), await connected(nursery, broker)
    await one.subscribe("/topic/t", "0")
    await two.subscribe("/topic/t", "0")
    await one.publish("/topic/t", "both")
    assert (await one.receive()).body == (await two.receive()).body == b"both"


@pytest.mark.parametrize("destination", ["/topic/a/#/b", "/topic/a+", "/topic/$share/g/t"])
async def test_subscribe_invalid_filter_is_an_error(nursery, broker, destination):
    client = await connected(nursery, broker)
    await client.send("SUBSCRIBE", {"destination": destination, "id": "0"})
    await assert_error_and_close(client, "SUBSCRIBE")


async def test_subscribe_missing_id_is_an_error_from_1_1(nursery, broker):
    client = await connected(nursery, broker, "1.1")
    await client.send("SUBSCRIBE", {"destination": "/topic/a"})
    await assert_error_and_close(client, "'id'")


async def test_subscribe_ack_header_invalid_value_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("SUBSCRIBE", {"destination": "/topic/a", "id": "0", "ack": "sometimes"})
    await assert_error_and_close(client, "ack mode")


async def test_subscribe_count_is_bounded(nursery, broker, monkeypatch):
    monkeypatch.setattr(stomp_subscribe, "MAX_SUBSCRIPTIONS", 1)
    client = await connected(nursery, broker)
    await client.subscribe("/topic/a", "1")
    await client.send("SUBSCRIBE", {"destination": "/topic/b", "id": "2"})
    await assert_error_and_close(client, "subscriptions")


async def test_subscribe_receipt_comes_before_waiting_messages(nursery, broker):
    client = await connected(nursery, broker)
    await client.publish("/queue/backlog", "waiting")
    before = await client.subscribe("/queue/backlog")
    assert before == []
    assert (await client.receive()).body == b"waiting"


async def test_unsubscribe_stops_deliveries(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/topic/t", "s")
    await client.request("UNSUBSCRIBE", {"id": "s"})
    await client.publish("/topic/t", "after")
    assert await client.messages_until_idle() == []
    assert len(broker.router) == 0


async def test_unsubscribe_unknown_id_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("UNSUBSCRIBE", {"id": "nope", "receipt": "u"})
    await assert_error_and_close(client, "no subscription", receipt_id="u")


async def test_subscribe_1_0_without_id_and_unsubscribe_by_destination(nursery, broker):
    client = await connected(nursery, broker, None)
    await client.request("SUBSCRIBE", {"destination": "/topic/old"})
    await client.publish("/topic/old", "1.0")
    message = await client.receive()
    assert (message.body, message.get("subscription")) == (b"1.0", "/topic/old")
    await client.request("UNSUBSCRIBE", {"destination": "/topic/old"})
    await client.publish("/topic/old", "gone")
    assert await client.messages_until_idle() == []


async def test_unsubscribe_requeues_unacknowledged_queue_messages(nursery, broker):
    quitter, stayer = await connected(nursery, broker), await connected(nursery, broker)
    await quitter.subscribe("/queue/q", "a", ack="client-individual")
    await quitter.publish("/queue/q", "held")
    assert (await quitter.receive()).body == b"held"
    await stayer.subscribe("/queue/q", "b")
    await quitter.request("UNSUBSCRIBE", {"id": "a"})
    message = await stayer.receive()
    assert (message.body, message.get("redelivered")) == (b"held", "true")


# -- ACK, NACK and the ack modes ------------------------------------------------------------


async def fill(client, destination: str, count: int) -> None:
    for i in range(count):
        await client.publish(destination, str(i))


async def test_subscribe_ack_auto_settles_on_delivery(nursery, broker):
    consumer = await connected(nursery, broker)
    await consumer.subscribe("/queue/q", ack="auto")
    await fill(consumer, "/queue/q", 2)
    assert [f.get("ack") for f in await consumer.messages_until_idle()] == [None, None]
    assert broker.queues.get("q").unacked_count == 0
    await consumer.close()
    other = await connected(nursery, broker)
    await other.subscribe("/queue/q")
    assert await other.messages_until_idle() == []


async def test_message_ack_header_in_client_modes_1_2(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/queue/q", "c", ack="client")
    await client.subscribe("/queue/r", "i", ack="client-individual")
    await client.publish("/queue/q", "1")
    await client.publish("/queue/r", "2")
    for frame in await client.messages_until_idle():
        assert frame.get("ack")


async def test_subscribe_ack_client_individual_acks_one_message(nursery, broker):
    consumer = await connected(nursery, broker)
    await consumer.subscribe("/queue/q", ack="client-individual")
    await fill(consumer, "/queue/q", 3)
    frames = await consumer.messages_until_idle()
    await consumer.request("ACK", {"id": frames[1].get("ack")})
    assert broker.queues.get("q").unacked_count == 2
    await consumer.close()  # the other two are redelivered to the next consumer
    other = await connected(nursery, broker)
    await other.subscribe("/queue/q")
    got = await other.messages_until_idle()
    assert [(f.body, f.get("redelivered")) for f in got] == [(b"0", "true"), (b"2", "true")]


async def test_subscribe_ack_client_is_cumulative(nursery, broker):
    consumer = await connected(nursery, broker)
    await consumer.subscribe("/queue/q", ack="client")
    await fill(consumer, "/queue/q", 5)
    frames = await consumer.messages_until_idle()
    await consumer.request("ACK", {"id": frames[2].get("ack")})  # 0, 1 and 2
    assert broker.queues.get("q").unacked_count == 2
    # Acknowledged by the cumulative ACK: an ACK of an earlier one is an error now.
    await consumer.send("ACK", {"id": frames[0].get("ack"), "receipt": "late"})
    await assert_error_and_close(consumer, "no such message", receipt_id="late")
    other = await connected(nursery, broker)
    await other.subscribe("/queue/q")
    assert payloads(await other.messages_until_idle()) == [b"3", b"4"]


async def test_ack_1_1_uses_message_id_and_subscription(nursery, broker):
    client = await connected(nursery, broker, "1.1")
    await client.subscribe("/queue/q", "s", ack="client-individual")
    await client.publish("/queue/q", "x")
    message = await client.receive()
    assert message.get("ack") is None  # the header is 1.2's
    await client.request("ACK", {"message-id": message.get("message-id"), "subscription": "s"})
    assert broker.queues.get("q").unacked_count == 0


async def test_ack_1_1_with_the_wrong_subscription_is_an_error(nursery, broker):
    client = await connected(nursery, broker, "1.1")
    await client.subscribe("/queue/q", "s", ack="client")
    await client.publish("/queue/q", "x")
    message = await client.receive()
    await client.send("ACK", {"message-id": message.get("message-id"), "subscription": "t"})
    await assert_error_and_close(client, "subscription 't'")


async def test_ack_1_0_uses_message_id(nursery, broker):
    client = await connected(nursery, broker, None)
    await client.request("SUBSCRIBE", {"destination": "/queue/q", "ack": "client"})
    await client.publish("/queue/q", "x")
    message = await client.receive()
    await client.request("ACK", {"message-id": message.get("message-id")})
    assert broker.queues.get("q").unacked_count == 0


async def test_ack_of_an_unknown_message_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("ACK", {"id": "nope", "receipt": "a1"})
    await assert_error_and_close(client, "no such message", receipt_id="a1")


async def test_ack_in_auto_mode_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/queue/q")
    await client.publish("/queue/q", "x")
    message = await client.receive()
    await client.send("ACK", {"id": message.get("message-id")})
    await assert_error_and_close(client, "no such message")


async def test_nack_client_individual_redelivers_to_another_consumer(nursery, broker):
    a, b = await connected(nursery, broker), await connected(nursery, broker)
    await a.subscribe("/queue/q", ack="client-individual")
    await b.subscribe("/queue/q", ack="client-individual")
    await a.publish("/queue/q", "first")  # a's turn
    message = await a.receive()
    await a.request("NACK", {"id": message.get("ack")})
    again = await b.receive()
    assert (again.body, again.get("redelivered")) == (b"first", "true")
    assert await a.messages_until_idle() == []


async def test_nack_client_mode_is_cumulative(nursery, broker):
    a, b = await connected(nursery, broker), await connected(nursery, broker)
    await a.subscribe("/queue/q", ack="client")
    await fill(a, "/queue/q", 3)
    frames = await a.messages_until_idle()
    await b.subscribe("/queue/q")
    await a.request("NACK", {"id": frames[1].get("ack")})  # 0 and 1, not 2
    redelivered = await b.messages_until_idle()
    assert [(f.body, f.get("redelivered")) for f in redelivered] == [
        (b"0", "true"), (b"1", "true"),
    ]
    assert await a.messages_until_idle() == []
    assert broker.queues.get("q").unacked_count == 1


async def test_nack_with_requeue_false_drops_the_message(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/queue/q", ack="client-individual")
    await client.publish("/queue/q", "poison")
    message = await client.receive()
    await client.request("NACK", {"id": message.get("ack"), "requeue": "false"})
    assert await client.messages_until_idle() == []
    queue = broker.queues.get("q")
    assert queue.message_count == queue.unacked_count == 0


async def test_nack_on_a_topic_subscription_redelivers_to_it(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/topic/t", ack="client-individual")
    await client.publish("/topic/t", "again")
    first = await client.receive()
    await client.request("NACK", {"id": first.get("ack")})
    second = await client.receive()
    assert (second.body, second.get("redelivered")) == (b"again", "true")
    assert second.get("message-id") != first.get("message-id")


async def test_nack_is_not_in_1_0(nursery, broker):
    client = await connected(nursery, broker, None)
    await client.send("NACK", {"message-id": "1"})
    await assert_error_and_close(client, "NACK")


async def test_disconnect_redelivers_unacknowledged_messages_to_another_consumer(
    nursery, broker
):
    a, b = await connected(nursery, broker), await connected(nursery, broker)
    await a.subscribe("/queue/q", ack="client")
    await a.publish("/queue/q", "m")
    assert (await a.receive()).body == b"m"
    await b.subscribe("/queue/q", ack="client")
    await a.close()  # no DISCONNECT: connection lost
    again = await b.receive()
    assert (again.body, again.get("redelivered")) == (b"m", "true")


@pytest.mark.parametrize("header", ["prefetch-count", "activemq.prefetchSize"])
async def test_subscribe_prefetch_bounds_unacknowledged_messages(nursery, broker, header):
    a, b = await connected(nursery, broker), await connected(nursery, broker)
    await a.request("SUBSCRIBE", {"destination": "/queue/q", "id": "0",
                                  "ack": "client-individual", header: "2"})
    await fill(a, "/queue/q", 5)
    frames = await a.messages_until_idle()
    assert payloads(frames) == [b"0", b"1"]
    await a.request("ACK", {"id": frames[0].get("ack")})
    assert payloads(await a.messages_until_idle()) == [b"2"]
    await b.subscribe("/queue/q")  # the rest goes to a consumer with room
    assert payloads(await b.messages_until_idle()) == [b"3", b"4"]


async def test_subscribe_invalid_prefetch_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("SUBSCRIBE", {"destination": "/queue/q", "id": "0",
                                    "prefetch-count": "-1"})
    await assert_error_and_close(client, "prefetch-count")


async def test_slow_consumer_leaves_queue_messages_to_the_others(nursery, make_broker):
    broker = make_broker(limits=Limits(max_outgoing_bytes=200))
    slow = await connect_client(nursery, broker, lockstep=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as reading:
            reading.start_soon(slow.connect)
        await slow.subscribe("/queue/q")
    fast = await connected(nursery, broker)
    await fast.subscribe("/queue/q")
    for i in range(20):
        await fast.publish("/queue/q", f"{i:02d}" * 20)
    got_fast = payloads(await fast.messages_until_idle())
    # The slow one stopped taking messages once its buffer was full; none was lost.
    got_slow = []
    while len(got_fast) + len(got_slow) < 20:
        got_slow.append((await slow.receive()).body)
    assert len(got_slow) <= 4
    assert sorted(got_fast + got_slow) == [f"{i:02d}".encode() * 20 for i in range(20)]


async def test_consumer_that_does_not_read_is_dropped_after_the_send_timeout(
    nursery, autojump_clock, make_broker
):
    broker = make_broker(limits=Limits(send_timeout=3, max_outgoing_bytes=100))
    stuck = await connect_client(nursery, broker, lockstep=True)
    async with trio.open_nursery() as reading:
        reading.start_soon(stuck.connect)
    await stuck.subscribe("/queue/q", ack="client")
    pub = await connected(nursery, broker)
    await fill(pub, "/queue/q", 3)
    start = trio.current_time()
    with trio.fail_after(10):
        await stuck.server_done.wait()
    assert trio.current_time() - start < 3.5
    assert stuck.server not in broker.connections
    queue = broker.queues.get("q")
    assert (queue.consumer_count, queue.message_count) == (0, 3)


# -- BEGIN, COMMIT and ABORT ----------------------------------------------------------------


async def test_begin_commit_sends_are_delivered_at_commit_in_order(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/t")
    pub = await connected(nursery, broker)
    await pub.request("BEGIN", {"transaction": "tx"})
    await pub.publish("/topic/t", "1", transaction="tx")
    await pub.publish("/queue/q", "2", transaction="tx")
    await pub.publish("/topic/t", "3", transaction="tx")
    assert await sub.messages_until_idle() == []
    assert broker.queues.get("q") is None
    await pub.request("COMMIT", {"transaction": "tx"})
    assert payloads(await sub.messages_until_idle()) == [b"1", b"3"]
    assert broker.queues.get("q").message_count == 1


async def test_abort_discards_the_transaction(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/t")
    await sub.request("BEGIN", {"transaction": "tx"})
    await sub.publish("/topic/t", "never", transaction="tx")
    await sub.request("ABORT", {"transaction": "tx"})
    await sub.publish("/topic/t", "after")
    assert payloads(await sub.messages_until_idle()) == [b"after"]


async def test_begin_ack_in_a_transaction_applies_at_commit_only(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/queue/q", ack="client-individual")
    await fill(client, "/queue/q", 2)
    first, second = await client.messages_until_idle()
    queue = broker.queues.get("q")
    await client.request("BEGIN", {"transaction": "t1"})
    await client.request("ACK", {"id": first.get("ack"), "transaction": "t1"})
    assert queue.unacked_count == 2
    await client.request("ABORT", {"transaction": "t1"})
    assert queue.unacked_count == 2
    await client.request("BEGIN", {"transaction": "t2"})
    await client.request("ACK", {"id": first.get("ack"), "transaction": "t2"})
    await client.request("NACK", {"id": second.get("ack"), "transaction": "t2",
                                  "requeue": "false"})
    await client.request("COMMIT", {"transaction": "t2"})
    assert queue.unacked_count == queue.message_count == 0


async def test_begin_transaction_aborted_on_disconnect(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/t")
    pub = await connected(nursery, broker)
    await pub.request("BEGIN", {"transaction": "tx"})
    await pub.publish("/topic/t", "never", transaction="tx")
    await pub.request("DISCONNECT")
    assert await pub.receive_until_closed() == []
    assert await sub.messages_until_idle() == []


async def test_begin_transaction_aborted_when_the_connection_fails(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/t")
    pub = await connected(nursery, broker)
    await pub.request("BEGIN", {"transaction": "tx"})
    await pub.publish("/topic/t", "never", transaction="tx")
    await pub.close()  # no DISCONNECT
    with trio.fail_after(5):
        await pub.server_done.wait()
    assert await sub.messages_until_idle() == []


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        ([("BEGIN", {"transaction": "t"}), ("BEGIN", {"transaction": "t"})], "already begun"),
        ([("COMMIT", {"transaction": "t"})], "unknown transaction"),
        ([("ABORT", {"transaction": "t"})], "unknown transaction"),
        ([("SEND", {"destination": "/topic/t", "transaction": "t"})], "unknown transaction"),
        ([("BEGIN", {})], "'transaction'"),
    ],
)
async def test_begin_commit_abort_errors(nursery, broker, frames, words):
    client = await connected(nursery, broker)
    for command, headers in frames:
        await client.send(command, headers)
    await assert_error_and_close(client, words)


async def test_begin_transaction_ack_already_covered_by_a_cumulative_ack(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/queue/q", ack="client")
    await fill(client, "/queue/q", 2)
    first, second = await client.messages_until_idle()
    await client.request("BEGIN", {"transaction": "t"})
    await client.request("ACK", {"id": first.get("ack"), "transaction": "t"})
    await client.request("ACK", {"id": second.get("ack")})  # covers the first too
    await client.request("COMMIT", {"transaction": "t"})
    assert broker.queues.get("q").unacked_count == 0


async def test_begin_transaction_size_is_bounded(nursery, broker, monkeypatch):
    monkeypatch.setattr(stomp_transactions, "MAX_TRANSACTION_FRAMES", 2)
    client = await connected(nursery, broker)
    await client.request("BEGIN", {"transaction": "t"})
    for _ in range(2):
        await client.publish("/topic/t", "x", transaction="t")
    await client.send("SEND", {"destination": "/topic/t", "transaction": "t"}, b"x")
    await assert_error_and_close(client, "too large")


async def test_begin_open_transactions_are_bounded(nursery, broker, monkeypatch):
    monkeypatch.setattr(stomp_transactions, "MAX_TRANSACTIONS", 1)
    client = await connected(nursery, broker)
    await client.request("BEGIN", {"transaction": "t1"})
    await client.send("BEGIN", {"transaction": "t2"})
    await assert_error_and_close(client, "open transactions")


# -- RECEIPT, DISCONNECT and ERROR -----------------------------------------------------------


async def test_receipt_for_every_client_frame_with_a_receipt_header(nursery, broker):
    client = await connected(nursery, broker)
    sub = {"destination": "/queue/r", "id": "s", "ack": "client-individual"}
    await client.send("SUBSCRIBE", {**sub, "receipt": "subscribe"})
    await client.send("SEND", {"destination": "/queue/r", "receipt": "send-1"}, b"1")
    await client.send("SEND", {"destination": "/queue/r", "receipt": "send-2"}, b"2")
    frames = [await client.receive() for _ in range(5)]
    receipts = [f.get("receipt-id") for f in frames if f.command == "RECEIPT"]
    assert receipts == ["subscribe", "send-1", "send-2"]
    first, second = (f for f in frames if f.command == "MESSAGE")
    for command, headers in [
        ("ACK", {"id": first.get("ack")}),
        ("NACK", {"id": second.get("ack"), "requeue": "false"}),
        ("BEGIN", {"transaction": "t1"}),
        ("COMMIT", {"transaction": "t1"}),
        ("BEGIN", {"transaction": "t2"}),
        ("ABORT", {"transaction": "t2"}),
        ("UNSUBSCRIBE", {"id": "s"}),
    ]:
        await client.send(command, {**headers, "receipt": command.lower()})
        frame = await client.receive()
        assert (frame.command, frame.get("receipt-id")) == ("RECEIPT", command.lower())


async def test_disconnect_with_receipt_then_close(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("DISCONNECT", {"receipt": "77"})
    frames = await client.receive_until_closed()
    assert [(f.command, f.get("receipt-id")) for f in frames] == [("RECEIPT", "77")]


async def test_disconnect_later_frames_are_ignored(nursery, broker):
    sub = await connected(nursery, broker)
    await sub.subscribe("/topic/t")
    pub = await connected(nursery, broker)
    await pub.send_raw(
        b"DISCONNECT\nreceipt:d\n\n\0SEND\ndestination:/topic/t\n\nlate\0"
    )
    assert [f.command for f in await pub.receive_until_closed()] == ["RECEIPT"]
    assert await sub.messages_until_idle() == []


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"SEND\ndestination:/topic/t\nbad\\tescape:1\n\nx\0", "escape"),
        (b"SEND\nno colon\n\nx\0", "colon"),
        (b"FROB\n\n\0", "unknown command"),
        (b"send\ndestination:/topic/t\n\nx\0", "unknown command"),  # case sensitive
        (b"MESSAGE\n\n\0", "only by servers"),
        (b"SUBSCRIBE\ndestination:/topic/t\nid:1\n\nbody\0", "must not have a body"),
        (b"SEND\ndestination:/topic/t\ncontent-length:x\n\n\0", "content-length"),
    ],
)
async def test_error_malformed_or_unknown_frame_then_close(nursery, broker, data, words):
    client = await connected(nursery, broker)
    await client.send_raw(data)
    await assert_error_and_close(client, words)


async def test_connection_lingering_rapid_connects_and_disconnects(nursery, broker):
    for _ in range(50):
        client = await connect_client(nursery, broker)
        await client.send_raw(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0"
                              b"DISCONNECT\nreceipt:bye\n\n\0")
        frames = await client.receive_until_closed()
        assert [f.command for f in frames] == ["CONNECTED", "RECEIPT"]
        await client.close()
        with trio.fail_after(5):
            await client.server_done.wait()
    assert broker.connections == set()


async def test_error_size_limits(nursery, make_broker):
    broker = make_broker(limits=Limits(max_packet_size=1000))
    client = await connected(nursery, broker)
    await client.send("SEND", {"destination": "/topic/t"}, b"x" * 2000)
    await assert_error_and_close(client, "larger than 1000 bytes")


async def test_error_frame_has_a_text_body(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("UNSUBSCRIBE", {"id": "missing"})
    error = await assert_error_and_close(client, "no subscription")
    assert error.get("content-type") == "text/plain" and error.body


async def test_graceful_shutdown_sends_an_error_and_closes(nursery, broker):
    client = await connected(nursery, broker)
    await client.subscribe("/queue/q", ack="client")
    await client.publish("/queue/q", "pending")
    assert (await client.receive()).body == b"pending"
    with trio.fail_after(5):
        async with trio.open_nursery() as stopping:
            stopping.start_soon(broker.shutdown, 5)
            await assert_error_and_close(client, "server shutting down")
    assert broker.connections == set()
    assert broker.queues.get("q").message_count == 1  # back in the queue


async def test_closed_by_an_administrator_gets_an_error_saying_so(nursery, broker):
    client = await connected(nursery, broker)
    (connection,) = broker.connections
    broker.close_connection(connection)
    await assert_error_and_close(client, "disconnected by an administrator")
    with trio.fail_after(5):
        while broker.connections:  # unregistered after its lingering close
            await broker.stats.changed()
    assert dict(broker.stats.closed) == {("stomp", "", "kicked"): 1}

"""pika 1.4 (BlockingConnection) against a real ``polybroker serve`` process with an AMQP
listener: durability across a restart, acknowledgements, prefetch, basic.get, reject and
nack, publisher confirms, returns, transactions, queue life cycle, channel errors, bodies
and heart-beats.

Every wait is bounded and on something the broker sends (a synchronous reply, a callback
run by ``pump``). A synchronous call is a barrier: whatever the broker sent the connection
before its reply has arrived. Nothing sleeps.
"""

import contextlib
import socket
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from .amqp_support import (
    PROTOCOL_HEADER,
    heartbeat_frame,
    method_id,
    pika_params,
    pump,
    raw_open,
    read_frame,
    start_broker,
)
from .clients import WAIT

PERSISTENT = 2


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    # One broker for the module: each test uses queue and exchange names of its own.
    proc = start_broker(tmp_path_factory.mktemp("pika") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def connect(broker):
    made: list[pika.BlockingConnection] = []

    def make(**options) -> pika.BlockingConnection:
        connection = pika.BlockingConnection(pika_params(broker.amqp_port, **options))
        made.append(connection)
        return connection

    try:
        yield make
    finally:
        for connection in made:
            if connection.is_open:
                connection.close()


def _publish_all(channel, queue: str, *bodies: bytes, **properties) -> None:
    for body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(**properties))


def _closed_with(info: pytest.ExceptionInfo, code: int) -> None:
    assert info.value.reply_code == code, info.value


def test_predeclared_exchanges_exist(connect):
    channel = connect().channel()
    for name in ("amq.direct", "amq.fanout", "amq.topic"):
        channel.exchange_declare(name, passive=True)


def test_durable_queue_and_persistent_messages_survive_restart(tmp_path):
    data = tmp_path / "data"
    first = start_broker(data)
    try:
        connection = pika.BlockingConnection(pika_params(first.amqp_port))
        channel = connection.channel()
        channel.confirm_delivery()  # each publish returns once the broker has it on disk
        channel.exchange_declare("orders", "direct", durable=True)
        channel.queue_declare("orders.durable", durable=True)
        channel.queue_bind("orders.durable", "orders", "new")
        channel.queue_declare("orders.transient")
        for n in range(3):
            channel.basic_publish("orders", "new", f"order-{n}".encode(), pika.BasicProperties(
                delivery_mode=PERSISTENT, content_type="text/plain", message_id=f"m{n}",
                correlation_id=f"c{n}", headers={"n": n, "kind": "order"},
            ))
        connection.close()
    finally:
        first.stop()
    second = start_broker(data)
    try:
        connection = pika.BlockingConnection(pika_params(second.amqp_port))
        channel = connection.channel()
        declared = channel.queue_declare("orders.durable", passive=True)
        assert declared.method.message_count == 3
        # The exchange and its binding came back too.
        channel.basic_publish("orders", "new", b"after", pika.BasicProperties(delivery_mode=2))
        got = []
        for _ in range(4):
            method, properties, body = channel.basic_get("orders.durable", auto_ack=True)
            assert method is not None, got
            got.append((body, properties))
        assert [body for body, _ in got] == [b"order-0", b"order-1", b"order-2", b"after"]
        for n, (_, properties) in enumerate(got[:3]):
            assert properties.delivery_mode == PERSISTENT
            assert properties.content_type == "text/plain"
            assert properties.message_id == f"m{n}"
            assert properties.correlation_id == f"c{n}"
            assert properties.headers == {"n": n, "kind": "order"}
        with pytest.raises(ChannelClosedByBroker) as info:
            channel.queue_declare("orders.transient", passive=True)
        _closed_with(info, 404)
        connection.close()
    finally:
        second.stop()


def test_manual_ack_and_prefetch(connect):
    connection = connect()
    channel = connection.channel()
    observer = connection.channel()
    channel.queue_declare("work")
    _publish_all(channel, "work", *(str(n).encode() for n in range(5)))
    channel.basic_qos(prefetch_count=2)
    got = []
    channel.basic_consume("work", lambda ch, method, props, body: got.append((method, body)))
    pump(connection, lambda: len(got) >= 2)
    # A round trip later the broker still holds the other three back.
    assert observer.queue_declare("work", passive=True).method.message_count == 3
    connection.process_data_events(time_limit=0)
    assert [body for _, body in got] == [b"0", b"1"]
    channel.basic_ack(got[0][0].delivery_tag)
    pump(connection, lambda: len(got) >= 3)
    assert got[2][1] == b"2"
    channel.basic_ack(got[2][0].delivery_tag, multiple=True)  # 1 and 2
    pump(connection, lambda: len(got) >= 5)
    assert [body for _, body in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert not any(method.redelivered for method, _ in got)
    # Closing the channel puts its unacknowledged messages back, flagged redelivered.
    channel.close()
    again = connection.channel()
    redelivered = [again.basic_get("work", auto_ack=True) for _ in range(2)]
    assert [body for _, _, body in redelivered] == [b"3", b"4"]
    assert all(method.redelivered for method, _, _ in redelivered)
    assert again.basic_get("work") == (None, None, None)


def test_qos_raised_on_a_live_channel(connect):
    connection = connect()
    channel = connection.channel()
    observer = connection.channel()
    channel.queue_declare("eta")
    _publish_all(channel, "eta", b"a", b"b", b"c")
    channel.basic_qos(prefetch_count=1, global_qos=True)  # per channel, as Celery asks
    got = []
    channel.basic_consume("eta", lambda ch, method, props, body: got.append(body))
    pump(connection, lambda: got)
    assert observer.queue_declare("eta", passive=True).method.message_count == 2
    channel.basic_qos(prefetch_count=2, global_qos=True)  # as Celery does for an ETA task
    pump(connection, lambda: len(got) >= 2)
    assert got == [b"a", b"b"]


def test_basic_get_and_get_empty(connect):
    channel = connect().channel()
    channel.queue_declare("getq")
    assert channel.basic_get("getq") == (None, None, None)
    _publish_all(channel, "getq", b"a", b"b")
    method, _, body = channel.basic_get("getq")
    assert (body, method.message_count, method.redelivered) == (b"a", 1, False)
    channel.basic_ack(method.delivery_tag)
    method, _, body = channel.basic_get("getq", auto_ack=True)
    assert (body, method.message_count) == (b"b", 0)
    assert channel.basic_get("getq") == (None, None, None)


def test_reject_and_nack_requeue_in_original_order(connect):
    channel = connect().channel()
    channel.queue_declare("rejects")
    _publish_all(channel, "rejects", b"w", b"x", b"y", b"z")
    tags = {}
    for _ in range(4):
        method, _, body = channel.basic_get("rejects")
        tags[body] = method.delivery_tag
    channel.basic_reject(tags[b"w"], requeue=False)  # dropped
    channel.basic_ack(tags[b"x"])
    channel.basic_nack(tags[b"z"], multiple=True, requeue=True)  # y and z go back
    again = {}
    for expected in (b"y", b"z"):
        method, _, body = channel.basic_get("rejects")
        assert (body, method.redelivered) == (expected, True)
        again[body] = method.delivery_tag
    # Requeued one by one in reverse, they still come back in their original order.
    channel.basic_reject(again[b"z"], requeue=True)
    channel.basic_nack(again[b"y"], requeue=True)
    bodies = [channel.basic_get("rejects", auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"y", b"z"]
    assert channel.basic_get("rejects") == (None, None, None)


def test_publisher_confirms_with_mandatory_return(connect):
    channel = connect().channel()
    channel.queue_declare("confirmed")
    channel.confirm_delivery()
    channel.basic_publish("", "confirmed", b"routed")  # returns once acked
    channel.basic_publish("amq.direct", "nowhere", b"dropped")  # unroutable: acked as well
    with pytest.raises(UnroutableError) as info:
        channel.basic_publish("amq.direct", "nowhere", b"returned", mandatory=True)
    (returned,) = info.value.messages
    assert returned.method.reply_code == 312
    assert returned.body == b"returned"
    assert channel.basic_get("confirmed", auto_ack=True)[2] == b"routed"


def test_mandatory_return_without_confirms(connect):
    connection = connect()
    channel = connection.channel()
    returned = []
    channel.add_on_return_callback(
        lambda ch, method, props, body: returned.append((method, props, body)))
    channel.basic_publish("amq.direct", "nowhere", b"lost", pika.BasicProperties(
        content_type="text/plain"), mandatory=True)
    pump(connection, lambda: returned)
    method, properties, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == ("amq.direct", "nowhere")
    assert (properties.content_type, body) == ("text/plain", b"lost")


def test_transactions_commit_and_rollback(connect):
    connection = connect()
    channel = connection.channel()
    observer = connection.channel()
    channel.queue_declare("txq")
    channel.tx_select()
    channel.basic_publish("", "txq", b"rolled back")
    channel.tx_rollback()
    channel.basic_publish("", "txq", b"committed")
    assert observer.queue_declare("txq", passive=True).method.message_count == 0
    channel.tx_commit()
    assert observer.queue_declare("txq", passive=True).method.message_count == 1
    # Acknowledgements are transactional too: a rolled back ack leaves the message held.
    method, _, body = channel.basic_get("txq")
    assert body == b"committed"
    channel.basic_ack(method.delivery_tag)
    channel.tx_rollback()
    channel.close()  # so it goes back to the queue
    method, _, body = observer.basic_get("txq")
    assert (body, method.redelivered) == (b"committed", True)
    observer.tx_select()
    observer.basic_ack(method.delivery_tag)
    observer.tx_commit()
    assert observer.queue_declare("txq", passive=True).method.message_count == 0
    observer.close()
    assert connection.channel().basic_get("txq") == (None, None, None)


def test_exclusive_queue_is_locked_for_other_connections(connect):
    owner = connect()
    name = owner.channel().queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-")
    other = connect()
    with pytest.raises(ChannelClosedByBroker) as info:
        other.channel().queue_declare(name, passive=True)
    _closed_with(info, 405)
    with pytest.raises(ChannelClosedByBroker) as info:
        other.channel().basic_consume(name, lambda *args: None)
    _closed_with(info, 405)
    owner.close()  # the queue goes with its connection
    with pytest.raises(ChannelClosedByBroker) as info:
        other.channel().queue_declare(name, passive=True)
    _closed_with(info, 404)


def test_auto_delete_queue_goes_with_its_last_consumer(connect):
    connection = connect()
    channel = connection.channel()
    observer = connection.channel()
    channel.queue_declare("ephemeral", auto_delete=True)
    first = channel.basic_consume("ephemeral", lambda *args: None)
    second = channel.basic_consume("ephemeral", lambda *args: None)
    channel.basic_cancel(first)
    assert observer.queue_declare("ephemeral", passive=True).method.consumer_count == 1
    channel.basic_cancel(second)
    with pytest.raises(ChannelClosedByBroker) as info:
        observer.queue_declare("ephemeral", passive=True)
    _closed_with(info, 404)


def test_purge(connect):
    channel = connect().channel()
    channel.queue_declare("purgeq")
    _publish_all(channel, "purgeq", b"1", b"2", b"3")
    assert channel.queue_purge("purgeq").method.message_count == 3
    assert channel.basic_get("purgeq") == (None, None, None)


def test_delete_if_empty_if_unused_and_broker_cancel(connect):
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("busy")
    _publish_all(channel, "busy", b"waiting")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_delete("busy", if_empty=True)
    _closed_with(info, 406)
    channel = connection.channel()
    channel.queue_declare("idle")
    cancelled = []
    channel.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = channel.basic_consume("idle", lambda *args: None)
    other = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        other.queue_delete("idle", if_unused=True)
    _closed_with(info, 406)
    other = connection.channel()
    assert other.queue_delete("busy").method.message_count == 1
    other.queue_delete("idle")  # its consumer is told (consumer_cancel_notify)
    pump(connection, lambda: cancelled)
    assert cancelled == [tag]


def test_exchange_errors_leave_the_connection_usable(connect):
    connection = connect()
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().exchange_declare("missing", passive=True)
    _closed_with(info, 404)
    channel = connection.channel()
    channel.basic_publish("missing", "key", b"nowhere to go")  # answered by channel.close
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("after-publish")
    _closed_with(info, 404)
    channel = connection.channel()
    channel.exchange_declare("typed", "direct")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.exchange_declare("typed", "fanout")
    _closed_with(info, 406)
    with pytest.raises(ChannelClosedByBroker) as info:
        connection.channel().exchange_declare("amq.custom", "direct")
    _closed_with(info, 403)
    channel = connection.channel()
    assert channel.queue_declare("still-usable").method.queue == "still-usable"


def test_user_id_must_be_the_login(connect):
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("users")
    channel.basic_publish("", "users", b"mine", pika.BasicProperties(user_id="guest"))
    _, properties, body = channel.basic_get("users", auto_ack=True)
    assert (body, properties.user_id) == (b"mine", "guest")
    channel.basic_publish("", "users", b"forged", pika.BasicProperties(user_id="mallory"))
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("users", passive=True)
    _closed_with(info, 406)


def test_empty_and_large_bodies(connect):
    connection = connect()
    channel = connection.channel()
    channel.queue_declare("bodies")
    large = bytes(range(256)) * 4096 + b"1234567"  # 1 MiB + 7: nine body frames
    _publish_all(channel, "bodies", b"", large, b"", content_type="application/octet-stream")
    assert channel.basic_get("bodies", auto_ack=True)[2] == b""
    got = []
    channel.basic_consume("bodies", lambda ch, method, props, body: got.append(body),
                          auto_ack=True)
    pump(connection, lambda: len(got) >= 2)
    assert got == [large, b""]


def test_heartbeats_keep_a_pika_connection_open(connect):
    # pika checks every heartbeat + 5 seconds that the broker sent something, and drops
    # the connection otherwise; the broker must not drop pika, which beats every second.
    connection = connect(heartbeat=2)
    channel = connection.channel()
    channel.queue_declare("beats")
    deadline = time.monotonic() + 7.5
    while (left := deadline - time.monotonic()) > 0:
        connection.process_data_events(time_limit=left)
    assert connection.is_open
    assert channel.queue_declare("beats", passive=True).method.message_count == 0


def test_silent_peer_is_dropped_after_heartbeats(broker):
    sock = raw_open(broker.amqp_port, heartbeat=1)
    with sock:
        quiet_since = time.monotonic()
        kinds = []
        while (frame := read_frame(sock)) is not None:
            kinds.append(frame[0])
        silent = time.monotonic() - quiet_since
    assert kinds and set(kinds) == {8}, kinds  # heart-beats, and no connection.close
    assert 1.5 <= silent <= 4 + 1, silent


def test_heartbeats_from_the_peer_keep_it_connected(broker):
    sock = raw_open(broker.amqp_port, heartbeat=1)
    with sock:
        deadline = time.monotonic() + 2.5  # longer than two intervals of silence
        beats = 0
        while time.monotonic() < deadline:
            sock.sendall(heartbeat_frame())
            frame = read_frame(sock)  # the broker beats at least once per interval
            assert frame is not None, "dropped although beating"
            beats += frame[0] == 8
        assert beats >= 3


def test_wrong_protocol_header_gets_ours_and_a_close(broker):
    with socket.create_connection(("127.0.0.1", broker.amqp_port), timeout=WAIT) as sock:
        sock.sendall(b"AMQP\x01\x01\x00\x0a")  # AMQP 1.0
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(64):
                data += chunk
    assert data == PROTOCOL_HEADER


def test_unframed_garbage_closes_with_frame_error(broker):
    sock = raw_open(broker.amqp_port, heartbeat=0)
    with sock:
        # A method frame whose end octet is wrong: 501 FRAME_ERROR on connection.close.
        sock.sendall(b"\x01\x00\x00\x00\x00\x00\x04\x00\x14\x00\x0a\x00")
        frame = read_frame(sock)
        assert frame is not None and frame[1] == 0
        assert method_id(frame[2]) == (10, 50)
        assert int.from_bytes(frame[2][4:6], "big") == 501


def test_connection_close_reaches_a_client_still_publishing(tmp_path):
    # A body above max_packet_size is a connection error (311); the publishes pipelined
    # behind it are discarded while the broker waits for close-ok and lingers, so pika
    # reads the reply code and text instead of losing the connection to a reset.
    config = tmp_path / "small.toml"
    config.write_text("[limits]\nmax_packet_size = 100000\n")
    proc = start_broker(tmp_path / "data", "--config", str(config))
    try:
        connection = pika.BlockingConnection(pika_params(proc.amqp_port))
        channel = connection.channel()
        channel.basic_publish("amq.topic", "flood", b"x" * 200_000)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            for _ in range(500):
                channel.basic_publish("amq.topic", "flood", b"y" * 1000)
            pump(connection, lambda: False)
        assert info.value.reply_code == 311, info.value
        assert "CONTENT_TOO_LARGE" in info.value.reply_text
    finally:
        proc.stop()

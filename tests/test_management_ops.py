"""The management operations over a running broker on loopback sockets."""

import pytest
import trio

from polybroker.management import ops
from polybroker.protocols.mqtt import ConnAck, Disconnect, Publish
from polybroker.protocols.mqtt import reason_codes as rc
from polybroker.protocols.stomp import Frame, FrameParser, encode_frame
from polybroker.server import open_broker

from .rawclient import RawClient

LISTENERS = ("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0")


async def mqtt(running, client_id: str, **fields) -> RawClient:
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port("mqtt")))
    client.parser.protocol_level = fields.get("protocol_level", 4)
    assert (await client.connect(client_id, **fields)).return_code == 0
    return client


async def stomp(running, login: str = "alice") -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", running.port("stomp"))
    await stream.send_all(encode_frame(Frame("CONNECT", (("accept-version", "1.2"),
                                                          ("login", login)))))
    parser, frames = FrameParser(), []
    with trio.fail_after(5):
        while not frames:
            frames = parser.feed(await stream.receive_some(4096))
    assert frames[0].command == "CONNECTED"
    return stream


async def receipt(stream: trio.SocketStream) -> None:
    parser, frames = FrameParser(), []
    with trio.fail_after(5):
        while not frames:
            frames = parser.feed(await stream.receive_some(4096))
    assert frames[0].command == "RECEIPT", frames


async def connections_until(running, condition, timeout: float = 5) -> None:
    """Wait for connections to open or close until ``condition()`` holds."""
    with trio.fail_after(timeout):
        while not condition():
            await running.broker.stats.changed()


async def test_clients_lists_every_protocol_with_paging_and_filters(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        one, two = await mqtt(running, "sensor-1"), await mqtt(running, "sensor-2")
        stream = await stomp(running)  # each is registered before it was answered
        page = ops.clients(running)
        assert page["total"] == 3
        ids = [item["id"] for item in page["items"]]
        assert ids[:2] == ["sensor-1", "sensor-2"] and ids[2].startswith("stomp-")
        stomp_item = page["items"][2]
        assert stomp_item["user"] == "alice" and stomp_item["protocol"] == "stomp"
        assert stomp_item["listener"] == running.listeners[1].url
        assert ops.clients(running, protocol="mqtt", search="-2")["items"][0]["id"] == "sensor-2"
        second = ops.clients(running, offset=1, limit=1)
        assert [i["id"] for i in second["items"]] == ["sensor-2"] and second["total"] == 3
        with pytest.raises(ops.Invalid, match="limit"):
            ops.clients(running, limit=0)
        with pytest.raises(ops.Invalid, match="protocol"):
            ops.clients(running, protocol="xmpp")
        await one.close(), await two.close(), await stream.aclose()


async def test_client_details_show_subscriptions_queued_and_inflight(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        client = await mqtt(running, "sub", clean_session=False)
        await client.subscribe("a/+", 1)
        await client.send(Publish("a/b", b"x", qos=0))
        assert len(await client.publishes_until_idle()) == 1  # handled: its own copy back
        detail = ops.client(running, "sub")
        assert detail["subscriptions"] == [{"filter": "a/+", "qos": 1}]
        assert detail["messages_in"] == 1 and detail["messages_out"] == 1
        assert detail["queued"] == 0 and detail["inflight"] == 0 and detail["bytes_in"] > 0
        await client.close()
        await connections_until(running, lambda: running.broker.stats.find("sub") is None)
        # Offline: its session is still there, with what waits for it.
        await ops.publish(running, "a/b", "kept", qos=1)
        offline = ops.client(running, "sub")
        assert offline["connected"] is False and offline["queued"] == 1
        with pytest.raises(ops.NotFound, match="'nobody'"):
            ops.client(running, "nobody")


async def test_disconnect_tells_a_5_0_client_administrative_action(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        client = await mqtt(running, "kick-me", protocol_level=5, clean_session=False,
                            properties={0x11: 3600})
        assert ops.disconnect(running, "kick-me")["disconnected"] is True
        packets = await client.receive_until_closed()
        assert packets == [Disconnect(rc.ADMINISTRATIVE_ACTION)]
        await client.close()  # the broker waits for that (lingering close)
        await connections_until(running, lambda: running.broker.stats.find("kick-me") is None)
        assert "kick-me" in running.broker.sessions  # kept: not discarded
        assert running.broker.stats.closed["mqtt", running.listeners[0].url, "kicked"] == 1
        # A disconnected client's session can only be discarded.
        with pytest.raises(ops.NotFound):
            ops.disconnect(running, "kick-me")
        assert ops.disconnect(running, "kick-me", discard_session=True)["session_discarded"]
        assert "kick-me" not in running.broker.sessions


async def test_disconnect_with_discard_ends_the_session(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        client = await mqtt(running, "gone", clean_session=False)
        await client.subscribe("t", 1)
        ops.disconnect(running, "gone", discard_session=True)
        await client.receive_until_closed()
        await client.close()
        await connections_until(running, lambda: not running.broker.stats.live)
        assert "gone" not in running.broker.sessions
        assert ops.subscriptions(running)["total"] == 0


async def test_disconnect_many_by_ids_and_by_filter(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        clients = [await mqtt(running, f"c{i}") for i in range(3)]
        stream = await stomp(running)
        with pytest.raises(ops.Invalid):
            ops.disconnect_many(running)
        assert ops.disconnect_many(running, ids=["c0", "c2", "nope"])["disconnected"] == [
            "c0", "c2"]
        for kicked in (clients[0], clients[2]):
            await kicked.receive_until_closed()
            await kicked.close()
        await connections_until(running, lambda: len(running.broker.stats.live) == 2)
        kicked = ops.disconnect_many(running, protocol="stomp")["disconnected"]
        assert len(kicked) == 1 and kicked[0].startswith("stomp-")
        with trio.fail_after(5):
            while await stream.receive_some(4096):
                pass  # its ERROR, up to the broker's end of stream
        await stream.aclose()
        await connections_until(running, lambda: [i.id for i in running.broker.stats] == ["c1"])
        for client in clients:
            await client.close()
        await stream.aclose()


async def test_subscriptions_of_mqtt_sessions_and_stomp_consumers(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        client = await mqtt(running, "m")
        await client.subscribe("x/#", 0)
        stream = await stomp(running)
        await stream.send_all(encode_frame(Frame("SUBSCRIBE", (
            ("destination", "/queue/work"), ("id", "s1"), ("receipt", "r")))))
        await receipt(stream)
        rows = ops.subscriptions(running)["items"]
        assert rows[0] == {"client": "m", "filter": "x/#", "qos": 0}
        assert rows[1]["destination"] == "/queue/work" and rows[1]["queue"] == "work"
        assert ops.subscriptions(running, client_id="m")["total"] == 1
        await client.close(), await stream.aclose()


async def test_queues_list_one_purge_and_delete(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        broker = running.broker
        queue = broker.queues.declare("jobs")
        for n in range(3):
            await ops.publish(running, "jobs", f"job {n}")  # no subscriber: goes nowhere
            queue.put(_message(f"job {n}"))
        assert ops.queues(running) == [ops.queue(running, "jobs")]
        assert ops.queue(running, "jobs")["ready"] == 3
        assert (await ops.purge_queue(running, "jobs"))["purged"] == 3
        assert ops.queue(running, "jobs")["ready"] == 0
        assert (await ops.delete_queue(running, "jobs"))["deleted"] is True
        with pytest.raises(ops.NotFound, match="'jobs'"):
            ops.queue(running, "jobs")
        with pytest.raises(ops.NotFound):
            await ops.purge_queue(running, "jobs")


async def test_retained_list_read_delete_durably(serve_config, tmp_path):
    config = serve_config(*LISTENERS)
    async with open_broker(config) as running:
        await ops.publish(running, "r/1", "one", retain=True)
        await ops.publish(running, "r/2", b"\xff\x00", retain=True)
        await ops.publish(running, "other", "x", retain=True)
        listed = ops.retained(running, "r/#")
        assert listed["total"] == 2 and [m["topic"] for m in listed["items"]] == ["r/1", "r/2"]
        assert ops.retained(running, "r/#", offset=1, limit=1)["items"][0]["topic"] == "r/2"
        assert ops.retained_message(running, "r/1")["payload"] == "one"
        binary = ops.retained_message(running, "r/2")
        assert binary["payload"] is None and binary["payload_base64"] == "/wA="
        assert (await ops.delete_retained(running, "r/1"))["deleted"]
        with pytest.raises(ops.NotFound, match="'r/1'"):
            ops.retained_message(running, "r/1")
        with pytest.raises(ops.NotFound):
            await ops.delete_retained(running, "r/1")
        with pytest.raises(ops.Invalid):
            ops.retained(running, "a/#/b")
    # The clear is in the store: a restarted broker does not bring r/1 back.
    async with open_broker(config) as running:
        assert [m["topic"] for m in ops.retained(running)["items"]] == ["other", "r/2"]


async def test_publish_reaches_mqtt_and_stomp_subscribers(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        client = await mqtt(running, "m")
        await client.subscribe("news/#", 1)
        stream = await stomp(running)
        await stream.send_all(encode_frame(Frame("SUBSCRIBE", (
            ("destination", "/topic/news/today"), ("id", "s1"), ("receipt", "r")))))
        await receipt(stream)
        result = await ops.publish(running, "news/today", "hello", qos=1)
        assert result["matched"] == 2
        packet = await client.receive()
        assert packet.topic == "news/today" and packet.payload == b"hello"
        parser, frames = FrameParser(), []
        with trio.fail_after(5):
            while not frames:
                frames = parser.feed(await stream.receive_some(4096))
        assert frames[0].command == "MESSAGE" and frames[0].body == b"hello"
        for topic in ("", "a/+", "a/#"):
            with pytest.raises(ops.Invalid, match="topic"):
                await ops.publish(running, topic, "x")
        with pytest.raises(ops.Invalid, match="qos"):
            await ops.publish(running, "t", "x", qos=3)
        await client.close(), await stream.aclose()


async def test_overview_listeners_and_health(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        assert ops.health(running) == {"live": True, "ready": True}
        client = await mqtt(running, "o")
        view = ops.overview(running)
        assert view["connections_by_protocol"]["mqtt"] == 1 and view["sessions"] == 1
        assert [(lc["protocol"], lc["port"]) for lc in ops.listeners(running)] == [
            (lc.protocol, lc.port) for lc in running.listeners]
        assert ops.listeners(running)[0]["connections"] == 1
        await client.close()


async def test_health_is_not_ready_before_the_store_is_restored(serve_config):
    from polybroker.server import start_listeners

    running = await start_listeners(serve_config(*LISTENERS))
    try:
        assert ops.health(running) == {"live": True, "ready": False}
    finally:
        for listener in running.bound:
            for sock in listener.sockets:
                await sock.aclose()


def _message(text: str):
    from polybroker.message import Message

    return Message("jobs", text.encode(), qos=1)


async def test_connack_is_unchanged_by_the_registry(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port("mqtt")))
        assert await client.connect("plain") == ConnAck()
        await client.close()


async def test_close_reasons_taken_over_shutdown_and_client(nursery, broker):
    from .rawclient import connect_client

    first = await connect_client(nursery, broker)
    await first.connect("same")
    second = await connect_client(nursery, broker)
    await second.connect("same")  # takes the session over: the first is closed
    await first.receive_until_closed()
    await first.close()
    third = await connect_client(nursery, broker)
    await third.connect("other")
    await third.send(Disconnect())
    await third.receive_until_closed()
    await broker.shutdown(0.5)  # lingers at most a quarter second for `second`
    assert dict(broker.stats.closed) == {
        ("mqtt", "", "taken_over"): 1, ("mqtt", "", "client_disconnect"): 1,
        ("mqtt", "", "shutdown"): 1}
    assert dict(broker.stats.opened) == {("mqtt", ""): 3}


async def test_close_reasons_are_the_runners_end_reasons(nursery, broker):
    from polybroker.adapters.runner import END_REASONS

    from .rawclient import connect_client

    bad = await connect_client(nursery, broker)
    await bad.connect("bad")
    await bad.send_raw(b"\xf0\x00")  # reserved packet type 15
    await bad.receive_until_closed()
    gone = await connect_client(nursery, broker)
    await gone.connect("gone")
    await gone.close()  # no DISCONNECT
    with trio.fail_after(5):
        while broker.connections:
            await broker.stats.changed()
    assert dict(broker.stats.closed) == {
        ("mqtt", "", "protocol_error"): 1, ("mqtt", "", "peer_closed"): 1}
    assert {reason for _, _, reason in broker.stats.closed} <= set(END_REASONS)


def test_stomp_and_amqp_connections_say_what_they_hold():
    """stats reads their consumers through one typed method, not attribute names."""
    from polybroker.adapters.amqp.connection import AMQPClientConnection
    from polybroker.adapters.stomp import StompClientConnection
    from polybroker.stats import HoldsConsumers

    for connection in (StompClientConnection, AMQPClientConnection):
        assert issubclass(connection, HoldsConsumers)
        assert "holdings" in vars(HoldsConsumers)

"""Streams over the STOMP adapter in memory: SUBSCRIBE with x-queue-type: stream on
/queue/ and /amq/queue/, x-stream-offset of every kind, x-stream-consumer-name, the
offset header on MESSAGE, and what a stream subscription must set."""

from polybroker.streams import StreamQueue

from .test_stomp_adapter import assert_error_and_close, connected, payloads

STREAM = {"x-queue-type": "stream", "prefetch-count": "10"}


async def subscribe(client, destination: str, sub_id: str = "0", **headers: str) -> None:
    await client.request("SUBSCRIBE", {"destination": destination, "id": sub_id,
                                       "ack": "client", **STREAM, **headers})


async def test_subscribe_declares_a_stream_and_reads_from_first(nursery, broker):
    client = await connected(nursery, broker)
    await subscribe(client, "/queue/s", **{"x-stream-offset": "next"})
    assert isinstance(broker.queues.get("s"), StreamQueue)
    for n in range(3):
        await client.publish("/queue/s", f"m{n}")
    live = await client.messages_until_idle()
    assert payloads(live) == [b"m0", b"m1", b"m2"]
    assert [f.get("x-stream-offset") for f in live] == ["0", "1", "2"]
    await subscribe(client, "/amq/queue/s", "1", **{"x-stream-offset": "first"})
    again = await client.messages_until_idle()
    assert payloads(again) == [b"m0", b"m1", b"m2"]  # nothing was consumed away


async def test_offsets_number_last_timestamp_and_interval(nursery, broker):
    client = await connected(nursery, broker)
    await subscribe(client, "/queue/s", "writer")
    for n in range(5):
        await client.publish("/queue/s", f"m{n}")
    await client.messages_until_idle()
    for sub_id, offset, expected in (
        ("a", "offset=3", [b"m3", b"m4"]), ("b", "3", [b"m3", b"m4"]), ("c", "last", [b"m4"]),
        ("d", "timestamp=0", [b"m0", b"m1", b"m2", b"m3", b"m4"]),
        ("e", "timestamp=99999999999", []), ("f", "1h", [b"m0", b"m1", b"m2", b"m3", b"m4"]),
    ):
        await subscribe(client, "/queue/s", sub_id, **{"x-stream-offset": offset})
        frames = await client.messages_until_idle()
        assert payloads(frames) == expected, offset
        assert {f.get("subscription") for f in frames} <= {sub_id}


async def test_the_prefetch_window_and_a_named_consumer_resuming(nursery, broker):
    client = await connected(nursery, broker)
    await subscribe(client, "/queue/s", "w")
    for n in range(6):
        await client.publish("/queue/s", f"m{n}")
    await client.messages_until_idle()
    reader = await connected(nursery, broker)
    await subscribe(reader, "/queue/s", **{"x-stream-offset": "first", "prefetch-count": "2",
                                           "x-stream-consumer-name": "app"})
    frames = await reader.messages_until_idle()
    assert payloads(frames) == [b"m0", b"m1"]
    await reader.request("ACK", {"id": frames[1].get("ack")})  # client mode: both
    assert payloads(await reader.messages_until_idle()) == [b"m2", b"m3"]
    await reader.close()
    again = await connected(nursery, broker)
    await subscribe(again, "/queue/s", **{"x-stream-consumer-name": "app"})
    assert payloads(await again.messages_until_idle()) == [b"m2", b"m3", b"m4", b"m5"]


async def test_a_stream_subscription_must_acknowledge_and_set_a_prefetch(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("SUBSCRIBE", {"destination": "/queue/s", "id": "0",
                                    "x-queue-type": "stream", "ack": "auto"})
    await assert_error_and_close(client, "must acknowledge")
    client = await connected(nursery, broker)
    await client.send("SUBSCRIBE", {"destination": "/queue/s", "id": "0",
                                    "x-queue-type": "stream", "ack": "client"})
    await assert_error_and_close(client, "prefetch-count")


async def test_a_bad_offset_or_a_plain_queue_of_that_name_is_an_error(nursery, broker):
    client = await connected(nursery, broker)
    await client.send("SUBSCRIBE", {"destination": "/queue/s", "id": "0", "ack": "client",
                                    **STREAM, "x-stream-offset": "yesterday"})
    await assert_error_and_close(client, "x-stream-offset")
    client = await connected(nursery, broker)
    await client.publish("/queue/plain", "x")
    await client.send("SUBSCRIBE", {"destination": "/queue/plain", "id": "0", "ack": "client",
                                    **STREAM})
    await assert_error_and_close(client, "x-queue-type")

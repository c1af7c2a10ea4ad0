"""Streams in the core (polybroker.streams): declaration, offsets of every kind, credit
windows, consumers that do not compete, named consumer offsets, restart recovery."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from polybroker.message import Message
from polybroker.overflow import DROPPED, TAKEN
from polybroker.persistence.streams import DiskStreams, stream_directory
from polybroker.queue_registry import QueueRegistry
from polybroker.queues import SharedPrefetch
from polybroker.refusals import AccessRefused, PreconditionFailed
from polybroker.streams import (
    STREAM_WRITE_FAILED,
    MemoryStreams,
    StreamOffset,
    StreamQueue,
    StreamsUnsupported,
    parse_interval,
    parse_offset,
)

STREAM = {"x-queue-type": "stream"}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Reader:
    """A consumer that records (offset, payload, tag)."""

    def __init__(self) -> None:
        self.got: list[tuple[int, bytes, int | None]] = []
        self.credit = True

    def deliver_from_queue(self, queue, entry, tag):
        self.got.append((entry.seq, entry.message.payload, tag))

    def has_credit(self) -> bool:
        return self.credit

    def offsets(self) -> list[int]:
        return [offset for offset, _payload, _tag in self.got]


@pytest.fixture
def wall() -> Clock:
    return Clock(1_700_000_000.0)


def registry(wall: Clock, backend=None) -> QueueRegistry:
    queues = QueueRegistry(lambda: 0.0, max_length=1000)
    queues.streams = backend or MemoryStreams(wall)
    return queues


def declare(queues: QueueRegistry, name: str = "s", **arguments) -> StreamQueue:
    stream = queues.declare_queue(name, durable=True, arguments={**STREAM, **arguments})
    assert isinstance(stream, StreamQueue)
    return stream


def publish(stream: StreamQueue, count: int, wall: Clock | None = None, step: float = 0) -> None:
    for n in range(count):
        stream.deliver(Message("t", b"m%d" % n), 1, False)
        if wall is not None:
            wall.now += step


def test_parse_offset_every_kind():
    assert parse_offset("first") == StreamOffset("first")
    assert parse_offset(b"last") == StreamOffset("last")
    assert parse_offset("next") == StreamOffset("next")
    assert parse_offset(5) == StreamOffset("offset", 5)
    assert parse_offset("17") == StreamOffset("offset", 17)
    assert parse_offset("offset=3") == StreamOffset("offset", 3)
    assert parse_offset("timestamp=1700000000") == StreamOffset("timestamp", 1_700_000_000)
    stamp = datetime(2024, 1, 2, tzinfo=UTC)
    assert parse_offset(stamp) == StreamOffset("timestamp", stamp.timestamp())
    assert parse_offset("1h") == StreamOffset("interval", 3600)
    assert parse_offset("30m") == StreamOffset("interval", 1800)
    assert parse_offset("2D") == StreamOffset("interval", 2 * 86400)
    for bad in ("", "1x", "-1", -1, 1.5, "offset=", "timestamp=x", True, None):
        with pytest.raises(ValueError):
            parse_offset(bad)
    assert parse_interval("7D") == 7 * 86400 and parse_interval("h") is None


def test_declaring_a_stream_checks_flags_and_arguments(wall):
    queues = registry(wall)
    for flags in ({"durable": False}, {"durable": True, "exclusive": True},
                  {"durable": True, "auto_delete": True}):
        with pytest.raises(PreconditionFailed, match="invalid property"):
            queues.declare_queue("s", owner=object(), arguments=STREAM, **flags)
    for key, value in (("x-max-age", "3 days"), ("x-max-age", 5), ("x-max-length-bytes", -1),
                       ("x-stream-max-segment-size-bytes", 0), ("x-message-ttl", 10),
                       ("x-max-length", 10), ("x-dead-letter-exchange", "dlx")):
        with pytest.raises(PreconditionFailed, match=key):
            queues.declare_queue("s", durable=True, arguments={**STREAM, key: value})
    stream = declare(queues, **{"x-max-age": "1h", "x-max-length-bytes": 10_000,
                                "x-stream-max-segment-size-bytes": 1000})
    assert stream.settings.max_age == 3600 and stream.log.max_bytes == 10_000
    assert stream.log.segment_bytes == 1000
    assert declare(queues, **{"x-max-age": "1h", "x-max-length-bytes": 10_000,
                              "x-stream-max-segment-size-bytes": 1000}) is stream
    with pytest.raises(PreconditionFailed, match="inequivalent"):
        queues.declare_queue("s", durable=True, arguments=STREAM)
    queues.declare("plain")  # STOMP's use
    with pytest.raises(PreconditionFailed, match="x-queue-type"):
        queues.declare_stream("plain")
    assert queues.declare_stream("s") is stream
    assert isinstance(queues.declare_stream("new"), StreamQueue)


def test_offsets_first_last_next_number(wall):
    stream = declare(registry(wall))
    publish(stream, 10)
    readers = {spec: Reader() for spec in ("first", "last", "next", "4", "99")}
    for spec, reader in readers.items():
        stream.add_consumer(reader, offset=parse_offset(spec), ack_required=False)
    publish(stream, 2)
    assert readers["first"].offsets() == list(range(12))
    assert readers["last"].offsets() == [9, 10, 11]
    assert readers["next"].offsets() == [10, 11]
    assert readers["4"].offsets() == list(range(4, 12))
    assert readers["99"].offsets() == [10, 11]  # past the end: from the next one
    assert stream.message_count == 12  # reading removed nothing


def test_offsets_by_timestamp_and_interval(wall):
    stream = declare(registry(wall))
    start = wall.now
    publish(stream, 10, wall, step=60)  # one a minute
    at = Reader()
    stream.add_consumer(at, offset=StreamOffset("timestamp", start + 300), ack_required=False)
    assert at.offsets() == list(range(5, 10))
    back = Reader()  # now is start + 600: the last 3 minutes are offsets 7, 8, 9
    stream.add_consumer(back, offset=parse_offset("3m"), ack_required=False)
    assert back.offsets() == [7, 8, 9]
    late = Reader()
    stream.add_consumer(late, offset=StreamOffset("timestamp", start + 10**6),
                        ack_required=False)
    assert late.offsets() == []


def test_credit_window_prefetch_and_acks(wall):
    stream = declare(registry(wall))
    publish(stream, 20)
    reader = Reader()
    stream.add_consumer(reader, offset=parse_offset("first"), prefetch=5)
    assert reader.offsets() == [0, 1, 2, 3, 4]
    assert stream.unacked_count == 5
    stream.ack_many([reader.got[0][2], reader.got[1][2]])
    assert reader.offsets()[-2:] == [5, 6]
    stream.nack_many([reader.got[2][2]], requeue=True)  # nothing is requeued
    assert reader.offsets()[-1] == 7 and reader.offsets().count(2) == 1
    reader.credit = False  # its connection cannot take more
    stream.ack_many([tag for _o, _p, tag in reader.got])
    assert len(reader.got) == 8
    reader.credit = True
    stream.dispatch()
    assert reader.offsets() == list(range(13))


def test_a_shared_window_bounds_consumers_together(wall):
    queues = registry(wall)
    one, two = declare(queues, "a"), declare(queues, "b")
    publish(one, 5)
    publish(two, 5)
    shared = SharedPrefetch(3)
    first, second = Reader(), Reader()
    one.add_consumer(first, offset=parse_offset("first"), shared=shared)
    two.add_consumer(second, offset=parse_offset("first"), shared=shared)
    assert len(first.got) + len(second.got) == 3
    one.ack_many([tag for _o, _p, tag in first.got])
    assert len(first.got) + len(second.got) == 6


def test_two_consumers_at_different_offsets_each_get_everything_from_theirs(wall):
    stream = declare(registry(wall))
    publish(stream, 3)
    early, late = Reader(), Reader()
    stream.add_consumer(early, offset=parse_offset("first"), ack_required=False)
    stream.add_consumer(late, offset=parse_offset("next"), ack_required=False)
    publish(stream, 2)
    assert early.offsets() == [0, 1, 2, 3, 4] and late.offsets() == [3, 4]


def test_get_and_purge_are_not_supported(wall):
    stream = declare(registry(wall))
    with pytest.raises(StreamsUnsupported):
        stream.get()
    with pytest.raises(StreamsUnsupported):
        stream.purge()


def test_a_named_consumer_resumes_after_its_acknowledged_messages(wall):
    stream = declare(registry(wall))
    publish(stream, 10)
    reader = Reader()
    stream.add_consumer(reader, offset=parse_offset("first"), prefetch=4, name="app")
    tags = {offset: tag for offset, _p, tag in reader.got}
    stream.ack_many([tags[0], tags[1], tags[3]])  # 2 is still out
    assert stream.log.offsets["app"] == 2
    stream.remove_consumer(reader)
    again = Reader()
    stream.add_consumer(again, offset=parse_offset("next"), prefetch=100, name="app")
    assert again.offsets()[0] == 2  # the stored offset wins over "next"
    stranger = Reader()
    stream.add_consumer(stranger, offset=parse_offset("next"), name="other")
    assert stranger.got == []


def test_a_disk_stream_and_its_named_offsets_survive_a_restart(wall, tmp_path: Path):
    root = tmp_path / "streams"
    backend = DiskStreams(root, lambda: 0.0, wall)
    queues = registry(wall, backend)
    stream = declare(queues, "sensors/1", **{"x-stream-max-segment-size-bytes": 500})
    publish(stream, 50)
    reader = Reader()
    stream.add_consumer(reader, offset=parse_offset("first"), prefetch=10, name="app")
    stream.ack_many([tag for _o, _p, tag in reader.got[:7]])
    backend.close()
    assert len(list(stream_directory(root, "sensors/1").glob("*.seg"))) > 2

    backend = DiskStreams(root, lambda: 0.0, wall)
    queues = registry(wall, backend)
    again = queues.restore_queue("sensors/1", auto_delete=False,
                                 arguments={**STREAM, "x-stream-max-segment-size-bytes": 500})
    assert isinstance(again, StreamQueue) and again.message_count == 50
    resumed = Reader()
    again.add_consumer(resumed, prefetch=100, name="app")
    assert resumed.offsets() == list(range(7, 50))
    assert resumed.got[0][1] == b"m7"
    queues.delete_queue("sensors/1")
    assert not stream_directory(root, "sensors/1").exists()


def test_retention_of_a_declared_stream_keeps_memory_bounded(wall):
    stream = declare(registry(wall), **{"x-max-length-bytes": 5000,
                                        "x-stream-max-segment-size-bytes": 1000})
    publish(stream, 1000)
    assert stream.log.bytes <= 6000
    assert stream.log.first_offset > 900
    reader = Reader()
    stream.add_consumer(reader, offset=parse_offset("first"), ack_required=False)
    assert reader.offsets()[0] == stream.log.first_offset


def test_retention_of_a_stream_on_disk_bounds_its_files(wall, tmp_path: Path):
    root = tmp_path / "streams"
    backend = DiskStreams(root, lambda: 0.0, wall)
    stream = declare(registry(wall, backend), **{"x-max-length-bytes": 20_000,
                                                 "x-stream-max-segment-size-bytes": 4000})
    directory = stream_directory(root, "s")
    for n in range(3000):
        stream.deliver(Message("t", b"%0100d" % n), 1, False)
        if n % 100 == 0:
            on_disk = sum(p.stat().st_size for p in directory.glob("*.seg"))
            assert on_disk <= 20_000 + 4000 + 200
    assert stream.log.first_offset > 2500
    reader = Reader()
    stream.add_consumer(reader, offset=parse_offset("first"), ack_required=False)
    assert reader.got[0][1] == b"%0100d" % stream.log.first_offset
    backend.close()


def test_a_stream_deleted_and_declared_again_starts_empty(wall, tmp_path: Path):
    backend = DiskStreams(tmp_path / "streams", lambda: 0.0, wall)
    queues = registry(wall, backend)
    publish(declare(queues), 5)
    queues.delete_queue("s")
    again = declare(queues)
    assert again.message_count == 0 and again.log.next_offset == 0
    backend.close()


def test_an_exclusive_consumer_reads_alone(wall):
    stream = declare(registry(wall))
    only = Reader()
    stream.add_consumer(only, exclusive=True)
    with pytest.raises(AccessRefused):
        stream.add_consumer(Reader())
    stream.remove_consumer(only)
    stream.add_consumer(Reader())
    with pytest.raises(AccessRefused):
        stream.add_consumer(Reader(), exclusive=True)


def test_a_write_that_fails_drops_the_message_counted_and_logged(wall, caplog, monkeypatch):
    stream = declare(registry(wall))
    publish(stream, 1)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stream.log, "append", full_disk)
    assert stream.deliver(Message("t", b"lost"), 1, False) == DROPPED
    assert stream.drops.counts[STREAM_WRITE_FAILED] == 1
    assert "STREAM WRITE FAILED" in caplog.text
    monkeypatch.undo()
    assert stream.deliver(Message("t", b"kept"), 1, False) == TAKEN
    assert stream.message_count == 2

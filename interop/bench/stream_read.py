"""Reading a stream from its start: messages per second from a stream of N messages.

    .venv/bin/python interop/bench/stream_read.py [--messages 1000000] [--payload 64]
        [--dir DIR]

Builds a stream on disk the way the broker does (``persistence.streams.DiskStreams``,
16 MiB segments, the store's message encoding), MESSAGES messages of PAYLOAD bytes on
one topic, then reads it from ``first``, best of 3 each:

* ``log``: the stream log's cursor alone (``StreamLog.cursor(first).read``), the bytes of
  every record: what sequential reading costs;
* ``consumer``: a consumer of the stream (``StreamQueue.add_consumer`` at ``first``,
  prefetch 1000, acknowledging as it goes), each message decoded to a ``Message`` and
  handed over: what a client's read costs the core, without the socket;
* ``lookup``: for contrast, a fresh cursor per message (an index lookup and a scan from
  the index entry, as a read by offset costs), over a sample of 20,000 offsets.

Prints one JSON object.
"""

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from polybroker.message import Message
from polybroker.persistence.streams import DiskStreams
from polybroker.queue_registry import QueueRegistry
from polybroker.streams import StreamOffset, StreamQueue

READ_BATCH = 1000
LOOKUPS = 20_000


class Acking:
    """A consumer that acknowledges every message as it arrives."""

    def __init__(self) -> None:
        self.count = 0
        self.tags: list[int] = []

    def deliver_from_queue(self, queue, entry, tag) -> None:
        self.count += 1
        self.tags.append(tag)

    def has_credit(self) -> bool:
        return True


def build(root: Path, messages: int, payload: int) -> tuple[QueueRegistry, StreamQueue, float]:
    queues = QueueRegistry(time.monotonic, max_length=1)
    queues.streams = DiskStreams(root, time.monotonic)
    stream = queues.declare_queue("bench", durable=True, arguments={"x-queue-type": "stream"})
    body = b"x" * payload
    started = time.perf_counter()
    for n in range(messages):
        stream.put(Message("bench/topic", body, qos=1, origin_protocol="mqtt",
                           origin_client=f"c{n % 10}"))
    return queues, stream, time.perf_counter() - started


def read_log(stream: StreamQueue) -> int:
    cursor = stream.log.cursor(stream.log.first_offset)
    count = 0
    while batch := cursor.read(READ_BATCH):
        count += len(batch)
    return count


def read_consumer(stream: StreamQueue) -> int:
    reader = Acking()
    stream.add_consumer(reader, offset=StreamOffset("first"), prefetch=1000, dispatch=False)
    stream.dispatch()  # fills the window; each ack opens it again (and dispatches)
    while reader.tags:
        tags, reader.tags = reader.tags, []
        stream.ack_many(tags)
    stream.remove_consumer(reader)
    return reader.count


def read_lookups(stream: StreamQueue, messages: int) -> int:
    rng = random.Random(1)
    for offset in sorted(rng.randrange(messages) for _ in range(LOOKUPS)):
        assert stream.log.cursor(offset).read(1)[0][0] == offset
    return LOOKUPS


def best_rate(run, expected: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        assert run() == expected
        best = min(best, time.perf_counter() - started)
    return expected / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="stream-bench-"))
    try:
        queues, stream, took = build(root / "streams", args.messages, args.payload)
        disk = sum(p.stat().st_size for p in (root / "streams").rglob("*") if p.is_file())
        result = {
            "messages": args.messages, "payload": args.payload,
            "segments": len(stream.log.segments), "disk_bytes": disk,
            "append_per_s": round(args.messages / took),
            "log_read_per_s": round(best_rate(lambda: read_log(stream), args.messages)),
            "consumer_read_per_s": round(best_rate(lambda: read_consumer(stream),
                                                   args.messages)),
            "lookup_read_per_s": round(best_rate(lambda: read_lookups(stream, args.messages),
                                                 LOOKUPS)),
        }
        queues.streams.close()
        print(json.dumps(result))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Memory one queued message costs in a session's backlog.

    .venv/bin/python interop/bench/queued_memory.py [--messages 100000] [--payload 64]
        [--persistent]

Publishes MESSAGES QoS 1 messages of PAYLOAD bytes (each its own Message, as each comes
from the network) to one offline session subscribed at QoS 1, and measures the Python heap
that grew (tracemalloc), divided by the messages queued. With ``--persistent`` the session
is persistent on a store in a temporary directory (``queue_overflow`` bounds it by
``storage.max_stored_*_per_session``), so the store's in-memory index of each record
counts too. Prints one JSON object.
"""

import argparse
import json
import tempfile
import tracemalloc
from pathlib import Path

import trio

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits, StorageConfig
from polybroker.durability import open_durable_state
from polybroker.message import Message
from polybroker.sessions import SubscriptionOptions


def fill(broker: Broker, messages: int, payload: int) -> tuple[int, int]:
    """Queue the messages; (heap bytes grown, messages queued)."""
    session, _ = broker.open_session("sub", clean=False)
    broker.subscribe(session, "t", SubscriptionOptions(1))
    bodies = [bytes([i % 256]) * payload for i in range(messages)]  # made before: the
    tracemalloc.start()  # payloads arrive from the network in any case
    before, _ = tracemalloc.get_traced_memory()
    for body in bodies:
        broker.publish(Message("t", body, 1))
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return after - before, len(session.queued)


async def persistent(messages: int, payload: int) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as directory:
        config = BrokerConfig(data_dir=Path(directory), limits=Limits(),
                              storage=StorageConfig(fsync="never"))
        broker = Broker(config)
        async with open_durable_state(broker):
            return fill(broker, messages, payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--persistent", action="store_true")
    args = parser.parse_args()
    if args.persistent:
        grown, queued = trio.run(persistent, args.messages, args.payload)
    else:
        limits = Limits(max_queued_messages=args.messages, max_queued_bytes=2**40)
        grown, queued = fill(Broker(BrokerConfig(limits=limits)), args.messages, args.payload)
    print(json.dumps({
        "messages": queued, "payload": args.payload, "persistent": args.persistent,
        "heap_bytes": grown, "bytes_per_message": round(grown / max(queued, 1)),
    }))


if __name__ == "__main__":
    main()

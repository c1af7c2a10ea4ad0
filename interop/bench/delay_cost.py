"""Whether pending delayed messages slow routing down.

    .venv/bin/python interop/bench/delay_cost.py [--pending 100000] [--messages 200000]
        [--repeats 5]

In the broker core (no network): routes MESSAGES messages to ten subscribed sessions
(QoS 0, offline: the router and each session's delivery, nothing kept), with no delayed
message pending and with PENDING pending (due in an hour, so none fires meanwhile), the
two interleaved REPEATS times; then schedules PENDING more delayed messages onto the
PENDING already there (the heap's insert cost). Prints one JSON object: medians in
messages per second.
"""

import argparse
import json
import statistics
import time

import trio

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits
from polybroker.message import Message
from polybroker.sessions import SubscriptionOptions


def make_broker(pending: int) -> Broker:
    broker = Broker(BrokerConfig(limits=Limits(max_delayed_messages=10 * pending + 1)))
    for n in range(10):
        session, _ = broker.open_session(f"sub{n}", clean=False)
        broker.subscribe(session, "site/+/temp", SubscriptionOptions(0))
    for n in range(pending):
        broker.publish(Message(f"$delayed/{3600 + n % 600}/site/{n % 100}/temp", b"later"))
    assert len(broker.delayed) == pending
    return broker


def routing_rate(broker: Broker, messages: int) -> float:
    batch = [Message(f"site/{n % 100}/temp", b"21.5") for n in range(messages)]
    publish = broker.publish
    started = time.perf_counter()
    for message in batch:
        publish(message)
    return messages / (time.perf_counter() - started)


def schedule_rate(broker: Broker, messages: int) -> float:
    batch = [Message(f"site/{n % 100}/temp", b"later") for n in range(messages)]
    schedule = broker.delayed.schedule
    started = time.perf_counter()
    for n, message in enumerate(batch):
        schedule(message, 3600 + n % 600)
    return messages / (time.perf_counter() - started)


async def main(pending: int, messages: int, repeats: int) -> dict:
    empty, full = make_broker(0), make_broker(pending)
    rates: dict[str, list[float]] = {"none": [], "pending": []}
    for _ in range(repeats):
        rates["none"].append(routing_rate(empty, messages))
        rates["pending"].append(routing_rate(full, messages))
    inserts = [schedule_rate(make_broker(pending), pending) for _ in range(repeats)]
    none, held = statistics.median(rates["none"]), statistics.median(rates["pending"])
    return {
        "pending": pending, "messages": messages, "repeats": repeats,
        "routing_per_s_0_pending": round(none),
        f"routing_per_s_{pending}_pending": round(held),
        "ratio": round(held / none, 3),
        f"schedule_per_s_onto_{pending}": round(statistics.median(inserts)),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(trio.run(main, args.pending, args.messages, args.repeats)))

"""Summarises run_queues.sh results: medians over the repeats per (row, broker), the ratio
polybroker / RabbitMQ against the row's target, as markdown tables.

    python3 interop/bench/report_queues.py results.jsonl
"""

import json
import statistics
import sys
from collections import defaultdict

# row -> (label, unit, target ratio)
ROWS = {
    "stomp_queue": ("STOMP SEND -> /queue -> consumer, client acks, prefetch 100", "msg/s", 0.5),
    "stomp_fanout": ("STOMP /topic fan-out 1 -> 100", "deliveries/s", 1.0),
    "amqp_queue": ("AMQP publish -> queue -> consumer, acks, prefetch 100", "msg/s", 0.5),
    "amqp_fanout": ("AMQP fan-out through amq.topic, 1 -> 100 queues", "deliveries/s", 1.0),
    "stomp_durable": ("STOMP persistent SEND, receipts (16 awaited) -> consumer", "msg/s", 0.5),
    "amqp_durable": ("AMQP persistent, pipelined confirms (16 awaited) -> consumer", "msg/s", 0.5),
    "amqp_confirm1": ("AMQP persistent, one confirm at a time, no consumer", "msg/s", 0.5),
}
DETAILS = ("loss_pct", "broker_us_per_msg", "broker_cpu_pct", "gen_cpu_pct")
BASE, OTHER = "rabbitmq", "polybroker"


def fmt(v: float) -> str:
    if v >= 100000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if v >= 10 else f"{v:.2f}"


def median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and r[key] >= 0]
    return statistics.median(vals) if vals else None


def main() -> None:
    with open(sys.argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    data: dict[tuple[str, str], list[dict]] = defaultdict(list)
    errors = []
    for r in rows:
        if "error" in r:
            where = f"{r.get('case')}/{r.get('broker')} repeat {r.get('repeat')}"
            errors.append(f"{where}: {r['error']}")
            continue
        data[(r["case"], r["broker"])].append(r)
    cases = [c for c in ROWS if any(r.get("case") == c for r in rows)]
    print("| row | RabbitMQ | polybroker | ratio | target |")
    print("|---|---|---|---|---|")
    for c in cases:
        label, unit, target = ROWS[c]
        base, other = median(data[(c, BASE)], "rate"), median(data[(c, OTHER)], "rate")
        ratio = f"{other / base:.2f}x" if base and other is not None else "-"
        below = base and other is not None and other / base < target
        cells = [f"{fmt(v)} {unit}" if v is not None else "n/a" for v in (base, other)]
        mark = " (below)" if below else ""
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} | >= {target}x{mark} |")
    print()
    print("| row | broker | runs | rate min-max | loss % | broker CPU us/msg | broker CPU % "
          "| generator CPU % |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cases:
        for b in (BASE, OTHER):
            runs = data[(c, b)]
            if not runs:
                continue
            rates = [r["rate"] for r in runs]
            details = [median(runs, k) for k in DETAILS]
            text = " | ".join("-" if v is None else f"{v:.1f}" for v in details)
            print(f"| {c} | {b} | {len(runs)} | {fmt(min(rates))}-{fmt(max(rates))} | {text} |")
    if errors:
        print("\nErrors:")
        for e in errors:
            print(" -", e)


if __name__ == "__main__":
    main()

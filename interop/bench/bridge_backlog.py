"""How much a bridge holds while its remote is down, and how fast it drains it.

    .venv/bin/python interop/bench/bridge_backlog.py [--seconds 60] [--rate 1000]
        [--payload 64] [--qos 1]

An edge ``polybroker serve`` (fsync batch, the default) bridges ``#`` out to a Mosquitto
on the same machine. Mosquitto is stopped; a paho client publishes RATE QoS 1 messages a
second to the edge for SECONDS seconds (each acknowledged by the edge, that is: stored);
then Mosquitto starts again, and ``mosquitto_sub`` (a persistent session at Mosquitto,
unlimited queue) counts what arrives. Reported: the messages the bridge held, the time
from the bridge's reconnection to the last message at the subscriber, and the drain rate.

Prints one JSON object.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt
from paho.mqtt.client import CallbackAPIVersion

from interop.brokerproc import BrokerProcess
from interop.mosquittoproc import Mosquitto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--qos", type=int, default=1)
    args = parser.parse_args()
    total = int(args.seconds * args.rate)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        remote = Mosquitto(tmp_path / "mosquitto")
        remote.config.write_text(remote.config.read_text() + "max_queued_messages 0\n"
                                 "max_inflight_messages 0\n")
        remote.start()
        edge = None
        try:
            subscribe_once(remote.port)
            config = tmp_path / "edge.toml"
            config.write_text(
                f'[[bridge]]\nname = "up"\nurl = "mqtt://127.0.0.1:{remote.port}"\n'
                f"mqtt_version = 5\nreconnect_min = 0.2\nreconnect_max = 1\n"
                f"max_inflight_messages = 1000\nmax_queued_messages = {total + 1000}\n"
                f'topic = [{{ topic = "#", direction = "out", qos = {args.qos} }}]\n')
            edge = BrokerProcess(tmp_path / "edge", "--config", str(config))
            edge.wait_for_log("bridge up: connected to")
            remote.stop()
            edge.wait_for_log("bridge up: disconnected")
            published = publish(edge.port, total, args.rate, args.payload, args.qos)
            remote.start()
            counter = subprocess.Popen(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(remote.port), "-i", "backend",
                 "-c", "-q", "1", "-t", "#", "-C", str(total), "-F", "%p"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            line = edge.wait_for_log("bridge up: connected to", timeout=60)
            connected = time.monotonic()
            held = int(re.search(r"\((\d+) message", line).group(1))
            if counter.wait(timeout=600):
                raise SystemExit(f"mosquitto_sub failed: {counter.stderr.read().decode()}")
            drained = time.monotonic() - connected
        finally:
            if edge is not None:
                edge.stop()
            remote.stop()
    print(json.dumps({
        "downtime_s": args.seconds, "publish_rate": args.rate, "published": total,
        "publish_s": round(published, 1), "payload_bytes": args.payload, "qos": args.qos,
        "backlog_held": held, "drain_s": round(drained, 2),
        "drain_rate_msg_s": round(total / drained),
    }))


def subscribe_once(port: int) -> None:
    """The counting subscriber's persistent session at Mosquitto, made before the test."""
    subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", "backend",
                    "-c", "-q", "1", "-t", "#", "-W", "1"], capture_output=True)


def publish(port: int, total: int, rate: int, payload_size: int, qos: int) -> float:
    """Publish at ``rate`` a second and wait for every acknowledgement; seconds taken."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="load")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = b"x" * payload_size
    started = time.monotonic()
    infos = []
    for i in range(total):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the load, not synchronizing
        infos.append(client.publish(f"bench/{i % 10}", payload, qos))
    for info in infos:
        info.wait_for_publish(60)
    taken = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return taken


if __name__ == "__main__":
    main()

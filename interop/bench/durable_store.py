"""Restart time and disk bytes per stored message of polybroker's durable state.

    .venv/bin/python interop/bench/durable_store.py [--sessions 1000] [--messages 1000]
        [--payload 64] [--dir DIR]

Builds a data directory the way the broker would: SESSIONS persistent sessions (MQTT 3.1.1,
clean session 0), each subscribed at QoS 1 to its own topic and offline, and MESSAGES QoS 1
messages of PAYLOAD bytes published to each (one stored record per message: SESSIONS x
MESSAGES records). Then:

* disk bytes per stored message: the store's files divided by the messages in it;
* restart time: ``polybroker serve`` on that directory, from exec to the "listening" log
  line (the replay and the state rebuild happen before the listener opens), best of 3;
  the broker's own "restored ... in N s" line and its peak memory are reported too.

Prints one JSON object.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits, StorageConfig
from polybroker.message import Message
from polybroker.persistence import restore
from polybroker.sessions import NEVER_EXPIRES, SubscriptionOptions
from polybroker.storage import LogStore


class OfflineLink:
    """Stands in for a connection while the sessions subscribe; never used after."""

    def send_publish(self, delivery, packet_id, dup) -> bool:
        return True

    def send_pubrel(self, packet_id) -> None:
        pass

    def session_taken_over(self) -> None:
        pass


async def build(data_dir: Path, sessions: int, messages: int, payload: int) -> dict:
    limits = Limits(max_queued_messages=messages + 1)
    storage = StorageConfig(max_stored_messages_per_session=messages + 1)
    broker = Broker(BrokerConfig(limits=limits, storage=storage, data_dir=data_dir))
    store = LogStore.open(data_dir / "store", segment_size=storage.segment_size)
    restore(store, broker, storage)
    started = time.perf_counter()
    for i in range(sessions):
        session, _ = broker.open_session(f"device-{i:05d}", False, NEVER_EXPIRES)
        link = OfflineLink()
        session.attach(link)
        broker.subscribe(session, f"devices/{i:05d}/cmd", SubscriptionOptions(qos=1))
        broker.close_session(session, link)
    body = b"p" * payload
    for _ in range(messages):
        for i in range(sessions):
            broker.publish(Message(f"devices/{i:05d}/cmd", body, 1, origin_protocol="mqtt",
                                   origin_client="backend"))
    store.sync()
    stats = store.stats()
    store.close()
    files = sum(p.stat().st_size for p in (data_dir / "store").glob("*.seg"))
    stored = sessions * messages
    return {
        "records": stats.records, "stored_messages": stored, "store_bytes": files,
        "build_s": round(time.perf_counter() - started, 1),
        # Everything but the messages: one session and one subscription record per session.
        "bytes_per_stored_message": round(files / stored, 1),
    }


def restart(data_dir: Path) -> dict:
    argv = [sys.executable, "-m", "polybroker", "serve", "--listen", "mqtt://127.0.0.1:0",
            "--data-dir", str(data_dir)]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    restored = None
    try:
        for line in proc.stderr:
            if "storage: restored" in line:
                restored = line.strip()
            if "listening on" in line:
                break
        else:
            raise RuntimeError("broker exited before listening")
        ready = time.perf_counter() - started
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak_kb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    finally:
        proc.terminate()
        proc.wait(60)
    replay = float(re.search(r"in ([\d.]+) s;", restored).group(1))
    return {"ready_s": round(ready, 2), "replay_s": replay, "peak_rss_mb": peak_kb // 1024,
            "log": restored.split(" INFO ", 1)[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--dir", type=Path, help="where to build (default: a temporary dir)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="polybroker-durable-"))
    data_dir = base / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    result = {"sessions": args.sessions, "messages_per_session": args.messages,
              "payload": args.payload}
    result |= trio.run(build, data_dir, args.sessions, args.messages, args.payload)
    runs = [restart(data_dir) for _ in range(3)]
    result["restart"] = min(runs, key=lambda r: r["ready_s"])
    result["restart_all_s"] = [r["ready_s"] for r in runs]
    print(json.dumps(result))
    if args.dir is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()

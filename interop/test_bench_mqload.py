"""The STOMP / AMQP load generator of interop/bench: its frames are the protocols'.

Each benchmark row's mode runs for a bounded count against a broker in this process; the
broker accepts every frame and the counts add up (every message delivered to every
consumer, every receipt and confirm received). RabbitMQ is not needed here.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import require_tool

SOURCE = Path(__file__).parent / "bench" / "mqload.c"


@pytest.fixture(scope="module")
def mqload(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("mqload") / "mqload"
    subprocess.run([require_tool("cc"), "-O2", "-Wall", "-Werror", "-o", str(binary), str(SOURCE)],
                   check=True, timeout=120)
    return binary


def run(mqload: Path, *args: str) -> dict:
    done = subprocess.run([str(mqload), *args, "--duration", "20", "--drain", "20"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# The rows of run_queues.sh, with counts small enough for a test.
MODES = {
    "stomp_queue": ["stomp", "--ack", "--prefetch", "10", "--window", "50", "--count", "2000"],
    "stomp_fanout": ["stomp", "--topic", "--subs", "10", "--count", "300"],
    "amqp_queue": ["amqp", "--ack", "--prefetch", "10", "--window", "50", "--count", "2000"],
    "amqp_fanout": ["amqp", "--topic", "--subs", "10", "--count", "300"],
    "stomp_durable": ["stomp", "--persistent", "--confirms", "16", "--ack", "--count", "500"],
    "amqp_durable": ["amqp", "--durable", "--persistent", "--confirms", "16", "--ack",
                     "--count", "500"],
    "amqp_confirm1": ["amqp", "--durable", "--persistent", "--confirms", "1", "--no-sub",
                      "--count", "50"],
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_against_polybroker(mqload, polybroker, mode):
    args = MODES[mode]
    port = polybroker.stomp_port if args[0] == "stomp" else polybroker.amqp_port
    result = run(mqload, *args, "--port", str(port), "--dest", f"bench-{mode}")
    count = int(args[args.index("--count") + 1])
    subs = int(args[args.index("--subs") + 1]) if "--subs" in args else 1
    if "--no-sub" in args:
        subs = 0
    assert result["errors"] == 0
    assert result["sent"] == count
    assert result["received"] == result["expected"] == count * subs
    if "--confirms" in args:
        assert result["confirmed"] == count and result["nacked"] == 0
    else:
        assert result["confirmed"] == 0


def test_sink_reads_and_acknowledges_both_protocols(mqload):
    sink = subprocess.Popen([str(mqload), "sink", "--port", "0", "--duration", "30"],
                            stderr=subprocess.PIPE, text=True)
    try:
        port = re.search(r"listening on (\d+)", sink.stderr.readline()).group(1)
        for proto in ("stomp", "amqp"):
            result = run(mqload, proto, "--no-sub", "--persistent", "--confirms", "100",
                         "--count", "5000", "--port", port)
            assert result["sent"] == result["confirmed"] == 5000
    finally:
        sink.kill()
        sink.wait()

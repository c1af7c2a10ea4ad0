"""$SYS read with Mosquitto's own ``mosquitto_sub -v -t '$SYS/#'`` from a real
``polybroker serve`` process publishing it every second, with traffic of two protocols."""

import re

import stomp

from .brokerproc import BrokerProcess
from .clients import WAIT, OutputProcess
from .conftest import require_tool


def wait_for_all(sub: OutputProcess, *patterns: str) -> None:
    """Read lines until each pattern has matched one, in whatever order they come."""
    waiting = set(patterns)
    while waiting:
        line = sub.wait_for_line("|".join(f"(?:{p})" for p in waiting))
        waiting = {p for p in waiting if not re.search(p, line)}


def test_mosquitto_sub_reads_the_sys_tree_counting_mqtt_and_stomp(tmp_path):
    config = tmp_path / "sys.toml"
    config.write_text("[broker]\nsys_interval = 1\n")
    broker = BrokerProcess(tmp_path / "data", "--config", str(config),
                           listen=("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0"))
    sub_path, pub_path = require_tool("mosquitto_sub"), require_tool("mosquitto_pub")
    stdbuf = require_tool("stdbuf")
    try:
        port = str(broker.port)
        watch = [stdbuf, "-oL", sub_path, "-h", "127.0.0.1", "-p", port, "-v", "-W", str(3 * WAIT)]
        with OutputProcess([*watch, "-t", "$SYS/#"]) as sub:
            # The version is published once at start: it comes as a retained message.
            wait_for_all(sub, r"^\$SYS/broker/version polybroker version \S+$",
                         r"^\$SYS/broker/uptime \d+ seconds$",
                         r"^\$SYS/broker/retained messages/count \d+$",
                         r"^\$SYS/broker/load/bytes/received/1min \d+\.\d\d$",
                         r"^\$SYS/broker/heap/current \d+$")
            # One message in over MQTT, one over STOMP: both count.
            pub = OutputProcess([pub_path, "-h", "127.0.0.1", "-p", port, "-t", "t", "-m", "x"])
            assert pub.finish() == 0
            conn = stomp.Connection([("127.0.0.1", broker.stomp_port)])
            conn.connect(wait=True)
            conn.send("/topic/t", "y")
            # Both counted, and the STOMP client is still connected with the watcher.
            wait_for_all(sub, r"^\$SYS/broker/publish/messages/received 2$",
                         r"^\$SYS/broker/clients/connected 2$")
            conn.disconnect()
            sub.wait_for_line(r"^\$SYS/broker/clients/connected 1$")
        # A new subscriber gets the retained values at once, flagged retained.
        with OutputProcess([stdbuf, "-oL", sub_path, "-h", "127.0.0.1", "-p", port, "-C", "1",
                            "-F", "%r %t %p", "-t", "$SYS/broker/version"]) as one:
            assert one.finish() == 0
            assert re.match(r"^1 \$SYS/broker/version polybroker version", one.lines[0])
    finally:
        assert broker.stop() == 0

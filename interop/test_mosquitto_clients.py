"""Mosquitto's own command-line clients against a real ``polybroker serve`` process.

``mosquitto_sub -d`` prints its protocol steps; a test waits for "received SUBACK"
before publishing. Every subscriber has ``-C`` and ``-W`` (or ``-E``) so it ends by
itself, and every process is reaped in ``finally`` (``with``).
"""

import re
import signal
import subprocess

import pytest

from .clients import WAIT, OutputProcess
from .conftest import require_tool

FORMAT = "%r %q %t %p"  # retain flag, QoS, topic, payload
FORMATTED = re.compile(r"^[01] [012] ")


@pytest.fixture
def mqtt_cli(broker):
    return MosquittoClients(broker.port)


class MosquittoClients:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sub_path = require_tool("mosquitto_sub")
        self.pub_path = require_tool("mosquitto_pub")
        # Through a pipe stdout would be block-buffered: line-buffer it to read each line.
        self.stdbuf_path = require_tool("stdbuf")

    def sub(self, *args: str) -> OutputProcess:
        """Start ``mosquitto_sub -d``; use as a context manager."""
        return OutputProcess(
            [self.stdbuf_path, "-oL",
             self.sub_path, "-h", "127.0.0.1", "-p", str(self.port), "-d", *args]
        )

    def pub(self, *args: str, stdin: str | None = None) -> list[str]:
        """Run ``mosquitto_pub -d`` to completion; its output lines."""
        out = subprocess.run(
            [self.pub_path, "-h", "127.0.0.1", "-p", str(self.port), "-d", *args],
            input=stdin, capture_output=True, text=True, timeout=WAIT,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout.splitlines()


def printed(sub: OutputProcess) -> list[str]:
    """The messages ``mosquitto_sub -v`` printed (its other lines are ``-d`` debug)."""
    return [line for line in sub.lines
            if not line.startswith(("Client ", "Subscribed (", "Unsubscribed ("))]


def received_flags(sub: OutputProcess) -> list[tuple[int, int]]:
    """(QoS, retain) of each PUBLISH the subscriber received, from its debug lines."""
    return [(int(q), int(r)) for q, r in
            re.findall(r"received PUBLISH \(d\d, q(\d), r(\d)", "\n".join(sub.lines))]


# -- QoS --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pub_qos", "sub_qos"), [(0, 0), (1, 1), (2, 2), (2, 1), (2, 0), (1, 2)]
)
def test_mosquitto_pub_reaches_mosquitto_sub_at_min_of_published_and_granted_qos(
    mqtt_cli, pub_qos, sub_qos
):
    with mqtt_cli.sub("-t", "qos/test", "-q", str(sub_qos), "-C", "3", "-W", "10", "-v") as sub:
        sub.wait_for_line(r"received SUBACK")
        assert sub.wait_for_line(r"^Subscribed \(") == f"Subscribed (mid: 1): {sub_qos}"
        out = mqtt_cli.pub("-t", "qos/test", "-q", str(pub_qos), "-l",
                           stdin="one\ntwo\nthree\n")
        assert sub.finish() == 0
    assert printed(sub) == ["qos/test one", "qos/test two", "qos/test three"]
    assert received_flags(sub) == [(min(pub_qos, sub_qos), 0)] * 3
    acks = {0: [], 1: ["PUBACK"], 2: ["PUBREC", "PUBCOMP"]}[pub_qos]
    for ack in acks:
        assert sum(f"received {ack}" in line for line in out) == 3, out


def test_wildcard_subscriptions_plus_and_hash_match_only_their_topics(mqtt_cli):
    with mqtt_cli.sub("-t", "sensors/+/temp", "-t", "home/#", "-q", "1",
                      "-C", "4", "-W", "10", "-v") as sub:
        sub.wait_for_line(r"^Subscribed \(")
        for topic, payload in [
            ("sensors/attic/temp", "a"),
            ("sensors/attic/cellar/temp", "not matched by +"),
            ("sensors/temp", "not matched either"),
            ("sensors/attic/humidity", "no"),
            ("home", "parent level matches #"),
            ("homes/x", "no"),
            ("home/kitchen/light", "on"),
            ("sensors/cellar/temp", "b"),
        ]:
            mqtt_cli.pub("-t", topic, "-m", payload, "-q", "1")
        assert sub.finish() == 0
    assert printed(sub) == [
        "sensors/attic/temp a",
        "home parent level matches #",
        "home/kitchen/light on",
        "sensors/cellar/temp b",
    ]


# -- retained messages ------------------------------------------------------------------


def test_retained_message_set_with_r_reaches_later_mosquitto_sub_with_retain_flag(mqtt_cli):
    mqtt_cli.pub("-t", "state/door", "-m", "open", "-r", "-q", "1")
    with mqtt_cli.sub("-t", "state/#", "-q", "2", "-C", "1", "-W", "10", "-F", FORMAT) as sub:
        assert sub.finish() == 0
    assert [line for line in sub.lines if FORMATTED.match(line)] == ["1 1 state/door open"]
    assert received_flags(sub) == [(1, 1)]


def test_retained_message_is_replaced_by_newer_retained_message(mqtt_cli):
    mqtt_cli.pub("-t", "state/door", "-m", "open", "-r", "-q", "1")
    mqtt_cli.pub("-t", "state/door", "-m", "closed", "-r", "-q", "1")
    with mqtt_cli.sub("-t", "state/door", "-q", "1", "-C", "2", "-W", "10", "-F", FORMAT) as sub:
        sub.wait_for_line(r"received SUBACK")
        mqtt_cli.pub("-t", "state/door", "-m", "marker", "-q", "1")
        assert sub.finish() == 0
    assert [line for line in sub.lines if FORMATTED.match(line)] == [
        "1 1 state/door closed",
        "0 1 state/door marker",
    ]


def test_retained_message_cleared_with_r_n_is_not_delivered(mqtt_cli):
    mqtt_cli.pub("-t", "state/door", "-m", "open", "-r", "-q", "1")
    mqtt_cli.pub("-t", "state/door", "-r", "-n", "-q", "1")
    with mqtt_cli.sub("-t", "state/door", "-q", "1", "-C", "1", "-W", "10", "-F", FORMAT) as sub:
        sub.wait_for_line(r"received SUBACK")
        mqtt_cli.pub("-t", "state/door", "-m", "marker", "-q", "1")
        assert sub.finish() == 0
    assert [line for line in sub.lines if FORMATTED.match(line)] == ["0 1 state/door marker"]


# -- wills ------------------------------------------------------------------------------


def test_will_of_killed_mosquitto_sub_is_published(broker, mqtt_cli):
    with mqtt_cli.sub("-t", "will/#", "-q", "1", "-C", "1", "-W", "10", "-v") as watcher:
        watcher.wait_for_line(r"received SUBACK")
        with mqtt_cli.sub("-i", "victim", "-t", "victim/inbox", "-W", "10",
                          "--will-topic", "will/victim", "--will-payload", "victim died",
                          "--will-qos", "1") as victim:
            victim.wait_for_line(r"received SUBACK")
            victim.send_signal(signal.SIGKILL)
            assert watcher.finish() == 0
    assert printed(watcher) == ["will/victim victim died"]
    assert received_flags(watcher) == [(1, 0)]
    broker.wait_for_log(r"client victim \(.*\): publishing will to will/victim")


def test_no_will_when_mosquitto_sub_disconnects_cleanly(broker, mqtt_cli):
    with mqtt_cli.sub("-t", "will/#", "-q", "1", "-C", "1", "-W", "10", "-v") as watcher:
        watcher.wait_for_line(r"received SUBACK")
        # -E: exit (with DISCONNECT) once the subscription is acknowledged.
        with mqtt_cli.sub("-i", "polite", "-t", "polite/inbox", "-E",
                          "--will-topic", "will/polite", "--will-payload", "should not appear",
                          "--will-qos", "1") as polite:
            assert polite.finish() == 0
        assert any("sending DISCONNECT" in line for line in polite.lines)
        broker.wait_for_log(r"client polite \(.*\) disconnected: client disconnect")
        mqtt_cli.pub("-t", "will/marker", "-m", "marker", "-q", "1")
        assert watcher.finish() == 0
    assert printed(watcher) == ["will/marker marker"]


# -- persistent session -----------------------------------------------------------------


def test_persistent_mosquitto_sub_session_receives_messages_published_while_offline(
    broker, mqtt_cli
):
    with mqtt_cli.sub("-c", "-i", "keeper", "-q", "1", "-t", "offline/#", "-E") as first:
        assert first.finish() == 0
    broker.wait_for_log(r"client keeper \(.*\) disconnected: client disconnect")

    mqtt_cli.pub("-t", "offline/a", "-q", "1", "-l", stdin="m1\nm2\nm3\n")
    mqtt_cli.pub("-t", "offline/b", "-q", "2", "-m", "m4")

    with mqtt_cli.sub("-c", "-i", "keeper", "-q", "1", "-t", "offline/#",
                      "-C", "4", "-W", "10", "-v") as again:
        assert again.finish() == 0
    assert printed(again) == ["offline/a m1", "offline/a m2", "offline/a m3", "offline/b m4"]
    assert received_flags(again) == [(1, 0)] * 4  # QoS 2 downgraded to the granted 1
    broker.wait_for_log(r"client keeper \(.*\): connected \(MQTT level 4, clean session 0")


# -- MQTT 3.1 ---------------------------------------------------------------------------


def test_mqtt31_and_mqtt311_mosquitto_clients_interoperate(broker, mqtt_cli):
    mqtt_cli.pub("-V", "mqttv31", "-i", "v31-pub", "-t", "v31/retained", "-m", "kept",
                 "-r", "-q", "1")
    with mqtt_cli.sub("-V", "mqttv31", "-i", "v31-sub", "-t", "v31/#", "-q", "2",
                      "-C", "3", "-W", "10", "-F", FORMAT) as sub31, \
            mqtt_cli.sub("-V", "mqttv311", "-i", "v311-sub", "-t", "v31/#", "-q", "2",
                         "-C", "3", "-W", "10", "-F", FORMAT) as sub311:
        sub31.wait_for_line(r"received SUBACK")
        sub311.wait_for_line(r"received SUBACK")
        mqtt_cli.pub("-V", "mqttv31", "-i", "v31-pub", "-t", "v31/a", "-m", "from 3.1",
                     "-q", "2")
        mqtt_cli.pub("-V", "mqttv311", "-t", "v31/b", "-m", "from 3.1.1", "-q", "1")
        assert sub31.finish() == 0
        assert sub311.finish() == 0
    expected = ["1 1 v31/retained kept", "0 2 v31/a from 3.1", "0 1 v31/b from 3.1.1"]
    assert [line for line in sub31.lines if FORMATTED.match(line)] == expected
    assert [line for line in sub311.lines if FORMATTED.match(line)] == expected
    levels = dict(
        re.search(r"client (\S+) \(.*\): connected \(MQTT level (\d)", broker.wait_for_log(
            r"client v311?-sub \(.*\): connected")).groups()
        for _ in range(2)
    )
    assert levels == {"v31-sub": "3", "v311-sub": "4"}

"""Where the real broker logs and how much: a line per packet at debug level (as
Mosquitto's -v), a log file that logrotate can move away (reopened on SIGHUP)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import stomp

from .brokerproc import BrokerProcess
from .clients import WAIT
from .conftest import require_tool


def test_debug_level_logs_each_packet_both_ways(tmp_path):
    broker = BrokerProcess(tmp_path / "data", "--log-level", "debug",
                           listen=("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0"))
    try:
        subprocess.run([require_tool("mosquitto_pub"), "-p", str(broker.port), "-q", "1",
                        "-t", "sensors/t1", "-m", "21.5"], check=True, timeout=WAIT)
        broker.wait_for_log(r"mqtt 127\.0\.0\.1:\d+: received CONNECT$")
        broker.wait_for_log(r"mqtt 127\.0\.0\.1:\d+: sent CONNACK$")
        broker.wait_for_log(r"received PUBLISH \(d0, q1, r0, m\d+, 'sensors/t1', \d+ bytes\)")
        broker.wait_for_log(r"sent PUBACK \(m\d+\)")
        broker.wait_for_log(r"received DISCONNECT$")
        client = stomp.Connection([("127.0.0.1", broker.stomp_port)])
        client.connect(wait=True)
        client.send("/topic/sensors/t2", "22")
        client.disconnect()
        broker.wait_for_log(r"stomp 127\.0\.0\.1:\d+: received (CONNECT|STOMP) ")
        broker.wait_for_log(r"received SEND '/topic/sensors/t2' \(2 bytes\)")
    finally:
        assert broker.stop() == 0


def wait_for_text(path: Path, text: str, timeout: float = WAIT) -> str:
    """The file's contents once they hold ``text`` (the broker writes it asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in {path}:\n{content}")
        time.sleep(0.02)  # polling a file the broker appends to; the deadline bounds it


def test_log_file_is_reopened_on_sighup(tmp_path):
    log_file = tmp_path / "broker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "polybroker", "serve", "--listen", "mqtt://127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--log-file", str(log_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_text(log_file, "ready")
        log_file.rename(tmp_path / "broker.log.1")  # as logrotate does
        proc.send_signal(signal.SIGHUP)
        wait_for_text(log_file, "received SIGHUP")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "received SIGHUP" not in (tmp_path / "broker.log.1").read_text()
    assert log_file.read_text().rstrip().endswith("stopped")
    assert proc.stderr.read() == ""  # nothing on standard error with a log file


def test_log_file_that_cannot_be_opened_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "polybroker", "serve", "--listen", "mqtt://127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--log-file", str(tmp_path / "no" / "x.log")],
        capture_output=True, text=True, timeout=WAIT,
    )
    assert out.returncode == 1
    assert out.stderr == (f"polybroker: cannot start: log {tmp_path / 'no' / 'x.log'}: "
                          "No such file or directory\n")

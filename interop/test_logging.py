"""Where the real broker logs and how much: a line per packet at debug level (as
Mosquitto's -v), a log file that logrotate can move away (reopened on SIGHUP)."""

import os
import select
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


class LogPipe:
    """A named pipe standing where the broker's log file is, so that a test can wait for
    what the broker writes (``select``) instead of polling a file. A writer end of our own
    keeps it from ever reading as closed."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_open = os.open(path, os.O_WRONLY)
        self.text = ""

    def wait_for(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError(f"{text!r} not logged; so far:\n{self.text}")
            self.text += os.read(self.fd, 65536).decode()

    def rest(self) -> str:
        """Everything written so far (the writer is done)."""
        while select.select([self.fd], [], [], 0)[0]:
            self.text += os.read(self.fd, 65536).decode()
        return self.text

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._keep_open)


def test_log_file_is_reopened_on_sighup(tmp_path):
    log_file = tmp_path / "broker.log"
    first = LogPipe(log_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", "polybroker", "serve", "--listen", "mqtt://127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--log-file", str(log_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    second = None
    try:
        first.wait_for("ready")
        log_file.rename(tmp_path / "broker.log.1")  # as logrotate does
        second = LogPipe(log_file)  # what the broker opens when it reopens its log
        proc.send_signal(signal.SIGHUP)
        second.wait_for("received SIGHUP")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
        assert "received SIGHUP" not in first.rest()
        assert second.rest().rstrip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        first.close()
        if second is not None:
            second.close()
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

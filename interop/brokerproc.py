"""Run the real ``polybroker`` command as a subprocess for end-to-end tests."""

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STARTUP_TIMEOUT = 20


class BrokerProcess:
    """``polybroker serve`` on a free loopback port; log lines are collected as they come."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self._events: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polybroker", "serve", "--listen", "mqtt://127.0.0.1:0",
             "--data-dir", str(data_dir), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        line = self.wait_for_log(r"listening on mqtt://", STARTUP_TIMEOUT)
        self.port = int(re.search(r":(\d+)$", line).group(1))
        self.stomp_port: int | None = None  # with an extra --listen stomp://...
        if any(arg.startswith("stomp://") for arg in extra):
            line = self.wait_for_log(r"listening on stomp://", STARTUP_TIMEOUT)
            self.stomp_port = int(re.search(r":(\d+)$", line).group(1))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._events.put(line.rstrip("\n"))
        self._events.put("")  # end of output

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        """The next log line matching ``pattern`` (raises on timeout or broker exit)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"no log line matching {pattern!r}:\n" + "\n".join(self.lines)
                ) from None
            if line == "":
                raise RuntimeError("broker exited:\n" + "\n".join(self.lines))
            if re.search(pattern, line):
                return line

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

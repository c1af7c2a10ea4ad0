"""Run the real ``polybroker`` command as a subprocess for end-to-end tests."""

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

STARTUP_TIMEOUT = 20


class BrokerProcess:
    """``polybroker serve`` on free loopback ports; log lines are collected as they come.

    ``listen`` are the ``--listen`` URLs (port 0); ``urls`` the bound ones, in order,
    and ``port`` the first one's port.
    """

    def __init__(self, data_dir: Path, *extra: str,
                 listen: Sequence[str] = ("mqtt://127.0.0.1:0",)) -> None:
        self.lines: list[str] = []
        self._events: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polybroker", "serve",
             *(arg for url in listen for arg in ("--listen", url)),
             "--data-dir", str(data_dir), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        self.wait_for_log(r"polybroker \S+ ready", STARTUP_TIMEOUT)
        self.urls = [match.group(1) for line in list(self.lines)
                     if (match := re.search(r"listening on (\S+)$", line))]
        self.port = self.port_of(self.urls[0].split(":", 1)[0])
        stomp = [u for u in self.urls if u.startswith("stomp://")]
        self.stomp_port: int | None = self.port_of("stomp") if stomp else None

    @property
    def amqp_port(self) -> int:
        """The port of the first ``amqp://`` listener."""
        return self.port_of("amqp")

    def port_of(self, scheme: str) -> int:
        """The port of the first listener with this URL scheme (``mqtt+ws``, ...)."""
        url = next(u for u in self.urls if u.startswith(scheme + "://"))
        return int(re.search(r":(\d+)(/|$)", url.split("]")[-1]).group(1))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._events.put(line.rstrip("\n"))
        self._events.put("")  # end of output

    def wait_for_log(self, pattern: str, timeout: float = 10, *, seen: bool = False) -> str:
        """The next log line matching ``pattern`` (raises on timeout or broker exit);
        ``seen``: also one logged already, even before the broker said it was ready."""
        if seen:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
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

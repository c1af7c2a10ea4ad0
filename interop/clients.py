"""Third-party client processes for the interop tests, their output read line by line."""

import queue
import re
import subprocess
import threading
import time
from collections.abc import Sequence

WAIT = 10  # seconds: the bound on every wait in the interop tests


class OutputProcess:
    """A child process whose stdout and stderr are collected one line at a time.

    ``wait_for_line`` consumes lines up to the first match, so a test can wait for a
    client to reach a state (connected, subscribed) before acting, without sleeping.
    """

    def __init__(self, argv: Sequence[str], **popen_options: object) -> None:
        self.argv = list(argv)
        self.lines: list[str] = []
        self._events: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", **popen_options,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._events.put(line.rstrip("\n"))
        self._events.put(None)  # end of output

    def _describe(self) -> str:
        return f"{' '.join(self.argv)}\n" + "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = WAIT) -> str:
        """The next output line matching ``pattern``; fails on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s from:\n{self._describe()}"
                ) from None
            if line is None:
                self._events.put(None)  # keep reporting the end to later waits
                raise AssertionError(
                    f"output ended before a line matching {pattern!r} from:\n{self._describe()}"
                )
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = WAIT) -> int:
        """Wait for the process to exit by itself and for all its output; its exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"did not exit within {timeout}s:\n{self._describe()}"
            ) from None
        self._reader.join(timeout)
        return code

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        """Kill the process if it still runs and reap it (for ``finally`` blocks)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        self._reader.join(WAIT)

    def __enter__(self) -> "OutputProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Three ways to run a broker for a test, each on free loopback ports: in the test's own
trio loop, in a background thread (for ordinary synchronous tests), in a subprocess
(the real ``polybroker serve`` command, as a deployment runs it)."""

import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from ..server import RunningBroker, open_broker
from .endpoints import Endpoints, broker_config, listen_urls, make_certs

STARTUP_TIMEOUT = 20.0  # seconds


def _endpoints(running: RunningBroker, data_dir: Path, certs_dir: Path | None) -> Endpoints:
    return Endpoints(tuple(lc.url for lc in running.listeners), data_dir, certs_dir)


@asynccontextmanager
async def open_test_broker(data_dir: Path, *, tls: bool = False,
                           persistence: bool = True) -> AsyncIterator[Endpoints]:
    """A broker in the current trio run for the ``async with`` block."""
    certs_dir = make_certs(data_dir.parent / "certs") if tls else None
    config = broker_config(data_dir, certs_dir, persistence=persistence)
    async with open_broker(config) as running:
        endpoints = _endpoints(running, data_dir, certs_dir)
        try:
            yield endpoints
        finally:
            await trio.to_thread.run_sync(endpoints.close_captures)


class ThreadedBroker:
    """A broker in a trio loop of its own, on a background thread: ``start()`` returns
    once it listens, ``stop()`` shuts it down and waits for the thread."""

    def __init__(self, data_dir: Path, *, tls: bool = False, persistence: bool = True) -> None:
        self.data_dir = data_dir
        self.certs_dir = make_certs(data_dir.parent / "certs") if tls else None
        self.config = broker_config(data_dir, self.certs_dir, persistence=persistence)
        self.endpoints: Endpoints | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True,
                                        name="polybroker")

    def start(self) -> Endpoints:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT):
            raise TimeoutError("the broker did not start")
        if self._error is not None:
            raise self._error
        assert self.endpoints is not None
        return self.endpoints

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with open_broker(self.config) as running:
                self.endpoints = _endpoints(running, self.data_dir, self.certs_dir)
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self.endpoints is not None:
            self.endpoints.close_captures()
        stop = self._stop
        if self._token is not None and stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join(STARTUP_TIMEOUT)
        if self._error is not None and not isinstance(self._error, trio.Cancelled):
            raise self._error

    def __enter__(self) -> Endpoints:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SubprocessBroker:
    """``polybroker serve`` as a child process; its log lines are kept in ``lines``."""

    def __init__(self, data_dir: Path, *, tls: bool = False, persistence: bool = True,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.certs_dir = make_certs(data_dir.parent / "certs") if tls else None
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.port_file = data_dir.parent / "polybroker.ports"
        command = [sys.executable, "-m", "polybroker", "serve", "--data-dir", str(data_dir),
                   "--port-file", str(self.port_file), *extra_args]
        for url in listen_urls(tls):
            command += ("--listen", url)
        if self.certs_dir is not None:
            command += ("--certfile", str(self.certs_dir / "server.crt"),
                        "--keyfile", str(self.certs_dir / "server.key"))
        if not persistence:
            config = data_dir.parent / "polybroker.toml"
            config.write_text("[storage]\npersistence = false\n")
            command += ("--config", str(config))
        self.command = command
        self.proc: subprocess.Popen[str] | None = None
        self.endpoints: Endpoints | None = None

    def start(self) -> Endpoints:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        self.wait_for_log(" ready", STARTUP_TIMEOUT)
        urls = tuple(self.port_file.read_text().split())
        self.endpoints = Endpoints(urls, self.data_dir, self.certs_dir)
        return self.endpoints

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The next log line containing ``text``; TimeoutError, or RuntimeError if the
        broker exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no log line with {text!r}:\n" + "\n".join(self.lines)) \
                    from None
            if line is None:
                raise RuntimeError("the broker exited:\n" + "\n".join(self.lines))
            if text in line:
                return line

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 10 s)."""
        if self.endpoints is not None:
            self.endpoints.close_captures()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> Endpoints:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

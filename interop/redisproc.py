"""A real ``redis-server`` (Debian's package) as a child process, for the cluster tests: a
free loopback port, its working directory in the test's temporary directory, no
persistence files (no RDB snapshots, no append-only file), always stopped."""

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1; ``url`` is what ``[cluster] redis`` takes."""

    def __init__(self, directory: Path, password: str | None = None,
                 tls_dir: Path | None = None) -> None:
        path = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(path).exists():
            raise RuntimeError("redis-server is not installed: run `sh interop/install-tools.sh`")
        self.path = path
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        # TLS only (``rediss://``), with ``polybroker certs``' server.crt, server.key, ca.crt.
        self.tls_dir = tls_dir
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls_dir is not None:
            ca = self.tls_dir / "ca.crt"
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> None:
        """Start it (on ``port`` again after a ``stop``); a free port is taken otherwise,
        and another tried should it be taken in between."""
        for _attempt in range(3):
            self.port = port or _free_port()
            if self._start_once():
                return
            if port is not None:
                break
        raise RuntimeError("redis-server did not start:\n" + "\n".join(self.lines))

    def _start_once(self) -> bool:
        self.lines = []
        ready = threading.Event()
        tls = self.tls_dir
        ports = ("--port", str(self.port)) if tls is None else (
            "--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
            "--tls-cert-file", str(tls / "server.crt"), "--tls-key-file", str(tls / "server.key"),
            "--tls-ca-cert-file", str(tls / "ca.crt"))
        self.proc = subprocess.Popen(
            [self.path, *ports, "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "no",
             "--logfile", "", "--daemonize", "no",
             *(("--requirepass", self.password) if self.password else ())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )

        def drain(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if "Ready to accept connections" in line:
                    ready.set()
            ready.set()  # exited

        threading.Thread(target=drain, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        ready.wait(STARTUP_TIMEOUT)
        if self.proc.poll() is None and time.monotonic() < deadline:
            return True
        self.stop()
        return False

    def command(self, *args: str) -> bytes:
        """One command on a connection of its own, its raw reply (small replies only;
        not over TLS)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            if self.password:
                assert _call(sock, "AUTH", self.password) == b"+OK\r\n"
            return _call(sock, *args)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _call(sock: socket.socket, *args: str) -> bytes:
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args))
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += sock.recv(65536)
    return reply


@contextmanager
def running_redis(directory: Path, password: str | None = None,
                  tls_dir: Path | None = None) -> Iterator[RedisServer]:
    server = RedisServer(directory, password, tls_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()

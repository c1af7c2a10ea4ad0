"""A real Mosquitto broker as a child process, for the bridge tests: a configuration file
in the test's directory, a free loopback port, stopped by the test."""

import getpass
import signal
import socket
from pathlib import Path

from .clients import WAIT, OutputProcess
from .conftest import require_tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """``mosquitto -c`` on ``port`` (a free one by default). Its sessions and queued
    messages are saved in ``directory`` when it stops (SIGTERM), so a stopped and started
    remote still has its subscribers' sessions, as a real deployment's would."""

    def __init__(self, directory: Path, port: int | None = None, tls_dir: Path | None = None):
        # Debian installs the broker in /usr/sbin, which a user's PATH may not have.
        sbin = Path("/usr/sbin/mosquitto")
        self.path = str(sbin) if sbin.exists() else require_tool("mosquitto")
        self.directory = directory
        self.port = port or free_port()
        directory.mkdir(parents=True, exist_ok=True)
        # Started as root, Mosquitto would become user "mosquitto", who cannot write here.
        lines = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1",
                 "allow_anonymous true",
                 "persistence true", f"persistence_location {directory}/",
                 "log_dest stderr", "log_type all"]
        if tls_dir is not None:
            lines += [f"cafile {tls_dir / 'ca.crt'}", f"certfile {tls_dir / 'server.crt'}",
                      f"keyfile {tls_dir / 'server.key'}", "require_certificate true"]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: OutputProcess | None = None
        self.lines: list[str] = []  # its log, over every start

    def start(self) -> "Mosquitto":
        self.proc = OutputProcess([self.path, "-c", str(self.config)])
        self.proc.wait_for_line(r"mosquitto version \S+ running")
        return self

    def wait_for_log(self, pattern: str, timeout: float = WAIT) -> str:
        return self.proc.wait_for_line(pattern, timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.finish()
        if self.proc is not None:
            self.proc.close()
            self.lines += self.proc.lines
        self.proc = None

"""``polybroker serve --workers N``: N broker processes on one machine, each a node of the
cluster ([cluster] redis), sharing every listening port (SO_REUSEPORT: the kernel spreads
the connections over them).

The parent binds each listener's address first, without listening (so port 0 becomes
one port that all workers then bind too), starts the workers with its own arguments and
``POLYBROKER_WORKER=INDEX:PORTS`` in their environment, says ready once each has written
its port file, passes SIGHUP on, and stops them all on SIGINT or SIGTERM. A worker that
dies stops the whole set (with one error line and exit status 1): a service manager
restarts it as one unit, and no client is left on a half-working broker.
"""

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from .. import __version__
from ..config import BrokerConfig, ConfigError

log = logging.getLogger("polybroker.workers")

READY_TIMEOUT = 60.0  # seconds for every worker to restore its store and listen
STOP_TIMEOUT = 15.0  # seconds workers get to stop after SIGTERM before SIGKILL
POLL = 0.1  # seconds between looks at the workers
# How the parent tells a worker which one it is: "INDEX:PORT,PORT,..." (a port per listener).
WORKER_ENV = "POLYBROKER_WORKER"


def worker_spec() -> str | None:
    """This process's worker spec if the parent of ``--workers`` started it."""
    return os.environ.get(WORKER_ENV)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, metavar="N",
        help="run N broker processes sharing the listening ports (SO_REUSEPORT), each a "
             "node of the cluster configured in [cluster] (which it needs); each keeps "
             "its store in <data_dir>/node-<i>")


def worker_config(config: BrokerConfig, spec: str) -> tuple[BrokerConfig, int]:
    """A worker's configuration: its node name, store directory and the parent's ports."""
    try:
        index_text, _, ports_text = spec.partition(":")
        index = int(index_text)
        ports = [int(port) for port in ports_text.split(",")] if ports_text else []
    except ValueError:
        raise ConfigError(f"{WORKER_ENV}: malformed {spec!r}") from None
    if len(ports) != len(config.listeners):
        raise ConfigError(f"{WORKER_ENV}: not one port per listener")
    listeners = tuple(replace(lc, port=port) for lc, port in zip(config.listeners, ports,
                                                                  strict=True))
    base = config.cluster.node or socket.gethostname()
    cluster = replace(config.cluster, node=f"{base}-w{index}")
    return replace(config, listeners=listeners, cluster=cluster,
                   data_dir=config.data_dir / f"node-{index}"), index


def reserve_ports(config: BrokerConfig) -> tuple[list[socket.socket], list[int]]:
    """Bind (not listen on) every listener's address with SO_REUSEPORT: the port each
    worker binds too. The sockets stay open until the workers are done."""
    reserved: list[socket.socket] = []
    ports: list[int] = []
    try:
        for lc in config.listeners:
            family = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((lc.host, lc.port))
            except OSError as exc:
                raise OSError(exc.errno, f"listener {lc.url}: {exc.strerror}") from None
            ports.append(int(sock.getsockname()[1]))
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    return reserved, ports


def run_workers(config: BrokerConfig, count: int, argv: list[str],
                port_file: Path | None) -> int:
    """Run ``count`` workers until a signal or a worker's death; the exit status."""
    if config.cluster.redis is None:
        log.error("cannot start: --workers needs [cluster] redis in the configuration file")
        return 2
    if not 1 <= count <= 256:
        log.error("cannot start: --workers must be between 1 and 256")
        return 2
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        reserved, ports = reserve_ports(config)
    except OSError as exc:
        log.error("cannot start: %s", exc.strerror or exc)
        return 1
    received: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, note)
    spec = ",".join(map(str, ports))
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(count):
            (config.data_dir / f"node-{index}" / "ports").unlink(missing_ok=True)
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "polybroker", *argv],
                env={**os.environ, WORKER_ENV: f"{index}:{spec}"},
                # Its own process group: a terminal's ^C reaches the parent only, which
                # stops the workers in order.
                stdin=subprocess.DEVNULL, process_group=0))
            log.info("worker %d started (pid %d)", index, workers[-1].pid)
        status = _until_ready(config, workers, received)
        if status is None:
            urls = [replace(lc, port=port).url for lc, port in zip(config.listeners, ports,
                                                                     strict=True)]
            for url in urls:
                log.info("listening on %s", url)
            if port_file is not None:
                tmp = port_file.with_name(port_file.name + ".tmp")
                tmp.write_text("".join(url + "\n" for url in urls))
                tmp.replace(port_file)
            log.info("polybroker %s ready (%d workers)", __version__, count)
            status = _supervise(workers, received)
        return status
    finally:
        _stop(workers)
        for sock in reserved:
            sock.close()
        log.info("stopped")


def _until_ready(config: BrokerConfig, workers: list["subprocess.Popen[bytes]"],
                 received: list[int]) -> int | None:
    """Wait for every worker's port file; an exit status if that is not to be."""
    deadline = time.monotonic() + READY_TIMEOUT
    waiting = set(range(len(workers)))
    while waiting:
        if received and received[-1] != signal.SIGHUP:
            return 0
        for index in list(waiting):
            if workers[index].poll() is not None:
                log.error("cannot start: worker %d exited with status %d", index,
                          workers[index].returncode)
                return 1
            if (config.data_dir / f"node-{index}" / "ports").exists():
                waiting.discard(index)
        if time.monotonic() > deadline:
            log.error("cannot start: workers %s not ready after %gs",
                      ", ".join(map(str, sorted(waiting))), READY_TIMEOUT)
            return 1
        time.sleep(POLL)
    return None


def _supervise(workers: list["subprocess.Popen[bytes]"], received: list[int]) -> int:
    while True:
        while received:
            signum = received.pop(0)
            if signum == signal.SIGHUP:
                log.info("received SIGHUP, passing it on to the workers")
                for worker in workers:
                    worker.send_signal(signal.SIGHUP)
                continue
            log.info("received %s, stopping the workers", signal.Signals(signum).name)
            return 0
        for index, worker in enumerate(workers):
            if worker.poll() is not None:
                log.error("worker %d (pid %d) exited with status %d: stopping all workers",
                          index, worker.pid, worker.returncode)
                return 1
        time.sleep(POLL)


def _stop(workers: list["subprocess.Popen[bytes]"]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker (pid %d) did not stop in %gs: killed", worker.pid, STOP_TIMEOUT)
            worker.kill()
            worker.wait()

"""Log destinations: standard error (without timestamps under the journal), a file that
is reopened on SIGHUP, syslog."""

import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from polybroker import logsetup
from polybroker.config import LogSettings
from polybroker.logsetup import configure_logging, reopen_log_files


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_log_file_is_reopened_after_a_rotation(tmp_path):
    path = tmp_path / "broker.log"
    handlers = configure_logging("info", LogSettings(file=path))
    log = logging.getLogger("polybroker.test")
    log.info("before")
    path.rename(tmp_path / "broker.log.1")
    reopen_log_files(handlers)
    log.info("after")
    log.debug("not at info")
    assert (tmp_path / "broker.log.1").read_text().endswith("INFO before\n")
    assert path.read_text().endswith("INFO after\n") and "before" not in path.read_text()


def test_syslog_gets_tagged_lines(tmp_path, monkeypatch):
    address = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", address)
        configure_logging("info", LogSettings(syslog=True))
        logging.getLogger("polybroker.test").warning("disk nearly full")
        server.settimeout(5)
        datagram = server.recv(4096).decode()
    # <28>: facility daemon (3) * 8 + warning (4)
    assert datagram.startswith("<28>polybroker[")
    assert datagram.rstrip("\x00").endswith("]: WARNING disk nearly full")


def test_stderr_lines_leave_the_time_to_the_journal(tmp_path, monkeypatch):
    stream = (tmp_path / "stderr").open("w")
    monkeypatch.setattr(sys, "stderr", stream)
    status = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    configure_logging("info", LogSettings())
    logging.getLogger("polybroker.test").info("ready")
    monkeypatch.delenv("JOURNAL_STREAM")
    configure_logging("info", LogSettings())
    logging.getLogger("polybroker.test").info("ready again")
    stream.close()
    first, second = Path(stream.name).read_text().splitlines()
    assert first == "INFO ready"
    assert second.endswith(" INFO ready again") and second[:4].isdigit()

"""Where the broker's log lines go: standard error (the default), a file, syslog.

A log file is reopened on SIGHUP, so logrotate can move it away and signal the broker
(no ``copytruncate`` needed). Under systemd, standard error already goes to the journal,
which stamps each line with its time, so the broker leaves its own timestamp out there.
"""

import logging
import logging.handlers
import os
import sys

from .config import LogSettings

FORMAT = "%(asctime)s %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(message)s"
SYSLOG_FORMAT = "polybroker[%(process)d]: %(levelname)s %(message)s"
SYSLOG_SOCKET = "/dev/log"


class ReopenableFileHandler(logging.FileHandler):
    """A log file that ``reopen`` closes and opens again under the same name."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def configure_logging(level: str, settings: LogSettings) -> list[logging.Handler]:
    """Send the ``polybroker`` loggers' lines where ``settings`` say; the handlers made.

    OSError when the file or the syslog socket cannot be opened."""
    handlers: list[logging.Handler] = []
    if settings.file is not None:
        file_handler = ReopenableFileHandler(settings.file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        handlers.append(file_handler)
    if settings.syslog:
        syslog = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        syslog.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        handlers.append(syslog)
    if not handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(JOURNAL_FORMAT if _journal() else FORMAT))
        handlers.append(stderr)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level.upper())
    return handlers


def reopen_log_files(handlers: list[logging.Handler]) -> None:
    """SIGHUP: reopen every log file (logrotate moved it away)."""
    for handler in handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()


def _journal() -> bool:
    """Whether standard error is connected to the systemd journal (``JOURNAL_STREAM``)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{status.st_dev}:{status.st_ino}" == f"{device}:{inode}"

"""Streams on disk: one ``StreamLog`` directory per stream under ``<data_dir>/streams``,
its values the messages in the store's message encoding (``records``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from ..message import Message
from ..storage.stream_log import StreamLog
from ..streams import StreamSettings
from .records import StringCache, decode_message, encode_message

__all__ = ["DiskStreams", "stream_directory"]


def stream_directory(root: Path, name: str) -> Path:
    """The directory of stream ``name``: the name percent-encoded, dots too, so that any
    queue name is one safe file name."""
    return root / quote(name, safe="-_").replace(".", "%2E")


class DiskStreams:
    """The ``streams.StreamBackend`` of a broker that stores its state."""

    def __init__(self, root: Path, clock: Callable[[], float],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock  # the broker's: message expiry deadlines are on it
        self.wall_clock = wall_clock
        self.logs: dict[str, StreamLog] = {}
        self._strings = StringCache()
        # Told of every append, so that confirms wait for the log's fsync (``Durability``).
        self.on_append: Callable[[StreamLog], None] | None = None

    def open(self, name: str, settings: StreamSettings) -> StreamLog:
        opened = self.logs.get(name)
        if opened is not None and opened.segments and not opened.segments[-1].deleted:
            opened.close()
        stream_log = StreamLog(stream_directory(self.root, name),
                               segment_bytes=settings.segment_bytes, max_bytes=settings.max_bytes,
                               max_age=settings.max_age, clock=self.wall_clock)
        self.logs[name] = stream_log
        return stream_log

    def encode(self, message: Message) -> tuple[bytes, int | None]:
        to_wall = 0.0 if message.expiry is None else self.wall_clock() - self.clock()
        return encode_message(message, to_wall), None

    def decode(self, value: bytes) -> Message:
        return decode_message(bytes(value), 0, self.clock() - self.wall_clock(), self._strings)

    def appended(self, stream_log: StreamLog) -> None:
        if self.on_append is not None:
            self.on_append(stream_log)

    def close(self) -> None:
        """Close every open log (synced)."""
        for stream_log in self.logs.values():
            if not stream_log.segments[-1].deleted:
                stream_log.close()
        self.logs.clear()

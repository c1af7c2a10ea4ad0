"""Segment files: naming, opening, appending with rollback, positional reads, fsync, closing.

A segment is one append-only file ``NNNNNNNN.seg`` in the store directory. Appends use
``os.write`` at the file position (kept equal to ``size``); reads use ``os.pread`` and never
move it. A failed or short append is rolled back by truncating to the previous end, so a
segment never holds a partial record that the store believes it wrote.

The file descriptor is reference counted: the store owns one reference, and the sync thread
takes one for the duration of an fsync, so a segment removed or closed by the main thread is
only really closed once no fsync is using its descriptor. ``pin``/``unpin``/``close`` must be
called with the store's lock held.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

__all__ = ["SEGMENT_SUFFIX", "Segment", "fsync_directory", "list_segment_ids", "segment_path"]

SEGMENT_SUFFIX = ".seg"
_NAME = re.compile(r"^(\d{8,})\.seg$")
_READ_CHUNK = 8 * 1024 * 1024


def segment_path(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:08d}{SEGMENT_SUFFIX}"


def list_segment_ids(directory: Path) -> list[int]:
    """Ids of the segment files in ``directory``, ascending. Other files are ignored."""
    ids = []
    for entry in os.scandir(directory):
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            ids.append(int(match.group(1)))
    ids.sort()
    return ids


def fsync_directory(directory: Path) -> None:
    """Make creations, renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Segment:
    """One open segment file."""

    __slots__ = ("_closing", "_refs", "fd", "id", "path", "records", "size", "write_gen")

    def __init__(self, segment_id: int, path: Path, fd: int, size: int) -> None:
        self.id = segment_id
        self.path = path
        self.fd = fd
        self.size = size  # bytes of whole records; also the file position for the next append
        self.records = 0  # valid records in the file
        self.write_gen = 0  # bumped by the store (under its lock) after every append
        self._refs = 1
        self._closing = False

    @classmethod
    def create(cls, directory: Path, segment_id: int) -> Segment:
        path = segment_path(directory, segment_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        return cls(segment_id, path, fd, 0)

    @classmethod
    def open(cls, directory: Path, segment_id: int) -> Segment:
        path = segment_path(directory, segment_id)
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            os.lseek(fd, size, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        return cls(segment_id, path, fd, size)

    def read_all(self) -> bytes:
        """The whole file (as it is on disk, which may be longer than ``size``)."""
        length = os.fstat(self.fd).st_size
        chunks = []
        offset = 0
        while offset < length:
            chunk = os.pread(self.fd, min(_READ_CHUNK, length - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        while len(data) < length:  # pread may return short; only EOF ends the loop
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end; return its offset. On failure nothing stays appended
        (the file is truncated back) and the OSError propagates."""
        start = self.size
        written = 0
        try:
            written = os.write(self.fd, data)
            if written < len(data):  # short write: rare, finish it
                view = memoryview(data)
                while written < len(data):
                    written += os.write(self.fd, view[written:])
        except BaseException:
            if written:
                self.rollback(start)
            raise
        self.size = start + len(data)
        self.records += 1
        return start

    def rollback(self, size: int) -> None:
        """Cut the file back to ``size`` bytes and put the write position there. If the
        truncate itself fails the stale bytes stay, but the next append overwrites them
        from ``size`` on, and recovery treats any leftover as a damaged tail."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, size)
        os.lseek(self.fd, size, os.SEEK_SET)
        self.size = size

    def truncate(self, size: int) -> None:
        """Durably cut the file to ``size`` bytes (recovery of a torn tail)."""
        os.ftruncate(self.fd, size)
        os.lseek(self.fd, size, os.SEEK_SET)
        os.fsync(self.fd)
        self.size = size

    def fsync(self) -> None:
        os.fsync(self.fd)

    # Reference counting of the descriptor (callers hold the store lock).

    def pin(self) -> None:
        self._refs += 1

    def unpin(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            os.close(self.fd)

    def close(self) -> None:
        """Drop the owner's reference; the descriptor closes once no fsync is using it."""
        if not self._closing:
            self._closing = True
            self.unpin()

    @property
    def closed(self) -> bool:
        return self._closing

    def __repr__(self) -> str:
        return f"<Segment {self.id} size={self.size} records={self.records}>"

"""An append-only, segmented message log with offsets and timestamps: what a stream keeps.

Every appended value gets the next *offset* (0, 1, 2, ...) and a *timestamp* (seconds,
never less than the previous one, so both orders agree). Values are read back from any
offset, or from the first one at or after a timestamp, without removing anything.

On disk (``directory`` given), one directory per log:

- ``NNNNNNNNNNNNNNNNNNNN.seg``: a segment, named by its first offset; a run of records in
  the store's framing (``record``): kind PUT, sequence = the offset, key = the timestamp
  (big-endian float64), value = the bytes appended. A segment is sealed (fsynced, never
  written again) once it holds ``segment_bytes`` or more and a new one starts.
- ``NNNNNNNNNNNNNNNNNNNN.idx``: its sparse index, one entry (offset, timestamp, byte
  position) for the first record and then every ``INDEX_INTERVAL`` bytes, and one for the
  last record when the segment is sealed. A lookup bisects the index and scans at most
  ``INDEX_INTERVAL`` bytes; reading on from there is sequential (``Cursor``: chunks of
  ``READ_CHUNK`` bytes, no lookup per record).
- ``offsets``: stored consumer offsets (``store_offset``), records of key = the name and
  sequence = the offset, the last one per name winning; rewritten when the log opens.

Opening scans only the newest segment (from its last index entry) and truncates a torn
tail there. A missing or damaged index is rebuilt by scanning its segment.

In memory (``directory`` None) segments are lists of (offset, timestamp, value, size):
the values are kept as given (any object) with the size the caller states, and the same
segment rules and retention apply.

Retention (``retain``) removes whole segments from the oldest, never the one being
written: while the log holds more than ``max_bytes``, and while the oldest segment's
newest record is older than ``max_age`` seconds. It runs when a segment is sealed and
when the log opens, so disk use stays below ``max_bytes`` plus one segment.
"""

from __future__ import annotations

import bisect
import errno
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .record import HEADER_SIZE, OK, PUT, encode_checked_fields, inspect

__all__ = ["INDEX_INTERVAL", "READ_CHUNK", "Cursor", "StreamLog"]

INDEX_INTERVAL = 4096  # bytes of records between two index entries
READ_CHUNK = 1024 * 1024  # bytes a cursor reads at once
_INDEX = struct.Struct(">QdQ")  # offset, timestamp, byte position
_TIME = struct.Struct(">d")
_SEG, _IDX = ".seg", ".idx"


class _Segment:
    """One segment, on disk (``fd``) or in memory (``items``)."""

    __slots__ = ("deleted", "fd", "first", "index", "index_fd", "items", "last_ts", "next",
                 "path", "size", "unindexed")

    def __init__(self, first: int, path: Path | None) -> None:
        self.first = first  # offset of its first record
        self.next = first  # offset after its last record
        self.size = 0  # bytes
        self.last_ts = float("-inf")  # timestamp of its last record
        self.path = path
        self.fd: int | None = None
        self.index_fd: int | None = None
        self.index: list[tuple[int, float, int]] = []  # (offset, timestamp, position)
        self.items: list[tuple[int, float, Any, int]] = []  # in memory
        self.unindexed = 0  # bytes appended since the last index entry
        self.deleted = False

    @property
    def first_ts(self) -> float:
        if self.items:
            return self.items[0][1]
        return self.index[0][1] if self.index else float("inf")


class StreamLog:
    """A stream's log (see the module's description)."""

    def __init__(
        self,
        directory: Path | None,
        *,
        segment_bytes: int = 16 * 1024 * 1024,
        max_bytes: int = 0,
        max_age: float = 0.0,
        clock: Callable[[], float],
    ) -> None:
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be at least 1")
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes  # 0: no bound
        self.max_age = max_age  # seconds; 0: no bound
        self.clock = clock  # wall-clock seconds, for timestamps and max_age
        self.segments: list[_Segment] = []
        self.bytes = 0
        self.last_ts = float("-inf")
        self.offsets: dict[str, int] = {}
        self._offsets_fd: int | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._open_files()
        if not self.segments:
            self.segments.append(self._new_segment(0))
        self.retain()

    # -- state ------------------------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        """The oldest offset still kept (== ``next_offset`` when the log is empty)."""
        return self.segments[0].first

    @property
    def next_offset(self) -> int:
        """The offset the next append gets."""
        return self.segments[-1].next

    def __len__(self) -> int:
        return self.next_offset - self.first_offset

    # -- writing ----------------------------------------------------------------------------

    def append(self, value: Any, size: int | None = None, timestamp: float | None = None) -> int:
        """Append ``value`` (bytes on disk; anything in memory, ``size`` bytes); return its
        offset. The timestamp is ``clock()`` unless given, and never goes backwards."""
        timestamp = max(self.clock() if timestamp is None else timestamp, self.last_ts)
        segment = self.segments[-1]
        if segment.size >= self.segment_bytes and segment.next > segment.first:
            self._seal(segment)
            segment = self._new_segment(segment.next)
            self.segments.append(segment)
            self.retain()
        offset = segment.next
        if segment.fd is None:
            size = len(value) if size is None else size
            segment.items.append((offset, timestamp, value, size))
        else:
            data = encode_checked_fields(PUT, offset, _TIME.pack(timestamp), value)
            size = len(data)
            written = os.write(segment.fd, data)
            if written != size:  # a short write (disk full): undo it, as the store does
                os.ftruncate(segment.fd, segment.size)
                os.lseek(segment.fd, segment.size, os.SEEK_SET)
                raise OSError(f"short write to {segment.path}")
            if not segment.index or segment.unindexed >= INDEX_INTERVAL:
                self._add_index(segment, offset, timestamp, segment.size)
            segment.unindexed += size
        segment.size += size
        segment.next = offset + 1
        segment.last_ts = timestamp
        self.bytes += size
        self.last_ts = timestamp
        return offset

    def retain(self) -> int:
        """Remove whole old segments beyond ``max_bytes`` / ``max_age``; return how many."""
        removed = 0
        cutoff = self.clock() - self.max_age if self.max_age else None
        while len(self.segments) > 1:
            oldest = self.segments[0]
            over = self.max_bytes and self.bytes > self.max_bytes
            aged = cutoff is not None and oldest.last_ts < cutoff
            if not (over or aged):
                break
            self.segments.pop(0)
            self.bytes -= oldest.size
            self._drop_segment(oldest)
            removed += 1
        return removed

    def store_offset(self, name: str, offset: int) -> None:
        """Remember ``offset`` for the consumer ``name`` (kept across restarts on disk)."""
        if self.offsets.get(name) == offset:
            return
        self.offsets[name] = offset
        if self._offsets_fd is not None:
            os.write(self._offsets_fd, encode_checked_fields(PUT, offset, name.encode()))

    def sync(self) -> None:
        """Make everything appended so far durable. Safe to call from one worker thread
        while the owner appends: a segment sealed meanwhile was synced when sealed."""
        segment = self.segments[-1]
        for fd in (segment.fd, segment.index_fd, self._offsets_fd):
            if fd is not None:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    if exc.errno != errno.EBADF:  # EBADF: sealed and closed meanwhile
                        raise

    def close(self) -> None:
        if self.directory is not None:
            self.sync()
        for segment in self.segments:
            self._close_segment(segment)
        if self._offsets_fd is not None:
            os.close(self._offsets_fd)
            self._offsets_fd = None

    def destroy(self) -> None:
        """Close the log and remove its directory (the stream is deleted)."""
        self.close()
        for segment in self.segments:
            segment.deleted = True
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------

    def cursor(self, offset: int) -> Cursor:
        """A reader from ``offset`` (clamped to what the log keeps)."""
        return Cursor(self, offset)

    def offset_at(self, timestamp: float) -> int:
        """The first offset whose timestamp is ``timestamp`` or later (``next_offset`` if
        none is)."""
        for segment in self.segments:
            if segment.last_ts < timestamp:
                continue
            if segment.fd is None:
                stamps = [item[1] for item in segment.items]
                return segment.first + bisect.bisect_left(stamps, timestamp)
            at = max(bisect.bisect_left([e[1] for e in segment.index], timestamp) - 1, 0)
            cursor = Cursor(self, segment.index[at][0])
            while True:
                batch = cursor.read(256)
                for offset, stamp, _value, _size in batch:
                    if stamp >= timestamp:
                        return offset
                if not batch:
                    break
        return self.next_offset

    def timestamp_of(self, offset: int) -> float | None:
        batch = Cursor(self, offset).read(1)
        return batch[0][1] if batch and batch[0][0] == offset else None

    def _segment_for(self, offset: int) -> int:
        firsts = [segment.first for segment in self.segments]
        return max(bisect.bisect_right(firsts, offset) - 1, 0)

    # -- files ------------------------------------------------------------------------------

    def _new_segment(self, first: int) -> _Segment:
        if self.directory is None:
            return _Segment(first, None)
        path = self.directory / f"{first:020d}{_SEG}"
        segment = _Segment(first, path)
        segment.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        segment.index_fd = os.open(path.with_suffix(_IDX), os.O_RDWR | os.O_CREAT | os.O_APPEND
                                   | os.O_TRUNC, 0o644)
        return segment

    def _add_index(self, segment: _Segment, offset: int, timestamp: float, pos: int) -> None:
        segment.index.append((offset, timestamp, pos))
        segment.unindexed = 0
        if segment.index_fd is not None:
            os.write(segment.index_fd, _INDEX.pack(offset, timestamp, pos))

    def _seal(self, segment: _Segment) -> None:
        if segment.fd is None:
            return
        last = self.cursor(segment.next - 1).read(1)
        if last and segment.index[-1][0] != last[0][0]:
            self._add_index(segment, last[0][0], last[0][1], segment.size - last[0][3])
        os.fsync(segment.fd)
        if segment.index_fd is not None:
            os.fsync(segment.index_fd)
            os.close(segment.index_fd)
            segment.index_fd = None

    def _close_segment(self, segment: _Segment) -> None:
        for name in ("fd", "index_fd"):
            fd = getattr(segment, name)
            if fd is not None:
                os.close(fd)
                setattr(segment, name, None)

    def _drop_segment(self, segment: _Segment) -> None:
        segment.deleted = True
        self._close_segment(segment)
        if segment.path is not None:
            segment.path.unlink(missing_ok=True)
            segment.path.with_suffix(_IDX).unlink(missing_ok=True)

    def _open_files(self) -> None:
        assert self.directory is not None
        names = sorted(p.name for p in self.directory.iterdir() if p.suffix == _SEG
                       and p.stem.isdigit())
        for position, name in enumerate(names):
            path = self.directory / name
            segment = _Segment(int(path.stem), path)
            segment.fd = os.open(path, os.O_RDWR | os.O_APPEND)
            segment.size = os.fstat(segment.fd).st_size
            self.segments.append(segment)
            newest = position == len(names) - 1
            if not self._load_index(segment) or newest:
                self._scan(segment, newest)
            self.bytes += segment.size
        for older, newer in zip(self.segments, self.segments[1:], strict=False):
            older.next = newer.first  # whatever an unsealed index said
        if self.segments:
            self.last_ts = self.segments[-1].last_ts
            last = self.segments[-1]
            last.index_fd = os.open(_path(last).with_suffix(_IDX), os.O_RDWR | os.O_APPEND)
        self._open_offsets()

    def _load_index(self, segment: _Segment) -> bool:
        """Read a sealed segment's index; False if it is missing or damaged."""
        try:
            data = _path(segment).with_suffix(_IDX).read_bytes()
        except FileNotFoundError:
            return False
        if not data or len(data) % _INDEX.size:
            return False
        segment.index = [tuple(entry) for entry in _INDEX.iter_unpack(data)]
        last_offset, last_ts, _pos = segment.index[-1]
        segment.next = last_offset + 1
        segment.last_ts = last_ts
        return segment.index[0][0] == segment.first

    def _scan(self, segment: _Segment, newest: bool) -> None:
        """Rebuild ``segment``'s index from its records (from the last good index entry
        when there is one); the newest segment loses a torn or damaged tail."""
        start = segment.index[-1][2] if newest and segment.index else 0
        if not start:
            segment.index = []
            segment.next = segment.first
        else:
            segment.index.pop()  # re-read from it: it may be the seal's last entry
        end = _scan_records(segment, start, self._index_found(segment))
        if end < segment.size:
            os.ftruncate(_fd(segment), end)
            segment.size = end
        with open(_path(segment).with_suffix(_IDX), "wb") as index:
            index.write(b"".join(_INDEX.pack(*entry) for entry in segment.index))

    @staticmethod
    def _index_found(segment: _Segment) -> Callable[[int, float, int, int], None]:
        def found(offset: int, timestamp: float, pos: int, size: int) -> None:
            if not segment.index or pos - segment.index[-1][2] >= INDEX_INTERVAL:
                segment.index.append((offset, timestamp, pos))
            segment.next = offset + 1
            segment.last_ts = timestamp
            segment.unindexed = pos + size - segment.index[-1][2]
        return found

    def _open_offsets(self) -> None:
        assert self.directory is not None
        path = self.directory / "offsets"
        if path.exists():
            data = path.read_bytes()
            pos = 0
            while True:
                status, _kind, key_len, total, seq = inspect(data, pos)
                if status != OK:
                    break
                name = data[pos + HEADER_SIZE: pos + HEADER_SIZE + key_len].decode()
                self.offsets[name] = seq
                pos += total
        temporary = path.with_suffix(".new")
        temporary.write_bytes(b"".join(encode_checked_fields(PUT, offset, name.encode())
                                       for name, offset in self.offsets.items()))
        os.replace(temporary, path)
        self._offsets_fd = os.open(path, os.O_WRONLY | os.O_APPEND)


def _fd(segment: _Segment) -> int:
    assert segment.fd is not None, "a segment on disk"
    return segment.fd


def _path(segment: _Segment) -> Path:
    assert segment.path is not None, "a segment on disk"
    return segment.path


def _scan_records(segment: _Segment, start: int,
                  found: Callable[[int, float, int, int], None]) -> int:
    """Call ``found`` for each valid record of ``segment`` from byte ``start``; return
    where the valid records end."""
    pos = start
    while pos < segment.size:
        data = os.pread(_fd(segment), max(READ_CHUNK, HEADER_SIZE), pos)
        at = 0
        while True:
            status, _kind, _key_len, total, seq = inspect(data, at)
            if status != OK:
                break
            found(seq, _TIME.unpack_from(data, at + HEADER_SIZE)[0], pos + at, total)
            at += total
        if at == 0:
            if len(data) < READ_CHUNK or status != 1:  # damaged, or torn at the end
                return pos
            data = os.pread(_fd(segment), segment.size - pos, pos)  # one huge record
            status, _kind, _key_len, total, seq = inspect(data, 0)
            if status != OK:
                return pos
            found(seq, _TIME.unpack_from(data, HEADER_SIZE)[0], pos, total)
            at = total
        pos += at
    return pos


class Cursor:
    """Reads a log in order from an offset: sequential chunks, no lookup per record.
    If retention removes the segment under it, it goes on from the oldest kept offset."""

    __slots__ = ("_buffer", "_buffer_pos", "_log", "_pos", "_segment", "offset")

    def __init__(self, log: StreamLog, offset: int) -> None:
        self._log = log
        self.offset = offset  # the next offset to read
        self._segment: _Segment | None = None
        self._pos = 0  # byte position of ``offset`` in the segment
        self._buffer = b""
        self._buffer_pos = 0  # the segment position of ``_buffer[0]``

    def seek(self, offset: int) -> None:
        self.offset = offset
        self._segment = None

    def read(self, count: int) -> list[tuple[int, float, Any, int]]:
        """Up to ``count`` records from ``offset`` on: (offset, timestamp, value, size)."""
        log = self._log
        out: list[tuple[int, float, Any, int]] = []
        while len(out) < count:
            segment = self._segment
            if segment is None or segment.deleted or self.offset >= segment.next:
                if self.offset >= log.next_offset:
                    break
                if not self._position():
                    break
                segment = self._segment
                assert segment is not None
            if segment.fd is None:
                items = segment.items
                at = self.offset - segment.first
                taken = items[at: at + count - len(out)]
                out.extend(taken)
                self.offset += len(taken)
            else:
                self._read_file(segment, count, out)
        return out

    def _position(self) -> bool:
        log = self._log
        if self.offset < log.first_offset:
            self.offset = log.first_offset
        segment = log.segments[log._segment_for(self.offset)]
        if self.offset >= segment.next:
            return False
        self._segment = segment
        self._buffer = b""
        if segment.fd is None:
            return True
        index = segment.index
        at = bisect.bisect_right(index, (self.offset, float("inf"), 0)) - 1
        entry_offset, _ts, pos = index[max(at, 0)]
        self._pos = pos
        skip = self.offset - entry_offset
        self.offset = entry_offset
        while skip > 0:  # at most INDEX_INTERVAL bytes of records
            skipped = len(self._read_file(segment, min(skip, 1024), []))
            if not skipped:
                return False
            skip -= skipped
        return True

    def _read_file(self, segment: _Segment, count: int,
                   out: list[tuple[int, float, Any, int]]) -> list[tuple[int, float, Any, int]]:
        buffer, base, pos = self._buffer, self._buffer_pos, self._pos
        start = len(out)
        while len(out) < count and pos < segment.size:
            at = pos - base
            status, _kind, key_len, total, seq = inspect(buffer, at) if at >= 0 else (1, 0, 0,
                                                                                          0, 0)
            if status != OK:
                if at >= 0 and status != 1:
                    raise OSError(f"damaged record in {segment.path} at {pos}")
                want = max(READ_CHUNK, total or 0)
                buffer = os.pread(_fd(segment), min(want, segment.size - pos) or want, pos)
                base = pos
                status, _kind, key_len, total, seq = inspect(buffer, 0)
                if status != OK:
                    # a record bigger than one chunk: read it whole
                    buffer = os.pread(_fd(segment), segment.size - pos, pos)
                    status, _kind, key_len, total, seq = inspect(buffer, 0)
                    if status != OK:
                        raise OSError(f"damaged record in {segment.path} at {pos}")
                at = 0
            head = at + HEADER_SIZE
            value_start = head + key_len
            out.append((seq, _TIME.unpack_from(buffer, head)[0],
                        buffer[value_start: at + total - 4], total))
            pos += total
        self._buffer, self._buffer_pos, self._pos = buffer, base, pos
        self.offset += len(out) - start
        return out[start:]

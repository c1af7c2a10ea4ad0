"""Compaction of one segment in steps, for an owner whose writing thread must not block.

``LogStore.compact()`` does everything in one call on the writing thread: it reads and scans
a whole segment, copies its live records and fsyncs. A broker writes from its event loop, so
it uses ``LogStore.begin_compaction()`` instead and drives the returned job:

1. ``read()``, on any thread: read and scan the sealed segment (it never changes, and its
   descriptor is pinned for the job).
2. ``copy(limit)``, on the writing thread, until it returns True: append copies of up to
   ``limit`` of the segment's records that are still current. Writes may happen between
   steps: a record that stops being current before its step is simply not copied, one that
   stops being current after it leaves a dead copy.
3. Make the copies durable: ``store.sync()`` from the sync thread. (Copies keep their
   sequence numbers, so ``synced_seq`` does not tell whether they were covered: sync once
   *after* the last step.)
4. ``detach()``, on the writing thread: check that nothing current is left in the segment
   (else the job ends, logged, and the segment stays: some live record no longer read back)
   and take the segment out of the store.
5. ``unlink()``, on any thread: delete the file and fsync the directory.
6. ``finish()``, on the writing thread: only now may the key directory forget the PUTs the
   segment held (the tombstone rule in ``keydir`` relies on removals being durable).

``abort()`` ends a job at any point before ``detach()``; the copies already made are
harmless (later in log order than their originals, so replay ends on the same value).
One job at a time, and not alongside ``compact()``.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Protocol

from .errors import StoreError
from .keydir import KeyDirectory
from .record import DELETE, PUT, standalone
from .recovery import SegmentScan
from .segment import Segment, fsync_directory

__all__ = ["CompactionJob"]

logger = logging.getLogger("polybroker.storage")


class CompactingStore(Protocol):
    """The parts of ``store.LogStore`` a job works on: it moves records between the
    store's segments, under the store's lock."""

    directory: Path
    _index: KeyDirectory
    _segments: dict[int, Segment]
    _dirty: dict[int, Segment]
    _lock: threading.Lock
    _job: CompactionJob | None

    def _check_open(self) -> None: ...

    def _append(self, data: bytes, seq: int | None) -> tuple[Segment, int, int]: ...


class CompactionJob:
    """Compaction of one sealed segment, driven step by step (see the module docstring)."""

    def __init__(self, store: CompactingStore, segment: Segment) -> None:
        self.store = store
        self.segment = segment
        self.segment_id = segment.id
        self.copied = 0  # records copied forward
        self.bytes_copied = 0
        self._data = b""
        self._records: list[tuple[int, int, int, bytes, int]] = []
        self._put_counts: Counter[bytes] = Counter()
        self._dropped: list[bytes] = []
        self._next = 0  # index into _records of the next record to look at
        self._pinned = True  # the job holds a reference on the segment's descriptor
        self._state = "begun"

    def __repr__(self) -> str:
        return f"<CompactionJob segment {self.segment_id} {self._state}>"

    def read(self) -> None:
        """Read and scan the segment. Safe on any thread."""
        self._expect("begun")
        data = self.segment.read_all()
        records = list(SegmentScan(self.segment_id, data, last=False))
        self._data = data
        self._records = records
        self._put_counts = Counter(key for _, _, kind, key, _ in records if kind == PUT)
        self._state = "copying"

    def copy(self, limit: int = 512) -> bool:
        """Copy the current records among the next ``limit`` scanned ones to the active
        segment; True once every record has been looked at. Writing thread only."""
        self._expect("copying")
        store = self.store
        store._check_open()
        index = store._index
        data = self._data
        records = self._records
        end = min(len(records), self._next + limit)
        for position in range(self._next, end):
            offset, length, kind, key, _ = records[position]
            entry = index.current(key, self.segment_id, offset)
            if entry is None:
                continue
            if kind == DELETE and not index.needed(entry):
                self._dropped.append(key)
                continue
            target, new_offset, _ = store._append(standalone(data[offset : offset + length]), None)
            index.relocate(key, target.id, new_offset)
            self.copied += 1
            self.bytes_copied += length
            self._next = position + 1  # a failed append is retried by the next call
        self._next = end
        if end < len(records):
            return False
        self._state = "copied"
        return True

    def detach(self) -> bool:
        """After the copies are durable: take the segment out of the store. False (and the
        job is over, the segment kept) if some current record in it was not copied."""
        self._expect("copied")
        store = self.store
        store._check_open()
        left = store._index.live_bytes.get(self.segment_id, 0)
        if left:
            logger.error(
                "storage: not compacting segment %d: %d bytes of live records in it no longer "
                "read back (damaged since the store was opened)",
                self.segment_id, left,
            )
            self.abort()
            return False
        with store._lock:
            del store._segments[self.segment_id]
            store._dirty.pop(self.segment_id, None)
            self.segment.close()
            self._unpin()
        self._data = b""
        self._records = []
        self._state = "detached"
        return True

    def unlink(self) -> None:
        """Delete the segment file and make that durable. Safe on any thread. On failure the
        file stays (it only holds records that have later copies: harmless) and the key
        directory keeps counting its PUTs, which only keeps tombstones longer."""
        self._expect("detached")
        try:
            os.unlink(self.segment.path)
            fsync_directory(self.store.directory)
        except OSError as exc:
            self._state = "failed"
            raise StoreError(exc.errno or errno.EIO, f"cannot remove {self.segment.path}: "
                             f"{exc.strerror or exc}") from exc
        self._state = "unlinked"

    def finish(self) -> None:
        """The removal is durable: update the key directory. Writing thread only."""
        self._expect("unlinked")
        self.store._index.segment_removed(self.segment_id, self._put_counts, self._dropped)
        self._state = "done"
        self.store._job = None

    def abort(self) -> None:
        """Give up before ``detach()``: the segment stays. Safe to call more than once."""
        if self._state in ("begun", "copying", "copied"):
            self._state = "aborted"
        with self.store._lock:
            self._unpin()
        if self.store._job is self:
            self.store._job = None

    @property
    def done(self) -> bool:
        return self._state == "done"

    def _unpin(self) -> None:
        if self._pinned:
            self._pinned = False
            self.segment.unpin()

    def _expect(self, state: str) -> None:
        if self._state != state:
            raise RuntimeError(f"compaction job is {self._state}, not {state}")

"""LogStore: a log-structured key-value store (Bitcask key directory over Kafka-style segments).

Design
------
*Segments.* The store is a directory of append-only segment files ``00000001.seg``, ... .
Every write appends one self-checking record (see ``record``) to the highest-numbered,
*active* segment; when it would grow past ``segment_size`` a new segment is started and the
old one is *sealed* (never written again). Log order is (segment id, offset); replaying all
records in that order reproduces the store.

*Key directory.* Memory holds, for every key, only where its current record is (see
``keydir``), in a ``SortedDict`` so ``scan(prefix)`` walks keys in order. Values stay on disk
and are read back with ``os.pread`` on ``get``/``scan``, with their checksum verified.
Opening the store replays every segment to rebuild the directory; damage is tolerated and
reported (see ``recovery``), never raised.

*Group commit.* ``put``/``delete`` only ``os.write`` the record (no fsync) and return a
sequence number. ``sync()`` fsyncs every segment written since the last sync (and the
directory after a segment was created) and returns the highest sequence number now durable,
also kept in ``synced_seq``. A broker calls ``sync()`` from one worker thread and
acknowledges a client's write once ``synced_seq`` reaches that write's number, so one fsync
covers every write that arrived meanwhile and the event loop never blocks on the disk.
``sync()`` holds the store lock only to snapshot and to update the bookkeeping, never during
the fsync; segment descriptors are reference counted so that none is closed while being
fsynced. Everything else (``put``, ``delete``, ``get``, ``scan``, ``compact``, ``close``) must
be called from a single thread, which may differ from the sync thread. Sequence numbers
increase for the life of an open store; after a reopen they resume above the highest number
found on disk.

*Compaction.* Each segment's *live fraction* is the share of its bytes that are current
records. ``compact()`` takes sealed segments below ``compaction_threshold``, appends copies
of their live records (byte-for-byte, same sequence numbers) to the active segment, fsyncs,
and only then deletes the old files, so a crash at any point leaves either the original or
a later copy of every live record. Copies sort after the originals in log order, so replay
still ends on the current record of each key. ``begin_compaction()`` does the same for one
segment in steps, so that an event loop can drive it: the reading and scanning, the fsync and
the unlink run on worker threads, and the copying in small batches between other writes
(``compaction``).

*Tombstones.* A DELETE record is needed for as long as a PUT for its key survives in some
*other* segment: if compaction dropped it while an older segment still held a PUT, replay
would end on that PUT and the deleted key would come back. The key directory therefore
counts, per key, the PUT records on disk and how many of them share the tombstone's segment
(``keydir``). Compaction copies a tombstone forward iff PUTs remain elsewhere, and drops it
otherwise; when the segments holding those PUTs are later removed, the tombstone turns into
garbage and the next compaction of its segment discards it. Deleting a key that is absent
writes nothing.

*Failures.* A failed append (e.g. ENOSPC) is truncated away and raises ``StoreFullError``;
the key directory is only updated after a write succeeded, so the store stays consistent and
usable. A ``LOCK`` file held with ``flock`` keeps a second store off the same directory.

Disk use stays proportional to live data when ``compact()`` runs often enough to keep up
with the garbage written: once it has caught up, every sealed segment is at least
``compaction_threshold`` live, so the files hold at most live bytes / threshold plus the
active segment.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from sortedcontainers import SortedDict

from .compaction import CompactionJob
from .errors import (
    CorruptRecordError,
    StoreClosedError,
    StoreError,
    StoreFullError,
    StoreLockedError,
)
from .keydir import KeyDirectory
from .record import (
    CONTINUED,
    DELETE,
    HEADER_SIZE,
    MAX_FIELD_SIZE,
    OK,
    PUT,
    encode_checked_fields,
    inspect,
    standalone,
)
from .recovery import RecoveryIssue, SegmentScan, log_issue
from .segment import Segment, fsync_directory, list_segment_ids

__all__ = ["DEFAULT_SEGMENT_SIZE", "LogStore", "StoreStats"]

logger = logging.getLogger("polybroker.storage")

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
LOCK_FILE = "LOCK"
_SCAN_BATCH = 256
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's size, from ``LogStore.stats()``."""

    segments: int
    total_bytes: int  # bytes of all segment files
    live_bytes: int  # bytes of current records (live PUTs and needed tombstones)
    live_keys: int
    tombstones: int  # keys whose current record is a DELETE still on disk
    records: int  # records in all segments, live or dead
    last_seq: int
    synced_seq: int


def _store_error(exc: OSError, what: str) -> StoreError:
    cls = StoreFullError if exc.errno in _FULL_ERRNOS else StoreError
    return cls(exc.errno, f"{what}: {exc.strerror or exc}")


def _as_bytes(data: bytes, what: str) -> bytes:
    if not isinstance(data, bytes):
        data = bytes(memoryview(data))  # TypeError for non-buffers (bytes(5) would be zeros)
    if len(data) > MAX_FIELD_SIZE:
        raise ValueError(f"{what} too long: {len(data)} bytes")
    return data


class LogStore:
    """Durable bytes -> bytes map. Create with ``LogStore.open(directory)``."""

    def __init__(
        self, directory: Path, segment_size: int, compaction_threshold: float, lock_fd: int
    ) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.compaction_threshold = compaction_threshold
        self.recovery_issues: list[RecoveryIssue] = []
        self._lock_fd = lock_fd
        self._index = KeyDirectory()
        self._segments: dict[int, Segment] = {}  # ascending id; the last one is active
        self._active: Segment | None = None
        self._lock = threading.Lock()  # guards everything below, and segment refcounts
        self._seq = 0  # last sequence number handed out
        self._synced_seq = 0
        self._dirty: dict[int, Segment] = {}  # segments written since their last fsync
        self._dir_dirty = False
        self._closed = False
        self._job: CompactionJob | None = None  # the stepwise compaction in progress
        # The open atomic group's writes, (kind, key, value) in order, and their keys.
        self._group: list[tuple[int, bytes, bytes]] | None = None
        self._group_keys: set[bytes] = set()
        # Values of the live keys as replayed by ``open(keep_values=True)``, until the first
        # write: a caller that reads everything back right after opening (a broker
        # restoring its state) is spared a second read of every record.
        self._loaded: dict[bytes, bytes] | None = None

    # ----------------------------------------------------------------- opening / closing

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        compaction_threshold: float = 0.5,
        keep_values: bool = False,
    ) -> LogStore:
        """Open (creating if needed) the store in ``directory`` and recover its state.

        ``keep_values``: keep the live values read during recovery in memory until the first
        write, and serve ``get``/``scan`` from them (their checksums were just verified)."""
        if segment_size < 64:
            raise ValueError(f"segment_size too small: {segment_size}")
        if not 0.0 < compaction_threshold <= 1.0:
            raise ValueError(f"compaction_threshold must be in (0, 1]: {compaction_threshold}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StoreLockedError(errno.EWOULDBLOCK, f"store in use: {directory}") from None
        store = cls(directory, segment_size, compaction_threshold, lock_fd)
        try:
            store._recover(keep_values)
        except BaseException:
            store._close_files()
            raise
        return store

    def _recover(self, keep_values: bool) -> None:
        ids = list_segment_ids(self.directory)
        index = self._index
        loaded: dict[bytes, bytes] | None = {} if keep_values else None
        max_seq = 0
        for position, segment_id in enumerate(ids):
            segment = Segment.open(self.directory, segment_id)
            self._segments[segment_id] = segment
            data = segment.read_all()
            scan = SegmentScan(segment_id, data, last=position == len(ids) - 1)
            put, delete = index.put, index.delete
            records = 0
            for offset, length, kind, key, seq in scan:
                records += 1
                if kind == PUT:
                    put(key, segment_id, offset, length)
                    if loaded is not None:
                        loaded[key] = data[offset + HEADER_SIZE + len(key) : offset + length - 4]
                else:
                    delete(key, segment_id, offset, length)
                    if loaded is not None:
                        loaded.pop(key, None)
                if seq > max_seq:
                    max_seq = seq
            segment.records = records
            if scan.truncate_at is not None:
                segment.truncate(scan.truncate_at)
            # A sealed segment's damaged tail is left alone: it is garbage, never appended to.
            segment.fsync()  # whatever we replayed must be durable before we call it synced
            for issue in scan.issues:
                log_issue(issue)
            self.recovery_issues.extend(scan.issues)
        index.finish_load()
        if ids:
            self._active = self._segments[ids[-1]]
        else:
            self._new_segment(1)
            fsync_directory(self.directory)
        self._seq = self._synced_seq = max_seq
        self._loaded = loaded

    def close(self) -> None:
        """Sync and close. Further calls raise StoreClosedError (``sync`` is then a no-op)."""
        if self._closed:
            return
        try:
            self.sync()
        finally:
            self._close_files()

    def _close_files(self) -> None:
        if self._job is not None:
            self._job.abort()
        with self._lock:
            self._closed = True
            for segment in self._segments.values():
                segment.close()
            self._dirty.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(errno.EBADF, "store is closed")

    # ----------------------------------------------------------------- reads

    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None. Raises CorruptRecordError if the record
        no longer passes its checksum."""
        self._check_open()
        if not isinstance(key, bytes):
            key = _as_bytes(key, "key")
        entry = self._index.live.get(key)
        if entry is None:
            return None
        return self._read_value(key, entry)

    def __contains__(self, key: object) -> bool:
        return key in self._index.live

    def __len__(self) -> int:
        return len(self._index.live)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` for every live key starting with ``prefix``, in key order.

        Lazy, and safe against writes between items: keys are fetched in small batches and
        each is looked up again when yielded (a key deleted meanwhile is skipped)."""
        self._check_open()
        prefix = _as_bytes(prefix, "prefix")
        return self._scan(prefix)

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        start, inclusive = prefix, True
        while True:
            live = self._index.live
            assert isinstance(live, SortedDict)  # sorted once the replay finished
            batch = list(islice(live.irange(start, None, (inclusive, True)), _SCAN_BATCH))
            for key in batch:
                if not key.startswith(prefix):
                    return
                loaded = self._loaded  # (a write in between drops it)
                if loaded is not None and (value := loaded.get(key)) is not None:
                    yield key, value
                    continue
                entry = self._index.live.get(key)
                if entry is not None:
                    yield key, self._read_value(key, entry)
            if len(batch) < _SCAN_BATCH:
                return
            start, inclusive = batch[-1], False

    def _read_value(self, key: bytes, entry: tuple[int, int, int, int, int]) -> bytes:
        self._check_open()
        if self._loaded is not None:
            value = self._loaded.get(key)
            if value is not None:
                return value
        segment_id, offset, length = entry[0], entry[1], entry[2]
        data = self._segments[segment_id].read(offset, length)
        status, kind, key_len, total, _ = inspect(data)
        end = HEADER_SIZE + key_len
        if status != OK or kind != PUT or total != length or data[HEADER_SIZE:end] != key:
            raise CorruptRecordError(
                errno.EIO,
                f"record of key {key!r} at segment {segment_id} offset {offset} fails its checksum",
            )
        return data[end : total - 4]

    # ----------------------------------------------------------------- writes

    def put(self, key: bytes, value: bytes) -> int:
        """Store ``value`` under ``key``; return the write's sequence number (not yet durable:
        it is once ``synced_seq`` reaches it). Raises StoreFullError when out of space."""
        self._check_open()
        if type(key) is not bytes or len(key) > MAX_FIELD_SIZE:
            key = _as_bytes(key, "key")
        if type(value) is not bytes or len(value) > MAX_FIELD_SIZE:
            value = _as_bytes(value, "value")
        if self._group is not None:
            return self._add_to_group(PUT, key, value)
        seq = self._seq + 1
        segment, offset, length = self._append(encode_checked_fields(PUT, seq, key, value), seq)
        self._index.put(key, segment.id, offset, length)
        return seq

    def delete(self, key: bytes) -> int:
        """Remove ``key`` (a tombstone record); return its sequence number. Deleting an absent
        key writes nothing and returns the current sequence number."""
        self._check_open()
        if type(key) is not bytes or len(key) > MAX_FIELD_SIZE:
            key = _as_bytes(key, "key")
        if self._group is not None and key in self._group_keys:
            return self._add_to_group(DELETE, key, b"")
        if key not in self._index.live:
            return self._seq
        if self._group is not None:
            return self._add_to_group(DELETE, key, b"")
        seq = self._seq + 1
        segment, offset, length = self._append(encode_checked_fields(DELETE, seq, key), seq)
        self._index.delete(key, segment.id, offset, length)
        return seq

    # ----------------------------------------------------------------- atomic groups

    def begin_group(self) -> None:
        """Open an atomic group: the puts and deletes until ``commit_group`` are written as
        one append, and after a crash either all of them are in the store or none (a group
        cut short at the tail of the log is dropped by recovery). Until the commit, they are
        neither readable nor counted in ``last_seq``. Writing thread only; no nesting."""
        self._check_open()
        if self._group is not None:
            raise RuntimeError("an atomic group is already open")
        self._group = []

    @property
    def group_open(self) -> bool:
        return self._group is not None

    @property
    def group_writes(self) -> list[tuple[int, bytes, bytes]]:
        """The open group's writes so far: (PUT or DELETE, key, value), in order."""
        return list(self._group or ())

    def _add_to_group(self, kind: int, key: bytes, value: bytes) -> int:
        assert self._group is not None
        self._group.append((kind, key, value))
        self._group_keys.add(key)
        return self._seq + len(self._group)  # the sequence number it will have

    def commit_group(self) -> int:
        """Write the open group; return the sequence number of its last write. Raises
        StoreError (StoreFullError on a full disk) with nothing of the group written."""
        group, self._group = self._group, None
        self._group_keys = set()
        if group is None:
            raise RuntimeError("no atomic group is open")
        if not group:
            return self._seq
        seq = self._seq
        last = len(group) - 1
        encoded = [
            encode_checked_fields(kind, seq + n + 1, key, value, CONTINUED if n < last else 0)
            for n, (kind, key, value) in enumerate(group)
        ]
        segment, offset, _ = self._append(b"".join(encoded), seq + len(group))
        segment.records += last  # the segment counted the group's append as one record
        index = self._index
        for (kind, key, _), data in zip(group, encoded, strict=True):
            if kind == PUT:
                index.put(key, segment.id, offset, len(data))
            else:
                index.delete(key, segment.id, offset, len(data))
            offset += len(data)
        return seq + len(group)

    def abandon_group(self) -> None:
        """Drop the open group's writes (none reached the disk)."""
        self._group = None
        self._group_keys = set()

    def _append(self, data: bytes, seq: int | None) -> tuple[Segment, int, int]:
        """Append one encoded record to the active segment (rolling first if it would not
        fit); ``seq`` is the new last sequence number, or None for a compaction copy."""
        segment = self._active
        assert segment is not None
        self._loaded = None  # from now on, values are read from the files
        if segment.size and segment.size + len(data) > self.segment_size:
            segment = self._roll()
        try:
            offset = segment.append(data)
        except OSError as exc:
            raise _store_error(exc, f"cannot append to {segment.path}") from exc
        with self._lock:
            if seq is not None:
                self._seq = seq
            segment.write_gen += 1  # lets a sync in flight see it did not cover this write
            self._dirty[segment.id] = segment
        return segment, offset, len(data)

    def _roll(self) -> Segment:
        """Seal the active segment and start the next one."""
        assert self._active is not None
        try:
            segment = self._new_segment(self._active.id + 1)
        except OSError as exc:
            raise _store_error(exc, "cannot create a new segment") from exc
        return segment

    def _new_segment(self, segment_id: int) -> Segment:
        segment = Segment.create(self.directory, segment_id)
        with self._lock:
            self._segments[segment_id] = segment
            self._active = segment
            self._dir_dirty = True
        return segment

    # ----------------------------------------------------------------- durability

    @property
    def synced_seq(self) -> int:
        """The highest sequence number known durable."""
        return self._synced_seq

    @property
    def last_seq(self) -> int:
        """The sequence number of the latest write."""
        return self._seq

    def sync(self) -> int:
        """Fsync everything written so far; return the highest durable sequence number.

        Safe to call from one worker thread while the owning thread keeps writing; writes
        that land during the fsync are covered by the next call."""
        with self._lock:
            if self._closed:
                return self._synced_seq
            seq = self._seq
            targets = [(segment, segment.write_gen) for segment in self._dirty.values()]
            for segment, _ in targets:
                segment.pin()
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        done: list[tuple[Segment, int]] = []
        try:
            for segment, gen in targets:
                segment.fsync()
                done.append((segment, gen))
            if dir_dirty:
                fsync_directory(self.directory)
                dir_dirty = False
        except OSError as exc:
            raise _store_error(exc, "fsync failed") from exc
        finally:
            with self._lock:
                for segment, gen in done:
                    if segment.write_gen == gen and self._dirty.get(segment.id) is segment:
                        del self._dirty[segment.id]
                for segment, _ in targets:
                    segment.unpin()
                if dir_dirty:
                    self._dir_dirty = True  # the directory fsync failed: retry next time
                elif seq > self._synced_seq and len(done) == len(targets):
                    self._synced_seq = seq
        return self._synced_seq

    # ----------------------------------------------------------------- compaction

    def segment_ids(self) -> list[int]:
        """Ids of the segments on disk, ascending; the last one is the active segment."""
        return list(self._segments)

    def live_fraction(self, segment_id: int) -> float:
        """Share of the segment's bytes that are current records (0.0 for an empty one)."""
        segment = self._segments[segment_id]
        if not segment.size:
            return 0.0
        return self._index.live_bytes.get(segment_id, 0) / segment.size

    def compact(self, max_segments: int = 1) -> int:
        """Rewrite the live records of up to ``max_segments`` sealed segments whose live
        fraction is below the threshold into the active segment, fsync them, then delete the
        old files. Returns the number of segments removed. Blocks on I/O (it reads whole
        segments and fsyncs): call it from the writing thread, e.g. on a timer.

        Tombstone decisions made here only rely on segments already removed by earlier calls
        (whose deletion was made durable before they returned): segments compacted together
        still count as present, so the order in which their files disappear cannot matter."""
        self._check_open()
        if self._job is not None:
            raise RuntimeError("a stepwise compaction is in progress")
        chosen = [self._segments[sid] for sid in self._compaction_candidates()[:max_segments]]
        removals: list[tuple[Segment, Counter[bytes], list[bytes]]] = []
        for segment in chosen:
            result = self._copy_live(segment)
            if result is not None:
                removals.append((segment, *result))
        if not removals:
            return 0
        self.sync()  # the copies must be durable before the originals go
        try:
            for segment, _, _ in removals:
                with self._lock:
                    del self._segments[segment.id]
                    self._dirty.pop(segment.id, None)
                    segment.close()
                os.unlink(segment.path)
            fsync_directory(self.directory)
        except OSError as exc:
            # Whatever is left on disk only holds records that have later copies: harmless.
            raise _store_error(exc, "cannot remove compacted segments") from exc
        # Only now may tombstones elsewhere rely on these PUTs being gone.
        for segment, put_counts, dropped in removals:
            self._index.segment_removed(segment.id, put_counts, dropped)
        return len(removals)

    def _compaction_candidates(self) -> list[int]:
        """Sealed segments below the threshold, lowest live fraction first."""
        assert self._active is not None
        active_id = self._active.id
        candidates = sorted(
            (self.live_fraction(sid), sid)
            for sid in self._segments
            if sid != active_id and self.live_fraction(sid) < self.compaction_threshold
        )
        return [sid for _, sid in candidates]

    def begin_compaction(self) -> CompactionJob | None:
        """Start compacting, in steps, the sealed segment with the lowest live fraction below
        the threshold; None if there is none. For an owner whose writing thread must not block
        (an event loop): ``compaction`` explains how to drive the job."""
        self._check_open()
        if self._job is not None:
            raise RuntimeError("a stepwise compaction is in progress")
        candidates = self._compaction_candidates()
        if not candidates:
            return None
        segment = self._segments[candidates[0]]
        with self._lock:
            segment.pin()
        self._job = CompactionJob(self, segment)
        return self._job

    def _copy_live(self, segment: Segment) -> tuple[Counter[bytes], list[bytes]] | None:
        """Append copies of the segment's current records to the active segment. Returns the
        PUT count per key in the segment and the tombstones to drop, or None (segment kept)
        if some current record in it no longer reads back."""
        data = segment.read_all()
        records = list(SegmentScan(segment.id, data, last=False))
        index = self._index
        current = []
        found = 0
        for offset, length, kind, key, _ in records:
            entry = index.current(key, segment.id, offset)
            if entry is not None:
                current.append((offset, length, kind, key, entry))
                if kind == PUT or index.needed(entry):
                    found += length
        if found != index.live_bytes.get(segment.id, 0):
            logger.error(
                "storage: not compacting segment %d: some of its live records no longer read "
                "back (damaged since the store was opened)",
                segment.id,
            )
            return None
        put_counts: Counter[bytes] = Counter(key for _, _, kind, key, _ in records if kind == PUT)
        dropped: list[bytes] = []
        for offset, length, kind, key, entry in current:
            if kind == DELETE and not index.needed(entry):
                dropped.append(key)
                continue
            target, new_offset, _ = self._append(standalone(data[offset : offset + length]), None)
            index.relocate(key, target.id, new_offset)
        return put_counts, dropped

    # ----------------------------------------------------------------- introspection

    def stats(self) -> StoreStats:
        segments = list(self._segments.values())
        return StoreStats(
            segments=len(segments),
            total_bytes=sum(segment.size for segment in segments),
            live_bytes=sum(self._index.live_bytes.get(s.id, 0) for s in segments),
            live_keys=len(self._index.live),
            tombstones=len(self._index.tombstones),
            records=sum(segment.records for segment in segments),
            last_seq=self._seq,
            synced_seq=self._synced_seq,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} keys"
        return f"<LogStore {str(self.directory)!r} {state}>"

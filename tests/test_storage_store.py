"""LogStore: the key-value API, sequence numbers, sync, errors, and sync from another thread."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from polybroker.storage import (
    CorruptRecordError,
    LogStore,
    StoreClosedError,
    StoreError,
    StoreFullError,
    StoreLockedError,
)


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_put_get_delete_contains_len(tmp_path: Path) -> None:
    with LogStore.open(tmp_path / "db") as store:
        assert store.get(b"a") is None and len(store) == 0
        store.put(b"a", b"1")
        store.put(b"b", b"2")
        store.put(b"a", b"3")
        assert store.get(b"a") == b"3" and b"a" in store and len(store) == 2
        store.delete(b"a")
        assert store.get(b"a") is None and b"a" not in store and len(store) == 1
        store.put(b"", b"")  # empty key and value are ordinary values
        assert store.get(b"") == b"" and len(store) == 2
    with LogStore.open(tmp_path / "db") as store:
        assert store.get(b"a") is None and store.get(b"b") == b"2" and store.get(b"") == b""
        assert store.recovery_issues == []


def test_directory_is_created_with_a_first_segment(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    with LogStore.open(directory) as store:
        assert store.segment_ids() == [1]
    assert [p.name for p in segment_files(directory)] == ["00000001.seg"]


def test_accepts_buffer_keys_and_rejects_other_types(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        store.put(bytearray(b"k"), memoryview(b"v"))
        assert store.get(b"k") == b"v"
        with pytest.raises(TypeError):
            store.put(5, b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.put("k", b"v")  # type: ignore[arg-type]


def test_scan_prefix_in_key_order(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        for key in [b"sub/b", b"sub/a", b"sub", b"su", b"sub/c/d", b"subx", b"t", b"sub/\xff"]:
            store.put(key, key.upper())
        store.delete(b"sub/c/d")
        children = [b"sub/a", b"sub/b", b"sub/\xff"]
        assert [k for k, _ in store.scan(b"sub/")] == children
        assert dict(store.scan(b"sub/")) == {k: k.upper() for k in children}
        assert [k for k, _ in store.scan(b"sub")] == [b"sub", *children, b"subx"]
        assert len(list(store.scan())) == 7
        assert list(store.scan(b"zzz")) == []


def test_scan_tolerates_writes_while_iterating(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=4096) as store:
        for i in range(1000):
            store.put(b"q/%04d" % i, b"%d" % i)
        seen = []
        for key, value in store.scan(b"q/"):
            seen.append(key)
            assert value == b"%d" % int(key[2:])
            n = int(key[2:])
            if n + 1 < 1000:
                store.delete(b"q/%04d" % (n + 1))  # delete the next key: it must be skipped
            store.put(b"q/%04d~" % n, b"new")  # insert behind the cursor: not revisited
        assert seen == [b"q/%04d" % i for i in range(0, 1000, 2)]


def test_sequence_numbers_and_sync(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        assert store.synced_seq == 0 and store.last_seq == 0
        seqs = [store.put(b"k%d" % i, b"v") for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5] and store.synced_seq == 0
        assert store.delete(b"k0") == 6
        assert store.delete(b"absent") == 6  # no-op: nothing written, no new number
        assert store.stats().records == 6
        assert store.sync() == 6 == store.synced_seq
        assert store.sync() == 6
    with LogStore.open(tmp_path) as store:
        # Numbers keep increasing across a reopen; what was replayed counts as durable.
        assert store.synced_seq == 6 and store.put(b"x", b"y") == 7


def test_segments_roll_and_oversized_records_get_their_own(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=200) as store:
        for i in range(10):
            store.put(b"k%d" % i, b"x" * 50)
        store.put(b"big", b"y" * 1000)
        store.put(b"after", b"z")
        sizes = [os.path.getsize(p) for p in segment_files(tmp_path)]
        assert len(sizes) == len(store.segment_ids()) > 5
        assert all(size <= 200 for size in sizes if size < 1000)
        assert max(sizes) == 24 + 3 + 1000
    with LogStore.open(tmp_path, segment_size=200) as store:
        assert store.get(b"big") == b"y" * 1000 and store.get(b"after") == b"z"
        assert len(store) == 12


def test_stats(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        store.put(b"a", b"12345")  # 24 + 1 + 5 = 30 bytes
        store.put(b"b", b"1")  # 26
        store.put(b"a", b"1")  # 26, the first put is now garbage
        store.delete(b"b")  # 25; its PUT is in the same segment: the tombstone is garbage
        stats = store.stats()
        assert stats.segments == 1 and stats.records == 4
        assert stats.total_bytes == 30 + 26 + 26 + 25 == os.path.getsize(tmp_path / "00000001.seg")
        assert stats.live_bytes == 26 and stats.live_keys == 1 and stats.tombstones == 1
        assert stats.last_seq == 4 and stats.synced_seq == 0
        assert store.live_fraction(1) == pytest.approx(26 / 107)


def test_closed_store_raises_and_close_is_idempotent(tmp_path: Path) -> None:
    store = LogStore.open(tmp_path)
    store.put(b"k", b"v")
    store.close()
    store.close()
    assert store.synced_seq == 1 and store.sync() == 1
    for call in (lambda: store.put(b"k", b"v"), lambda: store.get(b"k"), lambda: store.scan()):
        with pytest.raises(StoreClosedError):
            call()


def test_a_store_directory_can_only_be_open_once(tmp_path: Path) -> None:
    with LogStore.open(tmp_path), pytest.raises(StoreLockedError):
        LogStore.open(tmp_path)
    LogStore.open(tmp_path).close()


def test_get_detects_a_value_damaged_after_open(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        store.put(b"k", b"value")
        with open(tmp_path / "00000001.seg", "r+b") as f:
            f.seek(24 + 1 + 2)
            f.write(b"X")
        with pytest.raises(CorruptRecordError) as info:
            store.get(b"k")
        assert isinstance(info.value, StoreError) and info.value.errno == errno.EIO


def test_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LogStore.open(tmp_path, compaction_threshold=0)
    with pytest.raises(ValueError):
        LogStore.open(tmp_path, segment_size=10)


# ---------------------------------------------------------------------------- write failures


class FailingWrite:
    """os.write stand-in: after ``ok_bytes`` bytes written for real, fail with ``err``."""

    def __init__(self, err: int, ok_bytes: int = 0) -> None:
        self.real = os.write
        self.err = err
        self.budget = ok_bytes

    def __call__(self, fd: int, data: bytes) -> int:
        if self.budget <= 0:
            raise OSError(self.err, os.strerror(self.err))
        n = self.real(fd, bytes(data)[: self.budget])
        self.budget -= n
        return n


@pytest.mark.parametrize("ok_bytes", [0, 1, 23, 30])
def test_enospc_leaves_the_store_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ok_bytes: int
) -> None:
    store = LogStore.open(tmp_path)
    store.put(b"before", b"1")
    size = os.path.getsize(tmp_path / "00000001.seg")
    monkeypatch.setattr(os, "write", FailingWrite(errno.ENOSPC, ok_bytes))
    with pytest.raises(StoreFullError) as info:
        store.put(b"failed", b"x" * 20)
    monkeypatch.undo()
    assert isinstance(info.value, StoreError) and isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    # Not stored, no sequence number used, partial bytes rolled back.
    assert b"failed" not in store and store.get(b"failed") is None and len(store) == 1
    assert store.last_seq == 1
    assert os.path.getsize(tmp_path / "00000001.seg") == size
    # Space is back: writes work and land right after the last good record.
    assert store.put(b"after", b"2") == 2
    store.close()
    with LogStore.open(tmp_path) as store:
        assert store.recovery_issues == []
        assert dict(store.scan()) == {b"before": b"1", b"after": b"2"}


def test_enospc_on_delete_keeps_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LogStore.open(tmp_path) as store:
        store.put(b"k", b"v")
        monkeypatch.setattr(os, "write", FailingWrite(errno.EDQUOT))
        with pytest.raises(StoreFullError):
            store.delete(b"k")
        monkeypatch.undo()
        assert store.get(b"k") == b"v"


def test_other_write_errors_are_store_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LogStore.open(tmp_path) as store:
        monkeypatch.setattr(os, "write", FailingWrite(errno.EIO))
        with pytest.raises(StoreError) as info:
            store.put(b"k", b"v")
        monkeypatch.undo()
        assert not isinstance(info.value, StoreFullError) and info.value.errno == errno.EIO
        store.put(b"k", b"v")
        assert store.get(b"k") == b"v"


def test_enospc_when_creating_a_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LogStore.open(tmp_path, segment_size=100)
    store.put(b"a", b"x" * 60)
    real_open = os.open

    def failing_open(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".seg"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(StoreFullError):
        store.put(b"b", b"x" * 60)
    monkeypatch.undo()
    assert store.segment_ids() == [1] and b"b" not in store
    store.put(b"b", b"x" * 60)
    assert store.segment_ids() == [1, 2]
    store.close()
    with LogStore.open(tmp_path, segment_size=100) as store:
        assert len(store) == 2 and store.recovery_issues == []


# ---------------------------------------------------------------------------- threads


def test_sync_from_a_worker_thread_while_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group-commit pattern: the main thread writes (rolling and compacting segments),
    a worker loops on sync(). The descriptor being fsynced must never be closed under it."""
    real_fsync = os.fsync
    misuse: list[str] = []

    def slow_fsync(fd: int) -> None:
        before = os.fstat(fd).st_ino
        time.sleep(0.0005)  # ok: a slow fake fsync widens the window for the race it checks
        try:
            if os.fstat(fd).st_ino != before:
                misuse.append("fd reused during fsync")
        except OSError as exc:
            misuse.append(f"fd closed during fsync: {exc}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    store = LogStore.open(tmp_path, segment_size=2048)
    results: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                results.append(store.sync())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    model: dict[bytes, bytes] = {}
    try:
        for i in range(4000):
            key = b"k%03d" % (i % 300)
            if i % 7 == 3:
                store.delete(key)
                model.pop(key, None)
            else:
                value = b"v%d" % i
                store.put(key, value)
                model[key] = value
            if i % 500 == 499:
                store.compact(max_segments=4)
    finally:
        stop.set()
        thread.join()
    assert not errors and not misuse
    assert results == sorted(results) and results[-1] <= store.last_seq
    assert len(results) > 5
    last = store.last_seq
    assert store.sync() == last == store.synced_seq
    store.close()
    monkeypatch.undo()
    with LogStore.open(tmp_path, segment_size=2048) as store:
        assert store.recovery_issues == []
        assert dict(store.scan()) == model


class BlockingFsync:
    """os.fsync stand-in that parks the worker thread inside fsync of one descriptor until
    released, so the main thread can act while that fsync is in flight."""

    def __init__(self, fd: int) -> None:
        self.real = os.fsync
        self.fd = fd
        self.worker: threading.Thread | None = None
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []
        self.inode_after_wait: int | None = None

    def __call__(self, fd: int) -> None:
        self.calls.append(fd)
        if threading.current_thread() is self.worker and fd == self.fd:
            before = os.fstat(fd).st_ino
            self.entered.set()
            assert self.release.wait(10)
            self.inode_after_wait = os.fstat(fd).st_ino  # EBADF if closed under us
            assert self.inode_after_wait == before
        self.real(fd)

    def run_sync_in_worker(self, store: LogStore) -> list[object]:
        outcome: list[object] = []

        def target() -> None:
            try:
                outcome.append(store.sync())
            except BaseException as exc:  # pragma: no cover - reported by the caller
                outcome.append(exc)

        self.worker = threading.Thread(target=target)
        self.worker.start()
        assert self.entered.wait(10)
        return outcome


def test_segment_removed_while_being_fsynced_stays_open_until_fsync_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore.open(tmp_path, segment_size=200)
    n = 0
    while store.segment_ids() == [1]:  # segment 1: garbage only, written but not synced
        store.put(b"g%d" % n, b"x" * 20)
        store.delete(b"g%d" % n)
        n += 1
    segment1 = store._segments[1]
    fsync = BlockingFsync(segment1.fd)
    monkeypatch.setattr(os, "fsync", fsync)
    outcome = fsync.run_sync_in_worker(store)
    # The worker is inside fsync(segment 1); compaction (syncing on this thread) deletes it.
    assert store.compact() == 1 and 1 not in store.segment_ids()
    assert not segment1.path.exists()
    fsync.release.set()
    assert fsync.worker is not None
    fsync.worker.join()
    assert outcome == [store.last_seq] and fsync.inode_after_wait is not None
    assert segment1._refs == 0  # closed by the worker once its fsync was done
    store.close()


def test_writes_during_an_fsync_are_left_for_the_next_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore.open(tmp_path)
    first = store.put(b"a", b"1")
    fsync = BlockingFsync(store._segments[1].fd)
    monkeypatch.setattr(os, "fsync", fsync)
    outcome = fsync.run_sync_in_worker(store)
    second = store.put(b"b", b"2")  # lands while the worker's fsync is in flight
    fsync.release.set()
    assert fsync.worker is not None
    fsync.worker.join()
    assert outcome == [first] and store.synced_seq == first  # not the later write
    fsync.calls.clear()
    assert store.sync() == second
    assert fsync.calls == [store._segments[1].fd]  # the segment was fsynced again
    store.close()


def test_keep_values_serves_reads_from_the_replay_until_the_first_write(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=200) as store:
        for i in range(30):
            store.put(b"k%02d" % i, b"v%d" % i)
        for i in range(0, 30, 3):
            store.delete(b"k%02d" % i)
        store.put(b"k01", b"new")
        expected = dict(store.scan())
    with LogStore.open(tmp_path, segment_size=200, keep_values=True) as store:
        assert store._loaded is not None
        assert dict(store.scan()) == expected and store.get(b"k01") == b"new"
        store.put(b"k02", b"changed")
        assert store._loaded is None  # written since: reads go to the files again
        assert store.get(b"k02") == b"changed" and store.get(b"k04") == b"v4"


def test_a_write_during_a_scan_of_kept_values_is_seen(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        for i in range(5):
            store.put(b"k%d" % i, b"old")
    with LogStore.open(tmp_path, keep_values=True) as store:
        seen = {}
        for key, value in store.scan():
            seen[key] = value
            if key == b"k1":
                store.put(b"k3", b"new")
        assert seen[b"k3"] == b"new"

"""Compaction: live fractions, the tombstone rule, crash safety and bounded disk use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polybroker.storage import LogStore, StoreError


def seg_file(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:08d}.seg"


def roll_with_garbage(store: LogStore) -> None:
    """Write put/delete pairs of a scratch key until a new segment starts."""
    start = store.segment_ids()[-1]
    n = 0
    while store.segment_ids()[-1] == start:
        store.put(b"scratch%d" % n, b"g" * 20)
        store.delete(b"scratch%d" % n)
        n += 1


def test_live_fraction_and_compaction_of_garbage(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=300) as store:
        for i in range(30):
            store.put(b"k%02d" % i, b"v" * 20)
        for i in range(30):
            if i % 3:
                store.delete(b"k%02d" % i)
        sealed = store.segment_ids()[:-1]
        assert all(0.0 <= store.live_fraction(s) <= 1.0 for s in store.segment_ids())
        low = [s for s in sealed if store.live_fraction(s) < 0.5]
        assert low
        total_before = store.stats().total_bytes
        assert store.compact(max_segments=100) == len(low)
        assert not set(low) & set(store.segment_ids())
        assert all(not seg_file(tmp_path, s).exists() for s in low)
        # The segments of tombstones were live while the PUTs they cancel existed; now those
        # PUTs are gone, the tombstones are garbage, and the next round removes them.
        tombstone_segments = [s for s in sealed if s not in low]
        assert all(store.live_fraction(s) == 0.0 for s in tombstone_segments)
        assert store.compact(max_segments=100) >= len(tombstone_segments)
        assert not set(tombstone_segments) & set(store.segment_ids())
        assert all(store.live_fraction(s) >= 0.5 for s in store.segment_ids()[:-1])
        assert store.compact() == 0  # nothing left below the threshold
        assert store.stats().tombstones == 0
        assert store.stats().total_bytes < total_before / 2
        expected = {b"k%02d" % i: b"v" * 20 for i in range(0, 30, 3)}
        assert dict(store.scan()) == expected
    with LogStore.open(tmp_path, segment_size=300) as store:
        assert store.recovery_issues == [] and dict(store.scan()) == expected


def test_compact_respects_max_segments_and_never_touches_the_active_segment(
    tmp_path: Path,
) -> None:
    with LogStore.open(tmp_path, segment_size=200) as store:
        for _ in range(4):
            roll_with_garbage(store)
        active = store.segment_ids()[-1]
        assert store.compact(max_segments=2) == 2
        assert store.compact(max_segments=2) == 2
        assert store.segment_ids() == [active]


def test_tombstone_survives_compaction_while_an_older_put_exists(tmp_path: Path) -> None:
    opts = {"segment_size": 400}
    store = LogStore.open(tmp_path, **opts)
    # Segment 1: the victim's PUT among data that stays live, so segment 1 is not compacted.
    store.put(b"victim", b"secret value")
    n = 0
    while store.segment_ids() == [1]:
        store.put(b"keep%02d" % n, b"k" * 30)
        n += 1
    # Segment 2: the victim's tombstone, then garbage so that segment 2 is worth compacting.
    store.delete(b"victim")
    roll_with_garbage(store)
    assert store.segment_ids() == [1, 2, 3]
    assert store.live_fraction(1) >= 0.5 > store.live_fraction(2)
    assert b"victim" in seg_file(tmp_path, 2).read_bytes()

    assert store.compact() == 1
    assert store.segment_ids()[:1] == [1] and 2 not in store.segment_ids()
    # The PUT is still on disk in segment 1, so the tombstone had to be carried forward.
    assert b"secret value" in seg_file(tmp_path, 1).read_bytes()
    assert b"victim" in seg_file(tmp_path, store.segment_ids()[-1]).read_bytes()
    store.close()
    with LogStore.open(tmp_path, **opts) as store:
        assert store.get(b"victim") is None and b"victim" not in store
        assert store.recovery_issues == []

        # Once segment 1 (the PUT) is gone too, the tombstone is garbage and disappears.
        for i in range(n):
            store.delete(b"keep%02d" % i)
        for _ in range(4):
            roll_with_garbage(store)
            store.compact(max_segments=10)
        assert 1 not in store.segment_ids()
        assert len(store) == 0 and b"victim" not in store._index.tombstones
        sealed = store.segment_ids()[:-1]
        assert all(b"victim" not in seg_file(tmp_path, s).read_bytes() for s in sealed)
    with LogStore.open(tmp_path, **opts) as store:
        assert store.get(b"victim") is None and len(store) == 0


def test_tombstone_next_to_its_put_is_garbage(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=1000) as store:
        store.put(b"k", b"v")
        store.delete(b"k")
        assert store.stats().live_bytes == 0 and store.live_fraction(1) == 0.0


def test_a_needed_tombstone_becomes_garbage_when_the_put_segment_goes(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=300) as store:
        store.put(b"victim", b"x" * 10)
        roll_with_garbage(store)  # segment 1: victim + garbage, below the threshold
        store.delete(b"victim")  # segment 2: needed tombstone, counted live
        tomb = store._index.tombstones[b"victim"]
        assert tomb[0] == 2 and store._index.live_bytes[2] == tomb[2]
        roll_with_garbage(store)
        assert store.compact(max_segments=1) == 1  # segment 1 has the lowest live fraction
        assert store.segment_ids()[0] == 2
        assert store._index.live_bytes.get(2, 0) == 0  # the tombstone is garbage now
        assert store.compact(max_segments=1) == 1
        assert b"victim" not in store._index.tombstones


def test_interrupted_compaction_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = {"segment_size": 300}
    store = LogStore.open(tmp_path, **opts)
    for i in range(20):
        store.put(b"k%02d" % i, b"v%d" % i)
    for i in range(20):
        if i % 3:
            store.delete(b"k%02d" % i)
    roll_with_garbage(store)
    expected = dict(store.scan())

    def no_unlink(path: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "unlink", no_unlink)
    with pytest.raises(StoreError):
        store.compact(max_segments=10)
    monkeypatch.undo()
    assert dict(store.scan()) == expected
    store._close_files()  # crash: the copies were fsynced, the originals are still there
    with LogStore.open(tmp_path, **opts) as store:
        assert store.recovery_issues == [] and dict(store.scan()) == expected
        while store.compact(max_segments=10):
            pass
        assert dict(store.scan()) == expected
    with LogStore.open(tmp_path, **opts) as store:
        assert dict(store.scan()) == expected


def test_disk_use_stays_bounded_under_endless_put_delete(tmp_path: Path) -> None:
    """20,000 put/delete pairs (what a queue with acks produces) plus a few long-lived keys
    that keep being rewritten; compact() every 100 pairs. Without compaction this writes
    ~2.4 MB; with it, the files must stay within 2 x live bytes + 6 segments."""
    segment_size = 4096
    store = LogStore.open(tmp_path, segment_size=segment_size)
    written = 0
    worst = 0
    for i in range(20_000):
        written += store.put(b"queue/%08d" % i, b"m" * 50) and 24 + 14 + 50
        store.delete(b"queue/%08d" % i)
        if i % 400 == 0:
            store.put(b"session/%02d" % (i // 400 % 40), b"s" * 60)
        if i % 100 == 99:
            store.compact(max_segments=8)
            stats = store.stats()
            on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.seg"))
            assert on_disk == stats.total_bytes
            assert on_disk <= 2 * stats.live_bytes + 6 * segment_size, (i, stats)
            worst = max(worst, on_disk)
    assert written > 100 * worst  # compaction really reclaimed the space
    assert len(store._index.tombstones) < 200  # memory is bounded too
    store.close()
    with LogStore.open(tmp_path, segment_size=segment_size) as store:
        assert len(store) == 40 and list(store.scan(b"queue/")) == []


# ------------------------------------------------------------ stepwise compaction (for a loop)


def run_job(store: LogStore, limit: int = 3) -> bool:
    """Drive a stepwise compaction to the end as the broker does (minus the threads)."""
    job = store.begin_compaction()
    if job is None:
        return False
    job.read()
    while not job.copy(limit):
        pass
    store.sync()
    if not job.detach():
        return False
    job.unlink()
    job.finish()
    return True


def test_stepwise_compaction_removes_what_compact_would(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=300) as store:
        for i in range(30):
            store.put(b"k%02d" % i, b"v" * 20)
        for i in range(30):
            if i % 3:
                store.delete(b"k%02d" % i)
        low = [s for s in store.segment_ids()[:-1] if store.live_fraction(s) < 0.5]
        removed = []
        while (job := store.begin_compaction()) is not None:
            removed.append(job.segment_id)
            job.abort()  # begin picks the lowest live fraction; run it for real below
            assert run_job(store)
        assert set(low) <= set(removed)
        assert all(not seg_file(tmp_path, s).exists() for s in removed)
        assert all(store.live_fraction(s) >= 0.5 for s in store.segment_ids()[:-1])
        expected = {b"k%02d" % i: b"v" * 20 for i in range(0, 30, 3)}
        assert dict(store.scan()) == expected
    with LogStore.open(tmp_path, segment_size=300) as store:
        assert store.recovery_issues == [] and dict(store.scan()) == expected


def test_writes_between_steps_win_over_the_copies(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=400) as store:
        for i in range(12):
            store.put(b"k%02d" % i, b"old%02d" % i)
        roll_with_garbage(store)
        for i in range(7):
            store.delete(b"k%02d" % i)  # segment 1 drops below the threshold
        job = store.begin_compaction()
        assert job is not None and job.segment_id == 1
        job.read()
        assert not job.copy(2)
        # Between steps: overwrite a key still to be copied, delete another, recreate one.
        store.put(b"k11", b"new11")
        store.delete(b"k10")
        store.put(b"k00", b"back")
        while not job.copy(2):
            pass
        store.sync()
        assert job.detach()
        job.unlink()
        job.finish()
        expected = {b"k%02d" % i: b"old%02d" % i for i in range(7, 10)}
        expected |= {b"k11": b"new11", b"k00": b"back"}
        assert dict(store.scan(b"k")) == expected
        assert 1 not in store.segment_ids()
    with LogStore.open(tmp_path, segment_size=400) as store:
        assert store.recovery_issues == [] and dict(store.scan(b"k")) == expected


def test_crash_in_the_middle_of_a_stepwise_compaction_loses_nothing(tmp_path: Path) -> None:
    opts = {"segment_size": 300}
    store = LogStore.open(tmp_path, **opts)
    for i in range(20):
        store.put(b"k%02d" % i, b"v%d" % i)
    for i in range(20):
        if i % 3:
            store.delete(b"k%02d" % i)
    roll_with_garbage(store)
    expected = dict(store.scan())
    job = store.begin_compaction()
    job.read()
    job.copy(1)
    store._close_files()  # crash: some copies written, none synced, the job never finished
    with LogStore.open(tmp_path, **opts) as store:
        assert store.recovery_issues == [] and dict(store.scan()) == expected
        while run_job(store):
            pass
        assert dict(store.scan()) == expected
    with LogStore.open(tmp_path, **opts) as store:
        assert dict(store.scan()) == expected


def test_a_failed_unlink_keeps_the_store_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogStore.open(tmp_path, segment_size=300)
    for i in range(10):
        store.put(b"k%d" % i, b"v" * 20)
        store.delete(b"k%d" % i)
    store.put(b"keep", b"value")
    roll_with_garbage(store)
    job = store.begin_compaction()
    job.read()
    while not job.copy():
        pass
    store.sync()
    assert job.detach()

    def no_unlink(path: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "unlink", no_unlink)
    with pytest.raises(StoreError):
        job.unlink()
    monkeypatch.undo()
    job.abort()
    assert store.get(b"keep") == b"value"
    assert run_job(store) or store.begin_compaction() is None  # the next job may proceed
    store.close()
    with LogStore.open(tmp_path, segment_size=300) as store:
        assert dict(store.scan()) == {b"keep": b"value"}


def test_a_damaged_segment_is_not_compacted_stepwise(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=300) as store:
        store.put(b"precious", b"p" * 20)
        roll_with_garbage(store)
        assert store.live_fraction(1) < 0.5
        data = bytearray(seg_file(tmp_path, 1).read_bytes())
        start = data.index(b"precious")
        data[start + 10] ^= 0xFF  # the disk changed under the open store
        seg_file(tmp_path, 1).write_bytes(bytes(data))
        job = store.begin_compaction()
        job.read()
        while not job.copy():
            pass
        assert job.detach() is False
        assert 1 in store.segment_ids() and seg_file(tmp_path, 1).exists()
        assert store.begin_compaction() is not None  # the job is over; another may start


def test_one_stepwise_compaction_at_a_time(tmp_path: Path) -> None:
    with LogStore.open(tmp_path, segment_size=200) as store:
        for _ in range(3):
            roll_with_garbage(store)
        job = store.begin_compaction()
        with pytest.raises(RuntimeError):
            store.begin_compaction()
        with pytest.raises(RuntimeError):
            store.compact()
        job.abort()
        assert store.compact() == 1

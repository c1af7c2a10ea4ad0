"""Atomic groups: the writes of one group survive a crash all together or not at all."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from polybroker.storage import LogStore, StoreFullError

from .test_storage_compaction import roll_with_garbage
from .test_storage_store import FailingWrite

SEG1 = "00000001.seg"


def write_group(store: LogStore) -> None:
    store.begin_group()
    store.put(b"g1", b"first of the group")
    store.put(b"g2", b"second")
    store.delete(b"before2")
    store.put(b"g3", b"third" * 10)
    store.commit_group()


def test_a_group_is_written_and_read_back(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        store.put(b"before1", b"a")
        store.put(b"before2", b"b")
        write_group(store)
        assert store.last_seq == 6
        assert dict(store.scan()) == {
            b"before1": b"a", b"g1": b"first of the group", b"g2": b"second",
            b"g3": b"third" * 10,
        }
        assert store.stats().records == 6
    with LogStore.open(tmp_path) as store:
        assert store.recovery_issues == []
        assert sorted(dict(store.scan())) == [b"before1", b"g1", b"g2", b"g3"]
        assert store.last_seq == 6


def test_a_group_cut_anywhere_is_dropped_whole(tmp_path: Path) -> None:
    """What a crash in the middle of the group's append leaves: every cut inside it."""
    source = tmp_path / "source"
    with LogStore.open(source) as store:
        store.put(b"before1", b"a")
        store.put(b"before2", b"b")
        start = os.path.getsize(source / SEG1)
        write_group(store)
    data = (source / SEG1).read_bytes()
    for cut in range(start, len(data) + 1):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / SEG1).write_bytes(data[:cut])
        with LogStore.open(directory) as store:
            state = dict(store.scan())
            if cut == len(data):
                assert sorted(state) == [b"before1", b"g1", b"g2", b"g3"]
            else:
                assert state == {b"before1": b"a", b"before2": b"b"}, cut
                if cut > start:
                    assert [issue.truncated for issue in store.recovery_issues] == [True]
            # The file is cut at the group's start, and later writes replay after it.
            store.put(b"after", b"c")
        with LogStore.open(directory) as store:
            assert store.get(b"after") == b"c"
            assert store.recovery_issues == []
        shutil.rmtree(directory)


def test_a_put_then_delete_in_one_group(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        store.begin_group()
        store.put(b"k", b"v")
        store.delete(b"k")
        store.delete(b"never-written")  # writes nothing, as outside a group
        store.commit_group()
        assert b"k" not in store and store.last_seq == 2
    with LogStore.open(tmp_path) as store:
        assert dict(store.scan()) == {}


def test_a_failed_group_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LogStore.open(tmp_path) as store:
        store.put(b"before2", b"b")
        size = os.path.getsize(tmp_path / SEG1)
        monkeypatch.setattr(os, "write", FailingWrite(errno.ENOSPC, 30))
        with pytest.raises(StoreFullError):
            write_group(store)
        monkeypatch.undo()
        assert dict(store.scan()) == {b"before2": b"b"} and store.last_seq == 1
        assert os.path.getsize(tmp_path / SEG1) == size
        store.put(b"after", b"c")  # no group is left open
    with LogStore.open(tmp_path) as store:
        assert dict(store.scan()) == {b"before2": b"b", b"after": b"c"}


def test_groups_do_not_nest(tmp_path: Path) -> None:
    with LogStore.open(tmp_path) as store:
        store.begin_group()
        with pytest.raises(RuntimeError):
            store.begin_group()
        store.abandon_group()
        with pytest.raises(RuntimeError):
            store.commit_group()


def test_compaction_copies_of_group_records_stand_alone(tmp_path: Path) -> None:
    """The group's last record is overwritten later, so compaction copies only the others
    and they end the log; reopened, they must not be taken for a group cut short."""
    with LogStore.open(tmp_path, segment_size=4096, compaction_threshold=0.9) as store:
        store.put(b"before2", b"b")
        write_group(store)
        roll_with_garbage(store)
        store.put(b"g3", b"replaced")
        roll_with_garbage(store)
        while 1 in store.segment_ids():
            assert store.compact(max_segments=1) == 1
    with LogStore.open(tmp_path, segment_size=4096) as store:
        assert store.recovery_issues == []
        assert store.get(b"g1") == b"first of the group" and store.get(b"g2") == b"second"
        assert store.get(b"g3") == b"replaced"

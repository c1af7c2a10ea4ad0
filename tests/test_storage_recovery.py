"""Recovery from damaged segments: torn tails, bit flips, corrupt records in the middle."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polybroker.storage import LogStore, RecoveryIssue

SEG1 = "00000001.seg"
SEG2 = "00000002.seg"


def build(directory: Path, count: int, segment_size: int = 1 << 20) -> list[tuple[int, int]]:
    """Write ``count`` records; return each one's (segment id, offset)."""
    locations = []
    with LogStore.open(directory, segment_size=segment_size) as store:
        for i in range(count):
            store.put(b"key%03d" % i, b"value-%d" % i * (1 + i % 3))
            entry = store._index.live[b"key%03d" % i]
            locations.append((entry[0], entry[1]))
    return locations


def expected(i: int) -> bytes:
    return b"value-%d" % i * (1 + i % 3)


def reopen(directory: Path) -> LogStore:
    return LogStore.open(directory, segment_size=1 << 20)


def test_truncation_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    source = tmp_path / "source"
    locations = build(source, 6)
    data = (source / SEG1).read_bytes()
    last = locations[-1][1]
    for cut in range(last, len(data) + 1):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / SEG1).write_bytes(data[:cut])
        with reopen(directory) as store:
            intact = 6 if cut == len(data) else 5
            assert dict(store.scan()) == {b"key%03d" % i: expected(i) for i in range(intact)}
            if cut in (last, len(data)):
                assert store.recovery_issues == []
            else:
                assert store.recovery_issues == [
                    RecoveryIssue(1, last, store.recovery_issues[0].description, True)
                ]
                assert "torn" in store.recovery_issues[0].description
        assert os.path.getsize(directory / SEG1) == (len(data) if cut == len(data) else last)
        shutil.rmtree(directory)


def test_bit_flips_in_the_last_record_truncate_it(tmp_path: Path) -> None:
    source = tmp_path / "source"
    locations = build(source, 4)
    data = (source / SEG1).read_bytes()
    last = locations[-1][1]
    for bit in range(last * 8, len(data) * 8, 3):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        directory = tmp_path / f"flip{bit}"
        directory.mkdir()
        (directory / SEG1).write_bytes(damaged)
        with reopen(directory) as store:
            assert dict(store.scan()) == {b"key%03d" % i: expected(i) for i in range(3)}
            [issue] = store.recovery_issues
            assert (issue.segment, issue.offset, issue.truncated) == (1, last, True)
        shutil.rmtree(directory)


def test_zero_filled_tail_is_truncated(tmp_path: Path) -> None:
    build(tmp_path, 3)
    size = os.path.getsize(tmp_path / SEG1)
    with open(tmp_path / SEG1, "ab") as f:
        f.write(b"\0" * 4096)  # what some filesystems show after a crash mid-extend
    with reopen(tmp_path) as store:
        assert len(store) == 3
        [issue] = store.recovery_issues
        assert (issue.offset, issue.truncated) == (size, True)
        store.put(b"new", b"x")
    with reopen(tmp_path) as store:
        assert len(store) == 4 and store.recovery_issues == []


def test_writes_after_a_truncated_tail_survive(tmp_path: Path) -> None:
    locations = build(tmp_path, 3)
    with open(tmp_path / SEG1, "r+b") as f:
        f.truncate(locations[-1][1] + 10)
    with reopen(tmp_path) as store:
        store.put(b"key002", b"again")
    with reopen(tmp_path) as store:
        assert store.recovery_issues == [] and store.get(b"key002") == b"again"


def test_corrupt_record_in_the_middle_of_an_older_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locations = build(tmp_path, 40, segment_size=600)
    assert {seg for seg, _ in locations} >= {1, 2, 3}
    in_seg1 = [i for i, (seg, _) in enumerate(locations) if seg == 1]
    victim = in_seg1[len(in_seg1) // 2]
    offset = locations[victim][1]
    with open(tmp_path / SEG1, "r+b") as f:
        f.seek(offset + 22)  # a byte of the key
        byte = f.read(1)
        f.seek(offset + 22)
        f.write(bytes([byte[0] ^ 0x10]))
    size_before = os.path.getsize(tmp_path / SEG1)
    with caplog.at_level(logging.ERROR, logger="polybroker.storage"):
        store = LogStore.open(tmp_path, segment_size=600)
    with store:
        [issue] = store.recovery_issues
        assert (issue.segment, issue.offset, issue.truncated) == (1, offset, False)
        assert "corrupt record" in issue.description
        # Every other record, before and after the damage and in later segments, is back.
        assert dict(store.scan()) == {b"key%03d" % i: expected(i) for i in range(40) if i != victim}
    assert os.path.getsize(tmp_path / SEG1) == size_before  # sealed segments are not modified
    assert any(
        r.name == "polybroker.storage" and f"offset {offset}" in r.getMessage()
        for r in caplog.records
    )


def test_damaged_length_in_the_middle_of_the_last_segment_is_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    """A flipped high bit in a length makes a record look incomplete; later records exist, so
    recovery must resynchronise, not truncate them away."""
    locations = build(tmp_path, 10)
    offset = locations[4][1]
    with open(tmp_path / SEG1, "r+b") as f:
        f.seek(offset + 8)
        f.write(b"\x7f")  # value length now ~2 GiB
    with reopen(tmp_path) as store:
        [issue] = store.recovery_issues
        assert (issue.segment, issue.offset, issue.truncated) == (1, offset, False)
        assert "incomplete" in issue.description
        assert sorted(store.scan()) == [(b"key%03d" % i, expected(i)) for i in range(10) if i != 4]


def test_damaged_tail_of_a_sealed_segment_is_skipped(tmp_path: Path) -> None:
    locations = build(tmp_path, 30, segment_size=600)
    last_in_1 = max(offset for seg, offset in locations if seg == 1)
    size = os.path.getsize(tmp_path / SEG1)
    with open(tmp_path / SEG1, "r+b") as f:
        f.truncate(size - 3)
    with reopen(tmp_path) as store:
        [issue] = store.recovery_issues
        assert (issue.segment, issue.offset, issue.truncated) == (1, last_in_1, False)
        assert len(store) == 29
        # The damaged segment can still be compacted away (its readable live data is kept).
        for i in range(30):
            if locations[i][0] == 1:
                store.delete(b"key%03d" % i)
        assert store.compact(max_segments=10) >= 1
        assert 1 not in store.segment_ids()
    with reopen(tmp_path) as store:
        assert store.recovery_issues == []
        assert len(store) == sum(1 for seg, _ in locations if seg != 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=12),
    data=st.data(),
)
def test_random_damage_in_the_tail(values: list[bytes], data: st.DataObject) -> None:
    """Cut the file anywhere inside the last record or flip bits in it, then append garbage:
    reopening never raises, every earlier record is intact and the damage is reported."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with LogStore.open(directory) as store:
            for i, value in enumerate(values):
                store.put(b"k%d" % i, value)
            last = store._index.live[b"k%d" % (len(values) - 1)][1]
        path = directory / SEG1
        raw = bytearray(path.read_bytes())
        if data.draw(st.booleans(), label="cut"):
            raw = raw[: data.draw(st.integers(last + 1, len(raw) - 1), label="cut at")]
        else:
            # Up to 3 flips: CRC-32 detects every such error in a record this short.
            bits = st.sets(st.integers(last * 8, len(raw) * 8 - 1), min_size=1, max_size=3)
            for bit in data.draw(bits, label="flipped bits"):
                raw[bit // 8] ^= 1 << (bit % 8)
        raw += data.draw(st.binary(max_size=40), label="garbage")
        path.write_bytes(bytes(raw))
        with LogStore.open(directory) as store:
            got = dict(store.scan())
            for i in range(len(values) - 1):
                assert got[b"k%d" % i] == values[i]
            issues = store.recovery_issues
            assert issues and issues[0].offset == last and issues[-1].truncated
            assert all(issue.segment == 1 for issue in issues)
        with LogStore.open(directory) as store:
            assert store.recovery_issues == []  # the tail was cut; nothing left to report

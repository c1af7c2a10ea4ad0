"""The stream log (storage.stream_log): offsets, timestamps, cursors, retention, recovery."""

import os
from pathlib import Path

import pytest

from polybroker.storage.stream_log import INDEX_INTERVAL, StreamLog


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def values(log: StreamLog, offset: int, count: int = 10**9) -> list:
    return [(o, bytes(v)) for o, _t, v, _s in log.cursor(offset).read(count)]


@pytest.fixture(params=["disk", "memory"])
def where(request, tmp_path: Path) -> Path | None:
    return tmp_path / "s" if request.param == "disk" else None


def test_offsets_count_from_zero_and_read_back_from_any_offset(where):
    log = StreamLog(where, segment_bytes=300, clock=Clock())
    for n in range(100):
        assert log.append(b"m%03d" % n) == n
    assert len(log.segments) > 1  # small segments: reads cross them
    assert values(log, 0) == [(n, b"m%03d" % n) for n in range(100)]
    assert values(log, 57, 3) == [(57, b"m057"), (58, b"m058"), (59, b"m059")]
    assert values(log, 100) == []
    assert log.first_offset == 0 and log.next_offset == 100


def test_a_cursor_reads_on_as_the_log_grows(where):
    log = StreamLog(where, segment_bytes=200, clock=Clock())
    cursor = log.cursor(0)
    got = []
    for n in range(50):
        log.append(b"x%d" % n)
        got += [bytes(v) for _o, _t, v, _s in cursor.read(10)]
    assert got == [b"x%d" % n for n in range(50)]


def test_timestamps_never_go_back_and_find_the_first_offset_at_or_after(where):
    clock = Clock(1000.0)
    log = StreamLog(where, segment_bytes=256, clock=clock)
    for n in range(60):
        clock.now = 1000.0 + n // 2  # two per second
        log.append(b"t%d" % n)
    clock.now = 990.0  # the wall clock stepped back: timestamps do not
    log.append(b"late")
    assert log.timestamp_of(60) == 1029.0
    assert log.offset_at(1010.0) == 20
    assert log.offset_at(1010.5) == 22
    assert log.offset_at(0) == 0
    assert log.offset_at(5000) == 61


def test_retention_by_bytes_removes_whole_old_segments_and_bounds_disk_use(tmp_path):
    directory = tmp_path / "s"
    log = StreamLog(directory, segment_bytes=4096, max_bytes=20_000, clock=Clock())
    for _n in range(2000):
        log.append(os.urandom(100))
        on_disk = sum(p.stat().st_size for p in directory.glob("*.seg"))
        assert on_disk <= 20_000 + 4096 + 200
    assert log.first_offset > 0
    assert values(log, 0, 1)[0][0] == log.first_offset  # reading starts where data is
    names = sorted(p.name for p in directory.glob("*.seg"))
    assert int(names[0].split(".")[0]) == log.first_offset


def test_retention_by_age_removes_segments_whose_newest_record_is_too_old(where):
    clock = Clock(0.0)
    log = StreamLog(where, segment_bytes=100, max_age=60, clock=clock)
    for n in range(20):
        clock.now = n * 10.0
        log.append(b"%d" % n + b"." * 40)
    # the newest record is at 190 s: records at 130 s and before are older than 60 s;
    # only whole segments go, never the one being written
    first = log.first_offset
    assert 0 < first <= 13
    assert all(log.timestamp_of(o) is not None for o in range(first, 20))
    assert log.segments[0].last_ts >= 190 - 60


def test_memory_retention_counts_the_sizes_given():
    log = StreamLog(None, segment_bytes=1000, max_bytes=3000, clock=Clock())
    for _n in range(100):
        log.append(object(), size=100)
    assert log.bytes <= 3000 + 1000
    assert log.next_offset == 100 and log.first_offset >= 60


def test_a_reopened_log_goes_on_where_it_ended(tmp_path):
    directory = tmp_path / "s"
    log = StreamLog(directory, segment_bytes=2000, clock=Clock())
    for n in range(500):
        log.append(b"r%d" % n)
    log.store_offset("reader", 123)
    log.store_offset("reader", 321)
    log.close()
    log = StreamLog(directory, segment_bytes=2000, clock=Clock())
    assert log.first_offset == 0 and log.next_offset == 500
    assert log.offsets == {"reader": 321}
    assert log.append(b"after") == 500
    assert values(log, 498) == [(498, b"r498"), (499, b"r499"), (500, b"after")]
    log.close()


def test_a_torn_tail_is_cut_off_at_open(tmp_path):
    directory = tmp_path / "s"
    log = StreamLog(directory, segment_bytes=10**6, clock=Clock())
    for _n in range(300):
        log.append(b"z" * 50)
    log.close()
    newest = sorted(directory.glob("*.seg"))[-1]
    size = newest.stat().st_size
    with open(newest, "r+b") as f:
        f.truncate(size - 10)  # the last record half written
    log = StreamLog(directory, segment_bytes=10**6, clock=Clock())
    assert log.next_offset == 299
    assert log.append(b"next") == 299
    assert values(log, 298)[-1] == (299, b"next")


def test_a_lost_index_is_rebuilt(tmp_path):
    directory = tmp_path / "s"
    log = StreamLog(directory, segment_bytes=3 * INDEX_INTERVAL, clock=Clock())
    for n in range(1000):
        log.append(b"%040d" % n)
    log.close()
    for index in directory.glob("*.idx"):
        index.unlink()
    log = StreamLog(directory, segment_bytes=3 * INDEX_INTERVAL, clock=Clock())
    assert log.next_offset == 1000
    assert values(log, 777, 1) == [(777, b"%040d" % 777)]


def test_a_cursor_on_a_removed_segment_goes_on_from_the_oldest_kept(where):
    log = StreamLog(where, segment_bytes=100, max_bytes=400, clock=Clock())
    log.append(b"a" * 60)
    cursor = log.cursor(0)
    assert cursor.read(1)[0][0] == 0
    for _n in range(30):
        log.append(b"b" * 60)
    got = cursor.read(1)
    assert got[0][0] == log.first_offset > 1


def test_records_bigger_than_a_read_chunk(tmp_path):
    log = StreamLog(tmp_path / "s", segment_bytes=10, clock=Clock())
    big = os.urandom(3 * 1024 * 1024)
    log.append(b"small")
    log.append(big)
    log.append(b"tail")
    assert [v for _o, v in values(log, 0)] == [b"small", big, b"tail"]


def test_destroy_removes_the_directory(tmp_path):
    log = StreamLog(tmp_path / "s", clock=Clock())
    log.append(b"x")
    log.destroy()
    assert not (tmp_path / "s").exists()

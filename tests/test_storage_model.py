"""Property test: random put/delete/sync/compact/reopen/crash sequences against a dict model.

Besides the visible state, after every reopen the key directory rebuilt by replay must equal
the one the store maintained incrementally (locations, PUT counts, live bytes per segment):
that is what makes compaction decisions, including the tombstone rule, trustworthy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from polybroker.storage import LogStore

KEYS = st.sampled_from([b"", b"a", b"b", b"c", b"d", b"e/1", b"e/2", b"e/3"])
OPTIONS = {"segment_size": 200, "compaction_threshold": 0.6}


def index_state(store: LogStore) -> tuple[object, ...]:
    index = store._index
    needed = {k: e for k, e in index.tombstones.items() if index.needed(e)}
    live_bytes = {s: b for s, b in index.live_bytes.items() if b}
    stats = store.stats()
    return dict(index.live), needed, live_bytes, stats.total_bytes, stats.records, stats.segments


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="logstore-model-"))
        self.store = LogStore.open(self.directory, **OPTIONS)
        self.model: dict[bytes, bytes] = {}
        self.last_seq = 0
        self.job = None  # a stepwise compaction (begin_compaction) in progress

    def teardown(self) -> None:
        if self.job is not None:
            self.job.abort()
        self.store.close()
        shutil.rmtree(self.directory)

    @rule(key=KEYS, value=st.binary(max_size=50))
    def put(self, key: bytes, value: bytes) -> None:
        seq = self.store.put(key, value)
        assert seq > self.last_seq
        self.last_seq = seq
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        seq = self.store.delete(key)
        assert seq > self.last_seq if key in self.model else seq == self.last_seq
        self.last_seq = seq
        self.model.pop(key, None)

    @rule()
    def sync(self) -> None:
        assert self.store.sync() == self.last_seq == self.store.synced_seq

    @precondition(lambda self: self.job is None)
    @rule(max_segments=st.integers(1, 4))
    def compact(self, max_segments: int) -> None:
        before = set(self.store.segment_ids())
        removed = self.store.compact(max_segments)
        assert len(before - set(self.store.segment_ids())) == removed <= max_segments

    @precondition(lambda self: self.job is None)
    @rule()
    def begin_stepwise_compaction(self) -> None:
        self.job = self.store.begin_compaction()
        if self.job is not None:
            self.job.read()

    @precondition(lambda self: self.job is not None)
    @rule(limit=st.integers(1, 4))
    def stepwise_compaction_step(self, limit: int) -> None:
        """One batch of copies; writes by the other rules interleave with these steps."""
        if not self.job.copy(limit):
            return
        segment_id = self.job.segment_id
        self.store.sync()  # the broker's sync thread makes the copies durable
        if self.job.detach():
            self.job.unlink()
            self.job.finish()
            assert segment_id not in self.store.segment_ids()
        self.job = None

    def _reopen(self, expected_state: tuple[object, ...], keep_values: bool = False) -> None:
        self.store = LogStore.open(self.directory, **OPTIONS, keep_values=keep_values)
        assert index_state(self.store) == expected_state
        self.last_seq = self.store.last_seq

    def _abandon_job(self) -> None:
        if self.job is not None:
            self.job.abort()
            self.job = None

    @rule(keep_values=st.booleans())
    def reopen(self, keep_values: bool) -> None:
        """Reopen; with ``keep_values`` reads come from the replay until the first write."""
        self._abandon_job()
        state = index_state(self.store)
        self.store.close()
        self._reopen(state, keep_values)
        assert self.store.recovery_issues == []

    @rule()
    def crash(self) -> None:
        """Stop without syncing (a process crash: the page cache keeps what was written)."""
        self._abandon_job()
        state = index_state(self.store)
        self.store._close_files()
        self._reopen(state)
        assert self.store.recovery_issues == []

    @precondition(lambda self: self.store.stats().records > 0)
    @rule(garbage=st.binary(min_size=1, max_size=30))
    def crash_mid_write(self, garbage: bytes) -> None:
        """A crash that leaves part of a record behind: it is cut off and reported."""
        self._abandon_job()
        state = index_state(self.store)
        last = self.store.segment_ids()[-1]
        self.store._close_files()
        with open(self.directory / f"{last:08d}.seg", "ab") as f:
            f.write(garbage)
        self._reopen(state)
        [issue] = self.store.recovery_issues
        assert issue.truncated and issue.segment == last

    @invariant()
    def matches_model(self) -> None:
        store = self.store
        assert len(store) == len(self.model)
        assert list(store.scan()) == sorted(self.model.items())
        assert list(store.scan(b"e/")) == sorted(i for i in self.model.items() if i[0][:2] == b"e/")
        for key in (b"", b"a", b"b", b"c", b"d", b"e/1", b"e/2", b"e/3"):
            assert store.get(key) == self.model.get(key)
            assert (key in store) == (key in self.model)


StoreMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreMachine.TestCase

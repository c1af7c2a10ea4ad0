"""When recorded state is on disk, and the rule that nothing is acknowledged before.

The rule: a connection sends no acknowledgement until every record written before it was
produced is durable under the fsync policy. Each connection's writer asks
``wait_durable()`` before it writes what it has buffered, so PUBACK/PUBREC go out after the
records of the routed message, PUBREL after the "released" state, PUBCOMP after the
inbound QoS 2 id is gone, a QoS 2 PUBLISH after its record and packet id (a subscriber
never sees a message that a restart could hand it again as a new one), CONNACK and SUBACK
after the session and its subscriptions. Only a batch made of QoS 0/1 deliveries alone
goes out at once: if a crash loses its records, the publisher was not acknowledged and
sends again, which QoS 1 allows. Readers never wait: they keep handling packets, and one
fsync covers everything they wrote meanwhile.

Group commit: one committer task runs ``LogStore.sync()`` on a worker thread (the event
loop never blocks on fsync) whenever records are waiting: ``always`` starts the next fsync
as soon as the previous one returned, ``batch`` first lets the loop run for a window so
that one fsync covers what arrives meanwhile, ``never`` does not make anyone wait (the
operating system writes back on its own; a clean stop syncs). The batch window is as long
as the last fsync took, at most ``BATCH_WINDOW``: waiting longer than an fsync costs the
waiting clients more than the fsync it saves, and under load the records that arrive
during one fsync are covered by the next anyway.

Compaction runs as a second task, one segment at a time, in the steps of
``storage.compaction``: reading and scanning the segment and unlinking it happen on worker
threads, copying the live records happens on the loop in batches of ``COPY_STEP`` records
with a checkpoint between batches, and the copies are made durable by the committer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Protocol

import trio

from .journal import Journal
from .persistence import bulk_load, restore
from .persistence.streams import DiskStreams
from .stats import Histogram
from .storage import LogStore, StoreError

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Durability", "StorageTasks", "compact_once", "open_durable_state"]

log = logging.getLogger("polybroker.storage")

BATCH_WINDOW = 0.002  # seconds: the longest the batch policy gathers records for an fsync
IDLE_SYNC = 1.0  # seconds before records that nobody waits for are synced anyway
RETRY_AFTER = 1.0  # seconds between attempts after an fsync failed
COMPACTION_INTERVAL = 1.0  # seconds between looks for segments worth compacting
COPY_STEP = 256  # records examined per compaction step on the loop


class SideFile(Protocol):
    """A file outside the store whose writes acknowledgements wait for too (a stream's
    log): each fsync round syncs the ones written since the last."""

    def sync(self) -> None: ...


class Durability:
    """Tracks which records are durable; ``run`` is the group-commit task.

    Without a store (``persistence = false``, or the core on its own) everything counts as
    durable at once."""

    def __init__(self, store: LogStore | None = None, policy: str = "never",
                 sync_seconds: Histogram | None = None) -> None:
        self.store = store
        self.policy = policy
        # The store whose records acknowledgements wait for (None: they wait for nothing).
        self._awaited = store if policy != "never" else None
        self.waits = self._awaited is not None
        self.durable_seq = store.synced_seq if store is not None else 0
        self.syncs = 0  # fsync rounds completed
        self.last_sync = 0.0  # seconds the last one took
        # How long each took, for the operator (``Broker.stats``).
        self.sync_seconds = sync_seconds if sync_seconds is not None else Histogram()
        self._kick = trio.Event()
        self._round_done = trio.Event()
        self._started = 0
        self._finished = 0
        self._forced = False
        # Side files written since the last round, and writes to them counted (all, and
        # those known durable), so that ``mark`` and ``pending`` see them as records.
        self._side_dirty: dict[SideFile, None] = {}
        self._side_written = 0
        self._side_durable = 0

    def written_elsewhere(self, side_file: SideFile) -> None:
        """``side_file`` was written: what is acknowledged from now on waits for its fsync."""
        if self._awaited is None:
            return
        self._side_dirty[side_file] = None
        self._side_written += 1

    def mark(self) -> int:
        """A position in the record sequence: when it changes around a call, that call
        wrote records that must be durable before its acknowledgement goes out."""
        store = self._awaited
        return store.last_seq + self._side_written if store is not None else 0

    def pending(self) -> bool:
        """Whether some record is written but not yet known durable (and that matters)."""
        store = self._awaited
        return store is not None and (store.last_seq > self.durable_seq
                                      or self._side_written > self._side_durable)

    async def wait_durable(self, timeout: float) -> bool:
        """Wait until every record written so far is durable; False if ``timeout`` seconds
        pass first. Returns at once, without a checkpoint, when nothing is pending."""
        store = self._awaited
        if store is None or not self.pending():
            return True
        target, side_target = store.last_seq, self._side_written
        with trio.move_on_after(timeout):
            while self.durable_seq < target or self._side_durable < side_target:
                self._kick.set()
                await self._round_done.wait()
            return True
        return False

    async def sync_now(self) -> None:
        """Wait for an fsync that starts after this call, whatever the policy (compaction
        copies keep their sequence numbers, so ``pending`` does not see them)."""
        if self.store is None:
            return
        need = self._started + 1
        self._forced = True
        while self._finished < need:
            self._kick.set()
            await self._round_done.wait()

    async def run(self) -> None:
        """The committer: fsync off the loop whenever records wait, until cancelled."""
        while True:
            while not (self._forced or self.pending()):
                with trio.move_on_after(IDLE_SYNC if self.waits else math.inf):
                    await self._kick.wait()
                self._kick = trio.Event()
            if self.policy == "batch" and not self._forced:
                await trio.sleep(min(self.last_sync, BATCH_WINDOW))
            await self._sync_round()

    async def _sync_round(self) -> None:
        store = self.store
        if store is None:
            return  # not run without a store (``StorageTasks``)
        forced, self._forced = self._forced, False
        side, side_target = list(self._side_dirty), self._side_written
        self._side_dirty = {}
        self._started += 1
        started = time.perf_counter()
        try:
            synced = await trio.to_thread.run_sync(_sync_all, store, side)
        except StoreError as exc:
            log.error("STORAGE SYNC FAILED: %s; acknowledgements wait until it succeeds", exc)
            self._forced = self._forced or forced
            self._side_dirty.update(dict.fromkeys(side))
            await trio.sleep(RETRY_AFTER)
            return
        self._side_durable = max(self._side_durable, side_target)
        self.last_sync = time.perf_counter() - started
        self.sync_seconds.observe(self.last_sync)
        self.durable_seq = max(self.durable_seq, synced)
        self._finished = self._started
        self.syncs += 1
        done, self._round_done = self._round_done, trio.Event()
        done.set()


def _sync_all(store: LogStore, side: list[SideFile]) -> int:
    """One fsync round (in a worker thread): the store, then the side files written."""
    synced = store.sync()
    for side_file in side:
        try:
            side_file.sync()
        except OSError as exc:
            raise StoreError(f"sync of {side_file}: {exc}") from exc
    return synced


async def compact_once(store: LogStore, durability: Durability) -> bool:
    """Compact the emptiest segment below the threshold, if any; True if one was removed."""
    job = store.begin_compaction()
    if job is None:
        return False
    try:
        await trio.to_thread.run_sync(job.read)
        while not job.copy(COPY_STEP):
            await trio.sleep(0)  # let connections run between batches
        await durability.sync_now()  # the copies must be durable before the original goes
        if not job.detach():
            return False
        await trio.to_thread.run_sync(job.unlink)
        job.finish()
    except StoreError as exc:
        log.error("storage: compaction of segment %d failed: %s", job.segment_id, exc)
        return False
    finally:
        if not job.done:
            job.abort()
    log.debug("storage: compacted segment %d (%d records, %d bytes copied)",
              job.segment_id, job.copied, job.bytes_copied)
    return True


class StorageTasks:
    """The background tasks of an open store: group commit and compaction."""

    def __init__(self, store: LogStore | None = None, durability: Durability | None = None) -> None:
        self.store = store
        self.durability = durability

    def start(self, nursery: trio.Nursery) -> None:
        if self.store is None or self.durability is None:
            return  # in memory: nothing to do
        nursery.start_soon(self.durability.run)
        nursery.start_soon(self._compact_forever, self.store, self.durability)

    @staticmethod
    async def _compact_forever(store: LogStore, durability: Durability) -> None:
        while True:
            await trio.sleep(COMPACTION_INTERVAL)
            while await compact_once(store, durability):
                pass


@asynccontextmanager
async def open_durable_state(broker: Broker) -> AsyncIterator[StorageTasks]:
    """Open the store in ``<data_dir>/store``, restore the broker's state from it and make
    the broker record into it; close it (synced) on exit. With ``persistence = false`` the
    broker stays in memory. Start the returned tasks in a nursery that ends before this."""
    settings = broker.config.storage
    if not settings.persistence:
        log.info("storage: persistence is off; state is kept in memory only")
        yield StorageTasks()
        return
    directory = broker.config.data_dir / "store"
    started = time.perf_counter()
    with bulk_load():  # the key directory is millions of objects too
        store = await trio.to_thread.run_sync(partial(
            LogStore.open, directory, segment_size=settings.segment_size,
            compaction_threshold=settings.compaction_threshold, keep_values=True,
        ))
    durability: Durability | None = None
    streams = DiskStreams(broker.config.data_dir / "streams", broker.clock)
    broker.queues.streams = streams
    try:
        journal = restore(store, broker, settings)
        broker.durability = durability = Durability(store, settings.fsync,
                                                    broker.stats.fsync_seconds)
        streams.on_append = durability.written_elsewhere
        stats = store.stats()
        issues = len(store.recovery_issues)
        log.info(
            "storage: restored %s from %s (%d records in %d segments, %d recovery issue(s)) "
            "in %.2f s; fsync %s",
            journal.summary, directory, stats.records, stats.segments, issues,
            time.perf_counter() - started, settings.fsync,
        )
        yield StorageTasks(store, durability)
    finally:
        syncs = durability.syncs if durability is not None else 0
        broker.journal = Journal()
        broker.queues.attach_store(None)
        broker.durability = Durability()
        streams.close()
        store.close()
        stats = store.stats()
        log.info("storage: closed (%d live keys, %d bytes in %d segments, %d fsyncs)",
                 stats.live_keys, stats.total_bytes, stats.segments, syncs)

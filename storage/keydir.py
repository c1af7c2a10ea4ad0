"""The in-memory key directory: which record is current for each key, and live bytes per segment.

Every key that has records on disk has one entry, a tuple
``(segment, offset, length, puts, local)``:

* ``segment``, ``offset``, ``length`` locate the key's *current* record (the last one in log
  order, i.e. by segment id then offset; that is what replay ends with).
* ``puts`` is the exact number of PUT records for the key in all segments on disk, current
  or dead (compaction copies add one, removing a segment subtracts the ones it held).
* ``local`` is how many of those PUTs are in ``segment`` itself, at or before the current
  record.

Keys whose current record is a PUT live in ``live`` (a ``SortedDict``, for ordered prefix
scans); keys whose current record is a DELETE live in ``tombstones``.

The tombstone rule follows from ``puts``: a tombstone must be kept while any PUT for its key
exists in *another* segment, because dropping it would let replay end on that PUT and bring
the key back. So a tombstone is *needed* iff ``puts > local``. A needed tombstone counts as
live bytes of its segment (compaction must copy it forward); an unneeded one (the PUTs, if
any, are in its own segment and vanish with it) counts as garbage. Once no PUT at all is left
for a tombstoned key (``puts == 0``) and its tombstone's segment is removed, the key has no
records on disk and its entry is dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from sortedcontainers import SortedDict

__all__ = ["Entry", "KeyDirectory"]

Entry = tuple[int, int, int, int, int]  # (segment, offset, length, puts, local)


class KeyDirectory:
    """Key -> current record, for live keys and tombstones; live bytes per segment."""

    __slots__ = ("live", "live_bytes", "tombstones")

    def __init__(self) -> None:
        # A plain dict while replaying (much faster to fill); ``finish_load`` sorts it once.
        self.live: SortedDict[bytes, Entry] | dict[bytes, Entry] = {}
        self.tombstones: dict[bytes, Entry] = {}
        self.live_bytes: defaultdict[int, int] = defaultdict(int)

    def finish_load(self) -> None:
        self.live = SortedDict(self.live)

    def _forget(self, key: bytes) -> Entry | None:
        """Remove the key's current entry, un-counting its live bytes; return it."""
        old = self.live.pop(key, None)
        if old is not None:
            self.live_bytes[old[0]] -= old[2]
            return old
        return self._forget_tombstone(key)

    def _forget_tombstone(self, key: bytes) -> Entry | None:
        old = self.tombstones.pop(key, None)
        if old is not None and old[3] > old[4]:
            self.live_bytes[old[0]] -= old[2]
        return old

    def put(self, key: bytes, segment: int, offset: int, length: int) -> None:
        """A PUT record for ``key`` was appended (or replayed) at this location."""
        live = self.live
        old = live.get(key)  # replaced in place below: no removal from the sorted keys
        if old is not None:
            self.live_bytes[old[0]] -= old[2]
        elif self.tombstones:
            old = self._forget_tombstone(key)
        if old is None:
            entry = (segment, offset, length, 1, 1)
        elif old[0] == segment:
            entry = (segment, offset, length, old[3] + 1, old[4] + 1)
        else:
            entry = (segment, offset, length, old[3] + 1, 1)
        live[key] = entry
        self.live_bytes[segment] += length

    def delete(self, key: bytes, segment: int, offset: int, length: int) -> None:
        """A DELETE record for ``key`` was appended (or replayed) at this location."""
        old = self._forget(key)
        if old is None:
            puts = local = 0
        else:
            puts = old[3]
            local = old[4] if old[0] == segment else 0
        self.tombstones[key] = (segment, offset, length, puts, local)
        if puts > local:
            self.live_bytes[segment] += length

    def current(self, key: bytes, segment: int, offset: int) -> Entry | None:
        """The key's entry if its current record is the one at (segment, offset)."""
        entry = self.live.get(key)
        if entry is None:
            entry = self.tombstones.get(key)
        if entry is not None and entry[0] == segment and entry[1] == offset:
            return entry
        return None

    @staticmethod
    def needed(entry: Entry) -> bool:
        """Whether a tombstone entry must survive the removal of its segment."""
        return entry[3] > entry[4]

    def relocate(self, key: bytes, segment: int, offset: int) -> None:
        """The key's current record was copied (by compaction) to a newer segment.

        The copy is the first record for the key there. The original stays counted in
        ``puts`` until its segment is removed (``segment_removed``)."""
        old = self.live.get(key)
        if old is not None:
            self.live_bytes[old[0]] -= old[2]
            self.live[key] = (segment, offset, old[2], old[3] + 1, 1)
            self.live_bytes[segment] += old[2]
            return
        old = self.tombstones[key]
        if old[3] > old[4]:
            self.live_bytes[old[0]] -= old[2]
        self.tombstones[key] = entry = (segment, offset, old[2], old[3], 0)
        if entry[3] > entry[4]:
            self.live_bytes[segment] += old[2]

    def segment_removed(
        self, segment: int, put_counts: Counter[bytes], dropped: Iterable[bytes]
    ) -> None:
        """Segment ``segment`` was deleted from disk. ``put_counts`` counts the PUT records it
        held per key; ``dropped`` lists keys whose current (unneeded) tombstone was in it and
        was not copied."""
        for key in dropped:
            entry = self.tombstones.get(key)
            if entry is not None and entry[0] == segment:
                del self.tombstones[key]
        for key, count in put_counts.items():
            entry = self.live.get(key)
            if entry is not None:
                self.live[key] = (*entry[:3], entry[3] - count, entry[4])
                continue
            entry = self.tombstones.get(key)
            if entry is None:
                continue
            new = (*entry[:3], entry[3] - count, entry[4])
            self.tombstones[key] = new
            if entry[3] > entry[4] and not new[3] > new[4]:
                self.live_bytes[entry[0]] -= entry[2]  # no longer needed: now garbage
        self.live_bytes.pop(segment, None)

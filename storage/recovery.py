"""Reading a segment back after a restart, tolerating damage.

``SegmentScan`` walks the records of one segment's bytes and yields the valid ones. Damage
never raises; it becomes a ``RecoveryIssue``:

* Bytes that are not a valid record, followed later by a valid record: reported with the
  segment and byte offset, and the scan *resynchronises* at the next offset holding a record
  with a valid magic, version and checksum.
* Bytes that are not a valid record and are followed by no valid record: a torn or corrupt
  tail. In the last (active) segment this is what a crash in the middle of a write leaves, so
  the caller truncates the file there (``truncate_at``) and the issue says ``truncated=True``.
  In an older, sealed segment the tail is only skipped (sealed segments are never modified).

* An atomic group (records flagged CONTINUED up to one that is not) is yielded only whole. A
  group that the data ends in the middle of (a crash cut its append short) is dropped like a
  torn tail: cut off in the last segment, skipped in a sealed one. A group broken by damage in
  the middle of a segment loses the records before the damage (reported); the scan then goes
  on at the next valid record.

A record whose length field was damaged looks incomplete (it claims to run past the end), so
"incomplete" only means a torn tail when no valid record follows it.

Limitation: resynchronisation trusts any byte range that carries a valid magic, version and
CRC32, so a stored *value* that itself contains a well-formed encoded record could be picked
up as a record if the record around it is damaged. That needs damage plus such a value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from .record import CONTINUED, INCOMPLETE, OK, SYNC_MARK, inspect

__all__ = ["RecoveryIssue", "SegmentScan", "log_issue"]

logger = logging.getLogger("polybroker.storage")


@dataclass(frozen=True)
class RecoveryIssue:
    """Damage found while reading a segment: where, what, and whether the file was cut."""

    segment: int
    offset: int
    description: str
    truncated: bool

    def __str__(self) -> str:
        action = "truncated" if self.truncated else "skipped"
        return f"segment {self.segment} offset {self.offset}: {self.description} ({action})"


def log_issue(issue: RecoveryIssue) -> None:
    level = logging.WARNING if issue.truncated else logging.ERROR
    logger.log(level, "storage recovery: %s", issue)


class SegmentScan:
    """Iterate ``(offset, length, kind, key, seq)`` for the valid records of one segment.

    After iteration: ``issues`` lists the damage found, and ``truncate_at`` is the offset to
    cut the file at (only for ``last=True`` with a damaged tail, else None).
    """

    def __init__(self, segment_id: int, data: bytes, *, last: bool) -> None:
        self.segment_id = segment_id
        self.data = data
        self.last = last
        self.issues: list[RecoveryIssue] = []
        self.truncate_at: int | None = None

    def __iter__(self) -> Iterator[tuple[int, int, int, bytes, int]]:
        data = self.data
        view = memoryview(data)
        size = len(data)
        pos = 0
        header = 20  # record.HEADER_SIZE, inlined in this hot loop
        group: list[tuple[int, int, int, bytes, int]] = []  # an atomic group not yet ended
        while pos < size:
            status, kind, key_len, total, seq = inspect(view, pos)
            if status == OK:
                record = (pos, total, kind, data[pos + header : pos + header + key_len], seq)
                pos += total
                if data[record[0] + 3] & CONTINUED:
                    group.append(record)
                    continue
                if group:
                    yield from group
                    group.clear()
                yield record
                continue
            resume = self._resync(view, pos + 1)
            if resume is None:
                self._damaged_tail(group[0][0] if group else pos, size, status)
                return
            what = "incomplete record" if status == INCOMPLETE else "corrupt record"
            if group:
                self._report(group[0][0], f"{what} in an atomic group; {len(group)} record(s) "
                             "of the group before it dropped")
                group.clear()
            self._report(pos, f"{what}; skipped {resume - pos} bytes to the next valid record")
            pos = resume
        if group:  # the data ends inside a group: its append was cut short
            self._damaged_tail(group[0][0], size, INCOMPLETE, group=True)

    def _resync(self, view: memoryview, start: int) -> int | None:
        data = self.data
        pos = data.find(SYNC_MARK, start)
        while pos != -1:
            if inspect(view, pos)[0] == OK:
                return pos
            pos = data.find(SYNC_MARK, pos + 1)
        return None

    def _damaged_tail(self, pos: int, size: int, status: int, group: bool = False) -> None:
        length = size - pos
        if group:
            kind = "atomic group cut short"
        else:
            kind = "torn (incomplete) record" if status == INCOMPLETE else "corrupt record"
        if self.last:
            self.truncate_at = pos
            self._report(pos, f"{kind} at the tail; {length} bytes cut off", truncated=True)
        else:
            self._report(pos, f"{kind} at the tail of a sealed segment; {length} bytes skipped")

    def _report(self, offset: int, description: str, *, truncated: bool = False) -> None:
        self.issues.append(RecoveryIssue(self.segment_id, offset, description, truncated))

"""Exceptions raised by the store.

``StoreError`` subclasses ``OSError``: every failure of the store is, to its caller, a failure
of durable storage, so code that already handles I/O errors handles these too, and the
``errno`` of the underlying failure (``ENOSPC``, ``EIO``, ...) is kept where there is one.
Damage found while *recovering* is never raised; it is reported as ``RecoveryIssue`` values.
"""

from __future__ import annotations

__all__ = [
    "CorruptRecordError",
    "StoreClosedError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
]


class StoreError(OSError):
    """Base class of every error raised by the store."""


class StoreFullError(StoreError):
    """A write failed for lack of space (ENOSPC or EDQUOT). Nothing was stored; the store is
    still usable, and later writes succeed once space is available again."""


class StoreClosedError(StoreError):
    """The store was used after ``close()``."""


class StoreLockedError(StoreError):
    """Another open store (in this or another process) holds the directory's lock."""


class CorruptRecordError(StoreError):
    """A record read back for ``get``/``scan`` failed its checksum (the disk changed under us)."""

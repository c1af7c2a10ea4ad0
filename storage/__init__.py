"""The log-structured store for durable broker state."""

from .errors import (
    CorruptRecordError,
    StoreClosedError,
    StoreError,
    StoreFullError,
    StoreLockedError,
)
from .record import DELETE, PUT
from .recovery import RecoveryIssue
from .store import DEFAULT_SEGMENT_SIZE, LogStore, StoreStats

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "DELETE",
    "PUT",
    "CorruptRecordError",
    "LogStore",
    "RecoveryIssue",
    "StoreClosedError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreStats",
]

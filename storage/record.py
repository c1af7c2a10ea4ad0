"""The on-disk record format: encode one record, and check/decode one record in a buffer.

Byte layout of one record (all integers big-endian)::

    offset  size  field
    0       1     magic         0xB7
    1       1     version       0x01 (FORMAT_VERSION)
    2       1     kind          1 = PUT, 2 = DELETE (tombstone)
    3       1     flags         0, or CONTINUED (0x01): the next record belongs to the same
                                atomic group (any other bit is treated as damage)
    4       4     key length    u32, K
    8       4     value length  u32, V (always 0 for DELETE)
    12      8     sequence      u64, the store's sequence number of the write
    20      K     key
    20+K    V     value
    20+K+V  4     crc32         zlib.crc32 of bytes [0, 20+K+V): the header and the body

A record is therefore length-prefixed (the header gives K and V, so the total length is
``24 + K + V``) and self-checking: the trailing CRC covers every byte before it, so a torn
write (the CRC is the last thing written) and any single-bit flip are detected.

An atomic group (``LogStore.begin_group``) is written as one append: every record of it but
the last carries CONTINUED, so recovery can tell a group that a crash cut short (its last
record missing) and drop all of it.

``inspect`` is the primitive used by recovery and compaction: it classifies the bytes at an
offset as a valid record, an *incomplete* one (the buffer ends before the record does: a torn
tail) or a *corrupt* one (bad magic/version/kind/flags or checksum mismatch), without raising.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

__all__ = [
    "CONTINUED",
    "CORRUPT",
    "DELETE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "INCOMPLETE",
    "MAGIC",
    "MAX_FIELD_SIZE",
    "OK",
    "OVERHEAD",
    "PUT",
    "SYNC_MARK",
    "Record",
    "continues",
    "decode",
    "encode",
    "encode_checked_fields",
    "inspect",
    "record_size",
    "standalone",
]

MAGIC = 0xB7
FORMAT_VERSION = 1
PUT = 1
DELETE = 2
CONTINUED = 0x01  # flags: another record of the same atomic group follows

_HEADER = struct.Struct(">BBBBIIQ")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size  # 20
OVERHEAD = HEADER_SIZE + _CRC.size  # 24 bytes of framing per record
MAX_FIELD_SIZE = 0xFFFF_FFFF  # key and value lengths are u32
MAX_SEQ = 0xFFFF_FFFF_FFFF_FFFF

# Statuses returned by ``inspect``.
OK = 0
INCOMPLETE = 1
CORRUPT = 2

# What every valid record starts with; recovery searches for it to resynchronise.
SYNC_MARK = bytes([MAGIC, FORMAT_VERSION])


class Record(NamedTuple):
    kind: int
    seq: int
    key: bytes
    value: bytes


def record_size(key_len: int, value_len: int) -> int:
    """Total bytes on disk of a record with this key and value length."""
    return OVERHEAD + key_len + value_len


def encode(kind: int, seq: int, key: bytes, value: bytes = b"") -> bytes:
    """The bytes of one record. ``value`` must be empty for DELETE."""
    if kind not in (PUT, DELETE):
        raise ValueError(f"unknown record kind {kind!r}")
    if kind == DELETE and value:
        raise ValueError("a DELETE record carries no value")
    if len(key) > MAX_FIELD_SIZE or len(value) > MAX_FIELD_SIZE:
        raise ValueError("key and value must each be shorter than 4 GiB")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"sequence number out of range: {seq}")
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, 0, len(key), len(value), seq) + key + value
    return body + _CRC.pack(zlib.crc32(body))


def encode_checked_fields(
    kind: int, seq: int, key: bytes, value: bytes = b"", flags: int = 0
) -> bytes:
    """``encode`` for a caller that has already checked every field (the store's write path):
    the same bytes, without the checks and with one copy fewer."""
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, flags, len(key), len(value), seq)
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(head)))
    return b"".join((head, key, value, _CRC.pack(crc)))


def inspect(buf: bytes | memoryview, offset: int = 0) -> tuple[int, int, int, int, int]:
    """Classify the bytes of ``buf`` at ``offset``.

    Returns ``(status, kind, key_len, total_len, seq)``; all but ``status`` are only
    meaningful when ``status == OK``. ``INCOMPLETE`` means the bytes present are a
    plausible prefix of a record but the buffer ends first; ``CORRUPT`` means they cannot be
    the start of a valid record.
    """
    avail = len(buf) - offset
    if avail < HEADER_SIZE:
        # A prefix of a header: only the fixed leading bytes can be checked.
        if avail <= 0:
            return INCOMPLETE, 0, 0, 0, 0
        if buf[offset] != MAGIC or (avail > 1 and buf[offset + 1] != FORMAT_VERSION):
            return CORRUPT, 0, 0, 0, 0
        return INCOMPLETE, 0, 0, 0, 0
    magic, version, kind, flags, key_len, value_len, seq = _HEADER.unpack_from(buf, offset)
    if magic != MAGIC or version != FORMAT_VERSION or flags & ~CONTINUED:
        return CORRUPT, 0, 0, 0, 0
    if kind != PUT and (kind != DELETE or value_len):
        return CORRUPT, 0, 0, 0, 0
    total = OVERHEAD + key_len + value_len
    if avail < total:
        return INCOMPLETE, 0, 0, 0, 0
    end = offset + total - 4
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if zlib.crc32(view[offset:end]) != _CRC.unpack_from(buf, end)[0]:
        return CORRUPT, 0, 0, 0, 0
    return OK, kind, key_len, total, seq


def decode(buf: bytes | memoryview, offset: int = 0) -> Record | int:
    """The record at ``offset``, or the status (INCOMPLETE / CORRUPT) if there is none."""
    status, kind, key_len, total, seq = inspect(buf, offset)
    if status != OK:
        return status
    key_start = offset + HEADER_SIZE
    value_start = key_start + key_len
    return Record(
        kind, seq, bytes(buf[key_start:value_start]), bytes(buf[value_start : offset + total - 4])
    )


def continues(buf: bytes | memoryview, offset: int = 0) -> bool:
    """Whether the valid record at ``offset`` is followed by more of its atomic group."""
    return bool(buf[offset + 3] & CONTINUED)


def standalone(data: bytes) -> bytes:
    """One valid record's bytes with CONTINUED cleared (a compaction copy stands alone: the
    rest of its group may not be copied with it)."""
    if not data[3] & CONTINUED:
        return data
    body = data[:3] + bytes((data[3] & ~CONTINUED,)) + data[4:-4]
    return body + _CRC.pack(zlib.crc32(body))

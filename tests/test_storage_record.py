"""The segment record format: round trips, truncation and bit-flip detection."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.storage.record import (
    CORRUPT,
    DELETE,
    HEADER_SIZE,
    INCOMPLETE,
    MAGIC,
    OK,
    OVERHEAD,
    PUT,
    Record,
    decode,
    encode,
    encode_checked_fields,
    inspect,
)

keys = st.binary(max_size=40)
values = st.binary(max_size=200)
seqs = st.integers(min_value=0, max_value=2**64 - 1)


def test_layout_is_as_documented() -> None:
    data = encode(PUT, 0x0102030405060708, b"key", b"value")
    assert len(data) == OVERHEAD + 3 + 5 == 32
    assert data[0] == MAGIC and data[1] == 1 and data[2] == PUT and data[3] == 0
    assert data[4:8] == (3).to_bytes(4, "big")
    assert data[8:12] == (5).to_bytes(4, "big")
    assert data[12:20] == bytes(range(1, 9))
    assert data[HEADER_SIZE:-4] == b"keyvalue"
    assert data[-4:] == zlib.crc32(data[:-4]).to_bytes(4, "big")


@given(keys, values, seqs)
def test_put_round_trip(key: bytes, value: bytes, seq: int) -> None:
    data = encode(PUT, seq, key, value)
    assert decode(data) == Record(PUT, seq, key, value)
    assert inspect(data)[:4] == (OK, PUT, len(key), len(data))


@given(keys, values, seqs)
def test_the_store_fast_path_encodes_the_same_bytes(key: bytes, value: bytes, seq: int) -> None:
    assert encode_checked_fields(PUT, seq, key, value) == encode(PUT, seq, key, value)
    assert encode_checked_fields(DELETE, seq, key) == encode(DELETE, seq, key)


@given(keys, seqs)
def test_delete_round_trip(key: bytes, seq: int) -> None:
    assert decode(encode(DELETE, seq, key)) == Record(DELETE, seq, key, b"")


@given(st.binary(max_size=30), keys, values)
def test_decode_at_an_offset_in_a_larger_buffer(pad: bytes, key: bytes, value: bytes) -> None:
    data = pad + encode(PUT, 7, key, value) + b"trailing"
    assert decode(data, len(pad)) == Record(PUT, 7, key, value)


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        encode(3, 1, b"k", b"v")
    with pytest.raises(ValueError):
        encode(DELETE, 1, b"k", b"v")
    with pytest.raises(ValueError):
        encode(PUT, -1, b"k", b"v")


@pytest.mark.parametrize("kind,value", [(PUT, b"some value"), (DELETE, b""), (PUT, b"")])
def test_every_truncation_is_incomplete(kind: int, value: bytes) -> None:
    data = encode(kind, 12345, b"a key", value)
    for cut in range(len(data)):
        assert decode(data[:cut]) == INCOMPLETE, cut


@pytest.mark.parametrize("kind,key,value", [(PUT, b"k", b"v" * 40), (DELETE, b"a key", b"")])
def test_every_single_bit_flip_is_detected(kind: int, key: bytes, value: bytes) -> None:
    data = encode(kind, 99, key, value)
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        # Padding after the record stands for the rest of the segment: a flip that makes the
        # length larger must still not produce a valid record.
        status = decode(bytes(damaged) + b"\0" * 64)
        assert status in (CORRUPT, INCOMPLETE), bit


@settings(max_examples=200)
@given(keys, values, st.data())
def test_random_bit_flips_are_detected(key: bytes, value: bytes, data: st.DataObject) -> None:
    encoded = encode(PUT, 5, key, value)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    damaged = bytearray(encoded)
    damaged[bit // 8] ^= 1 << (bit % 8)
    assert decode(bytes(damaged)) in (CORRUPT, INCOMPLETE)


def test_garbage_is_corrupt_and_header_prefixes_are_checked() -> None:
    assert decode(b"\0" * 40) == CORRUPT
    assert decode(bytes([MAGIC, 9])) == CORRUPT  # wrong version, even in a partial header
    assert decode(bytes([MAGIC, 1])) == INCOMPLETE
    assert decode(b"") == INCOMPLETE

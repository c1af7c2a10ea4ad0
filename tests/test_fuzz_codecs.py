"""Fuzzing every codec with valid packets and frames, mutated: bit flips, byte insertions
and deletions, truncation, duplicated slices, corrupted length fields (MQTT remaining
lengths, string lengths, property lengths; STOMP content-length). Whatever the bytes and
however they are split, a codec raises only its own error type.

The corpora, mutations and targets are those of ``tests/fuzz_longrun.py``, which runs
the same property for millions of cases from the command line; the codec test modules
hold the narrower fuzz tests (random bytes, single-byte mutations).
"""

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polybroker.protocols.mqtt import Auth, ServerConnection, encode
from polybroker.protocols.mqtt import properties as P
from polybroker.protocols.stomp import ServerConnection as StompServerConnection
from polybroker.protocols.stomp import StompError

from .fuzz_longrun import (
    CLIENT_3,
    CLIENT_5,
    CONNECTS_3,
    CONNECTS_5,
    MUTATIONS,
    TARGETS,
    Target,
    chunks,
    main,
    mutate,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL_TARGETS = [target for targets in TARGETS.values() for target in targets]

mutations = st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 2**32), st.integers(0, 2**32))
chunk_sizes = st.lists(st.integers(0, 40), max_size=5)


def feed_expecting_only(target: Target, pieces: list[bytes], rng: random.Random) -> None:
    with contextlib.suppress(target.error):
        target.feed(pieces, rng)


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda t: t.name)
@FUZZ
@given(seed=st.integers(0, 2**32), ops=st.lists(mutations, max_size=6), sizes=chunk_sizes)
def test_fuzz_mutated_valid_streams_raise_only_the_codec_error(target, seed, ops, sizes):
    rng = random.Random(seed)
    corpus = target.corpus(rng)
    feed_expecting_only(target, chunks(mutate(corpus, ops), sizes), rng)


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda t: t.name)
@FUZZ
@given(seed=st.integers(0, 2**32), length_ops=st.lists(
    st.tuples(st.just("length"), st.integers(0, 2**32), st.integers(0, 2**32)),
    min_size=1, max_size=3))
def test_fuzz_corrupted_length_fields_raise_only_the_codec_error(target, seed, length_ops):
    rng = random.Random(seed)
    corpus = target.corpus(rng)
    wire = mutate(corpus, length_ops)
    feed_expecting_only(target, [wire], rng)
    feed_expecting_only(target, chunks(wire, [1]), rng)  # and one byte at a time


def mqtt_streams(connects, packets):
    return st.tuples(st.sampled_from(connects), st.lists(st.sampled_from(packets), max_size=6))


@pytest.mark.parametrize(("connects", "packets"), [(CONNECTS_3, CLIENT_3), (CONNECTS_5, CLIENT_5)],
                         ids=["mqtt3", "mqtt5"])
@FUZZ
@given(data=st.data())
def test_every_truncation_of_a_valid_mqtt_stream_is_only_incomplete(connects, packets, data):
    """A cut stream is a stream still arriving: no error, the packets so far."""
    connect, rest = data.draw(mqtt_streams(connects, packets))
    level = connect.protocol_level
    if level == 5 and connect.properties.get(P.AUTHENTICATION_METHOD):
        rest = []  # an authentication exchange allows nothing else before CONNACK
    rest = [p for p in rest if not isinstance(p, Auth)]  # AUTH needs such an exchange
    wire = encode(connect, level) + b"".join(encode(p, level) for p in rest)
    whole = ServerConnection().receive_data(wire)
    cut = data.draw(st.integers(0, len(wire)))
    partial = ServerConnection().receive_data(wire[:cut])
    assert partial == whole[: len(partial)]


@FUZZ
@given(data=st.data())
def test_every_truncation_of_a_valid_stomp_stream_is_only_incomplete(data):
    target = TARGETS["stomp"][0]
    corpus = target.corpus(random.Random(data.draw(st.integers(0, 2**32))))
    try:
        whole = StompServerConnection().receive_data(corpus.wire)
    except StompError:  # a frame the session's rules refuse (NACK in 1.0): not this test
        return
    cut = data.draw(st.integers(0, len(corpus.wire)))
    partial = StompServerConnection().receive_data(corpus.wire[:cut])
    assert partial == whole[: len(partial)]


def test_mutations_change_the_bytes_as_named():
    corpus = TARGETS["mqtt3"][0].corpus(random.Random(1))
    wire = corpus.wire
    assert mutate(corpus, []) == wire
    assert mutate(corpus, [("truncate", 5, 0)]) == wire[:5]
    assert mutate(corpus, [("flip", 0, 4)]) == bytes((wire[0] ^ 0x10,)) + wire[1:]
    assert mutate(corpus, [("delete", 1, 0)]) == wire[:1] + wire[2:]
    assert len(mutate(corpus, [("insert", 3, 7)])) == len(wire) + 8
    # The remaining length of the first packet (the CONNECT) replaced by a 5-byte one.
    assert mutate(corpus, [("length", 0, 3)])[:6] == wire[:1] + b"\xff\xff\xff\xff\x7f"


@pytest.mark.parametrize("codec", sorted(TARGETS))
def test_long_run_command_runs_clean(codec, capsys):
    assert main(["--codec", codec, "--cases", "3000", "--seed", "7"]) == 0
    assert f"{codec}: 3000 cases clean" in capsys.readouterr().out

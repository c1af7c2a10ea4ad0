"""Fuzzing the AMQP 0-9-1 codec: random, truncated and bit-flipped input may only ever
raise the codec's own AMQPError, never IndexError, struct.error, UnicodeDecodeError...

The hypothesis tests run with the suite; a longer run is

    python -m tests.test_amqp_fuzz --cases 100000 [--seed N]

which mutates a corpus of valid client and server streams and prints how many cases
ran, how many ended in which AMQPError, and any other exception (exit status 1).
"""

import argparse
import random
import struct
import sys
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polybroker.protocols.amqp import (
    METHODS,
    PROTOCOL_HEADER,
    AMQPError,
    BasicDeliver,
    BasicGetOk,
    BasicPublish,
    BasicReturn,
    Content,
    FrameParser,
    Method,
    decode_method,
    decode_properties,
    decode_table,
    delivery_mode_and_expiration,
    encode_content,
    encode_method,
    encode_properties,
    encode_table,
    sasl_credentials,
)
from polybroker.protocols.amqp import methods as m

from .test_amqp_codec import _encode_stream, _stream_items, any_method, tables

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed(data: bytes, cuts: list[int], *, client_side: bool = False) -> list:
    """Feed ``data`` split at ``cuts``; return the events; let only AMQPError escape.

    Properties of assembled contents are decoded too, as a broker might.
    """
    parser = FrameParser(client_side=client_side, frame_max=8192, max_body_size=1 << 20)
    events = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        events += parser.receive_data(data[previous:cut])
        previous = cut
    for event in events:
        if isinstance(event, Content):
            assert outcome(delivery_mode_and_expiration, event.properties) in _DECODE_OUTCOMES
            assert outcome(decode_properties, event.properties) in _DECODE_OUTCOMES
    return events


# The reply codes of the codec's errors: all are connection exceptions (or 311).
CODEC_REPLY_CODES = frozenset((311, 501, 502, 503, 504, 505, 540))


def outcome(call, *args, **kwargs) -> str:
    """Run ``call``: "ok", or the name of the AMQPError it raised; anything else escapes."""
    try:
        call(*args, **kwargs)
    except AMQPError as exc:
        assert exc.reply_code in CODEC_REPLY_CODES
        assert isinstance(exc.text, str) and exc.text
        return type(exc).__name__
    return "ok"


def run_case(data: bytes, cuts: list[int], client_side: bool) -> str:
    """One case: the name of the AMQPError it ended in, or "ok"."""
    return outcome(feed, data, cuts, client_side=client_side)


_DECODE_OUTCOMES = frozenset(
    ("ok", "MalformedData", "CommandInvalid", "NotImplementedMethod", "FrameError")
)


# --- hypothesis ---------------------------------------------------------------------------


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    mutable = bytearray(data)
    for position, bit in flips:
        if mutable:
            mutable[position % len(mutable)] ^= 1 << bit
    return bytes(mutable[:cut] if cut is not None else mutable)


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5), st.booleans())
def test_random_bytes_after_the_header(data: bytes, cuts: list[int], client_side: bool) -> None:
    prefix = b"" if client_side else PROTOCOL_HEADER
    run_case(prefix + data, [c for c in cuts if c <= len(data)], client_side)


@FUZZ
@given(st.binary(max_size=20))
def test_random_protocol_headers(data: bytes) -> None:
    run_case(data, [], False)


@FUZZ
@given(
    st.lists(_stream_items, min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4),
    st.none() | st.integers(0, 2000),
    st.lists(st.integers(0, 2000), max_size=4),
)
def test_bit_flipped_and_truncated_streams(items, flips, cut, cuts) -> None:
    stream, _ = _encode_stream(items)
    data = _mutate(stream, flips, cut)
    run_case(data, [c for c in cuts if c <= len(data)], False)


@FUZZ
@given(any_method, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=3),
       st.none() | st.integers(0, 200))  # fmt: skip
def test_mutated_method_payloads(method: Method, flips, cut) -> None:
    payload = struct.pack(">HH", method.CLASS_ID, method.METHOD_ID) + m.encode_arguments(method)
    assert outcome(decode_method, _mutate(payload, flips, cut)) in _DECODE_OUTCOMES


@FUZZ
@given(tables, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=3),
       st.none() | st.integers(0, 400))  # fmt: skip
def test_mutated_tables_and_properties(table, flips, cut) -> None:
    raw_table = _mutate(encode_table(table), flips, cut)
    raw_props = _mutate(encode_properties(headers=table, expiration="1", delivery_mode=2),
                        flips, cut)  # fmt: skip
    for call, argument in [
        (decode_table, raw_table),
        (decode_properties, raw_props),
        (delivery_mode_and_expiration, raw_props),
    ]:
        assert outcome(call, argument) in _DECODE_OUTCOMES
    for mechanism in ("PLAIN", "AMQPLAIN"):
        result = sasl_credentials(mechanism, raw_table)
        assert result is None or all(isinstance(x, str) for x in result)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_to_every_decoder(data: bytes) -> None:
    for call in (decode_table, decode_properties, delivery_mode_and_expiration, decode_method):
        assert outcome(call, data) in _DECODE_OUTCOMES
    for mechanism in ("PLAIN", "AMQPLAIN"):
        result = sasl_credentials(mechanism, data)
        assert result is None or all(isinstance(x, str) for x in result)


# --- the long run -------------------------------------------------------------------------


def _sample_method(cls: type[Method], rng: random.Random) -> Method:
    values = {
        m.OCTET: lambda: rng.randrange(256),
        m.SHORT: lambda: rng.randrange(2**16),
        m.LONG: lambda: rng.randrange(2**32),
        m.LONGLONG: lambda: rng.randrange(2**64),
        m.SHORTSTR: lambda: rng.choice(["", "q", "amq.direct", "é" * 5, "x" * 255]),
        m.LONGSTR: lambda: rng.randbytes(rng.randrange(20)),
        m.BIT: lambda: rng.random() < 0.5,
        m.TABLE: lambda: rng.choice(
            [{}, {"x-expires": 10000}, {"a": [1, None, "s", {"b": True}], "c": 2**40}]
        ),
    }
    return cls(*(values[kind]() for name, kind in cls.ARGUMENTS if name is not None))


def corpus_stream(rng: random.Random, client_side: bool) -> bytes:
    """A valid stream of a few frames from one side."""
    side = "FROM_SERVER" if client_side else "FROM_CLIENT"
    classes = [c for c in METHODS.values() if getattr(c, side)]
    contents = [BasicDeliver, BasicGetOk, BasicReturn] if client_side else [BasicPublish]
    parts = [] if client_side else [PROTOCOL_HEADER]
    for _ in range(rng.randrange(1, 8)):
        choice = rng.random()
        channel = rng.randrange(1, 4)
        if choice < 0.15:
            parts.append(b"\x08\x00\x00\x00\x00\x00\x00\xce")
        elif choice < 0.5:
            props = encode_properties(
                delivery_mode=rng.choice([None, 1, 2]), expiration=rng.choice([None, "15000"]),
                headers=rng.choice([None, {}, {"k": [1.5, None]}]),
            )  # fmt: skip
            body = rng.randbytes(rng.choice([0, 1, 100, 9000]))
            method = _sample_method(rng.choice(contents), rng)
            parts.append(encode_content(channel, method, props, body, 8192))
        else:
            method = _sample_method(rng.choice(classes), rng)
            channel = 0 if method.CLASS_ID == 10 else channel
            if method.HAS_CONTENT:
                parts.append(encode_content(channel, method, b"\x00\x00", b"", 8192))
            else:
                parts.append(encode_method(channel, method))
    return b"".join(parts)


def mutate_randomly(data: bytes, rng: random.Random) -> bytes:
    mutable = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        position = rng.randrange(len(mutable) + 1)
        if kind == 0 and mutable:  # flip a bit
            mutable[position % len(mutable)] ^= 1 << rng.randrange(8)
        elif kind == 1 and mutable:  # set a byte
            mutable[position % len(mutable)] = rng.randrange(256)
        elif kind == 2:  # truncate
            del mutable[position:]
        elif kind == 3:  # insert random bytes
            mutable[position:position] = rng.randbytes(rng.randrange(1, 9))
        elif kind == 4:  # duplicate a slice
            mutable[position:position] = mutable[position : position + rng.randrange(1, 40)]
        else:  # delete a slice
            del mutable[position : position + rng.randrange(1, 9)]
    return bytes(mutable)


def _mutate_a_payload(data: bytes, rng: random.Random, header: bool) -> bytes:
    """Mutate the payload of one frame of a valid stream and fix its size, so the
    mutation reaches the argument, property and table decoders behind the framing."""
    start = 8 if header else 0
    frames = []
    pos = start
    while pos < len(data):
        size = struct.unpack_from(">I", data, pos + 3)[0]
        frames.append(bytearray(data[pos : pos + 8 + size]))
        pos += 8 + size
    if not frames:
        return data
    chosen = rng.randrange(len(frames))
    payload = mutate_randomly(bytes(frames[chosen][7:-1]), rng)
    frames[chosen][3:] = struct.pack(">I", len(payload)) + payload + b"\xce"
    return data[:start] + b"".join(frames)


def fuzz(cases: int, seed: int) -> tuple[Counter, list[str]]:
    """Run ``cases`` mutated streams; return outcome counts and unexpected failures."""
    rng = random.Random(seed)
    outcomes: Counter = Counter()
    failures: list[str] = []
    for case in range(cases):
        client_side = rng.random() < 0.3
        stream = corpus_stream(rng, client_side)
        if rng.random() < 0.5:
            data = _mutate_a_payload(stream, rng, header=not client_side)
        else:
            data = mutate_randomly(stream, rng)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
        try:
            outcomes[run_case(data, cuts, client_side)] += 1
        except Exception as exc:  # anything but AMQPError is a codec bug
            outcomes["UNEXPECTED"] += 1
            failures.append(f"case {case} (seed {seed}): {type(exc).__name__}: {exc}")
    return outcomes, failures


def test_fuzz_loop_runs_clean() -> None:
    outcomes, failures = fuzz(400, seed=1)
    assert failures == []
    assert sum(outcomes.values()) == 400
    assert outcomes["ok"] > 0 and len(outcomes) > 2  # both clean and failing streams ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    started = time.monotonic()
    outcomes, failures = fuzz(args.cases, seed)
    elapsed = time.monotonic() - started
    print(f"seed {seed}: {sum(outcomes.values())} cases in {elapsed:.1f} s")
    for outcome, count in outcomes.most_common():
        print(f"  {outcome:24} {count}")
    for failure in failures[:20]:
        print(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Mutation fuzzing of the sans-IO codecs: valid packets, mutated, fed in random chunks.

The property: whatever the bytes, a codec raises nothing but its own error type
(``MQTTError`` for MQTT, ``StompError`` for STOMP) and every call returns.

The corpora, the mutations and the targets live here; ``tests/test_fuzz_codecs.py``
drives them with hypothesis, and this module's command line runs a plain bounded
loop for as many cases as asked:

    python -m tests.fuzz_longrun --codec mqtt3 --cases 1000000 [--seed N] [--seconds T]

Codecs: ``mqtt3`` (3.1 and 3.1.1), ``mqtt5``, ``stomp``. A failing case is printed
with its seed and case number, so it can be replayed with ``--seed N --start K``.
"""

import argparse
import random
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from polybroker.protocols.mqtt import (
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    MQTTError,
    PacketParser,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ServerConnection,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)
from polybroker.protocols.mqtt import properties as P
from polybroker.protocols.stomp import Frame, FrameParser, StompError, encode_frame
from polybroker.protocols.stomp import ServerConnection as StompServerConnection

# --- mutations ------------------------------------------------------------------------------

# One mutation: (kind, where, value). ``where`` and ``value`` are any non-negative ints,
# reduced modulo what the stream allows, so random and hypothesis-drawn ops both apply.
Mutation = tuple[str, int, int]

MUTATIONS = (
    "flip",  # flip one bit
    "set",  # set one byte to an interesting value
    "insert",  # insert 1-8 bytes
    "delete",  # delete 1-8 bytes
    "truncate",  # cut the stream short
    "duplicate",  # copy a slice of the stream elsewhere
    "u16",  # overwrite two bytes with an interesting big-endian 16-bit value (lengths, ids)
    "varint",  # overwrite bytes with a variable byte integer (lengths, properties)
    "length",  # corrupt the length field of one packet or frame (packet-aware)
)
INTERESTING_BYTES = b"\x00\x01\x02\x7f\x80\x81\xfe\xff\n\r:\\ \x10\x20\x30\x82\xc0\xe0\xf0"
INTERESTING_U16 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_LENGTHS = (0, 1, 2, 127, 128, 16383, 16384, 2_097_151, 268_435_455)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint_bytes(value: int) -> bytes:
    """A variable byte integer, well-formed or not (non-minimal, five bytes, unended)."""
    choice = value % 6
    n = INTERESTING_LENGTHS[(value >> 3) % len(INTERESTING_LENGTHS)]
    if choice == 0:
        return varint(n)
    if choice == 1:
        return varint(value >> 3 & 0x0FFF_FFFF)
    if choice == 2:
        return varint(n)[:-1] + bytes((varint(n)[-1] | 0x80,)) + b"\x00"  # non-minimal
    if choice == 3:
        return b"\xff\xff\xff\xff\x7f"  # five bytes
    if choice == 4:
        return b"\x80" * (1 + (value >> 3) % 4)  # never ends
    return bytes(((value >> 3) & 0xFF | 0x80, (value >> 11) & 0x7F))


@dataclass(frozen=True)
class Corpus:
    """Valid wire bytes and where each packet or frame starts."""

    wire: bytes
    starts: tuple[int, ...]
    # Packet-aware length corruption: (stream, start of a packet, value) -> stream.
    corrupt_length: Callable[[bytearray, int, int], None]


def mutate(corpus: Corpus, ops: Sequence[Mutation]) -> bytes:
    """Apply ``ops`` in order to a copy of ``corpus.wire``."""
    data = bytearray(corpus.wire)
    for kind, where, value in ops:
        size = len(data)
        at = where % (size + 1)
        if kind == "insert":
            count = 1 + value % 8
            data[at:at] = bytes((value >> (3 + i)) & 0xFF for i in range(count))
        elif kind == "truncate":
            del data[at:]
        elif kind == "length":
            if corpus.starts:
                start = corpus.starts[where % len(corpus.starts)]
                if start < size:
                    corpus.corrupt_length(data, start, value)
        elif size == 0:
            continue
        elif kind == "flip":
            data[at % size] ^= 1 << (value % 8)
        elif kind == "set":
            data[at % size] = INTERESTING_BYTES[value % len(INTERESTING_BYTES)]
        elif kind == "delete":
            del data[at % size : at % size + 1 + value % 8]
        elif kind == "duplicate":
            start = value % size
            piece = data[start : start + 1 + (value >> 8) % 32]
            data[at:at] = piece
        elif kind == "u16":
            number = INTERESTING_U16[value % len(INTERESTING_U16)]
            if value >> 4 & 1:
                number = max(0, min(0xFFFF, size - at + (value >> 5) % 5 - 2))
            data[at : at + 2] = number.to_bytes(2, "big")
        elif kind == "varint":
            data[at : at + 1 + (value >> 8) % 4] = _varint_bytes(value)
        else:
            raise ValueError(f"unknown mutation {kind!r}")
    return bytes(data)


def chunks(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes (cycled; 0 stands for the rest)."""
    if not sizes:
        return [data]
    out, i, k = [], 0, 0
    while i < len(data):
        size = sizes[k % len(sizes)] or len(data)
        out.append(data[i : i + size])
        i += size
        k += 1
    return out


# --- MQTT ---------------------------------------------------------------------------------


def _mqtt_corrupt_length(data: bytearray, start: int, value: int) -> None:
    """Replace the remaining length of the packet at ``start`` with another varint."""
    end = start + 1
    while end < len(data) and end - start <= 4 and data[end] & 0x80:
        end += 1
    data[start + 1 : end + 1] = _varint_bytes(value)


def _corpus(packets: Sequence[bytes], corrupt: Callable[[bytearray, int, int], None]) -> Corpus:
    starts, offset = [], 0
    for packet in packets:
        starts.append(offset)
        offset += len(packet)
    return Corpus(b"".join(packets), tuple(starts), corrupt)


USER = ((("k", "v"), ("name", "value")))

CONNECTS_3 = [
    Connect("c", MQTT_3_1_1, False, 5, "u", b"p", Will("w", b"m", 1, True)),
    Connect("sensor-1", MQTT_3_1_1, True, 60),
    Connect("", MQTT_3_1_1, True, 0, "user", None),
    Connect("old", MQTT_3_1, True, 30, "u", b"pw", Will("w/t", b"bye", 2, False)),
]
CLIENT_3 = [
    Publish("a/b", b"hello", 1, packet_id=1),
    Publish("x", b"", 0),
    Publish("y/z", b"p" * 200, 2, True, True, 9),
    Publish("$SYS/q", b"\x00\xff", 0, True),
    PubAck(1),
    PubRec(2),
    PubRel(3),
    PubComp(4),
    Subscribe(5, (Subscription("a/+", 1), Subscription("#", 2), Subscription("$share/g/t", 0))),
    Unsubscribe(6, ("a/+", "#")),
    PingReq(),
    Disconnect(),
]
SERVER_3 = [
    ConnAck(False, 0),
    ConnAck(True, 0),
    ConnAck(False, 5),
    Publish("a/b", b"hello", 1, packet_id=1),
    Publish("t", b"x" * 130, 0, True),
    PubAck(1),
    PubRec(2),
    PubRel(3),
    PubComp(4),
    SubAck(5, (0, 1, 2, 0x80)),
    UnsubAck(6),
    PingResp(),
]

PUBLISH5_PROPS = {
    P.PAYLOAD_FORMAT_INDICATOR: 1, P.MESSAGE_EXPIRY_INTERVAL: 60, P.CONTENT_TYPE: "text/plain",
    P.RESPONSE_TOPIC: "reply/1", P.CORRELATION_DATA: b"\x01\x02", P.USER_PROPERTY: USER,
}
CONNECTS_5 = [
    Connect("c5", MQTT_5, False, 30, "u", b"p",
            Will("w/t", b"bye", 2, True, {P.WILL_DELAY_INTERVAL: 5, P.CONTENT_TYPE: "t",
                                          P.USER_PROPERTY: USER}),
            {P.SESSION_EXPIRY_INTERVAL: 3600, P.RECEIVE_MAXIMUM: 10,
             P.MAXIMUM_PACKET_SIZE: 65536, P.TOPIC_ALIAS_MAXIMUM: 5,
             P.REQUEST_RESPONSE_INFORMATION: 1, P.REQUEST_PROBLEM_INFORMATION: 0,
             P.USER_PROPERTY: USER}),
    Connect("", MQTT_5, True, 0),
    Connect("a5", MQTT_5, True, 10, properties={P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
                                                  P.AUTHENTICATION_DATA: b"n,,n=u,r=abc"}),
]
CLIENT_5 = [
    Publish("a/b", b"x" * 150, 1, packet_id=2, properties=PUBLISH5_PROPS),
    Publish("", b"p", 2, True, True, 9, {P.TOPIC_ALIAS: 3, P.CONTENT_TYPE: "t"}),
    Publish("a", b"", properties={P.USER_PROPERTY: USER}),
    PubAck(3),
    PubAck(3, 0x10, {P.REASON_STRING: "r"}),
    PubRec(4, 0x10, {P.REASON_STRING: "r"}),
    PubRel(5, 0x92),
    PubComp(6, 0, {P.USER_PROPERTY: USER}),
    Subscribe(7, (Subscription("a/+", 1, True, True, 1), Subscription("#", 2, False, False, 2)),
              {P.SUBSCRIPTION_IDENTIFIER: 3, P.USER_PROPERTY: USER}),
    Unsubscribe(8, ("a/+", "#"), {P.USER_PROPERTY: USER}),
    PingReq(),
    Auth(0x18, {P.AUTHENTICATION_METHOD: "SCRAM-SHA-256", P.AUTHENTICATION_DATA: b"c=biws"}),
    Disconnect(0x04, {P.REASON_STRING: "bye", P.SESSION_EXPIRY_INTERVAL: 0}),
]
SERVER_5 = [
    ConnAck(False, 0, {P.RECEIVE_MAXIMUM: 20, P.TOPIC_ALIAS_MAXIMUM: 5,
                       P.ASSIGNED_CLIENT_IDENTIFIER: "auto-1", P.SERVER_KEEP_ALIVE: 30,
                       P.RETAIN_AVAILABLE: 1, P.MAXIMUM_QOS: 1,
                       P.SHARED_SUBSCRIPTION_AVAILABLE: 1, P.RESPONSE_INFORMATION: "r/"}),
    ConnAck(False, 0x87, {P.REASON_STRING: "no"}),
    Publish("a/b", b"hello", 1, packet_id=1,
            properties={**PUBLISH5_PROPS, P.SUBSCRIPTION_IDENTIFIER: (1, 300)}),
    PubAck(1, 0x97, {P.REASON_STRING: "quota"}),
    PubRec(2),
    PubRel(3, 0x92),
    PubComp(4),
    SubAck(5, (0, 1, 2, 0x80, 0x97), {P.REASON_STRING: "r"}),
    UnsubAck(6, (0, 0x11)),
    PingResp(),
    Auth(0x18, {P.AUTHENTICATION_METHOD: "SCRAM-SHA-256", P.AUTHENTICATION_DATA: b"s"}),
    Disconnect(0x8E, {P.SERVER_REFERENCE: "other"}),
]


class Target:
    """One way to feed a codec: build a corpus from a random choice, then feed bytes."""

    name: str
    error: type[Exception]

    def corpus(self, rng: random.Random) -> Corpus:
        raise NotImplementedError

    def feed(self, pieces: list[bytes], rng: random.Random) -> None:
        raise NotImplementedError


def _pick(rng: random.Random, samples: Sequence, low: int = 0, high: int = 6) -> list:
    return [rng.choice(samples) for _ in range(rng.randint(low, high))]


class MQTTServerTarget(Target):
    """A server's ServerConnection: a CONNECT of the level, then client packets."""

    error = MQTTError

    def __init__(self, name: str, connects: Sequence[Connect], packets: Sequence) -> None:
        self.name = name
        self.connects = connects
        self.packets = packets

    def corpus(self, rng: random.Random) -> Corpus:
        connect = rng.choice(self.connects)
        level = connect.protocol_level
        wires = [encode(connect, level)] + [encode(p, level) for p in _pick(rng, self.packets)]
        return _corpus(wires, _mqtt_corrupt_length)

    def feed(self, pieces: list[bytes], rng: random.Random) -> None:
        conn = ServerConnection(max_packet_size=rng.choice((268_435_455, 4096, 64)))
        for piece in pieces:
            conn.receive_data(piece)


class MQTTClientTarget(Target):
    """A client's PacketParser at a fixed level: what a server sends."""

    error = MQTTError

    def __init__(self, name: str, levels: Sequence[int], packets: Sequence) -> None:
        self.name = name
        self.levels = levels
        self.packets = packets
        self.level = levels[0]

    def corpus(self, rng: random.Random) -> Corpus:
        self.level = rng.choice(self.levels)
        wires = [encode(p, self.level) for p in _pick(rng, self.packets, 1)]
        return _corpus(wires, _mqtt_corrupt_length)

    def feed(self, pieces: list[bytes], rng: random.Random) -> None:
        parser = PacketParser(rng.choice((268_435_455, 4096, 64)))
        parser.protocol_level = self.level
        for piece in pieces:
            parser.feed(piece)


# --- STOMP -------------------------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"content-length:([^\n]*)")


def _stomp_corrupt_length(data: bytearray, start: int, value: int) -> None:
    """Replace the content-length value of the frame at ``start`` (or add one)."""
    numbers = (b"0", b"1", b"-1", b"", b" 5", b"99999999999999999999", b"0x10", b"00012",
               str(value % 300).encode(), "٣".encode())
    number = numbers[value % len(numbers)]
    match = _CONTENT_LENGTH.search(data, start)
    if match is not None:
        data[match.start(1) : match.end(1)] = number
        return
    eol = data.find(b"\n", start)
    if eol >= 0:
        data[eol + 1 : eol + 1] = b"content-length:" + number + b"\n"


def _stomp_frames_client(version: str) -> list[Frame]:
    tx = (("transaction", "tx1"),)
    return [
        Frame("SEND", (("destination", "/topic/a/b"), ("content-type", "text/plain"),
                       ("receipt", "r1"), ("x-user", "v:1\\c")), b"hello"),
        Frame("SEND", (("destination", "/queue/jobs"), ("persistent", "true"),
                       ("content-length", "5")), b"a\x00b\x00c"),
        Frame("SEND", (("destination", "/topic/t"), *tx), b"x" * 120),
        Frame("SUBSCRIBE", (("destination", "/topic/a/#"), ("id", "0"), ("ack", "client"),
                            ("prefetch-count", "10"))),
        Frame("SUBSCRIBE", (("destination", "/queue/jobs"), ("id", "1"),
                            ("ack", "client-individual"))),
        Frame("UNSUBSCRIBE", (("id", "0"),)),
        Frame("ACK", (("id", "m-1"), ("message-id", "m-1"), ("subscription", "0"))),
        Frame("NACK", (("id", "m-2"), ("message-id", "m-2"), ("subscription", "0"),
                       ("requeue", "false"))),
        Frame("BEGIN", tx),
        Frame("COMMIT", tx),
        Frame("ABORT", tx),
        Frame("DISCONNECT", (("receipt", "bye"),)),
    ]


_STOMP_CONNECTS = [
    Frame("CONNECT", (("accept-version", "1.2"), ("host", "/"), ("heart-beat", "1000,1000"),
                      ("login", "u"), ("passcode", "p:w"))),
    Frame("STOMP", (("accept-version", "1.0,1.1,1.2"), ("host", "broker"))),
    Frame("CONNECT", (("accept-version", "1.1"), ("host", "/"), ("heart-beat", "0,0"))),
    Frame("CONNECT", (("login", "old"),)),
]
_STOMP_VERSIONS = {0: "1.2", 1: "1.2", 2: "1.1", 3: "1.0"}

_STOMP_SERVER_FRAMES = [
    Frame("CONNECTED", (("version", "1.2"), ("heart-beat", "0,10000"), ("session", "s1"),
                        ("server", "polybroker/0.1"))),
    Frame("MESSAGE", (("destination", "/topic/a"), ("message-id", "s1-1"),
                      ("subscription", "0"), ("ack", "s1-1"), ("content-length", "3")), b"a\x00b"),
    Frame("MESSAGE", (("destination", "/queue/q"), ("message-id", "s1-2"),
                      ("subscription", "1"), ("redelivered", "true")), b"body"),
    Frame("RECEIPT", (("receipt-id", "r1"),)),
    Frame("ERROR", (("message", "bad frame"), ("content-type", "text/plain")), b"details"),
]


class StompServerTarget(Target):
    """A server's STOMP ServerConnection: a CONNECT, then client frames (and EOLs)."""

    name = "stomp-server"
    error = StompError

    def corpus(self, rng: random.Random) -> Corpus:
        index = rng.randrange(len(_STOMP_CONNECTS))
        version = _STOMP_VERSIONS[index]
        frames = [encode_frame(_STOMP_CONNECTS[index], version)]
        for frame in _pick(rng, _stomp_frames_client(version)):
            if rng.random() < 0.2:
                frames.append(rng.choice((b"\n", b"\r\n", b"\n\n")))
            try:
                frames.append(encode_frame(frame, version))
            except ValueError:
                continue  # a header this version cannot carry
        return _corpus(frames, _stomp_corrupt_length)

    def feed(self, pieces: list[bytes], rng: random.Random) -> None:
        small = rng.random() < 0.3
        conn = StompServerConnection(
            max_frame_size=96 if small else 65536,
            max_headers=3 if small else 64,
            max_header_length=24 if small else 1024,
        )
        for piece in pieces:
            conn.receive_data(piece)


class StompClientTarget(Target):
    """A client's FrameParser: what a server sends."""

    name = "stomp-client"
    error = StompError

    def __init__(self) -> None:
        self.version = "1.2"

    def corpus(self, rng: random.Random) -> Corpus:
        self.version = rng.choice(("1.0", "1.1", "1.2"))
        frames = [encode_frame(f, self.version) for f in _pick(rng, _STOMP_SERVER_FRAMES, 1)]
        return _corpus(frames, _stomp_corrupt_length)

    def feed(self, pieces: list[bytes], rng: random.Random) -> None:
        parser = FrameParser(rng.choice((65536, 100)), version=self.version)
        for piece in pieces:
            parser.feed(piece)


TARGETS: dict[str, list[Target]] = {
    "mqtt3": [MQTTServerTarget("mqtt3-server", CONNECTS_3, CLIENT_3),
              MQTTClientTarget("mqtt3-client", (MQTT_3_1, MQTT_3_1_1), SERVER_3)],
    "mqtt5": [MQTTServerTarget("mqtt5-server", CONNECTS_5, CLIENT_5),
              MQTTClientTarget("mqtt5-client", (MQTT_5,), SERVER_5)],
    "stomp": [StompServerTarget(), StompClientTarget()],
}


# --- one case and the loop --------------------------------------------------------------------


def random_ops(rng: random.Random) -> list[Mutation]:
    return [(rng.choice(MUTATIONS), rng.getrandbits(32), rng.getrandbits(32))
            for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3, 4, 8)))]


def random_sizes(rng: random.Random) -> list[int]:
    return rng.choice(([], [1], [rng.randint(1, 17)],
                       [rng.randint(0, 40) for _ in range(rng.randint(1, 5))]))


def run_case(target: Target, rng: random.Random) -> None:
    """One case; raises AssertionError (with the bytes) if the codec raised anything
    else than its own error type."""
    corpus = target.corpus(rng)
    data = mutate(corpus, random_ops(rng))
    if rng.random() < 0.05:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    pieces = chunks(data, random_sizes(rng))
    try:
        target.feed(pieces, rng)
    except target.error:
        pass
    except Exception as exc:
        raise AssertionError(f"{target.name}: {type(exc).__name__}: {exc} on {data!r} "
                             f"in pieces {[len(p) for p in pieces]}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_longrun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", choices=sorted(TARGETS), required=True)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--start", type=int, default=0, help="first case number to run")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    targets = TARGETS[args.codec]
    began = time.monotonic()
    deadline = began + args.seconds if args.seconds else float("inf")
    slowest, slowest_case, done = 0.0, None, 0
    print(f"fuzzing {args.codec}: seed {seed}, cases {args.start}..{args.cases - 1}", flush=True)
    for case in range(args.start, args.cases):
        rng = random.Random(f"{seed}:{case}")
        started = time.monotonic()
        try:
            run_case(targets[case % len(targets)], rng)
        except AssertionError:
            traceback.print_exc()
            print(f"FAILED at case {case} (replay: --codec {args.codec} --seed {seed} "
                  f"--start {case} --cases {case + 1})", flush=True)
            return 1
        now = time.monotonic()
        if now - started > slowest:
            slowest, slowest_case = now - started, case
        done += 1
        if done % 100_000 == 0:
            print(f"  {done} cases clean, {done / (now - began):.0f}/s", flush=True)
        if now > deadline:
            break
    elapsed = time.monotonic() - began
    print(f"{args.codec}: {done} cases clean in {elapsed:.0f}s (seed {seed}, "
          f"slowest case {slowest * 1000:.1f} ms: #{slowest_case})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

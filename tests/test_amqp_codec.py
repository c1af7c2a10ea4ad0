"""Tests of the sans-IO AMQP 0-9-1 codec: field tables, methods, framing, content, properties.

Section numbers refer to the AMQP 0-9-1 specification; "errata" is RabbitMQ's
amqp-0-9-1 errata. pika's and py-amqp's own codecs serve as independent encoders
and decoders of the same bytes.
"""

import struct
from datetime import UTC, datetime
from decimal import Decimal

import amqp.sasl
import amqp.serialization
import pika.data
import pika.frame
import pika.spec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polybroker.protocols.amqp import (
    HEARTBEAT,
    HEARTBEAT_FRAME,
    METHODS,
    PROTOCOL_HEADER,
    PROTOCOL_HEADER_EVENT,
    AMQPError,
    BasicAck,
    BasicConsume,
    BasicDeliver,
    BasicGetOk,
    BasicProperties,
    BasicPublish,
    BasicQos,
    BasicReturn,
    ChannelError,
    ChannelOpen,
    CommandInvalid,
    ConnectionClose,
    ConnectionStart,
    ConnectionStartOk,
    ConnectionTune,
    Content,
    ContentTooLarge,
    ExchangeDeclare,
    FrameError,
    FrameParser,
    MalformedData,
    Method,
    MethodFrame,
    NotImplementedMethod,
    ProtocolHeaderMismatch,
    QueueDeclare,
    UnexpectedFrame,
    decode_method,
    decode_properties,
    decode_table,
    delivery_mode_and_expiration,
    encode_arguments,
    encode_content,
    encode_deliver,
    encode_method,
    encode_properties,
    encode_table,
    sasl_credentials,
)
from polybroker.protocols.amqp import methods as m

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies (also used by the fuzz tests) ---------------------------------------------

shortstrs = st.text(max_size=30).filter(lambda s: len(s.encode()) <= 255)
keys = st.text(max_size=12)
decimals = st.builds(
    lambda value, scale: Decimal(value).scaleb(-scale),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 255),
)
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=0))  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | decimals
    | timestamps
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
tables = st.dictionaries(keys, values, max_size=5)

# Values pika's encoder writes the same way as ours (pika cannot write floats and
# normalizes decimals).
pika_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
    | st.binary(max_size=20) | timestamps
)  # fmt: skip
pika_tables = st.dictionaries(
    keys,
    st.recursive(
        pika_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=10,
    ),
    max_size=4,
)

_KIND_STRATEGIES = {
    m.OCTET: st.integers(0, 255),
    m.SHORT: st.integers(0, 2**16 - 1),
    m.LONG: st.integers(0, 2**32 - 1),
    m.LONGLONG: st.integers(0, 2**64 - 1),
    m.SHORTSTR: shortstrs,
    m.LONGSTR: st.binary(max_size=60),
    m.BIT: st.booleans(),
    m.TABLE: tables,
}
METHOD_CLASSES = sorted(METHODS.values(), key=lambda c: (c.CLASS_ID, c.METHOD_ID))


def method_strategy(cls: type[Method], table_strategy=tables) -> st.SearchStrategy:
    strategies = {**_KIND_STRATEGIES, m.TABLE: table_strategy}
    return st.builds(
        cls, **{name: strategies[kind] for name, kind in cls.ARGUMENTS if name is not None}
    )


any_method = st.sampled_from(METHOD_CLASSES).flatmap(method_strategy)
client_methods = st.sampled_from([c for c in METHOD_CLASSES if c.FROM_CLIENT]).flatmap(
    method_strategy
)


# --- helpers ------------------------------------------------------------------------------


def frame(ftype: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes((end,))


def method_payload(class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return struct.pack(">HH", class_id, method_id) + args


def content_header(body_size: int, properties: bytes = b"\x00\x00", class_id: int = 60) -> bytes:
    return struct.pack(">HHQ", class_id, 0, body_size) + properties


def server_parser(**options) -> FrameParser:
    """A server-side parser that already took the protocol header."""
    parser = FrameParser(**options)
    assert parser.receive_data(PROTOCOL_HEADER) == [PROTOCOL_HEADER_EVENT]
    return parser


def parse_error(data: bytes, **options) -> AMQPError:
    with pytest.raises(AMQPError) as info:
        server_parser(**options).receive_data(data)
    return info.value


def split_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, channel, payload) of each frame of an encoded stream (a test-side reader)."""
    out = []
    pos = 0
    while pos < len(data):
        ftype, channel, size = struct.unpack_from(">BHI", data, pos)
        assert data[pos + 7 + size] == 0xCE
        out.append((ftype, channel, data[pos + 7 : pos + 7 + size]))
        pos += 8 + size
    return out


def pika_method(method: Method):
    """The pika.spec instance with the same arguments as ``method``."""
    klass, name = method.NAME.split(".")
    cls = getattr(getattr(pika.spec, klass.capitalize()), name.title().replace("-", ""))
    kwargs = {n: getattr(method, n) for n, _ in method.ARGUMENTS if n is not None}
    if "global_" in kwargs:
        kwargs["global_qos"] = kwargs.pop("global_")
    return cls(**kwargs)


# --- field tables (4.2.5.5 and errata) ----------------------------------------------------


def _entry(tag: bytes, payload: bytes) -> bytes:
    return b"\x01k" + tag + payload


@pytest.mark.parametrize(
    ("tag", "payload", "expected"),
    [
        (b"t", b"\x01", True),
        (b"t", b"\x00", False),
        (b"b", b"\xff", -1),
        (b"B", b"\xff", 255),
        (b"s", b"\xff\xfe", -2),
        (b"U", b"\xff\xfe", -2),  # 0-9-1 letter for the errata's "s"
        (b"u", b"\xff\xfe", 65534),
        (b"I", b"\xff\xff\xff\xfd", -3),
        (b"i", b"\xff\xff\xff\xfd", 2**32 - 3),
        (b"l", b"\xff" * 7 + b"\xfc", -4),
        (b"L", b"\xff" * 7 + b"\xfc", -4),  # py-amqp's int64 letter
        (b"f", struct.pack(">f", 1.5), 1.5),
        (b"d", struct.pack(">d", -2.25), -2.25),
        (b"D", b"\x02" + struct.pack(">i", -12345), Decimal("-123.45")),
        (b"S", b"\x00\x00\x00\x03h\xc3\xa9", "hé"),
        (b"x", b"\x00\x00\x00\x02\x00\xff", b"\x00\xff"),
        (b"T", struct.pack(">Q", 1700000000), datetime.fromtimestamp(1700000000, UTC)),
        (b"F", b"\x00\x00\x00\x07\x01aI\x00\x00\x00\x01", {"a": 1}),
        (b"A", b"\x00\x00\x00\x07I\x00\x00\x00\x02VV", [2, None, None]),
        (b"V", b"", None),
    ],
)
def test_every_field_type_decodes(tag: bytes, payload: bytes, expected) -> None:
    body = _entry(tag, payload)
    assert decode_table(struct.pack(">I", len(body)) + body) == {"k": expected}


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (True, b"t"),
        (0, b"I"),
        (2**31 - 1, b"I"),
        (-(2**31), b"I"),
        (2**31, b"l"),  # errata letter for int64, as RabbitMQ writes it
        (-(2**63), b"l"),
        ("text", b"S"),
        (b"raw", b"x"),
        (1.5, b"d"),
        (Decimal("1.50"), b"D"),
        (datetime(2024, 1, 2, tzinfo=UTC), b"T"),
        ({"a": None}, b"F"),
        ([1], b"A"),
        ((1,), b"A"),
        (None, b"V"),
    ],
)
def test_encoder_picks_the_type_tag(value, tag: bytes) -> None:
    data = encode_table({"k": value})
    assert data[4 + 2 : 4 + 3] == tag


def test_decimal_and_naive_datetime_encoding() -> None:
    assert encode_table({"k": Decimal("-1.25")})[7:] == b"\x02" + struct.pack(">i", -125)
    assert encode_table({"k": Decimal("5E+2")})[7:] == b"\x00" + struct.pack(">i", 500)
    naive = datetime(2024, 1, 2, 3, 4, 5)
    assert decode_table(encode_table({"k": naive})) == {"k": naive.replace(tzinfo=UTC)}


@pytest.mark.parametrize(
    "value", [2**63, -(2**63) - 1, Decimal("NaN"), Decimal("1E-256"), Decimal(2**31), object()]
)
def test_unencodable_values_raise(value) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode_table({"k": value})


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_table({"k" * 256: 1})
    with pytest.raises(TypeError):
        encode_table({1: 1})


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00",  # short length
        b"\x00\x00\x00\x05\x01k",  # length beyond the data
        b"\x00\x00\x00\x03\x01kZ",  # unknown type tag
        b"\x00\x00\x00\x03\x01kI",  # value cut by the table's end
        b"\x00\x00\x00\x02\x05k",  # key longer than the table
        b"\x00\x00\x00\x05\x01kT\xff\xff",  # truncated timestamp
        b"\x00\x00\x00\x02\x01\xff",  # key not UTF-8 (cut too)
        b"\x00\x00\x00\x04\x01\xffV\x00",  # key not UTF-8
        b"\x00\x00\x00\x0b\x01kT\xff\xff\xff\xff\xff\xff\xff\xff",  # beyond year 9999
        b"\x00\x00\x00\x00\x00",  # bytes after the table
    ],
)
def test_malformed_tables_raise_syntax_error(data: bytes) -> None:
    with pytest.raises(MalformedData) as info:
        decode_table(data)
    assert info.value.reply_code == 502


def test_nesting_is_bounded() -> None:
    data = b"V"
    for _ in range(200):
        data = b"A" + struct.pack(">I", len(data)) + data
    with pytest.raises(MalformedData):
        decode_table(struct.pack(">I", len(data) + 2) + b"\x01k" + data)


def test_table_without_length_prefix() -> None:
    raw = encode_table({"LOGIN": "u", "PASSWORD": "p"}, length_prefix=False)
    assert raw == encode_table({"LOGIN": "u", "PASSWORD": "p"})[4:]
    assert decode_table(raw, length_prefix=False) == {"LOGIN": "u", "PASSWORD": "p"}


def test_long_string_survives_any_octets() -> None:
    raw = b"\x00\x00\x00\x09\x01kS\x00\x00\x00\x02\xff\xfe"
    table = decode_table(raw)
    assert encode_table(table) == raw


@FAST
@given(tables)
def test_table_round_trip(table) -> None:
    assert decode_table(encode_table(table)) == table


@FAST
@given(pika_tables)
def test_tables_match_pika_byte_for_byte(table) -> None:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, table)
    assert encode_table(table) == b"".join(pieces)
    assert decode_table(b"".join(pieces)) == table


@FAST
@given(st.dictionaries(keys, st.integers(-(2**63) + 1, 2**63 - 1) | st.text(max_size=5)))
def test_tables_from_py_amqp_with_int64_as_L(table) -> None:
    data = amqp.serialization.dumps("F", [table])
    if any(isinstance(v, int) and not -(2**31) < v < 2**31 for v in table.values()):
        assert b"L" in data
    assert decode_table(data) == table
    assert amqp.serialization.loads("F", encode_table(table), 0)[0][0] == table


# Every tag, written by an encoder independent of ours, decodes to the value it holds.
_TYPED = st.one_of(
    st.booleans().map(lambda v: (b"t" + bytes((v,)), v)),
    st.integers(-128, 127).map(lambda v: (b"b" + struct.pack(">b", v), v)),
    st.integers(0, 255).map(lambda v: (b"B" + bytes((v,)), v)),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: (b"s" + struct.pack(">h", v), v)),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: (b"U" + struct.pack(">h", v), v)),
    st.integers(0, 2**16 - 1).map(lambda v: (b"u" + struct.pack(">H", v), v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: (b"I" + struct.pack(">i", v), v)),
    st.integers(0, 2**32 - 1).map(lambda v: (b"i" + struct.pack(">I", v), v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: (b"l" + struct.pack(">q", v), v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: (b"L" + struct.pack(">q", v), v)),
    st.floats(width=32, allow_nan=False).map(lambda v: (b"f" + struct.pack(">f", v), v)),
    st.floats(allow_nan=False).map(lambda v: (b"d" + struct.pack(">d", v), v)),
    st.tuples(st.integers(0, 255), st.integers(-(2**31), 2**31 - 1)).map(
        lambda p: (b"D" + struct.pack(">Bi", *p), Decimal(p[1]).scaleb(-p[0]))
    ),
    st.text(max_size=10).map(
        lambda v: (b"S" + struct.pack(">I", len(v.encode())) + v.encode(), v)
    ),
    st.binary(max_size=10).map(lambda v: (b"x" + struct.pack(">I", len(v)) + v, v)),
    st.integers(0, 253402300799).map(
        lambda v: (b"T" + struct.pack(">Q", v), datetime.fromtimestamp(v, UTC))
    ),
    st.just((b"V", None)),
)


@FAST
@given(st.lists(_TYPED, max_size=8))
def test_every_tag_decodes_in_tables_and_arrays(items) -> None:
    array = b"".join(raw for raw, _ in items)
    entries = b"".join(b"\x02k" + bytes((48 + i % 10,)) + raw for i, (raw, _) in enumerate(items))
    expected = {f"k{i % 10}": value for i, (_, value) in enumerate(items)}
    table = struct.pack(">I", len(entries)) + entries
    assert decode_table(table) == expected
    wrapped = b"\x01aA" + struct.pack(">I", len(array)) + array
    assert decode_table(struct.pack(">I", len(wrapped)) + wrapped) == {
        "a": [value for _, value in items]
    }


# --- methods (chapter 1 of the XML grammar) -----------------------------------------------


def test_every_method_of_the_brief_is_carried() -> None:
    names = {cls.NAME for cls in METHODS.values()}
    wanted = {
        "connection.start",
        "connection.start-ok",
        "connection.tune",
        "connection.tune-ok",
        "connection.open",
        "connection.open-ok",
        "connection.close",
        "connection.close-ok",
        "connection.secure",
        "connection.secure-ok",
        "connection.blocked",
        "connection.unblocked",
        "channel.open",
        "channel.open-ok",
        "channel.close",
        "channel.close-ok",
        "channel.flow",
        "channel.flow-ok",
        "exchange.declare",
        "exchange.declare-ok",
        "exchange.delete",
        "exchange.delete-ok",
        "exchange.bind",
        "exchange.bind-ok",
        "exchange.unbind",
        "exchange.unbind-ok",
        "queue.declare",
        "queue.declare-ok",
        "queue.bind",
        "queue.bind-ok",
        "queue.unbind",
        "queue.unbind-ok",
        "queue.purge",
        "queue.purge-ok",
        "queue.delete",
        "queue.delete-ok",
        "basic.qos",
        "basic.qos-ok",
        "basic.consume",
        "basic.consume-ok",
        "basic.cancel",
        "basic.cancel-ok",
        "basic.publish",
        "basic.return",
        "basic.deliver",
        "basic.get",
        "basic.get-ok",
        "basic.get-empty",
        "basic.ack",
        "basic.reject",
        "basic.nack",
        "basic.recover",
        "basic.recover-ok",
        "confirm.select",
        "confirm.select-ok",
        "tx.select",
        "tx.select-ok",
        "tx.commit",
        "tx.commit-ok",
        "tx.rollback",
        "tx.rollback-ok",
    }
    assert wanted <= names


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.NAME)
def test_method_ids_and_bytes_match_pika(cls: type[Method]) -> None:
    method = cls()
    pika_cls = type(pika_method(method))
    assert pika_cls.INDEX == cls.CLASS_ID << 16 | cls.METHOD_ID
    assert pika_cls.synchronous is not None
    assert encode_arguments(method) == b"".join(pika_method(method).encode())
    payload = method_payload(cls.CLASS_ID, cls.METHOD_ID, encode_arguments(method))
    assert decode_method(payload) == method


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.NAME)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_method_round_trips_and_matches_pika(cls: type[Method], data) -> None:
    method = data.draw(method_strategy(cls, pika_tables))
    args = encode_arguments(method)
    assert args == b"".join(pika_method(method).encode())
    assert decode_method(method_payload(cls.CLASS_ID, cls.METHOD_ID, args)) == method


@FAST
@given(any_method, st.integers(1, 65535))
def test_method_frames_round_trip_through_the_parser(method: Method, channel: int) -> None:
    if method.CLASS_ID == 10:
        channel = 0
    encoded = encode_method(channel, method)
    if method.HAS_CONTENT:
        encoded = encode_content(channel, method, b"\x00\x00", b"", 4096)
    events = []
    for client_side in (False, True):
        if method.FROM_SERVER if client_side else method.FROM_CLIENT:
            parser = FrameParser(client_side=client_side)
            if not client_side:
                parser.receive_data(PROTOCOL_HEADER)
            events = parser.receive_data(encoded)
            expected = (
                Content(channel, method, 0, b"\x00\x00", b"")
                if method.HAS_CONTENT
                else MethodFrame(channel, method)
            )
            assert events == [expected]


def test_bits_pack_into_one_octet_lsb_first() -> None:
    # queue.declare: reserved short, queue, 5 bits, table (the bits share an octet).
    method = QueueDeclare(queue="q", passive=True, exclusive=True, nowait=True)
    assert encode_arguments(method) == b"\x00\x00\x01q\x15\x00\x00\x00\x00"
    consume = BasicConsume(queue="q", consumer_tag="t", no_ack=True)
    assert encode_arguments(consume) == b"\x00\x00\x01q\x01t\x02\x00\x00\x00\x00"
    # basic.deliver: a bit between a longlong and a shortstr gets its own octet.
    deliver = BasicDeliver("c", 7, True, "e", "r")
    assert encode_arguments(deliver) == b"\x01c" + struct.pack(">Q", 7) + b"\x01\x01e\x01r"
    assert encode_arguments(BasicQos(0, 5, True)) == b"\x00\x00\x00\x00\x00\x05\x01"


def test_publish_flags() -> None:
    for mandatory in (False, True):
        for immediate in (False, True):
            publish = BasicPublish("ex", "rk", mandatory, immediate)
            assert decode_method(method_payload(60, 40, encode_arguments(publish))) == publish


def test_literal_frames() -> None:
    # connection.tune-ok(channel_max=2047, frame_max=131072, heartbeat=60) on channel 0,
    # then channel.open on channel 1 (its reserved shortstr is empty), byte by byte.
    tune_ok = bytes.fromhex("01 0000 0000000c 000a 001f 07ff 00020000 003c ce")
    channel_open = bytes.fromhex("01 0001 00000005 0014 000a 00 ce")
    assert encode_method(0, m.ConnectionTuneOk(2047, 131072, 60)) == tune_ok
    assert encode_method(1, ChannelOpen()) == channel_open
    assert server_parser().receive_data(tune_ok + channel_open) == [
        MethodFrame(0, m.ConnectionTuneOk(2047, 131072, 60)),
        MethodFrame(1, ChannelOpen()),
    ]


def test_pika_start_ok_plain_bytes() -> None:
    # What pika sends after connection.start (4.2.3 method frame on channel 0).
    props = {
        "product": "Pika Python Client Library",
        "platform": "Python 3",
        "capabilities": {
            "authentication_failure_close": True,
            "basic.nack": True,
            "connection.blocked": True,
            "consumer_cancel_notify": True,
            "publisher_confirms": True,
        },
        "information": "See http://pika.rtfd.org",
        "version": "1.4.4",
    }
    sent = pika.frame.Method(
        0,
        pika.spec.Connection.StartOk(
            client_properties=props, mechanism="PLAIN", response=b"\0guest\0guest"
        ),
    ).marshal()
    expected = ConnectionStartOk(props, "PLAIN", b"\0guest\0guest", "en_US")
    parser = FrameParser()
    assert parser.receive_data(PROTOCOL_HEADER + sent) == [
        PROTOCOL_HEADER_EVENT,
        MethodFrame(0, expected),
    ]
    assert encode_method(0, expected) == sent
    assert sasl_credentials("PLAIN", expected.response) == ("guest", "guest")


def test_connection_start_as_pika_reads_it() -> None:
    start = ConnectionStart(
        server_properties={"product": "polybroker", "capabilities": {"basic.nack": True}}
    )
    frame_value = pika.frame.decode_frame(encode_method(0, start))[1]
    assert frame_value.method.server_properties == start.server_properties
    assert frame_value.method.version_major == 0 and frame_value.method.version_minor == 9
    tune = pika.frame.decode_frame(encode_method(0, ConnectionTune(2047, 131072, 60)))[1]
    assert (tune.method.channel_max, tune.method.frame_max, tune.method.heartbeat) == (
        2047, 131072, 60,
    )  # fmt: skip


def test_py_amqp_queue_declare_arguments() -> None:
    # py-amqp's argsig for queue.declare, with the x-arguments celery sends.
    args = amqp.serialization.dumps(
        "BsbbbbbF", (0, "celery", False, True, False, True, False, {"x-expires": 600000})
    )
    method = decode_method(method_payload(50, 10, args))
    assert method == QueueDeclare("celery", durable=True, auto_delete=True,
                                  arguments={"x-expires": 600000})  # fmt: skip


def test_sasl_amqplain_from_py_amqp() -> None:
    response = amqp.sasl.AMQPLAIN("user", "sécret").start(None)
    assert sasl_credentials("AMQPLAIN", response) == ("user", "sécret")
    assert sasl_credentials("PLAIN", b"authz\0u\0p") == ("u", "p")
    for mechanism, response in [("PLAIN", b"u\0p"), ("PLAIN", b"\0\xff\0p"),
                                ("AMQPLAIN", b"\x05LOGIN"), ("AMQPLAIN", b"\x05LOGINI\0\0\0\1"),
                                ("EXTERNAL", b"")]:  # fmt: skip
        assert sasl_credentials(mechanism, response) is None


@pytest.mark.parametrize(
    ("payload", "error", "code"),
    [
        (method_payload(60, 99), CommandInvalid, 503),
        (method_payload(77, 10), CommandInvalid, 503),
        (method_payload(30, 10, b"\x01/"), NotImplementedMethod, 540),
        (method_payload(10, 70), NotImplementedMethod, 540),
        (method_payload(60, 80, b"\x00" * 8), MalformedData, 502),  # bits octet missing
        (method_payload(60, 80, b"\x00" * 10), MalformedData, 502),  # trailing byte
        (method_payload(50, 10, b"\x00\x00\x02\xff\xfe\x00" + b"\0" * 4), MalformedData, 502),
        (b"\x00\x3c", FrameError, 501),
        # basic.publish and basic.ack have their own decoders: the same errors apply.
        (method_payload(60, 40, b"\x00\x00\x01e\x01k"), MalformedData, 502),  # no bits
        (method_payload(60, 40, b"\x00\x00\x01e\x01k\x00\x00"), MalformedData, 502),
        (method_payload(60, 40, b"\x00\x00\x01\xff\x01k\x00"), MalformedData, 502),
        (method_payload(60, 40, b"\x00\x00\x05e"), MalformedData, 502),
        (method_payload(60, 40, b"\x00\x00"), MalformedData, 502),
        (method_payload(60, 80, b"\x00" * 7), MalformedData, 502),
    ],
)
def test_decode_method_errors(payload: bytes, error: type, code: int) -> None:
    with pytest.raises(error) as info:
        decode_method(payload)
    assert info.value.reply_code == code
    if len(payload) >= 4:
        assert (info.value.class_id, info.value.method_id) == struct.unpack(">HH", payload[:4])


# --- protocol header (4.2.2) --------------------------------------------------------------


def test_protocol_header_in_pieces() -> None:
    parser = FrameParser()
    for byte in PROTOCOL_HEADER[:-1]:
        assert parser.receive_data(bytes((byte,))) == []
    assert parser.receive_data(PROTOCOL_HEADER[-1:] + HEARTBEAT_FRAME[:3]) == [
        PROTOCOL_HEADER_EVENT
    ]
    assert parser.receive_data(HEARTBEAT_FRAME[3:]) == [HEARTBEAT]


@pytest.mark.parametrize(
    "data",
    [b"AMQP\x01\x01\x00\x09", b"AMQP\x00\x00\x09\x00", b"GET / HTTP/1.1\r\n", b"\x01", b"AMQX"],
)
def test_other_protocol_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolHeaderMismatch) as info:
        FrameParser().receive_data(data)
    assert info.value.received == data[:8]
    assert PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"


def test_mismatch_is_found_at_the_first_wrong_byte() -> None:
    parser = FrameParser()
    assert parser.receive_data(b"AMQP\x00") == []
    with pytest.raises(ProtocolHeaderMismatch):
        parser.receive_data(b"\x01")


def test_client_side_parser_expects_no_header() -> None:
    parser = FrameParser(client_side=True)
    assert parser.receive_data(encode_method(0, ConnectionStart())) == [
        MethodFrame(0, ConnectionStart())
    ]


# --- frames (4.2.3, 4.2.7) ----------------------------------------------------------------


def test_heartbeat_frame() -> None:
    assert frame(8, 0, b"") == HEARTBEAT_FRAME
    assert server_parser().receive_data(HEARTBEAT_FRAME * 2) == [HEARTBEAT, HEARTBEAT]


@pytest.mark.parametrize(
    "data",
    [
        frame(8, 1, b""),  # heartbeat on a channel
        frame(8, 0, b"x"),  # heartbeat with a payload
        frame(8, 0, b"", end=0x00),  # bad frame end
        frame(1, 1, encode_arguments(BasicAck(1)), end=0xCD),
        frame(4, 0, b""),  # the 0-9 heartbeat type
        frame(9, 0, b""),
        frame(1, 1, b"\x00\x3c\x00"),  # method frame without a method id
        frame(2, 1, b"\x00"),
    ],
)
def test_frame_errors(data: bytes) -> None:
    error = parse_error(data)
    assert isinstance(error, FrameError | UnexpectedFrame)
    if data[0] != 2:
        assert error.reply_code == 501


def test_frame_max_is_enforced_before_the_payload_arrives() -> None:
    parser = server_parser(frame_max=4096)
    ok = frame(3, 1, b"")  # would be unexpected, but first check size
    assert len(ok) == 8
    with pytest.raises(FrameError) as info:
        parser.receive_data(struct.pack(">BHI", 3, 1, 4096 - 7))  # 4097 bytes in all
    assert info.value.reply_code == 501


def test_frame_max_can_change_after_tune() -> None:
    body = b"x" * 5000
    data = encode_content(1, BasicPublish("", "q"), b"\x00\x00", body, 131072)
    parser = server_parser()
    parser.frame_max = 131072
    assert parser.receive_data(data)[0].body == body
    parser.frame_max = 4096
    assert parser.frame_max == 4096
    with pytest.raises(FrameError):
        parser.receive_data(data)
    with pytest.raises(ValueError):
        FrameParser(frame_max=100)


def test_frame_of_exactly_frame_max_is_accepted() -> None:
    body = b"y" * (4096 - 8)
    data = encode_content(1, BasicPublish("", "q"), b"\x00\x00", body, 4096)
    assert max(len(p) + 8 for _, _, p in split_frames(data)) == 4096
    assert server_parser(frame_max=4096).receive_data(data)[0].body == body


def test_methods_on_the_wrong_channel() -> None:
    error = parse_error(encode_method(1, ConnectionClose()))
    assert (type(error), error.reply_code, error.class_id, error.method_id) == (
        CommandInvalid, 503, 10, 50,
    )  # fmt: skip
    error = parse_error(encode_method(0, ChannelOpen()))
    assert (type(error), error.reply_code, error.class_id, error.method_id) == (
        ChannelError, 504, 20, 10,
    )  # fmt: skip


def test_methods_from_the_wrong_side_are_command_invalid() -> None:
    deliver = encode_content(1, BasicDeliver("c", 1), b"\x00\x00", b"", 4096)
    error = parse_error(deliver)
    assert (error.reply_code, error.class_id, error.method_id) == (503, 60, 60)
    with pytest.raises(CommandInvalid):
        FrameParser(client_side=True).receive_data(encode_method(1, BasicPublish()))


def test_malformed_arguments_name_the_method() -> None:
    error = parse_error(frame(1, 1, method_payload(60, 80, b"\x00")))
    assert (type(error), error.reply_code, error.class_id, error.method_id) == (
        MalformedData, 502, 60, 80,
    )  # fmt: skip
    assert "basic.ack" in error.text


def test_parser_is_dead_after_an_error() -> None:
    parser = server_parser()
    with pytest.raises(FrameError):
        parser.receive_data(frame(8, 0, b"", end=1))
    with pytest.raises(FrameError):
        parser.receive_data(HEARTBEAT_FRAME)


# --- content (4.2.6) ----------------------------------------------------------------------

PUBLISH = BasicPublish("amq.direct", "key", mandatory=True)


def test_publish_with_header_and_body_is_one_event() -> None:
    props = encode_properties(delivery_mode=2)
    data = (
        encode_method(1, PUBLISH)
        + frame(2, 1, content_header(5, props))
        + frame(3, 1, b"he")
        + frame(3, 1, b"llo")
    )
    assert server_parser().receive_data(data) == [Content(1, PUBLISH, 5, props, b"hello")]


def test_zero_byte_body_has_no_body_frame() -> None:
    data = encode_content(1, PUBLISH, b"\x00\x00", b"", 131072)
    assert [t for t, _, _ in split_frames(data)] == [1, 2]
    assert server_parser().receive_data(data) == [Content(1, PUBLISH, 0, b"\x00\x00", b"")]
    # A body frame after a complete 0-byte content has nothing to belong to.
    error = parse_error(data + frame(3, 1, b""))
    assert isinstance(error, UnexpectedFrame)


def test_other_channels_may_interleave_with_a_content() -> None:
    data = b"".join(
        [
            encode_method(1, PUBLISH),
            encode_method(2, PUBLISH),
            HEARTBEAT_FRAME,
            frame(2, 2, content_header(1)),
            encode_method(3, BasicAck(9)),
            frame(2, 1, content_header(2)),
            frame(3, 2, b"b"),
            frame(3, 1, b"a"),
            encode_method(0, ConnectionClose()),
            frame(3, 1, b"a"),
        ]
    )
    assert server_parser().receive_data(data) == [
        HEARTBEAT,
        MethodFrame(3, BasicAck(9)),
        Content(2, PUBLISH, 1, b"\x00\x00", b"b"),
        MethodFrame(0, ConnectionClose()),
        Content(1, PUBLISH, 2, b"\x00\x00", b"aa"),
    ]


@pytest.mark.parametrize(
    ("data", "error", "code"),
    [
        (frame(3, 1, b"x"), UnexpectedFrame, 505),  # body without method
        (frame(2, 1, content_header(1)), UnexpectedFrame, 505),  # header without method
        (encode_method(1, PUBLISH) + frame(3, 1, b"x"), UnexpectedFrame, 505),
        (encode_method(1, PUBLISH) + encode_method(1, BasicAck(1)), UnexpectedFrame, 505),
        (encode_method(1, PUBLISH) + frame(2, 1, content_header(1)) * 2, UnexpectedFrame, 505),
        (
            encode_method(1, PUBLISH) + frame(2, 1, content_header(1)) + frame(3, 1, b"xy"),
            UnexpectedFrame,
            505,
        ),
        (encode_method(1, PUBLISH) + frame(2, 1, content_header(1, class_id=50)), FrameError, 501),
        (encode_method(1, PUBLISH) + frame(2, 1, content_header(2**40)), ContentTooLarge, 311),
        (encode_method(1, PUBLISH) + frame(2, 1, b"\x00\x3c\x00\x00"), FrameError, 501),
    ],
)
def test_content_order_errors(data: bytes, error: type, code: int) -> None:
    caught = parse_error(data)
    assert type(caught) is error
    assert caught.reply_code == code


def test_content_errors_name_the_content_method() -> None:
    data = encode_method(1, PUBLISH) + frame(2, 1, content_header(1)) + frame(3, 1, b"xy")
    error = parse_error(data)
    assert (error.class_id, error.method_id) == (60, 40)


def test_max_body_size() -> None:
    data = encode_content(1, PUBLISH, b"\x00\x00", b"x" * 11, 4096)
    assert server_parser(max_body_size=11).receive_data(data)[0].body_size == 11
    assert isinstance(parse_error(data, max_body_size=10), ContentTooLarge)


@pytest.mark.parametrize("method", [BasicDeliver("c", 1, True, "e", "r"), BasicGetOk(3),
                                    BasicReturn(312, "NO_ROUTE", "e", "r")])  # fmt: skip
def test_client_side_assembles_server_contents(method: Method) -> None:
    data = encode_content(5, method, b"\x00\x00", b"body", 4096)
    assert FrameParser(client_side=True).receive_data(data) == [
        Content(5, method, 4, b"\x00\x00", b"body")
    ]


# --- encoders -----------------------------------------------------------------------------


@FAST
@given(
    st.integers(0, 3 * 4088 + 2).map(lambda n: b"\xab" * n),
    st.sampled_from([4096, 4097, 5000]),
    st.integers(1, 65535),
)
def test_content_splits_at_frame_max(body: bytes, frame_max: int, channel: int) -> None:
    props = encode_properties(content_type="text/plain")
    data = encode_content(channel, PUBLISH, props, body, frame_max)
    frames = split_frames(data)
    bodies = [p for t, _, p in frames if t == 3]
    assert [t for t, _, _ in frames[:2]] == [1, 2]
    assert all(c == channel for _, c, _ in frames)
    chunk = frame_max - 8
    assert [len(b) for b in bodies] == [min(chunk, len(body) - i)
                                        for i in range(0, len(body), chunk)]  # fmt: skip
    assert b"".join(bodies) == body
    assert struct.unpack(">HHQ", frames[1][2][:12]) == (60, 0, len(body))
    parser = server_parser(frame_max=frame_max)
    assert parser.receive_data(data) == [Content(channel, PUBLISH, len(body), props, body)]


def test_one_mebibyte_and_seven_bytes_is_nine_body_frames() -> None:
    body = bytes(1024 * 1024 + 7)
    frames = split_frames(encode_content(1, PUBLISH, b"\x00\x00", body, 131072))
    assert len([f for f in frames if f[0] == 3]) == 9


@FAST
@given(
    shortstrs, st.integers(0, 2**64 - 1), st.booleans(), shortstrs, shortstrs,
    st.binary(max_size=300), st.integers(1, 65535),
)  # fmt: skip
def test_encode_deliver_equals_the_generic_encoder(tag, dtag, redelivered, ex, key, body, ch):
    props = encode_properties(delivery_mode=2, headers={"a": 1})
    fast = encode_deliver(ch, tag, dtag, redelivered, ex, key, props, body, 4096 + len(tag))
    method = BasicDeliver(tag, dtag, redelivered, ex, key)
    assert fast == encode_content(ch, method, props, body, 4096 + len(tag))


def test_pika_reads_our_delivery() -> None:
    props = encode_properties(BasicProperties(content_type="application/json", delivery_mode=2,
                                              headers={"x": [1, "y"]}, priority=5))  # fmt: skip
    data = encode_deliver(3, "ctag", 42, True, "ex", "rk", props, b"z" * 5000, 4096)
    decoded = []
    while data:
        consumed, value = pika.frame.decode_frame(data)
        decoded.append(value)
        data = data[consumed:]
    method, header, *bodies = decoded
    assert method.channel_number == 3
    deliver = method.method
    assert (deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered) == ("ctag", 42, True)
    assert (deliver.exchange, deliver.routing_key) == ("ex", "rk")
    assert header.body_size == 5000
    assert header.properties.headers == {"x": [1, "y"]}
    assert header.properties.delivery_mode == 2 and header.properties.priority == 5
    assert b"".join(b.fragment for b in bodies) == b"z" * 5000
    assert [len(b.fragment) for b in bodies] == [4088, 912]


def test_encoder_refuses_long_names() -> None:
    with pytest.raises(ValueError):
        encode_method(1, QueueDeclare("q" * 256))
    with pytest.raises(ValueError):
        encode_deliver(1, "t" * 256, 1, False, "", "", b"\x00\x00", b"", 4096)


# --- stream splitting ---------------------------------------------------------------------

_channels = st.integers(1, 4)
_stream_items = st.one_of(
    st.just(("heartbeat",)),
    st.tuples(st.just("method"), _channels, client_methods),
    st.tuples(st.just("content"), _channels, st.binary(max_size=40), st.booleans()),
)


def _encode_stream(items) -> tuple[bytes, list]:
    """Frames from ``items``, with contents interleaved across channels, and the events
    the parser must return."""
    out = []
    expected = []
    for item in items:
        if item[0] == "heartbeat":
            out.append(HEARTBEAT_FRAME)
            expected.append(HEARTBEAT)
        elif item[0] == "method":
            _, channel, method = item
            if method.CLASS_ID == 10:
                channel = 0
            if method.HAS_CONTENT:
                out.append(encode_content(channel, method, b"\x00\x00", b"", 4096))
                expected.append(Content(channel, method, 0, b"\x00\x00", b""))
            else:
                out.append(encode_method(channel, method))
                expected.append(MethodFrame(channel, method))
        else:
            _, channel, body, with_props = item
            props = encode_properties(message_id="m", headers={"n": 1}) if with_props else (
                b"\x00\x00"
            )
            out.append(encode_content(channel, PUBLISH, props, body, 4096 if body else 0))
            expected.append(Content(channel, PUBLISH, len(body), props, body))
    return PROTOCOL_HEADER + b"".join(out), [PROTOCOL_HEADER_EVENT, *expected]


@FAST
@given(st.lists(_stream_items, max_size=25), st.data())
def test_any_split_of_a_stream_parses_the_same(items, data) -> None:
    stream, expected = _encode_stream(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    parser = FrameParser()
    events = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        events += parser.receive_data(stream[previous:cut])
        previous = cut
    assert events == expected


def _frames_of(data: bytes) -> list[bytes]:
    return [frame(t, c, p) for t, c, p in split_frames(data)]


@FAST
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.binary(max_size=50), st.booleans()), min_size=1,
        max_size=12,
    ),
    st.randoms(use_true_random=False),
    st.lists(st.integers(0, 5000), max_size=10),
)  # fmt: skip
def test_interleaved_channels_parse_in_completion_order(items, rng, cuts) -> None:
    # Contents split into 8-byte body frames; channel 0 carries heartbeats. Frames of
    # different channels interleave at random, each channel's own frames stay in order.
    queues: dict[int, list[tuple[list[bytes], object]]] = {}
    for channel, body, with_props in items:
        if channel == 0:
            queues.setdefault(0, []).append(([HEARTBEAT_FRAME], HEARTBEAT))
            continue
        props = encode_properties(reply_to="r") if with_props else b"\x00\x00"
        frames = _frames_of(encode_content(channel, PUBLISH, props, body, 16))
        queues.setdefault(channel, []).append(
            (frames, Content(channel, PUBLISH, len(body), props, body))
        )
    stream = bytearray(PROTOCOL_HEADER)
    expected: list = [PROTOCOL_HEADER_EVENT]
    while queues:
        channel = rng.choice(sorted(queues))
        frames, event = queues[channel][0]
        stream += frames.pop(0)
        if not frames:
            expected.append(event)
            queues[channel].pop(0)
            if not queues[channel]:
                del queues[channel]
    parser = FrameParser()
    events = []
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(stream)), len(stream)]:
        events += parser.receive_data(bytes(stream[previous:cut]))
        previous = cut
    assert events == expected


def test_byte_by_byte_feeding() -> None:
    stream, expected = _encode_stream(
        [("content", 1, b"abc" * 3000, True), ("heartbeat",), ("method", 2, BasicAck(3))]
    )
    parser = FrameParser(frame_max=4096)
    events = []
    for i in range(len(stream)):
        events += parser.receive_data(stream[i : i + 1])
    assert events == expected


# --- basic.properties (4.2.6.1 and the basic class) ---------------------------------------

_PIKA_FULL = pika.spec.BasicProperties(
    content_type="application/json", content_encoding="utf-8",
    headers={"lang": "py", "retries": 0, "argsrepr": None, "n": [None, None]},
    delivery_mode=2, priority=5, correlation_id="c-1", reply_to="reply_q",
    expiration="15000", message_id="m-1", timestamp=1700000000, type="t", user_id="guest",
    app_id="app", cluster_id="cl",
)  # fmt: skip


def test_properties_from_pika() -> None:
    raw = b"".join(_PIKA_FULL.encode())
    props = decode_properties(raw)
    for name in _PIKA_FULL.__dict__:
        assert getattr(props, name) == getattr(_PIKA_FULL, name), name
    assert encode_properties(props) == raw
    assert delivery_mode_and_expiration(raw) == (2, "15000")


def test_properties_pika_reads() -> None:
    raw = encode_properties(content_type="text/plain", headers={"k": b"v"}, timestamp=5,
                            cluster_id="c")  # fmt: skip
    decoded = pika.spec.BasicProperties()
    decoded.decode(raw)
    assert (decoded.content_type, decoded.headers, decoded.timestamp, decoded.cluster_id) == (
        "text/plain", {"k": b"v"}, 5, "c",
    )  # fmt: skip
    assert decoded.delivery_mode is None


_properties = st.builds(
    BasicProperties,
    **{
        name: st.none() | strategy
        for name, strategy in {
            "content_type": shortstrs, "content_encoding": shortstrs, "headers": tables,
            "delivery_mode": st.integers(0, 255), "priority": st.integers(0, 255),
            "correlation_id": shortstrs, "reply_to": shortstrs, "expiration": shortstrs,
            "message_id": shortstrs, "timestamp": st.integers(0, 2**64 - 1), "type": shortstrs,
            "user_id": shortstrs, "app_id": shortstrs, "cluster_id": shortstrs,
        }.items()
    },
)  # fmt: skip


@FAST
@given(_properties)
def test_properties_round_trip(props: BasicProperties) -> None:
    raw = encode_properties(props)
    assert decode_properties(raw) == props
    assert delivery_mode_and_expiration(raw) == (props.delivery_mode, props.expiration)


def test_empty_properties() -> None:
    assert encode_properties() == b"\x00\x00"
    assert decode_properties(b"\x00\x00") == BasicProperties()
    assert delivery_mode_and_expiration(b"\x00\x00") == (None, None)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"\x00\x01",  # continuation flag: there are only 14 properties
        b"\x80\x00",  # content_type missing
        b"\x80\x00\x05ab",
        b"\x10\x00",  # delivery_mode missing
        b"\x20\x00\x00\x00\x00\x09",  # headers longer than the rest
        b"\x01\x00\x02\xff\xfe",  # expiration not UTF-8
        b"\x00\x00\x00",  # trailing byte
    ],
)
def test_malformed_properties(raw: bytes) -> None:
    with pytest.raises(MalformedData) as info:
        decode_properties(raw)
    assert info.value.class_id == 60
    # The accessor reads only up to delivery_mode and expiration.
    if raw[:2] in (b"", b"\x00", b"\x00\x01", b"\x10\x00", b"\x01\x00"):
        with pytest.raises(MalformedData):
            delivery_mode_and_expiration(raw)


def test_encode_properties_refuses_unknown_names() -> None:
    with pytest.raises(TypeError):
        encode_properties(colour="red")
    with pytest.raises(TypeError):
        encode_properties(BasicProperties(), delivery_mode=1)


def test_exchange_declare_defaults() -> None:
    declare = ExchangeDeclare("logs", "fanout", durable=True)
    assert decode_method(method_payload(40, 10, encode_arguments(declare))) == declare

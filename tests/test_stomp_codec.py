"""Tests of the sans-IO STOMP codec (frames, parser, encoder, negotiation).

Test names carry the section of the STOMP 1.2 specification they cover
(https://stomp.github.io/stomp-specification-1.2.html); 1.0 and 1.1 rules are named
after the version.
"""

import functools
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polybroker.protocols.stomp import (
    CLIENT_COMMANDS,
    HEART_BEAT,
    SERVER_COMMANDS,
    SUPPORTED_VERSIONS,
    Frame,
    FrameParser,
    FrameTooLarge,
    HeartBeat,
    MalformedFrame,
    ProtocolError,
    StompError,
    UnsupportedVersion,
    encode_frame,
    encode_message,
    negotiate_heart_beat,
    negotiate_version,
    parse_heart_beat,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNESCAPED = ("CONNECT", "STOMP", "CONNECTED")
ESCAPED_COMMANDS = sorted((CLIENT_COMMANDS | SERVER_COMMANDS) - set(UNESCAPED))


# --- helpers ------------------------------------------------------------------------------


def parse(data: bytes, version: str = "1.2", **limits) -> list:
    return FrameParser(version=version, **limits).feed(data)


def parse_one(data: bytes, version: str = "1.2", **limits) -> Frame:
    events = parse(data, version, **limits)
    assert len(events) == 1
    return events[0]


def feed_chunks(chunks, version: str = "1.2", **limits) -> list:
    parser = FrameParser(version=version, **limits)
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def outcome(chunks, version: str = "1.2", **limits) -> tuple[list, type | None]:
    """(events, class of the error or None) of feeding ``chunks`` in order."""
    parser = FrameParser(version=version, **limits)
    events: list = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
        if parser.error_pending:  # a fault after good frames of the last chunk
            parser.feed(b"")
    except StompError as exc:
        return events, type(exc)
    return events, None


def expected(frame: Frame) -> Frame:
    """``frame`` as it parses back: encode_frame adds a content-length when needed."""
    if frame.get("content-length") is None and (
        frame.command in ("MESSAGE", "ERROR") or b"\0" in frame.body
    ):
        headers = (*frame.headers, ("content-length", str(len(frame.body))))
        return Frame(frame.command, headers, frame.body)
    return frame


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --- strategies ---------------------------------------------------------------------------

# Characters a header cannot carry, per how it goes on the wire.
_BANNED = {"1.2": "\0", "1.1": "\0\r", "raw": "\0\r\n"}
_SPECIALS = ["\\", ":", "\n", "\r", "\\c", "\\n", "a", "\u00e9", " "]


@functools.cache
def header_texts(kind: str, *, name: bool) -> st.SearchStrategy[str]:
    banned = _BANNED[kind] + (":" if kind == "raw" and name else "")
    chars = st.characters(codec="utf-8", exclude_characters=banned)
    specials = st.sampled_from([t for t in _SPECIALS if not set(t) & set(banned)])
    parts = st.lists(st.one_of(st.text(chars, max_size=6), specials), max_size=4)
    text = parts.map("".join)
    if name:
        text = text.filter(lambda t: t and t != "content-length")
    return text


@st.composite
def frames(draw, version: str, commands=None) -> Frame:
    command = draw(st.sampled_from(commands or sorted(CLIENT_COMMANDS | SERVER_COMMANDS)))
    kind = "raw" if command in UNESCAPED or version == "1.0" else version
    headers = draw(
        st.lists(
            st.tuples(header_texts(kind, name=True), header_texts(kind, name=False)), max_size=4
        )
    )
    body = draw(st.binary(max_size=40))
    return Frame(command, tuple(headers), body)


eols = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def streams(draw) -> tuple[str, bytes, list]:
    """A version, the bytes of several frames and heart-beats, and the events they give."""
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    items = draw(
        st.lists(st.one_of(frames(version, ESCAPED_COMMANDS), eols), min_size=1, max_size=6)
    )
    data = b""
    events: list = []
    for item in items:
        if isinstance(item, Frame):
            data += encode_frame(item, version)
            events.append(expected(item))
            if item.command == "DISCONNECT":
                data += b"anything\x00"  # ignored: the client is gone
                break
        else:
            data += item
            events.append(HEART_BEAT)
    return version, data, events


# --- Frame ---------------------------------------------------------------------------------


def test_repeated_header_entries_get_returns_the_first():
    frame = Frame("MESSAGE", (("foo", "World"), ("foo", "Hello")))
    assert frame.get("foo") == "World"
    assert frame.get("bar") is None
    assert frame.get("bar", "x") == "x"


def test_frame_is_frozen_and_heart_beat_is_a_value():
    frame = Frame("SEND")
    with pytest.raises(AttributeError):
        frame.command = "ACK"  # type: ignore[misc]
    assert frame == Frame("SEND", (), b"")
    assert HeartBeat() == HEART_BEAT


# --- STOMP Frames / Augmented BNF ----------------------------------------------------------


def test_stomp_frames_spec_example():
    data = b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\x00"
    assert parse_one(data) == Frame(
        "SEND",
        (("destination", "/queue/a"), ("content-type", "text/plain")),
        b"hello queue a",
    )


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_augmented_bnf_cr_lf_line_endings(version):
    # 1.2 allows CR LF; 1.0 and 1.1 accept it leniently.
    data = b"SEND\r\ndestination:/q\r\nx:y\r\n\r\nbody\r\n\x00\r\n"
    assert parse(data, version) == [
        Frame("SEND", (("destination", "/q"), ("x", "y")), b"body\r\n"),
        HEART_BEAT,
    ]


def test_augmented_bnf_frame_without_headers_or_body():
    assert parse(b"DISCONNECT\n\n\x00") == [Frame("DISCONNECT")]


@pytest.mark.parametrize("command", sorted(CLIENT_COMMANDS | SERVER_COMMANDS))
def test_augmented_bnf_every_command_parses(command):
    assert parse_one(command.encode() + b"\n\n\x00").command == command


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/1.1", b"send", b"SEND ", b" SEND", b"SENDX", b"SEND\rX", b"\x00", b"\xff"],
)
def test_augmented_bnf_unknown_command_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        parse(line + b"\n\n\x00")


def test_augmented_bnf_unknown_command_refused_before_its_line_ends():
    parser = FrameParser()
    assert parser.feed(b"SUB") == []
    assert parser.pending_command is None
    with pytest.raises(ProtocolError, match="unknown command"):
        parser.feed(b"X")
    with pytest.raises(ProtocolError):
        FrameParser().feed(b"G")  # no command starts with G


def test_augmented_bnf_pending_command_known_once_its_line_is_complete():
    parser = FrameParser()
    assert parser.feed(b"SEND\r") == []
    assert parser.pending_command is None
    assert parser.feed(b"\ndestination:/q\n\nabc") == []
    assert parser.pending_command == "SEND"
    assert parser.feed(b"\x00") == [Frame("SEND", (("destination", "/q"),), b"abc")]
    assert parser.pending_command is None


@pytest.mark.parametrize("line", [b"destination", b"no colon here", b"\\c"])
def test_augmented_bnf_header_without_colon_is_malformed(line):
    with pytest.raises(MalformedFrame, match="colon"):
        parse(b"SEND\n" + line + b"\n\n\x00")


def test_augmented_bnf_empty_header_name_is_malformed():
    with pytest.raises(MalformedFrame, match="empty name"):
        parse(b"SEND\n:value\n\n\x00")


def test_augmented_bnf_empty_header_value_is_kept():
    assert parse_one(b"SEND\nx:\n\n\x00").headers == (("x", ""),)


def test_augmented_bnf_later_colons_belong_to_the_value():
    assert parse_one(b"SEND\nx:a:b\n\n\x00").get("x") == "a:b"


@pytest.mark.parametrize("data", [b"DISCONNECT\n\x00", b"SEND\nx:a\x00b\n\n\x00"])
def test_augmented_bnf_nul_inside_the_headers_is_malformed(data):
    with pytest.raises(MalformedFrame, match="NUL"):
        parse(data)
    with pytest.raises(MalformedFrame, match="NUL"):
        feed_chunks(bytewise(data))


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_augmented_bnf_nothing_is_trimmed(version):
    frame = parse_one(b"SEND\n destination : /q \n\n\x00", version)
    assert frame.headers == ((" destination ", " /q "),)


@pytest.mark.parametrize("line", [b"x:\xff", b"\xc3:v", b"x:\xed\xa0\x80"])
def test_value_encoding_headers_must_be_utf8(line):
    with pytest.raises(MalformedFrame, match="UTF-8"):
        parse(b"SEND\n" + line + b"\n\n\x00")


def test_value_encoding_utf8_headers():
    frame = parse_one("SEND\nclé:€ ☃\n\n\x00".encode())
    assert frame.headers == (("clé", "€ ☃"),)


# --- Value Encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b"a\\nb", "a\nb"), (b"a\\cb", "a:b"), (b"a\\\\b", "a\\b"), (b"\\\\n", "\\n"), (b"", "")],
)
@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_value_encoding_escapes_decode(version, raw, value):
    frame = parse_one(b"SEND\nk" + raw + b":" + raw + b"\n\n\x00", version)
    assert frame.headers == (("k" + value, value),)


def test_value_encoding_cr_escape_is_1_2_only():
    assert parse_one(b"SEND\nx:a\\rb\n\n\x00", "1.2").get("x") == "a\rb"
    with pytest.raises(MalformedFrame, match="undefined escape"):
        parse(b"SEND\nx:a\\rb\n\n\x00", "1.1")


@pytest.mark.parametrize("raw", [b"\\t", b"a\\", b"\\", b"\\x41", b"\\C", b"\\ "])
@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_value_encoding_undefined_escape_is_fatal(version, raw):
    with pytest.raises(MalformedFrame, match="undefined escape"):
        parse(b"SEND\nx:" + raw + b"\n\n\x00", version)
    with pytest.raises(MalformedFrame, match="undefined escape"):
        parse(b"SEND\n" + raw + b"x:v\n\n\x00", version)


@pytest.mark.parametrize("command", UNESCAPED)
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_value_encoding_connect_and_connected_are_not_unescaped(command, version):
    data = command.encode() + b"\nlogin:a\\cb\\t\npasscode:p:w\\\n\n\x00"
    frame = parse_one(data, version)
    assert frame.headers == (("login", "a\\cb\\t"), ("passcode", "p:w\\"))


def test_value_encoding_none_in_1_0():
    frame = parse_one(b"SEND\nx\\c:a\\nb\\t\\\n\n\x00", "1.0")
    assert frame.headers == (("x\\c", "a\\nb\\t\\"),)


def test_value_encoding_bare_cr_in_a_header_is_malformed_in_1_2():
    with pytest.raises(MalformedFrame, match="CR"):
        parse(b"SEND\nx:a\rb\n\n\x00", "1.2")
    with pytest.raises(MalformedFrame, match="CR"):
        parse(b"SEND\nx:a\r\r\n\n\x00", "1.2")


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_value_encoding_bare_cr_in_a_header_is_kept_before_1_2(version):
    assert parse_one(b"SEND\nx:a\rb\n\n\x00", version).get("x") == "a\rb"


def test_value_encoding_bare_cr_in_connect_is_kept():
    assert parse_one(b"CONNECT\nlogin:a\rb\n\n\x00", "1.2").get("login") == "a\rb"


@pytest.mark.parametrize(
    ("version", "value", "wire"),
    [
        ("1.2", "a:b\nc\rd\\e", b"a\\cb\\nc\\rd\\\\e"),
        ("1.1", "a:b\nc\\e", b"a\\cb\\nc\\\\e"),
        ("1.0", "a:b\\c", b"a:b\\c"),
    ],
)
def test_value_encoding_escapes_encode(version, value, wire):
    data = encode_frame(Frame("SEND", (("x", value),)), version)
    assert data == b"SEND\nx:" + wire + b"\n\n\x00"


@FAST
@given(st.data())
@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_value_encoding_escape_round_trip(version, data):
    name = data.draw(header_texts(version, name=True))
    value = data.draw(header_texts(version, name=False))
    frame = Frame("SEND", ((name, value),))
    assert parse_one(encode_frame(frame, version), version) == frame


@pytest.mark.parametrize(
    ("version", "frame"),
    [
        ("1.0", Frame("SEND", (("x", "a\nb"),))),
        ("1.0", Frame("SEND", (("x", "a\rb"),))),
        ("1.0", Frame("SEND", (("x:y", "a"),))),
        ("1.1", Frame("SEND", (("x", "a\rb"),))),
        ("1.2", Frame("SEND", (("x", "a\0b"),))),
        ("1.2", Frame("SEND", (("", "a"),))),
        ("1.2", Frame("CONNECTED", (("x", "a\nb"),))),
        ("1.2", Frame("CONNECT", (("x:y", "a"),))),
        ("1.2", Frame("SEND", (("content-length", "2"),), b"abc")),
        ("1.2", Frame("SEND", (("content-length", "x"),), b"abc")),
        ("1.2", Frame("HELLO")),
        ("2.0", Frame("SEND")),
    ],
)
def test_value_encoding_unrepresentable_frames_raise_value_error(version, frame):
    with pytest.raises(ValueError):
        encode_frame(frame, version)


def test_value_encoding_connected_is_encoded_unescaped():
    frame = Frame("CONNECTED", (("version", "1.2"), ("server", "b\\x:1")))
    assert encode_frame(frame, "1.2") == b"CONNECTED\nversion:1.2\nserver:b\\x:1\n\n\x00"


# --- Body / Header content-length ------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_header_content_length_body_may_contain_nul(version):
    data = b"SEND\ncontent-length:5\n\na\x00b\x00c\x00"
    assert parse_one(data, version).body == b"a\x00b\x00c"
    assert feed_chunks(bytewise(data), version) == [
        Frame("SEND", (("content-length", "5"),), b"a\x00b\x00c")
    ]


def test_header_content_length_zero_and_leading_zeros():
    assert parse_one(b"SEND\ncontent-length:0\n\n\x00").body == b""
    assert parse_one(b"SEND\ncontent-length:003\n\nabc\x00").body == b"abc"


def test_body_without_content_length_ends_at_the_first_nul():
    parser = FrameParser()
    assert parser.feed(b"SEND\n\nab\x00SE") == [Frame("SEND", (), b"ab")]
    assert parser.pending_command is None
    # "c" then starts a frame with an unknown command: the good frame before it comes
    # first, the fault with the next call.
    parser = FrameParser()
    assert parser.feed(b"SEND\n\nab\x00c\n\n\x00") == [Frame("SEND", (), b"ab")]
    assert parser.error_pending
    with pytest.raises(ProtocolError):
        parser.feed(b"")


def test_header_content_length_frame_must_still_end_with_nul():
    with pytest.raises(MalformedFrame, match="no NUL"):
        parse(b"SEND\ncontent-length:2\n\nabc\x00")


@pytest.mark.parametrize(
    "value", ["abc", "-1", "+1", " 1", "1 ", "", "1.0", "0x10", "\u00b2", "\u0661"]
)
def test_header_content_length_invalid_is_malformed(value):
    with pytest.raises(MalformedFrame, match="content-length"):
        parse(f"SEND\ncontent-length:{value}\n\nabc\x00".encode())


def test_repeated_header_entries_first_content_length_wins():
    frame = parse_one(b"SEND\ncontent-length:1\ncontent-length:junk\n\na\x00")
    assert frame.body == b"a"


@pytest.mark.parametrize("command", ["MESSAGE", "ERROR"])
def test_header_content_length_written_for_message_and_error(command):
    assert encode_frame(Frame(command, (), b"a\x00b")) == (
        command.encode() + b"\ncontent-length:3\n\na\x00b\x00"
    )
    assert encode_frame(Frame(command)) == command.encode() + b"\ncontent-length:0\n\n\x00"


def test_header_content_length_written_when_a_body_holds_nul():
    assert encode_frame(Frame("SEND", (), b"a")) == b"SEND\n\na\x00"
    assert encode_frame(Frame("SEND", (), b"\x00")) == b"SEND\ncontent-length:1\n\n\x00\x00"


def test_header_content_length_from_the_caller_is_kept():
    frame = Frame("MESSAGE", (("content-length", "002"),), b"ab")
    assert encode_frame(frame) == b"MESSAGE\ncontent-length:002\n\nab\x00"


# --- Heart-beating -------------------------------------------------------------------------


def test_heart_beating_eols_between_frames():
    data = b"\n\r\nSEND\n\n\x00\n\r\n\n"
    expected_events = [HEART_BEAT, HEART_BEAT, Frame("SEND"), HEART_BEAT, HEART_BEAT, HEART_BEAT]
    assert parse(data) == expected_events
    assert feed_chunks(bytewise(data)) == expected_events


def test_heart_beating_cr_waits_for_its_lf():
    parser = FrameParser()
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [HEART_BEAT]


def test_heart_beating_cr_without_lf_is_malformed():
    with pytest.raises(MalformedFrame, match="CR"):
        parse(b"\rSEND\n\n\x00")


# --- incremental parsing -------------------------------------------------------------------


@FAST
@given(streams(), st.lists(st.integers(0, 10_000), max_size=8))
def test_augmented_bnf_any_split_gives_the_same_events(stream, cuts):
    version, data, events = stream
    assert parse(data, version) == events
    assert feed_chunks(split_at(data, cuts), version) == events


@settings(max_examples=40, deadline=None)
@given(streams())
def test_augmented_bnf_byte_at_a_time(stream):
    version, data, events = stream
    assert feed_chunks(bytewise(data), version) == events


@FAST
@given(st.data())
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_augmented_bnf_parse_of_encode_is_identity(version, data):
    frame = data.draw(frames(version))
    assert parse(encode_frame(frame, version), version) == [expected(frame)]


def test_disconnect_later_bytes_are_ignored():
    parser = FrameParser()
    data = b"DISCONNECT\nreceipt:1\n\n\x00\nGARBAGE\x00"
    assert parser.feed(data) == [Frame("DISCONNECT", (("receipt", "1"),))]
    assert parser.feed(b"SEND\n\n\x00") == []
    assert parser.pending_command is None


def test_parser_fails_for_good_after_an_error():
    parser = FrameParser()
    with pytest.raises(MalformedFrame):
        parser.feed(b"SEND\nbad\n\n\x00")
    with pytest.raises(ProtocolError, match="already failed"):
        parser.feed(b"SEND\n\n\x00")


# --- Protocol Negotiation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "supported", "version"),
    [
        (None, SUPPORTED_VERSIONS, "1.0"),
        ("1.0", SUPPORTED_VERSIONS, "1.0"),
        ("1.1", SUPPORTED_VERSIONS, "1.1"),
        ("1.0,1.1,1.2", SUPPORTED_VERSIONS, "1.2"),
        ("1.2,1.0", SUPPORTED_VERSIONS, "1.2"),
        ("1.0, 1.1", SUPPORTED_VERSIONS, "1.1"),
        ("1.1,2.1", SUPPORTED_VERSIONS, "1.1"),
        ("2.1", SUPPORTED_VERSIONS, None),
        ("", SUPPORTED_VERSIONS, None),
        ("1.3,1.2.1", SUPPORTED_VERSIONS, None),
        (None, ("1.1", "1.2"), None),
        ("1.0,1.1,1.2", ("1.0", "1.1"), "1.1"),
        ("1.0", ("1.2",), None),
    ],
)
def test_protocol_negotiation_table(accept, supported, version):
    assert negotiate_version(accept, supported) == version


def test_protocol_negotiation_unsupported_version_error_frame_lists_versions():
    error = UnsupportedVersion("no common version", supported=("1.1", "1.2"))
    frame = error.to_frame()
    assert frame.command == "ERROR"
    assert frame.get("version") == "1.1,1.2"
    assert frame.get("message") == "no common version"


@pytest.mark.parametrize(
    ("connect", "version"),
    [
        (b"CONNECT\naccept-version:1.1\n\n\x00", "1.1"),
        (b"STOMP\naccept-version:1.0,1.2\n\n\x00", "1.2"),
        (b"CONNECT\nhost:x\n\n\x00", "1.0"),
        (b"CONNECTED\nversion:1.1\n\n\x00", "1.1"),
        (b"CONNECTED\n\n\x00", "1.0"),
        (b"CONNECT\naccept-version:9.9\n\n\x00", "1.2"),  # unchanged
    ],
)
def test_protocol_negotiation_parser_follows_connect_and_connected(connect, version):
    parser = FrameParser()
    parser.feed(connect)
    assert parser.version == version


def test_protocol_negotiation_frames_after_connect_in_one_chunk_use_its_version():
    # A 1.0 session: the SEND's header is taken verbatim, not unescaped.
    events = parse(b"CONNECT\n\n\x00SEND\nx:a\\tb\n\n\x00")
    assert events[1] == Frame("SEND", (("x", "a\\tb"),))
    events = parse(b"CONNECT\naccept-version:1.1\n\n\x00SEND\nx:a\\cb\n\n\x00", "1.0")
    assert events[1] == Frame("SEND", (("x", "a:b"),))


def test_protocol_negotiation_parser_honours_its_versions():
    parser = FrameParser(versions=("1.0", "1.1"))
    parser.feed(b"CONNECT\naccept-version:1.1,1.2\n\n\x00")
    assert parser.version == "1.1"


def test_parser_rejects_unknown_versions():
    with pytest.raises(ValueError):
        FrameParser(version="2.0")
    with pytest.raises(ValueError):
        FrameParser().version = "1.3"


# --- Heart-beating: negotiation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "result"),
    [
        (None, (0, 0)),
        ("0,0", (0, 0)),
        ("1000,2000", (1000, 2000)),
        ("0, 10000", (0, 10000)),
        ("007,1", (7, 1)),
        ("2147483647,0", (2147483647, 0)),
    ],
)
def test_heart_beating_header_parses(value, result):
    assert parse_heart_beat(value) == result


@pytest.mark.parametrize(
    "value", ["", "1000", "1,2,3", "-1,0", "a,b", "1.5,0", ",", "1,", "2147483648,0", "\u0663,0"]
)
def test_heart_beating_invalid_header_is_a_protocol_error(value):
    with pytest.raises(ProtocolError, match="heart-beat"):
        parse_heart_beat(value)


@pytest.mark.parametrize(
    ("client", "server", "result"),
    [
        ((0, 0), (0, 0), (0, 0)),
        ((0, 0), (10000, 10000), (0, 0)),
        ((10000, 10000), (0, 0), (0, 0)),
        ((4000, 0), (5000, 6000), (0, 6000)),  # client sends, does not want to receive
        ((0, 4000), (5000, 6000), (5000, 0)),  # client receives only
        ((4000, 7000), (5000, 6000), (7000, 6000)),
        ((9000, 1000), (5000, 6000), (5000, 9000)),
    ],
)
def test_heart_beating_negotiation_table(client, server, result):
    assert negotiate_heart_beat(client, server) == result


# --- Size Limits ---------------------------------------------------------------------------


def _held(parser: FrameParser) -> int:
    return len(parser._buffer)


def test_size_limits_frame_of_exactly_the_limit_parses():
    data = b"SEND\n\n" + b"x" * 57 + b"\x00"
    assert len(data) == 64
    assert parse_one(data, max_frame_size=64).body == b"x" * 57
    with pytest.raises(FrameTooLarge):
        parse(b"SEND\n\n" + b"x" * 58 + b"\x00", max_frame_size=64)


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_size_limits_body_never_buffered_beyond_the_limit(chunk):
    parser = FrameParser(max_frame_size=64)
    stream = b"SEND\nx:y\n\n" + b"z" * 1000
    with pytest.raises(FrameTooLarge):
        for i in range(0, len(stream), chunk):
            parser.feed(stream[i : i + chunk])
            assert _held(parser) <= 64
    assert i < 64 + chunk


def test_size_limits_content_length_refused_before_the_body_arrives():
    parser = FrameParser(max_frame_size=1000)
    with pytest.raises(FrameTooLarge):
        parser.feed(b"SEND\ncontent-length:1000\n\n")
    with pytest.raises(FrameTooLarge):
        parse(b"SEND\ncontent-length:" + b"9" * 5000 + b"\n\n", max_header_length=10_000)


def test_size_limits_content_length_at_the_limit_parses():
    data = b"SEND\ncontent-length:3\n\nabc\x00"
    assert parse_one(data, max_frame_size=len(data)).body == b"abc"
    with pytest.raises(FrameTooLarge):
        parse(data, max_frame_size=len(data) - 1)


def test_size_limits_header_count():
    data = b"SEND\n" + b"h:v\n" * 5 + b"\n\x00"
    assert len(parse_one(data, max_headers=5).headers) == 5
    with pytest.raises(FrameTooLarge, match="headers"):
        parse(data, max_headers=4)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_size_limits_header_line_length(eol):
    line = b"k:" + b"v" * 14  # 16 bytes
    assert parse_one(b"SEND\n" + line + eol + eol + b"\x00", max_header_length=16)
    with pytest.raises(FrameTooLarge, match="header line"):
        parse(b"SEND\n" + line + b"v" + eol + eol + b"\x00", max_header_length=16)


def test_size_limits_header_line_refused_before_its_eol():
    parser = FrameParser(max_header_length=16)
    parser.feed(b"SEND\n")
    with pytest.raises(FrameTooLarge):
        for _ in range(100):
            parser.feed(b"v")
            assert _held(parser) <= 18


def test_size_limits_headers_count_towards_the_frame_size():
    with pytest.raises(FrameTooLarge):
        parse(b"SEND\n" + b"h:v\n" * 100, max_frame_size=64)


# --- fuzz -----------------------------------------------------------------------------------

SMALL_LIMITS = {"max_frame_size": 96, "max_headers": 3, "max_header_length": 24}


@st.composite
def mutated_streams(draw) -> tuple[str, bytes]:
    version, data, _ = draw(streams())
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert"]))
        byte = draw(st.sampled_from(b"\x00\n\r:\\\xff ac"))
        if op == "flip":
            data[i] = byte
        elif op == "delete":
            del data[i]
        else:
            data.insert(i, byte)
    return version, bytes(data)


def _same_outcome_for_any_split(version: str, data: bytes, cuts: list[int], limits) -> None:
    whole, error = outcome([data], version, **limits)
    split, split_error = outcome(split_at(data, cuts), version, **limits)
    assert split_error is error
    if error is None:
        assert split == whole
    one, one_error = outcome(bytewise(data), version, **limits)
    assert one_error is error
    assert one[: len(split)] == split[: len(one)]


@FAST
@given(st.binary(max_size=200), st.sampled_from(SUPPORTED_VERSIONS), st.booleans())
def test_fuzz_random_bytes_raise_only_stomp_errors(data, version, small):
    limits = SMALL_LIMITS if small else {}
    _same_outcome_for_any_split(version, data, [len(data) // 2], limits)


@FAST
@given(mutated_streams(), st.lists(st.integers(0, 10_000), max_size=4), st.booleans())
def test_fuzz_mutated_streams_raise_only_stomp_errors_whatever_the_split(stream, cuts, small):
    version, data = stream
    _same_outcome_for_any_split(version, data, cuts, SMALL_LIMITS if small else {})


# --- encode_message ------------------------------------------------------------------------


def test_message_encode_message_spec_example():
    data = encode_message("/queue/a", "007", "0", (("content-type", "text/plain"),), b"hi")
    assert data == (
        b"MESSAGE\ndestination:/queue/a\nmessage-id:007\nsubscription:0\n"
        b"content-length:2\ncontent-type:text/plain\n\nhi\x00"
    )


def test_message_encode_message_ack_and_dropped_content_length():
    data = encode_message(
        "/q", "m", "s", (("content-length", "99"), ("x", "y")), b"", "1.2", ack="a1"
    )
    frame = parse_one(data)
    assert frame.get("ack") == "a1"
    assert frame.get("content-length") == "0"
    assert [name for name, _ in frame.headers].count("content-length") == 1


@settings(max_examples=50, deadline=None)
@given(st.data())
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_message_encode_message_matches_encode_frame(version, data):
    kind = "raw" if version == "1.0" else version
    value = header_texts(kind, name=False)
    destination, message_id, subscription = data.draw(st.tuples(value, value, value))
    ack = data.draw(st.none() | value)
    headers = tuple(data.draw(st.lists(st.tuples(header_texts(kind, name=True), value))))
    body = data.draw(st.binary(max_size=20))
    fixed = [("destination", destination), ("message-id", message_id)]
    fixed.append(("subscription", subscription))
    if ack is not None:
        fixed.append(("ack", ack))
    fixed.append(("content-length", str(len(body))))
    frame = Frame("MESSAGE", (*fixed, *headers), body)
    wire = encode_message(destination, message_id, subscription, headers, body, version, ack)
    assert wire == encode_frame(frame, version)
    assert parse(wire, version) == [frame]


@pytest.mark.parametrize(("version", "value"), [("1.0", "a\nb"), ("1.1", "a\rb"), ("2.0", "a")])
def test_message_encode_message_unrepresentable_raises_value_error(version, value):
    with pytest.raises(ValueError):
        encode_message(value, "m", "s", (), b"", version)

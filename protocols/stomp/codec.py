"""Sans-IO STOMP 1.0 / 1.1 / 1.2 codec: bytes to frames and frames to bytes.

Section names in comments and error messages ("Value Encoding", "Size Limits", ...)
refer to the STOMP 1.2 specification. The parser is incremental (any split of a byte
stream yields the same events, and the same error) and bounded: it never holds more
than one frame's worth (``max_frame_size``) of a frame it has not yet returned.

Version rules applied by the parser:

* CONNECT, STOMP and CONNECTED frames are never unescaped ("Value Encoding"), so the
  first frame parses the same whatever version the parser is set to.
* 1.0: no unescaping at all; 1.1: ``\\n``, ``\\c``, ``\\\\``; 1.2: also ``\\r``. Any
  other escape, or a lone backslash at the end, is a MalformedFrame.
* A CR before the LF that ends a line is dropped in every version (1.2 "Augmented
  BNF"; 1.0 and 1.1 leniently). A CR anywhere else in a header line is an error only
  in an escaped 1.2 frame (the 1.1 grammar allows it, 1.0 is taken verbatim).
* Nothing is trimmed: whitespace around names and values is part of them (1.0
  included). A header line splits at its first colon; later colons belong to the
  value (leniently: 1.1 and 1.2 say to escape them).
* Header names and values must be UTF-8 and must not contain NUL.
"""

import re
from collections.abc import Iterable

from .errors import FrameTooLarge, MalformedFrame, ProtocolError, StompError
from .frames import (
    ALL_COMMANDS,
    HEART_BEAT,
    SUPPORTED_VERSIONS,
    UNESCAPED_COMMANDS,
    V1_0,
    V1_1,
    V1_2,
    Event,
    Frame,
)

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024  # whole frame: command line to NUL
DEFAULT_MAX_HEADERS = 1000
DEFAULT_MAX_HEADER_LENGTH = 10 * 1024  # one header line, without its EOL

_LF = 0x0A
_CR = 0x0D

_COMMANDS = {command.encode(): command for command in ALL_COMMANDS}
_COMMAND_PREFIXES = frozenset(c[:i] for c in _COMMANDS for i in range(len(c) + 1))
_MAX_COMMAND_LINE = max(map(len, _COMMANDS)) + 2  # CR LF

# Parser states.
_COMMAND, _HEADERS, _BODY = 0, 1, 2
# How the current frame's header lines decode.
_RAW, _ESCAPED_1_1, _ESCAPED_1_2 = 0, 1, 2

_UNESCAPE_1_1 = {"n": "\n", "c": ":", "\\": "\\"}
_UNESCAPE_1_2 = {**_UNESCAPE_1_1, "r": "\r"}
_UNESCAPE_TABLES = {_ESCAPED_1_1: _UNESCAPE_1_1, _ESCAPED_1_2: _UNESCAPE_1_2}
_ESCAPE_SEQUENCE = re.compile(r"\\(.?)", re.DOTALL)

_HEART_BEAT_VALUE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*,[ \t]*([0-9]{1,10})[ \t]*")
_MAX_HEART_BEAT = 2**31 - 1


def _check_version(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"STOMP version {version!r} is not one of {SUPPORTED_VERSIONS}")
    return version


# --- negotiation --------------------------------------------------------------------------


def negotiate_version(
    accept_version: str | None, supported: Iterable[str] = SUPPORTED_VERSIONS
) -> str | None:
    """The version a session runs at, from the CONNECT's ``accept-version`` header.

    No header means 1.0; else the highest version both sides speak, or None when
    there is none (the server then sends an ERROR with a ``version`` header listing
    its versions and closes: "Protocol Negotiation").
    """
    supported = frozenset(supported)
    if accept_version is None:
        return V1_0 if V1_0 in supported else None
    offered = {item.strip() for item in accept_version.split(",")}
    common = [v for v in SUPPORTED_VERSIONS if v in offered and v in supported]
    return common[-1] if common else None


def parse_heart_beat(value: str | None) -> tuple[int, int]:
    """Parse a ``heart-beat`` header ("<cx>,<cy>" in milliseconds); missing is (0, 0).

    Raises ProtocolError when the value is not two non-negative integers.
    """
    if value is None:
        return 0, 0
    match = _HEART_BEAT_VALUE.fullmatch(value)
    if match is None:
        raise ProtocolError(f"invalid heart-beat header {value[:40]!r} [Heart-beating]")
    x, y = int(match[1]), int(match[2])
    if x > _MAX_HEART_BEAT or y > _MAX_HEART_BEAT:
        raise ProtocolError(f"heart-beat header {value!r} out of range [Heart-beating]")
    return x, y


def negotiate_heart_beat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """The heart-beat intervals of a session, seen from the server ("Heart-beating").

    ``client`` is the CONNECT's (cx, cy), ``server`` the CONNECTED's (sx, sy). Returns
    (send_ms, receive_ms): the server sends every MAX(sx, cy) ms unless either is 0,
    and expects the client's every MAX(cx, sy) ms unless either is 0; 0 means none.
    A client gets its own view by passing (server's, own) in that order.
    """
    cx, cy = client
    sx, sy = server
    send = max(sx, cy) if sx and cy else 0
    receive = max(cx, sy) if cx and sy else 0
    return send, receive


# --- parsing ------------------------------------------------------------------------------


def _unescape(text: str, table: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        char = table.get(match[1])
        if char is None:
            raise MalformedFrame(
                f"undefined escape sequence {match[0]!r} in a header [Value Encoding]"
            )
        return char

    return _ESCAPE_SEQUENCE.sub(replace, text)


_NOTHING: list[Event] = []  # never appended to: _parse makes a list of its own


class FrameParser:
    """Incremental parser: feed it bytes as they arrive, get frames and heart-beats back.

    ``version`` selects the header rules (see the module docstring); a parsed CONNECT or
    STOMP frame sets it to the version negotiated from its ``accept-version`` (among
    ``versions``), a parsed CONNECTED frame to its ``version`` header, so frames that
    follow in the same chunk already parse at the session's version. Before that the
    default 1.2 applies, the most permissive about line endings; set it explicitly to
    override. After a DISCONNECT the sender is gone, so later bytes are ignored
    ("DISCONNECT"); after an error the stream is dead and every later ``feed`` raises
    ProtocolError.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_command",
        "_failed",
        "_frame_size",
        "_headers",
        "_length",
        "_mode",
        "_parsed",
        "_pending_error",
        "_scan",
        "_state",
        "_version",
        "_versions",
        "max_frame_size",
        "max_header_length",
        "max_headers",
    )

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_length: int = DEFAULT_MAX_HEADER_LENGTH,
        *,
        version: str = V1_2,
        versions: Iterable[str] = SUPPORTED_VERSIONS,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.max_headers = max_headers
        self.max_header_length = max_header_length
        self._version = _check_version(version)
        self._versions = tuple(_check_version(v) for v in versions)
        self._buffer = bytearray()
        self._failed = False
        # A fault after good frames of the same feed: raised by the next call (they are
        # answered first: a CONNECT gets its CONNECTED, then the ERROR).
        self._pending_error: StompError | None = None
        self._parsed: list[Event] = _NOTHING  # the frames of the feed being parsed
        self._closed = False  # a DISCONNECT was parsed
        self._state = _COMMAND
        self._scan = 0  # bytes of the pending line or body already searched
        self._command = ""
        self._headers: list[tuple[str, str]] = []
        self._frame_size = 0  # bytes of the current frame's completed lines
        self._length: int | None = None  # content-length of the current frame
        self._mode = _RAW

    @property
    def version(self) -> str:
        """The STOMP version whose header rules apply to the next frames."""
        return self._version

    @version.setter
    def version(self, version: str) -> None:
        self._version = _check_version(version)

    @property
    def pending_command(self) -> str | None:
        """The command of a frame received in part (its command line is complete)."""
        return None if self._state == _COMMAND else self._command

    def feed(self, data: bytes) -> list[Event]:
        """Add ``data`` to the stream and return the frames and heart-beats it completes.

        A fault raises StompError; when frames came before it in the same ``data``, they
        are returned and the fault waits (``error_pending``) for the next call."""
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        if self._failed:
            raise ProtocolError("the byte stream already failed to parse")
        if self._closed:
            return []
        buf = self._buffer
        buf += data
        try:
            events, consumed = self._parse(buf)
        except StompError as exc:
            self._failed = True
            self._buffer = bytearray()
            good, self._parsed = self._parsed, _NOTHING
            if not any(isinstance(event, Frame) for event in good):
                raise
            self._pending_error = exc
            return good
        self._parsed = _NOTHING  # not kept alive while the connection waits
        if self._closed:
            buf.clear()
        else:
            del buf[:consumed]
        return events

    @property
    def error_pending(self) -> bool:
        """A fault follows the frames the last ``feed`` returned."""
        return self._pending_error is not None

    def _parse(self, buf: bytearray) -> tuple[list[Event], int]:
        # Each check looks only at the bytes up to the point where it fires, so any
        # split of the stream raises the same error at the same byte.
        events: list[Event] = []
        self._parsed = events  # what a fault leaves of this feed
        size = len(buf)
        pos = 0
        state = self._state
        while pos < size:
            if state == _COMMAND:
                byte = buf[pos]
                if byte == _LF:
                    events.append(HEART_BEAT)
                    pos += 1
                    continue
                if byte == _CR:
                    if pos + 1 == size:
                        break
                    if buf[pos + 1] != _LF:
                        raise MalformedFrame("CR without LF between frames [Heart-beating]")
                    events.append(HEART_BEAT)
                    pos += 2
                    continue
                window = min(size, pos + _MAX_COMMAND_LINE)
                eol = buf.find(b"\n", pos, window)
                if eol < 0:
                    partial = bytes(buf[pos:window])
                    if partial[-1] == _CR:
                        partial = partial[:-1]
                    if partial not in _COMMAND_PREFIXES:
                        raise ProtocolError(f"unknown command {partial[:16]!r} [Augmented BNF]")
                    break
                end = eol - 1 if buf[eol - 1] == _CR else eol
                command = _COMMANDS.get(bytes(buf[pos:end]))
                if command is None:
                    raise ProtocolError(
                        f"unknown command {bytes(buf[pos:end])[:16]!r} [Augmented BNF]"
                    )
                self._start_frame(command, eol + 1 - pos)
                pos = eol + 1
                state = _HEADERS
            elif state == _HEADERS:
                # The byte at relative index ``limit`` may only be the LF of a line
                # that still fits; anything else there breaks a size limit.
                room = self.max_frame_size - self._frame_size
                limit = min(self.max_header_length + 1, room)
                window = min(size, pos + limit + 1)
                eol = buf.find(b"\n", pos + self._scan, window)
                nul = buf.find(b"\0", pos + self._scan, window if eol < 0 else eol)
                if nul >= 0:
                    raise MalformedFrame("NUL inside the headers: frame ended without a blank line")
                if eol < 0:
                    if window == pos + limit + 1:
                        if limit < room:
                            raise FrameTooLarge(self._line_too_long())
                        raise FrameTooLarge(self._too_large())
                    self._scan = window - pos
                    break
                end = eol - 1 if eol > pos and buf[eol - 1] == _CR else eol
                self._frame_size += eol + 1 - pos
                if end - pos > self.max_header_length:
                    raise FrameTooLarge(self._line_too_long())
                if self._frame_size > self.max_frame_size:
                    raise FrameTooLarge(self._too_large())
                if end == pos:  # the blank line: headers done
                    self._length = length = self._content_length()
                    if length is not None and self._frame_size + length + 1 > self.max_frame_size:
                        raise FrameTooLarge(self._too_large())
                    state = _BODY
                else:
                    if len(self._headers) >= self.max_headers:
                        raise FrameTooLarge(f"more than {self.max_headers} headers [Size Limits]")
                    self._headers.append(self._header(bytes(buf[pos:end])))
                self._scan = 0
                pos = eol + 1
            else:
                length = self._length
                if length is not None:
                    end = pos + length
                    if end >= size:
                        break
                    if buf[end]:
                        raise MalformedFrame(
                            f"no NUL after the {length} body bytes of content-length [Body]"
                        )
                else:
                    room = self.max_frame_size - self._frame_size  # body bytes + NUL
                    window = min(size, pos + room)
                    end = buf.find(b"\0", pos + self._scan, window)
                    if end < 0:
                        if window == pos + room:
                            raise FrameTooLarge(self._too_large())
                        self._scan = window - pos
                        break
                frame = Frame(self._command, tuple(self._headers), bytes(buf[pos:end]))
                events.append(frame)
                self._headers = []
                self._scan = 0
                pos = end + 1
                state = _COMMAND
                if frame.command in UNESCAPED_COMMANDS:
                    self._track_version(frame)
                elif frame.command == "DISCONNECT":
                    # "The client MUST NOT send any more frames after the DISCONNECT".
                    self._closed = True
                    break
        self._state = state
        return events, pos

    def _too_large(self) -> str:
        return f"{self._command} frame larger than {self.max_frame_size} bytes [Size Limits]"

    def _line_too_long(self) -> str:
        return f"header line longer than {self.max_header_length} bytes [Size Limits]"

    def _start_frame(self, command: str, line_size: int) -> None:
        self._command = command
        self._headers = []
        self._frame_size = line_size
        self._length = None
        self._scan = 0
        if command in UNESCAPED_COMMANDS or self._version == V1_0:
            self._mode = _RAW
        elif self._version == V1_1:
            self._mode = _ESCAPED_1_1
        else:
            self._mode = _ESCAPED_1_2
        if line_size > self.max_frame_size:
            raise FrameTooLarge(self._too_large())

    def _header(self, line: bytes) -> tuple[str, str]:
        try:
            text = line.decode()
        except UnicodeDecodeError:
            raise MalformedFrame("header is not valid UTF-8 [Value Encoding]") from None
        name, colon, value = text.partition(":")
        if not colon:
            raise MalformedFrame(f"header line without a colon: {text[:40]!r} [Augmented BNF]")
        if not name:
            raise MalformedFrame(f"header line with an empty name: {text[:40]!r} [Augmented BNF]")
        mode = self._mode
        if mode == _ESCAPED_1_2 and "\r" in text:
            raise MalformedFrame("CR inside a header line (1.2 escapes it as \\r) [Value Encoding]")
        if mode and "\\" in text:
            table = _UNESCAPE_TABLES[mode]
            return _unescape(name, table), _unescape(value, table)
        return name, value

    def _content_length(self) -> int | None:
        for name, value in self._headers:
            if name == "content-length":  # the first one counts ("Repeated Header Entries")
                if not (value.isascii() and value.isdigit()):
                    raise MalformedFrame(
                        f"invalid content-length {value[:20]!r} [Header content-length]"
                    )
                digits = value.lstrip("0")
                if len(digits) > 18:
                    raise FrameTooLarge(self._too_large())
                return int(digits or "0")
        return None

    def _track_version(self, frame: Frame) -> None:
        if frame.command == "CONNECTED":
            version = frame.get("version", V1_0)
            if version in SUPPORTED_VERSIONS:
                self._version = version
        else:
            negotiated = negotiate_version(frame.get("accept-version"), self._versions)
            if negotiated is not None:
                self._version = negotiated


# --- encoding -----------------------------------------------------------------------------

_ESCAPE_1_2 = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})
_ESCAPE_1_1 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c"})
_LENGTH_COMMANDS = frozenset(("MESSAGE", "ERROR"))


def _no_nul(text: str) -> bytes:
    if "\0" in text:
        raise ValueError(f"NUL in header {text[:40]!r}")
    return text.encode()


def _escape_1_2(text: str) -> bytes:
    if "\\" in text or ":" in text or "\n" in text or "\r" in text:
        text = text.translate(_ESCAPE_1_2)
    return _no_nul(text)


def _escape_1_1(text: str) -> bytes:
    if "\r" in text:
        raise ValueError(f"STOMP 1.1 has no escape for CR in header {text[:40]!r}")
    if "\\" in text or ":" in text or "\n" in text:
        text = text.translate(_ESCAPE_1_1)
    return _no_nul(text)


def _raw_value(text: str) -> bytes:
    if "\n" in text or "\r" in text:
        raise ValueError(f"unescaped header cannot carry CR or LF: {text[:40]!r}")
    return _no_nul(text)


def _raw_name(text: str) -> bytes:
    if ":" in text:
        raise ValueError(f"unescaped header name cannot carry a colon: {text[:40]!r}")
    return _raw_value(text)


# version -> (name encoder, value encoder)
_HEADER_ENCODERS = {
    V1_0: (_raw_name, _raw_value),
    V1_1: (_escape_1_1, _escape_1_1),
    V1_2: (_escape_1_2, _escape_1_2),
}


def encode_frame(frame: Frame, version: str = V1_2) -> bytes:
    """Encode ``frame`` for a session at ``version``.

    Headers are escaped per version (never in CONNECT, STOMP and CONNECTED frames, nor
    in 1.0). MESSAGE and ERROR frames, and any frame whose body holds a NUL, get a
    ``content-length`` header when the caller gave none. A header that the version
    cannot carry (LF in 1.0, CR in 1.1, NUL anywhere, ...), an unknown command or a
    ``content-length`` other than the body's length raises ValueError.
    """
    command = frame.command
    if command not in ALL_COMMANDS:
        raise ValueError(f"not a STOMP command: {command!r}")
    _check_version(version)
    encode_name, encode_value = _HEADER_ENCODERS[V1_0 if command in UNESCAPED_COMMANDS else version]
    body = frame.body
    parts = [command.encode(), b"\n"]
    has_length = False
    for name, value in frame.headers:
        if not name:
            raise ValueError("empty header name")
        if name == "content-length" and not has_length:
            has_length = True
            if not (value.isascii() and value.isdigit() and int(value) == len(body)):
                raise ValueError(f"content-length {value!r} but the body has {len(body)} bytes")
        parts += (encode_name(name), b":", encode_value(value), b"\n")
    if not has_length and (command in _LENGTH_COMMANDS or b"\0" in body):
        parts.append(b"content-length:%d\n" % len(body))
    parts += (b"\n", body, b"\0")
    return b"".join(parts)


def encode_message(
    destination: str,
    message_id: str,
    subscription: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    version: str = V1_2,
    ack: str | None = None,
) -> bytes:
    """Encode a MESSAGE frame (the per-delivery fast path).

    The broker's headers (destination, message-id, subscription, ack when given,
    content-length) come first, so they win over copies in ``headers``
    ("Repeated Header Entries"); a ``content-length`` in ``headers`` is dropped.
    Headers are trusted (names non-empty); ones the version cannot carry raise
    ValueError as in ``encode_frame``.
    """
    try:
        encode_name, encode_value = _HEADER_ENCODERS[version]
    except KeyError:
        raise ValueError(f"cannot encode for STOMP version {version!r}") from None
    parts = [
        b"MESSAGE\ndestination:",
        encode_value(destination),
        b"\nmessage-id:",
        encode_value(message_id),
        b"\nsubscription:",
        encode_value(subscription),
    ]
    if ack is not None:
        parts += (b"\nack:", encode_value(ack))
    parts.append(b"\ncontent-length:%d\n" % len(body))
    for name, value in headers:
        if name != "content-length":
            parts += (encode_name(name), b":", encode_value(value), b"\n")
    parts += (b"\n", body, b"\0")
    return b"".join(parts)

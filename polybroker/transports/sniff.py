"""Protocol detection from the first bytes of a connection (the ``auto`` listeners).

``detect`` is pure: it says which protocol a prefix starts, that more bytes are
needed, or that no supported protocol starts that way. ``sniff`` reads until it
knows and hands the bytes it read back with the stream (``PrefixedStream``).
"""

import trio

# Each protocol's opening, as sent by its clients:
# - MQTT: CONNECT (packet type 1, flags 0), remaining length (1 to 4 bytes), then the
#   protocol name: "MQTT" (3.1.1, 5) or "MQIsdp" (3.1), each with its 2-byte length.
# - STOMP: a CONNECT or STOMP frame; end-of-lines (heart-beats) may come first.
# - AMQP: "AMQP" and four bytes of protocol id and version (0-9-1, 1.0, ...).
_MQTT_NAMES = (b"\x00\x04MQTT", b"\x00\x06MQIsdp")
_STOMP_COMMANDS = (b"CONNECT\n", b"CONNECT\r\n", b"STOMP\n", b"STOMP\r\n")
_AMQP_HEADER_SIZE = 8

# A client that has sent this much without being recognised speaks something else.
MAX_SNIFF_BYTES = 64

MATCH, MAYBE, NO = "match", "maybe", "no"


class UnknownProtocol(Exception):
    """The first bytes match no supported protocol, or the peer stopped before they did."""

    def __init__(self, reason: str, prefix: bytes) -> None:
        super().__init__(f"{reason} (first bytes {prefix[:32]!r})")
        self.prefix = prefix


def detect(prefix: bytes) -> str | None:
    """``"mqtt"``, ``"stomp"`` or ``"amqp"``; None if more bytes are needed.

    Raises UnknownProtocol when no protocol can start with ``prefix``.
    """
    verdicts = {name: check(prefix) for name, check in _CHECKS.items()}
    for name, verdict in verdicts.items():
        if verdict == MATCH:
            return name
    if MAYBE in verdicts.values() and len(prefix) < MAX_SNIFF_BYTES:
        return None
    hint = next((hint for start, hint in _HINTS if prefix.startswith(start)), "")
    raise UnknownProtocol("not MQTT, STOMP or AMQP" + hint, prefix)


# Mistakes an operator will want named in the log line.
_HINTS = (
    (b"\x16\x03", ": a TLS handshake on a plain listener"),
    (b"GET ", ": an HTTP request (a WebSocket client on a plain listener?)"),
)


def _starts_one_of(data: bytes, openings: tuple[bytes, ...]) -> str:
    if any(data.startswith(opening) for opening in openings):
        return MATCH
    return MAYBE if any(opening.startswith(data) for opening in openings) else NO


def _mqtt(prefix: bytes) -> str:
    if not prefix:
        return MAYBE
    if prefix[0] != 0x10:
        return NO
    # Remaining length: up to four bytes, the high bit saying another follows.
    for index in range(1, 5):
        if index >= len(prefix):
            return MAYBE
        if not prefix[index] & 0x80:
            return _starts_one_of(prefix[index + 1:], _MQTT_NAMES)
    return NO


def _stomp(prefix: bytes) -> str:
    return _starts_one_of(prefix.lstrip(b"\r\n"), _STOMP_COMMANDS)


def _amqp(prefix: bytes) -> str:
    verdict = _starts_one_of(prefix, (b"AMQP",))
    if verdict == MATCH and len(prefix) < _AMQP_HEADER_SIZE:
        return MAYBE
    return verdict


_CHECKS = {"mqtt": _mqtt, "stomp": _stomp, "amqp": _amqp}


class PrefixedStream(trio.abc.Stream):
    """A stream that first returns bytes already read from it, then reads on."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix
        self._replaying = False  # a task is taking from the prefix (the stream's own
        # receive_some refuses a second receiver by itself)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._prefix:
            return await self.stream.receive_some(max_bytes)
        if self._replaying:
            raise trio.BusyResourceError("another task is already receiving")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self._replaying = True
        try:
            await trio.lowlevel.checkpoint()
        finally:
            self._replaying = False
        size = len(self._prefix) if max_bytes is None else max_bytes
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._prefix = b""
        await self.stream.aclose()


class HalfCloseablePrefixedStream(PrefixedStream, trio.abc.HalfCloseableStream):
    """A ``PrefixedStream`` over a stream that can half-close (TCP, WebSocket), so that
    a lingering close can half-close it too."""

    stream: trio.abc.HalfCloseableStream

    async def send_eof(self) -> None:
        await self.stream.send_eof()


async def sniff(stream: trio.abc.Stream) -> tuple[str, trio.abc.Stream]:
    """Read until the protocol is known; the protocol and a stream that replays the bytes.

    The caller bounds the wait (a deadline around the call). Raises UnknownProtocol.
    """
    prefix = b""
    while True:
        data = await stream.receive_some(MAX_SNIFF_BYTES)
        if not data:
            raise UnknownProtocol("closed before a protocol was recognised", prefix)
        prefix += data
        protocol = detect(prefix)
        if protocol is not None:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                return protocol, HalfCloseablePrefixedStream(stream, prefix)
            return protocol, PrefixedStream(stream, prefix)

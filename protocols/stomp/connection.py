"""The server side of one STOMP connection, sans-IO (shaped like h11).

Bytes from the socket go into ``receive_data`` and come out as frames and heart-beats
that passed both the codec's checks and the connection-level rules; frames to send go
into ``send`` and come out of ``data_to_send``. The CONNECT (or STOMP) frame sets the
session's ``version`` and ``heart_beat`` as it is received; the caller then checks
the credentials and sends ``connected_frame()``, or an ERROR and closes.

Section names refer to the STOMP 1.2 specification.
"""

from collections.abc import Iterable

from .codec import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_LENGTH,
    DEFAULT_MAX_HEADERS,
    FrameParser,
    encode_frame,
    negotiate_heart_beat,
    negotiate_version,
    parse_heart_beat,
)
from .errors import ProtocolError, StompError, UnsupportedVersion
from .frames import (
    CLIENT_COMMANDS,
    SERVER_COMMANDS,
    SUPPORTED_VERSIONS,
    V1_0,
    V1_1,
    V1_2,
    Event,
    Frame,
    Headers,
)

_CONNECT_COMMANDS = frozenset(("CONNECT", "STOMP"))

# Connection states.
AWAIT_CONNECT = "await CONNECT"
CONNECTED = "connected"  # the CONNECT (or STOMP) frame is in: version and heart-beat set
DISCONNECTED = "disconnected"  # DISCONNECT came: later bytes are ignored
FAILED = "failed"  # the client broke the protocol: every later call raises

# The client frames each state takes, and the state after them [Connecting]. A frame not
# here is a protocol error (server frames from a client are refused before the table).
TRANSITIONS: dict[tuple[str, str], str] = {
    **{(AWAIT_CONNECT, command): CONNECTED for command in _CONNECT_COMMANDS},
    **{(CONNECTED, command): CONNECTED
       for command in CLIENT_COMMANDS - _CONNECT_COMMANDS - {"DISCONNECT"}},
    (CONNECTED, "DISCONNECT"): DISCONNECTED,
}

# "Frames and Headers": headers a client frame must carry, per version. UNSUBSCRIBE in
# 1.0 needs an id or a destination (checked apart); NACK does not exist in 1.0.
_TRANSACTION = ("transaction",)
_REQUIRED_HEADERS: dict[str, dict[str, tuple[str, ...]]] = {
    V1_0: {
        "SEND": ("destination",),
        "SUBSCRIBE": ("destination",),
        "ACK": ("message-id",),
        "BEGIN": _TRANSACTION,
        "COMMIT": _TRANSACTION,
        "ABORT": _TRANSACTION,
    },
    V1_1: {
        "SEND": ("destination",),
        "SUBSCRIBE": ("destination", "id"),
        "UNSUBSCRIBE": ("id",),
        "ACK": ("message-id", "subscription"),
        "NACK": ("message-id", "subscription"),
        "BEGIN": _TRANSACTION,
        "COMMIT": _TRANSACTION,
        "ABORT": _TRANSACTION,
    },
    V1_2: {
        "SEND": ("destination",),
        "SUBSCRIBE": ("destination", "id"),
        "UNSUBSCRIBE": ("id",),
        "ACK": ("id",),
        "NACK": ("id",),
        "BEGIN": _TRANSACTION,
        "COMMIT": _TRANSACTION,
        "ABORT": _TRANSACTION,
    },
}
# "SUBSCRIBE ack Header"; client-individual came with 1.1.
_ACK_MODES = {
    V1_0: frozenset(("auto", "client")),
    V1_1: frozenset(("auto", "client", "client-individual")),
    V1_2: frozenset(("auto", "client", "client-individual")),
}


class ServerConnection:
    """Protocol state of one client connection, as seen by the server.

    ``versions`` are the versions the server speaks; ``heart_beat`` is the server's
    (sx, sy) in milliseconds, as it goes into the CONNECTED frame. With
    ``min_send_heart_beat`` (ms) the server follows a client that wants beats more often
    than every sx ms: it offers the client's cy instead, but not below that floor.
    """

    def __init__(
        self,
        *,
        versions: Iterable[str] = SUPPORTED_VERSIONS,
        heart_beat: tuple[int, int] = (0, 0),
        min_send_heart_beat: int | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_header_length: int = DEFAULT_MAX_HEADER_LENGTH,
    ) -> None:
        wanted = frozenset(versions)
        if not wanted or not wanted <= frozenset(SUPPORTED_VERSIONS):
            raise ValueError(f"versions must be a non-empty subset of {SUPPORTED_VERSIONS}")
        self.versions = tuple(v for v in SUPPORTED_VERSIONS if v in wanted)
        self.server_heart_beat = heart_beat
        self.min_send_heart_beat = min_send_heart_beat
        self.offered_heart_beat = heart_beat  # the CONNECTED's, set by the CONNECT
        self._parser = FrameParser(
            max_frame_size, max_headers, max_header_length, versions=self.versions
        )
        self._outgoing = bytearray()
        self.version: str | None = None  # set by the CONNECT
        self.heart_beat = (0, 0)  # (send_ms, receive_ms) negotiated by the CONNECT
        self.state = AWAIT_CONNECT
        self._pending_error: StompError | None = None  # see receive_data

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse ``data`` and return the complete frames and heart-beats it yields.

        Raises a StompError subclass when the client breaks the protocol; the caller
        sends ``error.to_frame()`` and closes, and later calls raise ProtocolError.
        When good frames come before the fault in the same ``data``, they are returned
        and the error waits (``error_pending``) for the next call, which raises it: the
        caller answers them first (a CONNECT gets its CONNECTED, then the ERROR).
        After a DISCONNECT, later bytes are ignored.
        """
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            self.state = FAILED
            raise error
        if self.state is FAILED:
            raise ProtocolError("the connection already failed")
        if self.state is DISCONNECTED:
            return []
        try:
            events = self._check(self._parser.feed(data))
            pending = self._parser.pending_command
            if pending is not None and self.state is not DISCONNECTED and not self.error_pending:
                # Refuse a frame from its command line rather than buffer its body.
                try:
                    self._check_command(pending, None)
                except StompError as exc:
                    self._hold(exc, events)
            return events
        except StompError:
            self.state = FAILED
            raise

    @property
    def error_pending(self) -> bool:
        """A fault follows the frames the last ``receive_data`` returned."""
        return self._pending_error is not None or self._parser.error_pending

    def _hold(self, exc: StompError, answered: list[Event]) -> None:
        """Keep ``exc`` for the next call if frames before it are to be answered first;
        raise it now if there are none."""
        if not any(isinstance(event, Frame) for event in answered):
            raise exc
        self._pending_error = exc

    def _check(self, events: list[Event]) -> list[Event]:
        for i, event in enumerate(events):
            if not isinstance(event, Frame):
                continue
            command = event.command
            receipt = event.get("receipt")
            try:
                after = self._check_command(command, receipt)
                if command in _CONNECT_COMMANDS:
                    self._connect(event)
                else:
                    version = self.version
                    assert version is not None  # the table saw to it
                    self._check_headers(event, version, receipt)
            except StompError as exc:
                self._hold(exc, events[:i])
                return events[:i]
            self.state = after
            if after is DISCONNECTED:
                return events[: i + 1]
        return events

    def _check_command(self, command: str, receipt: str | None) -> str:
        """The state after a client frame ``command``; ProtocolError if it may not come."""
        if command in SERVER_COMMANDS:
            raise ProtocolError(f"{command} is sent only by servers", receipt_id=receipt)
        after = TRANSITIONS.get((self.state, command))
        if after is None:
            if self.state is AWAIT_CONNECT:
                raise ProtocolError(
                    f"operation before CONNECT: {command} as the first frame [Connecting]",
                    receipt_id=receipt,
                )
            raise ProtocolError(
                f"second {command} on one connection [Connecting]", receipt_id=receipt
            )
        if command == "NACK" and self.version == V1_0:
            raise ProtocolError("NACK is not part of STOMP 1.0 [NACK]", receipt_id=receipt)
        return after

    def _connect(self, frame: Frame) -> None:
        accept = frame.get("accept-version")
        version = negotiate_version(accept, self.versions)
        if version is None:
            raise UnsupportedVersion(
                f"no common STOMP version: the client accepts {accept!r}, the server "
                f"supports {' '.join(self.versions)} [Protocol Negotiation]",
                supported=self.versions,
            )
        if frame.body and version != V1_0:
            raise ProtocolError(f"{frame.command} frame must not have a body [Body]")
        client = parse_heart_beat(frame.get("heart-beat")) if version != V1_0 else (0, 0)
        self.version = self._parser.version = version
        sx, sy = self.server_heart_beat
        cy = client[1]
        if self.min_send_heart_beat is not None and sx and cy:
            sx = min(sx, max(self.min_send_heart_beat, cy))
        self.offered_heart_beat = (sx, sy)
        self.heart_beat = negotiate_heart_beat(client, self.offered_heart_beat)

    def _check_headers(self, frame: Frame, version: str, receipt: str | None) -> None:
        command = frame.command
        names = {name for name, _ in frame.headers}
        for name in _REQUIRED_HEADERS[version].get(command, ()):
            if name not in names:
                raise ProtocolError(
                    f"{command} frame without the required {name!r} header [Frames and Headers]",
                    receipt_id=receipt,
                )
        if command == "UNSUBSCRIBE" and version == V1_0 and not names & {"id", "destination"}:
            raise ProtocolError(
                "UNSUBSCRIBE frame needs an 'id' or a 'destination' header (STOMP 1.0)",
                receipt_id=receipt,
            )
        if command == "SUBSCRIBE":
            ack = frame.get("ack", "auto")
            if ack not in _ACK_MODES[version]:
                raise ProtocolError(
                    f"SUBSCRIBE with invalid ack mode {ack[:40]!r} [SUBSCRIBE ack Header]",
                    receipt_id=receipt,
                )
        if frame.body and command != "SEND" and version != V1_0:
            raise ProtocolError(f"{command} frame must not have a body [Body]", receipt_id=receipt)

    def connected_frame(
        self, *, session: str | None = None, server: str | None = None, headers: Headers = ()
    ) -> Frame:
        """The CONNECTED frame accepting the CONNECT: version and heart-beat (1.1+),
        then ``session``, ``server`` and ``headers`` when given.
        """
        if self.version is None:
            raise RuntimeError("no CONNECT received yet")
        out: list[tuple[str, str]] = []
        if self.version != V1_0:
            sx, sy = self.offered_heart_beat
            out += (("version", self.version), ("heart-beat", f"{sx},{sy}"))
        if session is not None:
            out.append(("session", session))
        if server is not None:
            out.append(("server", server))
        out += headers
        return Frame("CONNECTED", tuple(out))

    def send(self, frame: Frame) -> None:
        """Queue ``frame``, encoded at the session's version (1.2 before the CONNECT)."""
        self._outgoing += encode_frame(frame, self.version or V1_2)

    def send_bytes(self, data: bytes) -> None:
        """Queue bytes already encoded (e.g. by ``encode_message``)."""
        self._outgoing += data

    def send_heart_beat(self) -> None:
        """Queue a heart-beat (one EOL)."""
        self._outgoing += b"\n"

    def data_to_send(self) -> bytes:
        """Return everything queued so far and clear the queue."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    @property
    def pending_bytes(self) -> int:
        """Number of bytes queued and not yet taken by ``data_to_send``."""
        return len(self._outgoing)

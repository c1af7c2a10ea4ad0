"""The server side of one AMQP 0-9-1 connection, sans-IO (shaped like h11).

Bytes from the socket go into ``receive_data``; ``next_event`` then hands out, one at a
time and in order, what the broker has to act on: the connection-level methods are
answered here (connection.start, tune, open-ok, close-ok, channel.open-ok and
channel.close-ok go straight into the output), and only their meaning comes out
(``LoginRequested``, ``Opened``, ``ChannelOpened``, ...); methods on an open channel
come out as the parser's ``MethodFrame`` / ``Content``. Everything the broker sends goes
through ``send`` / ``send_method`` and comes out of ``data_to_send``, in order.

Rules kept here (0-9-1 sections 2.2.4, 4.2.2, 4.2.3 and RabbitMQ's behaviour):

- The handshake follows ``TRANSITIONS``: header, start / start-ok, the login (the
  connection pauses at ``LoginRequested`` until ``accept_login`` or ``refuse_login``),
  tune / tune-ok (the client may lower channel_max and frame_max, never raise them;
  frame_max at least 4096), open (virtual host ``/`` only). Any other method is 503
  COMMAND_INVALID; a method on a channel before open too.
- Channels: channel.open on a new number up to channel_max; a second channel.open,
  or another method on a channel that is not open, is 504 CHANNEL_ERROR. After our
  channel.close (``close_channel``) a channel takes only close / close-ok. A close (or
  close-ok) for a channel that is not open is answered (or ignored), not an error.
- After our connection.close (``close``, or a fault: the reply code goes out with it,
  and the frames already read after the faulty one are dropped) only close / close-ok
  count; a stream that fails to parse is ignored from then on.
- A wrong protocol header is answered with ours; the connection is then over.
"""

from dataclasses import dataclass
from typing import cast

from .codec import FrameParser, encode_method
from .constants import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_MIN_SIZE,
    NOT_ALLOWED,
    PROTOCOL_HEADER,
    REPLY_SUCCESS,
)
from .errors import AMQPError, ProtocolHeaderMismatch
from .events import Content, Heartbeat, MethodFrame, ProtocolHeader
from .methods import (
    ChannelClose,
    ChannelCloseOk,
    ChannelOpen,
    ChannelOpenOk,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionOpen,
    ConnectionOpenOk,
    ConnectionStart,
    ConnectionStartOk,
    ConnectionTune,
    ConnectionTuneOk,
    Method,
)
from .sasl import MECHANISMS, sasl_credentials

VIRTUAL_HOST = "/"

# Connection states.
AWAIT_HEADER = "await header"
AWAIT_START_OK = "await start-ok"
AWAIT_LOGIN = "await login"  # start-ok arrived: the broker checks the credentials
AWAIT_TUNE_OK = "await tune-ok"
AWAIT_OPEN = "await open"
OPEN = "open"
CLOSING = "closing"  # we sent connection.close: only close / close-ok count
CLOSED = "closed"

# What may happen in each state, and the state it leads to. Methods are the client's;
# "accept" / "refuse" are the broker's login decision, "close" its connection.close
# (or a fault). What is not here is COMMAND_INVALID (ignored while CLOSING).
TRANSITIONS: dict[tuple[str, type | str], str] = {
    (AWAIT_HEADER, ProtocolHeader): AWAIT_START_OK,
    (AWAIT_HEADER, "mismatch"): CLOSED,  # a wrong protocol header: ours goes back
    (AWAIT_START_OK, ConnectionStartOk): AWAIT_LOGIN,
    (AWAIT_LOGIN, "accept"): AWAIT_TUNE_OK,
    (AWAIT_LOGIN, "refuse"): CLOSING,
    (AWAIT_TUNE_OK, ConnectionTuneOk): AWAIT_OPEN,
    (AWAIT_OPEN, ConnectionOpen): OPEN,
    **{(state, ConnectionClose): CLOSED
       for state in (AWAIT_START_OK, AWAIT_TUNE_OK, AWAIT_OPEN, OPEN, CLOSING)},
    (CLOSING, ConnectionCloseOk): CLOSED,
    # From AWAIT_HEADER: a bad frame in the read that brought the header.
    **{(state, "close"): CLOSING
       for state in (AWAIT_HEADER, AWAIT_START_OK, AWAIT_LOGIN, AWAIT_TUNE_OK, AWAIT_OPEN,
                     OPEN, CLOSING)},
}
# The method each handshake state waits for (named in COMMAND_INVALID's reply text).
EXPECTED: dict[str, type[Method]] = {
    AWAIT_START_OK: ConnectionStartOk, AWAIT_TUNE_OK: ConnectionTuneOk,
    AWAIT_OPEN: ConnectionOpen,
}

# Channel states.
CHANNEL_OPEN = "open"
CHANNEL_CLOSING = "closing"  # we sent channel.close: only close / close-ok count
_CHANNEL_CONTROL = frozenset((ChannelOpen, ChannelClose, ChannelCloseOk))

_REPLY_NAMES = {501: "FRAME_ERROR", 502: "SYNTAX_ERROR", 503: "COMMAND_INVALID",
                504: "CHANNEL_ERROR", 505: "UNEXPECTED_FRAME", 540: "NOT_IMPLEMENTED",
                311: "CONTENT_TOO_LARGE", REPLY_SUCCESS: "OK"}


def reply_text(code: int, text: str) -> str:
    """connection.close's reply-text for a codec error: ``NAME - text``."""
    return f"{_REPLY_NAMES.get(code, 'ERROR')} - {text}"


# -- what next_event returns ----------------------------------------------------------------

class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Marker("NEED_DATA")  # every frame read so far is handled
PAUSED = _Marker("PAUSED")  # a login is being checked: accept_login or refuse_login first


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """start-ok: check these credentials. ``user`` is None for an unknown mechanism or
    an unreadable response (refuse those like a wrong password)."""

    user: str | None
    password: str | None
    mechanism: str
    client_name: str  # the client's ``connection_name`` property, or ""


@dataclass(frozen=True, slots=True)
class Opened:
    """connection.open was accepted (open-ok is sent): channels may open now."""


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The client closed ``channel`` (close-ok is sent): its resources go."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelCloseConfirmed:
    """The client confirmed our channel.close: the number is free again."""

    channel: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over: the client closed it (``by_client``; close-ok is sent),
    or answered our connection.close."""

    by_client: bool
    reply_code: int
    reply_text: str


@dataclass(frozen=True, slots=True)
class Fault:
    """The client broke the protocol: connection.close with ``code`` is sent."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class HeaderMismatch:
    """The stream did not start with ``AMQP 0 0 9 1``: our header is sent; the
    connection is over (no connection.close)."""

    text: str


@dataclass(frozen=True, slots=True)
class _ParseFailure:
    error: AMQPError


class _Refusal(Exception):
    """A connection error found while handling a frame."""

    def __init__(self, code: int, text: str, method: Method) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.method = method


# -- the connection -------------------------------------------------------------------------

class AMQPConnection:
    """Protocol state of one client connection, as seen by the server.

    ``start`` and ``tune`` are what the server offers (its connection.start and
    connection.tune); ``max_body_size`` bounds a content's body."""

    __slots__ = (
        "_channels", "_frames", "_index", "_mechanism", "_out", "_parser", "_start",
        "_tune", "channel_max", "frame_max", "heartbeat", "pending_bytes", "state",
    )

    def __init__(self, start: ConnectionStart, tune: ConnectionTune,
                 max_body_size: int) -> None:
        self._start = start
        self._tune = tune
        self._parser: FrameParser | None = FrameParser(frame_max=tune.frame_max,
                                                       max_body_size=max_body_size)
        self._frames: list[object] = []  # parsed, not yet handed out
        self._index = 0
        self._out: list[bytes] = []
        self._channels: dict[int, str] = {}
        self._mechanism = ""
        self.pending_bytes = 0  # bytes in the output, not yet taken by data_to_send
        self.state = AWAIT_HEADER
        self.channel_max = tune.channel_max
        self.frame_max = tune.frame_max
        self.heartbeat = 0  # seconds, once tune-ok is in

    # -- output ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue encoded frames (deliveries, heartbeats) for the client."""
        self._out.append(data)
        self.pending_bytes += len(data)

    def send_method(self, channel: int, method: Method) -> None:
        data = encode_method(channel, method)
        self._out.append(data)
        self.pending_bytes += len(data)

    def data_to_send(self) -> bytes:
        """Everything queued so far, in order; the output is empty afterwards."""
        data = b"".join(self._out)
        self._out.clear()
        self.pending_bytes = 0
        return data

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client; ``next_event`` hands out what they complete."""
        if self._parser is None:
            return  # the stream failed to parse: wait for the close timeout
        try:
            frames = self._parser.receive_data(data)
        except ProtocolHeaderMismatch as exc:
            self._frames.append(HeaderMismatch(exc.text))
            return
        except AMQPError as exc:
            self._parser = None
            self._frames.append(_ParseFailure(exc))
            return
        if self._index:
            del self._frames[:self._index]
            self._index = 0
        self._frames.extend(frames)

    def next_event(self) -> object:
        """The next thing to act on, ``PAUSED`` while a login is being checked, or
        ``NEED_DATA`` when every frame read so far is handled."""
        frames = self._frames
        while True:
            if self.state is AWAIT_LOGIN:
                return PAUSED
            index = self._index
            if index >= len(frames):
                frames.clear()
                self._index = 0
                return NEED_DATA
            self._index = index + 1
            frame = frames[index]
            kind = type(frame)
            # The common case first: a method on an open channel of an open connection.
            if kind is MethodFrame or kind is Content:
                number = frame.channel  # type: ignore[attr-defined]
                if (number and self.state is OPEN
                        and self._channels.get(number) is CHANNEL_OPEN
                        and type(frame.method) not in _CHANNEL_CONTROL):  # type: ignore[attr-defined]
                    return frame
            if self.state is CLOSED:
                continue
            try:
                event = self._handle(frame)
            except _Refusal as refusal:
                method = refusal.method
                return self.fault(refusal.code, refusal.text, method.CLASS_ID,
                                  method.METHOD_ID)
            if event is not None:
                return event

    # -- the broker's decisions -----------------------------------------------------------

    def accept_login(self) -> None:
        """The start-ok's credentials are good: connection.tune goes out."""
        self.state = TRANSITIONS[(self.state, "accept")]
        self.send_method(0, self._tune)

    def refuse_login(self) -> None:
        """The credentials are refused: connection.close 403 (never saying why)."""
        self.state = TRANSITIONS[(self.state, "refuse")]
        self.send_method(0, ConnectionClose(
            reply_code=ACCESS_REFUSED, reply_text="ACCESS_REFUSED - Login was refused using "
            f"authentication mechanism {self._mechanism}", class_id=0, method_id=0))

    def close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Send connection.close; from now on only close-ok (or close) counts."""
        after = TRANSITIONS.get((self.state, "close"))
        if after is None:
            return  # the connection is over: nothing more goes out
        self.state = after
        self.send_method(0, ConnectionClose(reply_code=code, reply_text=text[:255],
                                            class_id=class_id, method_id=method_id))

    def fault(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> Fault:
        """A connection error: connection.close, and the frames already read after the
        one at fault are dropped."""
        self.close(code, text, class_id, method_id)
        self._frames.clear()
        self._index = 0
        return Fault(code, text)

    def close_channel(self, channel: int, method: ChannelClose) -> None:
        """Send channel.close; the channel then takes only close / close-ok."""
        self._channels[channel] = CHANNEL_CLOSING
        self.send_method(channel, method)

    def channel_closing(self, channel: int) -> bool:
        return self._channels.get(channel) is not CHANNEL_OPEN

    def connection_lost(self) -> None:
        """The transport is gone: nothing more is read or sent."""
        self.state = CLOSED

    # -- frames ---------------------------------------------------------------------------

    def _handle(self, frame: object) -> object:
        kind = type(frame)
        if kind is Heartbeat:
            return None
        if kind is ProtocolHeader:
            self.state = TRANSITIONS[(self.state, ProtocolHeader)]
            self.send_method(0, self._start)
            return None
        if kind is HeaderMismatch:
            self.send(PROTOCOL_HEADER)
            self.state = TRANSITIONS[(self.state, "mismatch")]
            return frame
        if kind is _ParseFailure:
            error = frame.error  # type: ignore[attr-defined]
            if self.state is CLOSING:  # one connection.close is enough
                return None
            return self.fault(error.reply_code, reply_text(error.reply_code, error.text),
                              error.class_id, error.method_id)
        number = frame.channel  # type: ignore[attr-defined]
        method = frame.method  # type: ignore[attr-defined]
        if self.state is CLOSING:
            return self._closing(method)
        if number == 0:
            return self._connection_method(method)
        if self.state is not OPEN:
            raise _Refusal(COMMAND_INVALID, f"COMMAND_INVALID - expected "
                           f"'{EXPECTED[self.state].NAME}'", method)
        return self._channel_frame(number, cast("MethodFrame | Content", frame))

    def _closing(self, method: Method) -> object:
        """After our connection.close only close / close-ok count (0-9-1 2.2.4)."""
        after = TRANSITIONS.get((CLOSING, type(method)))
        if after is None:
            return None
        self.state = after
        if isinstance(method, ConnectionClose):
            self.send_method(0, ConnectionCloseOk())
        return Closed(False, getattr(method, "reply_code", REPLY_SUCCESS),
                      getattr(method, "reply_text", ""))

    def _connection_method(self, method: Method) -> object:
        after = TRANSITIONS.get((self.state, type(method)))
        if after is None:
            expected = EXPECTED.get(self.state)
            if expected is not None:
                raise _Refusal(COMMAND_INVALID, f"COMMAND_INVALID - expected "
                               f"'{expected.NAME}'", method)
            # close-ok without our close, or any other connection method now
            raise _Refusal(COMMAND_INVALID, f"COMMAND_INVALID - unexpected '{method.NAME}'",
                           method)
        if isinstance(method, ConnectionClose):
            self.state = after
            self.send_method(0, ConnectionCloseOk())
            return Closed(True, method.reply_code, method.reply_text)
        event: object
        if isinstance(method, ConnectionStartOk):
            event = _login_request(method)
            self._mechanism = event.mechanism
        elif isinstance(method, ConnectionTuneOk):
            self._negotiate(method)
            event = None
        else:  # ConnectionOpen
            if method.virtual_host != VIRTUAL_HOST:  # type: ignore[attr-defined]
                raise _Refusal(NOT_ALLOWED, f"NOT_ALLOWED - vhost "
                               f"{method.virtual_host[:100]} not found", method)  # type: ignore[attr-defined]
            self.send_method(0, ConnectionOpenOk())
            event = Opened()
        self.state = after
        return event

    def _negotiate(self, tune_ok: ConnectionTuneOk) -> None:
        """channel_max, frame_max and heartbeat from the client's tune-ok: it may lower
        what we proposed, never raise it (0 means "no limit" and takes ours); its
        heartbeat answer is taken as it is (0 turns heartbeats off)."""
        ours = self._tune
        channel_max = min(tune_ok.channel_max or ours.channel_max, ours.channel_max)
        frame_max = tune_ok.frame_max or ours.frame_max
        if frame_max < FRAME_MIN_SIZE:  # every peer must accept frames this large (4.2.3)
            raise _Refusal(NOT_ALLOWED, f"NOT_ALLOWED - frame_max {frame_max} is below "
                           f"{FRAME_MIN_SIZE}", tune_ok)
        self.channel_max = channel_max
        self.frame_max = min(frame_max, ours.frame_max)
        self.heartbeat = tune_ok.heartbeat
        assert self._parser is not None  # a parsed tune-ok means the parser is alive
        self._parser.frame_max = self.frame_max

    def _channel_frame(self, number: int, frame: MethodFrame | Content) -> object:
        method = frame.method
        kind = type(method)
        state = self._channels.get(number)
        if state is None:
            # A close crossing ours, or racing the end of the channel: answered or ignored
            # (as RabbitMQ does), not a connection error.
            if kind is ChannelClose:
                self.send_method(number, ChannelCloseOk())
                return None
            if kind is ChannelCloseOk:
                return None
            if kind is not ChannelOpen:
                raise _Refusal(CHANNEL_ERROR, f"CHANNEL_ERROR - expected 'channel.open' on "
                               f"channel {number}", method)
            if number > self.channel_max:
                raise _Refusal(CHANNEL_ERROR, f"CHANNEL_ERROR - channel {number} above "
                               f"channel_max {self.channel_max}", method)
            self._channels[number] = CHANNEL_OPEN
            self.send_method(number, ChannelOpenOk())
            return ChannelOpened(number)
        if kind is ChannelOpen:
            raise _Refusal(CHANNEL_ERROR, f"CHANNEL_ERROR - second 'channel.open' on channel "
                           f"{number}", method)
        if kind is ChannelClose:
            del self._channels[number]
            self.send_method(number, ChannelCloseOk())
            return ChannelClosed(number)
        if kind is ChannelCloseOk:
            if state is CHANNEL_CLOSING:
                del self._channels[number]
                return ChannelCloseConfirmed(number)
            raise _Refusal(CHANNEL_ERROR, "CHANNEL_ERROR - unexpected 'channel.close-ok'",
                           method)
        return None  # closing: only close / close-ok count


def _login_request(start_ok: ConnectionStartOk) -> LoginRequested:
    credentials = None
    if start_ok.mechanism.encode() in MECHANISMS.split():
        credentials = sasl_credentials(start_ok.mechanism, start_ok.response)
    user, password = credentials or (None, None)
    name = start_ok.client_properties.get("connection_name")
    return LoginRequested(user, password, start_ok.mechanism[:40],
                          name if isinstance(name, str) else "")

"""Sans-IO AMQP 0-9-1 framing: bytes to events and methods to bytes.

Section numbers refer to the AMQP 0-9-1 specification (4.2 "Framing", 4.2.6 "Content
Framing"). The parser is incremental: any split of a byte stream yields the same
events, or the same error, and the work is linear in the input (a frame is looked at
once, when it is complete; a partial frame costs one 7-byte header read per chunk).

Rules the parser enforces, each fatal to the connection (``AMQPError.reply_code``):

* the stream starts with ``AMQP 0 0 9 1`` (server side), else ProtocolHeaderMismatch;
* frame type is 1, 2, 3 or 8, the frame ends with 0xCE and is at most ``frame_max``
  bytes (payload + 8): else 501 FRAME_ERROR;
* heartbeats have channel 0 and no payload (501);
* connection.* methods travel on channel 0 (503 COMMAND_INVALID), all others on a
  non-zero channel (504 CHANNEL_ERROR);
* unknown methods, and methods only the other side sends, are 503; methods of the
  spec this codec does not carry (access.request, connection.update-secret) are 540;
* arguments decode exactly (502 SYNTAX_ERROR);
* a content-bearing method is followed on its channel by one content header (of the
  same class: 501) and body frames adding up to its body_size; anything else on that
  channel meanwhile, a header or body with no method before it, or a body longer
  than announced, is 505 UNEXPECTED_FRAME. Frames of other channels may come between.
  A body_size of 0 means no body frame. A body_size above ``max_body_size`` is 311.
"""

import struct
from typing import Any

from .constants import (
    DEFAULT_FRAME_MAX,
    DEFAULT_MAX_BODY_SIZE,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    FRAME_OVERHEAD,
    PROTOCOL_HEADER,
)
from .errors import (
    AMQPError,
    ChannelError,
    CommandInvalid,
    ContentTooLarge,
    FrameError,
    MalformedData,
    NotImplementedMethod,
    ProtocolHeaderMismatch,
    UnexpectedFrame,
)
from .events import HEARTBEAT, PROTOCOL_HEADER_EVENT, Content, Event, MethodFrame
from .methods import METHODS, NOT_IMPLEMENTED, Method, decode_arguments, encode_arguments

_FRAME_HEAD = struct.Struct(">BHI")  # type, channel, payload size
_IDS = struct.Struct(">HH")  # class id, method id
_CONTENT_HEAD = struct.Struct(">HHQ")  # class id, weight, body size
_METHOD_HEAD = struct.Struct(">BHIHH")  # frame head + class id, method id
# Frame end of the previous frame, then a content header frame up to its properties.
_END_HEADER_HEAD = struct.Struct(">BBHIHHQ")
_END_BODY_HEAD = struct.Struct(">BBHI")  # frame end, then a body frame head
_DELIVER_TAIL = struct.Struct(">QBB")  # delivery tag, redelivered, exchange length
_MAX_FRAME_MAX = 0xFFFFFFFF + FRAME_OVERHEAD
_END = b"\xce"
_LENGTH_OCTETS = [bytes((n,)) for n in range(256)]

_CONNECTION_CLASS = 10


class _Pending:
    """A content being assembled on one channel."""

    __slots__ = ("body_size", "method", "parts", "properties", "received")

    def __init__(self, method: Method) -> None:
        self.method = method
        self.properties: bytes | None = None  # None until the content header came
        self.body_size = 0
        self.received = 0
        self.parts: list[bytes] = []


def _check_frame_max(value: int) -> int:
    if value == 0:
        return _MAX_FRAME_MAX  # 0: no limit beyond the 32-bit size field (4.2.3)
    if not FRAME_MIN_SIZE <= value <= 0xFFFFFFFF:
        raise ValueError(f"frame_max {value} is below {FRAME_MIN_SIZE} or above 2**32-1")
    return value


class FrameParser:
    """Incremental parser: feed it bytes as they arrive, get events back.

    The default parses what a client sends (``client_side=False``): it expects the
    protocol header first and accepts only methods a client may send. With
    ``client_side=True`` it parses what a server sends: no header, server methods.
    ``frame_max`` (settable, e.g. after connection.tune-ok) bounds every frame;
    ``max_body_size`` bounds a content's announced body size. After an error the
    stream is dead and every later ``receive_data`` raises FrameError.
    """

    __slots__ = (
        "_buffer",
        "_failed",
        "_frame_max",
        "_header_pending",
        "_methods",
        "_pending",
        "max_body_size",
    )

    def __init__(
        self,
        *,
        frame_max: int = DEFAULT_FRAME_MAX,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        client_side: bool = False,
    ) -> None:
        self._frame_max = _check_frame_max(frame_max)
        self.max_body_size = max_body_size
        self._header_pending = not client_side
        self._methods = _SERVER_SENT if client_side else _CLIENT_SENT
        self._buffer = bytearray()
        self._failed = False
        self._pending: dict[int, _Pending] = {}

    @property
    def frame_max(self) -> int:
        """The largest frame accepted, overhead included; 0 in the setter: no limit."""
        return self._frame_max

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        self._frame_max = _check_frame_max(value)

    def receive_data(self, data: bytes) -> list[Event]:
        """Add ``data`` to the stream and return the events it completes, in order.

        Raises an AMQPError subclass when the peer breaks the protocol.
        """
        if self._failed:
            raise FrameError("the byte stream already failed to parse")
        buf = self._buffer
        buf += data
        try:
            events, consumed = self._parse(buf)
        except AMQPError:
            self._failed = True
            self._buffer = bytearray()
            self._pending.clear()
            raise
        del buf[:consumed]
        return events

    def _parse(self, buf: bytearray) -> tuple[list[Event], int]:
        events: list[Event] = []
        size = len(buf)
        pos = 0
        if self._header_pending:
            if not self._header(buf, size):
                return events, 0
            events.append(PROTOCOL_HEADER_EVENT)
            pos = 8
        limit = self._frame_max - FRAME_OVERHEAD
        unpack_head = _FRAME_HEAD.unpack_from
        while size - pos >= 7:
            ftype, channel, length = unpack_head(buf, pos)
            if length > limit:
                raise FrameError(
                    f"frame of {length + FRAME_OVERHEAD} bytes exceeds frame_max "
                    f"{self._frame_max}"
                )
            if ftype not in _FRAME_TYPES:
                raise FrameError(f"unknown frame type {ftype}")
            start = pos + 7
            end = start + length
            if end >= size:
                break  # the frame-end octet has not arrived yet
            if buf[end] != FRAME_END:
                raise FrameError(f"frame end {buf[end]:#04x} instead of 0xce")
            if ftype == FRAME_METHOD:
                self._method(buf, start, end, channel, events)
            elif ftype == FRAME_BODY:
                self._body(buf, start, end, channel, events)
            elif ftype == FRAME_HEADER:
                self._content_header(buf, start, end, channel, events)
            else:
                if channel != 0:
                    raise FrameError(f"heartbeat frame on channel {channel}")
                if length:
                    raise FrameError("heartbeat frame with a payload")
                events.append(HEARTBEAT)
            pos = end + 1
        return events, pos

    def _header(self, buf: bytearray, size: int) -> bool:
        # Compare what arrived so far, so garbage is refused at its first byte.
        n = min(size, 8)
        if buf[:n] != PROTOCOL_HEADER[:n]:
            raise ProtocolHeaderMismatch(
                f"protocol header {bytes(buf[:8])!r} is not AMQP 0-9-1",
                received=bytes(buf[:8]),
            )
        if size < 8:
            return False
        self._header_pending = False
        return True

    def _method(
        self, buf: bytearray, start: int, end: int, channel: int, events: list[Event]
    ) -> None:
        if end - start < 4:
            raise FrameError(f"method frame of {end - start} bytes has no method id")
        class_id, method_id = _IDS.unpack_from(buf, start)
        key = class_id << 16 | method_id
        cls = self._methods.get(key)
        if cls is None:
            error = NotImplementedMethod if key in NOT_IMPLEMENTED else CommandInvalid
            known = METHODS.get(key)
            what = "unknown method" if known is None else f"{known.NAME} from the wrong peer"
            raise error(
                f"{what} ({class_id}, {method_id})", class_id=class_id, method_id=method_id
            )
        if class_id == _CONNECTION_CLASS:
            if channel != 0:
                raise CommandInvalid(
                    f"{cls.NAME} on channel {channel}", class_id=class_id, method_id=method_id
                )
        elif channel == 0:
            raise ChannelError(f"{cls.NAME} on channel 0", class_id=class_id, method_id=method_id)
        if channel in self._pending:
            pending = self._pending[channel].method
            raise UnexpectedFrame(
                f"{cls.NAME} on channel {channel} while the content of {pending.NAME} is "
                "incomplete",
                class_id=class_id,
                method_id=method_id,
            )
        try:
            method = decode_arguments(cls, buf, start + 4, end)
        except MalformedData as exc:
            raise MalformedData(
                f"{cls.NAME}: {exc.text}", class_id=class_id, method_id=method_id
            ) from None
        if cls.HAS_CONTENT:
            self._pending[channel] = _Pending(method)
        else:
            events.append(MethodFrame(channel, method))

    def _content_header(
        self, buf: bytearray, start: int, end: int, channel: int, events: list[Event]
    ) -> None:
        pending = self._pending.get(channel)
        if pending is None or pending.properties is not None:
            raise UnexpectedFrame(f"content header on channel {channel} without a method")
        method = pending.method
        if end - start < 14:
            raise _content_error(FrameError, f"content header of {end - start} bytes", method)
        class_id, _weight, body_size = _CONTENT_HEAD.unpack_from(buf, start)
        if class_id != method.CLASS_ID:
            raise _content_error(
                FrameError, f"content header of class {class_id} after {method.NAME}", method
            )
        if body_size > self.max_body_size:
            raise _content_error(
                ContentTooLarge,
                f"body of {body_size} bytes exceeds the limit {self.max_body_size}",
                method,
            )
        properties = bytes(buf[start + 12 : end])
        if body_size == 0:
            del self._pending[channel]
            events.append(Content(channel, method, 0, properties, b""))
            return
        pending.properties = properties
        pending.body_size = body_size

    def _body(
        self, buf: bytearray, start: int, end: int, channel: int, events: list[Event]
    ) -> None:
        pending = self._pending.get(channel)
        if pending is None or pending.properties is None:
            raise UnexpectedFrame(f"body frame on channel {channel} without a content header")
        received = pending.received + end - start
        if received > pending.body_size:
            raise _content_error(
                UnexpectedFrame,
                f"body of at least {received} bytes, {pending.body_size} announced",
                pending.method,
            )
        if end - start <= _SMALL:
            part = bytes(buf[start:end])
        else:  # one copy instead of two
            with memoryview(buf) as view:
                part = view[start:end].tobytes()
        if received < pending.body_size:
            pending.parts.append(part)
            pending.received = received
            return
        del self._pending[channel]
        body = b"".join((*pending.parts, part)) if pending.parts else part
        events.append(
            Content(channel, pending.method, received, pending.properties, body)
        )


_FRAME_TYPES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT))
_CLIENT_SENT = {key: cls for key, cls in METHODS.items() if cls.FROM_CLIENT}
_SERVER_SENT = {key: cls for key, cls in METHODS.items() if cls.FROM_SERVER}
_SMALL = 4096  # body frames up to this size are copied through a bytearray slice


def _content_error(error: type[AMQPError], text: str, method: Method) -> AMQPError:
    return error(text, class_id=method.CLASS_ID, method_id=method.METHOD_ID)


# --- encoding -----------------------------------------------------------------------------


def encode_method(channel: int, method: Method) -> bytes:
    """One method frame."""
    args = encode_arguments(method)
    return b"".join(
        (
            _METHOD_HEAD.pack(
                FRAME_METHOD, channel, 4 + len(args), method.CLASS_ID, method.METHOD_ID
            ),
            args,
            _END,
        )
    )


def _content_frames(
    parts: list[Any], channel: int, class_id: int, properties: bytes, body: bytes, frame_max: int
) -> bytes:
    """Append the method frame's end, the content header and the body frames to ``parts``."""
    size = len(body)
    parts.append(
        _END_HEADER_HEAD.pack(
            FRAME_END, FRAME_HEADER, channel, 12 + len(properties), class_id, 0, size
        )
    )
    parts.append(properties)
    chunk = frame_max - FRAME_OVERHEAD if frame_max else size
    if size <= chunk:
        if size:
            parts.append(_END_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel, size))
            parts.append(body)
    else:
        if chunk <= 0:
            raise ValueError(f"frame_max {frame_max} leaves no room for a body")
        with memoryview(body) as view:
            for offset in range(0, size, chunk):
                piece = view[offset : offset + chunk]
                parts.append(_END_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel, len(piece)))
                parts.append(piece)
            parts.append(_END)
            return b"".join(parts)
    parts.append(_END)
    return b"".join(parts)


def encode_content(
    channel: int, method: Method, properties: bytes, body: bytes, frame_max: int
) -> bytes:
    """A content-bearing method with its content header and body frames, as one bytes.

    ``properties`` are raw property bytes (``encode_properties`` or pass-through);
    the body is split into frames of at most ``frame_max - 8`` bytes (0: no limit),
    and an empty body gets no body frame (4.2.6).
    """
    args = encode_arguments(method)
    parts: list[Any] = [
        _METHOD_HEAD.pack(FRAME_METHOD, channel, 4 + len(args), method.CLASS_ID, method.METHOD_ID),
        args,
    ]
    return _content_frames(parts, channel, method.CLASS_ID, properties, body, frame_max)


def encode_deliver(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """basic.deliver with its content: ``encode_content(channel, BasicDeliver(...), ...)``
    without building the dataclass, for the delivery hot path."""
    tag = consumer_tag.encode()
    ex = exchange.encode()
    key = routing_key.encode()
    if len(tag) > 255 or len(ex) > 255 or len(key) > 255:
        raise ValueError("consumer tag, exchange and routing key are at most 255 bytes")
    parts: list[Any] = [
        _METHOD_HEAD.pack(FRAME_METHOD, channel, 16 + len(tag) + len(ex) + len(key), 60, 60),
        _LENGTH_OCTETS[len(tag)],
        tag,
        _DELIVER_TAIL.pack(delivery_tag, redelivered, len(ex)),
        ex,
        _LENGTH_OCTETS[len(key)],
        key,
    ]
    return _content_frames(parts, channel, 60, properties, body, frame_max)


def decode_method(payload: bytes) -> Method:
    """A method from a method frame's payload (class id, method id, arguments).

    Whatever the direction; raises CommandInvalid, NotImplementedMethod or MalformedData.
    """
    if len(payload) < 4:
        raise FrameError(f"method payload of {len(payload)} bytes has no method id")
    class_id, method_id = _IDS.unpack_from(payload, 0)
    key = class_id << 16 | method_id
    cls = METHODS.get(key)
    if cls is None:
        error = NotImplementedMethod if key in NOT_IMPLEMENTED else CommandInvalid
        raise error(
            f"unknown method ({class_id}, {method_id})", class_id=class_id, method_id=method_id
        )
    try:
        return decode_arguments(cls, payload, 4, len(payload))
    except MalformedData as exc:
        raise MalformedData(
            f"{cls.NAME}: {exc.text}", class_id=class_id, method_id=method_id
        ) from None


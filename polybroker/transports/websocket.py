"""A WebSocket connection as a ``trio.abc.Stream`` (wsproto for the framing).

Protocol adapters read and write bytes; over WebSocket those bytes are the payloads
of data messages, whatever their framing: an MQTT packet may span frames and a frame
may hold several packets (MQTT 3.1.1 section 6), and a STOMP frame may come as text.
Pings are answered as they arrive; ``aclose`` runs the closing handshake.

The opening (HTTP upgrade) handshake is in ``upgrade.py``; it hands over a wsproto
``Connection`` already past it.
"""

import contextlib
import logging
import operator

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

log = logging.getLogger("polybroker.websocket")

RECEIVE_SIZE = 65536
# Seconds ``aclose`` waits for the peer's answer to its close frame.
CLOSE_TIMEOUT = 2.0


class WebSocketStream(trio.abc.HalfCloseableStream):
    """Message payloads in, binary (or, for a peer that sends text, text) messages out.

    ``allow_text`` False is for protocols that require binary frames (MQTT,
    [MQTT-6.0.0-1]): a text message from the peer closes the connection (1003).
    Otherwise, once the peer has sent text, replies go as text when they are
    valid UTF-8, as STOMP over WebSocket clients expect.

    ``send_eof`` starts the closing handshake (a close frame, 1000) without waiting:
    the peer's data still arrives until its own close frame, which ends the stream.
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        connection: Connection,
        *,
        subprotocol: str | None = None,
        allow_text: bool = True,
        peer: str = "?",
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.transport = transport
        self.subprotocol = subprotocol
        self.peer = peer
        self._conn = connection
        self._allow_text = allow_text
        self.close_timeout = close_timeout
        self._incoming = bytearray()
        self._eof = False  # the peer's close frame (or its TCP close) has arrived
        self._closed = False  # aclose was called
        self._broken = False  # a write was interrupted: the framing is lost
        self._text_replies = False
        self._send_lock = trio.StrictFIFOLock()  # data, pong and close frames interleave
        self._sending = False
        self._receiving = False

    # -- receiving ------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket stream is closed")
            if self._incoming or self._eof:
                await trio.lowlevel.checkpoint()
            while not self._incoming and not self._eof:
                await self._receive_events()
            size = len(self._incoming) if max_bytes is None else max_bytes
            data = bytes(self._incoming[:size])
            del self._incoming[:size]
            return data
        finally:
            self._receiving = False

    async def _receive_events(self) -> None:
        data = await self.transport.receive_some(RECEIVE_SIZE)
        if not data:
            self._eof = True  # closed without a close frame (1006): an end all the same
            return
        self._conn.receive_data(bytes(data))
        for event in self._conn.events():
            await self._handle(event)
            if self._eof:
                return

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Message):
            if isinstance(event, TextMessage):
                if not self._allow_text:
                    await self._fail(CloseReason.UNSUPPORTED_DATA, "text frames are not allowed")
                    return
                self._text_replies = True
                self._incoming += event.data.encode()
            else:
                self._incoming += event.data
        elif isinstance(event, Ping):
            if self._conn.state is ConnectionState.OPEN:
                await self._send_frame(self._conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            await self._on_close(event)

    async def _on_close(self, event: CloseConnection) -> None:
        self._eof = True
        state = self._conn.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer started: answer in kind
            # If it did not wait for the answer, the end is the same.
            with contextlib.suppress(trio.BrokenResourceError):
                await self._send_frame(self._conn.send(event.response()))
        elif state is ConnectionState.OPEN:  # wsproto could not parse a frame
            await self._fail(event.code, event.reason or "malformed frame")

    async def _fail(self, code: int, reason: str) -> None:
        log.warning("websocket %s: closing (%d): %s", self.peer, code, reason)
        self._eof = True
        await self._send_frame(self._conn.send(CloseConnection(code=code, reason=reason)))

    # -- sending --------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket stream is closed")
            if self._broken or self._conn.state is not ConnectionState.OPEN:
                raise trio.BrokenResourceError("the WebSocket connection is closing")
            if not data:
                await trio.lowlevel.checkpoint()
                return
            await self._send_frame(self._conn.send(self._message(bytes(data))))
        finally:
            self._sending = False

    def _message(self, data: bytes) -> TextMessage | BytesMessage:
        if self._text_replies:
            try:
                return TextMessage(data=data.decode())
            except UnicodeDecodeError:
                pass  # binary content (a STOMP body with content-length): a binary frame
        return BytesMessage(data=data)

    async def _send_frame(self, frame: bytes) -> None:
        async with self._send_lock:
            if self._broken:
                raise trio.BrokenResourceError("an earlier write was interrupted")
            try:
                await self.transport.send_all(frame)
            except BaseException:
                # Part of a frame may be out: nothing more can be framed after it.
                self._broken = True
                raise

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket stream is closed")
            await self.transport.wait_send_all_might_not_block()
        finally:
            self._sending = False

    # -- closing --------------------------------------------------------------------------

    async def send_eof(self) -> None:
        """Send our close frame (RFC 6455 5.5.1: no data after it); read on until the
        peer's."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket stream is closed")
            if self._conn.state is not ConnectionState.OPEN or self._broken:
                await trio.lowlevel.checkpoint()
                return
            close = CloseConnection(code=CloseReason.NORMAL_CLOSURE)
            await self._send_frame(self._conn.send(close))
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Send a close frame, wait (bounded) for the peer's, then close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._conn.state is ConnectionState.OPEN and not self._broken:
                with trio.move_on_after(self.close_timeout):
                    close = CloseConnection(code=CloseReason.NORMAL_CLOSURE)
                    await self._send_frame(self._conn.send(close))
                    if not self._receiving and not self._eof:
                        await self._wait_for_close_reply()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer is gone already: nothing left to say
        finally:
            await self.transport.aclose()

    async def _wait_for_close_reply(self) -> None:
        # Data still in flight from the peer is discarded; its close frame ends the wait.
        while self._conn.state is ConnectionState.LOCAL_CLOSING:
            data = await self.transport.receive_some(RECEIVE_SIZE)
            if not data:
                return
            self._conn.receive_data(bytes(data))
            for _event in self._conn.events():
                pass

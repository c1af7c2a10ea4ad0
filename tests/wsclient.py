"""A frame-level WebSocket client (wsproto's own handshake), to see what goes on the wire."""

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
)

TIMEOUT = 5


class RawWebSocket:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    async def handshake(self, path: str = "/mqtt", subprotocols: list[str] | None = None,
                        extra_headers: list[tuple[bytes, bytes]] | None = None) -> Event:
        """AcceptConnection, or RejectConnection with the body in ``rejected_body``."""
        await self.send(Request(host="localhost", target=path, subprotocols=subprotocols or [],
                                extra_headers=extra_headers or []))
        event = await self.next_event()
        if isinstance(event, RejectConnection) and event.has_body:
            self.rejected_body = b""
            while not isinstance(part := await self.next_event(), RejectData) or \
                    not part.body_finished:
                self.rejected_body += part.data
            self.rejected_body += part.data
        return event

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self, timeout: float = TIMEOUT) -> Event:
        with trio.fail_after(timeout):
            while not self.pending:
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def close_reply(self) -> CloseConnection:
        """Wait for the server's close frame, skipping data."""
        while not isinstance(event := await self.next_event(), CloseConnection):
            pass
        return event


def accepted(event: Event) -> AcceptConnection:
    assert isinstance(event, AcceptConnection), event
    return event

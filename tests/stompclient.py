"""A bare STOMP client over any trio stream, built from the codec, for driving the broker."""

import itertools
from collections import deque

import trio
import trio.testing

from polybroker.adapters.stomp import StompClientConnection
from polybroker.broker import Broker
from polybroker.protocols.stomp import HEART_BEAT, Event, Frame, FrameParser, encode_frame

TIMEOUT = 5


class StompClient:
    def __init__(self, stream: trio.abc.Stream, server: StompClientConnection) -> None:
        self.stream = stream
        self.server = server  # the broker's side, for looking inside
        self.parser = FrameParser()
        self.version = "1.2"
        self.events: deque[Event] = deque()
        self.heart_beats = 0
        self.server_done = trio.Event()  # set when the broker's side of the connection ends
        self._markers = itertools.count()

    async def send(self, command: str, headers: dict[str, str] | None = None,
                   body: bytes = b"") -> None:
        frame = Frame(command, tuple((headers or {}).items()), body)
        await self.send_raw(encode_frame(frame, self.version))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive_event(self, timeout: float = TIMEOUT) -> Event:
        """The next frame or heart-beat; EOFError if the broker closed the connection."""
        with trio.fail_after(timeout):
            while not self.events:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("connection closed by the broker")
                self.events.extend(self.parser.feed(data))
        return self.events.popleft()

    async def receive(self, timeout: float = TIMEOUT) -> Frame:
        """The next frame (heart-beats are counted and skipped)."""
        while (event := await self.receive_event(timeout)) is HEART_BEAT:
            self.heart_beats += 1
        return event

    async def receive_until_closed(self, timeout: float = TIMEOUT) -> list[Frame]:
        """Every frame up to the broker's close (fails if the broker keeps it open)."""
        frames = []
        while True:
            try:
                frames.append(await self.receive(timeout))
            except EOFError:
                return frames

    async def connect(self, version: str | None = "1.2", command: str = "CONNECT",
                      **headers: str) -> Frame:
        pairs = {"host": "localhost"}
        if version is not None:
            pairs["accept-version"] = version
        pairs.update((name.replace("_", "-"), value) for name, value in headers.items())
        await self.send(command, pairs)
        connected = await self.receive()
        assert connected.command == "CONNECTED", connected
        self.version = connected.get("version", "1.0")
        return connected

    async def request(self, command: str, headers: dict[str, str] | None = None,
                      body: bytes = b"", *, take: bool = False) -> list[Frame]:
        """Send a frame with a receipt and wait for the RECEIPT. Frames that came before
        it are returned, and (unless ``take``) left to ``receive`` too."""
        receipt = f"r{next(self._markers)}"
        await self.send(command, {**(headers or {}), "receipt": receipt}, body)
        before = []
        while True:
            frame = await self.receive()
            if frame.command == "RECEIPT" and frame.get("receipt-id") == receipt:
                break
            assert frame.command != "ERROR", frame
            before.append(frame)
        if not take:
            self.events.extendleft(reversed(before))
        return before

    async def subscribe(self, destination: str, sub_id: str = "0", ack: str = "auto",
                        **headers: str) -> list[Frame]:
        pairs = {"destination": destination, "id": sub_id, "ack": ack}
        pairs.update((name.replace("_", "-"), value) for name, value in headers.items())
        return await self.request("SUBSCRIBE", pairs)

    async def publish(self, destination: str, body: bytes | str, **headers: str) -> None:
        if isinstance(body, str):
            body = body.encode()
        pairs = {"destination": destination}
        pairs.update((name.replace("_", "-"), value) for name, value in headers.items())
        await self.request("SEND", pairs, body)

    async def messages_until_idle(self) -> list[Frame]:
        """Every frame the broker has queued for us: a receipt round trip marks the end."""
        marker = {"transaction": f"idle-{next(self._markers)}"}
        await self.send("BEGIN", marker)
        return await self.request("ABORT", marker, take=True)

    async def close(self) -> None:
        await self.stream.aclose()


async def connect_client(nursery: trio.Nursery, broker: Broker, *,
                         lockstep: bool = False) -> StompClient:
    """Open an in-memory connection to ``broker`` served by the STOMP adapter."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_stream, server_stream = pair()
    server = StompClientConnection(server_stream, broker, "memory")
    client = StompClient(client_stream, server)

    async def serve() -> None:
        try:
            await server.run()
        finally:
            client.server_done.set()

    nursery.start_soon(serve)
    return client

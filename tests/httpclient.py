"""A small HTTP/1.1 client for tests, on h11 over any trio stream."""

import base64
import json
from dataclasses import dataclass

import h11
import trio


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


class HttpClient:
    """One connection; requests one after another (keep-alive)."""

    def __init__(self, stream: trio.abc.Stream, host: str = "127.0.0.1") -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> "HttpClient":
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(self, method: str, target: str, body: bytes | dict | list | None = None,
                      headers: dict[str, str] | None = None) -> Reply:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        fields = [("host", self.host), *(headers or {}).items()]
        if body is not None:
            fields.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.reply()

    async def reply(self) -> Reply:
        status, found, chunks = 0, {}, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    found.setdefault(name.decode(), []).append(value.decode())
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, found, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("connection closed before a response")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def http(port: int, method: str, target: str, body=None, headers=None) -> Reply:
    """One request on a connection of its own."""
    client = await HttpClient.open(port)
    try:
        return await client.request(method, target, body, headers)
    finally:
        await client.aclose()

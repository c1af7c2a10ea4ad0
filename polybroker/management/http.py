"""The management listener's HTTP/1.1 server: h11 on one trio stream per connection.

One task serves one connection, request after request (keep-alive), until the peer
closes it, a read times out or a request is refused. Every request head is bounded
(``MAX_HEAD`` bytes), every body (``MAX_BODY``), every read and write by a timeout;
input h11 refuses is answered with its 4xx and a close, with one log line and no
traceback. What a request means is the handler's (``api.ManagementApi``).
"""

import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from ..adapters.io import linger

log = logging.getLogger("polybroker.management")

MAX_HEAD = 16 * 1024  # request line and headers
MAX_BODY = 1024 * 1024  # a publish payload fits; nothing else needs more
READ_TIMEOUT = 30.0  # seconds for one whole request, and for the next on an idle connection
SEND_TIMEOUT = 30.0
RECEIVE_SIZE = 16 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # percent-decoded later, segment by segment (a segment may hold "%2F")
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header's last value
    body: bytes
    peer: str
    tls: bool = False  # came over https (a session cookie is then marked Secure)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())
    # A streamed body (server-sent events): sent chunk by chunk as it comes, after
    # ``body``; the connection closes when it ends.
    stream: Callable[[], AsyncGenerator[bytes, None]] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class RequestRefused(Exception):
    """A request the server answers with ``status`` and closes the connection after."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def json_response(status: int, value: object,
                  headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    return Response(status, body, headers=headers)


def error_response(status: int, message: str,
                   headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response(status, {"error": message}, headers)


async def serve_http(stream: trio.abc.Stream, handler: Handler, peer: str, where: str) -> None:
    """Serve requests on ``stream`` until the connection ends; never raises for bad input.

    ``where`` names the listener in log lines."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    tls = isinstance(stream, trio.SSLStream)
    try:
        while True:
            try:
                request = await _read_request(stream, conn, peer, tls)
            except RequestRefused as exc:
                log.info("%s: request from %s refused: %s", where, peer, exc)
                await _refuse(stream, conn, exc.status, str(exc))
                await linger(stream)  # a peer still sending must get to read the answer
                return
            if request is None:
                return
            response = await handler(request)
            log.debug("%s: %s %s from %s: %d", where, request.method, request.path, peer,
                      response.status)
            if response.stream is not None and request.method != "HEAD":
                await _send_stream(stream, conn, response)
                return
            if not await _send_response(stream, conn, response, request.method == "HEAD"):
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the peer went away: nothing to answer


async def _read_request(stream: trio.abc.Stream, conn: h11.Connection,
                        peer: str, tls: bool = False) -> Request | None:
    """The next whole request; None when the peer closes (or idles) between requests."""
    head: h11.Request | None = None
    body = bytearray()
    with trio.move_on_after(READ_TIMEOUT):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                reason = "request head too large" if status == 431 else f"bad request: {exc}"
                raise RequestRefused(status, reason) from None
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await _send(stream, conn.send(h11.InformationalResponse(
                        status_code=100, headers=[])))
                conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
            elif isinstance(event, h11.Request):
                head = event
                _check_head(event)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise RequestRefused(413, f"request body over {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return _request(head, bytes(body), peer, tls)
            else:  # ConnectionClosed (or PAUSED, which a new cycle does not give)
                return None
    if head is None and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
        return None  # an idle keep-alive connection: closed without a word
    raise RequestRefused(408, f"request not received within {READ_TIMEOUT:g}s")


def _check_head(head: h11.Request) -> None:
    # h11 bounds a head that arrives in pieces; one that arrives whole is measured here.
    size = len(head.target) + sum(len(name) + len(value) + 4 for name, value in head.headers)
    if size > MAX_HEAD:
        raise RequestRefused(431, "request head too large")
    for name, value in head.headers:
        if name == b"content-length" and int(value) > MAX_BODY:  # h11 checked the digits
            raise RequestRefused(413, f"request body over {MAX_BODY} bytes")


def _request(head: h11.Request, body: bytes, peer: str, tls: bool) -> Request:
    target = head.target.decode("ascii", "replace")
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
    return Request(head.method.decode("ascii", "replace"), parts.path, query, headers, body,
                   peer, tls)


async def _refuse(stream: trio.abc.Stream, conn: h11.Connection, status: int,
                  reason: str) -> None:
    """Answer a refused request, if the exchange still allows an answer, then close."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    message = reason.split(":", 1)[0] if status == 400 else reason
    await _send_response(stream, conn, error_response(status, message), head=False,
                         close=True)


async def _send_response(stream: trio.abc.Stream, conn: h11.Connection, response: Response,
                         head: bool, close: bool = False) -> bool:
    """Send ``response`` whole (headers only for HEAD); whether it went out in time."""
    headers = [("content-type", response.content_type),
               ("content-length", str(len(response.body))),
               ("cache-control", "no-store"), *response.headers]
    if close or conn.their_state is not h11.DONE:
        headers.append(("connection", "close"))
    try:
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        if not head:
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return False  # an exchange h11 will not finish: the connection closes
    return await _send(stream, data)


async def _send_stream(stream: trio.abc.Stream, conn: h11.Connection,
                       response: Response) -> None:
    """Send a streamed response: its head, then each chunk as soon as it is made (no
    length: chunked, or to the close on HTTP/1.0); stops when a write times out."""
    assert response.stream is not None
    headers = [("content-type", response.content_type), ("cache-control", "no-store"),
               ("connection", "close"), *response.headers]
    if not await _send(stream, conn.send(h11.Response(status_code=response.status,
                                                      headers=headers))):
        return
    if response.body and not await _send(stream, conn.send(h11.Data(data=response.body))):
        return
    chunks = response.stream()
    try:
        async for chunk in chunks:
            if not await _send(stream, conn.send(h11.Data(data=chunk))):
                return
    finally:
        await chunks.aclose()
    await _send(stream, conn.send(h11.EndOfMessage()))


async def _send(stream: trio.abc.Stream, data: bytes | None) -> bool:
    if not data:
        return True
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(data)
        return True
    return False


def path_segments(path: str) -> list[str]:
    """The percent-decoded segments of a request path, leading ``/`` dropped."""
    return [unquote(segment) for segment in path.split("/")[1:]]

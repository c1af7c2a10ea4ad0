"""The WebSocket opening handshake (RFC 6455 section 4) over h11.

``accept_websocket`` is the server side: it checks the path, the Origin and the
offered subprotocols, and answers anything that is not a good upgrade request with
an HTTP error (404, 405, 426, 400, 403) instead of leaving the client hanging.
``connect_websocket`` is the client side, for tests and tools.
"""

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import NoReturn

import h11
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import generate_accept_token, generate_nonce

from .websocket import RECEIVE_SIZE, WebSocketStream

# The registered subprotocol names, in our order of preference within each protocol:
# MQTT 3.1.1 section 6 ("mqtt"; 3.1 clients offer "mqttv3.1"), STOMP over WebSocket.
SUBPROTOCOLS: dict[str, tuple[str, ...]] = {
    "mqtt": ("mqtt", "mqttv3.1"),
    "stomp": ("v12.stomp", "v11.stomp", "v10.stomp"),
}
# Protocols whose WebSocket binding forbids text frames.
BINARY_ONLY = frozenset(("mqtt",))
MAX_REQUEST_SIZE = 16384  # bytes of request line and headers


class UpgradeRefused(Exception):
    """The handshake did not happen; ``status`` is the HTTP status answered, if any."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UpgradePolicy:
    protocol: str  # the listener's: mqtt, stomp or auto
    path: str
    allowed_origins: tuple[str, ...] = ()  # empty: any Origin (or none)


async def accept_websocket(
    stream: trio.abc.Stream, policy: UpgradePolicy, peer: str = "?"
) -> tuple[str, WebSocketStream]:
    """Serve the upgrade; the protocol spoken (from the subprotocol for ``auto``, which
    stays ``auto`` without one) and the WebSocket stream. Raises UpgradeRefused.

    The caller bounds the time it takes.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_SIZE)
    request = await _next_request_event(stream, conn)
    headers = _header_map(request)
    protocol, subprotocol = await _check_request(stream, conn, request, headers, policy)
    accept = generate_accept_token(headers[b"sec-websocket-key"])
    response = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", accept)]
    if subprotocol is not None:
        response.append((b"Sec-WebSocket-Protocol", subprotocol.encode()))
    await _read_to_end_of_request(stream, conn)
    await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=response)))
    ws = WebSocketStream(
        stream, Connection(ConnectionType.SERVER, trailing_data=conn.trailing_data[0]),
        subprotocol=subprotocol, allow_text=protocol not in BINARY_ONLY, peer=peer,
    )
    return protocol, ws


async def _next_request_event(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Request:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await _refuse(stream, conn, exc.error_status_hint, f"bad HTTP request: {exc}")
        if isinstance(event, h11.Request):
            return event
        if event is not h11.NEED_DATA:
            raise UpgradeRefused(None, "closed before sending a request")
        conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))  # b"": the end


async def _read_to_end_of_request(stream: trio.abc.Stream, conn: h11.Connection) -> None:
    """Up to where h11 pauses for the protocol switch (a GET has no body to skip)."""
    try:
        while (event := conn.next_event()) is not h11.PAUSED:
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise UpgradeRefused(None, "closed during the upgrade request")
                conn.receive_data(bytes(data))
    except h11.RemoteProtocolError as exc:
        raise UpgradeRefused(None, f"bad HTTP request: {exc}") from None


def _header_map(request: h11.Request) -> dict[bytes, bytes]:
    """Lower-case names; repeated headers joined with commas (RFC 9110 section 5.3)."""
    joined: dict[bytes, bytes] = {}
    for name, value in request.headers:
        joined[name] = joined[name] + b", " + value if name in joined else value
    return joined


def _tokens(value: bytes) -> list[str]:
    return [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]


async def _check_request(
    stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request,
    headers: dict[bytes, bytes], policy: UpgradePolicy,
) -> tuple[str, str | None]:
    """The protocol and subprotocol to answer with, or an HTTP error sent and raised."""
    target = request.target.decode("latin-1").split("?", 1)[0]
    if request.method != b"GET":
        await _refuse(stream, conn, 405, f"method {request.method.decode()} not allowed",
                      [(b"Allow", b"GET")])
    if target != policy.path:
        await _refuse(stream, conn, 404, f"no WebSocket endpoint at {target} "
                      f"(this listener answers on {policy.path})")
    if ("websocket" not in (t.lower() for t in _tokens(headers.get(b"upgrade", b"")))
            or "upgrade" not in (t.lower() for t in _tokens(headers.get(b"connection", b"")))):
        await _refuse(stream, conn, 426, "this is a WebSocket endpoint: send an upgrade request",
                      [(b"Upgrade", b"websocket")], connection=b"Upgrade, close")
    if headers.get(b"sec-websocket-version") != b"13":
        await _refuse(stream, conn, 426, "unsupported WebSocket version (13 is)",
                      [(b"Sec-WebSocket-Version", b"13")])
    if not _valid_key(headers.get(b"sec-websocket-key", b"")):
        await _refuse(stream, conn, 400, "missing or malformed Sec-WebSocket-Key")
    origin = headers.get(b"origin")
    if policy.allowed_origins and origin is not None:
        text = origin.decode("latin-1").lower().rstrip("/")
        if text not in policy.allowed_origins:
            await _refuse(stream, conn, 403, f"origin {text} is not allowed")
    return await _choose_subprotocol(stream, conn, headers, policy)


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


async def _choose_subprotocol(
    stream: trio.abc.Stream, conn: h11.Connection, headers: dict[bytes, bytes],
    policy: UpgradePolicy,
) -> tuple[str, str | None]:
    offered = _tokens(headers.get(b"sec-websocket-protocol", b""))
    if not offered:  # none asked for: the listener's protocol (auto: sniffed later)
        return policy.protocol, None
    protocols = list(SUBPROTOCOLS) if policy.protocol == "auto" else [policy.protocol]
    if "mqtt" in protocols and "mqtt" in offered:
        return "mqtt", "mqtt"  # the server MUST return "mqtt" when offered [MQTT-6.0.0-4]
    for name in offered:  # the client's order of preference
        for protocol in protocols:
            if name in SUBPROTOCOLS.get(protocol, ()):
                return protocol, name
    supported = ", ".join(s for p in protocols for s in SUBPROTOCOLS.get(p, ()))
    await _refuse(stream, conn, 400, f"no supported subprotocol in {', '.join(offered)} "
                  f"(supported: {supported})")


async def _refuse(
    stream: trio.abc.Stream, conn: h11.Connection, status: int, reason: str,
    headers: Sequence[tuple[bytes, bytes]] = (), connection: bytes = b"close",
) -> NoReturn:
    """Answer with an HTTP error whose body says why, then raise UpgradeRefused."""
    body = (reason + "\n").encode()
    try:
        data = conn.send(h11.Response(
            status_code=status, reason=HTTPStatus(status).phrase, headers=[
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", str(len(body)).encode()),
                (b"Connection", connection), *headers,
            ],
        ))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        raise UpgradeRefused(None, reason) from None  # too broken to answer
    await stream.send_all(data)
    raise UpgradeRefused(status, reason)


async def connect_websocket(
    stream: trio.abc.Stream, host: str, path: str, subprotocols: Sequence[str] = (),
    origin: str | None = None,
) -> WebSocketStream:
    """The client side of the handshake over ``stream``. Raises UpgradeRefused."""
    conn = h11.Connection(h11.CLIENT)
    key = generate_nonce()
    headers = [(b"Host", host.encode()), (b"Upgrade", b"websocket"),
               (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", key),
               (b"Sec-WebSocket-Version", b"13")]
    if subprotocols:
        headers.append((b"Sec-WebSocket-Protocol", ", ".join(subprotocols).encode()))
    if origin is not None:
        headers.append((b"Origin", origin.encode()))
    request = conn.send(h11.Request(method="GET", target=path, headers=headers))
    await stream.send_all(request + conn.send(h11.EndOfMessage()))
    status, body = None, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            answer = dict(event.headers)
            if answer.get(b"sec-websocket-accept") != generate_accept_token(key):
                raise UpgradeRefused(None, "bad Sec-WebSocket-Accept")
            chosen = answer.get(b"sec-websocket-protocol")
            return WebSocketStream(
                stream, Connection(ConnectionType.CLIENT, trailing_data=conn.trailing_data[0]),
                subprotocol=chosen.decode() if chosen else None, peer=f"{host}{path}",
            )
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            raise UpgradeRefused(status, body.decode(errors="replace").strip() or "refused")

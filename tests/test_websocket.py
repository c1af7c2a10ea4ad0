"""The WebSocket transport in memory: the upgrade, the stream contract, frames on the wire."""

import re

import pytest
import trio
import trio.testing
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)

from polybroker.protocols.mqtt import Connect, PingReq, Publish, encode
from polybroker.transports.upgrade import (
    UpgradePolicy,
    UpgradeRefused,
    accept_websocket,
    connect_websocket,
)
from polybroker.transports.websocket import WebSocketStream

from .wsclient import RawWebSocket, accepted

MQTT = UpgradePolicy("mqtt", "/mqtt")
STOMP = UpgradePolicy("stomp", "/stomp")


async def websocket_pair(
    transport_pair=trio.testing.memory_stream_pair, policy: UpgradePolicy = MQTT,
    subprotocols: tuple[str, ...] = ("mqtt",),
) -> tuple[WebSocketStream, WebSocketStream]:
    """(client, server) after a real handshake over an in-memory transport."""
    client_side, server_side = transport_pair()
    result = {}

    async def server() -> None:
        result["server"] = (await accept_websocket(server_side, policy))[1]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        client = await connect_websocket(client_side, "localhost", policy.path, subprotocols)
    for ws in (client, result["server"]):
        ws.close_timeout = 0.2  # the checker closes one side while the other only sends
    return client, result["server"]


async def test_websocket_stream_passes_trios_stream_checks():
    async def clogged() -> tuple[WebSocketStream, WebSocketStream]:
        return await websocket_pair(trio.testing.lockstep_stream_pair)

    await trio.testing.check_two_way_stream(websocket_pair, clogged)


async def serve_upgrade(policy: UpgradePolicy = MQTT):
    """A server task accepting one upgrade; returns (raw client, outcome dict)."""
    client_side, server_side = trio.testing.memory_stream_pair()
    outcome: dict[str, object] = {}

    async def server() -> None:
        try:
            outcome["protocol"], outcome["stream"] = await accept_websocket(server_side, policy)
        except UpgradeRefused as exc:
            outcome["refused"] = exc
            await server_side.aclose()

    return RawWebSocket(client_side), server, outcome


async def raw_http(request: bytes, policy: UpgradePolicy = MQTT) -> tuple[bytes, UpgradeRefused]:
    client_side, server_side = trio.testing.memory_stream_pair()
    await client_side.send_all(request)
    await client_side.send_eof()
    with pytest.raises(UpgradeRefused) as refused:
        await accept_websocket(server_side, policy)
    await server_side.aclose()
    answer = b""
    while data := await client_side.receive_some():
        answer += data
    return answer, refused.value


UPGRADE = (b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", 426, b"Upgrade: websocket"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404, b"this listener answers on /mqtt"),
        (b"POST /mqtt HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", 405, b"Allow: GET"),
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n" + UPGRADE.replace(b": 13", b": 8") + b"\r\n",
         426, b"Sec-WebSocket-Version: 13"),
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n" + UPGRADE.replace(b"dGhl", b"!!!!") + b"\r\n",
         400, b"malformed Sec-WebSocket-Key"),
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n" + UPGRADE
         + b"Sec-WebSocket-Protocol: v12.stomp\r\n\r\n", 400,
         b"no supported subprotocol in v12.stomp (supported: mqtt, mqttv3.1)"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, b"bad HTTP request"),
    ],
)
async def test_requests_that_are_not_good_upgrades_get_an_http_error(request_bytes, status, says):
    answer, refused = await raw_http(request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert says in answer
    assert re.search(rb"\r\nConnection: (Upgrade, )?close\r\n", answer)
    assert refused.status == status


async def test_peer_closing_before_a_request_is_refused_without_an_answer():
    answer, refused = await raw_http(b"")
    assert answer == b""
    assert refused.status is None


async def test_the_query_string_does_not_count_in_the_path():
    answer, _ = await raw_http(b"GET /mqtt?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 426 ")  # the path matched; the upgrade was missing


async def test_origin_allow_list():
    policy = UpgradePolicy("mqtt", "/mqtt", ("https://app.example",))
    request = b"GET /mqtt HTTP/1.1\r\nHost: x\r\n" + UPGRADE
    answer, _ = await raw_http(request + b"Origin: https://evil.example\r\n\r\n", policy)
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"origin https://evil.example is not allowed" in answer
    for origin in (b"Origin: https://App.example\r\n", b""):  # allowed, or not a browser
        client_side, server_side = trio.testing.memory_stream_pair()
        await client_side.send_all(request + origin + b"\r\n")
        protocol, _ = await accept_websocket(server_side, policy)
        assert protocol == "mqtt"
        assert (await client_side.receive_some()).startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    ("policy", "offered", "protocol", "chosen"),
    [
        (MQTT, ["mqttv3.1", "mqtt"], "mqtt", "mqtt"),  # "mqtt" when offered [MQTT-6.0.0-4]
        (MQTT, ["mqttv3.1"], "mqtt", "mqttv3.1"),  # an MQTT 3.1 client
        (MQTT, [], "mqtt", None),
        (STOMP, ["v10.stomp", "v11.stomp", "v12.stomp"], "stomp", "v10.stomp"),
        (UpgradePolicy("auto", "/"), ["v12.stomp"], "stomp", "v12.stomp"),
        (UpgradePolicy("auto", "/"), ["foo", "mqtt"], "mqtt", "mqtt"),
        (UpgradePolicy("auto", "/"), [], "auto", None),
    ],
)
async def test_subprotocol_negotiation(policy, offered, protocol, chosen):
    client, server, outcome = await serve_upgrade(policy)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        event = accepted(await client.handshake(policy.path, offered))
    assert event.subprotocol == chosen
    assert outcome["protocol"] == protocol
    assert outcome["stream"].subprotocol == chosen


async def test_client_sees_the_refusal_and_its_reason():
    client, server, outcome = await serve_upgrade()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        event = await client.handshake("/elsewhere", ["mqtt"])
    assert isinstance(event, RejectConnection) and event.status_code == 404
    assert b"no WebSocket endpoint at /elsewhere" in client.rejected_body
    assert outcome["refused"].status == 404


async def open_raw(policy: UpgradePolicy = MQTT, subprotocols=("mqtt",)):
    client, server, outcome = await serve_upgrade(policy)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        assert isinstance(await client.handshake(policy.path, list(subprotocols)),
                          AcceptConnection)
    return client, outcome["stream"]


async def test_packets_split_across_frames_and_frames_holding_several_packets():
    client, server = await open_raw()
    connect = encode(Connect("c"), 4)
    publish = encode(Publish("t", b"x" * 300), 4)
    both = connect + publish + encode(PingReq(), 4)
    # One packet in three frames (the first two not final), then two packets in one.
    await client.send(BytesMessage(data=connect[:3], message_finished=False))
    await client.send(BytesMessage(data=connect[3:7], message_finished=False))
    await client.send(BytesMessage(data=connect[7:] + publish[:100]))
    await client.send(BytesMessage(data=both[len(connect) + 100:]))
    received = b""
    while len(received) < len(both):
        received += await server.receive_some(7)
    assert received == both


async def test_server_sends_binary_frames_for_mqtt():
    client, server = await open_raw()
    await server.send_all(b"\x20\x02\x00\x00")
    event = await client.next_event()
    assert isinstance(event, BytesMessage) and event.data == b"\x20\x02\x00\x00"


async def test_text_frame_on_mqtt_closes_with_1003():
    client, server = await open_raw()
    await client.send(TextMessage(data="CONNECT"))
    assert await server.receive_some() == b""
    close = await client.close_reply()
    assert close.code == 1003
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"late")


async def test_stomp_replies_in_text_to_a_text_client_binary_when_not_utf8():
    client, server = await open_raw(STOMP, ["v12.stomp"])
    await server.send_all(b"before any text\n")
    assert isinstance(await client.next_event(), BytesMessage)
    await client.send(TextMessage(data="CONNECT\naccept-version:1.2\n\n\x00"))
    assert await server.receive_some() == b"CONNECT\naccept-version:1.2\n\n\x00"
    await server.send_all(b"CONNECTED\nversion:1.2\n\n\x00")
    event = await client.next_event()
    assert isinstance(event, TextMessage) and event.data.startswith("CONNECTED")
    await server.send_all(b"MESSAGE\ncontent-length:1\n\n\xff\x00")
    event = await client.next_event()
    assert isinstance(event, BytesMessage) and event.data.endswith(b"\xff\x00")


async def test_ping_is_answered_with_its_payload():
    client, server = await open_raw()
    await client.send(Ping(payload=b"are you there"))
    await client.send(BytesMessage(data=b"after"))
    assert await server.receive_some() == b"after"
    event = await client.next_event()
    assert isinstance(event, Pong) and event.payload == b"are you there"


async def test_close_started_by_the_client_is_answered():
    client, server = await open_raw()
    await client.send(BytesMessage(data=b"last"))
    await client.send(CloseConnection(code=1000, reason="bye"))
    assert await server.receive_some() == b"last"
    assert await server.receive_some() == b""
    close = await client.next_event()
    assert isinstance(close, CloseConnection) and close.code == 1000
    await server.aclose()


async def test_aclose_runs_the_closing_handshake():
    client, server = await open_raw()

    async def answer_close() -> None:
        close = await client.close_reply()
        assert close.code == 1000
        await client.send(close.response())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_close)
        await server.aclose()  # returns once the client answered (well before the timeout)


async def test_send_eof_sends_our_close_and_reads_on_until_the_clients():
    # A lingering close over WebSocket: our close frame first, the client's data still
    # arrives, its close frame ends the stream, and aclose then sends nothing more.
    client, server = await open_raw()
    await server.send_all(b"last word")
    await server.send_eof()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"after eof")
    await client.send(BytesMessage(data=b"still coming"))  # sent before it reads ours
    assert (await client.next_event()).data == b"last word"
    close = await client.next_event()
    assert isinstance(close, CloseConnection) and close.code == 1000
    await client.send(close.response())
    assert await server.receive_some() == b"still coming"
    assert await server.receive_some() == b""
    await server.aclose()


async def test_unmasked_client_frame_is_a_protocol_error():
    client, server = await open_raw()
    await client.stream.send_all(b"\x82\x01x")  # binary, final, unmasked: clients must mask
    assert await server.receive_some() == b""
    assert (await client.close_reply()).code == 1002

"""The management listener's HTTP server (``management.http``) over memory streams:
keep-alive, the bounds on heads and bodies, the read timeout, bad input answered with
a 4xx and a close, never a traceback."""

import logging

import pytest
import trio
import trio.testing

from polybroker.management import http
from polybroker.management.http import Request, Response, json_response, serve_http

from .httpclient import HttpClient


async def echo(request: Request) -> Response:
    return json_response(200, {"method": request.method, "path": request.path,
                               "query": request.query, "length": len(request.body)})


async def served(nursery) -> trio.abc.Stream:
    """The client end of a memory connection that ``serve_http`` serves."""
    client, server = trio.testing.memory_stream_pair()

    async def run():
        await serve_http(server, echo, "peer:1", "http://test")
        await server.aclose()
    nursery.start_soon(run)
    return client


async def raw_reply(stream: trio.abc.Stream, data: bytes) -> bytes:
    """What the server writes back to ``data`` until it closes the connection."""
    await stream.send_all(data)
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def test_keep_alive_serves_requests_one_after_another(autojump_clock, nursery):
    client = HttpClient(await served(nursery))
    first = await client.request("GET", "/a?x=1&y=")
    second = await client.request("POST", "/b", b"12345")
    assert first.status == second.status == 200
    assert first.json() == {"method": "GET", "path": "/a", "query": {"x": "1", "y": ""},
                            "length": 0}
    assert second.json()["length"] == 5
    assert first.header("content-type") == "application/json"
    assert first.header("connection") is None  # kept open


async def test_head_too_large_is_431_and_closed(autojump_clock, nursery, caplog):
    caplog.set_level(logging.INFO)
    stream = await served(nursery)
    head = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (http.MAX_HEAD + 10) + b"\r\n\r\n"
    reply = await raw_reply(stream, head)
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b'{"error":"request head too large"}' in reply
    assert "request head too large" in caplog.text
    assert "Traceback" not in caplog.text


async def test_declared_body_too_large_is_413_before_it_is_read(autojump_clock, nursery):
    stream = await served(nursery)
    reply = await raw_reply(stream, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: "
                            + str(http.MAX_BODY + 1).encode() + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in reply


async def test_chunked_body_too_large_is_413(autojump_clock, nursery):
    stream = await served(nursery)
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
    await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    reply = b""
    with trio.move_on_after(10):
        for _ in range(http.MAX_BODY // (64 * 1024) + 2):
            await stream.send_all(chunk)
        while data := await stream.receive_some(65536):
            reply += data
    assert reply.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("data", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(200),  # TLS to a plain port
])
async def test_bad_request_is_400_with_one_log_line(autojump_clock, nursery, caplog, data):
    caplog.set_level(logging.INFO)
    stream = await served(nursery)
    reply = await raw_reply(stream, data)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert reply.endswith(b'{"error":"bad request"}\n')
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "peer:1" in lines[0].getMessage()
    assert "Traceback" not in caplog.text


async def test_half_a_request_times_out_with_408(autojump_clock, nursery):
    stream = await served(nursery)
    start = trio.current_time()
    reply = await raw_reply(stream, b"GET / HTTP/1.1\r\nhost: x\r\n")
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - start == pytest.approx(http.READ_TIMEOUT)


async def test_idle_connection_is_closed_without_a_word(autojump_clock, nursery):
    client = HttpClient(await served(nursery))
    assert (await client.request("GET", "/")).status == 200
    start = trio.current_time()
    assert await client.stream.receive_some(100) == b""
    assert trio.current_time() - start == pytest.approx(http.READ_TIMEOUT)


async def test_head_request_has_headers_only(autojump_clock, nursery):
    client = HttpClient(await served(nursery))
    reply = await client.request("HEAD", "/x")
    assert reply.status == 200 and reply.body == b""
    assert int(reply.header("content-length")) > 0
    assert (await client.request("GET", "/y")).status == 200  # and the connection goes on


async def test_expect_100_continue_is_answered(autojump_clock, nursery):
    stream = await served(nursery)
    await stream.send_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
                          b"expect: 100-continue\r\n\r\n")
    assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 100 ")
    await stream.send_all(b"abc")
    assert b'"length":3' in await stream.receive_some(1000)

"""Listeners with their transport stacks, in-process on loopback sockets: TLS, client
certificates, WebSocket, WSS, protocol sniffing, connection limits, start-up checks."""

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace

import pytest
import trio
import trio.testing

from polybroker import server
from polybroker.config import BrokerConfig, ConfigError, Limits, TLSConfig, parse_listen_url
from polybroker.protocols.mqtt import ConnAck, Disconnect, Publish
from polybroker.server import open_broker, start_listeners
from polybroker.transports.upgrade import connect_websocket

from .rawclient import RawClient


@pytest.fixture
def config_for(serve_config) -> Callable[..., BrokerConfig]:
    """Configurations for listeners on ``urls``, with ``tls`` and ``listener_fields``."""
    def config(*urls: str, tls: TLSConfig | None = None, **listener_fields) -> BrokerConfig:
        return serve_config(*(replace(parse_listen_url(url, tls=tls), **listener_fields)
                              for url in urls))
    return config


def server_tls(certs_dir, **fields) -> TLSConfig:
    return TLSConfig(certfile=certs_dir / "server.crt", keyfile=certs_dir / "server.key", **fields)


def client_context(certs_dir, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs_dir / "ca.crt")
    if cert is not None:
        ctx.load_cert_chain(certs_dir / f"{cert}.crt", certs_dir / f"{cert}.key")
    return ctx


async def tls_client(port: int, ctx: ssl.SSLContext) -> RawClient:
    return RawClient(await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx))


async def test_mqtt_over_tls(certs_dir, config_for):
    async with open_broker(config_for("mqtts://127.0.0.1:0", tls=server_tls(certs_dir))) as running:
        client = await tls_client(running.port("mqtt"), client_context(certs_dir))
        assert await client.connect("tls") == ConnAck()
        await client.subscribe("t")
        await client.send(Publish("t", b"over tls"))
        assert (await client.receive()).payload == b"over tls"
        await client.send(Disconnect())
        assert await client.receive_until_closed() == []


async def test_required_client_certificate_and_identity(certs_dir, caplog, config_for):
    caplog.set_level(logging.INFO)
    tls = server_tls(certs_dir, cafile=certs_dir / "ca.crt", require_certificate=True,
                     use_identity_as_username=True)
    async with open_broker(config_for("mqtts://127.0.0.1:0", tls=tls)) as running:
        port = running.port("mqtt")
        client = await tls_client(port, client_context(certs_dir, "sensor-1"))
        await client.connect("c1")
        link = running.broker.sessions["c1"].link
        assert link.identity == "sensor-1"
        assert "certificate identity sensor-1" in caplog.text
        anonymous = await tls_client(port, client_context(certs_dir))
        # TLS 1.3: the client's handshake ends before the server has checked its
        # (missing) certificate; the refusal comes as an alert on the next read.
        with pytest.raises(trio.BrokenResourceError):
            await anonymous.connect("c2")
        assert "TLS handshake with 127.0.0.1:" in caplog.text
        assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in caplog.text
        await client.close()


async def test_optional_client_certificate_and_identity_only_when_asked(certs_dir, config_for):
    tls = server_tls(certs_dir, cafile=certs_dir / "ca.crt")
    async with open_broker(config_for("mqtts://127.0.0.1:0", tls=tls)) as running:
        port = running.port("mqtt")
        with_cert = await tls_client(port, client_context(certs_dir, "sensor-1"))
        without = await tls_client(port, client_context(certs_dir))
        await with_cert.connect("a")
        await without.connect("b")
        assert running.broker.sessions["a"].link.identity is None  # not use_identity_as_username
        await with_cert.close()
        await without.close()


async def ws_client(stream: trio.abc.Stream, path: str = "/mqtt",
                    subprotocols: tuple[str, ...] = ("mqtt",)) -> RawClient:
    return RawClient(await connect_websocket(stream, "localhost", path, subprotocols))


async def test_mqtt_over_websocket_and_wss_meet_tcp_clients(certs_dir, config_for):
    config = config_for("mqtt://127.0.0.1:0", "mqtt+ws://127.0.0.1:0/mqtt",
                        "mqtt+wss://127.0.0.1:0/mqtt", tls=server_tls(certs_dir))
    async with open_broker(config) as running:
        tcp = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port("mqtt", "tcp")))
        ws = await ws_client(await trio.open_tcp_stream("127.0.0.1", running.port("mqtt", "ws")))
        wss = await ws_client(await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", running.port("mqtt", "wss"), ssl_context=client_context(certs_dir)))
        for name, client in (("tcp", tcp), ("ws", ws), ("wss", wss)):
            await client.connect(name)
            await client.subscribe("all")
        await ws.send(Publish("all", b"from ws"))
        for client in (tcp, ws, wss):
            assert (await client.receive()).payload == b"from ws"
        await wss.send(Disconnect())
        assert await wss.receive_until_closed() == []  # close handshake, then EOF
        for client in (tcp, ws):
            await client.close()


async def test_websocket_listener_answers_plain_http_with_an_error(config_for):
    async with open_broker(config_for("mqtt+ws://127.0.0.1:0/mqtt")) as running:
        stream = await trio.open_tcp_stream("127.0.0.1", running.port("mqtt"))
        await stream.send_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while data := await stream.receive_some():
                answer += data
        assert answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")


class Echo:
    """Stands in for an adapter not on this branch: records what it was handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str | None]] = []

    async def __call__(self, stream, broker, peer, *, identity=None, allow_anonymous=True) -> None:
        data = await stream.receive_some()
        self.calls.append((data, identity))
        await stream.send_all(b"echo " + data)
        await stream.aclose()


STOMP_CONNECT = b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"


async def test_auto_serves_mqtt_and_hands_other_protocols_to_their_adapter(
    monkeypatch, caplog, config_for):
    caplog.set_level(logging.INFO)
    async with open_broker(config_for("auto://127.0.0.1:0")) as running:
        port = running.port("auto")
        mqtt = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        assert await mqtt.connect("sniffed") == ConnAck()

        amqp = await trio.open_tcp_stream("127.0.0.1", port)
        await amqp.send_all(b"AMQP\x00\x00\x09\x01")
        with trio.fail_after(5):
            start = await amqp.receive_some()
        assert start[:1] == b"\x01" and start[7:11] == b"\x00\x0a\x00\x0a"  # connection.start
        await amqp.aclose()

        echo = Echo()
        monkeypatch.setitem(server.PROTOCOL_HANDLERS, "stomp", echo)
        stomp = await trio.open_tcp_stream("127.0.0.1", port)
        for byte in STOMP_CONNECT[:5]:  # the decision waits for "CONNECT\n"
            await stomp.send_all(bytes([byte]))
        await stomp.send_all(STOMP_CONNECT[5:])
        with trio.fail_after(5):
            answer = await stomp.receive_some()
        assert answer.startswith(b"echo CONNECT")  # the sniffed bytes were handed over

        garbage = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await garbage.send_raw(b"\x16\x03\x01\x00\x05hello")
        assert await garbage.receive_until_closed() == []
        assert "a TLS handshake on a plain listener" in caplog.text
        await mqtt.close()


async def test_auto_over_websocket_takes_the_protocol_from_the_subprotocol(monkeypatch, config_for):
    echo = Echo()
    monkeypatch.setitem(server.PROTOCOL_HANDLERS, "stomp", echo)
    async with open_broker(config_for("auto+ws://127.0.0.1:0/")) as running:
        port = running.port("auto")
        stomp = await connect_websocket(await trio.open_tcp_stream("127.0.0.1", port),
                                        "localhost", "/", ["v12.stomp"])
        await stomp.send_all(b"SEND\n\n\x00")  # sniffing would not know this; v12.stomp does
        with trio.fail_after(5):
            assert await stomp.receive_some() == b"echo SEND\n\n\x00"
        # No subprotocol: sniffed.
        mqtt = await ws_client(await trio.open_tcp_stream("127.0.0.1", port), "/", ())
        assert await mqtt.connect("sniffed over ws") == ConnAck()
        await mqtt.close()


async def test_max_connections_refuses_the_one_too_many(caplog, config_for):
    caplog.set_level(logging.INFO)
    config = config_for("mqtt://127.0.0.1:0", max_connections=1)
    async with open_broker(config) as running:
        port = running.port("mqtt")
        first = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await first.connect("first")
        second = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        assert await second.receive_until_closed() == []
        assert "refused: max_connections (1) reached" in caplog.text
        await first.send(Disconnect())
        assert await first.receive_until_closed() == []
        await trio.testing.wait_all_tasks_blocked()  # the server side has finished with it
        third = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        assert await third.connect("third") == ConnAck()
        await third.close()


async def test_listener_for_a_protocol_without_adapter_is_refused_at_start_up(
    monkeypatch, config_for):
    monkeypatch.delitem(server.PROTOCOL_HANDLERS, "amqp")  # every protocol has one today
    with pytest.raises(ConfigError, match=r"listener amqp://127.0.0.1:0: this broker does not "
                                          r"serve amqp yet \(it serves mqtt, stomp, auto\)"):
        await start_listeners(config_for("amqp://127.0.0.1:0"))


async def test_unusable_certificate_is_refused_at_start_up(certs_dir, config_for):
    tls = TLSConfig(certfile=certs_dir / "missing.crt")
    with pytest.raises(ConfigError, match=r"listener mqtt\+tls://127.0.0.1:0: certfile"):
        await start_listeners(config_for("mqtts://127.0.0.1:0", tls=tls))


async def test_failed_bind_leaves_nothing_bound(config_for):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as probe:  # a port free now, to see it is free again after
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        config = config_for(f"mqtt://127.0.0.1:{free}", f"mqtt://127.0.0.1:{busy}")
        with pytest.raises(OSError):
            await start_listeners(config)
    with socket.socket() as again:
        again.bind(("127.0.0.1", free))


async def test_an_opening_that_never_completes_is_closed_after_connect_timeout(caplog, config_for):
    caplog.set_level(logging.INFO)
    config = replace(config_for("auto://127.0.0.1:0", "mqtt+ws://127.0.0.1:0/mqtt"),
                     limits=Limits(connect_timeout=0.2))
    async with open_broker(config) as running:
        halves = {running.port("auto"): b"\x10\x0c\x00",  # of an MQTT CONNECT
                  running.port("mqtt", "ws"): b"GET /mqtt HTTP/1.1\r\nHost: x\r\n"}
        for port, half in halves.items():
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(half)
            with trio.fail_after(5):
                assert await stream.receive_some() == b""
        assert caplog.text.count("closed: not opened within 0.2s") == 2

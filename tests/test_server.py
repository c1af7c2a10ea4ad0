"""The listener layer in-process: open_broker on real loopback sockets."""

import trio

from polybroker.protocols.mqtt import ConnAck, Publish
from polybroker.protocols.stomp import Frame, FrameParser, encode_frame
from polybroker.server import open_broker

from .rawclient import RawClient


async def test_open_broker_serves_every_listener_on_its_bound_port(serve_config):
    config = serve_config("mqtt://127.0.0.1:0", "mqtt://[::1]:0")
    async with open_broker(config) as running:
        ports = [lc.port for lc in running.listeners]
        assert all(port > 0 for port in ports)
        sub = RawClient(await trio.open_tcp_stream("127.0.0.1", ports[0]))
        pub = RawClient(await trio.open_tcp_stream("::1", ports[1]))
        assert await sub.connect("sub") == ConnAck()
        await sub.subscribe("t", 1)
        await pub.connect("pub")
        await pub.send(Publish("t", b"across listeners"))
        assert (await sub.receive()).payload == b"across listeners"
        await sub.close()
        await pub.close()


async def test_connection_error_does_not_stop_the_listener(serve_config):
    async with open_broker(serve_config("mqtt://127.0.0.1:0")) as running:
        port = running.port("mqtt")
        for _ in range(3):
            bad = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
            await bad.send_raw(b"\x00garbage")
            assert await bad.receive_until_closed() == []
        good = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        assert await good.connect("ok") == ConnAck()
        await good.close()


async def test_stomp_listener_is_served_by_the_stomp_adapter(serve_config):
    async with open_broker(serve_config("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0")) as running:
        stream = await trio.open_tcp_stream("127.0.0.1", running.port("stomp"))
        await stream.send_all(encode_frame(Frame("CONNECT", (("accept-version", "1.2"),))))
        parser, frames = FrameParser(), []
        with trio.fail_after(5):
            while not frames:
                frames = parser.feed(await stream.receive_some(4096))
        assert frames[0].command == "CONNECTED"
        await stream.aclose()

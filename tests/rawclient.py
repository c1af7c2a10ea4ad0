"""A bare MQTT client over any trio stream, built from the codec, for driving the broker."""

from collections import deque

import trio
import trio.testing

from polybroker.adapters.mqtt import serve_mqtt
from polybroker.broker import Broker
from polybroker.protocols.mqtt import (
    ConnAck,
    Connect,
    Packet,
    PacketParser,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)

TIMEOUT = 5


class RawClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = PacketParser()
        self.received: deque[Packet] = deque()

    async def send(self, *packets: Packet, level: int = 4) -> None:
        await self.send_raw(b"".join(encode(p, level) for p in packets))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, timeout: float = TIMEOUT) -> Packet:
        """The next packet; EOFError if the broker closed the connection."""
        with trio.fail_after(timeout):
            while not self.received:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("connection closed by the broker")
                self.received.extend(self.parser.feed(data))
        return self.received.popleft()

    async def receive_until_closed(self, timeout: float = TIMEOUT) -> list[Packet]:
        """Every packet up to the broker's close (fails if the broker keeps it open)."""
        packets = []
        while True:
            try:
                packets.append(await self.receive(timeout))
            except EOFError:
                return packets

    async def connect(self, client_id: str = "c", **fields: object) -> ConnAck:
        await self.send(Connect(client_id, **fields), level=fields.get("protocol_level", 4))
        connack = await self.receive()
        assert isinstance(connack, ConnAck), connack
        return connack

    async def subscribe(self, topic_filter: str, qos: int = 0, packet_id: int = 1) -> SubAck:
        await self.send(Subscribe(packet_id, (Subscription(topic_filter, qos),)))
        suback = await self.receive()
        assert isinstance(suback, SubAck), suback
        return suback

    async def publishes_until_idle(self) -> list[Publish]:
        """Every PUBLISH the broker has queued for us: a PINGREQ round trip marks the end."""
        await self.send(PingReq())
        packets = []
        while not isinstance(packet := await self.receive(), PingResp):
            packets.append(packet)
        return packets

    async def close(self) -> None:
        await self.stream.aclose()


async def connect_client(
    nursery: trio.Nursery, broker: Broker, *, lockstep: bool = False
) -> RawClient:
    """Open an in-memory connection to ``broker`` served by the MQTT adapter."""
    pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_stream, server_stream = pair()
    nursery.start_soon(serve_mqtt, server_stream, broker, "memory")
    return RawClient(client_stream)

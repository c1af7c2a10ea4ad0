"""The server side of one MQTT connection, sans-IO (shaped like h11).

Bytes from the socket go into ``receive_data`` and come out as packets that
passed both the codec's checks and the connection-level rules; packets to send
go into ``send`` and come out of ``data_to_send``.
"""

from .codec import MAX_REMAINING_LENGTH, PacketParser, encode
from .errors import MQTTError, ProtocolError
from .packets import MQTT_3_1_1, ConnAck, Connect, Disconnect, Packet, PingResp, SubAck, UnsubAck

# Packets only a server sends; from a client they are a protocol violation.
_SERVER_ONLY = frozenset((ConnAck, SubAck, UnsubAck, PingResp))
_CONNECT_TYPE = 1


class ServerConnection:
    """Protocol state of one client connection, as seen by the server."""

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH) -> None:
        self._parser = PacketParser(max_packet_size)
        self._outgoing = bytearray()
        self.protocol_level: int | None = None  # set by the CONNECT
        self._started = False  # any byte received yet
        self._failed = False
        self._disconnected = False

    def receive_data(self, data: bytes) -> list[Packet]:
        """Parse ``data`` and return the complete packets it yields, in order.

        Raises an MQTTError subclass when the client breaks the protocol; the
        connection is dead from then on and later calls raise ProtocolError.
        """
        if self._failed:
            raise ProtocolError("the connection already failed")
        if self._disconnected:
            return []  # the client sent DISCONNECT: anything after it is ignored
        try:
            if not self._started and data:
                self._started = True
                # Reject a non-CONNECT from its first byte rather than buffer its body.
                if data[0] >> 4 != _CONNECT_TYPE:
                    raise ProtocolError("the first packet must be CONNECT [MQTT-3.1.0-1]")
            return self._check(self._parser.feed(data))
        except MQTTError:
            self._failed = True
            raise

    def _check(self, packets: list[Packet]) -> list[Packet]:
        for i, packet in enumerate(packets):
            kind = type(packet)
            if kind is Connect:
                if self.protocol_level is not None:
                    raise ProtocolError("second CONNECT on one connection [MQTT-3.1.0-2]")
                self.protocol_level = packet.protocol_level
                self._parser.protocol_level = packet.protocol_level
            elif self.protocol_level is None:
                raise ProtocolError("the first packet must be CONNECT [MQTT-3.1.0-1]")
            elif kind in _SERVER_ONLY:
                raise ProtocolError(f"{kind.__name__} is sent only by servers")
            elif kind is Disconnect:
                self._disconnected = True
                return packets[: i + 1]
        return packets

    def send(self, packet: Packet) -> None:
        """Queue ``packet``, encoded at this connection's protocol level."""
        self._outgoing += encode(packet, self.protocol_level or MQTT_3_1_1)

    def send_bytes(self, data: bytes) -> None:
        """Queue bytes already encoded (e.g. by ``encode_publish``)."""
        self._outgoing += data

    def data_to_send(self) -> bytes:
        """Return everything queued so far and clear the queue."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    @property
    def pending_bytes(self) -> int:
        """Number of bytes queued and not yet taken by ``data_to_send``."""
        return len(self._outgoing)

"""One MQTT client connection's state, and the replies every concern sends (PUBACK
and its kin, a refusing CONNACK, a server DISCONNECT)."""

import logging

from ...auth import AuthExchange, Client
from ...broker import Broker
from ...limits import PublishThrottle
from ...message import Message
from ...protocols.mqtt import (
    MQTT_5,
    ConnAck,
    Connect,
    Disconnect,
    PacketType,
    PubAck,
    PubComp,
    PubRec,
    PubRel,
    ServerConnection,
    encode,
    encode_ack,
)
from ...protocols.mqtt import properties as prop
from ...protocols.mqtt import reason_codes as rc
from ...sessions import Session
from ..runner import ConnectionRunner
from .connack import fit_connack
from .outbound import PublishEncoder

log = logging.getLogger("polybroker.mqtt")

MAX_QOS = 2
UNBOUNDED = 268_435_460  # larger than any MQTT packet
# First bytes of the acknowledgement packets (PUBREL has its required flag bits set).
PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70
_ACK_TYPES: dict[int, type[PubAck | PubRec | PubRel | PubComp]] = {
    PUBACK: PubAck, PUBREC: PubRec, PUBREL: PubRel, PUBCOMP: PubComp,
}


class Closing(Exception):
    """Close the connection; at 5.0 send DISCONNECT with ``reason_code`` first.
    ``ending``: why, as ``runner.END_REASONS`` says it."""

    def __init__(self, reason_code: int, reason: str, ending: str = "protocol_error") -> None:
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason
        self.ending = ending


# The encoder of every 3.1 / 3.1.1 connection: without topic aliases it keeps no state.
_V3_ENCODER = PublishEncoder(4, UNBOUNDED, 0)


class ClientState:
    """What one MQTT client connection holds, and the replies every concern sends; the
    concerns (``connect``, ``publish``, ``subscribe``) extend it, ``connection`` joins
    them into ``MQTTClientConnection``."""

    # Thousands of these live at once, most of them idle: no per-instance dict.
    __slots__ = (
        "_auth", "_auth_failed", "_closing_slow", "_packets_read", "_pending_connect",
        "_plain_bytes", "_taken_over",
        "allow_anonymous", "broker", "client", "client_id", "conn", "encoder", "identity",
        "inbound_aliases", "keep_alive", "level", "limits", "peer", "problem_information",
        "runner", "session", "throttle", "user", "will", "will_delay",
    )

    runner: ConnectionRunner  # made by MQTTClientConnection, which is the runner's handler

    def __init__(
        self, broker: Broker, peer: str, identity: str | None = None,
        allow_anonymous: bool = True,
    ) -> None:
        self.broker = broker
        self.limits = limits = broker.limits
        self.peer = peer
        # The client certificate's name (use_identity_as_username), for authentication.
        self.identity = identity
        self.allow_anonymous = allow_anonymous  # the listener's setting
        self.user: str | None = None  # who logged in (None: anonymous)
        self.client: Client | None = None  # for access checks, once connected
        self.conn = ServerConnection(max_packet_size=limits.max_packet_size)
        self.level = 4
        self.client_id: str | None = None
        self.session: Session | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.keep_alive = 0
        self.encoder = _V3_ENCODER
        self.inbound_aliases: dict[int, str] = {}
        self.problem_information = True  # MQTT 5.0 Request Problem Information
        # max_publish_rate; None when there is none (no bucket to keep per connection).
        self.throttle = (PublishThrottle(limits.max_publish_rate, limits.max_publish_burst)
                         if limits.max_publish_rate > 0 else None)
        self._auth: AuthExchange | None = None
        self._pending_connect: Connect | None = None
        self._auth_failed = False  # the enhanced authentication exchange failed
        self._taken_over = False
        self._closing_slow = False
        self._plain_bytes = 0  # buffered QoS 0/1 deliveries, which need not wait for the disk
        self._packets_read = 0  # whole packets in the last read (they restart the keep alive)

    @property
    def name(self) -> str:
        return f"{self.client_id or '<no id>'} ({self.peer})"

    # The packet table lets only CONNECT, AUTH and DISCONNECT through before the CONNACK:
    # every other handler runs with a session and a client.

    @property
    def _session(self) -> Session:
        assert self.session is not None
        return self.session

    @property
    def _client(self) -> Client:
        assert self.client is not None
        return self.client

    def _disconnect(self, reason_code: int, reason: str, ending: str = "protocol_error") -> None:
        """Close from the server side; a 5.0 client is told why [MQTT-4.13.1-1]. Before
        CONNACK only a CONNACK may say it, and no DISCONNECT is sent [MQTT-3.14.0-1]."""
        self.runner.ending(ending, reason)
        if self.level < MQTT_5:
            return
        if self.session is None:
            if rc.is_valid(PacketType.CONNACK, reason_code):
                self._refuse_with(reason_code, self._pending_connect)
            return
        packet = Disconnect(reason_code)
        if self.problem_information:
            with_reason = Disconnect(reason_code, {prop.REASON_STRING: reason})
            # Only if it fits the client's Maximum Packet Size [MQTT-3.14.2-3].
            if len(encode(with_reason, MQTT_5)) <= self.encoder.max_packet_size:
                packet = with_reason
        self.conn.send(packet)

    def _refuse_with(self, code: int, packet: Connect | None) -> None:
        """A refusing CONNACK, unless even it is larger than the 5.0 client's Maximum
        Packet Size [MQTT-3.1.2-24] (the connection then closes without one)."""
        refusal = ConnAck(return_code=code)
        connack: ConnAck | None = refusal
        if packet is not None and packet.protocol_level >= MQTT_5:
            limit = packet.properties.get(prop.MAXIMUM_PACKET_SIZE, UNBOUNDED)
            connack = fit_connack(refusal, limit)
        if connack is not None:
            self.conn.send(connack)

    def _ack(self, first_byte: int, packet_id: int, reason: int) -> None:
        """Send PUBACK/PUBREC/PUBREL/PUBCOMP; 3.1.1 has no reason codes. While the
        publisher is held back (``runner.hold_back``) its PUBACKs and PUBRECs wait, in
        order."""
        if first_byte in (PUBACK, PUBREC) and self.runner.withhold(
                (first_byte, packet_id, reason)):
            return
        if reason == rc.SUCCESS or self.level < MQTT_5:
            self.conn.send_bytes(encode_ack(first_byte, packet_id))
        else:
            self.conn.send(_ACK_TYPES[first_byte](packet_id, reason))


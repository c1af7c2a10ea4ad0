"""The server side of one MQTT connection, sans-IO (shaped like h11).

Bytes from the socket go into ``receive_data`` and come out as packets that
passed both the codec's checks and the connection-level rules; packets to send
go into ``send`` and come out of ``data_to_send``.

MQTT 5.0 connection-level rules enforced here (statement ids: MQTT 5.0):

* a client that put an Authentication Method in its CONNECT sends only AUTH or
  DISCONNECT until the server has sent CONNACK [MQTT-3.1.2-30] (so a CONNACK
  must go out through ``send``, not ``send_bytes``);
* AUTH from a client whose CONNECT had no Authentication Method [MQTT-4.12.0-7],
  or with another Authentication Method than the CONNECT's [MQTT-4.12.0-5,
  MQTT-4.12.1-1], is a Protocol Error. Everything else about enhanced
  authentication (whether to continue, succeed or fail) is the broker's decision;
* a PUBLISH from a client carries no Subscription Identifier [MQTT-3.3.4-6];
* a DISCONNECT may not set a non-zero Session Expiry Interval when the CONNECT's
  was zero or absent (3.14.2.2.2).
"""

from typing import Any, cast

from .codec import MAX_PACKET_SIZE, PacketParser, encode
from .errors import MQTTError, ProtocolError
from .packets import (
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from .properties import AUTHENTICATION_METHOD, SESSION_EXPIRY_INTERVAL, SUBSCRIPTION_IDENTIFIER

# Packets only a server sends; from a client they are a protocol violation.
_SERVER_ONLY = frozenset((ConnAck, SubAck, UnsubAck, PingResp))
_CONNECT_TYPE = 1

# Connection states.
AWAIT_CONNECT = "await CONNECT"
# A 5.0 CONNECT with an Authentication Method is in, its CONNACK not yet out: only AUTH
# and DISCONNECT may come [MQTT-3.1.2-30].
AUTHENTICATING = "authenticating"
CONNECTED = "connected"  # the CONNECT is in
DISCONNECTED = "disconnected"  # DISCONNECT came: later bytes are ignored
FAILED = "failed"  # the client broke the protocol: every later call raises

# The packets each state takes from a client, and the state after them; "CONNACK" is
# the server's. A packet not here is a Protocol Error (which one: ``_refusal``).
TRANSITIONS: dict[tuple[str, type | str], str] = {
    (AWAIT_CONNECT, Connect): CONNECTED,  # AUTHENTICATING with an Authentication Method
    (AUTHENTICATING, Auth): AUTHENTICATING,
    (AUTHENTICATING, Disconnect): DISCONNECTED,
    (AUTHENTICATING, "CONNACK"): CONNECTED,
    **{(CONNECTED, kind): CONNECTED for kind in (
        Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, Unsubscribe, PingReq, Auth)},
    (CONNECTED, Disconnect): DISCONNECTED,
}


class ServerConnection:
    """Protocol state of one client connection, as seen by the server."""

    __slots__ = (
        "_auth_method", "_outgoing", "_parser", "_pending_error", "_session_expiry",
        "_started", "protocol_level", "state",
    )

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        # At level 5 the limit counts whole packets, at 3.1 / 3.1.1 the remaining
        # length (see PacketParser).
        self._parser = PacketParser(max_packet_size)
        self._outgoing = bytearray()
        # Set by the CONNECT, or by a CONNECT that names a supported level but fails.
        self.protocol_level: int | None = None
        self._started = False  # any byte received yet
        self.state = AWAIT_CONNECT
        # MQTT 5.0 state from the CONNECT.
        self._auth_method: str | None = None
        self._session_expiry = 0
        self._pending_error: MQTTError | None = None

    def receive_data(self, data: bytes) -> list[Packet]:
        """Parse ``data`` and return the complete packets it yields, in order.

        Raises an MQTTError subclass when the client breaks the protocol; the
        connection is dead from then on and later calls raise ProtocolError. When
        good packets come before the fault in the same ``data``, they are returned
        and the error waits (``error_pending``) for the next call, which raises it:
        the caller answers them first (a CONNECT gets its CONNACK [MQTT-3.1.4-5]).
        """
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            self._fail(error)
            raise error
        if self.state is FAILED:
            raise ProtocolError("the connection already failed")
        if self.state is DISCONNECTED:
            return []  # the client sent DISCONNECT: anything after it is ignored
        try:
            if not self._started and data:
                self._started = True
                # Reject a non-CONNECT from its first byte rather than buffer its body.
                if data[0] >> 4 != _CONNECT_TYPE:
                    raise ProtocolError("the first packet must be CONNECT [MQTT-3.1.0-1]")
            packets = self._check(self._parser.feed(data))
        except MQTTError as exc:
            self._fail(exc)
            raise
        if self._pending_error is None and self._parser.pending_error is not None:
            self._pending_error, self._parser.pending_error = self._parser.pending_error, None
        return packets

    @property
    def error_pending(self) -> bool:
        """A fault follows the packets the last ``receive_data`` returned."""
        return self._pending_error is not None

    def _fail(self, exc: MQTTError) -> None:
        self.state = FAILED
        if self.protocol_level is None and exc.protocol_level is not None:
            # A CONNECT of a supported level that failed to parse: a refusing
            # CONNACK goes out in the client's version (5.0: with exc.reason_code).
            self.protocol_level = exc.protocol_level

    def _check(self, packets: list[Packet]) -> list[Packet]:
        """The packets that pass the connection-level rules, up to the first that does
        not: its error is raised, or kept for the next call when packets precede it."""
        i = 0
        try:
            for i, packet in enumerate(packets):
                kind = type(packet)
                after = TRANSITIONS.get((self.state, kind))
                if after is None:
                    raise self._refusal(kind)
                if kind is Connect:
                    connect = cast(Connect, packet)  # (``kind is`` does not narrow the type)
                    self.protocol_level = connect.protocol_level
                    self._parser.protocol_level = connect.protocol_level
                    if connect.protocol_level == MQTT_5:
                        self._auth_method = connect.properties.get(AUTHENTICATION_METHOD)
                        self._session_expiry = connect.properties.get(SESSION_EXPIRY_INTERVAL, 0)
                        if self._auth_method is not None:
                            after = AUTHENTICATING
                elif self.protocol_level == MQTT_5:
                    self._check_5(packet, kind)
                self.state = after
                if after is DISCONNECTED:
                    return packets[: i + 1]
        except MQTTError as exc:
            if not i:
                raise
            self._pending_error = exc
            return packets[:i]
        return packets

    def _refusal(self, kind: type) -> ProtocolError:
        """Why a packet of ``kind`` may not come now (it is not in ``TRANSITIONS``)."""
        if kind is Connect:
            return ProtocolError("second CONNECT on one connection [MQTT-3.1.0-2]")
        if self.state is AWAIT_CONNECT:
            return ProtocolError("the first packet must be CONNECT [MQTT-3.1.0-1]")
        if kind in _SERVER_ONLY:
            return ProtocolError(f"{kind.__name__} is sent only by servers")
        return ProtocolError(  # AUTHENTICATING
            f"{kind.__name__} before CONNACK after a CONNECT with an Authentication "
            "Method [MQTT-3.1.2-30]"
        )

    def _check_5(self, packet: Any, kind: type) -> None:
        if kind is Publish:
            if SUBSCRIPTION_IDENTIFIER in packet.properties:
                raise ProtocolError("PUBLISH from a client with a Subscription Identifier "
                                    "[MQTT-3.3.4-6]")
        elif kind is Auth:
            if self._auth_method is None:
                raise ProtocolError("AUTH without an Authentication Method in CONNECT "
                                    "[MQTT-4.12.0-7]")
            if packet.properties.get(AUTHENTICATION_METHOD) != self._auth_method:
                raise ProtocolError("AUTH with another Authentication Method than CONNECT's "
                                    "[MQTT-4.12.0-5, MQTT-4.12.1-1]")
        elif (
            kind is Disconnect
            and not self._session_expiry
            and packet.properties.get(SESSION_EXPIRY_INTERVAL)
        ):
            raise ProtocolError("DISCONNECT sets a Session Expiry Interval after a CONNECT "
                                    "with none (3.14.2.2.2)")

    def send(self, packet: Packet) -> None:
        """Queue ``packet``, encoded at this connection's protocol level."""
        self._outgoing += encode(packet, self.protocol_level or MQTT_3_1_1)
        if type(packet) is ConnAck and self.state is AUTHENTICATING:
            self.state = TRANSITIONS[(AUTHENTICATING, "CONNACK")]

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

"""Errors raised by the MQTT codec.

Each error carries the code that goes on the wire: ``reason_code`` is the MQTT 5.0
reason code (used in a 5.0 CONNACK or DISCONNECT), ``connack_code`` is the 3.1/3.1.1
CONNACK return code when the spec says a CONNACK must precede the close, else None.
``protocol_level`` is the level named by the CONNECT that failed to parse, once its
protocol name and level were read and accepted (else None): a 5.0 server MAY answer
any CONNECT error with a CONNACK carrying ``reason_code`` (section 4.13.1), and needs
to know that the client speaks 5.0 to encode it.
"""


class MQTTError(Exception):
    """A fault in what the peer sent; the connection must be closed."""

    reason_code: int = 0x80
    connack_code: int | None = None
    protocol_level: int | None = None

    def __init__(self, reason: str, *, connack_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if connack_code is not None:
            self.connack_code = connack_code


class MalformedPacket(MQTTError):
    """The bytes do not form a valid packet (MQTT 5.0 reason 0x81)."""

    reason_code = 0x81


class ProtocolError(MQTTError):
    """A well-formed packet that breaks the protocol's rules (reason 0x82)."""

    reason_code = 0x82


class TopicAliasInvalid(ProtocolError):
    """A Topic Alias of 0 [MQTT-3.3.2-8] (the receiver answers 0x94)."""

    reason_code = 0x94


class UnsupportedProtocolVersion(MQTTError):
    """CONNECT names a protocol level the server does not speak [MQTT-3.1.2-2]."""

    reason_code = 0x84
    connack_code = 0x01


class ClientIdentifierRejected(MQTTError):
    """CONNECT carries a client identifier the server will not accept [MQTT-3.1.3-9]."""

    reason_code = 0x85
    connack_code = 0x02


class PacketTooLarge(MQTTError):
    """The packet exceeds the maximum size the server accepts (reason 0x95)."""

    reason_code = 0x95

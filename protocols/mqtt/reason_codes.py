"""MQTT 5.0 reason codes (section 2.4, table 2.6) and the packets each may appear in.

Codes below 0x80 report success, 0x80 and above failure. 0x00 has three names
(Success, Normal disconnection, Granted QoS 0) for the same value.

A receiver checks an inbound packet's code against ``VALID[packet type]``: the
sender "MUST use one of the ... Reason Codes" of that packet ([MQTT-3.2.2-8],
[MQTT-3.4.2-1], [MQTT-3.5.2-1], [MQTT-3.6.2-1], [MQTT-3.7.2-1], [MQTT-3.9.3-2],
[MQTT-3.11.3-2], [MQTT-3.14.2-1], [MQTT-3.15.2-1]); the codec treats any other
code as a Protocol Error (a parsable value the protocol does not allow, in the
terms of section 1.2).
"""

from .packets import PacketType

SUCCESS = 0x00
NORMAL_DISCONNECTION = 0x00
GRANTED_QOS_0 = 0x00
GRANTED_QOS_1 = 0x01
GRANTED_QOS_2 = 0x02
DISCONNECT_WITH_WILL_MESSAGE = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
CONTINUE_AUTHENTICATION = 0x18
RE_AUTHENTICATE = 0x19
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
BANNED = 0x8A
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_IDENTIFIER_IN_USE = 0x91
PACKET_IDENTIFIER_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
MESSAGE_RATE_TOO_HIGH = 0x96
QUOTA_EXCEEDED = 0x97
ADMINISTRATIVE_ACTION = 0x98
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
USE_ANOTHER_SERVER = 0x9C
SERVER_MOVED = 0x9D
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
CONNECTION_RATE_EXCEEDED = 0x9F
MAXIMUM_CONNECT_TIME = 0xA0
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

_T = PacketType
_CONNACK, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = (
    _T.CONNACK, _T.PUBACK, _T.PUBREC, _T.PUBREL, _T.PUBCOMP
)
_SUBACK, _UNSUBACK, _DISCONNECT, _AUTH = _T.SUBACK, _T.UNSUBACK, _T.DISCONNECT, _T.AUTH

# Table 2.6: code -> (name, packets it may appear in).
TABLE: dict[int, tuple[str, tuple[PacketType, ...]]] = {
    SUCCESS: ("Success", (_CONNACK, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP, _UNSUBACK, _AUTH,
                          _DISCONNECT, _SUBACK)),  # "Normal disconnection", "Granted QoS 0"
    GRANTED_QOS_1: ("Granted QoS 1", (_SUBACK,)),
    GRANTED_QOS_2: ("Granted QoS 2", (_SUBACK,)),
    DISCONNECT_WITH_WILL_MESSAGE: ("Disconnect with Will Message", (_DISCONNECT,)),
    NO_MATCHING_SUBSCRIBERS: ("No matching subscribers", (_PUBACK, _PUBREC)),
    NO_SUBSCRIPTION_EXISTED: ("No subscription existed", (_UNSUBACK,)),
    CONTINUE_AUTHENTICATION: ("Continue authentication", (_AUTH,)),
    RE_AUTHENTICATE: ("Re-authenticate", (_AUTH,)),
    UNSPECIFIED_ERROR: ("Unspecified error",
                        (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)),
    MALFORMED_PACKET: ("Malformed Packet", (_CONNACK, _DISCONNECT)),
    PROTOCOL_ERROR: ("Protocol Error", (_CONNACK, _DISCONNECT)),
    IMPLEMENTATION_SPECIFIC_ERROR: ("Implementation specific error",
                                    (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK,
                                     _DISCONNECT)),
    UNSUPPORTED_PROTOCOL_VERSION: ("Unsupported Protocol Version", (_CONNACK,)),
    CLIENT_IDENTIFIER_NOT_VALID: ("Client Identifier not valid", (_CONNACK,)),
    BAD_USER_NAME_OR_PASSWORD: ("Bad User Name or Password", (_CONNACK,)),
    NOT_AUTHORIZED: ("Not authorized",
                     (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)),
    SERVER_UNAVAILABLE: ("Server unavailable", (_CONNACK,)),
    SERVER_BUSY: ("Server busy", (_CONNACK, _DISCONNECT)),
    BANNED: ("Banned", (_CONNACK,)),
    SERVER_SHUTTING_DOWN: ("Server shutting down", (_DISCONNECT,)),
    BAD_AUTHENTICATION_METHOD: ("Bad authentication method", (_CONNACK, _DISCONNECT)),
    KEEP_ALIVE_TIMEOUT: ("Keep Alive timeout", (_DISCONNECT,)),
    SESSION_TAKEN_OVER: ("Session taken over", (_DISCONNECT,)),
    TOPIC_FILTER_INVALID: ("Topic Filter invalid", (_SUBACK, _UNSUBACK, _DISCONNECT)),
    TOPIC_NAME_INVALID: ("Topic Name invalid", (_CONNACK, _PUBACK, _PUBREC, _DISCONNECT)),
    PACKET_IDENTIFIER_IN_USE: ("Packet Identifier in use",
                               (_PUBACK, _PUBREC, _SUBACK, _UNSUBACK)),
    PACKET_IDENTIFIER_NOT_FOUND: ("Packet Identifier not found", (_PUBREL, _PUBCOMP)),
    RECEIVE_MAXIMUM_EXCEEDED: ("Receive Maximum exceeded", (_DISCONNECT,)),
    TOPIC_ALIAS_INVALID: ("Topic Alias invalid", (_DISCONNECT,)),
    PACKET_TOO_LARGE: ("Packet too large", (_CONNACK, _DISCONNECT)),
    MESSAGE_RATE_TOO_HIGH: ("Message rate too high", (_DISCONNECT,)),
    QUOTA_EXCEEDED: ("Quota exceeded", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _DISCONNECT)),
    ADMINISTRATIVE_ACTION: ("Administrative action", (_DISCONNECT,)),
    PAYLOAD_FORMAT_INVALID: ("Payload format invalid",
                             (_CONNACK, _PUBACK, _PUBREC, _DISCONNECT)),
    RETAIN_NOT_SUPPORTED: ("Retain not supported", (_CONNACK, _DISCONNECT)),
    QOS_NOT_SUPPORTED: ("QoS not supported", (_CONNACK, _DISCONNECT)),
    USE_ANOTHER_SERVER: ("Use another server", (_CONNACK, _DISCONNECT)),
    SERVER_MOVED: ("Server moved", (_CONNACK, _DISCONNECT)),
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: ("Shared Subscriptions not supported",
                                         (_SUBACK, _DISCONNECT)),
    CONNECTION_RATE_EXCEEDED: ("Connection rate exceeded", (_CONNACK, _DISCONNECT)),
    MAXIMUM_CONNECT_TIME: ("Maximum connect time", (_DISCONNECT,)),
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: ("Subscription Identifiers not supported",
                                             (_SUBACK, _DISCONNECT)),
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: ("Wildcard Subscriptions not supported",
                                           (_SUBACK, _DISCONNECT)),
}

VALID: dict[int, frozenset[int]] = {
    kind: frozenset(code for code, (_, kinds) in TABLE.items() if kind in kinds)
    for kind in PacketType
}
"""Packet type -> the reason codes that packet may carry (empty: the packet has none)."""

_ZERO_NAMES = {_DISCONNECT: "Normal disconnection", _SUBACK: "Granted QoS 0"}


def name(code: int, packet_type: int | None = None) -> str:
    """The name of ``code`` (for 0x00, as ``packet_type`` calls it), for logs."""
    if code == SUCCESS and packet_type in _ZERO_NAMES:
        return _ZERO_NAMES[packet_type]  # type: ignore[index]
    entry = TABLE.get(code)
    return entry[0] if entry else f"reserved reason code {code:#04x}"


def is_valid(packet_type: int, code: int) -> bool:
    """True if ``code`` may appear in a packet of ``packet_type`` (table 2.6)."""
    return code in VALID.get(packet_type, frozenset())

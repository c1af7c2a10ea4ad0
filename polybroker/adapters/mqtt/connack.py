"""What the MQTT adapter answers a CONNECT with, where the answer depends on a limit:
the keep alive a client may have (``max_keepalive``) and a 5.0 CONNACK that must fit
the client's Maximum Packet Size."""

from ...config import MAX_KEEPALIVE
from ...protocols.mqtt import MQTT_5, ConnAck, encode
from ...protocols.mqtt import properties as prop

# Dropped in this order until a CONNACK fits the client's Maximum Packet Size
# [MQTT-3.1.2-24]: first what only informs (a reason string, user properties, response
# information), then what says the defaults anyway (the four *_AVAILABLE are 1, the
# value an absent property means), then the server's own limits, which the client then
# does not know about (it may be disconnected for crossing them later). What is left
# (Assigned Client Identifier, Server Keep Alive, the authentication method and data)
# the client cannot do without: a CONNACK that does not fit with them is not sent.
OPTIONAL_CONNACK_PROPERTIES = (
    prop.REASON_STRING, prop.USER_PROPERTY, prop.RESPONSE_INFORMATION,
    prop.RETAIN_AVAILABLE, prop.WILDCARD_SUBSCRIPTION_AVAILABLE,
    prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE, prop.SHARED_SUBSCRIPTION_AVAILABLE,
    prop.TOPIC_ALIAS_MAXIMUM, prop.RECEIVE_MAXIMUM, prop.MAXIMUM_PACKET_SIZE,
)


def imposed_keep_alive(asked: int, cap: int) -> int | None:
    """The keep alive the server imposes on a client that asked for ``asked`` seconds,
    under ``max_keepalive`` = ``cap``; None when the client's own stands. No keep alive
    (0) is longer than any cap below 65535; a cap of 0 (or 65535) admits everything."""
    if 0 < cap < MAX_KEEPALIVE and (asked > cap or asked == 0):
        return cap
    return None


def fit_connack(connack: ConnAck, max_packet_size: int) -> ConnAck | None:
    """``connack`` (5.0) without as many optional properties as it takes to fit within
    ``max_packet_size`` bytes; None if even the smallest does not fit."""
    if len(encode(connack, MQTT_5)) <= max_packet_size:
        return connack
    props = dict(connack.properties)
    for key in OPTIONAL_CONNACK_PROPERTIES:
        if props.pop(key, None) is None:
            continue
        smaller = ConnAck(connack.session_present, connack.return_code, props)
        if len(encode(smaller, MQTT_5)) <= max_packet_size:
            return smaller
    return None

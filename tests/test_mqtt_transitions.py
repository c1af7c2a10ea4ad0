"""The MQTT server connection's states follow its transition table."""

import pytest

from polybroker.protocols.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    ProtocolError,
    ServerConnection,
    encode,
)
from polybroker.protocols.mqtt import properties as prop
from polybroker.protocols.mqtt import reason_codes as rc
from polybroker.protocols.mqtt.connection import (
    AUTHENTICATING,
    AWAIT_CONNECT,
    CONNECTED,
    DISCONNECTED,
    FAILED,
    TRANSITIONS,
)

ENHANCED = Connect("client", MQTT_5, properties={prop.AUTHENTICATION_METHOD: "SCRAM-SHA-1"})
AUTH = Auth(rc.CONTINUE_AUTHENTICATION, {prop.AUTHENTICATION_METHOD: "SCRAM-SHA-1"})


def test_plain_connect_ping_disconnect_walk_the_table():
    conn = ServerConnection()
    assert conn.state is AWAIT_CONNECT
    conn.receive_data(encode(Connect("client", MQTT_3_1_1)))
    assert conn.state is CONNECTED
    conn.receive_data(encode(PingReq()))
    assert conn.state is CONNECTED
    conn.receive_data(encode(Disconnect()))
    assert conn.state is DISCONNECTED


def test_MQTT_3_1_2_30_enhanced_authentication_holds_until_the_connack():
    conn = ServerConnection()
    conn.receive_data(encode(ENHANCED, MQTT_5) + encode(AUTH, MQTT_5))
    assert conn.state is AUTHENTICATING
    conn.send(ConnAck(properties={prop.AUTHENTICATION_METHOD: "SCRAM-SHA-1"}))
    assert conn.state is CONNECTED
    conn.receive_data(encode(PingReq(), MQTT_5))
    assert conn.state is CONNECTED


def test_a_packet_the_state_does_not_take_fails_the_connection():
    conn = ServerConnection()
    conn.receive_data(encode(ENHANCED, MQTT_5))
    with pytest.raises(ProtocolError, match=r"MQTT-3\.1\.2-30"):
        conn.receive_data(encode(PingReq(), MQTT_5))
    assert conn.state is FAILED


def test_the_table_takes_connect_only_first():
    assert [kind for state, kind in TRANSITIONS if kind is Connect] == [Connect]
    assert {kind for state, kind in TRANSITIONS if state is AUTHENTICATING} == {
        Auth, Disconnect, "CONNACK"}

"""Tests of ServerConnection: connection-level MQTT rules and the send buffer.

Statement ids ([MQTT-x.y.z-n]) refer to the MQTT 3.1.1 specification.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.protocols.mqtt import (
    MQTT_3_1,
    MQTT_3_1_1,
    ConnAck,
    Connect,
    Disconnect,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    PingReq,
    PingResp,
    ProtocolError,
    PubAck,
    Publish,
    PubRel,
    ServerConnection,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Will,
    encode,
    encode_publish,
)

CONNECT = Connect("client", MQTT_3_1_1, keep_alive=30)
PUBLISH = Publish("a/b", b"hello", 1, packet_id=1)


def connected(level: int = MQTT_3_1_1, **kwargs) -> ServerConnection:
    conn = ServerConnection(**kwargs)
    assert conn.receive_data(encode(Connect("client", level))) == [Connect("client", level)]
    return conn


# --- CONNECT rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [MQTT_3_1, MQTT_3_1_1])
def test_connect_sets_the_protocol_level(level):
    conn = ServerConnection()
    assert conn.protocol_level is None
    conn.receive_data(encode(Connect("client", level)))
    assert conn.protocol_level == level


def test_connect_and_packets_in_one_chunk():
    conn = ServerConnection()
    data = encode(CONNECT) + encode(PUBLISH) + encode(PingReq())
    assert conn.receive_data(data) == [CONNECT, PUBLISH, PingReq()]


def test_connect_split_across_reads():
    conn = ServerConnection()
    data = encode(CONNECT)
    assert conn.receive_data(data[:3]) == []
    assert conn.receive_data(data[3:]) == [CONNECT]


def test_MQTT_3_1_0_1_first_packet_not_connect_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"MQTT-3\.1\.0-1"):
        ServerConnection().receive_data(encode(PingReq()))


def test_MQTT_3_1_0_1_first_packet_not_connect_is_rejected_from_its_first_byte():
    conn = ServerConnection()
    with pytest.raises(ProtocolError):
        conn.receive_data(b"\x30")  # a PUBLISH header, body not sent yet


def test_MQTT_3_1_0_2_second_connect_is_a_protocol_error():
    conn = connected()
    with pytest.raises(ProtocolError, match=r"MQTT-3\.1\.0-2"):
        conn.receive_data(encode(CONNECT))


def test_MQTT_3_1_0_2_second_connect_in_the_same_chunk_is_a_protocol_error():
    # The first CONNECT is returned (to be answered), the error raised next [MQTT-3.1.4-5].
    conn = ServerConnection()
    assert conn.receive_data(encode(CONNECT) * 2) == [CONNECT]
    assert conn.error_pending
    with pytest.raises(ProtocolError, match=r"MQTT-3\.1\.0-2"):
        conn.receive_data(b"")
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")  # dead from then on


def test_MQTT_3_1_4_5_a_bad_packet_after_good_ones_waits_until_they_are_handled():
    conn = ServerConnection()
    bad_subscribe = b"\x82\x06\x00\x00\x00\x01a\x00"  # packet identifier 0
    packets = conn.receive_data(encode(CONNECT) + encode(PUBLISH) + bad_subscribe)
    assert packets == [CONNECT, PUBLISH] and conn.error_pending
    with pytest.raises(MalformedPacket, match="packet identifier 0"):
        conn.receive_data(b"")
    assert not conn.error_pending


def test_MQTT_3_1_2_2_unsupported_version_still_lets_the_adapter_send_connack():
    conn = ServerConnection()
    level_6 = b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x00\x00"
    with pytest.raises(UnsupportedProtocolVersion) as info:
        conn.receive_data(level_6)
    conn.send(ConnAck(False, info.value.connack_code))
    assert conn.data_to_send() == b"\x20\x02\x00\x01"


@pytest.mark.parametrize(
    "packet", [ConnAck(), SubAck(1, (0,)), UnsubAck(1), PingResp()], ids=lambda p: type(p).__name__
)
def test_server_only_packets_from_a_client_are_a_protocol_error(packet):
    conn = connected()
    with pytest.raises(ProtocolError):
        conn.receive_data(encode(packet))


def test_mqtt_3_1_connection_parses_3_1_packets():
    conn = connected(MQTT_3_1)
    resent_subscribe = b"\x8a\x06\x00\x01\x00\x01a\x00"  # DUP set, as 3.1 clients do
    assert conn.receive_data(resent_subscribe) == [Subscribe(1, (Subscription("a"),))]


# --- dead connection, DISCONNECT --------------------------------------------------------------


def test_connection_is_dead_after_an_error():
    conn = connected()
    with pytest.raises(MalformedPacket):
        conn.receive_data(b"\x36\x00")  # QoS 3 PUBLISH
    with pytest.raises(ProtocolError):
        conn.receive_data(encode(PingReq()))
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")


def test_packets_after_disconnect_are_ignored():
    conn = connected()
    data = encode(PUBLISH) + encode(Disconnect()) + encode(PingReq()) + b"\x00\x00garbage"
    assert conn.receive_data(data) == [PUBLISH, Disconnect()]
    assert conn.receive_data(encode(PingReq())) == []


def test_packet_too_large():
    conn = connected(max_packet_size=100)
    assert conn.receive_data(encode(Publish("t", b"x" * 97))) == [Publish("t", b"x" * 97)]
    with pytest.raises(PacketTooLarge):
        conn.receive_data(b"\x30\x65")  # remaining length 101, body not sent


# --- sending ---------------------------------------------------------------------------------


def test_send_and_data_to_send():
    conn = connected()
    assert conn.pending_bytes == 0
    conn.send(ConnAck(True, 0))
    conn.send_bytes(encode_publish(b"a/b", b"hi", 1, False, False, 10))
    conn.send(PubRel(3))
    expected = (
        b"\x20\x02\x01\x00" + bytes.fromhex("3209 0003612f62 000a 6869") + b"\x62\x02\x00\x03"
    )
    assert conn.pending_bytes == len(expected)
    assert conn.data_to_send() == expected
    assert conn.pending_bytes == 0
    assert conn.data_to_send() == b""


def test_send_encodes_at_the_connection_level():
    conn = connected(MQTT_3_1)
    conn.send(ConnAck(True, 0))  # 3.1 has no session present flag
    assert conn.data_to_send() == b"\x20\x02\x00\x00"


def test_send_before_connect_uses_3_1_1():
    conn = ServerConnection()
    conn.send(PingResp())
    assert conn.data_to_send() == b"\xd0\x00"


# --- fuzzing -------------------------------------------------------------------------------

VALID = [
    Connect("c", MQTT_3_1_1, False, 5, "u", b"p", Will("w", b"m", 1, True)),
    PUBLISH,
    Publish("x", b"", 0),
    Publish("y/z", b"p" * 200, 2, True, True, 9),
    PubAck(1),
    PubRel(2),
    Subscribe(3, (Subscription("a/+", 1), Subscription("#", 2))),
    Unsubscribe(4, ("a/+",)),
    PingReq(),
    Disconnect(),
]
FUZZ = settings(max_examples=300, deadline=None)


def feed_expecting_only_mqtt_errors(conn: ServerConnection, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
    except MQTTError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_random_bytes_after_connect(chunks):
    feed_expecting_only_mqtt_errors(connected(), chunks)


@FUZZ
@given(st.binary(max_size=128))
def test_fuzz_random_bytes_from_the_start(data):
    feed_expecting_only_mqtt_errors(ServerConnection(), [b"\x10", data])


@st.composite
def mutated_streams(draw) -> bytes:
    wire = bytearray(b"".join(encode(p) for p in draw(st.lists(st.sampled_from(VALID)))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("set", "insert", "delete")))
        at = draw(st.integers(0, len(wire)))
        if kind == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif wire and at < len(wire):
            if kind == "set":
                wire[at] = draw(st.integers(0, 255))
            else:
                del wire[at]
    return bytes(wire)


@FUZZ
@given(mutated_streams(), st.integers(1, 17))
def test_fuzz_mutated_valid_packets_after_connect(wire, chunk_size):
    chunks = [wire[i : i + chunk_size] for i in range(0, len(wire), chunk_size)]
    feed_expecting_only_mqtt_errors(connected(), chunks)

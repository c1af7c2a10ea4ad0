"""Tests of the STOMP ServerConnection: connection-level rules and the send buffer.

Test names carry the section of the STOMP 1.2 specification they cover.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polybroker.protocols.stomp import (
    HEART_BEAT,
    SUPPORTED_VERSIONS,
    Frame,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    ServerConnection,
    StompError,
    UnsupportedVersion,
    encode_frame,
    encode_message,
)


def connect_frame(version: str | None = "1.2", command: str = "CONNECT", **headers) -> bytes:
    pairs = [("host", "broker")]
    if version is not None:
        pairs.insert(0, ("accept-version", version))
    pairs += [(name.replace("_", "-"), value) for name, value in headers.items()]
    return encode_frame(Frame(command, tuple(pairs)))


def connected(version: str = "1.2", **kwargs) -> ServerConnection:
    conn = ServerConnection(**kwargs)
    accept = None if version == "1.0" else version
    events = conn.receive_data(connect_frame(accept))
    assert [e.command for e in events] == ["CONNECT"]
    assert conn.version == version
    return conn


def frame(command: str, *headers: tuple[str, str], body: bytes = b"", version="1.2") -> bytes:
    return encode_frame(Frame(command, headers, body), version)


# --- Connecting -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
@pytest.mark.parametrize(
    ("accept", "version"), [(None, "1.0"), ("1.0", "1.0"), ("1.1", "1.1"), ("1.0,1.1,1.2", "1.2")]
)
def test_connecting_connect_or_stomp_sets_the_version(command, accept, version):
    conn = ServerConnection()
    assert conn.version is None
    events = conn.receive_data(connect_frame(accept, command))
    assert events[0].command == command
    assert conn.version == version


def test_connecting_connected_frame_1_2():
    conn = connected("1.2", heart_beat=(5000, 6000))
    assert conn.connected_frame(session="s1", server="polybroker/0.1") == Frame(
        "CONNECTED",
        (
            ("version", "1.2"),
            ("heart-beat", "5000,6000"),
            ("session", "s1"),
            ("server", "polybroker/0.1"),
        ),
    )


def test_connecting_connected_frame_1_0_has_no_version_or_heart_beat():
    conn = connected("1.0", heart_beat=(5000, 6000))
    assert conn.connected_frame(session="s1") == Frame("CONNECTED", (("session", "s1"),))
    assert conn.heart_beat == (0, 0)


def test_connecting_connected_frame_needs_a_connect():
    with pytest.raises(RuntimeError):
        ServerConnection().connected_frame()


@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE", "DISCONNECT", "ACK"])
def test_connecting_operation_before_connect_is_a_protocol_error(command):
    conn = ServerConnection()
    data = frame(command, ("destination", "/q"), ("id", "1"), ("receipt", "r1"))
    with pytest.raises(ProtocolError, match="before CONNECT") as info:
        conn.receive_data(data)
    assert info.value.receipt_id == "r1"


def test_connecting_operation_before_connect_refused_from_its_command_line():
    conn = ServerConnection()
    with pytest.raises(ProtocolError, match="before CONNECT"):
        conn.receive_data(b"SEND\n")  # the headers and body never get buffered


def test_connecting_second_connect_is_a_protocol_error():
    conn = connected()
    with pytest.raises(ProtocolError, match="second"):
        conn.receive_data(connect_frame("1.2", "STOMP"))


@pytest.mark.parametrize(("bad", "error"), [
    (b"\r\x00", MalformedFrame),  # does not parse
    (frame("MESSAGE"), ProtocolError),  # parses, but a client may not send it
    (frame("SEND"), ProtocolError),  # a required header is missing
    (b"CONNECT\n", ProtocolError),  # refused from its command line (a second CONNECT)
])
def test_connecting_a_fault_in_the_read_of_the_connect_waits_for_the_next_call(bad, error):
    conn = ServerConnection()
    events = conn.receive_data(connect_frame("1.2") + bad)
    assert [e.command for e in events] == ["CONNECT"]  # answered first (CONNECTED)
    assert conn.version == "1.2"
    assert conn.error_pending
    with pytest.raises(error):
        conn.receive_data(b"")
    assert not conn.error_pending
    with pytest.raises(ProtocolError, match="already failed"):
        conn.receive_data(b"")


def test_a_fault_with_no_frame_before_it_is_raised_at_once():
    conn = connected()
    with pytest.raises(ProtocolError):
        conn.receive_data(b"\n" + frame("MESSAGE"))  # a heart-beat is nothing to answer
    assert not conn.error_pending


@pytest.mark.parametrize("command", ["CONNECTED", "MESSAGE", "RECEIPT", "ERROR"])
def test_server_frames_from_a_client_are_a_protocol_error(command):
    conn = connected()
    with pytest.raises(ProtocolError, match="only by servers"):
        conn.receive_data(command.encode() + b"\n")


def test_connecting_connect_and_frames_in_one_chunk():
    conn = ServerConnection()
    data = connect_frame("1.1") + b"\n" + frame("SEND", ("destination", "/q:x"), version="1.1")
    events = conn.receive_data(data)
    assert events[1:] == [HEART_BEAT, Frame("SEND", (("destination", "/q:x"),))]


def test_connecting_1_0_session_parses_later_frames_unescaped():
    conn = ServerConnection()
    events = conn.receive_data(connect_frame(None) + b"SEND\ndestination:/q\\c\n\n\x00")
    assert events[1] == Frame("SEND", (("destination", "/q\\c"),))


def test_connecting_heart_beats_before_connect_are_returned():
    conn = ServerConnection()
    assert conn.receive_data(b"\r\n\n") == [HEART_BEAT, HEART_BEAT]
    assert conn.version is None


# --- Protocol Negotiation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "accept"),
    [(SUPPORTED_VERSIONS, "2.0"), (SUPPORTED_VERSIONS, ""), (("1.1", "1.2"), None)],
)
def test_protocol_negotiation_no_common_version(versions, accept):
    conn = ServerConnection(versions=versions)
    with pytest.raises(UnsupportedVersion) as info:
        conn.receive_data(connect_frame(accept))
    error = info.value.to_frame()
    assert error.command == "ERROR"
    assert error.get("version") == ",".join(conn.versions)
    assert isinstance(info.value, ProtocolError)


def test_protocol_negotiation_server_versions_restrict_the_choice():
    conn = ServerConnection(versions=["1.1", "1.0"])
    assert conn.versions == ("1.0", "1.1")
    conn.receive_data(connect_frame("1.0,1.1,1.2"))
    assert conn.version == "1.1"


@pytest.mark.parametrize("versions", [(), ("1.3",), ("1.2", "2.0")])
def test_protocol_negotiation_server_versions_must_be_known(versions):
    with pytest.raises(ValueError):
        ServerConnection(versions=versions)


# --- Heart-beating ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "server", "result"),
    [("0,0", (5000, 5000), (0, 0)), ("1000,8000", (5000, 6000), (8000, 6000))],
)
def test_heart_beating_negotiated_by_the_connect(client, server, result):
    conn = ServerConnection(heart_beat=server)
    conn.receive_data(connect_frame("1.2", heart_beat=client))
    assert conn.heart_beat == result


def test_heart_beating_ignored_in_1_0():
    conn = ServerConnection(heart_beat=(1000, 1000))
    conn.receive_data(connect_frame(None, heart_beat="junk"))
    assert conn.heart_beat == (0, 0)


def test_heart_beating_invalid_header_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="heart-beat"):
        ServerConnection().receive_data(connect_frame("1.2", heart_beat="1,x"))


def test_heart_beating_send_heart_beat_queues_an_eol():
    conn = connected()
    conn.send_heart_beat()
    assert conn.data_to_send() == b"\n"


# --- Frames and Headers: required headers ----------------------------------------------------

REQUIRED_CASES = [
    # (version, command, headers, missing header or None when valid)
    ("1.2", "SEND", {"destination": "/q"}, None),
    ("1.2", "SEND", {}, "destination"),
    ("1.0", "SEND", {}, "destination"),
    ("1.2", "SUBSCRIBE", {"destination": "/q", "id": "0"}, None),
    ("1.2", "SUBSCRIBE", {"destination": "/q"}, "id"),
    ("1.1", "SUBSCRIBE", {"destination": "/q"}, "id"),
    ("1.0", "SUBSCRIBE", {"destination": "/q"}, None),
    ("1.0", "SUBSCRIBE", {"id": "0"}, "destination"),
    ("1.2", "UNSUBSCRIBE", {"id": "0"}, None),
    ("1.2", "UNSUBSCRIBE", {"destination": "/q"}, "id"),
    ("1.1", "UNSUBSCRIBE", {}, "id"),
    ("1.0", "UNSUBSCRIBE", {"destination": "/q"}, None),
    ("1.0", "UNSUBSCRIBE", {"id": "0"}, None),
    ("1.0", "UNSUBSCRIBE", {}, "id"),
    ("1.2", "ACK", {"id": "a"}, None),
    ("1.2", "ACK", {"message-id": "m", "subscription": "s"}, "id"),
    ("1.1", "ACK", {"message-id": "m", "subscription": "s"}, None),
    ("1.1", "ACK", {"message-id": "m"}, "subscription"),
    ("1.1", "ACK", {"subscription": "s"}, "message-id"),
    ("1.0", "ACK", {"message-id": "m"}, None),
    ("1.0", "ACK", {}, "message-id"),
    ("1.2", "NACK", {"id": "a"}, None),
    ("1.2", "NACK", {}, "id"),
    ("1.1", "NACK", {"message-id": "m", "subscription": "s"}, None),
    ("1.1", "NACK", {"message-id": "m"}, "subscription"),
    ("1.2", "BEGIN", {"transaction": "t"}, None),
    ("1.2", "BEGIN", {}, "transaction"),
    ("1.1", "COMMIT", {}, "transaction"),
    ("1.0", "ABORT", {}, "transaction"),
    ("1.0", "COMMIT", {"transaction": "t"}, None),
    ("1.2", "DISCONNECT", {}, None),
]


@pytest.mark.parametrize(("version", "command", "headers", "missing"), REQUIRED_CASES)
def test_frames_and_headers_required_headers(version, command, headers, missing):
    conn = connected(version)
    pairs = (*headers.items(), ("receipt", "r-7"))
    data = frame(command, *pairs, version=version)
    if missing is None:
        assert conn.receive_data(data) == [Frame(command, pairs)]
        return
    with pytest.raises(ProtocolError, match=repr(missing)) as info:
        conn.receive_data(data)
    assert info.value.receipt_id == "r-7"
    assert info.value.to_frame().get("receipt-id") == "r-7"


def test_nack_is_not_in_1_0():
    conn = connected("1.0")
    with pytest.raises(ProtocolError, match="NACK"):
        conn.receive_data(b"NACK\nmessage-id:m\n\n\x00")


@pytest.mark.parametrize(
    ("version", "ack", "ok"),
    [
        ("1.2", "auto", True),
        ("1.2", "client", True),
        ("1.2", "client-individual", True),
        ("1.1", "client-individual", True),
        ("1.0", "client-individual", False),
        ("1.0", "client", True),
        ("1.2", "Client", False),
        ("1.2", "", False),
    ],
)
def test_subscribe_ack_header_values(version, ack, ok):
    conn = connected(version)
    data = frame("SUBSCRIBE", ("destination", "/q"), ("id", "0"), ("ack", ack), version=version)
    if ok:
        assert conn.receive_data(data)[0].get("ack") == ack
    else:
        with pytest.raises(ProtocolError, match="ack"):
            conn.receive_data(data)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_body_only_send_may_have_a_body(version):
    conn = connected(version)
    assert conn.receive_data(frame("SEND", ("destination", "/q"), body=b"x"))[0].body == b"x"
    with pytest.raises(ProtocolError, match="body"):
        conn.receive_data(frame("BEGIN", ("transaction", "t"), body=b"x"))


def test_body_on_connect_is_a_protocol_error():
    data = b"CONNECT\naccept-version:1.2\n\nx\x00"
    with pytest.raises(ProtocolError, match="body"):
        ServerConnection().receive_data(data)


def test_body_any_frame_may_have_one_in_1_0():
    conn = connected("1.0")
    assert conn.receive_data(b"BEGIN\ntransaction:t\n\nx\x00")[0].body == b"x"


# --- DISCONNECT / errors ---------------------------------------------------------------------


def test_disconnect_ends_the_stream():
    conn = connected()
    data = frame("DISCONNECT", ("receipt", "77")) + b"\nGARBAGE\n"
    assert conn.receive_data(data) == [Frame("DISCONNECT", (("receipt", "77"),))]
    assert conn.receive_data(b"garbage") == []


def test_codec_errors_pass_through_and_the_connection_fails_for_good():
    conn = connected()
    with pytest.raises(MalformedFrame):
        conn.receive_data(b"SEND\ndestination\n\n\x00")
    with pytest.raises(ProtocolError, match="already failed"):
        conn.receive_data(b"\n")


def test_size_limits_apply_to_the_connection():
    conn = connected(max_frame_size=64)
    with pytest.raises(FrameTooLarge):
        conn.receive_data(b"SEND\ndestination:/q\n\n" + b"x" * 100)


def test_error_frame_carries_message_receipt_and_body():
    error = ProtocolError("bad\nthing: here", receipt_id="r1")
    assert error.to_frame() == Frame(
        "ERROR",
        (("message", "bad thing: here"), ("receipt-id", "r1"), ("content-type", "text/plain")),
        b"bad\nthing: here",
    )
    for version in SUPPORTED_VERSIONS:
        assert encode_frame(error.to_frame(), version)


# --- send buffer -----------------------------------------------------------------------------


def test_send_encodes_at_the_session_version():
    conn = ServerConnection()
    conn.send(Frame("ERROR", (("message", "a:b"),)))  # before CONNECT: 1.2
    assert conn.data_to_send() == b"ERROR\nmessage:a\\cb\ncontent-length:0\n\n\x00"
    conn.receive_data(connect_frame(None))
    conn.send(Frame("RECEIPT", (("receipt-id", "a:b"),)))
    assert conn.data_to_send() == b"RECEIPT\nreceipt-id:a:b\n\n\x00"


def test_send_bytes_and_pending_bytes():
    conn = connected()
    message = encode_message("/q", "1", "0", (), b"hi")
    conn.send(conn.connected_frame())
    conn.send_bytes(message)
    assert conn.pending_bytes == len(encode_frame(conn.connected_frame())) + len(message)
    data = conn.data_to_send()
    assert data.endswith(message)
    assert conn.pending_bytes == 0
    assert conn.data_to_send() == b""


# --- fuzz -------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=120), st.booleans())
def test_fuzz_receive_data_raises_only_stomp_errors(data, after_connect):
    conn = connected() if after_connect else ServerConnection()
    try:
        for i in range(0, len(data), 7):
            conn.receive_data(data[i : i + 7])
    except StompError:
        pass

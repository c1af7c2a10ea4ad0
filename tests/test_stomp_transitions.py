"""The STOMP server connection's states follow its transition table."""

import pytest

from polybroker.protocols.stomp import Frame, ProtocolError, encode_frame
from polybroker.protocols.stomp.connection import (
    AWAIT_CONNECT,
    CONNECTED,
    DISCONNECTED,
    FAILED,
    TRANSITIONS,
    ServerConnection,
)


def frame(command: str, *headers: tuple[str, str]) -> bytes:
    return encode_frame(Frame(command, headers), "1.2")


def test_connect_send_disconnect_walk_the_table():
    connection = ServerConnection()
    assert connection.state is AWAIT_CONNECT
    connection.receive_data(frame("CONNECT", ("accept-version", "1.2"), ("host", "/")))
    assert connection.state is CONNECTED
    connection.receive_data(frame("SEND", ("destination", "/queue/a")))
    assert connection.state is CONNECTED
    connection.receive_data(frame("DISCONNECT") + frame("SEND"))
    assert connection.state is DISCONNECTED
    assert connection.receive_data(frame("SEND")) == []  # ignored after DISCONNECT


@pytest.mark.parametrize("first, then, message", [
    ("SEND", None, "operation before CONNECT"),
    ("CONNECT", "STOMP", "second STOMP"),
])
def test_what_the_table_lacks_is_a_protocol_error(first, then, message):
    connection = ServerConnection()
    data = frame(first, ("accept-version", "1.2"), ("destination", "/queue/a"))
    if then is not None:
        connection.receive_data(data)
        data = frame(then, ("accept-version", "1.2"))
    with pytest.raises(ProtocolError, match=message):
        connection.receive_data(data)
    assert connection.state is FAILED


def test_every_client_frame_is_in_the_table_once_connected():
    taken = {command for state, command in TRANSITIONS if state is CONNECTED}
    assert taken == {"SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT",
                     "ABORT", "DISCONNECT"}
    assert {command for state, command in TRANSITIONS if state is AWAIT_CONNECT} == {
        "CONNECT", "STOMP"}

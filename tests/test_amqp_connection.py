"""The sans-IO AMQP server connection: handshake, login pause, channel states, faults."""

import pytest

from polybroker.protocols.amqp import (
    PROTOCOL_HEADER,
    BasicQos,
    ChannelClose,
    ChannelCloseOk,
    ChannelOpen,
    ChannelOpenOk,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionOpen,
    ConnectionOpenOk,
    ConnectionStart,
    ConnectionStartOk,
    ConnectionTune,
    ConnectionTuneOk,
    FrameParser,
    MethodFrame,
    encode_method,
)
from polybroker.protocols.amqp.connection import (
    AWAIT_LOGIN,
    AWAIT_START_OK,
    CLOSED,
    CLOSING,
    NEED_DATA,
    OPEN,
    PAUSED,
    TRANSITIONS,
    AMQPConnection,
    ChannelCloseConfirmed,
    ChannelClosed,
    ChannelOpened,
    Closed,
    Fault,
    HeaderMismatch,
    LoginRequested,
    Opened,
)

TUNE = ConnectionTune(channel_max=8, frame_max=131072, heartbeat=60)
PLAIN = b"\x00guest\x00secret"


def make_connection() -> AMQPConnection:
    return AMQPConnection(ConnectionStart(), TUNE, max_body_size=1 << 20)


def events(connection: AMQPConnection) -> list[object]:
    """Every event up to NEED_DATA or PAUSED (that one included)."""
    out = []
    while True:
        event = connection.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED:
            return out


def sent_methods(connection: AMQPConnection) -> list[tuple[int, object]]:
    """What the server sent, as (channel, method)."""
    parser = FrameParser(client_side=True)
    return [(e.channel, e.method) for e in parser.receive_data(connection.data_to_send())
            if isinstance(e, MethodFrame)]


def opened() -> AMQPConnection:
    connection = make_connection()
    connection.receive_data(PROTOCOL_HEADER + encode_method(0, ConnectionStartOk(
        mechanism="PLAIN", response=PLAIN)))
    events(connection)
    connection.accept_login()
    connection.receive_data(encode_method(0, ConnectionTuneOk(channel_max=0, frame_max=0,
                                                              heartbeat=30))
                            + encode_method(0, ConnectionOpen()))
    events(connection)
    connection.data_to_send()
    return connection


def test_handshake_pauses_for_the_login_and_answers_every_step():
    connection = make_connection()
    # A client may pipeline tune-ok and open behind its start-ok: they wait for the login.
    connection.receive_data(
        PROTOCOL_HEADER
        + encode_method(0, ConnectionStartOk(mechanism="PLAIN", response=PLAIN,
                                             client_properties={"connection_name": "app"}))
        + encode_method(0, ConnectionTuneOk(channel_max=4, frame_max=65536, heartbeat=10))
        + encode_method(0, ConnectionOpen()))
    assert events(connection) == [LoginRequested("guest", "secret", "PLAIN", "app"), PAUSED]
    assert connection.state is AWAIT_LOGIN
    assert [type(m) for _, m in sent_methods(connection)] == [ConnectionStart]
    connection.accept_login()
    assert events(connection) == [Opened(), NEED_DATA]
    assert connection.state is OPEN
    assert [m for _, m in sent_methods(connection)] == [TUNE, ConnectionOpenOk()]
    assert (connection.channel_max, connection.frame_max, connection.heartbeat) == (
        4, 65536, 10)


def test_tune_ok_may_lower_the_limits_but_not_raise_them():
    connection = make_connection()
    connection.receive_data(PROTOCOL_HEADER + encode_method(0, ConnectionStartOk(
        mechanism="PLAIN", response=PLAIN)))
    events(connection)
    connection.accept_login()
    connection.receive_data(encode_method(0, ConnectionTuneOk(channel_max=100,
                                                              frame_max=1 << 20)))
    events(connection)
    assert (connection.channel_max, connection.frame_max, connection.heartbeat) == (
        8, 131072, 0)


def test_frame_max_below_4096_is_not_allowed():
    connection = make_connection()
    connection.receive_data(PROTOCOL_HEADER + encode_method(0, ConnectionStartOk(
        mechanism="PLAIN", response=PLAIN)))
    events(connection)
    connection.accept_login()
    connection.receive_data(encode_method(0, ConnectionTuneOk(frame_max=1000))
                            + encode_method(0, ConnectionOpen()))
    event, = events(connection)[:-1]
    assert isinstance(event, Fault) and event.code == 530
    assert connection.state is CLOSING  # and the open behind it was dropped
    assert [type(m) for _, m in sent_methods(connection)] == [
        ConnectionStart, ConnectionTune, ConnectionClose]


@pytest.mark.parametrize("mechanism, response", [("CRAM-MD5", b"x"), ("PLAIN", b"junk")])
def test_unreadable_or_unknown_login_comes_out_without_a_user(mechanism, response):
    connection = make_connection()
    connection.receive_data(PROTOCOL_HEADER + encode_method(0, ConnectionStartOk(
        mechanism=mechanism, response=response)))
    login = events(connection)[0]
    assert isinstance(login, LoginRequested) and login.user is None
    connection.refuse_login()
    assert connection.state is CLOSING
    close = sent_methods(connection)[-1][1]
    assert close.reply_code == 403 and mechanism in close.reply_text


def test_method_before_open_is_command_invalid():
    connection = make_connection()
    connection.receive_data(PROTOCOL_HEADER + encode_method(0, ConnectionOpen()))
    event = events(connection)[0]
    assert event == Fault(503, "COMMAND_INVALID - expected 'connection.start-ok'")


def test_wrong_protocol_header_is_answered_with_ours():
    connection = make_connection()
    connection.receive_data(b"AMQP\x00\x00\x08\x00")
    assert isinstance(events(connection)[0], HeaderMismatch)
    assert connection.state is CLOSED
    assert connection.data_to_send() == PROTOCOL_HEADER


def test_a_bad_frame_behind_the_header_is_a_frame_error():
    connection = make_connection()
    connection.receive_data(PROTOCOL_HEADER + b"\x01\x00\x00\x00\x00\x00\x00\x00")
    event = events(connection)[0]
    assert isinstance(event, Fault) and event.code == 501
    assert connection.state is CLOSING
    assert [type(m) for _, m in sent_methods(connection)] == [ConnectionClose]
    connection.receive_data(encode_method(0, ConnectionCloseOk()))  # unparsable from now on
    assert events(connection) == [NEED_DATA]


def test_channel_life_cycle_and_our_close():
    connection = opened()
    connection.receive_data(encode_method(1, ChannelOpen()) + encode_method(1, BasicQos()))
    opened_event, qos, need = events(connection)
    assert opened_event == ChannelOpened(1) and qos.method == BasicQos() and need is NEED_DATA
    assert sent_methods(connection) == [(1, ChannelOpenOk())]
    connection.close_channel(1, ChannelClose(reply_code=404, reply_text="NOT_FOUND"))
    assert connection.channel_closing(1)
    # After our channel.close only close-ok counts on that channel.
    connection.receive_data(encode_method(1, BasicQos()) + encode_method(1, ChannelCloseOk()))
    assert events(connection) == [ChannelCloseConfirmed(1), NEED_DATA]
    # A close of a channel that is not open is answered, not an error.
    connection.receive_data(encode_method(1, ChannelOpen()) + encode_method(1, ChannelClose())
                            + encode_method(2, ChannelClose()))
    assert events(connection) == [ChannelOpened(1), ChannelClosed(1), NEED_DATA]
    assert [m for _, m in sent_methods(connection)][-2:] == [ChannelCloseOk(), ChannelCloseOk()]


def test_channel_errors_close_the_connection_and_drop_what_follows():
    connection = opened()
    connection.receive_data(encode_method(9, ChannelOpen()) + encode_method(1, ChannelOpen()))
    assert events(connection) == [
        Fault(504, "CHANNEL_ERROR - channel 9 above channel_max 8"), NEED_DATA]
    # Only close / close-ok count now.
    connection.receive_data(encode_method(1, ChannelOpen())
                            + encode_method(0, ConnectionCloseOk()))
    assert events(connection) == [Closed(False, 200, ""), NEED_DATA]
    assert connection.state is CLOSED


def test_client_close_is_answered():
    connection = opened()
    connection.receive_data(encode_method(0, ConnectionClose(reply_text="bye")))
    assert events(connection) == [Closed(True, 200, "bye"), NEED_DATA]
    assert sent_methods(connection) == [(0, ConnectionCloseOk())]


def test_the_table_names_every_state_a_close_may_come_from():
    for state in (AWAIT_START_OK, OPEN, CLOSING):
        assert TRANSITIONS[(state, "close")] is CLOSING

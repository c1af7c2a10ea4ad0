"""One log line per ended connection, the same for MQTT, STOMP and AMQP, saying why it
ended; the reason also stays on the connection's runner as a word (``end_reason``)."""

import logging

import pytest
import trio
import trio.testing

from polybroker.adapters.runner import END_REASONS
from polybroker.config import StompSettings
from polybroker.protocols.amqp import ConnectionClose, ConnectionCloseOk, QueueDeclare
from polybroker.protocols.amqp.codec import encode_method
from polybroker.protocols.mqtt import Connect, Disconnect

from .rawclient import connect_client as connect_mqtt
from .stompclient import connect_client as connect_stomp
from .test_amqp_adapter import open_client as open_amqp


def end_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " disconnected: " in r.getMessage()]


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger="polybroker")


# -- MQTT --------------------------------------------------------------------------------------


async def mqtt_connected(nursery, broker, client_id: str, keep_alive: int = 0):
    client = await connect_mqtt(nursery, broker)
    await client.connect(client_id, keep_alive=keep_alive)
    (server,) = broker.connections
    return client, server.runner


async def test_mqtt_keep_alive_timeout_is_one_line(nursery, broker, autojump_clock, caplog):
    client, runner = await mqtt_connected(nursery, broker, "c1", keep_alive=10)
    await client.receive_until_closed(timeout=60)
    assert end_lines(caplog) == ["mqtt client c1 (memory) disconnected: keep-alive timeout"]
    assert runner.end_reason == "keepalive_timeout"


async def test_mqtt_protocol_error_is_one_line(nursery, broker, caplog):
    client, runner = await mqtt_connected(nursery, broker, "c2")
    await client.send(Connect(client_id="again"))  # a second CONNECT [MQTT-3.1.0-2]
    await client.receive_until_closed()
    (line,) = end_lines(caplog)
    assert line.startswith("mqtt client c2 (memory) disconnected: protocol error: ")
    assert runner.end_reason == "protocol_error"


async def test_mqtt_client_disconnect_is_one_line(nursery, broker, caplog):
    client, runner = await mqtt_connected(nursery, broker, "c3")
    await client.send(Disconnect())
    await client.receive_until_closed()
    assert end_lines(caplog) == ["mqtt client c3 (memory) disconnected: client disconnect"]
    assert runner.end_reason == "client_disconnect"


async def test_mqtt_peer_closing_is_one_line(nursery, broker, caplog):
    client, runner = await mqtt_connected(nursery, broker, "c4")
    await client.close()
    with trio.fail_after(5):
        while broker.connections:
            await trio.testing.wait_all_tasks_blocked()
    assert end_lines(caplog) == ["mqtt client c4 (memory) disconnected: peer closed"]
    assert runner.end_reason == "peer_closed"


async def test_mqtt_takeover_is_one_line(nursery, broker, caplog):
    first, runner = await mqtt_connected(nursery, broker, "c5")
    second = await connect_mqtt(nursery, broker)
    await second.connect("c5")
    await first.receive_until_closed()
    assert end_lines(caplog) == ["mqtt client c5 (memory) disconnected: taken over"]
    assert runner.end_reason == "taken_over"


# -- STOMP -------------------------------------------------------------------------------------


async def test_stomp_heart_beat_timeout_is_one_line(
        nursery, make_broker, autojump_clock, caplog):
    broker = make_broker(stomp=StompSettings(heart_beat_send=0, heart_beat_receive=10))
    client = await connect_stomp(nursery, broker)
    await client.connect("1.2", heart_beat="5000,0")
    await client.receive_until_closed(timeout=60)
    name = client.server.name
    assert end_lines(caplog) == [
        f"stomp client {name} disconnected: heart-beat timeout: nothing received for 20s"]
    assert client.server.runner.end_reason == "heartbeat_timeout"


async def test_stomp_protocol_error_is_one_line(nursery, broker, caplog):
    client = await connect_stomp(nursery, broker)
    await client.connect("1.2")
    await client.send("UNSUBSCRIBE", {"id": "none"})
    await client.receive_until_closed()
    (line,) = end_lines(caplog)
    assert line.startswith(f"stomp client {client.server.name} disconnected: protocol error: ")
    assert client.server.runner.end_reason == "protocol_error"


async def test_stomp_client_disconnect_is_one_line(nursery, broker, caplog):
    client = await connect_stomp(nursery, broker)
    await client.connect("1.2")
    await client.request("DISCONNECT")
    await client.receive_until_closed()
    await client.close()
    with trio.fail_after(5):
        await client.server_done.wait()
    assert end_lines(caplog) == [
        f"stomp client {client.server.name} disconnected: client disconnect"]
    assert client.server.runner.end_reason == "client_disconnect"


# -- AMQP --------------------------------------------------------------------------------------


async def amqp_runner(broker):
    (server,) = broker.connections
    return server.runner


async def test_amqp_heartbeat_timeout_is_one_line(nursery, broker, autojump_clock, caplog):
    client = await open_amqp(nursery, broker, channels=0, heartbeat=4)
    runner = await amqp_runner(broker)
    await client.closed(timeout=30)
    assert end_lines(caplog) == ["amqp client guest (test-peer) disconnected: heart-beat "
                                 "timeout: nothing received for 8s"]
    assert runner.end_reason == "heartbeat_timeout"


async def test_amqp_protocol_error_is_one_line(nursery, broker, autojump_clock, caplog):
    client = await open_amqp(nursery, broker)
    runner = await amqp_runner(broker)
    await client.send_raw(encode_method(1, QueueDeclare(queue="q"))[:-1] + b"\x00")
    await client.expect(0, ConnectionClose)
    await client.send(0, ConnectionCloseOk())
    await client.closed()
    (line,) = end_lines(caplog)
    assert line.startswith("amqp client guest (test-peer) disconnected: protocol error: 501 ")
    assert runner.end_reason == "protocol_error"


async def test_amqp_client_close_is_one_line(nursery, broker, caplog):
    client = await open_amqp(nursery, broker)
    runner = await amqp_runner(broker)
    await client.close_connection()
    assert end_lines(caplog) == [
        "amqp client guest (test-peer) disconnected: client disconnect: 200 bye"]
    assert runner.end_reason == "client_disconnect"


def test_every_reason_has_its_words():
    assert all(word.replace("_", " ") in (words, words.replace("-", ""))
               for word, words in END_REASONS.items())

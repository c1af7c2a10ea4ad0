"""The pytest fixtures that ship with the package (``polybroker.testing.plugin``, loaded
through the ``pytest11`` entry point), driven by real clients: paho-mqtt, stomp.py, pika."""

from functools import partial

import pika
import pytest
import stomp
import trio
from paho.mqtt import publish

from polybroker.testing import Endpoints

pytest_plugins = ("pytester",)

HOST = "127.0.0.1"


def send_all_protocols(broker: Endpoints) -> None:
    """One message to sensors/<protocol> from each protocol's client."""
    publish.single("sensors/mqtt", b"1", qos=1, hostname=HOST, port=broker.mqtt_port)
    client = stomp.Connection([(HOST, broker.stomp_port)])
    client.connect(wait=True)
    client.send("/topic/sensors/stomp", "2")
    client.disconnect()  # waits for the DISCONNECT's receipt
    with pika.BlockingConnection(pika.ConnectionParameters(HOST, broker.amqp_port)) as amqp:
        amqp.channel().basic_publish("amq.topic", "sensors.amqp", b"3")


def assert_all_protocols(messages) -> None:
    assert sorted((m.topic, m.payload) for m in messages) == [
        ("sensors/amqp", b"3"), ("sensors/mqtt", b"1"), ("sensors/stomp", b"2")]


def test_thread_fixture_serves_every_protocol(polybroker, tmp_path):
    capture = polybroker.capture("sensors/#")
    send_all_protocols(polybroker)
    assert_all_protocols(capture.wait(3))
    for scheme in ("mqtt", "stomp", "amqp", "mqtt+ws", "stomp+ws"):
        assert polybroker.url(scheme).startswith(f"{scheme}://127.0.0.1:")
    assert polybroker.url("mqtt+ws").endswith("/mqtt")
    assert polybroker.data_dir.is_relative_to(tmp_path)  # fresh for every test
    assert (polybroker.data_dir / "store").is_dir()


def test_websocket_url_takes_paho(polybroker):
    capture = polybroker.capture("ws/#")
    publish.single("ws/t", b"over websocket", hostname=HOST, port=polybroker.ws_port,
                   transport="websockets")
    assert capture.wait(1)[0].payload == b"over websocket"


def test_capture_gets_retained_messages_first_and_every_qos(polybroker):
    publish.single("state/door", b"open", qos=1, retain=True, hostname=HOST,
                   port=polybroker.mqtt_port)
    capture = polybroker.capture("state/#")
    publish.single("state/window", b"shut", qos=2, hostname=HOST, port=polybroker.mqtt_port)
    first, second = capture.wait(2)
    assert (first.topic, first.payload, first.retain) == ("state/door", b"open", True)
    assert (second.topic, second.qos, second.retain) == ("state/window", 2, False)
    assert capture.payloads() == [b"open", b"shut"]
    with pytest.raises(TimeoutError, match="2 of 3 messages"):
        capture.wait(3, timeout=0.2)


@pytest.mark.polybroker(tls=True)
def test_tls_marker_adds_tls_listeners_with_a_generated_ca(polybroker):
    capture = polybroker.capture("secure/#")
    publish.single("secure/t", b"tls", hostname="localhost", port=polybroker.port("mqtts"),
                   tls={"ca_certs": str(polybroker.ca_file)})
    assert capture.wait(1)[0].payload == b"tls"
    for scheme in ("stomp+tls", "amqps", "mqtt+wss", "stomp+wss"):
        assert polybroker.port(scheme) > 0


@pytest.mark.polybroker(persistence=False)
def test_persistence_marker_keeps_everything_in_memory(polybroker):
    assert not (polybroker.data_dir / "store").exists()


seen_by_session: list[tuple[str, ...]] = []


@pytest.mark.parametrize("run", [1, 2])
def test_session_fixture_is_one_broker(polybroker_session, run):
    seen_by_session.append(polybroker_session.urls)
    assert len(set(seen_by_session)) == 1


async def test_trio_fixture_runs_in_the_test_loop(polybroker_trio):
    capture = await polybroker_trio.capture_async("sensors/#")
    await trio.to_thread.run_sync(partial(send_all_protocols, polybroker_trio))
    assert_all_protocols(await capture.wait_async(3))


def test_process_fixture_runs_the_command(polybroker_process):
    capture = polybroker_process.capture("sensors/#")
    send_all_protocols(polybroker_process)
    assert_all_protocols(capture.wait(3))


def test_plugin_is_loaded_by_its_entry_point(pytester):
    # A project of its own with no conftest: pip install polybroker is enough.
    pytester.makepyfile("""
        from paho.mqtt import publish

        def test_it(polybroker):
            capture = polybroker.capture("a/#")
            publish.single("a/b", b"x", hostname="127.0.0.1", port=polybroker.mqtt_port)
            assert capture.wait(1)[0].payload == b"x"
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)

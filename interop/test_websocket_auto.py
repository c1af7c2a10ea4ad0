"""MQTT over WebSocket and WSS with paho-mqtt, plain HTTP on a WebSocket port, and one
``auto`` port serving every protocol, against the real ``polybroker serve``."""

import contextlib
import http.client
import socket
import string
import subprocess
from pathlib import Path

import pytest

from polybroker.server import PROTOCOL_HANDLERS

from .brokerproc import BrokerProcess
from .clients import WAIT, OutputProcess
from .conftest import require_tool
from .test_paho_mqtt import PahoClient
from .test_tls import polybroker_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ws") / "certs"
    polybroker_certs(directory)
    return directory


@pytest.fixture
def ws_broker(tmp_path, certs):
    proc = BrokerProcess(
        tmp_path / "data", "--certfile", str(certs / "server.crt"),
        "--keyfile", str(certs / "server.key"),
        listen=("mqtt://127.0.0.1:0", "mqtt+ws://127.0.0.1:0/mqtt",
                "mqtt+wss://127.0.0.1:0/mqtt"),
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def clients():
    """``clients(port, client_id, **options)``: connected PahoClients, stopped at the end."""
    with contextlib.ExitStack() as stack:

        def factory(port: int, client_id: str, *, cafile: Path | None = None,
                    **options: object) -> PahoClient:
            client = PahoClient(port, client_id, **options)
            stack.callback(client.stop)
            if cafile is not None:
                client.client.tls_set(ca_certs=str(cafile))
            client.connect()
            return client

        yield factory


def mosquitto_sub(port: int, *args: str) -> OutputProcess:
    return OutputProcess([require_tool("stdbuf"), "-oL", require_tool("mosquitto_sub"),
                          "-h", "127.0.0.1", "-p", str(port), "-d", *args])


def mosquitto_pub(port: int, *args: str) -> None:
    out = subprocess.run([require_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port),
                          *args], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_paho_over_websocket_and_wss_meets_tcp_clients(ws_broker, certs, clients, tmp_path):
    ws = clients(ws_broker.port_of("mqtt+ws"), "paho-ws", transport="websockets")
    wss = clients(ws_broker.port_of("mqtt+wss"), "paho-wss", transport="websockets",
                  cafile=certs / "ca.crt")
    assert ws.subscribe(("web/#", 1)) == [1]
    assert wss.subscribe(("web/#", 2)) == [2]
    # 300 KiB: more than one read of the WebSocket stream (text: mosquitto_sub prints it).
    big = string.ascii_letters.encode() * 6000
    (tmp_path / "big").write_bytes(big)
    mosquitto_pub(ws_broker.port, "-t", "web/tcp", "-q", "1", "-m", "from tcp")
    mosquitto_pub(ws_broker.port, "-t", "web/big", "-q", "1", "-f", str(tmp_path / "big"))
    for client in (ws, wss):
        got = client.receive(2)
        assert [(m.topic, m.payload) for m in got] == [("web/tcp", b"from tcp"), ("web/big", big)]

    with mosquitto_sub(ws_broker.port, "-t", "web/#", "-C", "2", "-v", "-W", str(WAIT)) as sub:
        sub.wait_for_line("received SUBACK")
        ws.publish("web/ws", b"from websocket", 1)
        wss.publish("web/wss", big, 2)
        sub.wait_for_line(r"^web/ws from websocket$")
        sub.wait_for_line(r"^web/wss abcd\w{311996}$")
        assert sub.finish() == 0
    assert [(m.topic, m.payload) for m in ws.receive(2)] == [
        ("web/ws", b"from websocket"), ("web/wss", big)]
    ws.disconnect()
    ws_broker.wait_for_log(r"client paho-ws .* disconnected: client disconnect")


def test_plain_http_on_a_websocket_port_gets_an_http_error(ws_broker):
    port = ws_broker.port_of("mqtt+ws")
    for path, status in (("/mqtt", 426), ("/", 404)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == status
            assert response.read().endswith(b"\n")
        finally:
            conn.close()
    ws_broker.wait_for_log(r"WebSocket upgrade from .* refused: 404 no WebSocket endpoint at /")


STOMP_CONNECT = b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"


def test_auto_port_serves_mqtt_clients_and_recognises_stomp_and_amqp(tmp_path, clients):
    broker = BrokerProcess(tmp_path / "data", listen=("auto://127.0.0.1:0",))
    try:
        with mosquitto_sub(broker.port, "-t", "auto/#", "-C", "1", "-v",
                           "-W", str(WAIT)) as sub, \
                socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT) as stomp:
            sub.wait_for_line("received SUBACK")
            stomp.sendall(STOMP_CONNECT)  # at the same time as the MQTT clients
            publisher = clients(broker.port, "paho-auto")
            publisher.publish("auto/t", b"one port", 1)
            sub.wait_for_line(r"^auto/t one port$")
            assert sub.finish() == 0
            answer = stomp.recv(4096)
        if "stomp" in PROTOCOL_HANDLERS:
            assert answer.startswith(b"CONNECTED\n")
        else:  # until the STOMP adapter is registered: recognised, said, closed
            assert answer == b""
            broker.wait_for_log(r"auto://127\.0\.0\.1:\d+: connection from .* speaks stomp")
        with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT) as amqp:
            amqp.sendall(b"AMQP\x00\x00\x09\x01")
            answer = amqp.recv(4096)
        if "amqp" not in PROTOCOL_HANDLERS:
            assert answer == b""
            broker.wait_for_log(r"connection from .* speaks amqp")
    finally:
        broker.stop()

"""STOMP over the broker's other transports, with real third-party clients, against the
real ``polybroker serve``:

- stomp.py over WebSocket (``stomp.WSConnection``, which runs on websocket-client, a
  dependency of stomp.py) on a ``stomp+ws`` listener, in text and in binary frames,
  offering the ``v12.stomp`` subprotocol or none, next to paho-mqtt over TCP;
- stomp.py over WebSocket and paho-mqtt over WebSocket on one ``auto+ws`` port (the
  protocol chosen by subprotocol, or sniffed when none is offered);
- stomp.py over TCP and paho-mqtt on one ``auto`` port at the same time;
- stomp.py over TLS (``stomp+tls``) with certificates from ``polybroker certs``, and a
  client trusting the wrong CA failing cleanly while the broker keeps serving.

Every wait is bounded and on something a client reports (a stomp.py callback or RECEIPT,
a paho acknowledgement) or a broker log line; nothing sleeps. Clients are disconnected
and the broker stopped at the end of each test, whatever happens.
"""

import contextlib
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import stomp
from stomp.exception import ConnectFailedException
from websocket import ABNF

from .brokerproc import BrokerProcess
from .clients import WAIT
from .test_paho_mqtt import PahoClient
from .test_stomp_py import Recorder, StompPy
from .test_tls import polybroker_certs

SUBPROTOCOL = {"Sec-WebSocket-Protocol": "v12.stomp"}


class StompOver(StompPy):
    """A StompPy (STOMP 1.2, every action waiting for its RECEIPT) on a connection made
    here: stomp.py over WebSocket, or over TLS."""

    def __init__(self, conn: stomp.connect.BaseConnection, **connect: str) -> None:
        self.version = "1.2"
        self.conn = conn
        self.listener = Recorder()
        self.conn.set_listener("recorder", self.listener)
        self._ids = itertools.count()
        self.conn.connect(wait=True, **connect)
        assert self.listener.connected.wait(WAIT), "no CONNECTED"


class Clients:
    """Makes the clients of one test; each is stopped at the end, then the broker."""

    def __init__(self, stack: contextlib.ExitStack, tmp_path: Path) -> None:
        self.stack = stack
        self.tmp_path = tmp_path

    def broker(self, *flags: str, listen: tuple[str, ...]) -> BrokerProcess:
        proc = BrokerProcess(self.tmp_path / "data", *flags, listen=listen)
        self.stack.callback(proc.stop)
        return proc

    def stomp_ws(self, port: int, path: str, header: dict[str, str] | None = None,
                 binary_mode: bool = False) -> StompOver:
        conn = stomp.WSConnection([("127.0.0.1", port)], ws_path=path, header=header,
                                  binary_mode=binary_mode, reconnect_attempts_max=1,
                                  timeout=WAIT)
        return self._started(conn)

    def stomp_tcp(self, port: int, cafile: Path | None = None) -> StompOver:
        conn = stomp.Connection12([("127.0.0.1", port)], reconnect_attempts_max=1,
                                  timeout=WAIT)
        if cafile is not None:
            conn.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=str(cafile))
        return self._started(conn)

    def _started(self, conn: stomp.connect.BaseConnection) -> StompOver:
        # Registered before connecting: a half-made connection is stopped too.
        self.stack.callback(_stop_transport, conn)
        client = StompOver(conn)
        self.stack.callback(client.stop)
        return client

    def paho(self, port: int, client_id: str, *, ws_path: str | None = None) -> PahoClient:
        options = {} if ws_path is None else {"transport": "websockets"}
        client = PahoClient(port, client_id, **options)
        self.stack.callback(client.stop)
        if ws_path is not None:
            client.client.ws_set_options(path=ws_path)
        client.connect()
        return client


def _stop_transport(conn: stomp.connect.BaseConnection) -> None:
    """Teardown for a connection whatever its state: close its socket, end its thread."""
    if conn.transport.socket is not None:
        conn.transport.disconnect_socket()
    conn.transport.stop()


@pytest.fixture
def clients(tmp_path) -> Iterator[Clients]:
    with contextlib.ExitStack() as stack:
        yield Clients(stack, tmp_path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.crt and server.crt (localhost, 127.0.0.1, ::1) from ``polybroker certs``."""
    directory = tmp_path_factory.mktemp("stomp-tls") / "certs"
    polybroker_certs(directory)
    return directory


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    """Another CA, which the broker's certificate does not chain to."""
    directory = tmp_path_factory.mktemp("stomp-other") / "certs"
    polybroker_certs(directory)
    return directory


def answered_subprotocol(client: StompOver) -> str | None:
    """The Sec-WebSocket-Protocol of the broker's 101 response to a stomp.py WS client."""
    return client.conn.transport.socket.getheaders().get("sec-websocket-protocol")


def record_opcodes(client: StompOver) -> list[int]:
    """The opcodes of the data frames the client receives from now on (the frame its
    receiver thread may already be waiting for is not counted)."""
    socket = client.conn.transport.socket
    opcodes: list[int] = []
    receive = socket.recv_data

    def recv_data(*args, **kwargs):
        opcode, data = receive(*args, **kwargs)
        opcodes.append(opcode)
        return opcode, data

    socket.recv_data = recv_data
    return opcodes


def frame_summary(frame) -> tuple[str, str]:
    return frame.headers["destination"], frame.body


def paho_summary(messages) -> list[tuple[str, bytes]]:
    return sorted((m.topic, m.payload) for m in messages)


# -- stomp.py over WebSocket -------------------------------------------------------------


@pytest.mark.parametrize("binary_mode", [False, True], ids=["text-frames", "binary-frames"])
def test_stomp_py_over_websocket_with_mqtt_and_a_queue(clients, binary_mode):
    broker = clients.broker(listen=("mqtt://127.0.0.1:0", "stomp+ws://127.0.0.1:0/stomp"))
    port = broker.port_of("stomp+ws")
    subscriber = clients.stomp_ws(port, "/stomp", SUBPROTOCOL, binary_mode)
    worker = clients.stomp_ws(port, "/stomp", binary_mode=binary_mode)  # no subprotocol
    assert answered_subprotocol(subscriber) == "v12.stomp"
    assert answered_subprotocol(worker) is None
    assert subscriber.listener.connected_frame.headers["version"] == "1.2"
    # The broker answers in the kind of frame the client sends.
    opcodes = [record_opcodes(client) for client in (subscriber, worker)]
    paho = clients.paho(broker.port, "paho-tcp")
    assert paho.subscribe(("a/#", 1)) == [1]

    subscriber.subscribe("/topic/a/b")
    worker.subscribe("/queue/jobs")
    paho.publish("a/b", "from paho: größer ✓".encode(), 1)
    frame = subscriber.next_message()
    assert frame_summary(frame) == ("/topic/a/b", "from paho: größer ✓")
    assert paho.next_message().topic == "a/b"  # its own message, through the # filter

    big = "0123456789abcdef" * 8192  # 128 KiB: more than one of the broker's 64 KiB reads
    for body in ("job 1", "jöb 2", big):
        subscriber.send("/queue/jobs", body, content_type="text/plain")
    got = [worker.next_message() for _ in range(3)]
    assert [frame_summary(f) for f in got] == [
        ("/queue/jobs", "job 1"), ("/queue/jobs", "jöb 2"), ("/queue/jobs", big)]
    assert all(f.headers["content-type"] == "text/plain" for f in got)

    subscriber.send("/topic/a/c", "from websocket")
    received = paho.next_message()
    assert (received.topic, received.payload) == ("a/c", b"from websocket")
    assert subscriber.messages_until_idle() == []  # /topic/a/c is not /topic/a/b
    assert worker.messages_until_idle() == []
    expected = ABNF.OPCODE_BINARY if binary_mode else ABNF.OPCODE_TEXT
    assert [set(seen) for seen in opcodes] == [{expected}, {expected}]
    for client in (subscriber, worker):
        session = client.listener.connected_frame.headers["session"]
        client.disconnect()
        broker.wait_for_log(
            rf"client {session} \(127\.0\.0\.1:\d+\) disconnected: client disconnect")


def test_auto_websocket_port_serves_stomp_py_and_paho(clients):
    broker = clients.broker(listen=("auto+ws://127.0.0.1:0/",))
    port = broker.port_of("auto+ws")
    chosen = clients.stomp_ws(port, "/", SUBPROTOCOL)  # protocol from the subprotocol
    sniffed = clients.stomp_ws(port, "/")  # none offered: the broker sniffs CONNECT
    assert answered_subprotocol(chosen) == "v12.stomp"
    assert answered_subprotocol(sniffed) is None
    paho = clients.paho(port, "paho-auto-ws", ws_path="/")  # offers subprotocol "mqtt"
    assert paho.subscribe(("web/#", 1)) == [1]
    chosen.subscribe("/topic/web/#")
    sniffed.subscribe("/queue/web")

    paho.publish("web/mqtt", b"from paho over websocket", 1)
    assert frame_summary(chosen.next_message()) == ("/topic/web/mqtt",
                                                   "from paho over websocket")
    chosen.send("/queue/web", "for the sniffed one")
    assert frame_summary(sniffed.next_message()) == ("/queue/web", "for the sniffed one")
    sniffed.send("/topic/web/stomp", "from stomp over websocket")
    assert frame_summary(chosen.next_message()) == ("/topic/web/stomp",
                                                   "from stomp over websocket")
    assert paho_summary(paho.receive(2)) == [
        ("web/mqtt", b"from paho over websocket"),
        ("web/stomp", b"from stomp over websocket"),
    ]
    for client in (chosen, sniffed):
        client.disconnect()
    paho.disconnect()


# -- one auto port -----------------------------------------------------------------------


def test_auto_port_serves_stomp_py_and_paho_at_the_same_time(clients):
    broker = clients.broker(listen=("auto://127.0.0.1:0",))
    port = broker.port_of("auto")
    stomp_client = clients.stomp_tcp(port)
    paho = clients.paho(port, "paho-mix")
    assert paho.subscribe(("#", 1)) == [1]
    stomp_client.subscribe("/topic/mix")

    paho.publish("mix", b"from mqtt", 1)
    assert frame_summary(stomp_client.next_message()) == ("/topic/mix", "from mqtt")
    stomp_client.send("/topic/mix/s", "from stomp")
    assert paho_summary(paho.receive(2)) == [("mix", b"from mqtt"),
                                             ("mix/s", b"from stomp")]
    assert stomp_client.messages_until_idle() == []  # /topic/mix is not /topic/mix/s
    stomp_client.disconnect()
    paho.disconnect()
    broker.wait_for_log(r"client paho-mix .*disconnected")


# -- STOMP over TLS ----------------------------------------------------------------------


def tls_broker(clients: Clients, certs: Path) -> BrokerProcess:
    return clients.broker("--certfile", str(certs / "server.crt"),
                          "--keyfile", str(certs / "server.key"),
                          listen=("stomp+tls://127.0.0.1:0",))


def round_trip(client: StompOver, destination: str, body: str) -> None:
    client.subscribe(destination)
    client.send(destination, body)
    assert frame_summary(client.next_message()) == (destination, body)


def test_stomp_py_over_tls(clients, certs):
    broker = tls_broker(clients, certs)
    client = clients.stomp_tcp(broker.port_of("stomp+tls"), cafile=certs / "ca.crt")
    broker.wait_for_log(r"connected \(STOMP 1\.2")
    round_trip(client, "/topic/secure/t", "over TLS ✓")
    client.disconnect()


def test_stomp_py_trusting_another_ca_fails_cleanly(clients, certs, other_ca, caplog):
    broker = tls_broker(clients, certs)
    port = broker.port_of("stomp+tls")
    with caplog.at_level(logging.WARNING, logger="stomp.py"), \
            pytest.raises(ConnectFailedException):
        clients.stomp_tcp(port, cafile=other_ca / "ca.crt")
    assert "certificate verify failed" in caplog.text
    broker.wait_for_log(r"TLS handshake with .* failed: TLSV1_ALERT_UNKNOWN_CA")

    client = clients.stomp_tcp(port, cafile=certs / "ca.crt")  # the broker carries on
    round_trip(client, "/queue/after", "still serving")
    client.disconnect()
    assert not any("Traceback" in line for line in broker.lines)

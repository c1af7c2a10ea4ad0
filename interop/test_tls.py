"""TLS end to end: certificates from ``polybroker certs``, the real ``polybroker serve``,
mosquitto_pub / mosquitto_sub and paho-mqtt, with and without client certificates,
a wrong CA, and certificates reloaded on SIGHUP.
"""

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from .brokerproc import BrokerProcess
from .clients import WAIT, OutputProcess
from .conftest import require_tool
from .test_paho_mqtt import PahoClient


def polybroker_certs(directory: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "polybroker", "certs", "--dir", str(directory), *args],
        capture_output=True, text=True, timeout=WAIT, check=True,
    )
    return out.stdout


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.crt, server.crt (localhost, 127.0.0.1, ::1) and sensor-1.crt, with keys."""
    directory = tmp_path_factory.mktemp("tls") / "certs"
    polybroker_certs(directory, "--client", "sensor-1")
    return directory


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    """Another CA, which the broker's certificate does not chain to."""
    directory = tmp_path_factory.mktemp("other") / "certs"
    polybroker_certs(directory)
    return directory


def server_flags(certs: Path, *extra: str) -> tuple[str, ...]:
    return ("--certfile", str(certs / "server.crt"), "--keyfile", str(certs / "server.key"),
            *extra)


@contextlib.contextmanager
def tls_broker(tmp_path: Path, *flags: str, listen=("mqtts://127.0.0.1:0",)):
    proc = BrokerProcess(tmp_path / "data", *flags, listen=listen)
    try:
        yield proc
    finally:
        proc.stop()


def mosquitto(tool: str, port: int, *args: str) -> list[str]:
    return [require_tool("stdbuf"), "-oL", require_tool(tool), "-h", "127.0.0.1",
            "-p", str(port), "-d", *args]


def run_pub(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(mosquitto("mosquitto_pub", port, *args)[2:], capture_output=True,
                          text=True, timeout=WAIT)


def test_mosquitto_clients_over_tls_with_the_ca(tmp_path, certs):
    with tls_broker(tmp_path, *server_flags(certs)) as broker:
        cafile = ("--cafile", str(certs / "ca.crt"))
        with OutputProcess(mosquitto("mosquitto_sub", broker.port, *cafile, "-t", "tls/#",
                                     "-v", "-C", "1", "-W", str(WAIT))) as sub:
            sub.wait_for_line("received SUBACK")
            out = run_pub(broker.port, *cafile, "-t", "tls/t", "-m", "over TLS")
            assert out.returncode == 0, out.stdout + out.stderr
            sub.wait_for_line(r"^tls/t over TLS$")
            assert sub.finish() == 0


def test_client_certificate_required_accepted_with_one_refused_without(tmp_path, certs):
    config = tmp_path / "broker.toml"
    config.write_text("[tls]\nuse_identity_as_username = true\n")
    flags = server_flags(certs, "--cafile", str(certs / "ca.crt"), "--require-certificate",
                         "--config", str(config))
    with tls_broker(tmp_path, *flags) as broker:
        cafile = ("--cafile", str(certs / "ca.crt"))
        client_cert = ("--cert", str(certs / "sensor-1.crt"), "--key", str(certs / "sensor-1.key"))
        out = run_pub(broker.port, *cafile, *client_cert, "-i", "sensor", "-t", "t", "-m", "x")
        assert out.returncode == 0, out.stdout + out.stderr
        broker.wait_for_log(r"client sensor .*certificate identity sensor-1\)")

        refused = run_pub(broker.port, *cafile, "-i", "anonymous", "-t", "t", "-m", "x")
        assert refused.returncode != 0
        broker.wait_for_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: "
                            r"PEER_DID_NOT_RETURN_A_CERTIFICATE")
        assert not any("client anonymous" in line for line in broker.lines)


def test_wrong_ca_fails_cleanly_on_both_sides(tmp_path, certs, other_ca):
    with tls_broker(tmp_path, *server_flags(certs)) as broker:
        refused = run_pub(broker.port, "--cafile", str(other_ca / "ca.crt"), "-t", "t", "-m", "x")
        assert refused.returncode != 0
        assert "certificate verify failed" in refused.stdout + refused.stderr
        broker.wait_for_log(r"TLS handshake with .* failed: TLSV1_ALERT_UNKNOWN_CA")

        paho = PahoClient(broker.port, "wrong-ca")
        paho.client.tls_set(ca_certs=str(other_ca / "ca.crt"))
        with pytest.raises(ssl.SSLCertVerificationError):
            paho.client.connect("127.0.0.1", broker.port)
        # The broker is none the worse for it.
        out = run_pub(broker.port, "--cafile", str(certs / "ca.crt"), "-t", "t", "-m", "x")
        assert out.returncode == 0, out.stdout + out.stderr


def test_paho_over_tls_with_a_client_certificate(tmp_path, certs):
    flags = server_flags(certs, "--cafile", str(certs / "ca.crt"), "--require-certificate")
    with tls_broker(tmp_path, *flags) as broker, contextlib.ExitStack() as stack:
        clients = []
        for name in ("paho-sub", "paho-pub"):
            client = PahoClient(broker.port, name)
            stack.callback(client.stop)
            client.client.tls_set(ca_certs=str(certs / "ca.crt"),
                                  certfile=str(certs / "sensor-1.crt"),
                                  keyfile=str(certs / "sensor-1.key"))
            client.connect()
            clients.append(client)
        subscriber, publisher = clients
        assert subscriber.subscribe(("paho/tls", 2)) == [2]
        for qos in (0, 1, 2):
            publisher.publish("paho/tls", f"qos {qos}".encode(), qos)
        assert [m.payload for m in subscriber.receive(3)] == [b"qos 0", b"qos 1", b"qos 2"]
        subscriber.disconnect()


def served_certificate(port: int, cafile: Path) -> bytes:
    """The DER certificate a new TLS connection is served."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.getpeercert(binary_form=True)


def der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_reloads_certificates_for_new_connections_only(tmp_path, certs):
    live = tmp_path / "live"
    live.mkdir()
    for name in ("ca.crt", "ca.key", "server.crt", "server.key"):
        shutil.copy(certs / name, live / name)
    with tls_broker(tmp_path, *server_flags(live)) as broker, contextlib.ExitStack() as stack:
        before = der_of(live / "server.crt")
        assert served_certificate(broker.port, live / "ca.crt") == before
        established = PahoClient(broker.port, "established")
        stack.callback(established.stop)
        established.client.tls_set(ca_certs=str(live / "ca.crt"))
        established.connect()
        assert established.subscribe(("reload/#", 1)) == [1]

        polybroker_certs(live, "--server", "127.0.0.1", "localhost")  # a new one, same CA
        after = der_of(live / "server.crt")
        assert after != before
        broker.proc.send_signal(signal.SIGHUP)
        broker.wait_for_log(r"mqtt\+tls://127\.0\.0\.1:\d+: certificates reloaded")

        assert served_certificate(broker.port, live / "ca.crt") == after
        out = run_pub(broker.port, "--cafile", str(live / "ca.crt"), "-t", "reload/t",
                      "-q", "1", "-m", "after reload")
        assert out.returncode == 0, out.stdout + out.stderr
        message = established.next_message()  # the old connection carries on
        assert (message.topic, message.payload) == ("reload/t", b"after reload")
        assert established.client.is_connected()


def test_sighup_with_broken_files_keeps_the_certificates_it_had(tmp_path, certs):
    live = tmp_path / "live"
    shutil.copytree(certs, live)
    with tls_broker(tmp_path, *server_flags(live)) as broker:
        (live / "server.key").write_text("broken\n")
        broker.proc.send_signal(signal.SIGHUP)
        broker.wait_for_log("certificates not reloaded, keeping the previous ones")
        assert served_certificate(broker.port, live / "ca.crt") == der_of(live / "server.crt")


def test_mqtt_clients_still_connect_during_and_after_plain_tls_errors(tmp_path, certs):
    """A plain-TCP client on the TLS port is a failed handshake, not a stuck listener."""
    with tls_broker(tmp_path, *server_flags(certs)) as broker:
        with socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT) as plain:
            plain.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
            with contextlib.suppress(ConnectionResetError):  # closed, or reset: no ClientHello
                assert plain.recv(100) == b""
        broker.wait_for_log(r"TLS handshake with .* failed")
        out = run_pub(broker.port, "--cafile", str(certs / "ca.crt"), "-t", "t", "-m", "x")
        assert out.returncode == 0, out.stdout + out.stderr


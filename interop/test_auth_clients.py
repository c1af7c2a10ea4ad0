"""Authentication and authorization with real clients: paho-mqtt (3.1.1 and 5.0),
stomp.py and mosquitto_pub / mosquitto_sub, against a real ``polybroker serve`` whose
password file is written by ``polybroker passwd``.

Waits are on client callbacks (queues, events), on process output or on broker log
lines, always bounded; nothing sleeps. "Receives nothing" is shown by a later marker
message that the same client may read: it arrives first.
"""

import queue
import signal
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
import pytest
import stomp
from paho.mqtt.client import CallbackAPIVersion, MQTTv5, MQTTv311

from .brokerproc import BrokerProcess
from .clients import WAIT, OutputProcess
from .conftest import require_tool

USERS = {"alice": "wonderland", "bob": "builder"}
ACL = """\
topic read public/#
user alice
topic readwrite #
user bob
topic read public/#
topic readwrite bob/#
queue readwrite bob.jobs
"""


def write_passwords(path) -> None:
    for name, password in USERS.items():
        subprocess.run([sys.executable, "-m", "polybroker", "passwd", str(path), name,
                        "--password-stdin"], input=password + "\n", text=True, check=True,
                       capture_output=True, timeout=WAIT)


@pytest.fixture(scope="module")
def passwords(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "passwords"
    write_passwords(path)
    return path


def start_secured(directory, passwords, acl: str = ACL,
                  listen: tuple[str, ...] = ("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0"),
                  ) -> BrokerProcess:
    """A broker with ``listen``'s listeners, USERS, ``acl``, and anonymous clients refused."""
    (directory / "acl").write_text(acl)
    config = directory / "broker.toml"
    config.write_text(
        f'[auth]\npassword_file = "{passwords}"\n'
        f'acl_file = "{directory / "acl"}"\nallow_anonymous = false\nfailure_delay = 0.05\n'
    )
    proc = BrokerProcess(directory / "data", "--config", str(config), listen=listen)
    proc.acl_path = directory / "acl"
    return proc


@pytest.fixture(scope="module")
def secured(tmp_path_factory, passwords):
    """One broker for the tests that leave its files alone (every client id is unique)."""
    proc = start_secured(tmp_path_factory.mktemp("secured"), passwords)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def own_secured(tmp_path, passwords):
    """A broker of the test's own, for a test that rewrites its files."""
    own = tmp_path / "passwords"
    own.write_text(passwords.read_text())
    proc = start_secured(tmp_path, own)
    proc.password_path = own
    try:
        yield proc
    finally:
        proc.stop()


# -- paho-mqtt ------------------------------------------------------------------------------


class Paho:
    """A paho client on its network thread; callbacks feed queues."""

    def __init__(self, port: int, client_id: str, protocol: int, user: str | None = None,
                 password: str | None = None) -> None:
        kwargs = {"clean_session": True} if protocol != MQTTv5 else {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, reconnect_on_failure=False, **kwargs)
        if user is not None:
            self.client.username_pw_set(user, password)
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def connack_code(self) -> int:
        return self.connack.get(timeout=WAIT).value

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        (code,) = self.subacks.get(timeout=WAIT)
        return code.value

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def next_message(self) -> tuple[str, bytes]:
        msg = self.messages.get(timeout=WAIT)
        return msg.topic, msg.payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize(("protocol", "bad_password", "not_authorized"),
                         [(MQTTv311, 0x86, 0x87), (MQTTv5, 0x86, 0x87)])
def test_paho_refused_logins(secured, protocol, bad_password, not_authorized):
    # paho reports a 3.1.1 CONNACK 0x04 / 0x05 as the 5.0 reason code 0x86 / 0x87.
    for user, password, code in (("alice", "wrong", bad_password),
                                 ("mallory", "x", bad_password),
                                 (None, None, not_authorized)):
        client = Paho(secured.port, f"refused-{protocol}", protocol, user, password)
        try:
            assert client.connack_code() == code
        finally:
            client.close()
        secured.wait_for_log(rf"MQTT login refused from .*client id 'refused-{protocol}', user "
                             rf"{user!r}")
    client = Paho(secured.port, f"ok-{protocol}", protocol, "alice", "wonderland")
    try:
        assert client.connack_code() == 0
    finally:
        client.close()


@pytest.mark.parametrize(("protocol", "refused"), [(MQTTv311, 0x80), (MQTTv5, 0x87)])
def test_paho_denied_subscriber_receives_nothing(secured, protocol, refused):
    alice = Paho(secured.port, f"alice-{protocol}", protocol, "alice", "wonderland")
    bob = Paho(secured.port, f"bob-{protocol}", protocol, "bob", "builder")
    try:
        assert alice.connack_code() == 0 and bob.connack_code() == 0
        assert alice.subscribe("news/#") == 1
        assert bob.subscribe("news/#") == refused
        assert bob.subscribe("public/marker") == 1
        bob.publish("news/forged", b"denied")  # bob may not write there: dropped
        alice.publish("news/today", b"headline")
        alice.publish("public/marker", b"end")
        assert alice.next_message() == ("news/today", b"headline")
        assert bob.next_message() == ("public/marker", b"end")
        assert alice.messages.empty()
    finally:
        alice.close()
        bob.close()


# -- stomp.py -------------------------------------------------------------------------------


class Listener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.errors: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()

    def on_connected(self, frame) -> None:
        self.connected.set()

    def on_error(self, frame) -> None:
        self.errors.put(frame.headers.get("message"))

    def on_message(self, frame) -> None:
        self.messages.put(frame.body)

    def on_receipt(self, frame) -> None:
        self.receipts.put(frame.headers["receipt-id"])

    def on_disconnected(self) -> None:
        self.disconnected.set()


def stomp_connection(port: int, user: str | None, password: str | None):
    conn = stomp.Connection12([("127.0.0.1", port)], auto_decode=False)
    listener = Listener()
    conn.set_listener("", listener)
    conn.connect(user, password, wait=False)
    return conn, listener


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("eve", "x"), (None, None)])
def test_stomp_py_refused_login_gets_an_error(secured, user, password):
    conn, listener = stomp_connection(secured.stomp_port, user, password)
    try:
        assert listener.errors.get(timeout=WAIT) == "access refused"
        assert listener.disconnected.wait(WAIT)
        assert not listener.connected.is_set()
    finally:
        conn.disconnect()


@pytest.mark.parametrize(("action", "destination"), [
    ("send", "/topic/news/x"), ("subscribe", "/topic/news/#"),
    ("send", "/queue/alice.jobs"), ("subscribe", "/queue/alice.jobs"),
])
def test_stomp_py_denied_frame_gets_an_error(secured, action, destination):
    conn, listener = stomp_connection(secured.stomp_port, "bob", "builder")
    try:
        assert listener.connected.wait(WAIT)
        if action == "send":
            conn.send(destination, b"x")
        else:
            conn.subscribe(destination, id="1")
        assert listener.errors.get(timeout=WAIT) == f"access refused: {action.upper()} to " \
                                                    f"{destination}"
        assert listener.disconnected.wait(WAIT)
    finally:
        conn.disconnect()


def test_stomp_py_allowed_queue_and_topic(secured):
    conn, listener = stomp_connection(secured.stomp_port, "bob", "builder")
    try:
        assert listener.connected.wait(WAIT)
        conn.subscribe("/queue/bob.jobs", id="1")
        conn.subscribe("/topic/public/#", id="2", headers={"receipt": "s"})
        assert listener.receipts.get(timeout=WAIT) == "s"
        conn.send("/queue/bob.jobs", b"job")
        conn.send("/topic/bob/x", b"own topic", headers={"receipt": "p"})
        assert listener.receipts.get(timeout=WAIT) == "p"
        assert listener.messages.get(timeout=WAIT) == b"job"
        assert listener.errors.empty()
    finally:
        conn.disconnect()


# -- mosquitto_pub / mosquitto_sub ------------------------------------------------------------


def mosquitto_pub(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port),
                           *args], capture_output=True, text=True, timeout=WAIT)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_pub_with_user_and_password(secured, version):
    sub_argv = [require_tool("stdbuf"), "-oL", require_tool("mosquitto_sub"), "-h", "127.0.0.1",
                "-p", str(secured.port), "-V", version, "-u", "alice", "-P", "wonderland",
                "-t", f"news/{version}/#", "-C", "1", "-W", str(WAIT), "-v", "-d"]
    with OutputProcess(sub_argv) as sub:
        sub.wait_for_line("received SUBACK")
        bad = mosquitto_pub(secured.port, "-V", version, "-u", "alice", "-P", "nope",
                            "-t", f"news/{version}/x", "-m", "never")
        assert bad.returncode != 0
        assert "bad user name or password" in (bad.stdout + bad.stderr).lower()
        anonymous = mosquitto_pub(secured.port, "-V", version, "-t", "news/x", "-m", "never")
        assert anonymous.returncode != 0
        assert "not authori" in (anonymous.stdout + anonymous.stderr).lower()
        good = mosquitto_pub(secured.port, "-V", version, "-u", "alice", "-P", "wonderland",
                             "-t", f"news/{version}/x", "-m", "hello", "-q", "1")
        assert good.returncode == 0, good.stdout + good.stderr
        sub.wait_for_line(rf"^news/{version}/x hello$")
        assert sub.finish() == 0
    assert "never" not in "\n".join(sub.lines)


# -- SIGHUP ---------------------------------------------------------------------------------


def test_sighup_reloads_the_password_file(own_secured):
    carol = Paho(own_secured.port, "carol", MQTTv5, "carol", "c4rol")
    try:
        assert carol.connack_code() == 0x86
    finally:
        carol.close()
    subprocess.run([sys.executable, "-m", "polybroker", "passwd", str(own_secured.password_path),
                    "carol", "--password-stdin"], input="c4rol\n", text=True, check=True,
                   capture_output=True, timeout=WAIT)
    own_secured.proc.send_signal(signal.SIGHUP)
    own_secured.wait_for_log(r"password file \S+ reloaded: 3 user\(s\)")
    carol = Paho(own_secured.port, "carol", MQTTv5, "carol", "c4rol")
    try:
        assert carol.connack_code() == 0
    finally:
        carol.close()


def test_sighup_reloads_the_acl(own_secured):
    secured = own_secured
    bob = Paho(secured.port, "bob", MQTTv311, "bob", "builder")
    try:
        assert bob.connack_code() == 0
        assert bob.subscribe("news/#") == 0x80
        secured.acl_path.write_text(ACL + "topic read news/#\n")
        secured.proc.send_signal(signal.SIGHUP)
        secured.wait_for_log(r"ACL file \S+ reloaded")
        assert bob.subscribe("news/#") == 1
        # A broken file on reload keeps the rules in force.
        secured.acl_path.write_text("no such statement\n")
        secured.proc.send_signal(signal.SIGHUP)
        secured.wait_for_log(r"ACL file \S+ not reloaded, keeping the old one")
        assert bob.subscribe("news/more/#") == 1
        assert bob.subscribe("secret/#") == 0x80
    finally:
        bob.close()


def test_serve_refuses_to_start_with_a_missing_password_file(tmp_path):
    config = tmp_path / "broker.toml"
    config.write_text(f'[auth]\npassword_file = "{tmp_path / "missing"}"\n')
    out = subprocess.run([sys.executable, "-m", "polybroker", "serve", "--config", str(config),
                          "--listen", "mqtt://127.0.0.1:0", "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 2
    assert "cannot start: auth.password_file" in out.stderr


def test_certificate_identity_is_the_user_for_the_acl(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, "-m", "polybroker", "certs", "--dir", str(certs),
                    "--client", "sensor-1"], capture_output=True, timeout=WAIT, check=True)
    (tmp_path / "acl").write_text("user sensor-1\ntopic readwrite telemetry/#\n")
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[tls]\ncertfile = "{certs / "server.crt"}"\nkeyfile = "{certs / "server.key"}"\n'
        f'cafile = "{certs / "ca.crt"}"\nrequire_certificate = true\n'
        f'use_identity_as_username = true\n'
        f'[auth]\nacl_file = "{tmp_path / "acl"}"\nallow_anonymous = false\n'
    )
    proc = BrokerProcess(tmp_path / "data", "--config", str(config),
                         listen=("mqtts://127.0.0.1:0",))
    tls = ("--cafile", str(certs / "ca.crt"), "--cert", str(certs / "sensor-1.crt"),
           "--key", str(certs / "sensor-1.key"))
    try:
        sub_argv = [require_tool("stdbuf"), "-oL", require_tool("mosquitto_sub"),
                    "-h", "127.0.0.1", "-p", str(proc.port), *tls, "-d", "-v",
                    "-t", "telemetry/#", "-t", "other/#", "-C", "1", "-W", str(WAIT)]
        with OutputProcess(sub_argv) as sub:
            # Two filters, one SUBACK: telemetry/# granted, other/# refused (0x80).
            assert sub.wait_for_line(r"^Subscribed \(") == "Subscribed (mid: 1): 0, 128"
            out = mosquitto_pub(proc.port, *tls, "-t", "telemetry/t1", "-m", "21.5", "-q", "1")
            assert out.returncode == 0, out.stdout + out.stderr
            sub.wait_for_line(r"^telemetry/t1 21.5$")
            assert sub.finish() == 0
        proc.wait_for_log(r"certificate identity sensor-1")
    finally:
        proc.stop()

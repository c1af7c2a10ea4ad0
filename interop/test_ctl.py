"""``polybroker ctl`` against a real ``polybroker serve`` process with an http listener:
every command, as a table and with --json; clients made by paho-mqtt, stomp.py and pika
listed and kicked; URL and credentials from options, environment and config file; the
one-line errors. Every wait is bounded and on something a client or the broker reports.
"""

import json
import re
import socket
import subprocess
import sys

import pika
import pytest

from .amqp_support import pika_params, pump
from .brokerproc import BrokerProcess
from .clients import WAIT
from .test_paho_mqtt import PahoClient
from .test_stomp_py import StompPy

TOKEN = "ctl-t0ken"
LISTEN = ("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0", "amqp://127.0.0.1:0",
          "http://127.0.0.1:0")


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "tokens").write_text(f"# ctl\n{TOKEN}\n")
    # No $SYS topics: the retained messages are the tests' own.
    (tmp_path / "broker.toml").write_text(
        f'[broker]\nsys_interval = 0\n[management]\ntoken_file = "{tmp_path / "tokens"}"\n')
    proc = BrokerProcess(tmp_path / "data", "--config", str(tmp_path / "broker.toml"),
                         listen=LISTEN)
    proc.api = f"http://127.0.0.1:{proc.port_of('http')}"
    try:
        yield proc
    finally:
        proc.stop()


def ctl(*args: str, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "polybroker", "ctl", *args],
                         capture_output=True, text=True, timeout=WAIT, env=env)
    if check:
        assert out.returncode == 0, out.stderr
        assert out.stderr == ""
    return out


def api(broker: BrokerProcess, *args: str) -> str:
    """The command's standard output, given the broker's URL and token as options."""
    return ctl(*args, "--url", broker.api, "--token", TOKEN).stdout


def api_json(broker: BrokerProcess, *args: str):
    return json.loads(api(broker, *args, "--json"))


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()[1:]]


def test_clients_of_all_three_protocols_are_listed_and_kicked(broker):
    paho = PahoClient(broker.port, "paho-1")
    paho.connect()
    paho.subscribe(("sensors/#", 1))
    stomp = StompPy(broker.stomp_port)
    stomp.subscribe("/queue/jobs")
    amqp = pika.BlockingConnection(pika_params(broker.amqp_port))
    try:
        listed = api_json(broker, "clients")
        protocols = {item["protocol"]: item["id"] for item in listed["items"]}
        assert listed["total"] == 3 and set(protocols) == {"mqtt", "stomp", "amqp"}
        assert protocols["mqtt"] == "paho-1"
        table = api(broker, "clients")
        assert table.splitlines()[0].split()[:3] == ["ID", "PROTOCOL", "PEER"]
        assert sorted(row[:2] for row in rows(table)) == sorted(
            [[cid, protocol] for protocol, cid in protocols.items()])
        only_stomp = api_json(broker, "clients", "--protocol", "stomp")["items"]
        assert [item["id"] for item in only_stomp] == [protocols["stomp"]]
        found = api_json(broker, "clients", "--search", "paho")["items"]
        assert [item["id"] for item in found] == ["paho-1"]

        assert api(broker, "kick", "paho-1") == "paho-1: disconnected\n"
        assert paho.disconnected.wait(WAIT)
        assert api_json(broker, "kick", protocols["stomp"]) == {
            "id": protocols["stomp"], "disconnected": True, "session_discarded": False}
        error = stomp.listener.errors.get(timeout=WAIT)
        assert error.headers["message"] == "disconnected by an administrator"
        assert stomp.listener.disconnected.wait(WAIT)
        api(broker, "kick", protocols["amqp"])
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            pump(amqp, lambda: amqp.is_closed)
        assert (closed.value.reply_code, closed.value.reply_text) == (
            320, "CONNECTION_FORCED - closed by an administrator")
        assert api_json(broker, "clients")["items"] == []
        assert "kicked" not in api(broker, "clients")  # an empty table: its header only
    finally:
        paho.stop()
        if not amqp.is_closed:
            amqp.close()


def test_client_shows_its_subscriptions_and_kick_discard_ends_the_session(broker):
    paho = PahoClient(broker.port, "keeper", clean_session=False)
    paho.connect()
    paho.subscribe(("sensors/#", 1))
    try:
        table = api(broker, "client", "keeper")
        assert re.search(r"^id: +keeper$", table, re.MULTILINE)
        assert re.search(r"^sensors/# +1$", table, re.MULTILINE)
        detail = api_json(broker, "client", "keeper")
        assert detail["subscriptions"] == [{"filter": "sensors/#", "qos": 1}]
        api(broker, "kick", "keeper")
        assert paho.disconnected.wait(WAIT)
        # Its session stays, until discarded.
        assert api_json(broker, "client", "keeper")["connected"] is False
        assert api(broker, "kick", "keeper", "--discard") == (
            "keeper: not connected, session discarded\n")
        missing = ctl("client", "keeper", "--url", broker.api, "--token", TOKEN, check=False)
        assert (missing.returncode, missing.stdout) == (1, "")
        assert missing.stderr == "polybroker ctl: not found: no client 'keeper'\n"
    finally:
        paho.stop()


def test_publish_retained_and_stats(broker):
    paho = PahoClient(broker.port, "listener")
    paho.connect()
    paho.subscribe(("sensors/#", 1))
    try:
        assert api(broker, "publish", "sensors/t1", "21.5", "--qos", "1", "--retain") == (
            "published to sensors/t1: 1 subscriber(s)\n")
        received = paho.next_message()
        assert (received.topic, received.payload, received.qos) == ("sensors/t1", b"21.5", 1)
        assert api_json(broker, "publish", "sensors/t2", "x")["matched"] == 1
        assert rows(api(broker, "retained")) == [["sensors/t1", "1", "4"]]
        assert [m["topic"] for m in api_json(broker, "retained", "sensors/#")["items"]] == [
            "sensors/t1"]
        assert api_json(broker, "retained", "other/#")["items"] == []
        stats = api(broker, "stats")
        assert re.search(r"^connections: +1$", stats, re.MULTILINE)
        assert re.search(r"^retained_messages: +1$", stats, re.MULTILINE)
        assert api_json(broker, "stats")["connections_by_protocol"]["mqtt"] == 1
    finally:
        paho.stop()


def test_queues_and_purge(broker):
    stomp = StompPy(broker.stomp_port)
    try:
        for body in ("a", "b", "c"):
            stomp.send("/queue/jobs", body)
        assert rows(api(broker, "queues")) == [["jobs", "3", "0", "0", "3", "yes"]]
        assert api_json(broker, "queues")["items"][0]["ready"] == 3
        assert api(broker, "purge", "jobs") == "jobs: 3 message(s) purged\n"
        assert api_json(broker, "purge", "jobs") == {"queue": "jobs", "purged": 0}
        assert api_json(broker, "queues")["items"][0]["ready"] == 0
    finally:
        stomp.conn.disconnect()


def test_url_and_credentials_from_environment_and_config_file(broker, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "POLYBROKER_URL": broker.api, "POLYBROKER_TOKEN": TOKEN}
    assert json.loads(ctl("stats", "--json", env=env).stdout)["connections"] == 0
    # The config file: its first http listener and its token file's first token.
    port = broker.port_of("http")
    config = tmp_path / "ctl.toml"
    config.write_text(f'[[listener]]\nurl = "mqtt://127.0.0.1:1883"\n'
                      f'[[listener]]\nurl = "http://0.0.0.0:{port}"\nallow_remote = true\n'
                      f'[management]\ntoken_file = "{tmp_path / "tokens"}"\n')
    out = ctl("-c", str(config), "stats", env={"PATH": "/usr/bin:/bin"})
    assert "connections:" in out.stdout
    # Options win over the environment.
    bad = ctl("stats", "--token", "wrong", env=env, check=False)
    assert bad.returncode == 1


def test_one_line_errors(broker):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    refused = ctl("clients", "--url", closed, check=False)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == f"polybroker ctl: cannot connect to {closed}: Connection refused\n"
    for credentials in ((), ("--token", "wrong"), ("--user", "alice", "--password", "x")):
        denied = ctl("clients", "--url", broker.api, *credentials, check=False)
        assert (denied.returncode, denied.stdout) == (1, "")
        assert denied.stderr == ("polybroker ctl: not authorized: give an administrator's "
                                 "--user and --password, or a --token (HTTP 401)\n")
    missing = ctl("purge", "nothing", "--url", broker.api, "--token", TOKEN, check=False)
    assert missing.stderr == "polybroker ctl: not found: no queue 'nothing'\n"
    invalid = ctl("retained", "a/#/b", "--url", broker.api, "--token", TOKEN, check=False)
    assert invalid.stderr == "polybroker ctl: HTTP 400: invalid topic filter 'a/#/b'\n"


def passwd(path, user: str, password: str) -> None:
    subprocess.run([sys.executable, "-m", "polybroker", "passwd", "--password-stdin",
                    str(path), user], input=password + "\n", text=True, check=True,
                   capture_output=True, timeout=WAIT)


def test_administrator_over_https_with_the_ca_file(tmp_path):
    """An administrator of the password file, HTTP basic, an https listener verified
    with --cafile; a user who is no administrator is refused."""
    subprocess.run([sys.executable, "-m", "polybroker", "certs", "--dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=WAIT)
    passwd(tmp_path / "passwords", "alice", "wonder land")
    passwd(tmp_path / "passwords", "bob", "builder")
    (tmp_path / "broker.toml").write_text(
        f'[auth]\npassword_file = "{tmp_path / "passwords"}"\nfailure_delay = 0\n'
        f'allow_anonymous = true\n'
        f'[management]\nadmins = ["alice"]\n')
    broker = BrokerProcess(
        tmp_path / "data", "--config", str(tmp_path / "broker.toml"),
        "--certfile", str(tmp_path / "server.crt"), "--keyfile", str(tmp_path / "server.key"),
        listen=("mqtt://127.0.0.1:0", "https://127.0.0.1:0"))
    try:
        url = f"https://127.0.0.1:{broker.port_of('https')}"
        ca = ("--cafile", str(tmp_path / "ca.crt"))
        out = ctl("stats", "--url", url, *ca, "--user", "alice", "--password", "wonder land")
        assert re.search(r"^connections: +0$", out.stdout, re.MULTILINE)
        bob = ctl("stats", "--url", url, *ca, "--user", "bob", "--password", "builder",
                  check=False)
        assert bob.returncode == 1 and "(HTTP 401)" in bob.stderr
        broker.wait_for_log(r"user 'bob' is not an administrator")
        unverified = ctl("stats", "--url", url, "--user", "alice", "--password", "wonder land",
                         check=False)
        assert unverified.returncode == 1
        assert unverified.stderr.startswith(f"polybroker ctl: cannot connect to {url}: ")
        assert "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    finally:
        broker.stop()


def test_a_management_listener_on_a_public_address_stops_the_start(tmp_path):
    out = subprocess.run([sys.executable, "-m", "polybroker", "serve", "--listen",
                          "http://0.0.0.0:0", "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.endswith(" ERROR cannot start: listener http://0.0.0.0:0: the management API "
                         "listens on loopback addresses only, unless the listener sets "
                         "allow_remote = true")


def test_delayed_messages_listed_and_cancelled(broker):
    for seconds, payload in (("600", "later"), ("300", "sooner")):
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-q", "1",
                        "-t", f"$delayed/{seconds}/jobs/reminder", "-m", payload],
                       check=True, timeout=WAIT)
    listed = rows(api(broker, "delayed"))
    assert [(row[2], row[3], row[4]) for row in listed] == [
        ("jobs/reminder", "1", "6"), ("jobs/reminder", "1", "5")]
    assert 0 < float(listed[0][1].rstrip("s")) <= 300 < float(listed[1][1].rstrip("s"))
    later = listed[1][0]
    assert api(broker, "cancel", later) == f"delayed message {later}: cancelled\n"
    assert [item["id"] for item in api_json(broker, "delayed")["items"]] == [int(listed[0][0])]
    again = ctl("cancel", later, "--url", broker.api, "--token", TOKEN, check=False)
    assert again.returncode == 1
    assert again.stderr == f"polybroker ctl: not found: no delayed message '{later}'\n"

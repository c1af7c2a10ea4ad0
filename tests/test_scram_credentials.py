"""SCRAM-SHA-256 credentials: the RFC 5803 line format, the file, and the CLI that writes it."""

import subprocess
import sys

import pytest
import trio

from polybroker.auth import ScramCredential, ScramUserStore
from polybroker.config import MQTTSettings
from polybroker.protocols.mqtt import Auth, ConnAck, Connect
from polybroker.protocols.mqtt import properties as prop
from polybroker.protocols.mqtt import reason_codes as rc
from polybroker.server import open_broker

from .rawclient import RawClient
from .test_mqtt5_broker import ScramClient

SCRAM = "SCRAM-SHA-256"


def test_rfc5803_round_trip():
    credential = ScramCredential.from_password("pencil", salt=b"0123456789abcdef")
    text = credential.to_rfc5803()
    assert text.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert ScramCredential.from_rfc5803(text) == credential


@pytest.mark.parametrize(
    "line",
    ["alice", "alice:plain-password", "alice:SCRAM-SHA-256$x:c2FsdA==$YQ==:Yg==",
     ":SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg==", "alice:SCRAM-SHA-256$4096:!!$YQ==:Yg=="],
)
def test_bad_lines_are_reported_with_their_line_number(tmp_path, line):
    path = tmp_path / "users"
    path.write_text(f"# users\n\n{line}\n")
    with pytest.raises(ValueError, match=f"{path}:3: "):
        ScramUserStore.load(path)


def cli_credential_line(user: str, password: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "polybroker", "scram-password", user],
        input=password + "\n", capture_output=True, text=True, check=True, timeout=30,
    )
    return out.stdout.strip()


def test_cli_refuses_a_user_name_with_a_colon():
    out = subprocess.run([sys.executable, "-m", "polybroker", "scram-password", "a:b"],
                         input="pw\n", capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "without ':'" in out.stderr


async def scram_connect(port: int, user: str, password: str) -> tuple[ConnAck, ScramClient]:
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    client.parser.protocol_level = 5
    scram = ScramClient(user, password)
    await client.send(Connect("dev", protocol_level=5, properties={
        prop.AUTHENTICATION_METHOD: SCRAM, prop.AUTHENTICATION_DATA: scram.client_first(),
    }), level=5)
    challenge = await client.receive()
    assert isinstance(challenge, Auth) and challenge.reason_code == rc.CONTINUE_AUTHENTICATION
    final = scram.client_final(challenge.properties[prop.AUTHENTICATION_DATA])
    await client.send(Auth(rc.CONTINUE_AUTHENTICATION, {
        prop.AUTHENTICATION_METHOD: SCRAM, prop.AUTHENTICATION_DATA: final,
    }), level=5)
    connack = await client.receive()
    await client.close()
    return connack, scram


async def test_users_file_written_by_the_cli_enables_scram_on_a_served_broker(
    tmp_path, serve_config):
    users = tmp_path / "scram-users"
    users.write_text(cli_credential_line("alice", "correct horse") + "\n")
    config = serve_config("mqtt://127.0.0.1:0", mqtt=MQTTSettings(scram_users_file=users))
    async with open_broker(config) as running:
        port = running.port("mqtt")
        connack, scram = await scram_connect(port, "alice", "correct horse")
        assert connack.return_code == rc.SUCCESS
        assert scram.verify_server_final(connack.properties[prop.AUTHENTICATION_DATA])
        refused, _ = await scram_connect(port, "alice", "wrong")
        assert refused.return_code == rc.NOT_AUTHORIZED

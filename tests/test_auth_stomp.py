"""Logins and access rights over the STOMP adapter, in memory, and the [auth] settings."""

from pathlib import Path

import pytest
import trio
import trio.testing

from polybroker.adapters.stomp import StompClientConnection
from polybroker.auth import Security, anonymous_allowed
from polybroker.auth.passwords import hash_password
from polybroker.broker import Broker
from polybroker.config import (
    AuthConfig,
    BrokerConfig,
    ConfigError,
    config_from_dict,
    load_config,
    parse_listen_url,
)

from .stompclient import StompClient

USERS = {"alice": "wonderland"}

ACL = """
topic read public/#
user alice
topic readwrite #
topic deny secret/#
queue readwrite jobs
queue write reports.*
"""


def open_client(nursery, broker, *, allow_anonymous: bool = True,
                identity: str | None = None) -> StompClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = StompClientConnection(server_stream, broker, "memory", identity, allow_anonymous)
    nursery.start_soon(server.run)
    return StompClient(client_stream, server)


async def alice(nursery, broker) -> StompClient:
    client = open_client(nursery, broker)
    await client.connect(login="alice", passcode="wonderland")
    return client


async def error_then_close(client: StompClient) -> str:
    frames = await client.receive_until_closed()
    assert [f.command for f in frames] == ["ERROR"], frames
    return frames[0].get("message")


@pytest.mark.parametrize(("headers", "allow_anonymous"), [
    ({"login": "alice", "passcode": "wrong"}, True),
    ({"login": "mallory", "passcode": "wonderland"}, True),
    ({"login": "alice"}, True),
    ({}, False),
])
async def test_refused_login_is_one_error_saying_access_refused(
    nursery, headers, allow_anonymous, make_broker, auth_config
):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = open_client(nursery, broker, allow_anonymous=allow_anonymous)
    await client.send("CONNECT", {"accept-version": "1.2", "host": "h", **headers})
    assert await error_then_close(client) == "access refused"  # the same, whatever was wrong


async def test_refusal_waits_failure_delay(nursery, autojump_clock, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL, failure_delay=2.5))
    client = open_client(nursery, broker, allow_anonymous=False)
    start = trio.current_time()
    await client.send("CONNECT", {"accept-version": "1.2", "host": "h"})
    await error_then_close(client)
    assert trio.current_time() - start >= 2.5


async def test_good_login_and_certificate_identity_connect(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = open_client(nursery, broker, allow_anonymous=False)
    assert (await client.connect(login="alice", passcode="wonderland")).command == "CONNECTED"
    certified = open_client(nursery, broker, allow_anonymous=False, identity="alice")
    await certified.connect()
    await certified.subscribe("/topic/a/#")  # alice's rights


@pytest.mark.parametrize(("command", "destination"), [
    ("SEND", "/topic/secret/x"),
    ("SUBSCRIBE", "/topic/secret/#"),
    ("SUBSCRIBE", "/topic/#"),  # overlaps secret/#
    ("SEND", "/queue/other"),
    ("SUBSCRIBE", "/queue/reports.daily"),  # write only
])
async def test_denied_frame_is_an_error_then_close(
    nursery, command, destination, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    body = b"x" if command == "SEND" else b""
    await client.send(command, {"destination": destination, "id": "1"}, body)
    message = await error_then_close(client)
    assert message == f"access refused: {command} to {destination}"


async def test_denied_send_in_a_transaction_is_refused_at_once(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    await client.send("BEGIN", {"transaction": "t"})
    await client.send("SEND", {"destination": "/topic/secret/x", "transaction": "t"}, b"x")
    assert "access refused" in await error_then_close(client)


async def test_allowed_frames_go_through(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    await client.subscribe("/queue/jobs", "q")
    await client.subscribe("/topic/public/#", "t")
    await client.publish("/queue/jobs", "job")
    await client.publish("/queue/reports.daily", "report")
    await client.publish("/topic/public/news", "news")
    bodies = sorted(f.body for f in await client.messages_until_idle())
    assert bodies == [b"job", b"news"]


async def test_anonymous_rights_are_the_general_ones(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = open_client(nursery, broker)
    await client.connect()
    await client.subscribe("/topic/public/#")
    await client.send("SEND", {"destination": "/topic/public/x"}, b"x")
    assert await error_then_close(client) == "access refused: SEND to /topic/public/x"


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("mqtt://127.0.0.1:1883", True), ("mqtt://127.5.5.5:1883", True),
    ("mqtt://[::1]:1883", True), ("mqtt://localhost:1883", True),
    ("mqtt://0.0.0.0:1883", False), ("mqtt://[::]:1883", False),
    ("mqtt://192.168.1.5:1883", False), ("mqtt://example.com:1883", False),
])
def test_anonymous_clients_are_allowed_by_default_on_loopback_only(url, expected):
    assert anonymous_allowed(parse_listen_url(url), AuthConfig()) is expected


def test_allow_anonymous_per_listener_over_the_global_default():
    config = config_from_dict({
        "auth": {"allow_anonymous": True, "failure_delay": 0.25},
        "listener": [{"url": "mqtt://0.0.0.0:1883"},
                     {"url": "stomp://127.0.0.1:61613", "allow_anonymous": False}],
    })
    assert [anonymous_allowed(lc, config.auth) for lc in config.listeners] == [True, False]
    assert config.auth.failure_delay == 0.25


@pytest.mark.parametrize(("raw", "message"), [
    ({"auth": {"allow_anonymous": "yes"}}, "auth.allow_anonymous"),
    ({"auth": {"failure_delay": -1}}, "auth.failure_delay"),
    ({"auth": {"password_file": ""}}, "auth.password_file"),
    ({"auth": {"users": "x"}}, "auth.users: unknown key"),
    ({"listener": [{"url": "mqtt://127.0.0.1:1", "allow_anonymous": 1}]}, "allow_anonymous"),
])
def test_bad_auth_settings_are_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_missing_or_broken_files_are_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"auth\.password_file"):
        Security.load(AuthConfig(password_file=tmp_path / "missing"))
    broken = tmp_path / "acl"
    broken.write_text("topic read a/#/b\n")
    with pytest.raises(ConfigError, match=r"auth\.acl_file: .*line 1"):
        Broker(BrokerConfig(auth=AuthConfig(acl_file=broken)))


def test_reload_reads_both_files_and_keeps_the_old_ones_when_broken(tmp_path, caplog):
    passwords, acl = tmp_path / "passwords", tmp_path / "acl"
    passwords.write_text(f"alice:{hash_password('a', n=16, r=1)}\n")
    acl.write_text("topic read a/#\n")
    security = Security.load(AuthConfig(password_file=passwords, acl_file=acl))
    acl.write_text("topic read b/#\n")
    passwords.write_text(f"bob:{hash_password('b', n=16, r=1)}\n")
    assert security.reload()
    assert list(security.passwords) == ["bob"]
    assert security.acl.may_subscribe(None, "c", "b/x")
    acl.write_text("nonsense\n")
    passwords.write_text("garbage\n")
    assert not security.reload()
    assert list(security.passwords) == ["bob"]
    assert security.acl.may_subscribe(None, "c", "b/x")
    assert "ACL file" in caplog.text and "keeping the old one" in caplog.text


def test_example_config_has_the_auth_defaults():
    config = load_config(Path(__file__).parent.parent / "config" / "polybroker.toml")
    assert config.auth == AuthConfig()


async def test_frames_pipelined_after_a_refused_connect_are_ignored(
    nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    watcher = await alice(nursery, broker)
    await watcher.subscribe("/topic/public/#", "public")
    intruder = open_client(nursery, broker)
    await intruder.send_raw(
        b"CONNECT\naccept-version:1.2\nhost:h\nlogin:alice\npasscode:guess\n\n\0"
        b"SEND\ndestination:/topic/public/x\n\nsneaked in\0"
    )
    assert await error_then_close(intruder) == "access refused"
    assert await watcher.messages_until_idle() == []

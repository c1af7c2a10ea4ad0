"""``polybroker.auth.security``: the login and access API every protocol adapter calls."""

import pytest

from polybroker.auth import Client, Login, Refusal, Security
from polybroker.auth.passwords import hash_password
from polybroker.config import AuthConfig

BAD, DENIED = Refusal.BAD_CREDENTIALS, Refusal.NOT_AUTHORIZED


@pytest.fixture
def with_file(tmp_path) -> Security:
    path = tmp_path / "passwords"
    path.write_text(f"alice:{hash_password('pw', n=16, r=1)}\n")
    return Security.load(AuthConfig(password_file=path, failure_delay=0))


@pytest.mark.parametrize(("username", "password", "anonymous", "expected"), [
    ("alice", "pw", False, Login("alice")),
    ("alice", b"pw", False, Login("alice")),
    ("alice", "nope", True, Login(None, BAD)),
    ("alice", None, True, Login(None, BAD)),
    ("bob", "pw", True, Login(None, BAD)),
    (None, None, True, Login(None)),
    (None, "pw", True, Login(None)),  # a password alone (MQTT 5.0 allows it) is anonymous
    (None, None, False, Login(None, DENIED)),
])
async def test_login_with_a_password_file(with_file, username, password, anonymous, expected):
    login = await with_file.login(username, password, allow_anonymous=anonymous)
    assert login == expected
    assert login.ok is (expected.refusal is None)


@pytest.mark.parametrize(("username", "anonymous", "expected"), [
    ("alice", True, Login(None)),  # nothing can check the name: anonymous
    ("alice", False, Login(None, DENIED)),
    (None, False, Login(None, DENIED)),
])
async def test_login_without_a_password_file(username, anonymous, expected):
    security = Security(AuthConfig(failure_delay=0))
    assert await security.login(username, "x", allow_anonymous=anonymous) == expected


async def test_certificate_identity_is_the_user_without_a_password(with_file):
    login = await with_file.login(None, None, allow_anonymous=False, identity="sensor-1")
    assert login == Login("sensor-1")


def test_without_acl_everything_is_allowed_but_publishing_to_dollar_topics():
    security = Security()
    client = Client(None, "c")
    assert security.may_publish(client, "a/$x") and security.may_subscribe(client, "#")
    assert security.may_subscribe(client, "$SYS/#")
    assert security.may_read_queue(client, "q") and security.may_write_queue(client, "q")
    # [MQTT-4.7.2-1]: the server's topics are not for clients to exchange messages on.
    for topic in ("$SYS", "$SYS/broker/uptime", "$foo/bar", "$"):
        assert not security.may_publish(client, topic), topic


def test_a_dollar_topic_needs_an_acl_rule_naming_it_and_sys_is_never_granted(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic write #\ntopic write +/bar\ntopic write $app/#\n"
                   "topic write $SYS/#\npattern write $dev/%c\n")
    security = Security.load(AuthConfig(acl_file=acl))
    client = Client(None, "c")
    assert security.may_publish(client, "plain/topic")
    assert not security.may_publish(client, "$foo/bar")  # only wildcards cover it
    assert security.may_publish(client, "$app/x") and security.may_publish(client, "$dev/c")
    assert not security.may_publish(client, "$dev/other")
    assert not security.may_publish(client, "$SYS/broker/uptime")  # even when granted


def test_access_checks_follow_the_acl(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic write a/#\nqueue read jobs\n")
    security = Security.load(AuthConfig(acl_file=acl))
    alice, anonymous = Client("alice", "c"), Client(None, "c")
    assert security.may_publish(alice, "a/b") and not security.may_publish(anonymous, "a/b")
    assert not security.may_subscribe(alice, "a/b")
    assert security.may_read_queue(alice, "jobs") and not security.may_write_queue(alice, "jobs")

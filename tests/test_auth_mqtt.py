"""Logins and access rights over the MQTT adapter, in memory (``polybroker.auth``)."""

import logging
from functools import partial

import pytest
import trio
import trio.testing

from polybroker.adapters.mqtt import serve_mqtt
from polybroker.broker import Broker
from polybroker.protocols.mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from polybroker.protocols.mqtt import properties as prop
from polybroker.protocols.mqtt import reason_codes as rc

from .rawclient import RawClient
from .test_mqtt5_broker import auth_packet, scram_start, send5, with_scram_users

V311, V5 = 4, 5
USERS = {"alice": "wonderland", "bob": "builder"}
ACL = """
topic read public/#
pattern readwrite devices/%u/#
user alice
topic readwrite #
topic deny secret/#
user sensor-1
topic write telemetry/#
"""


def open_client(nursery, broker: Broker, level: int = V311, *, allow_anonymous: bool = True,
                identity: str | None = None) -> RawClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(partial(serve_mqtt, server_stream, broker, "memory", identity=identity,
                               allow_anonymous=allow_anonymous))
    client = RawClient(client_stream)
    client.parser.protocol_level = level
    return client


async def login(nursery, broker, level: int = V311, client_id: str = "c", *,
                allow_anonymous: bool = True, identity: str | None = None,
                **fields: object) -> tuple[RawClient, ConnAck]:
    client = open_client(nursery, broker, level, allow_anonymous=allow_anonymous,
                         identity=identity)
    connack = await client.connect(client_id, protocol_level=level, **fields)
    return client, connack


async def user(nursery, broker, name: str | None, level: int = V311, client_id: str = "c",
               **fields: object) -> RawClient:
    """A client logged in as ``name`` (None: anonymous), accepted."""
    if name is not None:
        fields.update(username=name, password=USERS[name].encode())
    client, connack = await login(nursery, broker, level, client_id, **fields)
    assert connack.return_code == 0, connack
    return client


async def refused(client: RawClient) -> None:
    """After a refusing CONNACK the broker closes without another word."""
    assert await client.receive_until_closed() == []


# -- logins -------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "bad_password", "not_authorized"),
                         [(3, 0x04, 0x05), (V311, 0x04, 0x05), (V5, 0x86, 0x87)])
async def test_refusal_codes(
    nursery, level, bad_password, not_authorized, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    cases = [
        ({"username": "alice", "password": b"wrong"}, bad_password),
        ({"username": "mallory", "password": b"wonderland"}, bad_password),  # unknown user
        ({"username": "alice"}, bad_password),  # no password
        ({}, not_authorized),  # anonymous, where anonymous clients are refused
    ]
    for fields, code in cases:
        client, connack = await login(nursery, broker, level, allow_anonymous=False, **fields)
        assert connack == ConnAck(return_code=code), fields
        await refused(client)
    client, connack = await login(nursery, broker, level, allow_anonymous=False,
                                  username="alice", password=b"wonderland")
    assert connack.return_code == 0


async def test_anonymous_clients_connect_where_the_listener_allows_them(
    nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    _, connack = await login(nursery, broker, allow_anonymous=True)
    assert connack.return_code == 0
    # A user name is checked even there: a wrong password is never anonymous.
    _, connack = await login(nursery, broker, allow_anonymous=True, username="alice",
                             password=b"nope")
    assert connack.return_code == 0x04


async def test_without_password_file_a_user_name_counts_as_anonymous(
    nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(None, ACL))
    client, connack = await login(nursery, broker, allow_anonymous=False, username="alice",
                                  password=b"x")
    assert connack.return_code == 0x05
    await refused(client)
    client, connack = await login(nursery, broker, allow_anonymous=True, username="alice",
                                  password=b"x")
    assert connack.return_code == 0
    # ... and gets the rights of an anonymous client, not alice's.
    assert await client.subscribe("anything/#") == SubAck(1, (0x80,))
    assert await client.subscribe("public/#", packet_id=2) == SubAck(2, (0,))


async def test_certificate_identity_is_the_user(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client, connack = await login(nursery, broker, allow_anonymous=False, identity="sensor-1")
    assert connack.return_code == 0
    # sensor-1's ACL section: may write telemetry, may not read it.
    await client.send(Publish("telemetry/t", b"x", qos=1, packet_id=5))
    assert await client.receive() == PubAck(5)
    assert await client.subscribe("telemetry/#") == SubAck(1, (0x80,))


async def test_refusal_waits_failure_delay(nursery, autojump_clock, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL, failure_delay=3.0))
    start = trio.current_time()
    _, connack = await login(nursery, broker, allow_anonymous=False)
    assert connack.return_code == 0x05
    assert trio.current_time() - start == pytest.approx(3.0)
    # An accepted login is not held back.
    start = trio.current_time()
    _, connack = await login(nursery, broker, allow_anonymous=True)
    assert connack.return_code == 0
    assert trio.current_time() - start < 0.1


async def test_bad_password_refusal_waits_failure_delay(nursery, make_broker, auth_config):
    # Password checks run in a worker thread, so this one is timed on the real clock.
    broker = make_broker(auth=auth_config(USERS, ACL, failure_delay=0.2))
    start = trio.current_time()
    _, connack = await login(nursery, broker, username="bob", password=b"x")
    assert connack.return_code == 0x04
    assert trio.current_time() - start >= 0.2


async def test_refusal_is_logged_without_the_password(nursery, caplog, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    with caplog.at_level(logging.WARNING, "polybroker.auth"):
        client, _ = await login(nursery, broker, client_id="dev-7", username="alice",
                                password=b"hunter2")
        await refused(client)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "polybroker.auth"]
    assert "memory" in line and "'dev-7'" in line and "'alice'" in line
    assert "bad user name or password" in line
    assert "hunter2" not in caplog.text


async def scram_login(nursery, broker, password: str) -> RawClient:
    """alice through MQTT 5.0 SCRAM-SHA-256; the CONNACK is left to the caller."""
    with_scram_users(broker)  # alice, "correct horse"
    client, scram, auth = await scram_start(nursery, broker, "alice", password)
    final = scram.client_final(auth.properties[prop.AUTHENTICATION_DATA])
    await send5(client, auth_packet(final))
    return client


async def test_failed_scram_exchange_waits_failure_delay(
    nursery, autojump_clock, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL, failure_delay=2.0))
    start = trio.current_time()
    client = await scram_login(nursery, broker, "wrong")
    assert await client.receive_until_closed() == [ConnAck(return_code=rc.NOT_AUTHORIZED)]
    assert trio.current_time() - start == pytest.approx(2.0)


async def test_scram_user_gets_its_acl_rights(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await scram_login(nursery, broker, "correct horse")
    assert (await client.receive()).return_code == 0
    await send5(client, Subscribe(1, (Subscription("a/#"), Subscription("secret/#"))))
    assert await client.receive() == SubAck(1, (0, rc.NOT_AUTHORIZED))


# -- publish --------------------------------------------------------------------------------


async def marker_round_trip(publisher: RawClient, subscriber: RawClient, level: int) -> list:
    """Publish an allowed marker; every PUBLISH the subscriber got up to it (incl.)."""
    await publisher.send(Publish("public/marker", b"end", qos=1, packet_id=99), level=level)
    assert isinstance(await publisher.receive(), PubAck)
    got = []
    while not got or got[-1].topic != "public/marker":
        got.append(await subscriber.receive())
    return got


async def test_denied_publish_3_1_1_is_acknowledged_and_dropped(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    watcher = await user(nursery, broker, "alice", client_id="w")
    assert await watcher.subscribe("#") == SubAck(1, (0x80,))  # overlaps secret/#
    assert await watcher.subscribe("public/#", packet_id=2) == SubAck(2, (0,))
    bob = await user(nursery, broker, "bob", client_id="b")
    await bob.send(Publish("public/x", b"denied", qos=1, packet_id=1))
    assert await bob.receive() == PubAck(1)  # as Mosquitto: acknowledged all the same
    await bob.send(Publish("public/y", b"denied", qos=2, packet_id=2))
    assert await bob.receive() == PubRec(2)
    await bob.send(PubRel(2))
    assert await bob.receive() == PubComp(2)
    await bob.send(Publish("public/z", b"denied"))
    alice = await user(nursery, broker, "alice", client_id="a")
    got = await marker_round_trip(alice, watcher, V311)
    assert [p.payload for p in got] == [b"end"]


@pytest.mark.parametrize(("qos", "ack"), [(1, PubAck), (2, PubRec)])
async def test_denied_publish_5_0_is_answered_0x87(nursery, qos, ack, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    bob = await user(nursery, broker, "bob", V5)
    await bob.send(Publish("public/x", b"denied", qos=qos, packet_id=1), level=V5)
    assert await bob.receive() == ack(1, rc.NOT_AUTHORIZED)
    # QoS 0 has no acknowledgement: dropped, and the connection goes on.
    await bob.send(Publish("public/x", b"denied"), level=V5)
    await bob.send(Publish("devices/bob/x", b"ok", qos=1, packet_id=2), level=V5)
    assert await bob.receive() == PubAck(2, rc.NO_MATCHING_SUBSCRIBERS)


async def test_pattern_grants_each_user_its_own_subtree(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    bob = await user(nursery, broker, "bob", V5)
    await bob.send(Subscribe(1, (Subscription("devices/bob/#"),
                                 Subscription("devices/alice/#"))), level=V5)
    assert await bob.receive() == SubAck(1, (0, rc.NOT_AUTHORIZED))
    await bob.send(Publish("devices/bob/t", b"mine", qos=1, packet_id=2), level=V5)
    assert [type(p) for p in [await bob.receive(), await bob.receive()]] == [Publish, PubAck]


# -- subscribe and retained -----------------------------------------------------------------


async def test_denied_subscriptions_get_0x80_or_0x87(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    old = await user(nursery, broker, "bob", client_id="old")
    await old.send(Subscribe(1, (Subscription("public/#", 1), Subscription("private/#", 1))))
    assert await old.receive() == SubAck(1, (1, 0x80))
    new = await user(nursery, broker, "bob", V5, client_id="new")
    await new.send(Subscribe(1, (Subscription("private/#", 1), Subscription("public/+", 1))),
                   level=V5)
    assert await new.receive() == SubAck(1, (rc.NOT_AUTHORIZED, 1))


async def test_shared_subscriptions_are_checked_on_their_filter(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    bob = await user(nursery, broker, "bob", V5)
    await bob.send(Subscribe(1, (Subscription("$share/g/public/#"),
                                 Subscription("$share/g/secret/#"))), level=V5)
    assert await bob.receive() == SubAck(1, (0, rc.NOT_AUTHORIZED))


async def test_retained_messages_obey_read_rights(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    alice = await user(nursery, broker, "alice", client_id="a")
    for topic in ("public/news", "secret/plans", "other/x"):
        await alice.send(Publish(topic, topic.encode(), qos=1, retain=True, packet_id=1))
        assert await alice.receive() == PubAck(1)
    # alice may read everything but secret/#: "#" overlaps it and is refused whole.
    assert await alice.subscribe("#") == SubAck(1, (0x80,))
    assert await alice.subscribe("+/news", packet_id=2) == SubAck(2, (0x80,))  # secret/news
    assert await alice.subscribe("other/+", packet_id=3) == SubAck(3, (0,))
    assert [p.topic for p in await alice.publishes_until_idle()] == ["other/x"]
    bob = await user(nursery, broker, "bob", client_id="b")
    assert await bob.subscribe("secret/#") == SubAck(1, (0x80,))
    assert await bob.subscribe("public/#", packet_id=2) == SubAck(2, (0,))
    assert [p.topic for p in await bob.publishes_until_idle()] == ["public/news"]


# -- wills ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "published"), [("devices/bob/status", True),
                                                  ("public/status", False)])
async def test_a_will_to_a_denied_topic_is_not_published(
    nursery, topic, published, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    watcher = await user(nursery, broker, "alice", client_id="w")
    assert await watcher.subscribe(topic, 1) == SubAck(1, (1,))
    assert await watcher.subscribe("public/marker", 1, packet_id=2) == SubAck(2, (1,))
    bob = await user(nursery, broker, "bob", client_id="b", will=Will(topic, b"gone", 1))
    await bob.close()  # no DISCONNECT: the will is due
    alice = await user(nursery, broker, "alice", client_id="a")
    got = [p.payload for p in await marker_round_trip(alice, watcher, V311)]
    assert got == ([b"gone", b"end"] if published else [b"end"])


async def test_without_acl_file_everything_is_allowed(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, None))
    bob = await user(nursery, broker, "bob", V5)
    await bob.send(Subscribe(1, (Subscription("#"), Subscription("$SYS/#"))), level=V5)
    assert await bob.receive() == SubAck(1, (0, 0))
    await bob.send(Disconnect(), level=V5)
    assert await bob.receive_until_closed() == []


async def test_connect_while_logging_in_keeps_the_packets_that_follow(
    nursery, make_broker, auth_config):
    # A client may send packets right after CONNECT; they wait for the password check.
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = open_client(nursery, broker)
    await client.send(Connect("c", username="bob", password=b"builder"),
                      Subscribe(1, (Subscription("devices/bob/#"),)),
                      Publish("devices/bob/x", b"hi", qos=1, packet_id=2))
    packets = [await client.receive() for _ in range(4)]
    assert [type(p) for p in packets] == [ConnAck, SubAck, Publish, PubAck]


async def test_packets_pipelined_after_a_refused_connect_are_ignored(
    nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, None))
    watcher = await user(nursery, broker, "alice", client_id="w")
    assert await watcher.subscribe("#", 1) == SubAck(1, (1,))
    intruder = open_client(nursery, broker)
    await intruder.send(Connect("x", username="alice", password=b"guess",
                                will=Will("wills/x", b"will")),
                        Publish("t", b"sneaked in", qos=1, packet_id=1),
                        Subscribe(2, (Subscription("#"),)))
    assert await intruder.receive_until_closed() == [ConnAck(return_code=0x04)]
    assert await watcher.publishes_until_idle() == []  # no message, no will
    assert set(broker.sessions) == {"w"}

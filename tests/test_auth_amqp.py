"""Logins and access rights over the AMQP adapter, in memory: PLAIN and AMQPLAIN against
the password file, anonymous access per listener, the refusal delay, and the ACL applied
to queues, publishes and bindings on ``amq.topic``."""

import pytest
import trio
import trio.testing

from polybroker.adapters import amqp as amqp_adapter
from polybroker.broker import Broker
from polybroker.message import Message
from polybroker.protocols.amqp import (
    PROTOCOL_HEADER,
    BasicConsume,
    BasicConsumeOk,
    BasicDeliver,
    BasicGet,
    BasicGetEmpty,
    ChannelClose,
    ConnectionClose,
    ConnectionCloseOk,
    ConnectionOpen,
    ConnectionOpenOk,
    ConnectionStart,
    ConnectionStartOk,
    ConnectionTune,
    ConnectionTuneOk,
    ExchangeDeclare,
    ExchangeDeclareOk,
    QueueBind,
    QueueBindOk,
    QueueDeclare,
    QueuePurge,
    encode_method,
    encode_table,
)

from .test_amqp_adapter import AmqpTestClient, assert_close
from .test_auth_stomp import USERS

ACL = """
queue read public.*
user alice
queue readwrite jobs
queue read audit
topic readwrite sensors/#
topic deny sensors/secret/#
"""


def start_client(nursery, broker: Broker, *, allow_anonymous: bool = True,
                 identity: str | None = None) -> AmqpTestClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: amqp_adapter.serve_amqp(
        server_stream, broker, "memory", identity=identity, allow_anonymous=allow_anonymous))
    return AmqpTestClient(client_stream)


def plain(user: str, password: str) -> tuple[str, bytes]:
    return "PLAIN", f"\0{user}\0{password}".encode()


def amqplain(user: str, password: str) -> tuple[str, bytes]:
    # A field table without its length prefix (AMQP-LITE 2).
    return "AMQPLAIN", encode_table({"LOGIN": user, "PASSWORD": password}, length_prefix=False)


async def start_ok(client: AmqpTestClient, mechanism: str, response: bytes) -> None:
    await client.send_raw(PROTOCOL_HEADER)
    await client.expect(0, ConnectionStart)
    await client.send(0, ConnectionStartOk(mechanism=mechanism, response=response))


async def alice(nursery, broker) -> AmqpTestClient:
    client = start_client(nursery, broker, allow_anonymous=False)
    await client.handshake(response=b"\0alice\0wonderland")
    await client.open_channel(1)
    return client


@pytest.mark.parametrize("login", [plain, amqplain])
async def test_password_file_users_log_in_with_plain_and_amqplain(
    nursery, login, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = start_client(nursery, broker, allow_anonymous=False)
    await start_ok(client, *login("alice", "wonderland"))
    await client.expect(0, ConnectionTune)


@pytest.mark.parametrize(("credentials", "allow_anonymous"), [
    (plain("alice", "wrong"), True),
    (amqplain("alice", "wrong"), True),
    (plain("mallory", "wonderland"), True),
    (plain("guest", "guest"), False),  # no such user and no anonymous access
    (("EXTERNAL", b""), True),
])
async def test_refused_login_is_403_whatever_was_wrong(
    nursery, caplog, credentials, allow_anonymous, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = start_client(nursery, broker, allow_anonymous=allow_anonymous)
    await start_ok(client, *credentials)
    close = await client.expect(0, ConnectionClose)
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused")
    await client.send(0, ConnectionCloseOk())
    assert await client.closed() == []
    assert "AMQP login refused from memory" in caplog.text
    assert "wrong" not in caplog.text  # never the password


async def test_refusal_waits_failure_delay(nursery, autojump_clock, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL, failure_delay=2.5))
    client = start_client(nursery, broker, allow_anonymous=False)
    await start_ok(client, *plain("", ""))  # no password to hash: the delay alone
    started = trio.current_time()
    await client.expect(0, ConnectionClose, timeout=10)
    assert trio.current_time() - started >= 2.5


async def test_anonymous_client_without_password_file_gets_in_when_allowed(nursery, broker):
    client = start_client(nursery, broker, allow_anonymous=True)
    await client.handshake()  # guest/guest, no password file: anonymous
    refused = start_client(nursery, broker, allow_anonymous=False)
    await start_ok(refused, *plain("guest", "guest"))
    assert (await refused.expect(0, ConnectionClose)).reply_code == 403


async def test_frames_pipelined_after_start_ok_wait_for_the_login(
    nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = start_client(nursery, broker, allow_anonymous=False)
    await client.send_raw(PROTOCOL_HEADER)
    await client.expect(0, ConnectionStart)
    mechanism, response = plain("alice", "wonderland")
    await client.send(0, ConnectionStartOk(mechanism=mechanism, response=response))
    tune = await client.expect(0, ConnectionTune)
    # tune-ok and open in one write: both are handled, in order.
    await client.send_raw(
        encode_method(0, ConnectionTuneOk(channel_max=tune.channel_max,
                                                       frame_max=tune.frame_max, heartbeat=0))
        + encode_method(0, ConnectionOpen(virtual_host="/")))
    await client.expect(0, ConnectionOpenOk)


async def test_certificate_identity_logs_in_without_password(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = start_client(nursery, broker, allow_anonymous=False, identity="alice")
    await client.handshake(response=b"\0ignored\0ignored")
    await client.open_channel(1)
    assert (await client.declare(1, "jobs")).queue == "jobs"  # alice's rights


# -- the ACL ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [
    QueueDeclare(queue="private"),
    QueueDeclare(queue="private", passive=True),
    QueuePurge(queue="private"),
    BasicConsume(queue="private", consumer_tag="c"),
    BasicGet(queue="private"),
])
async def test_queue_without_read_right_is_refused_403(nursery, method, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    broker.queues.declare_queue("private", owner=None, passive=False, durable=False,
                                exclusive=False, auto_delete=False, arguments={})
    client = await alice(nursery, broker)
    await client.send(1, method)
    close = await client.expect(1, ChannelClose)
    assert_close(close, 403, method.CLASS_ID, method.METHOD_ID)
    assert "private" in close.reply_text
    await client.open_channel(2)  # the connection stays usable
    assert (await client.declare(2, "jobs")).queue == "jobs"


async def test_server_named_queues_are_the_clients_own(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    declared = await client.declare(1, "", exclusive=True)
    await client.send(1, BasicConsume(queue=declared.queue, consumer_tag="mine"))
    await client.expect(1, BasicConsumeOk)


async def test_publish_to_a_queue_without_write_right_closes_the_channel(
    nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    await client.declare(1, "jobs")
    await client.declare(1, "audit")
    await client.publish(1, "", "jobs", b"ok")
    await client.publish(1, "", "audit", b"forbidden")  # read only
    assert_close(await client.expect(1, ChannelClose), 403, 60, 40)
    assert [e.message.payload for e in broker.queues.get("jobs").ready] == [b"ok"]
    assert broker.queues.get("audit").message_count == 0


async def test_other_exchanges_deliver_only_into_writable_queues(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    await client.send(1, ExchangeDeclare(exchange="fan", type="fanout"))
    await client.expect(1, ExchangeDeclareOk)
    for name in ("jobs", "audit"):
        await client.declare(1, name)
        await client.send(1, QueueBind(queue=name, exchange="fan"))
        await client.expect(1, QueueBindOk)
    await client.publish(1, "fan", "", b"hello")
    await client.send(1, BasicGet(queue="audit", no_ack=True))
    await client.expect(1, BasicGetEmpty)
    assert [e.message.payload for e in broker.queues.get("jobs").ready] == [b"hello"]


async def test_amq_topic_binding_needs_the_subscribe_right(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    await client.declare(1, "jobs")
    await client.send(1, QueueBind(queue="jobs", exchange="amq.topic",
                                   routing_key="sensors.room.*"))
    await client.expect(1, QueueBindOk)
    await client.send(1, QueueBind(queue="jobs", exchange="amq.topic", routing_key="#"))
    close = await client.expect(1, ChannelClose)
    assert_close(close, 403, 50, 20)


async def test_denied_topic_subscriber_receives_nothing(nursery, make_broker, auth_config):
    """A queue bound on amq.topic gets what MQTT publishes to allowed topics only: the
    binding that would read secrets is refused, so a later allowed marker arrives alone."""
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    await client.declare(1, "jobs")
    await client.send(1, QueueBind(queue="jobs", exchange="amq.topic",
                                   routing_key="sensors.secret.#"))
    assert_close(await client.expect(1, ChannelClose), 403, 50, 20)
    await client.open_channel(2)
    await client.send(2, QueueBind(queue="jobs", exchange="amq.topic", routing_key="sensors.t1"))
    await client.expect(2, QueueBindOk)
    await client.send(2, BasicConsume(queue="jobs", consumer_tag="c", no_ack=True))
    await client.expect(2, BasicConsumeOk)
    broker.publish(Message("sensors/secret/key", b"secret"))  # as MQTT devices publish
    broker.publish(Message("sensors/t1", b"marker"))
    delivery = await client.content(2, BasicDeliver)
    assert delivery.body == b"marker"


async def test_amq_topic_publish_needs_the_publish_right(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    client = await alice(nursery, broker)
    await client.publish(1, "amq.topic", "sensors.t1", b"ok")
    await client.publish(1, "amq.topic", "sensors.secret.key", b"no")
    assert_close(await client.expect(1, ChannelClose), 403, 60, 40)


async def test_general_rules_apply_to_anonymous_clients(nursery, make_broker, auth_config):
    broker = make_broker(auth=auth_config(USERS, ACL))
    broker.queues.declare_queue("public.news", owner=None, passive=False, durable=False,
                                exclusive=False, auto_delete=False, arguments={})
    client = start_client(nursery, broker, allow_anonymous=True)
    await client.handshake(response=b"\0\0")  # PLAIN without a user name: anonymous
    await client.open_channel(1)
    assert (await client.declare(1, "public.news")).queue == "public.news"
    await client.send(1, QueueDeclare(queue="jobs"))
    assert_close(await client.expect(1, ChannelClose), 403, 50, 10)

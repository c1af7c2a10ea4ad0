"""AMQP logins and access rights with real clients: pika (PLAIN) and kombu over py-amqp
(AMQPLAIN) against a real ``polybroker serve`` whose password file is written by
``polybroker passwd``, with an ACL and anonymous clients refused.

Waits are bounded by client timeouts; "receives nothing" is shown by a later allowed
marker message that arrives first.
"""

import kombu
import paho.mqtt.client as mqtt
import pika
import pika.exceptions
import pytest
from paho.mqtt.client import CallbackAPIVersion, MQTTv311

from .brokerproc import BrokerProcess
from .clients import WAIT
from .test_auth_clients import start_secured, write_passwords

ACL = """\
user alice
topic readwrite #
queue readwrite *
user bob
topic readwrite sensors/#
topic deny sensors/secret/#
queue readwrite bob.*
"""


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    directory = tmp_path_factory.mktemp("amqp-auth")
    passwords = directory / "passwords"
    write_passwords(passwords)
    proc = start_secured(directory, passwords, ACL,
                         listen=("amqp://127.0.0.1:0", "mqtt://127.0.0.1:0"))
    try:
        yield proc
    finally:
        proc.stop()


def pika_connection(proc: BrokerProcess, user: str, password: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", proc.amqp_port, credentials=pika.PlainCredentials(user, password),
        connection_attempts=1, socket_timeout=WAIT, blocked_connection_timeout=WAIT))


@pytest.mark.parametrize(("user", "password"), [
    ("alice", "wrong"), ("mallory", "wonderland"), ("guest", "guest"),
])
def test_pika_bad_login_is_refused(secured, user, password):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as refused:
        pika_connection(secured, user, password)
    assert "403" in str(refused.value) and "ACCESS_REFUSED" in str(refused.value)
    secured.wait_for_log(rf"AMQP login refused from \S+ \(client id '[^']*', user '{user}'\)")


def test_kombu_amqplain_login_and_refusal(secured):
    url = f"amqp://alice:wonderland@127.0.0.1:{secured.amqp_port}//"
    with kombu.Connection(url, login_method="AMQPLAIN", connect_timeout=WAIT) as conn:
        queue = conn.SimpleQueue("alice.inbox")
        queue.put({"hello": "world"})
        assert queue.get(timeout=WAIT).payload == {"hello": "world"}
        queue.close()
    bad = f"amqp://alice:nope@127.0.0.1:{secured.amqp_port}//"
    with kombu.Connection(bad, login_method="AMQPLAIN", connect_timeout=WAIT) as conn, \
            pytest.raises(Exception, match="ACCESS_REFUSED"):
        conn.connect()


def test_pika_queue_without_rights_closes_the_channel_403(secured):
    connection = pika_connection(secured, "bob", "builder")
    try:
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.queue_declare("alice.private")
        assert closed.value.reply_code == 403
        channel = connection.channel()  # the connection stays usable
        assert channel.queue_declare("bob.jobs").method.queue == "bob.jobs"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.basic_publish("", "alice.private", b"x")
            channel.queue_declare("bob.jobs", passive=True)  # a round trip to see the close
        assert closed.value.reply_code == 403
    finally:
        connection.close()


def test_denied_amqp_subscriber_receives_nothing(secured):
    """bob may read sensors/# but not sensors/secret/#: his binding on the secret topics is
    refused, and his queue then gets the marker published after the secret."""
    connection = pika_connection(secured, "bob", "builder")
    try:
        channel = connection.channel()
        channel.queue_declare("bob.sensors", exclusive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.queue_bind("bob.sensors", "amq.topic", "sensors.secret.#")
        assert closed.value.reply_code == 403
        channel = connection.channel()
        channel.queue_bind("bob.sensors", "amq.topic", "sensors.t1")
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alice-dev",
                                protocol=MQTTv311)
        publisher.username_pw_set("alice", "wonderland")
        publisher.connect("127.0.0.1", secured.port_of("mqtt"))
        publisher.loop_start()
        try:
            publisher.publish("sensors/secret/key", b"secret", qos=1).wait_for_publish(WAIT)
            publisher.publish("sensors/t1", b"marker", qos=1).wait_for_publish(WAIT)
        finally:
            publisher.loop_stop()
            publisher.disconnect()
        for _method, _properties, body in channel.consume("bob.sensors", auto_ack=True,
                                                           inactivity_timeout=WAIT):
            assert body == b"marker"
            break
        channel.cancel()
    finally:
        connection.close()

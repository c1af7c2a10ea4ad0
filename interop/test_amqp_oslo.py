"""oslo.messaging 18.3 (rabbit driver over py-amqp, AMQPLAIN login, publisher confirms)
against ``polybroker serve``: RPC call and cast through a threading RPC server, and
notifications, including one sent before any listener exists (the notifier declares
and binds the queue itself, so it is kept).

Waits are bounded: RPC calls have a timeout, casts and notifications are awaited on
events set by the endpoints.
"""

import queue

import oslo_messaging
import pytest
from oslo_config import cfg

from .amqp_support import start_broker
from .clients import WAIT

TOPIC = "lab"


@pytest.fixture(scope="module")
def oslo_broker(tmp_path_factory):
    proc = start_broker(tmp_path_factory.mktemp("oslo") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def conf():
    # oslo.messaging registers some of its options (tracing) on the global object only.
    return cfg.CONF


@pytest.fixture
def transport_url(oslo_broker):
    return f"rabbit://guest:guest@127.0.0.1:{oslo_broker.amqp_port}/"


class Endpoint:
    def __init__(self) -> None:
        self.casts: queue.Queue = queue.Queue()

    def echo(self, ctxt, value):
        return {"echo": value}

    def record(self, ctxt, value):
        self.casts.put(value)


@pytest.fixture
def rpc_server(conf, transport_url):
    transport = oslo_messaging.get_rpc_transport(conf, url=transport_url)
    endpoint = Endpoint()
    target = oslo_messaging.Target(topic=TOPIC, server="server-1")
    server = oslo_messaging.get_rpc_server(
        transport, target, [endpoint], access_policy=oslo_messaging.DefaultRPCAccessPolicy,
    )
    server.start()
    try:
        yield transport, endpoint
    finally:
        server.stop()
        server.wait()
        transport.cleanup()


def test_rpc_call_and_cast(rpc_server):
    transport, endpoint = rpc_server
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic=TOPIC), timeout=WAIT)
    assert client.call({}, "echo", value="ping") == {"echo": "ping"}
    assert client.prepare(server="server-1").call({}, "echo", value=7) == {"echo": 7}
    client.cast({}, "record", value="cast-1")
    assert endpoint.casts.get(timeout=WAIT) == "cast-1"
    fanout = client.prepare(fanout=True)
    fanout.cast({}, "record", value="to-all")
    assert endpoint.casts.get(timeout=WAIT) == "to-all"


class NotificationEndpoint:
    def __init__(self) -> None:
        self.received: queue.Queue = queue.Queue()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.received.put((publisher_id, event_type, payload))


def test_notification_sent_before_a_listener_is_kept(conf, transport_url):
    transport = oslo_messaging.get_notification_transport(conf, url=transport_url)
    try:
        notifier = oslo_messaging.Notifier(transport, publisher_id="lab.host",
                                           driver="messaging", topics=["lab_notifications"])
        notifier.info({}, "lab.early", {"n": 1})
        endpoint = NotificationEndpoint()
        listener = oslo_messaging.get_notification_listener(
            transport, [oslo_messaging.Target(topic="lab_notifications")], [endpoint])
        listener.start()
        try:
            assert endpoint.received.get(timeout=WAIT) == ("lab.host", "lab.early", {"n": 1})
            notifier.info({}, "lab.late", {"n": 2})
            assert endpoint.received.get(timeout=WAIT) == ("lab.host", "lab.late", {"n": 2})
        finally:
            listener.stop()
            listener.wait()
    finally:
        transport.cleanup()

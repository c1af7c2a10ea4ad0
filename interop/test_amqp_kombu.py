"""kombu 5.7 (py-amqp) against a real ``polybroker serve`` process: the six patterns of
the RabbitMQ tutorials (hello world, work queues, publish/subscribe, routing, topics,
RPC) as kombu users write them.

Waits are ``drain_events(timeout=...)`` on the connection that expects something, each
bounded; nothing sleeps.
"""

import socket
import threading
import time
import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue, binding

from .amqp_support import broker_url, start_broker
from .clients import WAIT


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    # One broker for the module: each test uses queue and exchange names of its own.
    proc = start_broker(tmp_path_factory.mktemp("kombu") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def connect(broker):
    made: list[Connection] = []

    def make() -> Connection:
        connection = Connection(broker_url(broker.amqp_port), connect_timeout=WAIT)
        connection.connect()
        made.append(connection)
        return connection

    try:
        yield make
    finally:
        for connection in made:
            connection.release()


def _collect(connection: Connection, queues: list[Queue], count: int,
             **consumer_options) -> list:
    """The bodies of the next ``count`` messages on ``queues`` (each acked)."""
    bodies = []

    def on_message(body, message) -> None:
        bodies.append(body)
        message.ack()

    with Consumer(connection, queues, callbacks=[on_message], **consumer_options):
        while len(bodies) < count:
            connection.drain_events(timeout=WAIT)
    return bodies


def _eventually(condition, timeout: float = WAIT) -> None:
    """Poll ``condition`` (each call a round trip to the broker) until true, bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"


def _nothing_more(connection: Connection, queue: Queue) -> bool:
    """True if ``queue`` holds no message now (a passive declare: a round trip)."""
    return queue(connection.default_channel).queue_declare(passive=True).message_count == 0


def test_hello_world_simple_queue(connect):
    connection = connect()
    hello = connection.SimpleQueue("hello")
    try:
        hello.put("Hello World!")
        _eventually(lambda: hello.qsize() == 1)  # a publish has no reply to wait for
        message = hello.get(block=True, timeout=WAIT)
        assert message.payload == "Hello World!"
        assert message.content_type == "text/plain"  # kombu sends a str as text
        message.ack()
        assert hello.qsize() == 0
        with pytest.raises(hello.Empty):
            hello.get_nowait()
        hello.close()  # get() left a consumer that would take the next messages
        hello = connection.SimpleQueue("hello")
        for n in range(3):
            hello.put({"n": n})
        _eventually(lambda: hello.qsize() == 3)
        assert hello.clear() == 3
        hello.put("last")
        _eventually(lambda: hello.qsize() == 1)
        message = hello.get_nowait()
        assert message.payload == "last"
        message.ack()
        assert hello.qsize() == 0
    finally:
        hello.close()


def test_work_queues_prefetch_one(connect):
    tasks = Queue("tasks", Exchange("tasks", "direct"), routing_key="tasks", durable=True)
    busy, idle, producer_side = connect(), connect(), connect()
    held = []
    done = []

    def hold(body, message) -> None:
        held.append((body, message))  # not acked while the other worker runs

    def work(body, message) -> None:
        done.append(body)
        message.ack()

    with Consumer(busy, [tasks], callbacks=[hold], prefetch_count=1), \
            Consumer(idle, [tasks], callbacks=[work], prefetch_count=1):
        producer = Producer(producer_side)
        for n in range(10):
            producer.publish({"task": n}, exchange=tasks.exchange, routing_key="tasks",
                             declare=[tasks])
        busy.drain_events(timeout=WAIT)  # its one message
        while len(held) + len(done) < 10:
            idle.drain_events(timeout=WAIT)
        with pytest.raises(socket.timeout):
            busy.drain_events(timeout=0.2)  # prefetch 1: nothing more while it holds one
        assert len(held) == 1 and len(done) == 9
        held[0][1].ack()
    tasks_seen = sorted(body["task"] for body in [held[0][0], *done])
    assert tasks_seen == list(range(10))
    assert _nothing_more(producer_side, tasks)


def test_publish_subscribe_fanout(connect):
    logs = Exchange("logs", "fanout", durable=False)
    publisher = connect()
    subscribers = [connect(), connect()]
    queues = [Queue("", logs, exclusive=True) for _ in subscribers]
    consumers = [Consumer(conn, [queue]) for conn, queue in
                 zip(subscribers, queues, strict=True)]
    received = [[], []]
    for consumer, bucket in zip(consumers, received, strict=True):
        consumer.register_callback(lambda body, message, b=bucket: b.append(body))
        consumer.consume()
    for consumer in consumers:
        assert consumer.queues[0].name.startswith("amq.gen-")
    Producer(publisher).publish({"line": "log line"}, exchange=logs)
    for conn, bucket in zip(subscribers, received, strict=True):
        while not bucket:
            conn.drain_events(timeout=WAIT)
    assert received == [[{"line": "log line"}], [{"line": "log line"}]]
    for consumer in consumers:
        consumer.cancel()


def test_routing_direct(connect):
    direct_logs = Exchange("direct_logs", "direct", durable=False)
    connection = connect()
    problems = Queue("", exclusive=True, bindings=[
        binding(direct_logs, routing_key="error"), binding(direct_logs, routing_key="warning"),
    ])
    with Consumer(connection, [problems], no_ack=True) as consumer:
        got = []
        consumer.register_callback(lambda body, message: got.append(body))
        producer = Producer(connection)
        for severity in ("info", "warning", "error", "debug"):
            producer.publish(f"{severity} line", exchange=direct_logs, routing_key=severity)
        while len(got) < 2:
            connection.drain_events(timeout=WAIT)
        assert got == ["warning line", "error line"]
        assert _nothing_more(connection, consumer.queues[0])


def test_topics(connect):
    topic_logs = Exchange("topic_logs", "topic", durable=False)
    connection = connect()
    kernel = Queue("", exclusive=True, bindings=[
        binding(topic_logs, routing_key="kern.#"), binding(topic_logs, routing_key="*.critical"),
    ])
    with Consumer(connection, [kernel], no_ack=True) as consumer:
        got = []
        consumer.register_callback(lambda body, message: got.append(
            message.delivery_info["routing_key"]))
        producer = Producer(connection)
        keys = ("kern.info", "app.info", "app.critical", "kern", "a.b.critical",
                "kern.disk.full", "kern.critical")
        for key in keys:
            producer.publish(key, exchange=topic_logs, routing_key=key)
        expected = ["kern.info", "app.critical", "kern", "kern.disk.full", "kern.critical"]
        while len(got) < len(expected):
            connection.drain_events(timeout=WAIT)
        assert got == expected  # kern.critical matched twice, delivered once
        assert _nothing_more(connection, consumer.queues[0])


def test_rpc_with_reply_queue_and_correlation_id(connect):
    rpc_queue = Queue("rpc_queue")
    server_conn, client_conn = connect(), connect()
    served = threading.Event()

    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    def on_request(body, message) -> None:
        Producer(server_conn).publish(
            {"result": fib(body["n"])}, exchange="", routing_key=message.properties["reply_to"],
            correlation_id=message.properties["correlation_id"],
        )
        message.ack()
        served.set()

    def serve() -> None:
        with Consumer(server_conn, [rpc_queue], callbacks=[on_request], prefetch_count=1):
            while not served.is_set():
                server_conn.drain_events(timeout=WAIT)

    rpc_queue(server_conn.default_channel).declare()
    server = threading.Thread(target=serve)
    server.start()
    try:
        callback_queue = Queue("", exclusive=True, auto_delete=True)
        replies = []
        with Consumer(client_conn, [callback_queue], no_ack=True,
                      on_message=replies.append) as consumer:
            reply_to = consumer.queues[0].name  # named by the broker
            correlation_id = str(uuid.uuid4())
            Producer(client_conn).publish(
                {"n": 10}, exchange="", routing_key="rpc_queue",
                reply_to=reply_to, correlation_id=correlation_id,
            )
            while not replies:
                client_conn.drain_events(timeout=WAIT)
        (reply,) = replies
        assert reply.properties["correlation_id"] == correlation_id
        assert reply.payload == {"result": 55}
    finally:
        server.join(WAIT)
    assert not server.is_alive()

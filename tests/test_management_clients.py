"""Management operations seen from real clients: paho-mqtt 5.0 told why it was kicked,
stomp.py and pika listed with their logins and consumers, an in-process broker."""

import queue
import threading

import paho.mqtt.client as paho
import pika
import stomp
import trio
from paho.mqtt.client import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from polybroker.management import ops
from polybroker.server import open_broker

WAIT = 10
LISTENERS = ("mqtt://127.0.0.1:0", "stomp://127.0.0.1:0", "amqp://127.0.0.1:0")


async def test_paho_5_is_told_administrative_action_and_keeps_its_session(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        connected, reasons = threading.Event(), queue.Queue()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="paho-5",
                             protocol=paho.MQTTv5)
        client.on_connect = lambda c, u, flags, reason, props: connected.set()
        client.on_disconnect = lambda c, u, flags, reason, props: reasons.put(reason.value)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600

        def start() -> None:
            client.connect("127.0.0.1", running.port("mqtt"), clean_start=False,
                           properties=properties)
            client.loop_start()
            assert connected.wait(WAIT)

        await trio.to_thread.run_sync(start)
        try:
            assert ops.client(running, "paho-5")["protocol"] == "mqtt"
            ops.disconnect(running, "paho-5")
            reason = await trio.to_thread.run_sync(lambda: reasons.get(timeout=WAIT))
            assert reason == 0x98  # Administrative action
        finally:
            await trio.to_thread.run_sync(client.loop_stop)
        assert "paho-5" in running.broker.sessions


async def test_stomp_py_and_pika_are_listed_with_their_logins_and_consumers(serve_config):
    async with open_broker(serve_config(*LISTENERS)) as running:
        params = pika.ConnectionParameters(
            host="127.0.0.1", port=running.port("amqp"), connection_attempts=1,
            credentials=pika.PlainCredentials("guest", "guest"))

        def open_clients() -> tuple[stomp.Connection, pika.BlockingConnection]:
            conn = stomp.Connection([("127.0.0.1", running.port("stomp"))])
            conn.connect("alice", "secret", wait=True)
            listener = stomp.listener.WaitingListener("subscribed")
            conn.set_listener("wait", listener)
            conn.subscribe("/queue/orders", id="s1", ack="client",
                           headers={"receipt": "subscribed"})
            listener.wait_on_receipt()
            amqp = pika.BlockingConnection(params)
            channel = amqp.channel()
            channel.queue_declare("orders")
            channel.basic_consume("orders", lambda *args: None, consumer_tag="c1")
            return conn, amqp

        conn, amqp = await trio.to_thread.run_sync(open_clients)
        try:
            by_protocol = {item["protocol"]: item for item in ops.clients(running)["items"]}
            assert by_protocol["stomp"]["user"] == "alice"
            assert by_protocol["amqp"]["user"] == "guest"
            stomp_detail = ops.client(running, by_protocol["stomp"]["id"])
            assert stomp_detail["subscriptions"] == [
                {"id": "s1", "destination": "/queue/orders", "queue": "orders",
                 "unacknowledged": 0}]
            amqp_detail = ops.client(running, by_protocol["amqp"]["id"])
            assert amqp_detail["subscriptions"] == [{"id": "c1", "channel": 1,
                                                     "queue": "orders"}]
            assert ops.queue(running, "orders")["consumers"] == 2
        finally:
            await trio.to_thread.run_sync(conn.disconnect)
            await trio.to_thread.run_sync(amqp.close)

"""STOMP over the connection runner: what the runner adds to every protocol."""

import trio

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits

from .stompclient import connect_client


async def test_a_client_that_does_not_read_its_receipts_is_not_read_either(
        nursery, autojump_clock):
    broker = Broker(BrokerConfig(limits=Limits(max_outgoing_bytes=200, send_timeout=100)))
    client = await connect_client(nursery, broker, lockstep=True)
    await client.connect("1.2")
    sent = 0
    with trio.move_on_after(10):
        while sent < 200:
            await client.send("SEND", {"destination": "/topic/t", "receipt": f"r{sent}"}, b"x")
            sent += 1
    assert sent < 50  # the broker stopped reading: its RECEIPTs are not being read
    assert client.server.pending_bytes <= 200 + 64
    receipts = 0
    with trio.fail_after(30):
        while receipts < sent:  # reading lets everything through again
            receipts += (await client.receive()).command == "RECEIPT"

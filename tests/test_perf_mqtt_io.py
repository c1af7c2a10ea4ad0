"""The MQTT adapter's I/O as it is built for many idle connections: the direct socket
read (``adapters.io.receive_socket``), the writer task that runs only while there is
something to send, and the limits that still bound it (send_timeout, the outgoing
buffer), over memory streams and real loopback sockets."""

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from polybroker.adapters.io import plain_socket_fd, receive_socket, send_socket
from polybroker.config import Limits
from polybroker.protocols.mqtt import ConnAck, Connect, PingReq, PingResp, Publish, Will
from polybroker.server import open_broker

from .rawclient import RawClient, connect_client

# -- receive_socket -------------------------------------------------------------------------


def socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_plain_socket_fd_only_for_socket_streams():
    ours, theirs = socket_stream_pair()
    async with ours, theirs:
        assert plain_socket_fd(ours) == ours.socket.fileno()
    memory, _ = trio.testing.memory_stream_pair()
    assert plain_socket_fd(memory) is None


def closed_fd(stream: trio.SocketStream) -> int:
    """A descriptor number that was just closed (and not yet reused)."""
    fd = os.dup(stream.socket.fileno())
    os.close(fd)
    return fd


async def test_receive_socket_returns_what_arrived_and_checkpoints():
    ours, theirs = socket_stream_pair()
    async with ours, theirs:
        await theirs.send_all(b"hello")
        with trio.testing.assert_checkpoints():  # even when the read does not block
            assert await receive_socket(ours.socket.fileno()) == b"hello"


async def test_receive_socket_waits_for_data():
    ours, theirs = socket_stream_pair()
    async with ours, theirs, trio.open_nursery() as nursery:
        got = []

        async def reader() -> None:
            got.append(await receive_socket(ours.socket.fileno()))

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await theirs.send_all(b"late")
    assert got == [b"late"]


async def test_receive_socket_end_of_stream_is_empty_bytes():
    ours, theirs = socket_stream_pair()
    async with ours:
        await theirs.aclose()
        assert await receive_socket(ours.socket.fileno()) == b""


async def test_receive_socket_on_a_stream_closed_while_waiting_raises_closed():
    ours, theirs = socket_stream_pair()
    async with theirs, trio.open_nursery() as nursery:
        raised = []

        fd = ours.socket.fileno()

        async def reader() -> None:
            try:
                await receive_socket(fd)
            except trio.ClosedResourceError as exc:
                raised.append(exc)

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await ours.aclose()
    assert len(raised) == 1
    again, other = socket_stream_pair()
    async with again, other:
        with pytest.raises(trio.ClosedResourceError):
            await receive_socket(closed_fd(again))  # and on a closed descriptor


@contextlib.asynccontextmanager
async def reset_by_peer() -> AsyncIterator[int]:
    """The descriptor of a connected socket whose peer closed with a reset (RST)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        client = await trio.testing.open_stream_to_socket_listener(listeners[0])
        server = await listeners[0].accept()
        async with server:
            # SO_LINGER 0: close sends RST instead of FIN.
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            await client.aclose()
            yield server.socket.fileno()


async def test_receive_socket_on_a_reset_connection_raises_broken():
    async with reset_by_peer() as fd:
        with pytest.raises(trio.BrokenResourceError):
            await receive_socket(fd)


async def test_receive_socket_cancelled_while_waiting_loses_nothing():
    ours, theirs = socket_stream_pair()
    async with ours, theirs:
        with trio.move_on_after(0.01) as scope:
            await receive_socket(ours.socket.fileno())
        assert scope.cancelled_caught
        await theirs.send_all(b"after")
        assert await receive_socket(ours.socket.fileno()) == b"after"


async def test_send_socket_writes_what_fits_without_waiting():
    ours, theirs = socket_stream_pair()
    async with ours, theirs:
        with trio.testing.assert_no_checkpoints():
            assert send_socket(ours.socket.fileno(), b"abc") == 3
        assert await theirs.receive_some(10) == b"abc"
        # Nobody reads: the socket buffers fill up, and it takes less, then nothing.
        chunk = b"x" * 65536
        sent = [send_socket(ours.socket.fileno(), chunk) for _ in range(200)]
        assert sent[-1] == 0 and sum(sent) < 200 * len(chunk)


async def test_send_socket_on_a_closed_or_reset_socket_raises():
    ours, theirs = socket_stream_pair()
    async with ours, theirs:
        with pytest.raises(trio.ClosedResourceError):
            send_socket(closed_fd(ours), b"x")
    async with reset_by_peer() as fd:
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(3):  # the first write may still be accepted
                send_socket(fd, b"x")
                await trio.sleep(0.01)  # ok: retries until the kernel has the reset


# -- the writer task --------------------------------------------------------------------------


def writer_tasks() -> list[trio.lowlevel.Task]:
    """Every running connection writer task, wherever it runs in the task tree."""
    found, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task.coro.__qualname__ == "ConnectionRunner._write_loop":
            found.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


async def test_idle_connections_have_no_writer_and_writes_still_flow(nursery, broker):
    sub = await connect_client(nursery, broker)
    await sub.connect("sub")
    await sub.subscribe("t", 1)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    for round_ in range(3):
        await trio.testing.wait_all_tasks_blocked()
        assert writer_tasks() == []  # the writers ended with nothing left to send
        await pub.send(Publish("t", b"%d" % round_, qos=1, packet_id=round_ + 1))
        assert (await pub.receive()).packet_id == round_ + 1  # PUBACK
        delivered = await sub.receive()
        assert isinstance(delivered, Publish) and delivered.payload == b"%d" % round_


async def test_a_client_that_does_not_read_is_closed_after_the_send_timeout(
    nursery, autojump_clock, caplog, make_broker
):
    broker = make_broker(limits=Limits(send_timeout=5))
    slow = await connect_client(nursery, broker, lockstep=True)  # reads nothing from now on
    await slow.connect("slow")
    await slow.subscribe("t", 0)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    with caplog.at_level(logging.WARNING, logger="polybroker"):
        await pub.send(Publish("t", b"x" * 100))
        await pub.publishes_until_idle()
        assert "slow" in broker.sessions
        start = trio.current_time()
        with trio.fail_after(60):
            while "slow" in broker.sessions:  # clean session: gone with the connection
                await trio.sleep(0.5)  # ok: mock clock, polling virtual time
    assert 5 <= trio.current_time() - start <= 7
    assert "mqtt client slow (memory) disconnected: send timeout" in caplog.text
    assert writer_tasks() == []


async def test_deliveries_made_while_the_writer_is_blocked_go_out_after_it(nursery, broker):
    sub = await connect_client(nursery, broker, lockstep=True)
    await sub.connect("sub")
    await sub.subscribe("t", 0)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    for i in range(20):
        await pub.send(Publish("t", b"%d" % i))
    await pub.publishes_until_idle()  # all routed while the subscriber read nothing
    assert len(writer_tasks()) == 1  # one writer, blocked in its first write
    received = [p.payload for p in await sub.publishes_until_idle()]
    assert received == [b"%d" % i for i in range(20)]


async def test_connection_closing_waits_for_the_writer_to_drain(nursery, broker):
    sub = await connect_client(nursery, broker, lockstep=True)
    await sub.connect("sub")
    await sub.subscribe("t", 0)
    pub = await connect_client(nursery, broker)
    await pub.connect("pub")
    await pub.send(*(Publish("t", b"%d" % i) for i in range(5)))
    await pub.publishes_until_idle()
    # A second connection with the same id takes the session over; the old one ends, but
    # what was buffered for it still goes out before its stream closes.
    again = await connect_client(nursery, broker)
    await again.connect("sub", clean_session=False)
    packets = await sub.receive_until_closed()
    assert [p.payload for p in packets] == [b"%d" % i for i in range(5)]


# -- over real sockets -----------------------------------------------------------------------


async def test_over_tcp_deliveries_flow_and_idle_connections_have_no_writer(serve_config):
    async with open_broker(serve_config("mqtt://127.0.0.1:0")) as running:
        port = running.port()
        sub = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await sub.connect("sub")
        await sub.subscribe("t/#", 2)
        pub = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await pub.connect("pub")
        for qos in (0, 1, 2, 0):
            await pub.send(Publish("t/x", b"q%d" % qos, qos=qos, packet_id=qos or None))
            if qos:
                await pub.receive()  # PUBACK / PUBREC
            delivered = await sub.receive()
            assert delivered.payload == b"q%d" % qos
        await sub.close()
        await pub.close()
        with trio.fail_after(5):
            while running.broker.connections or writer_tasks():
                await trio.sleep(0.01)  # ok: bounded poll while real sockets close


async def test_over_tcp_no_connect_in_time_closes_the_connection(serve_config):
    config = serve_config("mqtt://127.0.0.1:0", limits=Limits(connect_timeout=0.2))
    async with open_broker(config) as running:
        silent = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port()))
        with trio.fail_after(5):
            assert await silent.receive_until_closed() == []


async def test_over_tcp_keep_alive_closes_a_silent_client(serve_config):
    async with open_broker(serve_config("mqtt://127.0.0.1:0")) as running:
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port()))
        await client.send(Connect("ka", keep_alive=1))
        assert await client.receive() == ConnAck()
        start = trio.current_time()
        assert await client.receive_until_closed() == []
        assert 1.4 <= trio.current_time() - start < 4  # one and a half keep-alives


async def test_over_tcp_a_backlog_beyond_what_the_socket_takes_arrives_whole_and_in_order(
    serve_config):
    async with open_broker(serve_config("mqtt://127.0.0.1:0")) as running:
        port = running.port()
        sub = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await sub.connect("sub")
        await sub.subscribe("t", 0)
        pub = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await pub.connect("pub")
        # Far more than the socket buffers hold while the subscriber reads nothing: the
        # direct sends take part of it, the writer task the rest, in order.
        count = 3000
        for first in range(0, count, 100):
            await pub.send(*(Publish("t", b"%06d" % i + b"x" * 1000)
                             for i in range(first, first + 100)))
        await pub.send(PingReq())
        assert await pub.receive() == PingResp()
        assert len(writer_tasks()) == 1  # blocked on the subscriber's full socket
        received = []
        with trio.fail_after(10):
            while len(received) < count:
                received.append(int((await sub.receive()).payload[:6]))
        assert received == list(range(count))
        await sub.send(PingReq())
        assert await sub.receive() == PingResp()
        await sub.close()
        await pub.close()


async def test_over_tcp_a_will_from_a_closing_connection_reaches_the_subscriber(serve_config):
    async with open_broker(serve_config("mqtt://127.0.0.1:0")) as running:
        port = running.port()
        sub = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await sub.connect("sub")
        await sub.subscribe("wills/#", 1)
        dying = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
        await dying.connect("dying", will=Will("wills/dying", b"gone", qos=1))
        await dying.close()  # no DISCONNECT: the will is published as the connection ends
        will = await sub.receive()
        assert (will.topic, will.payload) == ("wills/dying", b"gone")


async def test_over_tcp_a_refused_connect_gets_its_connack_before_the_close(serve_config):
    async with open_broker(serve_config("mqtt://127.0.0.1:0")) as running:
        client = RawClient(await trio.open_tcp_stream("127.0.0.1", running.port()))
        await client.send_raw(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00")  # level 7
        assert await client.receive_until_closed() == [ConnAck(return_code=0x01)]

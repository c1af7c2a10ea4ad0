"""The connection runner over a scripted handler: read deadlines, heart-beats, the
durability gate, hold-back and the end of a connection."""

import logging
import math
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from polybroker.adapters.runner import ConnectionRunner
from polybroker.stats import Stats

log = logging.getLogger("polybroker.test-runner")


class Durability:
    """Stands in for ``broker.durability``: records are durable when ``synced`` is set."""

    def __init__(self, confirms: bool = True) -> None:
        self.synced = trio.Event()
        self.waits = 0
        self.confirms = confirms

    async def wait_durable(self, timeout: float) -> bool:
        self.waits += 1
        with trio.move_on_after(timeout):
            await self.synced.wait()
            return self.confirms
        return False


def make_broker(durability: Durability | None = None) -> SimpleNamespace:
    limits = SimpleNamespace(connect_timeout=10.0, send_timeout=5.0,
                             max_outgoing_bytes=1000, max_block_time=1.0)
    return SimpleNamespace(
        limits=limits, durability=durability or Durability(), linger_deadline=math.inf,
        connection_opened=lambda handler: Stats().opening(handler, "test", "peer"),
        connection_closed=lambda handler: None,
    )


class FullBacklog:
    """A queue that stays full."""

    given_up = False

    def has_room(self) -> bool:
        return False

    def room(self) -> trio.Event:
        return trio.Event()

    def give_up_blocking(self) -> None:
        self.given_up = True


class EchoHandler:
    """Echoes every read; ``b"bye"`` ends the connection; ``b"sync"`` vouches for records."""

    name = "echo (test)"

    def __init__(self) -> None:
        self.out = bytearray()
        self.runner: ConnectionRunner | None = None
        self.timed_out = False
        self.ended = False
        self.interval = 0.0
        self.released: list = []

    @property
    def pending_bytes(self) -> int:
        return len(self.out)

    def data_to_send(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    async def receive(self, data: bytes) -> bool:
        if data == b"bye":
            self.out += b"goodbye"
            self.runner.linger = True
            return False
        if data == b"sync":
            self.runner.hold_durable()
        self.out += data
        return True

    def read_deadline(self, deadline: float) -> float:
        return trio.current_time() + 30

    def read_timed_out(self) -> None:
        self.timed_out = True

    def heartbeat_interval(self) -> float:
        return self.interval

    def send_heartbeat(self) -> None:
        self.out += b"\n"

    def release(self, held: list) -> None:
        self.released.extend(held)
        self.out += b"released"

    def sent(self) -> None:
        pass

    def end(self) -> None:
        self.ended = True


async def start(nursery, broker, handler):
    client, server = trio.testing.memory_stream_pair()
    runner = ConnectionRunner(server, broker, handler, log, "test")
    handler.runner = runner
    nursery.start_soon(runner.run)
    return client, runner


async def test_reads_are_handled_and_answered(nursery):
    handler = EchoHandler()
    client, _ = await start(nursery, make_broker(), handler)
    await client.send_all(b"ping")
    assert await client.receive_some() == b"ping"
    await client.send_all(b"bye")
    assert await client.receive_some() == b"goodbye"
    assert handler.ended
    await client.aclose()  # ends the lingering close


async def test_output_vouching_for_records_waits_until_they_are_durable(nursery):
    durability = Durability()
    handler = EchoHandler()
    client, _ = await start(nursery, make_broker(durability), handler)
    await client.send_all(b"plain")
    assert await client.receive_some() == b"plain"
    assert durability.waits == 0  # nothing vouched for records: no wait
    await client.send_all(b"sync")
    await trio.testing.wait_all_tasks_blocked()
    assert durability.waits == 1
    with trio.move_on_after(0.05) as early:
        await client.receive_some()
    assert early.cancelled_caught  # not before the records are on disk
    durability.synced.set()
    assert await client.receive_some() == b"sync"


async def test_storage_that_does_not_confirm_closes_the_connection(
        nursery, autojump_clock, caplog):
    handler = EchoHandler()
    client, _ = await start(nursery, make_broker(Durability(confirms=False)), handler)
    await client.send_all(b"sync")
    handler.runner.broker.durability.synced.set()
    assert await client.receive_some() == b""  # closed, never the unconfirmed answer
    assert "test client echo (test) disconnected: storage timeout" in caplog.text


async def test_heartbeats_fill_write_silence(nursery, autojump_clock):
    handler = EchoHandler()
    handler.interval = 2.0
    client, _ = await start(nursery, make_broker(), handler)
    started = trio.current_time()
    assert await client.receive_some() == b"\n"
    assert trio.current_time() - started == pytest.approx(2.0)


async def test_silence_past_the_read_deadline_ends_the_connection(nursery, autojump_clock):
    handler = EchoHandler()
    client, _ = await start(nursery, make_broker(), handler)
    started = trio.current_time()
    assert await client.receive_some() == b""  # closed at the connect timeout
    assert trio.current_time() - started == pytest.approx(10.0)
    assert handler.timed_out and handler.ended


async def test_a_held_back_client_is_not_read_until_released(nursery, autojump_clock):
    handler = EchoHandler()
    broker = make_broker()
    client, runner = await start(nursery, broker, handler)
    backlog = FullBacklog()
    runner.hold_back([backlog])
    assert runner.withhold("ack-1")
    await client.send_all(b"one")
    assert await client.receive_some() == b"one"
    # Held back: released after max_block_time, the withheld acknowledgement with it.
    assert await client.receive_some() == b"released"
    assert handler.released == ["ack-1"]
    assert backlog.given_up
    assert not runner.withhold("ack-2")


# -- the two write strategies, timers instead of tasks ----------------------------------------


def connection_tasks() -> list[str]:
    """The names of every task besides the test's own: readers, writers, the outbox."""
    found, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found.append(task.coro.__qualname__)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found


async def start_over_tcp(nursery, broker, handler):
    """A runner over a real loopback socket (the plain-TCP strategy: direct writes)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client = await trio.testing.open_stream_to_socket_listener(listeners[0])
    server = await listeners[0].accept()
    await listeners[0].aclose()
    runner = ConnectionRunner(server, broker, handler, log, "test")
    handler.runner = runner
    nursery.start_soon(runner.run)
    return client, runner


async def test_over_tcp_replies_are_written_directly_without_a_writer_task(nursery):
    handler = EchoHandler()
    client, _ = await start_over_tcp(nursery, make_broker(), handler)
    for word in (b"one", b"two", b"three"):
        await client.send_all(word)
        assert await client.receive_some() == word
        await trio.testing.wait_all_tasks_blocked()
        assert "ConnectionRunner._write_loop" not in connection_tasks()
    assert "_Outbox.run" in connection_tasks()  # the one task that writes for every socket
    await client.aclose()


async def test_over_tcp_what_the_socket_does_not_take_is_sent_by_a_writer_task(nursery):
    handler = EchoHandler()
    client, runner = await start_over_tcp(nursery, make_broker(), handler)
    runner.limits.max_outgoing_bytes = 1 << 30  # the test reads late on purpose
    big = b"x" * (8 << 20)  # more than any socket buffer takes at once
    handler.out += big
    runner.wake()
    await trio.testing.wait_all_tasks_blocked()
    assert "ConnectionRunner._write_loop" in connection_tasks()  # blocked on the rest
    received = bytearray()
    while len(received) < len(big):
        received += await client.receive_some()
    assert bytes(received) == big
    await trio.testing.wait_all_tasks_blocked()
    assert "ConnectionRunner._write_loop" not in connection_tasks()  # gone once drained
    await client.aclose()


async def test_durable_output_over_tcp_waits_for_the_disk_in_the_writer(nursery):
    durability = Durability()
    durability.pending = lambda: not durability.synced.is_set()
    handler = EchoHandler()
    client, _ = await start_over_tcp(nursery, make_broker(durability), handler)
    await client.send_all(b"sync")
    await trio.testing.wait_all_tasks_blocked()
    assert durability.waits == 1
    with trio.move_on_after(0.05) as early:
        await client.receive_some()
    assert early.cancelled_caught  # not before the records are on disk
    durability.synced.set()
    assert await client.receive_some() == b"sync"
    await client.aclose()


async def test_heartbeats_come_from_a_timer_not_a_waiting_task(nursery, autojump_clock):
    handler = EchoHandler()
    handler.interval = 2.0
    client, _ = await start(nursery, make_broker(), handler)
    await trio.testing.wait_all_tasks_blocked()
    assert "ConnectionRunner._write_loop" not in connection_tasks()  # idle: the reader only
    started = trio.current_time()
    for beat in range(1, 4):
        assert await client.receive_some() == b"\n"
        assert trio.current_time() - started == pytest.approx(2.0 * beat)


async def test_writes_postpone_the_next_heartbeat(nursery, autojump_clock):
    handler = EchoHandler()
    handler.interval = 2.0
    client, _ = await start(nursery, make_broker(), handler)
    await trio.sleep(1.5)
    await client.send_all(b"data")
    assert await client.receive_some() == b"data"
    sent = trio.current_time()
    assert await client.receive_some() == b"\n"
    assert trio.current_time() - sent == pytest.approx(2.0)


class SlowLoginHandler(EchoHandler):
    """Waits ``delay`` seconds (a login check) when it reads ``login``."""

    delay = 30.0

    async def receive(self, data: bytes) -> bool:
        if data == b"login":
            self.runner.lift_deadline()
            await trio.sleep(self.delay)
        return await super().receive(data)


async def test_a_login_wait_is_not_cut_by_the_read_deadline(nursery, autojump_clock):
    handler = SlowLoginHandler()  # 30 s, past the 10 s connect timeout
    client, _ = await start(nursery, make_broker(), handler)
    await client.send_all(b"login")
    assert await client.receive_some() == b"login"
    assert not handler.timed_out


async def test_stop_reading_by_ends_the_connection_at_that_time(nursery, autojump_clock):
    handler = EchoHandler()
    client, runner = await start(nursery, make_broker(), handler)
    await trio.testing.wait_all_tasks_blocked()
    started = trio.current_time()
    runner.stop_reading_by(started + 3.0)
    assert await client.receive_some() == b""
    assert trio.current_time() - started == pytest.approx(3.0)
    assert handler.ended and not handler.timed_out

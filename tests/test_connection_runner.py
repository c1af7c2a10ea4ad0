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
    runner = ConnectionRunner(server, broker, handler, log)
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
    assert "storage did not confirm in time" in caplog.text


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

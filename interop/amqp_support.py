"""Shared pieces of the AMQP interop tests: a broker process with an AMQP listener, pika
connection parameters, bounded waits on pika's I/O loop, and raw 0-9-1 frames for the
tests that must see the bytes (heart-beats, a wrong protocol header)."""

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pika

from .brokerproc import BrokerProcess
from .clients import WAIT

AMQP_LISTEN = "amqp://127.0.0.1:0"
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = b"\xce"


def start_broker(data_dir: Path, *extra: str, listen: tuple[str, ...] = ()) -> BrokerProcess:
    """``polybroker serve`` with an AMQP listener (first) and any other ``listen`` URLs."""
    return BrokerProcess(data_dir, *extra, listen=(AMQP_LISTEN, *listen))


def broker_url(port: int) -> str:
    """The URL kombu and Celery take (the default vhost, guest login)."""
    return f"amqp://guest:guest@127.0.0.1:{port}//"


def pika_params(port: int, **options: object) -> pika.ConnectionParameters:
    options.setdefault("connection_attempts", 1)
    options.setdefault("blocked_connection_timeout", WAIT)
    return pika.ConnectionParameters(
        host="127.0.0.1", port=port, credentials=pika.PlainCredentials("guest", "guest"),
        **options,
    )


def pump(connection: pika.BlockingConnection, done: Callable[[], object],
         timeout: float = WAIT) -> None:
    """Run pika's I/O loop (callbacks included) until ``done()`` is true, or fail."""
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"condition not met within {timeout}s"
        connection.process_data_events(time_limit=min(remaining, 0.1))


# -- raw frames ---------------------------------------------------------------------------


def shortstr(value: str) -> bytes:
    data = value.encode()
    return bytes([len(data)]) + data


def longstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def method_frame(channel: int, class_id: int, method_id: int, arguments: bytes) -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + arguments
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + FRAME_END


def heartbeat_frame() -> bytes:
    return struct.pack(">BHI", 8, 0, 0) + FRAME_END


def read_frame(sock: socket.socket) -> tuple[int, int, bytes] | None:
    """(type, channel, payload) of the next frame; None when the broker closed."""
    head = _read_exactly(sock, 7)
    if head is None:
        return None
    kind, channel, size = struct.unpack(">BHI", head)
    rest = _read_exactly(sock, size + 1)
    assert rest is not None and rest[-1:] == FRAME_END, "frame cut short or without frame-end"
    return kind, channel, rest[:-1]


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:  # a dropped connection may end with a reset
            return None
        if not chunk:
            return None
        data += chunk
    return data


def method_id(payload: bytes) -> tuple[int, int]:
    return struct.unpack(">HH", payload[:4])


def raw_open(port: int, heartbeat: int) -> socket.socket:
    """A raw connection through start, tune (with ``heartbeat``) and open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(PROTOCOL_HEADER)
    frame = read_frame(sock)
    assert frame is not None and method_id(frame[2]) == (10, 10), frame  # connection.start
    start_ok = (struct.pack(">I", 0) + shortstr("PLAIN") + longstr(b"\0guest\0guest")
                + shortstr("en_US"))
    sock.sendall(method_frame(0, 10, 11, start_ok))
    frame = read_frame(sock)
    assert frame is not None and method_id(frame[2]) == (10, 30), frame  # connection.tune
    channel_max, frame_max, _ = struct.unpack(">HIH", frame[2][4:12])
    sock.sendall(method_frame(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, heartbeat)))
    sock.sendall(method_frame(0, 10, 40, shortstr("/") + shortstr("") + b"\0"))
    frame = read_frame(sock)
    assert frame is not None and method_id(frame[2]) == (10, 41), frame  # connection.open-ok
    return sock

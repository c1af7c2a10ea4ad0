"""Record what is published on a topic filter: a small MQTT subscriber on its own thread,
built on the broker's own codec, so a test needs no client library to check deliveries."""

import contextlib
import itertools
import socket
import threading
import time
from dataclasses import dataclass

import trio

from ..protocols.mqtt import (
    ConnAck,
    Connect,
    Packet,
    PacketParser,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)

TIMEOUT = 10.0  # seconds: connecting and subscribing, and each wait by default
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Captured:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Capture:
    """Subscribed to ``topic_filter`` (QoS 2, so every QoS arrives as published) once
    constructed; ``messages`` grows as messages arrive, ``wait(n)`` blocks until there
    are ``n``. Retained messages matching the filter arrive first, with ``retain`` set."""

    def __init__(self, host: str, port: int, topic_filter: str = "#") -> None:
        self.topic_filter = topic_filter
        self.messages: list[Captured] = []
        self._changed = threading.Condition()
        self._closed = False
        self._sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self._parser = PacketParser()
        # Parsed, not yet handled (a retained PUBLISH after SUBACK).
        self._pending: list[Packet] = []
        try:
            self._handshake(f"polybroker-capture-{next(_ids)}")
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"capture {topic_filter}")
        self._reader.start()

    def _handshake(self, client_id: str) -> None:
        self._sock.sendall(encode(Connect(client_id, keep_alive=0)))
        connack = self._next_packet()
        if not isinstance(connack, ConnAck) or connack.return_code != 0:
            raise ConnectionError(f"capture: the broker refused the connection: {connack}")
        self._sock.sendall(encode(Subscribe(1, (Subscription(self.topic_filter, qos=2),))))
        suback = self._next_packet()
        if not isinstance(suback, SubAck) or suback.return_codes[0] >= 0x80:
            raise ConnectionError(f"capture: subscription to {self.topic_filter!r} "
                                  f"refused: {suback}")

    def _next_packet(self) -> object:
        while not self._pending:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("capture: the broker closed the connection")
            self._pending = self._parser.feed(data)
        return self._pending.pop(0)

    def _read(self) -> None:
        packets, self._pending = self._pending, []
        try:
            while True:
                for packet in packets:
                    self._handle(packet)
                data = self._sock.recv(65536)
                if not data:
                    break
                packets = self._parser.feed(data)
        except (OSError, ValueError):
            pass  # closed by close(), or the broker went away
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _handle(self, packet: object) -> None:
        if isinstance(packet, Publish):
            if packet.packet_id is not None:  # QoS 1 or 2
                ack = PubAck(packet.packet_id) if packet.qos == 1 else PubRec(packet.packet_id)
                self._sock.sendall(encode(ack))
            with self._changed:
                self.messages.append(
                    Captured(packet.topic, packet.payload, packet.qos, packet.retain))
                self._changed.notify_all()
        elif isinstance(packet, PubRel):
            self._sock.sendall(encode(PubComp(packet.packet_id)))

    def wait(self, count: int = 1, timeout: float = TIMEOUT) -> list[Captured]:
        """The messages once there are at least ``count``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise TimeoutError(
                        f"capture {self.topic_filter!r}: {len(self.messages)} of {count} "
                        f"messages after {timeout:g}s: {self.messages}")
                self._changed.wait(remaining)
            return list(self.messages)

    async def wait_async(self, count: int = 1, timeout: float = TIMEOUT) -> list[Captured]:
        """``wait`` for trio tests: the waiting happens on a worker thread."""
        return await trio.to_thread.run_sync(self.wait, count, timeout)

    def payloads(self) -> list[bytes]:
        with self._changed:
            return [message.payload for message in self.messages]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(bytes((0xE0, 0)))  # DISCONNECT
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(TIMEOUT)

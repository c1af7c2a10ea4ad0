"""Packet tracing for ``log_level = "debug"``: one log line per packet, frame or method,
in each direction, as Mosquitto's ``-v`` shows.

A traced connection's stream is wrapped in ``TracedStream``, which reads the packet
boundaries off the bytes going by: the MQTT fixed header (and a PUBLISH's topic), the
STOMP command line and ``destination`` header, the AMQP frame header (and the method's
name, with the exchange and routing key of basic.publish and basic.deliver). Only those
few bytes are buffered; bodies are counted and skipped. The adapters never know: they
get a stream like any other (and so take their general stream path, not the direct
socket one). A trace that cannot follow a stream (garbage from a client) says so once
and stops; the adapter's own parser decides what the bytes mean.
"""

import logging
import struct
from collections.abc import Callable
from typing import NoReturn

import trio

from ..protocols.amqp.methods import METHODS

log = logging.getLogger("polybroker.packets")

HEAD_LIMIT = 64 * 1024  # bytes buffered to find a STOMP frame's headers
MQTT_NAMES = ("reserved", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
              "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",
              "DISCONNECT", "AUTH")
_MQTT_WITH_ID = frozenset((4, 5, 6, 7, 8, 9, 10, 11))  # packet id first in the variable header
_AMQP_FRAME_NAMES = {2: "content header", 3: "content body", 8: "heartbeat"}


class Untraceable(Exception):
    """The bytes do not follow the protocol; the trace stops."""


class _Tracer:
    """Splits one direction of a connection into packets and describes each."""

    def __init__(self, describe: Callable[[bytearray], tuple[int, str] | None]) -> None:
        self._describe = describe
        self._buffer = bytearray()
        self._skip = 0  # bytes of the current packet still to pass unseen
        self.broken = False

    def feed(self, data: bytes | bytearray) -> list[str]:
        if self.broken:
            return []
        view = memoryview(data)
        if self._skip:
            taken = min(self._skip, len(view))
            self._skip -= taken
            view = view[taken:]
        self._buffer += view
        lines = []
        try:
            while self._buffer:
                found = self._describe(self._buffer)
                if found is None:
                    break
                size, line = found
                lines.append(line)
                taken = min(size, len(self._buffer))
                del self._buffer[:taken]
                self._skip = size - taken
                if self._skip:
                    break
        except Untraceable as exc:
            self.broken = True
            self._buffer.clear()
            lines.append(f"(trace stops: {exc})")
        return lines


# -- MQTT -----------------------------------------------------------------------------------

def describe_mqtt(buf: bytearray) -> tuple[int, str] | None:
    """(packet size, description) once enough of the packet's start is buffered."""
    length, multiplier, position = 0, 1, 1
    while True:
        if position >= len(buf):
            return None
        byte = buf[position]
        length += (byte & 0x7F) * multiplier
        position += 1
        if not byte & 0x80:
            break
        multiplier *= 128
        if position > 4:
            raise Untraceable("malformed remaining length")
    kind, flags = buf[0] >> 4, buf[0] & 0x0F
    if kind == 0:
        raise Untraceable("packet type 0")
    name = MQTT_NAMES[kind]
    size = position + length
    if kind == 3:  # PUBLISH: the flags, the topic and the packet id
        qos = (flags >> 1) & 3
        need = position + 2
        if len(buf) < need:
            return None
        topic_length = int.from_bytes(buf[position:need], "big")
        end = need + topic_length
        if len(buf) < end + (2 if qos else 0):
            if end - position > length:
                raise Untraceable("PUBLISH topic beyond the packet")
            return None
        topic = bytes(buf[need:end]).decode("utf-8", "replace")
        packet_id = int.from_bytes(buf[end:end + 2], "big") if qos else 0
        return size, (f"PUBLISH (d{flags >> 3}, q{qos}, r{flags & 1}, m{packet_id}, "
                      f"{topic!r}, {length} bytes)")
    if kind in _MQTT_WITH_ID and length >= 2:
        if len(buf) < position + 2:
            return None
        return size, f"{name} (m{int.from_bytes(buf[position:position + 2], 'big')})"
    return size, name


# -- STOMP ----------------------------------------------------------------------------------

def describe_stomp(buf: bytearray) -> tuple[int, str] | None:
    if buf[0] == 0x0A:
        return 1, "heart-beat"
    if buf[:2] == b"\r\n":
        return 2, "heart-beat"
    if buf[0] == 0x0D:
        return None if len(buf) < 2 else _raise("a CR without LF")
    end = buf.find(b"\n\n")
    crlf = buf.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        head_end, separator = crlf, 4
    elif end >= 0:
        head_end, separator = end, 2
    else:
        if len(buf) > HEAD_LIMIT:
            raise Untraceable("no end of headers")
        return None
    lines = bytes(buf[:head_end]).decode("utf-8", "replace").replace("\r", "").split("\n")
    headers = dict(reversed([line.partition(":")[::2] for line in lines[1:]]))
    body_start = head_end + separator
    if "content-length" in headers:
        try:
            body_length = int(headers["content-length"])
        except ValueError:
            raise Untraceable("bad content-length") from None
        size = body_start + body_length + 1
    else:
        nul = buf.find(b"\0", body_start)
        if nul < 0:
            # The body's end is its NUL: keep the bytes until it comes (a body without
            # content-length is text, bounded like the headers).
            if len(buf) > HEAD_LIMIT:
                raise Untraceable("no end of frame")
            return None
        body_length, size = nul - body_start, nul + 1
    words = [lines[0]]
    if "destination" in headers:
        words.append(repr(headers["destination"]))
    if "message" in headers:
        words.append(repr(headers["message"]))
    return size, f"{' '.join(words)} ({body_length} bytes)"


def _raise(reason: str) -> NoReturn:
    raise Untraceable(reason)


# -- AMQP 0-9-1 -----------------------------------------------------------------------------

_FRAME_HEAD = struct.Struct(">BHI")


def describe_amqp(buf: bytearray) -> tuple[int, str] | None:
    if buf[:1] == b"A":
        return (None if len(buf) < 8 else
                (8, f"protocol header {bytes(buf[:8])!r}"))
    if len(buf) < 7:
        return None
    kind, channel, payload = _FRAME_HEAD.unpack_from(buf)
    size = 7 + payload + 1
    if kind != 1:
        name = _AMQP_FRAME_NAMES.get(kind)
        if name is None:
            raise Untraceable(f"frame type {kind}")
        return size, f"{name} (channel {channel}, {payload} bytes)"
    if len(buf) < 11:
        return None
    class_id, method_id = struct.unpack_from(">HH", buf, 7)
    method = METHODS.get(class_id << 16 | method_id)
    name = method.NAME if method is not None else f"method {class_id}.{method_id}"
    if name in ("basic.publish", "basic.deliver"):
        want = min(size - 1, 7 + 4 + 512)
        if len(buf) < want:
            return None
        detail = _routing(bytes(buf[11:want]), name == "basic.deliver")
        if detail is not None:
            return size, f"{name} (channel {channel}, {detail})"
    return size, f"{name} (channel {channel})"


def _routing(args: bytes, deliver: bool) -> str | None:
    """Exchange and routing key from basic.publish / basic.deliver arguments."""
    try:
        # deliver: consumer tag, delivery tag, redelivered; publish: a reserved short
        position = 1 + args[0] + 8 + 1 if deliver else 2
        exchange_length = args[position]
        exchange = args[position + 1:position + 1 + exchange_length]
        position += 1 + exchange_length
        key = args[position + 1:position + 1 + args[position]]
    except IndexError:
        return None
    return (f"exchange {exchange.decode('utf-8', 'replace')!r}, "
            f"routing key {key.decode('utf-8', 'replace')!r}")


DESCRIBERS = {"mqtt": describe_mqtt, "stomp": describe_stomp, "amqp": describe_amqp}


# -- the stream -----------------------------------------------------------------------------

class TracedStream(trio.abc.Stream):
    """``inner``, with each packet that passes logged at debug level."""

    def __init__(self, inner: trio.abc.Stream, protocol: str, peer: str) -> None:
        self.inner = inner
        self._name = f"{protocol} {peer}"
        self._received = _Tracer(DESCRIBERS[protocol])
        self._sent = _Tracer(DESCRIBERS[protocol])

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        for line in self._received.feed(data):
            log.debug("%s: received %s", self._name, line)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        for line in self._sent.feed(bytes(data)):
            log.debug("%s: sent %s", self._name, line)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


class TracedHalfCloseableStream(TracedStream, trio.abc.HalfCloseableStream):
    inner: trio.abc.HalfCloseableStream

    async def send_eof(self) -> None:
        await self.inner.send_eof()


def traced(stream: trio.abc.Stream, protocol: str, peer: str) -> trio.abc.Stream:
    """``stream`` traced when packet logging is on (and the protocol is traceable)."""
    if protocol not in DESCRIBERS or not log.isEnabledFor(logging.DEBUG):
        return stream
    if isinstance(stream, trio.abc.HalfCloseableStream):
        return TracedHalfCloseableStream(stream, protocol, peer)
    return TracedStream(stream, protocol, peer)

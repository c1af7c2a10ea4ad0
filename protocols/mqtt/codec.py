"""Sans-IO MQTT 3.1 / 3.1.1 / 5.0 codec: bytes to packets and packets to bytes.

Parsing enforces the well-formedness rules of the spec. Statement ids in the
comments and error messages of the 3.1/3.1.1 paths refer to MQTT 3.1.1; the 5.0
paths (``_PARSERS5``, ``_ENCODERS5``) cite MQTT 5.0 (OASIS, 7 March 2019), and
messages shared by both give the 5.0 id after "5.0:". Each packet type has its
own parse function ``(flags, body, protocol_level) -> Packet``, one table per
packet format (3.1 and 3.1.1 share one, 5.0 has its own).

MQTT 5.0 errors: what cannot be parsed (truncation, bad lengths, reserved bits,
ill-formed UTF-8, a property identifier not valid for the packet, section 2.2.2.2)
is MalformedPacket (0x81); a parsable value the protocol forbids (a repeated
property, Receive Maximum 0, a reason code the packet may not carry, ...) is
ProtocolError (0x82), following the definitions in section 1.2.

Maximum packet size: ``PacketParser.max_packet_size`` bounds the Remaining Length
at 3.1 / 3.1.1 (which have no notion of packet size), and the whole packet (fixed
header, Remaining Length bytes and body, section 2.1.4) at 5.0, as the Maximum
Packet Size property defines it (3.1.2.11.4, 3.2.2.3.6). Either way PacketTooLarge
(0x95) is raised from the fixed header, before the body is buffered.

Where: the parsing of each packet type is in ``decoding`` (3.1 / 3.1.1) and
``decoding5`` (5.0) over the field reader of ``reader``; encoding is in ``encoding``.
This module frames the byte stream (``PacketParser``) and exports both directions.
"""

from .decoding import _PARSERS
from .decoding5 import _PARSERS5
from .encoding import _SUPPORTED_LEVELS
from .encoding import MAX_REMAINING_LENGTH as MAX_REMAINING_LENGTH
from .encoding import _encode_length as _encode_length  # re-exported for the tests
from .encoding import encode as encode
from .encoding import encode_ack as encode_ack
from .encoding import encode_publish as encode_publish
from .encoding import encode_publish5 as encode_publish5
from .errors import MalformedPacket, MQTTError, PacketTooLarge, ProtocolError
from .packets import MQTT_3_1_1, MQTT_5, Packet

# The largest packet the encoding allows: a 1-byte header, 4 length bytes and the body.
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5

_CONNECT_TYPE = 1
_DISCONNECT_TYPE = 14


def _long_length(buf: bytearray, i: int, size: int) -> tuple[int, int]:
    """Decode a multi-byte remaining length at ``buf[i]``: (length, body start).

    The start is -1 while the length's bytes have not all arrived.
    """
    length = 0
    shift = 0
    while i < size:
        byte = buf[i]
        i += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length, i
        shift += 7
        if shift == 28:
            raise MalformedPacket("remaining length longer than 4 bytes (section 2.2.3)")
    return 0, -1


class PacketParser:
    """Incremental parser: feed it bytes as they arrive, get whole packets back.

    Any split of a byte stream yields the same packets. After a DISCONNECT the
    sender is gone, so later bytes are ignored; after an error the stream is
    dead and every later ``feed`` raises ProtocolError. A bad packet after good
    ones in the same ``feed`` does not take them down with it: they are returned,
    and the error (``pending_error``) is raised by the next ``feed``, so that the
    packets before it are answered first [MQTT-3.1.4-5].

    ``max_packet_size`` bounds the Remaining Length at protocol levels 3 and 4
    and the whole packet (fixed header included, section 2.1.4) at level 5; the
    default admits every packet the encoding can express at any level.
    """

    __slots__ = ("_buffer", "_closed", "_failed", "_level", "max_packet_size", "pending_error")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.max_packet_size = max_packet_size
        self._level = MQTT_3_1_1
        self._buffer = bytearray()
        self._closed = False
        self._failed = False
        self.pending_error: MQTTError | None = None  # raised by the next feed

    @property
    def protocol_level(self) -> int:
        """Level used for version-specific packets; a parsed CONNECT sets it too."""
        return self._level

    @protocol_level.setter
    def protocol_level(self, level: int) -> None:
        if level not in _SUPPORTED_LEVELS:
            raise ValueError(f"protocol level {level} is not supported")
        self._level = level

    def feed(self, data: bytes) -> list[Packet]:
        """Add ``data`` to the stream and return the packets it completes."""
        if self.pending_error is not None:
            error, self.pending_error = self.pending_error, None
            raise error
        if self._failed:
            raise ProtocolError("the byte stream already failed to parse")
        if self._closed:
            return []
        buf = self._buffer
        buf += data
        parsed: list[Packet] = []
        try:
            packets, consumed = self._parse_all(buf, parsed)
        except MQTTError as exc:
            self._failed = True
            # A traceback may still hold a view of the old buffer: replace, don't resize.
            self._buffer = bytearray()
            if not parsed:
                raise
            self.pending_error = exc.with_traceback(None)
            return parsed
        if self._closed:
            buf.clear()
        else:
            del buf[:consumed]
        return packets

    def _parse_all(self, buf: bytearray, packets: list[Packet]) -> tuple[list[Packet], int]:
        """The whole packets in ``buf`` (appended to ``packets``, which keeps those
        before a bad one when this raises) and the bytes they took."""
        size = len(buf)
        pos = 0
        level = self._level
        v5 = level == MQTT_5
        parsers = _PARSERS5 if v5 else _PARSERS
        limit = self.max_packet_size
        with memoryview(buf) as view:
            while size - pos >= 2:
                first = buf[pos]
                length = buf[pos + 1]
                start = pos + 2
                if length & 0x80:
                    length, start = _long_length(buf, pos + 1, size)
                    if start < 0:
                        break  # remaining length still incomplete
                    if v5 and not buf[start - 1]:
                        raise MalformedPacket(
                            "remaining length not minimally encoded [MQTT-1.5.5-1]"
                        )
                if v5:
                    # 5.0: the packet size is the whole packet (2.1.4, 3.2.2.3.6).
                    if start - pos + length > limit:
                        raise PacketTooLarge(
                            f"packet of {start - pos + length} bytes exceeds the "
                            f"Maximum Packet Size {limit}"
                        )
                elif length > limit:
                    # Refuse before buffering the body.
                    raise PacketTooLarge(f"packet of {length} bytes exceeds the limit {limit}")
                end = start + length
                if end > size:
                    break
                ptype = first >> 4
                packet = parsers[ptype](first & 0x0F, view[start:end], level)
                packets.append(packet)
                pos = end
                if ptype == _CONNECT_TYPE:
                    # Later packets in this same chunk must parse at the new level.
                    level = self._level = packet.protocol_level  # type: ignore[union-attr]
                    v5 = level == MQTT_5
                    parsers = _PARSERS5 if v5 else _PARSERS
                elif ptype == _DISCONNECT_TYPE:
                    self._closed = True
                    break
        return packets, pos

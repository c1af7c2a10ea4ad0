"""Reading the fields of one MQTT packet's body (``codec``): strings, integers,
properties, the check of the fixed header's flags, each error naming the packet."""

from collections.abc import Callable
from typing import Any

from .errors import MalformedPacket
from .packets import MQTT_3_1, MQTT_5, Packet
from .properties import parse_properties, read_variable_byte_integer

ParseFunction = Callable[[int, memoryview, int], Packet]


# --- parsing helpers --------------------------------------------------------


def _utf8(data: memoryview) -> str:
    try:
        text = str(data, "utf-8")  # strict: rejects surrogates; keeps U+FEFF
    except UnicodeDecodeError:
        raise MalformedPacket(
            "string is not well-formed UTF-8 [MQTT-1.5.3-1; 5.0: MQTT-1.5.4-1]"
        ) from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000 [MQTT-1.5.3-2; 5.0: MQTT-1.5.4-2]")
    return text


def _check_flags(name: str, flags: int, required: int, level: int) -> None:
    if flags == required:
        return
    # MQTT 3.1 set DUP on resent PUBREL/SUBSCRIBE/UNSUBSCRIBE; 3.1.1 reserved it.
    if level == MQTT_3_1 and required == 0b0010 and flags == 0b1010:
        return
    ids = "MQTT-2.1.3-1" if level == MQTT_5 else "MQTT-2.2.2-1, MQTT-2.2.2-2"
    raise MalformedPacket(f"{name}: reserved fixed header flags {flags:#06b} [{ids}]")


class _Reader:
    """Bounds-checked cursor over one packet body (for the less hot packets)."""

    __slots__ = ("data", "name", "pos")

    def __init__(self, data: memoryview, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedPacket(f"{self.name}: packet ends inside a field")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        chunk = self.take(2)
        return (chunk[0] << 8) | chunk[1]

    def binary(self) -> bytes:
        return bytes(self.take(self.u16()))

    def string(self) -> str:
        return _utf8(self.take(self.u16()))

    def packet_id(self) -> int:
        packet_id = self.u16()
        if not packet_id:
            raise MalformedPacket(
                f"{self.name}: packet identifier 0 [MQTT-2.3.1-1; 5.0: MQTT-2.2.1-3]"
            )
        return packet_id

    def properties(self, kind: int) -> dict[int, Any]:
        """Property Length and the properties (MQTT 5.0, section 2.2.2)."""
        if self.pos >= len(self.data):
            raise MalformedPacket(f"{self.name}: no Property Length [MQTT-2.2.2-1]")
        length, start = read_variable_byte_integer(self.data, self.pos, self.name)
        end = start + length
        if end > len(self.data):
            raise MalformedPacket(f"{self.name}: properties run past the end of the packet")
        self.pos = end
        return parse_properties(self.data[start:end], kind) if length else {}

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def finish(self) -> None:
        if self.pos != len(self.data):
            extra = len(self.data) - self.pos
            raise MalformedPacket(f"{self.name}: {extra} bytes beyond the last field")

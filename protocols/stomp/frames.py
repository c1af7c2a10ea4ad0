"""STOMP frames and events as frozen dataclasses.

Section names in comments and error messages refer to the STOMP 1.2 specification
(https://stomp.github.io/stomp-specification-1.2.html); 1.0 and 1.1 differences are
named where they matter. A frame is validated where it is parsed (codec, connection)
and trusted once built.
"""

from dataclasses import dataclass
from typing import overload

V1_0 = "1.0"
V1_1 = "1.1"
V1_2 = "1.2"
SUPPORTED_VERSIONS = (V1_0, V1_1, V1_2)  # lowest first

# "Client Frames" and "Server Frames". STOMP (1.1+) is CONNECT under another name.
CLIENT_COMMANDS = frozenset(
    (
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    )
)
SERVER_COMMANDS = frozenset(("CONNECTED", "MESSAGE", "RECEIPT", "ERROR"))
ALL_COMMANDS = CLIENT_COMMANDS | SERVER_COMMANDS

# "Value Encoding": these frames carry their headers unescaped (1.0 compatibility).
UNESCAPED_COMMANDS = frozenset(("CONNECT", "STOMP", "CONNECTED"))

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame: command, headers in wire order (repeats kept), raw body."""

    command: str
    headers: Headers = ()
    body: bytes = b""

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the FIRST header called ``name`` ("Repeated Header Entries")."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class HeartBeat:
    """A bare EOL received between frames ("Heart-beating")."""


HEART_BEAT = HeartBeat()

Event = Frame | HeartBeat

"""The interface an enhanced-authentication method implements (MQTT 5.0 section 4.12).

The adapter owns the packets (CONNECT, AUTH, CONNACK); a method only turns the
client's authentication data into the next step.
"""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AuthStep:
    """What to answer: ``done`` with ``ok`` (CONNACK), or not done (AUTH 0x18) with ``data``."""

    done: bool
    ok: bool = False
    data: bytes | None = None
    username: str | None = None  # who authenticated, once ok


class AuthExchange(Protocol):
    """One client's run through a method; ``step`` gets each piece of client data."""

    def step(self, data: bytes | None) -> AuthStep: ...


class Authenticator(Protocol):
    method: str  # the Authentication Method name, e.g. "SCRAM-SHA-256"

    def start(self) -> AuthExchange: ...

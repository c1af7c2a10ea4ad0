"""What the AMQP frame parser returns: one frozen dataclass per meaning."""

from dataclasses import dataclass, field

from .methods import Method


@dataclass(frozen=True, slots=True)
class ProtocolHeader:
    """The client's ``AMQP 0 0 9 1`` header arrived: answer with connection.start."""


@dataclass(frozen=True, slots=True)
class MethodFrame:
    """A method without content, on ``channel``."""

    channel: int
    method: Method


@dataclass(frozen=True, slots=True)
class Content:
    """A content-bearing method (basic.publish, .deliver, .get-ok, .return) with its content.

    ``properties`` are the raw property flags and list of the content header, kept for
    pass-through (see ``properties.decode_properties``); ``len(body) == body_size``.
    """

    channel: int
    method: Method
    body_size: int
    properties: bytes
    body: bytes = field(repr=False)  # may be megabytes: keep it out of logs


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A heartbeat frame (channel 0)."""


PROTOCOL_HEADER_EVENT = ProtocolHeader()
HEARTBEAT = Heartbeat()

Event = ProtocolHeader | MethodFrame | Content | Heartbeat

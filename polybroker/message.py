"""The one normalized message type that every protocol adapter produces and consumes."""

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Death:
    """One entry of a dead-lettered message's history (AMQP renders it as ``x-death``):
    the message left ``queue`` for ``reason`` (``rejected``, ``expired``, ``maxlen``) that
    many ``count`` times; ``exchange`` and ``routing_keys`` are where it had been published
    to, ``time`` is the wall-clock time (seconds) of the first death."""

    queue: str
    reason: str
    exchange: str
    routing_keys: tuple[str, ...]
    count: int = 1
    time: float = 0.0


@dataclass(slots=True)
class AmqpPart:
    """What only a message routed through an AMQP exchange has: one object, so that
    messages of the other protocols carry a single None for all of it.

    Never changed after it is built, as its Message (not frozen for the same reason: it
    is built per AMQP publish, and a frozen one costs three times as much)."""

    exchange: str  # where it was published (``exchanges.publish``)
    routing_key: str  # the publish's routing key
    properties: bytes | None = None  # raw content-header property bytes, passed through
    headers: Mapping[str, object] | None = None  # the parsed ``headers`` table (headers exchanges)
    persistent: bool = False  # delivery_mode 2: stored when it enters a durable queue
    deaths: tuple[Death, ...] = ()  # dead-letter history, most recent first


@dataclass(slots=True, eq=False)
class Message:
    """An application message, normalized once at the edge where it entered the broker.

    Never changed after it is built: every receiver shares the one object, and a
    different one is a copy (``dataclasses.replace``, with a fresh ``wire_cache``). (Not
    a frozen dataclass only because building a frozen one costs four times as much, and
    one is built per published message; the tests guard it instead.)

    ``topic`` is in canonical MQTT form ("/"-separated levels). Protocol-specific
    extras ride in ``headers``. ``wire_cache`` holds encodings of this message per
    wire form, so a fan-out encodes once per form, not once per receiver.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    expiry: float | None = None  # deadline on the broker's clock (MQTT 5.0 / AMQP / STOMP)
    payload_format: int | None = None  # 1: the payload is UTF-8 text (MQTT 5.0)
    content_type: str | None = None
    correlation_data: bytes | None = None
    response_topic: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # MQTT 5.0 user properties, in order
    origin_protocol: str = ""
    origin_client: str | None = None
    amqp: AmqpPart | None = None  # set once it went through an AMQP exchange
    # Any: each wire form's encoder owns its keys and the type of what it keeps under
    # them (bytes, header tuples); the cache itself knows none of them.
    wire_cache: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

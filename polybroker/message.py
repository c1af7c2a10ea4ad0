"""The one normalized message type that every protocol adapter produces and consumes."""

from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Message:
    """An application message, normalized once at the edge where it entered the broker.

    Never changed after it is built: every receiver shares the one object. (Not a
    frozen dataclass only because building a frozen one costs four times as much, and
    one is built per published message.)

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
    wire_cache: dict = field(default_factory=dict, compare=False, repr=False)

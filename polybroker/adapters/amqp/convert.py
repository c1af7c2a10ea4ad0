"""AMQP contents and the core's Message, both ways.

- A basic.publish becomes one Message that keeps the raw property bytes
  (``Message.amqp.properties``) for AMQP receivers, so that every property and header type
  reaches them unchanged. For the other protocols it also carries what they can read:
  ``content_type``, the string-valued headers (MQTT 5.0 user properties, STOMP
  headers), ``correlation_id`` as correlation data, ``delivery_mode`` 2 as QoS 1
  (persistent) and ``expiration`` (milliseconds) as the expiry deadline.
- A message that entered over MQTT or STOMP reaches an AMQP consumer with properties
  built from its fields, once per message: ``content_type``, ``headers`` (its user
  properties / headers), ``delivery_mode`` 2 for QoS 1 and 2 (else 1) and
  ``correlation_id`` when its correlation data is text.
- A dead-lettered message carries RabbitMQ's ``x-death`` header.
"""

from datetime import UTC, datetime

from ...message import AmqpPart, Death, Message
from ...protocols.amqp import BasicProperties, decode_properties, encode_properties
from ...refusals import PreconditionFailed

PERSISTENT = 2
TRANSIENT = 1
_CACHE_KEY = "amqp-properties"


def message_from_publish(
    exchange: str, routing_key: str, raw_properties: bytes, body: bytes, *, now: float,
    client: str, user: str | None,
) -> Message:
    """The Message of a basic.publish. Raises MalformedData (502, for connection.close)
    for properties that do not decode and PreconditionFailed (406) for a ``user_id``
    other than the login or an ``expiration`` that is no number of milliseconds."""
    props = decode_properties(raw_properties)
    if props.user_id is not None and props.user_id != user:
        raise PreconditionFailed(
            f"PRECONDITION_FAILED - user_id property set to '{props.user_id}' but "
            f"authenticated user was '{user}'"
        )
    expiry = None
    if props.expiration is not None:
        expiration = props.expiration
        if not (expiration.isascii() and expiration.isdigit()):
            raise PreconditionFailed(f"PRECONDITION_FAILED - invalid expiration "
                                     f"'{expiration[:40]}'")
        expiry = now + int(expiration) / 1000
    headers = props.headers or {}
    persistent = props.delivery_mode == PERSISTENT
    correlation = props.correlation_id
    return Message(
        routing_key, body, qos=1 if persistent else 0, expiry=expiry,
        content_type=props.content_type,
        correlation_data=correlation.encode() if correlation is not None else None,
        headers=tuple((k, v) for k, v in headers.items() if isinstance(v, str)),
        origin_protocol="amqp", origin_client=client,
        amqp=AmqpPart(exchange, routing_key, raw_properties, headers, persistent),
    )


def delivery_properties(message: Message) -> bytes:
    """The raw basic.properties an AMQP receiver gets for ``message`` (cached on it)."""
    amqp = message.amqp
    raw = amqp.properties if amqp is not None else None
    deaths = amqp.deaths if amqp is not None else ()
    if raw is not None and not deaths:
        return raw
    cached: bytes | None = message.wire_cache.get(_CACHE_KEY)
    if cached is None:
        if raw is not None:
            cached = _with_deaths(decode_properties(raw), deaths)
        else:
            cached = _foreign_properties(message, deaths)
        message.wire_cache[_CACHE_KEY] = cached
    return cached


def _foreign_properties(message: Message, deaths: tuple[Death, ...]) -> bytes:
    correlation = None
    if message.correlation_data is not None:
        try:
            correlation = message.correlation_data.decode()
        except UnicodeDecodeError:
            correlation = None
    props = BasicProperties(
        content_type=message.content_type,
        headers=dict(message.headers) if message.headers else None,
        delivery_mode=PERSISTENT if message.qos > 0 or (
            message.amqp is not None and message.amqp.persistent) else TRANSIENT,
        correlation_id=correlation if correlation is not None and len(correlation) < 256
        else None,
    )
    if deaths:
        return _with_deaths(props, deaths)
    return encode_properties(props)


def _with_deaths(props: BasicProperties, deaths: tuple[Death, ...]) -> bytes:
    headers = dict(props.headers or {})
    headers["x-death"] = [
        {
            "count": death.count,
            "reason": death.reason,
            "queue": death.queue,
            "time": datetime.fromtimestamp(int(death.time), UTC),
            "exchange": death.exchange,
            "routing-keys": list(death.routing_keys),
        }
        for death in deaths
    ]
    first = deaths[-1]
    headers.setdefault("x-first-death-reason", first.reason)
    headers.setdefault("x-first-death-queue", first.queue)
    headers.setdefault("x-first-death-exchange", first.exchange)
    values = {name: getattr(props, name) for name in BasicProperties.__slots__}
    values["headers"] = headers
    values["expiration"] = None  # a dead letter does not expire again (RabbitMQ)
    return encode_properties(BasicProperties(**values))

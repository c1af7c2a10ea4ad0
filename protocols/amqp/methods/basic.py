"""AMQP 0-9-1 methods of the basic class (60): qos, consume, cancel, publish, return,
deliver, get, ack, reject, recover, nack (``methods``)."""

from typing import Any

from .base import (
    BIT,
    LONG,
    LONGLONG,
    R_SHORT,
    R_SHORTSTR,
    SHORT,
    SHORTSTR,
    TABLE,
    Method,
    _method,
    _table,
)

# --- basic (class 60) ---------------------------------------------------------------------


@_method(
    60, 10, "basic.qos",
    ("prefetch_size", LONG), ("prefetch_count", SHORT), ("global_", BIT),
    client=True,
)  # fmt: skip
class BasicQos(Method):
    prefetch_size: int = 0
    prefetch_count: int = 0
    global_: bool = False


@_method(60, 11, "basic.qos-ok", server=True)
class BasicQosOk(Method):
    pass


@_method(
    60, 20, "basic.consume",
    (None, R_SHORT), ("queue", SHORTSTR), ("consumer_tag", SHORTSTR), ("no_local", BIT),
    ("no_ack", BIT), ("exclusive", BIT), ("nowait", BIT), ("arguments", TABLE),
    client=True,
)  # fmt: skip
class BasicConsume(Method):
    queue: str = ""
    consumer_tag: str = ""
    no_local: bool = False
    no_ack: bool = False
    exclusive: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(60, 21, "basic.consume-ok", ("consumer_tag", SHORTSTR), server=True)
class BasicConsumeOk(Method):
    consumer_tag: str = ""


# Both ways: the server cancels a consumer whose queue went away (consumer_cancel_notify).
@_method(
    60, 30, "basic.cancel", ("consumer_tag", SHORTSTR), ("nowait", BIT),
    client=True, server=True,
)  # fmt: skip
class BasicCancel(Method):
    consumer_tag: str = ""
    nowait: bool = False


@_method(60, 31, "basic.cancel-ok", ("consumer_tag", SHORTSTR), client=True, server=True)
class BasicCancelOk(Method):
    consumer_tag: str = ""


@_method(
    60, 40, "basic.publish",
    (None, R_SHORT), ("exchange", SHORTSTR), ("routing_key", SHORTSTR), ("mandatory", BIT),
    ("immediate", BIT),
    client=True, content=True,
)  # fmt: skip
class BasicPublish(Method):
    exchange: str = ""
    routing_key: str = ""
    mandatory: bool = False
    immediate: bool = False


@_method(
    60, 50, "basic.return",
    ("reply_code", SHORT), ("reply_text", SHORTSTR), ("exchange", SHORTSTR),
    ("routing_key", SHORTSTR),
    server=True, content=True,
)  # fmt: skip
class BasicReturn(Method):
    reply_code: int = 0
    reply_text: str = ""
    exchange: str = ""
    routing_key: str = ""


@_method(
    60, 60, "basic.deliver",
    ("consumer_tag", SHORTSTR), ("delivery_tag", LONGLONG), ("redelivered", BIT),
    ("exchange", SHORTSTR), ("routing_key", SHORTSTR),
    server=True, content=True,
)  # fmt: skip
class BasicDeliver(Method):
    consumer_tag: str = ""
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""


@_method(
    60, 70, "basic.get", (None, R_SHORT), ("queue", SHORTSTR), ("no_ack", BIT), client=True
)
class BasicGet(Method):
    queue: str = ""
    no_ack: bool = False


@_method(
    60, 71, "basic.get-ok",
    ("delivery_tag", LONGLONG), ("redelivered", BIT), ("exchange", SHORTSTR),
    ("routing_key", SHORTSTR), ("message_count", LONG),
    server=True, content=True,
)  # fmt: skip
class BasicGetOk(Method):
    delivery_tag: int = 0
    redelivered: bool = False
    exchange: str = ""
    routing_key: str = ""
    message_count: int = 0


@_method(60, 72, "basic.get-empty", (None, R_SHORTSTR), server=True)
class BasicGetEmpty(Method):
    pass


# Both ways: the server acks publishes in confirm mode.
@_method(
    60, 80, "basic.ack", ("delivery_tag", LONGLONG), ("multiple", BIT),
    client=True, server=True,
)  # fmt: skip
class BasicAck(Method):
    delivery_tag: int = 0
    multiple: bool = False


@_method(60, 90, "basic.reject", ("delivery_tag", LONGLONG), ("requeue", BIT), client=True)
class BasicReject(Method):
    delivery_tag: int = 0
    requeue: bool = True


@_method(60, 100, "basic.recover-async", ("requeue", BIT), client=True)
class BasicRecoverAsync(Method):
    requeue: bool = False


@_method(60, 110, "basic.recover", ("requeue", BIT), client=True)
class BasicRecover(Method):
    requeue: bool = False


@_method(60, 111, "basic.recover-ok", server=True)
class BasicRecoverOk(Method):
    pass


@_method(
    60, 120, "basic.nack", ("delivery_tag", LONGLONG), ("multiple", BIT), ("requeue", BIT),
    client=True, server=True,
)  # fmt: skip
class BasicNack(Method):
    delivery_tag: int = 0
    multiple: bool = False
    requeue: bool = True

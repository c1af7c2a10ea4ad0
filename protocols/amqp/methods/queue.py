"""AMQP 0-9-1 methods of the queue class (50): declare, bind, purge, delete, unbind
(``methods``)."""

from typing import Any

from .base import BIT, LONG, R_SHORT, SHORTSTR, TABLE, Method, _method, _table

# --- queue (class 50) ---------------------------------------------------------------------


@_method(
    50, 10, "queue.declare",
    (None, R_SHORT), ("queue", SHORTSTR), ("passive", BIT), ("durable", BIT),
    ("exclusive", BIT), ("auto_delete", BIT), ("nowait", BIT), ("arguments", TABLE),
    client=True,
)  # fmt: skip
class QueueDeclare(Method):
    queue: str = ""
    passive: bool = False
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(
    50, 11, "queue.declare-ok",
    ("queue", SHORTSTR), ("message_count", LONG), ("consumer_count", LONG),
    server=True,
)  # fmt: skip
class QueueDeclareOk(Method):
    queue: str = ""
    message_count: int = 0
    consumer_count: int = 0


@_method(
    50, 20, "queue.bind",
    (None, R_SHORT), ("queue", SHORTSTR), ("exchange", SHORTSTR), ("routing_key", SHORTSTR),
    ("nowait", BIT), ("arguments", TABLE),
    client=True,
)  # fmt: skip
class QueueBind(Method):
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(50, 21, "queue.bind-ok", server=True)
class QueueBindOk(Method):
    pass


@_method(
    50, 30, "queue.purge", (None, R_SHORT), ("queue", SHORTSTR), ("nowait", BIT), client=True
)
class QueuePurge(Method):
    queue: str = ""
    nowait: bool = False


@_method(50, 31, "queue.purge-ok", ("message_count", LONG), server=True)
class QueuePurgeOk(Method):
    message_count: int = 0


@_method(
    50, 40, "queue.delete",
    (None, R_SHORT), ("queue", SHORTSTR), ("if_unused", BIT), ("if_empty", BIT),
    ("nowait", BIT),
    client=True,
)  # fmt: skip
class QueueDelete(Method):
    queue: str = ""
    if_unused: bool = False
    if_empty: bool = False
    nowait: bool = False


@_method(50, 41, "queue.delete-ok", ("message_count", LONG), server=True)
class QueueDeleteOk(Method):
    message_count: int = 0


@_method(
    50, 50, "queue.unbind",
    (None, R_SHORT), ("queue", SHORTSTR), ("exchange", SHORTSTR), ("routing_key", SHORTSTR),
    ("arguments", TABLE),
    client=True,
)  # fmt: skip
class QueueUnbind(Method):
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    arguments: dict[str, Any] = _table()


@_method(50, 51, "queue.unbind-ok", server=True)
class QueueUnbindOk(Method):
    pass

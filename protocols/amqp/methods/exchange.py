"""AMQP 0-9-1 methods of the exchange class (40): declare, delete, bind, unbind
(``methods``)."""

from typing import Any

from .base import BIT, R_SHORT, SHORTSTR, TABLE, Method, _method, _table

# --- exchange (class 40) ------------------------------------------------------------------


@_method(
    40, 10, "exchange.declare",
    (None, R_SHORT), ("exchange", SHORTSTR), ("type", SHORTSTR), ("passive", BIT),
    ("durable", BIT), ("auto_delete", BIT), ("internal", BIT), ("nowait", BIT),
    ("arguments", TABLE),
    client=True,
)  # fmt: skip
class ExchangeDeclare(Method):
    exchange: str = ""
    type: str = "direct"
    passive: bool = False
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 11, "exchange.declare-ok", server=True)
class ExchangeDeclareOk(Method):
    pass


@_method(
    40, 20, "exchange.delete",
    (None, R_SHORT), ("exchange", SHORTSTR), ("if_unused", BIT), ("nowait", BIT),
    client=True,
)  # fmt: skip
class ExchangeDelete(Method):
    exchange: str = ""
    if_unused: bool = False
    nowait: bool = False


@_method(40, 21, "exchange.delete-ok", server=True)
class ExchangeDeleteOk(Method):
    pass


_EXCHANGE_BIND = ((None, R_SHORT), ("destination", SHORTSTR), ("source", SHORTSTR),
                  ("routing_key", SHORTSTR), ("nowait", BIT), ("arguments", TABLE))  # fmt: skip


@_method(40, 30, "exchange.bind", *_EXCHANGE_BIND, client=True)
class ExchangeBind(Method):
    destination: str = ""
    source: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 31, "exchange.bind-ok", server=True)
class ExchangeBindOk(Method):
    pass


@_method(40, 40, "exchange.unbind", *_EXCHANGE_BIND, client=True)
class ExchangeUnbind(Method):
    destination: str = ""
    source: str = ""
    routing_key: str = ""
    nowait: bool = False
    arguments: dict[str, Any] = _table()


@_method(40, 51, "exchange.unbind-ok", server=True)
class ExchangeUnbindOk(Method):
    pass

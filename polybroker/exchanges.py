"""AMQP exchanges and bindings on the protocol-neutral core (``broker.exchanges``).

RabbitMQ's semantics, the de-facto reference for AMQP 0-9-1:

- Predeclared (durable, never deleted): the default exchange ``''`` (routes to the queue
  named by the routing key; it cannot be declared, deleted, bound or unbound: 403),
  ``amq.direct``, ``amq.fanout``, ``amq.topic`` and ``amq.headers``. Declaring any
  other ``amq.`` name is refused (403).
- ``declare`` creates or checks: a redeclaration must have the same type, durable,
  auto_delete and internal flags (406); ``passive`` only checks that it exists (404).
- Kinds: ``direct`` (routing key equals binding key), ``fanout`` (every bound queue),
  ``topic`` (``.``-separated words; ``*`` one word, ``#`` zero or more words, anywhere
  in the pattern) and ``headers`` (binding arguments against the message's headers:
  ``x-match`` ``all``, the default, or ``any``; a void binding value matches any value;
  other ``x-`` arguments are ignored).
- ``amq.topic`` is the bridge to the MQTT/STOMP topic space: its bindings live in the
  broker's router and its publishes are broker publishes (``destinations`` has the
  mapping and what cannot cross).
- A binding is (exchange, queue, routing key, arguments); binding twice is binding once.
  A message goes to each matching queue once, however many of its bindings match.
- An ``auto_delete`` exchange is deleted when its last binding goes, once it had one.
- Publishing to a missing exchange is NotFound (404), to an internal one AccessRefused.
- Dead-lettering (``dead_letter``): a queue with ``x-dead-letter-exchange`` hands the
  messages it rejects, expires or pushes out to that exchange, as a copy carrying a
  ``Death`` record; a message that would die in the same queue again without having
  been rejected in between (a cycle) is dropped, as RabbitMQ does.
- Delayed (RabbitMQ's delayed-message plugin): an exchange of type ``x-delayed-message``
  with the argument ``x-delayed-type`` (one of the kinds above) holds a message whose
  ``x-delay`` header is a positive number of milliseconds in ``Broker.delayed`` and routes
  it by that type when due; without the header (or with 0 or less) at once.
- Durability: durable exchanges and the bindings between a durable exchange and a
  durable queue are recorded in the store (``broker.journal``) and restored at start-up
  (``persistence``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .delayed import EXCHANGE, DelayedStore, Target
from .destinations import AMQ_TOPIC as AMQ_TOPIC  # re-exported: the AMQP channel names it here
from .destinations import binding_key_to_filter, routing_key_to_topic
from .exchange_patterns import TopicPatterns, count_in, headers_match
from .message import AmqpPart, Death, Message
from .overflow import DROPPED, PublishResult
from .queues import Queue, QueueEntry
from .refusals import AccessRefused, CommandInvalid, NotFound, PreconditionFailed
from .sessions import SubscriptionOptions

if TYPE_CHECKING:
    from .queue_registry import QueueRegistry
    from .router import Subscriber, TopicTrie

__all__ = [
    "DEFAULT", "DIRECT", "FANOUT", "HEADERS", "KINDS", "TOPIC", "Binding", "Exchange",
    "ExchangeRegistry", "TopicPatterns",
]

log = logging.getLogger("polybroker.exchanges")

DIRECT, FANOUT, TOPIC, HEADERS = "direct", "fanout", "topic", "headers"
KINDS = (DIRECT, FANOUT, TOPIC, HEADERS)
DELAYED = "x-delayed-message"  # routes by its ``x-delayed-type`` argument, when due
DEFAULT = ""  # the default exchange's name
PREDECLARED = {
    "amq.direct": DIRECT, "amq.fanout": FANOUT, AMQ_TOPIC: TOPIC, "amq.headers": HEADERS,
}
_ANY_QOS = SubscriptionOptions(qos=2)  # how a queue sits in the router
MAX_NAME_BYTES = 255


def arguments_key(arguments: Mapping[str, object] | None) -> str:
    """A binding's arguments as part of its identity (tables may hold unhashable values)."""
    if not arguments:
        return ""
    return repr(sorted(arguments.items(), key=lambda item: item[0]))


@dataclass(frozen=True, slots=True)
class Binding:
    """One binding of a queue to an exchange."""

    exchange: str
    queue: str
    routing_key: str
    arguments: Mapping[str, object] = dataclasses.field(
        default_factory=dict, compare=False, hash=False
    )


class Exchange:
    """One exchange: its declaration and its bindings."""

    def __init__(
        self,
        name: str,
        kind: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, object] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        self.predeclared = name == DEFAULT or name in PREDECLARED
        # How it routes: its kind, or for a delayed exchange its ``x-delayed-type``.
        self.route_kind = self.arguments.get("x-delayed-type") if kind == DELAYED else kind
        # (queue name, routing key, arguments key) -> binding
        self.bindings: dict[tuple[str, str, str], Binding] = {}
        self.had_binding = False  # auto_delete applies only after a first binding
        # Routing indexes: each counts bindings per (queue, key), so that unbinding one of
        # two bindings that differ only by arguments keeps the route.
        self._direct: dict[str, dict[Queue, int]] = {}
        self._fanout: dict[Queue, int] = {}
        self._topic = TopicPatterns()
        self._headers: dict[tuple[Queue, str, str], Mapping[str, object]] = {}

    def __repr__(self) -> str:
        return f"Exchange({self.name!r}, {self.kind!r})"

    # -- indexes (the registry keeps ``bindings`` and the router) ---------------------------

    def index(self, queue: Queue, binding: Binding, add: bool) -> None:
        """Add ``binding`` of ``queue`` to (or remove it from) the routing index."""
        key = binding.routing_key
        kind = self.route_kind
        if kind == DIRECT:
            count_in(self._direct.setdefault(key, {}), queue, add)
            if not self._direct[key]:
                del self._direct[key]
        elif kind == FANOUT:
            count_in(self._fanout, queue, add)
        elif kind == TOPIC:
            if add:
                self._topic.add(key, queue)
            else:
                self._topic.remove(key, queue)
        else:
            index = (queue, key, arguments_key(binding.arguments))
            if add:
                self._headers[index] = binding.arguments
            else:
                self._headers.pop(index, None)

    def match(self, routing_key: str, message: Message) -> list[Queue]:
        """The queues a message published with ``routing_key`` goes to, each once, in a
        stable order."""
        kind = self.route_kind
        if kind == DIRECT:
            return list(self._direct.get(routing_key, ()))
        if kind == FANOUT:
            return list(self._fanout)
        if kind == TOPIC:
            return self._topic.match(routing_key)
        amqp = message.amqp
        headers = amqp.headers if amqp is not None else None
        if headers is None:
            headers = dict(message.headers)
        found: dict[Queue, None] = {}
        for (queue, _, _), arguments in self._headers.items():
            if queue not in found and headers_match(arguments, headers):
                found[queue] = None
        return list(found)


class ExchangeStore(Protocol):
    """Where durable exchanges and their bindings are recorded (``broker.journal``)."""

    def exchange_declared(self, exchange: Exchange) -> None: ...

    def exchange_deleted(self, exchange: Exchange) -> None: ...

    def binding_added(self, binding: Binding) -> None: ...

    def binding_removed(self, binding: Binding) -> None: ...


class Core(Protocol):
    """What exchanges use of the broker they belong to."""

    @property
    def journal(self) -> ExchangeStore: ...

    @property
    def queues(self) -> QueueRegistry: ...

    @property
    def router(self) -> TopicTrie[Subscriber, SubscriptionOptions]: ...

    @property
    def delayed(self) -> DelayedStore: ...

    def publish(self, message: Message) -> PublishResult: ...


class ExchangeRegistry:
    """The broker's exchanges by name, their bindings, and publishing through them."""

    def __init__(self, broker: Core) -> None:
        self.broker = broker
        self._exchanges: dict[str, Exchange] = {}
        self._by_queue: dict[Queue, set[tuple[str, tuple[str, str, str]]]] = {}
        self._router_refs: dict[tuple[Queue, str], int] = {}  # amq.topic bindings per filter
        self._exchanges[DEFAULT] = Exchange(DEFAULT, DIRECT, durable=True)
        for name, kind in PREDECLARED.items():
            self._exchanges[name] = Exchange(name, kind, durable=True)

    def __contains__(self, name: object) -> bool:
        return name in self._exchanges

    def __iter__(self) -> Iterator[Exchange]:
        return iter(list(self._exchanges.values()))

    def __len__(self) -> int:
        return len(self._exchanges)

    def get(self, name: str) -> Exchange | None:
        return self._exchanges.get(name)

    def _existing(self, name: str) -> Exchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            raise NotFound(f"NOT_FOUND - no exchange '{name}' in vhost '/'")
        return exchange

    # -- declaring and deleting -------------------------------------------------------------

    def declare(
        self,
        name: str,
        kind: str = DIRECT,
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, object] | None = None,
    ) -> Exchange:
        """exchange.declare: the exchange called ``name``, created if it does not exist.

        Raises NotFound (passive, missing), AccessRefused (the default exchange, a new
        ``amq.`` name), PreconditionFailed (differs from the existing one: type, durable,
        auto_delete, internal; or a bad name) and CommandInvalid (unknown type).
        """
        existing = self._exchanges.get(name)
        if passive:
            if existing is None:
                raise NotFound(f"NOT_FOUND - no exchange '{name}' in vhost '/'")
            return existing
        if name == DEFAULT:
            raise AccessRefused("ACCESS_REFUSED - operation not permitted on the default "
                                "exchange")
        if kind not in KINDS and kind != DELAYED:
            raise CommandInvalid(f"COMMAND_INVALID - unknown exchange type '{kind}'")
        if kind == DELAYED and (arguments or {}).get("x-delayed-type") not in KINDS:
            raise PreconditionFailed("PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' "
                                     "must be an existing exchange type")
        if existing is not None:
            if (existing.kind, existing.durable, existing.auto_delete, existing.internal) != (
                kind, durable, auto_delete, internal
            ):
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - inequivalent arg for exchange '{name}' in vhost "
                    f"'/': declared as {_describe(existing)}, not {kind}"
                    f"{' durable' if durable else ''}{' auto_delete' if auto_delete else ''}"
                    f"{' internal' if internal else ''}"
                )
            return existing
        if name.startswith("amq."):
            raise AccessRefused(f"ACCESS_REFUSED - exchange name '{name}' contains reserved "
                                "prefix 'amq.*'")
        if "\0" in name or len(name.encode()) > MAX_NAME_BYTES:
            raise PreconditionFailed("PRECONDITION_FAILED - invalid exchange name")
        exchange = Exchange(name, kind, durable=durable, auto_delete=auto_delete,
                            internal=internal, arguments=arguments)
        self._exchanges[name] = exchange
        if durable:
            self.broker.journal.exchange_declared(exchange)
        log.info("exchange %s: declared (%s%s)", name, kind, ", durable" if durable else "")
        return exchange

    def delete(self, name: str, *, if_unused: bool = False) -> None:
        """exchange.delete with its bindings. A missing exchange is no error (RabbitMQ);
        the predeclared ones are AccessRefused; ``if_unused`` with bindings is
        PreconditionFailed."""
        exchange = self._exchanges.get(name)
        if exchange is None:
            return
        if exchange.predeclared:
            raise AccessRefused(f"ACCESS_REFUSED - operation not permitted on exchange "
                                f"'{name}'")
        if if_unused and exchange.bindings:
            raise PreconditionFailed(f"PRECONDITION_FAILED - exchange '{name}' in use")
        self._remove(exchange)

    def _remove(self, exchange: Exchange) -> None:
        for binding in list(exchange.bindings.values()):
            queue = self.broker.queues.get(binding.queue)
            if queue is not None:
                self._unbind(exchange, queue, binding, auto_delete=False)
        del self._exchanges[exchange.name]
        if exchange.durable:
            self.broker.journal.exchange_deleted(exchange)
        log.info("exchange %s: deleted", exchange.name)

    # -- bindings ---------------------------------------------------------------------------

    def bind(
        self,
        queue: str | Queue,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, object] | None = None,
    ) -> bool:
        """queue.bind; True if the binding is new (binding again changes nothing).

        Raises NotFound (no such queue or exchange), AccessRefused (the default exchange)
        and PreconditionFailed (a key on ``amq.topic`` with no MQTT equivalent). Callers
        check exclusive ownership first (``QueueRegistry.lookup``)."""
        target, ex = self._pair(queue, exchange)
        ident = (target.name, routing_key, arguments_key(arguments))
        if ident in ex.bindings:
            return False
        if ex.name == AMQ_TOPIC:
            topic_filter = binding_key_to_filter(routing_key)
            if topic_filter is None:
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - binding key '{routing_key[:100]}' on amq.topic "
                    "must map onto an MQTT filter ('#' last, no '/', '+')"
                )
        binding = Binding(ex.name, target.name, routing_key, dict(arguments or {}))
        self._add(ex, target, binding)
        return True

    def _add(self, ex: Exchange, queue: Queue, binding: Binding) -> None:
        ident = (binding.queue, binding.routing_key, arguments_key(binding.arguments))
        ex.bindings[ident] = binding
        ex.had_binding = True
        self._by_queue.setdefault(queue, set()).add((ex.name, ident))
        if ex.name == AMQ_TOPIC:
            self._routercount_in(queue, binding.routing_key, True)
        else:
            ex.index(queue, binding, True)
        if ex.durable and queue.durable and not queue.exclusive:
            self.broker.journal.binding_added(binding)

    def unbind(
        self,
        queue: str | Queue,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, object] | None = None,
    ) -> bool:
        """queue.unbind; True if the binding existed (unbinding a missing binding is no
        error). Raises NotFound and AccessRefused as ``bind`` does."""
        target, ex = self._pair(queue, exchange)
        binding = ex.bindings.get((target.name, routing_key, arguments_key(arguments)))
        if binding is None:
            return False
        self._unbind(ex, target, binding, auto_delete=True)
        return True

    def _unbind(self, ex: Exchange, queue: Queue, binding: Binding, *, auto_delete: bool) -> None:
        ident = (binding.queue, binding.routing_key, arguments_key(binding.arguments))
        del ex.bindings[ident]
        mine = self._by_queue.get(queue)
        if mine is not None:
            mine.discard((ex.name, ident))
            if not mine:
                del self._by_queue[queue]
        if ex.name == AMQ_TOPIC:
            self._routercount_in(queue, binding.routing_key, False)
        else:
            ex.index(queue, binding, False)
        if ex.durable and queue.durable and not queue.exclusive:
            self.broker.journal.binding_removed(binding)
        if auto_delete and ex.auto_delete and not ex.bindings and ex.name in self._exchanges:
            log.info("exchange %s: auto-deleted (no bindings left)", ex.name)
            self._remove(ex)

    def _routercount_in(self, queue: Queue, routing_key: str, add: bool) -> None:
        # Several bindings may map onto one filter (same key, other arguments): the router
        # holds it while any of them does.
        topic_filter = binding_key_to_filter(routing_key)
        if topic_filter is None:
            return  # ``bind`` refuses such a key on amq.topic: never in the router
        counts = self._router_refs
        ref = (queue, topic_filter)
        count_in(counts, ref, add)
        if add and counts[ref] == 1:
            self.broker.router.add(topic_filter, queue, _ANY_QOS)
        elif not add and ref not in counts:
            self.broker.router.remove(topic_filter, queue)

    def _pair(self, queue: str | Queue, exchange: str) -> tuple[Queue, Exchange]:
        if exchange == DEFAULT:
            raise AccessRefused("ACCESS_REFUSED - operation not permitted on the default "
                                "exchange")
        if isinstance(queue, Queue):
            return queue, self._existing(exchange)
        target = self.broker.queues.get(queue)
        if target is None:
            raise NotFound(f"NOT_FOUND - no queue '{queue}' in vhost '/'")
        return target, self._existing(exchange)

    def bindings_of(self, queue: Queue) -> list[Binding]:
        """The bindings of ``queue`` (not counting the default exchange's)."""
        out = []
        for name, ident in self._by_queue.get(queue, ()):
            binding = self._exchanges[name].bindings.get(ident)
            if binding is not None:
                out.append(binding)
        return out

    def queue_deleted(self, queue: Queue) -> None:
        """``queue`` is gone: its bindings go too (auto_delete exchanges may follow)."""
        for name, ident in list(self._by_queue.get(queue, ())):
            ex = self._exchanges.get(name)
            if ex is not None and ident in ex.bindings:
                self._unbind(ex, queue, ex.bindings[ident], auto_delete=True)
        self._by_queue.pop(queue, None)

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        message: Message,
        *,
        refused: list[Queue] | None = None,
        admit: Callable[[Queue], bool] | None = None,
        result: PublishResult | None = None,
    ) -> int:
        """basic.publish: route ``message`` through ``exchange``; return how many queues
        (and, through ``amq.topic``, subscribers of the topic space) it reached: 0 means
        unroutable (basic.return 312 for a mandatory publish). What is routed carries
        ``exchange`` and ``routing_key`` in its ``amqp`` part (and, through ``amq.topic``,
        the topic they map to): ``message`` itself when it already does (an AMQP adapter
        builds it so), else a copy (a message is never changed). A persistent message
        (``message.amqp.persistent``) is
        recorded in each durable queue it enters. Queues that turned it away (``x-overflow``
        ``reject-publish``) still count as reached and are appended to ``refused`` (for a
        negative publisher confirm). ``admit``, when given, picks the queues the publisher
        may write to (the ACL); the others are passed over as if not bound. ``result``, when
        given, collects what the topic space's subscribers and the queues did with it
        (drops, full backlogs: ``overflow``). Raises NotFound (no such exchange) and
        AccessRefused (an internal exchange)."""
        ex = self._existing(exchange)
        if ex.internal:
            raise AccessRefused(f"ACCESS_REFUSED - cannot publish to internal exchange "
                                f"'{exchange}'")
        amqp = message.amqp
        if amqp is None:
            message = dataclasses.replace(
                message, amqp=AmqpPart(exchange, routing_key), wire_cache={}
            )
        elif amqp.exchange != exchange or amqp.routing_key != routing_key:
            part = dataclasses.replace(amqp, exchange=exchange, routing_key=routing_key)
            message = dataclasses.replace(message, amqp=part, wire_cache={})
        if ex.kind == DELAYED:
            delay = _x_delay(message)
            if delay > 0:
                # The ACL cannot be asked once the publisher is gone: it must be allowed to
                # write to every queue the message would reach now.
                if admit is not None and not all(map(admit, ex.match(routing_key, message))):
                    raise AccessRefused(f"ACCESS_REFUSED - write access to a queue bound to "
                                        f"'{exchange}' refused")
                target = Target(EXCHANGE, exchange, routing_key)
                held = self.broker.delayed.schedule(message, delay, target,
                                                    client=message.origin_client or "?")
                if result is not None:
                    result.merge(held)
                return 1  # whether it will be routable is not known yet (as RabbitMQ)
        return self._route(ex, routing_key, message, refused, admit, result)

    def deliver_delayed(self, exchange: str, routing_key: str, message: Message) -> int:
        """Route a delayed message that is due through its exchange (by its
        ``x-delayed-type``); an exchange deleted meanwhile drops it."""
        ex = self._exchanges.get(exchange)
        if ex is None:
            log.info("exchange %s: gone, delayed message dropped", exchange)
            return 0
        return self._route(ex, routing_key, message, None)

    def _route(
        self, ex: Exchange, routing_key: str, message: Message, refused: list[Queue] | None,
        admit: Callable[[Queue], bool] | None = None, result: PublishResult | None = None,
    ) -> int:
        if ex.name == DEFAULT:
            queue = self.broker.queues.get(routing_key)
            if queue is None:
                return 0
            targets = [queue]
        elif ex.name == AMQ_TOPIC:
            topic = routing_key_to_topic(routing_key)
            if topic is None:
                return 0
            if message.topic != topic:
                message = dataclasses.replace(message, topic=topic, wire_cache={})
            published = self.broker.publish(message)
            if result is not None:
                result.merge(published)
            return published.matched
        else:
            targets = ex.match(routing_key, message)
        if admit is not None:
            targets = [queue for queue in targets if admit(queue)]
        persistent = message.amqp is not None and message.amqp.persistent
        for queue in targets:
            # Into a named queue every message waits for an acknowledgement, persistent
            # or not: a full one under "block" holds its publisher back either way.
            outcome = queue.offer(message, 1, persistent=persistent)
            if outcome == DROPPED and refused is not None:
                refused.append(queue)
            if outcome and result is not None:
                result.note(outcome, queue)
        if result is not None:
            result.matched += len(targets)
        return len(targets)

    # -- dead-lettering ---------------------------------------------------------------------

    def dead_letter(self, queue: Queue, entry: QueueEntry, reason: str) -> None:
        """Republish a message that died in ``queue`` (``reason``: ``rejected``,
        ``expired`` or ``maxlen``) to the queue's dead-letter exchange, with its
        dead-letter routing key or else its own routing keys. A missing exchange drops it
        (as RabbitMQ does)."""
        target = queue.dead_letter_exchange
        if target is None:
            return
        ex = self._exchanges.get(target)
        if ex is None:
            log.debug("queue %s: dead-letter exchange %r missing, message dropped",
                      queue.name, target)
            return
        message = entry.message
        amqp = message.amqp
        deaths = amqp.deaths if amqp is not None else ()
        if reason != "rejected" and any(d.queue == queue.name for d in deaths) and not any(
            d.reason == "rejected" for d in deaths
        ):
            return  # a cycle without a rejection in it: dropped
        old_key = amqp.routing_key if amqp is not None else message.topic.replace("/", ".")
        death = _death(amqp, queue.name, reason, old_key)
        rest = tuple(d for d in deaths if (d.queue, d.reason) != (queue.name, reason))
        key = queue.dead_letter_routing_key
        if key is None:
            key = old_key
        deaths = (death, *rest)
        part = (AmqpPart(ex.name, key, deaths=deaths) if amqp is None else
                dataclasses.replace(amqp, exchange=ex.name, routing_key=key, deaths=deaths))
        copy = dataclasses.replace(message, amqp=part, expiry=None, wire_cache={})
        self._route(ex, key, copy, None)


def _x_delay(message: Message) -> float:
    """The ``x-delay`` header in seconds (0: none, or not a number)."""
    headers = message.amqp.headers if message.amqp is not None else None
    value = headers.get("x-delay") if headers else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return value / 1000


def _death(amqp: AmqpPart | None, queue: str, reason: str, routing_key: str) -> Death:
    if amqp is None:  # its first death, and it was never published to an exchange
        return Death(queue, reason, "", (routing_key,), 1, time.time())
    for old in amqp.deaths:
        if (old.queue, old.reason) == (queue, reason):
            return dataclasses.replace(old, count=old.count + 1)
    return Death(queue, reason, amqp.exchange, (routing_key,), 1, time.time())


def _describe(exchange: Exchange) -> str:
    flags = [exchange.kind]
    for flag in ("durable", "auto_delete", "internal"):
        if getattr(exchange, flag):
            flags.append(flag)
    return " ".join(flags)

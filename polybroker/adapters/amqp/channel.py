"""One AMQP channel: its consumers, delivery tags, QoS, confirms and transaction.

RabbitMQ's semantics (the de-facto reference for 0-9-1; ``shared/AMQP-LITE.md``):

- Delivery tags count 1, 2, ... per channel across basic.deliver and basic.get-ok;
  each maps to (queue, the queue's own tag). basic.ack / reject / nack settle them,
  ``multiple`` covering every earlier one (tag 0 with multiple: all). An unknown tag is
  406 PRECONDITION_FAILED.
- basic.qos: ``global=True`` bounds the channel's unacknowledged deliveries together,
  ``global=False`` each consumer's. Unlike RabbitMQ, a new ``global=False`` value also
  applies to the channel's existing consumers, at once: Celery raises its prefetch on
  a live channel while it holds ETA tasks, and with any broker but RabbitMQ it sends
  ``global=False``.
- basic.cancel leaves the consumer's unacknowledged messages pending until they are
  settled or the channel closes; closing the channel (either side, or the connection)
  puts every unacknowledged message back, flagged redelivered, in its original place.
- A queue deleted under a consumer is announced with a broker-sent basic.cancel
  (consumer_cancel_notify).
- Publishing: a mandatory publish that reaches no queue comes back as basic.return
  312 NO_ROUTE (before its confirm); in confirm mode every publish is acknowledged with
  basic.ack (basic.nack when a queue refused it, ``x-overflow`` reject-publish) in
  publish order. A publish to a missing exchange closes the channel with 404. The
  connection's writer holds back what follows records not yet on disk, so the ack of
  a persistent message routed to a durable queue goes out once it is durable.
- tx.select: publishes and acknowledgements wait for tx.commit (applied in order) or
  are dropped by tx.rollback. A channel is in confirm mode or transactional, not both
  (406).
- A refusal of the core (``refusals``) closes the channel with its code; the codes
  AMQP makes connection errors (503, 504, 530, 540) close the connection instead.
- The ACL (``broker.security``; with no ACL file everything is allowed): declaring,
  binding, purging, deleting, consuming from and getting from a queue need ``queue
  read`` on it (a server-named queue being declared, and queues exclusive to this
  connection, are the client's own); a binding on ``amq.topic`` also needs the right to
  subscribe to its topic filter. A publish to the default exchange needs ``queue write``
  on the queue it names, one to ``amq.topic`` the right to publish to its topic: refused,
  the channel is closed with 403 ACCESS_REFUSED (as RabbitMQ does). Through any other
  exchange a message enters only the queues the publisher may write to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ...destinations import binding_key_to_filter, routing_key_to_topic
from ...exchanges import AMQ_TOPIC, DEFAULT
from ...message import Message
from ...overflow import PublishResult
from ...protocols.amqp import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    BasicAck,
    BasicCancel,
    BasicCancelOk,
    BasicConsume,
    BasicGet,
    BasicNack,
    BasicPublish,
    BasicQos,
    BasicRecover,
    BasicRecoverAsync,
    BasicReject,
    BasicReturn,
    ChannelClose,
    ChannelFlow,
    ChannelFlowOk,
    ConfirmSelect,
    ConfirmSelectOk,
    ExchangeBind,
    ExchangeDeclare,
    ExchangeDeclareOk,
    ExchangeDelete,
    ExchangeDeleteOk,
    ExchangeUnbind,
    Method,
    QueueBind,
    QueueBindOk,
    QueueDeclare,
    QueueDeclareOk,
    QueueDelete,
    QueueDeleteOk,
    QueuePurge,
    QueuePurgeOk,
    QueueUnbind,
    QueueUnbindOk,
    TxCommit,
    TxCommitOk,
    TxRollback,
    TxRollbackOk,
    TxSelect,
    TxSelectOk,
    encode_content,
)
from ...queues import Queue, SharedPrefetch
from ...refusals import AccessRefused, NotFound, PreconditionFailed, Refused
from .channel_support import AMQPClientConnection, ConnectionFault
from .consuming import AmqpConsumer, Consuming
from .convert import delivery_properties, message_from_publish

if TYPE_CHECKING:
    pass



log = logging.getLogger("polybroker.amqp")

# Reply codes that AMQP defines as connection errors: a refusal with one of them
# closes the connection, not the channel.
CONNECTION_CODES = frozenset((COMMAND_INVALID, CHANNEL_ERROR, NOT_ALLOWED, NOT_IMPLEMENTED,
                              501, 502, 505, 506, 541, 320, 402))
MAX_TX_ACTIONS = 100_000  # publishes and acknowledgements held by one transaction
MAX_TX_BYTES = 64 * 1024 * 1024  # message bodies held by a connection's open transactions






class Channel(Consuming):
    """An open channel of one connection."""

    def __init__(self, connection: AMQPClientConnection, number: int) -> None:
        self.connection = connection
        self.broker = connection.broker
        self.number = number
        self.active = True  # channel.flow
        self.consumers: dict[str, AmqpConsumer] = {}
        # delivery tag -> (queue, the queue's tag), in tag order
        self.unacked: dict[int, tuple[Queue, int]] = {}
        self._next_tag = 1
        self.prefetch = 0  # basic.qos global=False
        self.shared = SharedPrefetch()  # basic.qos global=True
        self.confirm = False
        self._published = 0  # publish sequence number in confirm mode
        self.tx: list[Callable[[], None]] | None = None
        self.tx_bytes = 0  # bodies held by ``tx`` (counted in the connection's too)
        self.last_queue: str | None = None  # queue.declare's, for methods naming ''

    def __repr__(self) -> str:
        return f"Channel({self.number} of {self.connection.name})"

    @property
    def closing(self) -> bool:
        """We sent channel.close and wait for close-ok (or the connection is over)."""
        return self.connection.amqp.channel_closing(self.number)

    # -- frames in --------------------------------------------------------------------------

    def handle(self, method: Method, content: tuple[bytes, bytes] | None = None) -> None:
        """Handle one method (``content``: raw properties and body of a publish).
        Refusals close the channel (or the connection: ConnectionFault)."""
        handler = _HANDLERS.get(type(method))
        try:
            if handler is None:
                raise _unsupported(method)
            if content is not None:
                self._on_publish(cast(BasicPublish, method), *content)
            else:
                handler(self, method)
        except Refused as exc:
            if exc.code in CONNECTION_CODES:
                raise ConnectionFault(exc.code, exc.text, method.CLASS_ID,
                                      method.METHOD_ID) from None
            self.fail(exc.code, exc.text, method)

    def fail(self, code: int, text: str, method: Method) -> None:
        """Close the channel for a fault (channel.close); its resources go at once."""
        log.info("client %s: channel %d closed: %d %s", self.connection.name, self.number,
                 code, text)
        self.connection.close_channel(self.number, ChannelClose(
            reply_code=code, reply_text=text[:255], class_id=method.CLASS_ID,
            method_id=method.METHOD_ID,
        ))
        self.close_down()

    def _reply(self, method: Method) -> None:
        self.connection.send_method(self.number, method)

    # -- exchanges and queues ---------------------------------------------------------------

    def _on_exchange_declare(self, m: ExchangeDeclare) -> None:
        self.broker.exchanges.declare(
            m.exchange, m.type, passive=m.passive, durable=m.durable,
            auto_delete=m.auto_delete, internal=m.internal, arguments=m.arguments,
        )
        if not m.nowait:
            self._reply(ExchangeDeclareOk())

    def _on_exchange_delete(self, m: ExchangeDelete) -> None:
        self.broker.exchanges.delete(m.exchange, if_unused=m.if_unused)
        if not m.nowait:
            self._reply(ExchangeDeleteOk())

    def _queue_name(self, name: str, method: Method) -> str:
        """``''`` names the channel's last declared queue (0-9-1: queue names)."""
        if name:
            return name
        if self.last_queue is None:
            raise NotFound("NOT_FOUND - no previously declared queue")
        return self.last_queue

    def _on_queue_declare(self, m: QueueDeclare) -> None:
        if m.queue:
            existing = self.broker.queues.get(m.queue)
            if existing is None or existing.owner is not self.connection:
                self._check_read(m.queue)
        queue = self.broker.queues.declare_queue(
            m.queue, owner=self.connection, passive=m.passive, durable=m.durable,
            exclusive=m.exclusive, auto_delete=m.auto_delete, arguments=m.arguments,
        )
        self.last_queue = queue.name
        if not m.nowait:
            self._reply(QueueDeclareOk(queue=queue.name, message_count=queue.message_count,
                                       consumer_count=queue.consumer_count))

    def _on_queue_bind(self, m: QueueBind) -> None:
        queue = self._readable(self._queue_name(m.queue, m))
        if m.exchange == AMQ_TOPIC:
            topic_filter = binding_key_to_filter(m.routing_key)
            if topic_filter is not None and not self.broker.security.may_subscribe(
                self.connection.client, topic_filter
            ):
                raise AccessRefused(f"ACCESS_REFUSED - read access to topic "
                                    f"'{topic_filter}' refused")
        self.broker.exchanges.bind(queue, m.exchange, m.routing_key, m.arguments)
        if not m.nowait:
            self._reply(QueueBindOk())

    def _on_queue_unbind(self, m: QueueUnbind) -> None:
        queue = self.broker.queues.lookup(self._queue_name(m.queue, m), self.connection)
        self.broker.exchanges.unbind(queue, m.exchange, m.routing_key, m.arguments)
        self._reply(QueueUnbindOk())

    def _on_queue_purge(self, m: QueuePurge) -> None:
        name = self._readable(self._queue_name(m.queue, m)).name
        count = self.broker.queues.purge(name, self.connection)
        if not m.nowait:
            self._reply(QueuePurgeOk(message_count=count))

    def _on_queue_delete(self, m: QueueDelete) -> None:
        name = self._queue_name(m.queue, m)
        if name in self.broker.queues:
            self._readable(name)
        count = self.broker.queues.delete_queue(
            name, owner=self.connection, if_unused=m.if_unused,
            if_empty=m.if_empty,
        )
        if not m.nowait:
            self._reply(QueueDeleteOk(message_count=count))


    # -- publishing -------------------------------------------------------------------------

    def _on_publish(self, m: BasicPublish, properties: bytes, body: bytes) -> None:
        if m.immediate:
            raise ConnectionFault(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - immediate=true",
                                  m.CLASS_ID, m.METHOD_ID)
        connection = self.connection
        self._check_write(m.exchange, m.routing_key)
        message = message_from_publish(
            m.exchange, m.routing_key, properties, body, now=self.broker.clock(),
            client=connection.name, user=connection.user,
        )
        if self.tx is not None:
            if m.exchange not in self.broker.exchanges:  # 404 now, not at commit
                raise NotFound(f"NOT_FOUND - no exchange '{m.exchange}' in vhost '/'")
            self._hold(lambda: self._route(m, message), len(body))
            return
        self._route(m, message)

    def _route(self, m: BasicPublish, message: Message) -> None:
        refused: list[Queue] = []
        result = PublishResult()
        reached = self.broker.exchanges.publish(m.exchange, m.routing_key, message,
                                                refused=refused, admit=self._writable(),
                                                result=result)
        if result.refusal is not None and not self.confirm:  # over the delayed limits
            raise PreconditionFailed(f"PRECONDITION_FAILED - {result.refusal}")
        if result.full is not None:
            self.connection.hold_back(result.full)  # queue_overflow "block"
        if not reached and m.mandatory:
            self.connection.send(encode_content(
                self.number,
                BasicReturn(reply_code=NO_ROUTE, reply_text="NO_ROUTE", exchange=m.exchange,
                            routing_key=m.routing_key),
                delivery_properties(message), message.payload, self.connection.frame_max,
            ))
        if self.confirm:
            self._published += 1
            # Refused by a queue (x-overflow reject-publish), or taken by nobody because
            # every backlog it reached was full (queue_overflow "drop-new"): a nack.
            if refused or result.refused:
                self.connection.confirm(self.number, BasicNack(delivery_tag=self._published,
                                                               requeue=False))
            else:
                self.connection.confirm(self.number, BasicAck(delivery_tag=self._published))

    # -- authorization (the ACL) ----------------------------------------------------------

    def _check_read(self, name: str) -> None:
        if not self.broker.security.may_read_queue(self.connection.client, name):
            raise AccessRefused(f"ACCESS_REFUSED - read access to queue '{name}' refused")

    def _readable(self, name: str) -> Queue:
        """The queue ``name`` (404 / 405 as ``lookup``), if the client may read it."""
        queue = self.broker.queues.lookup(name, self.connection)
        if queue.owner is not self.connection:
            self._check_read(queue.name)
        return queue

    def _check_write(self, exchange: str, routing_key: str) -> None:
        """A publish to the default exchange or ``amq.topic`` the client may not make:
        403 (through other exchanges ``_writable`` picks the queues). ``amq.topic`` is
        checked even without an ACL: its ``$`` topics are the server's."""
        security = self.broker.security
        client = self.connection.client
        if exchange == DEFAULT and security.acl is not None:
            if not security.may_write_queue(client, routing_key):
                raise AccessRefused(f"ACCESS_REFUSED - write access to queue "
                                    f"'{routing_key}' refused")
        elif exchange == AMQ_TOPIC:
            topic = routing_key_to_topic(routing_key)
            if topic is not None and not security.may_publish(client, topic):
                raise AccessRefused(f"ACCESS_REFUSED - write access to topic '{topic}' "
                                    f"refused")

    def _writable(self) -> Callable[[Queue], bool] | None:
        """The ACL's filter of the queues a publish may enter; None when all may."""
        security = self.broker.security
        if security.acl is None:
            return None
        client = self.connection.client
        return lambda queue: (queue.owner is self.connection
                              or security.may_write_queue(client, queue.name))

    def _on_confirm_select(self, m: ConfirmSelect) -> None:
        if self.tx is not None:
            raise PreconditionFailed("PRECONDITION_FAILED - cannot switch from tx to confirm "
                                     "mode")
        self.confirm = True
        if not m.nowait:
            self._reply(ConfirmSelectOk())

    # -- transactions -----------------------------------------------------------------------

    def _hold(self, action: Callable[[], None], size: int = 0) -> None:
        connection = self.connection
        assert self.tx is not None  # only called in a transaction
        if len(self.tx) >= MAX_TX_ACTIONS:
            raise PreconditionFailed(f"PRECONDITION_FAILED - more than {MAX_TX_ACTIONS} "
                                     "actions in one transaction")
        if connection.tx_bytes + size > MAX_TX_BYTES:
            raise PreconditionFailed(f"PRECONDITION_FAILED - transactions hold more than "
                                     f"{MAX_TX_BYTES} bytes")
        self.tx.append(action)
        self.tx_bytes += size
        connection.tx_bytes += size

    def _take_tx(self) -> list[Callable[[], None]]:
        """The open transaction's actions; the transaction starts again empty."""
        actions, self.tx = self.tx or [], []
        self.connection.tx_bytes -= self.tx_bytes
        self.tx_bytes = 0
        return actions

    def _on_tx_select(self, m: TxSelect) -> None:
        if self.confirm:
            raise PreconditionFailed("PRECONDITION_FAILED - cannot switch from confirm to tx "
                                     "mode")
        if self.tx is None:
            self.tx = []
        self._reply(TxSelectOk())

    def _on_tx_commit(self, m: TxCommit) -> None:
        if self.tx is None:
            raise PreconditionFailed("PRECONDITION_FAILED - channel is not transactional")
        for action in self._take_tx():
            action()
        self._reply(TxCommitOk())

    def _on_tx_rollback(self, m: TxRollback) -> None:
        if self.tx is None:
            raise PreconditionFailed("PRECONDITION_FAILED - channel is not transactional")
        self._take_tx()
        self._reply(TxRollbackOk())

    # -- flow and closing -------------------------------------------------------------------

    def _on_flow(self, m: ChannelFlow) -> None:
        self.active = m.active
        self._reply(ChannelFlowOk(active=m.active))
        if m.active:
            self.resume()

    def resume(self) -> None:
        """Room to deliver again: let the consumed queues dispatch."""
        for queue in {consumer.queue for consumer in self.consumers.values()}:
            queue.dispatch()
        self.shared.dispatch()

    def close_down(self) -> None:
        """The channel ends: its consumers go, every unacknowledged delivery goes back to
        its queue (redelivered, in its original place), an open transaction is dropped."""
        if self.tx is not None:
            self._take_tx()
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for consumer in consumers:
            consumer.queue.remove_consumer(consumer, settle=False)
        held = list(self.unacked.values())
        self.unacked.clear()
        self._settle_tags(held, positive=False, requeue=True)


def _unsupported(method: Method) -> ConnectionFault:
    if isinstance(method, ExchangeBind | ExchangeUnbind):  # not advertised
        code, name = NOT_IMPLEMENTED, "NOT_IMPLEMENTED"
    else:
        code, name = COMMAND_INVALID, "COMMAND_INVALID"
    return ConnectionFault(code, f"{name} - {method.NAME} is not supported here",
                           method.CLASS_ID, method.METHOD_ID)


_HANDLERS: dict[type, Callable[..., None]] = {
    ExchangeDeclare: Channel._on_exchange_declare,
    ExchangeDelete: Channel._on_exchange_delete,
    QueueDeclare: Channel._on_queue_declare,
    QueueBind: Channel._on_queue_bind,
    QueueUnbind: Channel._on_queue_unbind,
    QueuePurge: Channel._on_queue_purge,
    QueueDelete: Channel._on_queue_delete,
    BasicQos: Channel._on_qos,
    BasicConsume: Channel._on_consume,
    BasicCancel: Channel._on_cancel,
    BasicCancelOk: Channel._on_cancel_ok,
    BasicGet: Channel._on_get,
    BasicAck: Channel._on_ack,
    BasicReject: Channel._on_reject,
    BasicNack: Channel._on_nack,
    BasicRecover: Channel._on_recover,
    BasicRecoverAsync: Channel._on_recover,
    BasicPublish: Channel._on_publish,
    ConfirmSelect: Channel._on_confirm_select,
    TxSelect: Channel._on_tx_select,
    TxCommit: Channel._on_tx_commit,
    TxRollback: Channel._on_tx_rollback,
    ChannelFlow: Channel._on_flow,
}

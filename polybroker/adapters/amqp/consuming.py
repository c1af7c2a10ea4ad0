"""Consuming on an AMQP channel: consumers, deliveries, delivery tags, acknowledgements.

Part of ``channel.Channel`` (whose docstring states the rules), kept apart by concern.
Streams (``streams.StreamQueue``) follow RabbitMQ: a consumer must acknowledge
(``no_ack`` is 406) and have a prefetch bound (basic.qos before basic.consume, else
406); basic.consume takes ``x-stream-offset`` (first, last, next, an offset, an AMQP
timestamp, an interval such as ``1h``) and ``x-stream-consumer-name`` (the offset after
what it acknowledged is stored under that name and a consumer of the same name resumes
there); each delivery carries its offset in the ``x-stream-offset`` header; nack and
reject requeue nothing; basic.get is 540 NOT_IMPLEMENTED.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ...destinations import amqp_address
from ...message import Message
from ...protocols.amqp import (
    NOT_ALLOWED,
    BasicAck,
    BasicCancel,
    BasicCancelOk,
    BasicConsume,
    BasicConsumeOk,
    BasicGet,
    BasicGetEmpty,
    BasicGetOk,
    BasicNack,
    BasicQos,
    BasicQosOk,
    BasicRecover,
    BasicRecoverAsync,
    BasicRecoverOk,
    BasicReject,
    Method,
    decode_properties,
    encode_content,
    encode_deliver,
    encode_properties,
)
from ...queues import Queue, QueueEntry, SharedPrefetch
from ...refusals import PreconditionFailed
from ...streams import StreamQueue, parse_offset
from .channel_support import AMQPClientConnection, ConnectionFault
from .convert import delivery_properties

if TYPE_CHECKING:
    from ...broker import Broker

log = logging.getLogger("polybroker.amqp")


class AmqpConsumer:
    """One basic.consume: a consumer of its queue."""

    __slots__ = ("channel", "no_ack", "queue", "tag")

    def __init__(self, channel: Consuming, tag: str, queue: Queue, no_ack: bool) -> None:
        self.channel = channel
        self.tag = tag
        self.queue = queue
        self.no_ack = no_ack

    def __repr__(self) -> str:
        return f"AmqpConsumer({self.tag!r} on {self.queue.name!r})"

    def deliver_from_queue(self, queue: Queue, entry: QueueEntry, tag: int | None) -> None:
        self.channel.deliver(self, entry, tag)

    def has_credit(self) -> bool:
        return self.channel.can_deliver()

    def queue_deleted(self, queue: Queue) -> None:
        self.channel.cancelled_by_broker(self)


class Consuming:
    """The consuming half of a channel (mixed into ``channel.Channel``)."""

    connection: AMQPClientConnection
    broker: Broker
    number: int
    active: bool
    consumers: dict[str, AmqpConsumer]
    unacked: dict[int, tuple[Queue, int]]
    _next_tag: int
    prefetch: int
    shared: SharedPrefetch
    tx: list[Callable[[], None]] | None

    if TYPE_CHECKING:  # the channel's own
        @property
        def closing(self) -> bool: ...

        def _reply(self, method: Method) -> None: ...

        def _readable(self, name: str) -> Queue: ...

        def _queue_name(self, name: str, method: Method) -> str: ...

        def _hold(self, action: Callable[[], None], size: int = 0) -> None: ...

    # -- consuming --------------------------------------------------------------------------

    def _on_qos(self, m: BasicQos) -> None:
        self._reply(BasicQosOk())  # before the deliveries a larger bound lets through
        if m.global_:
            self.shared.set_limit(m.prefetch_count)
        else:
            self.prefetch = m.prefetch_count
            for consumer in list(self.consumers.values()):
                if not consumer.no_ack:
                    consumer.queue.set_prefetch(consumer, m.prefetch_count)

    def _on_consume(self, m: BasicConsume) -> None:
        queue = self._readable(self._queue_name(m.queue, m))
        tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
        if tag in self.consumers:
            raise ConnectionFault(NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag "
                                               f"'{tag}'", m.CLASS_ID, m.METHOD_ID)
        consumer = AmqpConsumer(self, tag, queue, m.no_ack)
        if isinstance(queue, StreamQueue):
            queue.add_consumer(
                consumer, prefetch=self.prefetch, dispatch=False, owner=self.connection,
                shared=self.shared, exclusive=m.exclusive, **self._stream_consume(queue, m),
            )
        else:
            queue.add_consumer(
                consumer, ack_required=not m.no_ack, prefetch=self.prefetch, dispatch=False,
                owner=self.connection, shared=self.shared, exclusive=m.exclusive,
            )
        self.consumers[tag] = consumer
        if not m.nowait:
            self._reply(BasicConsumeOk(consumer_tag=tag))
        self.connection.dispatch_later(queue)

    def _stream_consume(self, queue: StreamQueue, m: BasicConsume) -> dict[str, Any]:
        """The checked stream keywords of a basic.consume (406 when RabbitMQ refuses)."""
        if m.no_ack:
            raise PreconditionFailed(f"PRECONDITION_FAILED - consumer of stream queue "
                                     f"'{queue.name}' in vhost '/' must acknowledge (no_ack "
                                     f"is not supported)")
        if not self.prefetch and not self.shared.limit:
            raise PreconditionFailed(f"PRECONDITION_FAILED - consumer prefetch count is not "
                                     f"set for stream queue '{queue.name}' in vhost '/'")
        arguments = m.arguments or {}
        try:
            offset = parse_offset(arguments.get("x-stream-offset", "next"))
        except ValueError as exc:
            raise PreconditionFailed(f"PRECONDITION_FAILED - {exc}") from None
        name = arguments.get("x-stream-consumer-name")
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        if name is not None and (not isinstance(name, str) or not name):
            raise PreconditionFailed(f"PRECONDITION_FAILED - invalid x-stream-consumer-name "
                                     f"{name!r}")
        return {"offset": offset, "name": name}

    def _on_cancel(self, m: BasicCancel) -> None:
        consumer = self.consumers.pop(m.consumer_tag, None)
        if consumer is not None:
            # What it holds stays pending until settled or the channel closes.
            consumer.queue.remove_consumer(consumer, settle=False)
        if not m.nowait:
            self._reply(BasicCancelOk(consumer_tag=m.consumer_tag))

    def _on_cancel_ok(self, m: BasicCancelOk) -> None:
        """A client's answer to our basic.cancel: nothing to do."""

    def cancelled_by_broker(self, consumer: AmqpConsumer) -> None:
        """The consumer's queue was deleted: tell the client (consumer_cancel_notify)."""
        if self.consumers.get(consumer.tag) is not consumer:
            return
        del self.consumers[consumer.tag]
        if not self.closing:
            self._reply(BasicCancel(consumer_tag=consumer.tag, nowait=True))

    def can_deliver(self) -> bool:
        return self.active and not self.closing and self.connection.can_send()

    def deliver(self, consumer: AmqpConsumer, entry: QueueEntry, queue_tag: int | None) -> None:
        """basic.deliver of ``entry`` to ``consumer`` (the queue's consumer callback)."""
        queue = consumer.queue
        tag = self._take_tag(queue, queue_tag)
        message = entry.message
        exchange, routing_key = amqp_address(message, queue.name)
        try:
            data = encode_deliver(
                self.number, consumer.tag, tag, entry.redelivered, exchange, routing_key,
                stream_properties(message, entry.seq) if isinstance(queue, StreamQueue)
                else delivery_properties(message), message.payload, self.connection.frame_max,
            )
        except ValueError:  # a topic longer than a routing key may be
            log.warning("client %s: message on %s dropped: its routing key is too long for "
                        "AMQP", self.connection.name, message.topic[:80])
            self._settle_now(tag, positive=True)
            return
        self.connection.send(data)

    def _take_tag(self, queue: Queue, queue_tag: int | None) -> int:
        tag = self._next_tag
        self._next_tag += 1
        if queue_tag is not None:
            self.unacked[tag] = (queue, queue_tag)
        return tag

    def _on_get(self, m: BasicGet) -> None:
        queue = self._readable(self._queue_name(m.queue, m))
        got = queue.get(None if m.no_ack else self)
        if got is None:
            self._reply(BasicGetEmpty())
            return
        entry, queue_tag = got
        tag = self._take_tag(queue, queue_tag)
        message = entry.message
        exchange, routing_key = amqp_address(message, queue.name)
        get_ok = BasicGetOk(delivery_tag=tag, redelivered=entry.redelivered, exchange=exchange,
                            routing_key=routing_key, message_count=queue.message_count)
        self.connection.send(encode_content(
            self.number, get_ok, delivery_properties(message), message.payload,
            self.connection.frame_max,
        ))

    # -- acknowledgements -------------------------------------------------------------------

    def _on_ack(self, m: BasicAck) -> None:
        self._settle(m, m.delivery_tag, m.multiple, positive=True, requeue=False)

    def _on_reject(self, m: BasicReject) -> None:
        self._settle(m, m.delivery_tag, False, positive=False, requeue=m.requeue)

    def _on_nack(self, m: BasicNack) -> None:
        self._settle(m, m.delivery_tag, m.multiple, positive=False, requeue=m.requeue)

    def _settle(self, m: Method, tag: int, multiple: bool, *, positive: bool,
                requeue: bool) -> None:
        if self.tx is not None:
            self._check_tag(tag, multiple)
            self._hold(lambda: self._settle_tags(self._take_tags(tag, multiple), positive,
                                                 requeue))
            return
        self._settle_tags(self._take_tags(tag, multiple), positive, requeue)

    def _check_tag(self, tag: int, multiple: bool) -> None:
        if not (multiple and tag == 0) and tag not in self.unacked:
            raise PreconditionFailed(f"PRECONDITION_FAILED - unknown delivery tag {tag}")

    def _take_tags(self, tag: int, multiple: bool) -> list[tuple[Queue, int]]:
        self._check_tag(tag, multiple)
        if not multiple:
            return [self.unacked.pop(tag)]
        taken = []
        for held in list(self.unacked):
            if tag and held > tag:
                break
            taken.append(self.unacked.pop(held))
        return taken

    def _settle_now(self, tag: int, positive: bool) -> None:
        held = self.unacked.pop(tag, None)
        if held is not None:
            self._settle_tags([held], positive, requeue=False)

    @staticmethod
    def _settle_tags(held: list[tuple[Queue, int]], positive: bool, requeue: bool) -> None:
        by_queue: dict[Queue, list[int]] = {}
        for queue, queue_tag in held:
            by_queue.setdefault(queue, []).append(queue_tag)
        for queue, tags in by_queue.items():
            if positive:
                queue.ack_many(tags)
            else:
                queue.nack_many(tags, requeue=requeue)

    def _on_recover(self, m: BasicRecover | BasicRecoverAsync) -> None:
        """Put every unacknowledged delivery back (redelivered), whatever ``requeue``."""
        self._settle_tags(self._take_tags(0, True), positive=False, requeue=True)
        if isinstance(m, BasicRecover):
            self._reply(BasicRecoverOk())


def stream_properties(message: Message, offset: int) -> bytes:
    """A stream delivery's properties: the message's, with its offset in the
    ``x-stream-offset`` header (as RabbitMQ sends it)."""
    props = decode_properties(delivery_properties(message))
    headers = {**(props.headers or {}), "x-stream-offset": offset}
    return encode_properties(replace(props, headers=headers))

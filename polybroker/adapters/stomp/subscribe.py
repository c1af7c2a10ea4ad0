"""STOMP SUBSCRIBE, UNSUBSCRIBE, ACK and NACK: every subscription is a consumer of a
queue (a named one, or its own bound to a topic filter)."""

from functools import partial
from typing import Any

from ...protocols.stomp import V1_2, Frame
from ...refusals import Refused
from ...stats import Holdings
from ...streams import queue_for_subscription
from .consumer import Delivering
from .state import StompSubscription, error, log
from .transactions import Transactions

MAX_SUBSCRIPTIONS = 1000  # per connection
PREFETCH_HEADERS = ("prefetch-count", "activemq.prefetchSize")
MAX_PREFETCH = 2**31 - 1


class Subscribing(Transactions, Delivering):
    """The subscriptions of one connection."""

    def _on_subscribe(self, frame: Frame) -> bool:
        version = self.conn.version
        sub_id = frame.get("id")
        if sub_id is None:  # 1.0 only (the connection requires it from 1.1 on)
            sub_id = frame.get("destination", "")  # required by the codec
        if sub_id in self.subscriptions:
            raise error(frame, f"subscription id {sub_id!r} already in use [SUBSCRIBE id Header]")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise error(frame, f"more than {MAX_SUBSCRIPTIONS} subscriptions on one connection")
        destination = self._destination(frame, subscribe=True)
        security, name = self.broker.security, destination.name
        if not (security.may_read_queue(self.client, name) if destination.is_queue
                else security.may_subscribe(self.client, name)):
            raise error(frame, f"access refused: SUBSCRIBE to {destination.wire}")
        prefetch = _prefetch(frame)
        ack_mode = frame.get("ack", "auto")
        stream: dict[str, Any] = {}
        if destination.is_queue:
            try:  # x-queue-type: stream declares a stream; x-stream-* say where to read
                queue, stream = queue_for_subscription(
                    self.broker.queues, destination.name, frame.get,
                    acknowledged=ack_mode != "auto", prefetch=prefetch)
            except (ValueError, Refused) as exc:
                raise error(frame, f"SUBSCRIBE to {destination.wire}: {exc}") from None
            if queue.owner is not None:  # an AMQP exclusive queue (0-9-1: 405 for others)
                raise error(frame, f"resource locked: {destination.wire} is exclusive to "
                                    f"another connection")
        else:
            queue = self.broker.topic_queue(f"stomp:{self.session_id}:{sub_id}", destination.name)
        sub = StompSubscription(self, sub_id, destination, ack_mode, queue)
        self.subscriptions[sub_id] = sub
        queue.add_consumer(sub, ack_required=ack_mode != "auto", prefetch=prefetch, dispatch=False,
                           **stream)
        self._to_dispatch.append(queue)
        log.debug("client %s: subscribed %r to %s (ack %s, prefetch %d, STOMP %s)",
                  self.name, sub_id, destination.wire, ack_mode, prefetch, version)
        return True

    def holdings(self) -> Holdings:
        """The subscriptions, for the management API (``stats.HoldsConsumers``)."""
        held = Holdings()
        for sub in list(self.subscriptions.values()):
            held.consumers.append({"id": sub.id, "destination": sub.destination.wire,
                                   "queue": sub.queue.name,
                                   "unacknowledged": len(sub.pending)})
            if sub.private:
                held.queued += sub.queue.message_count
                held.private_queues.append(sub.queue)
            held.inflight += len(sub.pending)
        return held

    def _on_unsubscribe(self, frame: Frame) -> bool:
        sub_id = frame.get("id")
        if sub_id is not None:
            sub = self.subscriptions.get(sub_id)
        else:  # 1.0 may name the destination instead
            wire = frame.get("destination")
            sub = next((s for s in self.subscriptions.values() if s.destination.wire == wire), None)
        if sub is None:
            raise error(frame, f"no subscription {sub_id or frame.get('destination')!r} "
                                "to remove [UNSUBSCRIBE]")
        del self.subscriptions[sub.id]
        self._cancel(sub)
        return True

    def _cancel(self, sub: StompSubscription) -> None:
        """End a subscription: its unacknowledged messages go back to the queue."""
        for message_id in sub.pending:
            self._unacked.pop(message_id, None)
        sub.pending.clear()
        if sub.private:
            self.broker.end_topic_queue(sub.destination.name, sub.queue)
        sub.queue.remove_consumer(sub, requeue=not sub.private)

    def _on_ack(self, frame: Frame) -> bool:
        return self._acknowledge(frame, True)

    def _on_nack(self, frame: Frame) -> bool:
        return self._acknowledge(frame, False)

    def _acknowledge(self, frame: Frame, positive: bool) -> bool:
        command = frame.command
        version = self.conn.version
        id_header = "id" if version == V1_2 else "message-id"
        message_id = frame.get(id_header, "")  # required by the codec
        sub = self._unacked.get(message_id)
        if sub is None:
            raise error(frame, f"{command} of {id_header} {message_id!r}: no such message "
                                f"awaits acknowledgement [{command}]")
        named = frame.get("subscription")
        if version != V1_2 and named is not None and named != sub.id:
            raise error(frame, f"{command}: message {message_id!r} did not come through "
                                f"subscription {named!r} [{command}]")
        requeue = frame.get("requeue", "true") != "false"
        action = partial(self._settle, sub, message_id, positive, requeue)
        if not self._in_transaction(frame, action):
            action()
        return True

    def _settle(self, sub: StompSubscription, message_id: str, positive: bool,
                requeue: bool) -> None:
        if message_id not in sub.pending:
            return  # settled since (a transaction's ACK after a cumulative one)
        tags = []
        for pending_id, tag in sub.take(message_id):  # cumulative in client mode
            del self._unacked[pending_id]
            tags.append(tag)
        if positive:
            sub.queue.ack_many(tags)
        else:
            sub.queue.nack_many(tags, requeue=requeue)


def _prefetch(frame: Frame) -> int:
    for name in PREFETCH_HEADERS:
        value = frame.get(name)
        if value is None:
            continue
        if not (value.isascii() and value.isdigit()) or int(value) > MAX_PREFETCH:
            raise error(frame, f"invalid {name} header {value[:20]!r}")
        return int(value)
    return 0



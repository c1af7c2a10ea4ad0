"""STOMP SEND: access, a topic's router or a queue, the store's answer, queue_overflow
"block"."""

from ...delayed import QUEUE, TO_TOPIC, Target, stomp_delay
from ...destinations import Destination
from ...journal import StoreFull
from ...message import Message
from ...overflow import Backlog, PublishResult, excluding_own
from ...protocols.stomp import Frame, ProtocolError
from .state import RESERVED_HEADERS, error, log
from .transactions import Transactions


class Sending(Transactions):
    """SEND frames of one connection."""

    def _on_send(self, frame: Frame) -> bool:
        self.runner.info.messages_in += 1
        if self.throttle is not None:
            self.throttle.count()
        destination = self._destination(frame, subscribe=False)
        security, name = self.broker.security, destination.name
        if not (security.may_write_queue(self.client, name) if destination.is_queue
                else security.may_publish(self.client, name)):
            raise error(frame, f"access refused: SEND to {destination.wire}")
        if not self._in_transaction(frame, lambda: self._publish(destination, frame)):
            self._publish(destination, frame)
        return True

    def _publish(self, destination: Destination, frame: Frame) -> None:
        headers = tuple((k, v) for k, v in frame.headers if k not in RESERVED_HEADERS)
        message = Message(
            destination.name, frame.body, qos=1, content_type=frame.get("content-type"),
            headers=headers, origin_protocol="stomp", origin_client=self.session_id,
        )
        try:
            delay = stomp_delay(frame.headers)  # AMQ_SCHEDULED_DELAY, delay, x-delay (ms)
        except ValueError as exc:
            raise error(frame, str(exc)) from None
        if delay is not None:  # held by the core until due (``delayed``), recorded
            target = (Target(QUEUE, destination.name, persistent=frame.get("persistent")
                             == "true") if destination.is_queue else TO_TOPIC)
            result = self.broker.delayed.schedule(message, delay, target, self.name)
            if result.refusal is not None:
                raise error(frame, result.refusal)
        elif destination.is_queue:
            queue = self.broker.queues.declare(destination.name)
            # persistent:true: recorded in the store (``persistence``), kept across a restart.
            persistent = frame.get("persistent") == "true"
            try:
                with self.broker.storing():
                    outcome = queue.offer(message, 1, persistent=persistent)
            except StoreFull:
                raise ProtocolError("message not stored: storage failure") from None
            result = PublishResult(1)
            if outcome:
                result.note(outcome, queue)
        else:
            result = self.broker.publish(message)
        if result.full is not None:
            self._hold_back(result.full)
        if result.refused and frame.get("receipt") is not None:
            # queue_overflow "drop-new": no RECEIPT for a message nobody took; STOMP's
            # only other answer is an ERROR (and the close that follows it).
            raise error(frame, f"message to {destination.wire} dropped: queue full")

    def _hold_back(self, full: list[Backlog]) -> None:
        """Withhold this client's RECEIPTs and stop reading from it until the backlogs
        its message filled have room. Its own subscriptions are not waited for (it could
        not send their ACKs meanwhile): they drop new messages until they have room."""
        own = (sub.queue for sub in self.subscriptions.values())
        waiting = excluding_own(full, own, self.name, "its own subscription's queue", log)
        if waiting:
            self.runner.hold_back(waiting)


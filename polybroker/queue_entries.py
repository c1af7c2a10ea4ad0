"""What a named queue holds (``QueueEntry``), the names of its overflow policies and
dead-letter reasons, and the rule for queue names (``queues``)."""

from dataclasses import dataclass

from .message import Message

DROP_NEW = "drop-new"
DROP_HEAD = "drop-head"
BLOCK = "block"
OVERFLOW_POLICIES = (DROP_NEW, DROP_HEAD, BLOCK)
# limits.queue_overflow -> a queue's overflow policy
QUEUE_OVERFLOW = {"drop-new": DROP_NEW, "drop-oldest": DROP_HEAD, "block": BLOCK}
# x-overflow values (AMQP's own length bounds)
REJECT_PUBLISH, REJECT_PUBLISH_DLX = "reject-publish", "reject-publish-dlx"
LIMIT_OVERFLOWS = (DROP_HEAD, REJECT_PUBLISH, REJECT_PUBLISH_DLX)
REJECTED, EXPIRED, MAXLEN = "rejected", "expired", "maxlen"  # dead-letter reasons
MAX_NAME_BYTES = 255  # AMQP's short string; STOMP has no limit of its own


@dataclass(slots=True, eq=False)
class QueueEntry:
    """One message in one queue."""

    message: Message
    seq: int  # arrival order in the queue; requeued entries go back by it
    persistent: bool = False  # kept by the store (a persistent message in a durable queue)
    redelivered: bool = False  # handed out before and requeued
    deliveries: int = 0  # times handed out (dead-lettering will bound it)
    rejected_by: object = None  # the consumer that last nacked it: another is preferred
    marked: bool = False  # the store knows it was handed out (``QueueStore.delivered``)
    expires_at: float | None = None  # the message's expiry or the queue's TTL, the first


def check_queue_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name a queue in every protocol."""
    if not name:
        raise ValueError("empty queue name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"queue name longer than {MAX_NAME_BYTES} bytes")
    if "\0" in name:
        raise ValueError("NUL in queue name")


def _by_seq(entry: QueueEntry) -> int:
    return entry.seq

"""STOMP destinations and how they map onto the broker core.

- ``/topic/<name>`` is the shared topic space, as MQTT sees it: ``<name>`` is the
  MQTT topic with its slashes kept, so ``/topic/a/b`` is MQTT ``a/b`` in both
  directions. A SUBSCRIBE may use MQTT's wildcards on the same trie: ``/topic/a/+``
  (one level) and ``/topic/a/#`` (this level and all below); a SEND may not. Dots are
  ordinary characters (this is not RabbitMQ's ``/topic/a.b`` convention).
- ``/queue/<name>`` is the named queue ``<name>`` of ``broker.queues``, the same
  queue AMQP will call ``<name>``. Queues are not in the topic space.
- Any other destination is refused.

A MESSAGE frame's destination is ``/topic/`` followed by the topic the message was
published to (not the subscription's filter), or the queue's destination.
"""

from dataclasses import dataclass

from .protocols.mqtt.topics import is_valid_topic_filter, is_valid_topic_name
from .queues import check_queue_name
from .shared import SHARE_PREFIX

TOPIC_PREFIX = "/topic/"
QUEUE_PREFIX = "/queue/"


class DestinationError(ValueError):
    """A destination the broker does not serve; the message says why."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A parsed destination: a topic (name or filter) or a queue name."""

    is_queue: bool
    name: str

    @property
    def wire(self) -> str:
        return (QUEUE_PREFIX if self.is_queue else TOPIC_PREFIX) + self.name


def parse_destination(value: str, *, subscribe: bool = False) -> Destination:
    """Parse a SEND (``subscribe=False``) or SUBSCRIBE destination header.

    Raises DestinationError for an unknown prefix, an empty name, a wildcard in a
    SEND's topic, an invalid filter or a queue name no protocol can carry.
    """
    if value.startswith(TOPIC_PREFIX):
        topic = value[len(TOPIC_PREFIX):]
        if subscribe:
            if not is_valid_topic_filter(topic):
                raise DestinationError(f"invalid topic filter {topic[:60]!r}")
            if topic.startswith(SHARE_PREFIX):
                raise DestinationError(
                    "shared subscriptions are MQTT's; use /queue/<name> for competing consumers"
                )
        elif not is_valid_topic_name(topic):
            raise DestinationError(f"invalid topic {topic[:60]!r} (empty, or with + or #)")
        return Destination(False, topic)
    if value.startswith(QUEUE_PREFIX):
        name = value[len(QUEUE_PREFIX):]
        try:
            check_queue_name(name)
        except ValueError as exc:
            raise DestinationError(f"invalid queue name: {exc}") from None
        return Destination(True, name)
    raise DestinationError(
        f"unknown destination {value[:60]!r}: use /topic/<name> or /queue/<name>"
    )


def topic_destination(topic: str) -> str:
    """The destination of a message published to ``topic`` (MQTT form)."""
    return TOPIC_PREFIX + topic

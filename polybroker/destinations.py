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

AMQP meets the same topic space through the predeclared exchange ``amq.topic``: its
routing keys are MQTT topics written with dots. The one mapping, both ways:

- A routing key's words (split at ``.``) are the topic's levels (joined by ``/``):
  publishing to ``amq.topic`` with key ``cmd.dev1`` is a broker publish on MQTT topic
  ``cmd/dev1`` (MQTT subscribers and STOMP ``/topic/cmd/dev1`` get it).
- A binding key on ``amq.topic`` becomes a filter in the broker's router: ``*`` (one
  word) is ``+``, ``#`` (any number of words) is ``#``; ``sensors.*`` is ``sensors/+``,
  so an MQTT publish to ``sensors/t1`` reaches a queue bound with ``sensors.*``.
- A message that entered from the topic space reaches an AMQP consumer with routing
  key = its topic with ``/`` written as ``.`` (a dot inside an MQTT level stays a dot:
  that rendered key is informative only, nothing routes by it).

What cannot cross, so that nothing escapes into a wrong topic:

- A routing key with ``/``, ``+``, ``#`` or NUL in it, an empty key, or one whose MQTT
  topic would be invalid (over 65535 bytes) routes nowhere on ``amq.topic`` (an
  unroutable publish: basic.return for a mandatory one). A key starting with ``$``
  names a ``$`` topic, which is the server's: refused like an ACL denial (403; STOMP
  SEND to ``/topic/$...``: ERROR) unless the ACL names it, ``$SYS`` always
  (``Security.may_publish``).
- A binding key on ``amq.topic`` must map onto an MQTT filter: no ``/``, ``+`` or NUL in
  it, ``*`` and ``#`` only as whole words, ``#`` only as the last word, not empty.
  Anything else is refused with 406 PRECONDITION_FAILED (other topic exchanges accept
  every AMQP pattern, ``#`` anywhere included: they do not share the topic space).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .protocols.mqtt.topics import is_valid_topic_filter, is_valid_topic_name
from .queues import check_queue_name
from .shared import SHARE_PREFIX

if TYPE_CHECKING:
    from .message import Message

TOPIC_PREFIX = "/topic/"
QUEUE_PREFIX = "/queue/"
AMQ_QUEUE_PREFIX = "/amq/queue/"


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
    if value.startswith((QUEUE_PREFIX, AMQ_QUEUE_PREFIX)):  # RabbitMQ's name for one too
        name = value[len(QUEUE_PREFIX if value.startswith(QUEUE_PREFIX) else AMQ_QUEUE_PREFIX):]
        try:
            check_queue_name(name)
        except ValueError as exc:
            raise DestinationError(f"invalid queue name: {exc}") from None
        return Destination(True, name)
    raise DestinationError(
        f"unknown destination {value[:60]!r}: use /topic/<name> or /queue/<name>"
    )


AMQ_TOPIC = "amq.topic"
_NOT_IN_KEYS = ("/", "+", "#", "\0")


def routing_key_to_topic(routing_key: str) -> str | None:
    """The MQTT topic a publish to ``amq.topic`` with ``routing_key`` goes to; None if
    the key cannot name a topic (it then routes nowhere)."""
    if not routing_key or any(c in routing_key for c in _NOT_IN_KEYS):
        return None
    topic = routing_key.replace(".", "/")
    if len(topic.encode()) > 65535:
        return None
    return topic


def binding_key_to_filter(binding_key: str) -> str | None:
    """The router filter of a binding on ``amq.topic``; None if the key has no MQTT
    equivalent (the binding is refused)."""
    if not binding_key or "/" in binding_key or "+" in binding_key or "\0" in binding_key:
        return None
    words = binding_key.split(".")
    levels = []
    for index, word in enumerate(words):
        if word == "*":
            levels.append("+")
        elif word == "#":
            if index != len(words) - 1:
                return None
            levels.append("#")
        elif "#" in word or "*" in word:
            return None
        else:
            levels.append(word)
    topic_filter = "/".join(levels)
    if len(topic_filter.encode()) > 65535 or not is_valid_topic_filter(topic_filter):
        return None
    return topic_filter


def topic_to_routing_key(topic: str) -> str:
    """The routing key an AMQP consumer sees for a message published on MQTT ``topic``."""
    return topic.replace("/", ".")


def amqp_address(message: "Message", queue_name: str) -> tuple[str, str]:
    """(exchange, routing key) of a basic.deliver / basic.get-ok for ``message`` taken
    from queue ``queue_name``: where an AMQP publisher sent it; ``amq.topic`` and the
    dotted topic for a message from the topic space (MQTT, STOMP ``/topic/``); the
    default exchange and the queue's name for a STOMP ``/queue/`` send."""
    if message.amqp is not None:
        return message.amqp.exchange, message.amqp.routing_key
    if message.origin_protocol == "stomp" and message.topic == queue_name:
        return "", queue_name
    return AMQ_TOPIC, topic_to_routing_key(message.topic)


def topic_destination(topic: str) -> str:
    """The destination of a message published to ``topic`` (MQTT form)."""
    return TOPIC_PREFIX + topic

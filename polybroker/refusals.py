"""Refusals of the broker core, in AMQP 0-9-1's reply-code vocabulary.

The core raises these when a request cannot be honoured (a missing exchange, another
connection's exclusive queue, a redeclaration that does not match); the AMQP adapter
answers with channel.close carrying ``code`` and ``str(exc)`` as the reply text. Other
protocols may map them to their own errors (STOMP ERROR, MQTT reason codes).
"""

__all__ = [
    "AccessRefused", "CommandInvalid", "NotFound", "PreconditionFailed", "Refused",
    "ResourceLocked",
]


class Refused(Exception):
    """A request the core refuses; ``code`` is the AMQP reply code."""

    code = 541  # INTERNAL_ERROR: only the subclasses are raised

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class AccessRefused(Refused):
    """403: not allowed (the default exchange, reserved ``amq.`` names, internal exchanges)."""

    code = 403


class NotFound(Refused):
    """404: no such exchange or queue."""

    code = 404


class ResourceLocked(Refused):
    """405: the queue is exclusive to another connection."""

    code = 405


class PreconditionFailed(Refused):
    """406: a redeclaration that differs, a delete whose condition does not hold, a bad
    argument."""

    code = 406


class CommandInvalid(Refused):
    """503: a request no server could honour (an unknown exchange type); AMQP makes this a
    connection error (connection.close), not a channel error."""

    code = 503

"""AMQP 0-9-1 connection negotiation: what connection.start offers, how start-ok is
checked, and how tune-ok's answers are taken.

The capabilities are the ones the clients read (pika refuses publisher confirms
without both ``publisher_confirms`` and ``basic.nack``; py-amqp echoes
``consumer_cancel_notify`` and ``authentication_failure_close`` only if offered);
nothing is offered that the broker does not do.
"""

import platform

from .. import __version__
from ..config import AmqpSettings
from ..protocols.amqp import (
    MECHANISMS,
    ConnectionStart,
    ConnectionStartOk,
    ConnectionTune,
    ConnectionTuneOk,
    sasl_credentials,
)

PRODUCT = "polybroker"
CAPABILITIES = (
    "publisher_confirms", "basic.nack", "consumer_cancel_notify",
    "authentication_failure_close", "per_consumer_qos",
)
LOCALE = "en_US"
MIN_FRAME_MAX = 4096  # every peer must accept frames this large (4.2.3)


def connection_start() -> ConnectionStart:
    """connection.start: version 0-9, server properties, PLAIN and AMQPLAIN, en_US."""
    return ConnectionStart(
        version_major=0, version_minor=9,
        server_properties={
            "product": PRODUCT,
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "copyright": "polybroker authors",
            "information": "Licensed under the Apache License 2.0",
            "capabilities": dict.fromkeys(CAPABILITIES, True),
        },
        mechanisms=MECHANISMS,
        locales=LOCALE.encode(),
    )


def credentials(start_ok: ConnectionStartOk) -> tuple[str, str] | None:
    """(user, password) of a start-ok; None for an unknown mechanism or an unreadable
    response (answered like a wrong password: 403)."""
    if start_ok.mechanism.encode() not in MECHANISMS.split():
        return None
    return sasl_credentials(start_ok.mechanism, start_ok.response)


def connection_tune(settings: AmqpSettings) -> ConnectionTune:
    return ConnectionTune(channel_max=settings.channel_max, frame_max=settings.frame_max,
                          heartbeat=settings.heartbeat)


def negotiated(settings: AmqpSettings, tune_ok: ConnectionTuneOk) -> tuple[int, int, int]:
    """(channel_max, frame_max, heartbeat) from the client's tune-ok.

    The client may lower what we proposed, never raise it (0 means "no limit" and takes
    ours); its heartbeat answer is taken as it is (0 turns heartbeats off). A frame_max
    below 4096 is raised ValueError (the connection is closed with 530)."""
    channel_max = tune_ok.channel_max or settings.channel_max
    channel_max = min(channel_max, settings.channel_max)
    frame_max = tune_ok.frame_max or settings.frame_max
    if frame_max < MIN_FRAME_MAX:
        raise ValueError(f"frame_max {frame_max} is below {MIN_FRAME_MAX}")
    frame_max = min(frame_max, settings.frame_max)
    return channel_max, frame_max, tune_ok.heartbeat

"""AMQP 0-9-1 connection negotiation: what connection.start and connection.tune offer
(how the client's answers are taken is the protocol's: ``protocols.amqp.connection``).

The capabilities are the ones the clients read (pika refuses publisher confirms
without both ``publisher_confirms`` and ``basic.nack``; py-amqp echoes
``consumer_cancel_notify`` and ``authentication_failure_close`` only if offered);
nothing is offered that the broker does not do.
"""

import platform

from ... import __version__
from ...config import AmqpSettings
from ...protocols.amqp import (
    MECHANISMS,
    ConnectionStart,
    ConnectionTune,
)

PRODUCT = "polybroker"
CAPABILITIES = (
    "publisher_confirms", "basic.nack", "consumer_cancel_notify",
    "authentication_failure_close", "per_consumer_qos",
)
LOCALE = "en_US"


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


def connection_tune(settings: AmqpSettings) -> ConnectionTune:
    return ConnectionTune(channel_max=settings.channel_max, frame_max=settings.frame_max,
                          heartbeat=settings.heartbeat)

"""The AMQP 0-9-1 adapter, by concern: ``connection`` (the connection's events, the
login, its life cycle), ``channel`` (one channel: exchanges, queues, consumers,
deliveries, publishes, confirms, transactions), ``convert`` (AMQP contents and the
core's Message), ``negotiation`` (what connection.start and connection.tune offer)."""

from .connection import (
    CLOSE_TIMEOUT,
    HEARTBEAT_TOLERANCE,
    AMQPClientConnection,
    serve_amqp,
)

__all__ = ["CLOSE_TIMEOUT", "HEARTBEAT_TOLERANCE", "AMQPClientConnection", "serve_amqp"]

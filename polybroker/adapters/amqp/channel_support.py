"""What an AMQP channel uses of its connection, and the fault that closes the connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ...protocols.amqp import Method
from ...queues import Queue

if TYPE_CHECKING:
    from ...auth import Client
    from ...broker import Broker
    from ...overflow import Backlog
    from ...protocols.amqp.connection import AMQPConnection


class AMQPClientConnection(Protocol):
    """What a channel uses of its connection (``connection.AMQPClientConnection``)."""

    amqp: AMQPConnection
    broker: Broker
    client: Client
    user: str | None
    tx_bytes: int  # message bodies held by open transactions, all channels

    @property
    def name(self) -> str: ...

    @property
    def frame_max(self) -> int: ...

    def can_send(self) -> bool: ...

    def send(self, data: bytes) -> None: ...

    def send_method(self, channel: int, method: Method) -> None: ...

    def confirm(self, channel: int, method: Method) -> None: ...

    def close_channel(self, number: int, method: Method) -> None: ...

    def dispatch_later(self, queue: Queue) -> None: ...

    def hold_back(self, full: list[Backlog]) -> None: ...


class ConnectionFault(Exception):
    """Close the connection with connection.close(code, text, class_id, method_id)."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

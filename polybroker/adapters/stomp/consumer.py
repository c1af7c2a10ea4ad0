"""Deliveries to a STOMP client: MESSAGE frames, the send buffer's bound."""

from ...destinations import topic_destination
from ...message import Message
from ...protocols.stomp import V1_2, Frame, encode_frame, encode_message
from ...queues import QueueEntry
from ...streams import StreamQueue
from .state import RESERVED_HEADERS, ClientState, StompSubscription, log

_REDELIVERED = (("redelivered", "true"),)


class Delivering(ClientState):
    """MESSAGE frames to one connection."""

    def can_send(self) -> bool:
        """Whether a delivery may be written now; when not, the queues wait for the
        writer to drain the buffer (``sent``)."""
        if self.runner.finished:
            return False
        if self.conn.pending_bytes < self.limits.max_outgoing_bytes:
            return True
        self._starved = True
        return False

    def sent(self) -> None:
        if self._starved:
            self._starved = False
            for sub in list(self.subscriptions.values()):
                sub.queue.dispatch()

    def send_message(self, sub: StompSubscription, entry: QueueEntry, tag: int | None) -> None:
        """Write one MESSAGE frame (the queue's consumer callback)."""
        self._message_count += 1
        message_id = f"{self.session_id}-{self._message_count}"
        message = entry.message
        destination = sub.destination.wire if sub.destination.is_queue else topic_destination(
            message.topic)
        headers = _message_headers(message)
        if isinstance(sub.queue, StreamQueue):
            headers += (("x-stream-offset", str(entry.seq)),)
        if entry.redelivered:
            headers = _REDELIVERED + headers
        ack = message_id if tag is not None and self.conn.version == V1_2 else None
        data = self._encode(destination, message_id, sub.id, headers, message.payload, ack)
        if data is None:
            log.warning("client %s: message to %s dropped: STOMP %s cannot carry its "
                        "destination", self.name, destination, self.conn.version)
            if tag is not None:
                sub.queue.ack(tag)
            return
        self.conn.send_bytes(data)
        self.runner.info.messages_out += 1
        if tag is not None:
            sub.pending[message_id] = tag
            self._unacked[message_id] = sub
        self.runner.wake()

    def _encode(self, destination: str, message_id: str, sub_id: str,
                headers: tuple[tuple[str, str], ...], body: bytes, ack: str | None) -> bytes | None:
        version = self.conn.version
        assert version is not None  # connected
        try:
            return encode_message(destination, message_id, sub_id, headers, body, version, ack)
        except ValueError:
            pass
        # A header this version cannot carry (LF in 1.0, CR in 1.1): leave it out.
        headers = tuple(h for h in headers if _encodable(h, version))
        try:
            return encode_message(destination, message_id, sub_id, headers, body, version, ack)
        except ValueError:
            return None


def _message_headers(message: Message) -> tuple[tuple[str, str], ...]:
    """A message's headers as a MESSAGE frame carries them, computed once per message."""
    headers = message.wire_cache.get("stomp-headers")
    if headers is None:
        pairs = [(k, v) for k, v in message.headers if k and k not in RESERVED_HEADERS]
        if message.content_type is not None:
            pairs.insert(0, ("content-type", message.content_type))
        headers = message.wire_cache["stomp-headers"] = tuple(pairs)
    return headers


def _encodable(header: tuple[str, str], version: str) -> bool:
    try:
        encode_frame(Frame("SEND", (header,)), version)
    except ValueError:
        return False
    return True



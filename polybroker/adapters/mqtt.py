"""MQTT adapter: one connection's packets in, broker core calls out, and back.

Two tasks per connection: the reader parses whatever one receive returns and
handles every packet in it synchronously (no task switch per message); the writer
sends whatever the connection has buffered, so all deliveries made to a connection
between two of its writes go out in one system call.
"""

import logging
import math

import trio

from ..broker import Broker
from ..message import Message
from ..protocols.mqtt import (
    CONNACK_IDENTIFIER_REJECTED,
    MQTT_3_1,
    ConnAck,
    Connect,
    Disconnect,
    MQTTError,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ServerConnection,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode_publish,
)
from ..sessions import Session

log = logging.getLogger("polybroker.mqtt")

RECEIVE_SIZE = 65536
MAX_QOS = 2
# Seconds the closing handshake of the transport (TLS close_notify, WebSocket close)
# may take before the connection is dropped regardless.
CLOSE_TIMEOUT = 2.0


class MQTTClientConnection:
    """Serves one MQTT client over one stream; also the session's link to that client."""

    def __init__(
        self, stream: trio.abc.Stream, broker: Broker, peer: str, identity: str | None = None
    ) -> None:
        self.stream = stream
        self.broker = broker
        self.limits = broker.limits
        self.peer = peer
        # The client certificate's name (use_identity_as_username), for authentication.
        self.identity = identity
        self.conn = ServerConnection(max_packet_size=self.limits.max_packet_size)
        self.client_id: str | None = None
        self.session: Session | None = None
        self.will: Message | None = None
        self.keep_alive = 0
        self.qos0_dropped = 0
        self._taken_over = False
        self._closing = False
        self._wakeup = trio.Event()
        self._read_scope = trio.CancelScope()

    @property
    def name(self) -> str:
        return f"{self.client_id or '<no id>'} ({self.peer})"

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                try:
                    with self._read_scope:
                        await self._read_loop()
                finally:
                    self._end()
                    self._closing = True
                    self._wakeup.set()
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.stream.aclose()  # closed even when cancelled, as trio promises

    # -- I/O loops ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        deadline = trio.current_time() + self.limits.connect_timeout
        while True:
            data = b""
            with trio.move_on_at(deadline):
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    log.info("client %s: connection lost", self.name)
                    return
                if not data:
                    log.info("client %s: closed the connection without DISCONNECT", self.name)
                    return
            if not data:
                reason = "keep-alive timeout" if self.session else "no CONNECT in time"
                log.info("client %s: closing: %s", self.name, reason)
                return
            try:
                packets = self.conn.receive_data(data)
            except MQTTError as exc:
                self._refuse(exc)
                return
            for packet in packets:
                if not self._handle(packet):
                    return
            if packets and self.session is not None:
                # [MQTT-3.1.2-24]: one and a half times the keep alive, 0 means none.
                keep_alive = self.keep_alive * 1.5 if self.keep_alive else math.inf
                deadline = trio.current_time() + keep_alive
            if self.conn.pending_bytes:
                self._wakeup.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                data = self.conn.data_to_send()
                if data:
                    with trio.move_on_after(self.limits.send_timeout) as timer:
                        await self.stream.send_all(data)
                    if timer.cancelled_caught:
                        log.warning("client %s: closing: send timed out", self.name)
                        break
                elif self._closing:
                    return
                else:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self._read_scope.cancel()

    def _refuse(self, exc: MQTTError) -> None:
        if self.session is None and exc.connack_code is not None:
            self.conn.send(ConnAck(return_code=exc.connack_code))
        log.warning("client %s: closing: %s", self.name, exc.reason)

    def _end(self) -> None:
        """The connection is over: publish the will unless DISCONNECT came, free the session."""
        if self.will is not None:
            log.info("client %s: publishing will to %s", self.name, self.will.topic)
            self.broker.publish(self.will)
            self.will = None
        if self.session is not None and not self._taken_over:
            self.broker.close_session(self.session, self)
        if self.qos0_dropped:
            log.warning("client %s: %d QoS 0 message(s) dropped (slow reader)",
                        self.name, self.qos0_dropped)

    # -- packets from the client ----------------------------------------------------------

    def _handle(self, packet: object) -> bool:
        """Handle one packet; False closes the connection."""
        handler = _HANDLERS.get(type(packet))
        if handler is None:
            log.warning("client %s: closing: unexpected %s", self.name, type(packet).__name__)
            return False
        return handler(self, packet)

    def _on_connect(self, packet: Connect) -> bool:
        client_id = packet.client_id
        if not client_id:
            if not packet.clean_session:
                # [MQTT-3.1.3-8]: empty id needs clean session; CONNACK 0x02, then close.
                self.conn.send(ConnAck(return_code=CONNACK_IDENTIFIER_REJECTED))
                log.warning("client (%s): refused: empty client id without clean session",
                            self.peer)
                return False
            client_id = self.broker.generate_client_id()  # [MQTT-3.1.3-6]
        self.client_id = client_id
        self.keep_alive = packet.keep_alive
        if packet.will is not None:
            will = packet.will
            self.will = Message(will.topic, will.payload, will.qos, will.retain,
                                origin_protocol="mqtt", origin_client=client_id)
        session, present = self.broker.open_session(client_id, packet.clean_session)
        self.session = session
        # 3.1 has no session-present flag; 3.1.1 sets it only for a resumed session.
        present = present and packet.protocol_level != MQTT_3_1
        self.conn.send(ConnAck(session_present=present))
        session.attach(self)
        log.info("client %s: connected (MQTT level %d, clean session %d, keep alive %ds%s)",
                 self.name, packet.protocol_level, packet.clean_session, packet.keep_alive,
                 f", certificate identity {self.identity}" if self.identity else "")
        return True

    def _on_publish(self, packet: Publish) -> bool:
        if packet.qos == 2:
            inbound = self.session.inbound_qos2
            if packet.packet_id not in inbound:  # a resent PUBLISH is not routed again
                inbound.add(packet.packet_id)
                self._route(packet)
            self.conn.send(PubRec(packet.packet_id))
            return True
        self._route(packet)
        if packet.qos == 1:
            self.conn.send(PubAck(packet.packet_id))
        return True

    def _route(self, packet: Publish) -> None:
        self.broker.publish(Message(
            packet.topic, packet.payload, packet.qos, packet.retain,
            origin_protocol="mqtt", origin_client=self.client_id,
        ))

    def _on_puback(self, packet: PubAck) -> bool:
        self.session.puback(packet.packet_id)
        return True

    def _on_pubrec(self, packet: PubRec) -> bool:
        self.session.pubrec(packet.packet_id)
        return True

    def _on_pubrel(self, packet: PubRel) -> bool:
        self.session.inbound_qos2.discard(packet.packet_id)
        self.conn.send(PubComp(packet.packet_id))
        return True

    def _on_pubcomp(self, packet: PubComp) -> bool:
        self.session.pubcomp(packet.packet_id)
        return True

    def _on_subscribe(self, packet: Subscribe) -> bool:
        granted = [
            self.broker.subscribe(self.session, sub.topic_filter, min(sub.qos, MAX_QOS))
            for sub in packet.subscriptions
        ]
        self.conn.send(SubAck(packet.packet_id, tuple(granted)))
        for sub, qos in zip(packet.subscriptions, granted, strict=True):
            self.broker.send_retained(self.session, sub.topic_filter, qos)
        return True

    def _on_unsubscribe(self, packet: Unsubscribe) -> bool:
        for topic_filter in packet.topic_filters:
            self.broker.unsubscribe(self.session, topic_filter)
        self.conn.send(UnsubAck(packet.packet_id))  # even when nothing matched [MQTT-3.10.4-5]
        return True

    def _on_pingreq(self, packet: PingReq) -> bool:
        self.conn.send(PingResp())
        return True

    def _on_disconnect(self, packet: Disconnect) -> bool:
        self.will = None  # [MQTT-3.14.4-3]: a clean disconnect discards the will
        log.info("client %s: disconnected", self.name)
        return False

    # -- the session's link: deliveries to the client ---------------------------------------

    def send_publish(
        self, message: Message, qos: int, packet_id: int | None, retain: bool, dup: bool
    ) -> None:
        cache = message.wire_cache
        if qos == 0:
            if self.conn.pending_bytes > self.limits.max_outgoing_bytes:
                self.qos0_dropped += 1
                return
            key = ("mqtt", retain)  # 3.1 and 3.1.1 share one PUBLISH form
            data = cache.get(key)
            if data is None:
                data = cache[key] = encode_publish(
                    self._topic_bytes(message), message.payload, 0, retain, False, None
                )
        else:
            data = encode_publish(
                self._topic_bytes(message), message.payload, qos, retain, dup, packet_id
            )
        self.conn.send_bytes(data)
        self._wakeup.set()

    @staticmethod
    def _topic_bytes(message: Message) -> bytes:
        cache = message.wire_cache
        topic = cache.get("topic")
        if topic is None:
            topic = cache["topic"] = message.topic.encode()
        return topic

    def send_pubrel(self, packet_id: int) -> None:
        self.conn.send(PubRel(packet_id))
        self._wakeup.set()

    def session_taken_over(self) -> None:
        self._taken_over = True
        self._read_scope.cancel()


_HANDLERS = {
    Connect: MQTTClientConnection._on_connect,
    Publish: MQTTClientConnection._on_publish,
    PubAck: MQTTClientConnection._on_puback,
    PubRec: MQTTClientConnection._on_pubrec,
    PubRel: MQTTClientConnection._on_pubrel,
    PubComp: MQTTClientConnection._on_pubcomp,
    Subscribe: MQTTClientConnection._on_subscribe,
    Unsubscribe: MQTTClientConnection._on_unsubscribe,
    PingReq: MQTTClientConnection._on_pingreq,
    Disconnect: MQTTClientConnection._on_disconnect,
}


async def serve_mqtt(
    stream: trio.abc.Stream, broker: Broker, peer: str, *, identity: str | None = None
) -> None:
    """Serve one MQTT client until it goes away (``server.ProtocolHandler``)."""
    await MQTTClientConnection(stream, broker, peer, identity).run()

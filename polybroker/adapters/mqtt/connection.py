"""MQTT adapter (3.1, 3.1.1, 5.0): one connection's packets in, broker core calls out.

The I/O is the ``runner``'s (one task per idle connection, a writer only while there is
something to send, the keep-alive deadline, the durability gate, the lingering close):
it hands whatever one receive returns to ``receive``, which parses it and handles every
packet in it synchronously (no task switch per message); all deliveries made to a
connection between two of its writes go out in one system call. Each packet's handling
is in the module of its concern: ``connect``, ``publish``, ``subscribe``.
"""

import math
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from ...broker import Broker
from ...overflow import SLOW_READER_QOS0
from ...protocols.mqtt import (
    MQTT_5,
    Auth,
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
    Subscribe,
    Unsubscribe,
    encode_ack,
)
from ...protocols.mqtt import properties as prop
from ...protocols.mqtt import reason_codes as rc
from ...sessions import Delivery
from ..runner import ConnectionRunner
from .connect import Connecting
from .publish import Publishing
from .state import PUBREL, Closing, log
from .subscribe import Subscribing


class MQTTClientConnection(Connecting, Publishing, Subscribing):
    """Serves one MQTT client over one stream; also the session's link to that client."""

    __slots__ = ()

    def __init__(
        self, stream: trio.abc.Stream, broker: Broker, peer: str, identity: str | None = None,
        allow_anonymous: bool = True,
    ) -> None:
        super().__init__(broker, peer, identity, allow_anonymous)
        self.runner = ConnectionRunner(stream, broker, self, log, "mqtt", self.throttle,
                                       bound_replies=False, heartbeats=False)
        # Our last word (DISCONNECT, a refusing CONNACK) must be read, unless the client
        # ended the connection itself (DISCONNECT, close, reset).
        self.runner.linger = True

    def run(self) -> Coroutine[Any, Any, None]:
        return self.runner.run()

    def close_for_shutdown(self) -> None:
        """The broker is stopping: a 5.0 client is told so (0x8B), then the writer drains."""
        if self.runner.finished:
            return  # already ended (it disconnected just before the shutdown)
        if self.session is not None and self.level >= MQTT_5 and not self._taken_over:
            self.conn.send(Disconnect(rc.SERVER_SHUTTING_DOWN))
        self.runner.ending("shutdown")
        self.runner.stop_reading()

    def close_by_administrator(self) -> None:
        """Closed by the operator: a 5.0 client is told so (0x98), then the writer drains."""
        if self.runner.finished:
            return
        if self.session is not None and self.level >= MQTT_5 and not self._taken_over:
            self.conn.send(Disconnect(rc.ADMINISTRATIVE_ACTION))
        self.runner.ending("kicked")
        self.runner.stop_reading()

    # -- what the runner calls ------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self.conn.pending_bytes

    def data_to_send(self) -> bytes:
        self._plain_bytes = 0
        return self.conn.data_to_send()

    async def receive(self, data: bytes) -> bool:
        """Handle one read's worth of packets; False ends the connection. (One coroutine
        for the whole read, without a helper of its own: it runs once per read.)"""
        conn = self.conn
        try:
            try:
                packets = conn.receive_data(data)
            except MQTTError as exc:
                if self.session is None and self._pending_connect is None:
                    self._refuse_connect(exc)
                    return False
                raise Closing(exc.reason_code, exc.reason) from None
            for packet in packets:
                handler = _HANDLERS.get(type(packet))
                if handler is None or (self.session is None
                                       and type(packet) not in _BEFORE_CONNACK):
                    raise Closing(rc.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")
                if type(packet) is Connect:
                    self.runner.lift_deadline()
                    if not await self._login(packet):
                        return False
                if not handler(self, packet):
                    if self._auth_failed:
                        self.runner.lift_deadline()
                        await self._refuse_enhanced()
                    return False
            if conn.error_pending:
                # A bad packet after these in the same read: judged only now that they
                # are answered (a CONNECT has its CONNACK, then DISCONNECT says what was
                # wrong).
                try:
                    conn.receive_data(b"")
                except MQTTError as exc:
                    raise Closing(exc.reason_code, exc.reason) from None
        except Closing as close:
            self._disconnect(close.reason_code, close.reason, close.ending)
            return False
        self._packets_read = len(packets)
        # Acknowledgements (and QoS 2 deliveries) go out once the records they vouch for
        # are on disk; QoS 0/1 deliveries alone need not.
        if conn.pending_bytes > self._plain_bytes:
            self.runner.hold_durable()
        return True

    def read_deadline(self, deadline: float) -> float:
        if self._packets_read and self.session is not None:
            # Only a whole Control Packet restarts the keep-alive period, not stray bytes
            # [MQTT-3.1.2-24]: one and a half times the keep alive, 0 is none.
            keep_alive = self.keep_alive * 1.5 if self.keep_alive else math.inf
            return trio.current_time() + keep_alive
        return deadline

    def read_timed_out(self) -> None:
        if self.session is None:
            self._disconnect(rc.MAXIMUM_CONNECT_TIME, "no CONNECT in time", "connect_timeout")
        else:  # [MQTT-3.1.2-22]
            self._disconnect(rc.KEEP_ALIVE_TIMEOUT, "keep-alive timeout", "keepalive_timeout")

    def heartbeat_interval(self) -> float:
        return 0  # the client keeps the connection alive (PINGREQ), never the server

    def send_heartbeat(self) -> None:
        pass

    def release(self, held: list[Any]) -> None:
        """queue_overflow "block": the backlogs this client filled have room (or
        ``max_block_time`` passed): send the acknowledgements withheld meanwhile."""
        for first_byte, packet_id, reason in held:
            self._ack(first_byte, packet_id, reason)
        self.runner.hold_durable()

    def sent(self) -> None:
        pass  # sessions bound deliveries by their own windows

    def end(self) -> None:
        """The connection is over: publish the will unless DISCONNECT came, free the session."""
        session, will = self.session, self.will
        self.will = None
        if will is not None and not self.broker.security.may_publish(self._client, will.topic):
            log.info("client %s: will to %s not published: not authorized", self.name, will.topic)
            will = None
        if will is not None and self.will_delay:
            log.info("client %s: will to %s delayed %ds", self.name, will.topic, self.will_delay)
        elif will is not None:
            log.info("client %s: publishing will to %s", self.name, will.topic)
        if session is not None and not self._taken_over:
            self.broker.close_session(session, self, will, self.will_delay)
        elif will is not None and self.will_delay == 0:
            # Taken over: the session goes on, but this connection ended without DISCONNECT.
            self.broker.publish(will)

    # -- packets of no other concern ------------------------------------------------------

    def _on_pingreq(self, packet: PingReq) -> bool:
        self.conn.send(PingResp())
        return True

    def _on_disconnect(self, packet: Disconnect) -> bool:
        self.runner.linger = False  # the client ended it: nobody waits for our last word
        if self.session is None:  # gave up during the authentication exchange
            self.runner.ending("client_disconnect", "during authentication")
            return False
        if self.level >= MQTT_5:
            expiry = packet.properties.get(prop.SESSION_EXPIRY_INTERVAL)
            if expiry is not None:  # not set from zero: the codec checked (3.14.2.2.2)
                self.session.expiry_interval = expiry  # [MQTT-3.14.2-2]
            if packet.reason_code == rc.DISCONNECT_WITH_WILL_MESSAGE:
                self.runner.ending("client_disconnect", "with will")
                return False
        self.will = None  # [MQTT-3.14.4-3]: a clean disconnect discards the will
        self.runner.ending("client_disconnect")
        return False

    # -- the session's link: deliveries to the client ---------------------------------------

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> bool:
        conn = self.conn
        if delivery.qos == 0 and conn.pending_bytes > self.limits.max_outgoing_bytes:
            self._session.count_drop(SLOW_READER_QOS0)
            return True  # dropped for a slow reader; counted, not an error
        # Only 5.0 forwards a remaining expiry: 3.1.1 needs no clock reading per message.
        now = self.broker.clock() if self.level >= MQTT_5 else 0.0
        data = self.encoder.encode(delivery, packet_id, dup, now)
        if data is None:
            return False
        conn.send_bytes(data)
        runner = self.runner
        runner.info.messages_out += 1
        if delivery.qos < 2:
            self._plain_bytes += len(data)
        else:
            runner.hold_durable()
        if not runner.queued:  # one call per batch of deliveries, not one per delivery
            runner.wake()
        if conn.pending_bytes > 2 * self.limits.max_outgoing_bytes and not self._closing_slow:
            # QoS 1/2 are bounded in count, not bytes: a client that does not read large
            # messages is disconnected; what it did not acknowledge stays in its session.
            self._closing_slow = True
            self._disconnect(rc.QUOTA_EXCEEDED, "outgoing quota exceeded: client does not read",
                             "slow_reader")
            self.runner.stop_reading()
        return True

    def send_pubrel(self, packet_id: int) -> None:
        self.conn.send_bytes(encode_ack(PUBREL, packet_id))
        self.runner.hold_durable()
        self.runner.wake()

    def session_taken_over(self) -> None:
        self._taken_over = True
        self.runner.ending("taken_over")
        if self.level >= MQTT_5:
            self.conn.send(Disconnect(rc.SESSION_TAKEN_OVER))  # [MQTT-3.1.4-3]
        self.runner.stop_reading()


# Each packet type's handler; False ends the connection.
_HANDLERS: dict[type, Callable[[MQTTClientConnection, Any], bool]] = {
    Connect: MQTTClientConnection._on_connect,
    Auth: MQTTClientConnection._on_auth,
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
# Before the CONNACK only the authentication exchange may happen [MQTT-3.1.4-?].
_BEFORE_CONNACK = {Connect, Auth, Disconnect}


def serve_mqtt(
    stream: trio.abc.Stream, broker: Broker, peer: str, *, identity: str | None = None,
    allow_anonymous: bool = True,
) -> Coroutine[Any, Any, None]:
    """Serve one MQTT client until it goes away (``server.ProtocolHandler``).

    Returns the runner's coroutine itself rather than awaiting it: one coroutine frame
    less per connection, for as long as it lives."""
    return MQTTClientConnection(stream, broker, peer, identity, allow_anonymous).runner.run()


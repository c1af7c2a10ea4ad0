"""MQTT adapter (3.1, 3.1.1, 5.0): one connection's packets in, broker core calls out.

The I/O is the ``runner``'s (one task per idle connection, a writer only while there is
something to send, the keep-alive deadline, the durability gate, the lingering close):
it hands whatever one receive returns to ``receive``, which parses it and handles every
packet in it synchronously (no task switch per message); all deliveries made to a
connection between two of its writes go out in one system call.
"""

import logging
import math
from collections.abc import Coroutine
from typing import Any

import trio

from ..auth import AuthExchange, Client, Refusal
from ..broker import Broker
from ..journal import StoreFull
from ..limits import PublishThrottle
from ..message import Message
from ..overflow import SLOW_READER_QOS0, Backlog, excluding_own
from ..protocols.mqtt import (
    CONNACK_IDENTIFIER_REJECTED,
    MQTT_3_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    MQTTError,
    PacketType,
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
    encode,
    encode_ack,
)
from ..protocols.mqtt import properties as prop
from ..protocols.mqtt import reason_codes as rc
from ..sessions import (
    NEVER_EXPIRES,
    RESERVED_CLIENT_ID_PREFIX,
    Delivery,
    Session,
    SubscriptionOptions,
)
from ..shared import is_valid_shared_filter, split_shared_filter
from .mqtt_connack import fit_connack, imposed_keep_alive
from .mqtt_outbound import PublishEncoder
from .runner import ConnectionRunner

log = logging.getLogger("polybroker.mqtt")

MAX_QOS = 2
UNBOUNDED = 268_435_460  # larger than any MQTT packet
# First bytes of the acknowledgement packets (PUBREL has its required flag bits set).
PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70
_ACK_TYPES = {PUBACK: PubAck, PUBREC: PubRec, PUBREL: PubRel, PUBCOMP: PubComp}
# A refused login's CONNACK code: (3.1 and 3.1.1, 5.0).
_REFUSAL_CODES = {
    Refusal.BAD_CREDENTIALS: (0x04, rc.BAD_USER_NAME_OR_PASSWORD),
    Refusal.NOT_AUTHORIZED: (0x05, rc.NOT_AUTHORIZED),
}


class Closing(Exception):
    """Close the connection; at 5.0 send DISCONNECT with ``reason_code`` first.
    ``ending``: why, as ``runner.END_REASONS`` says it."""

    def __init__(self, reason_code: int, reason: str, ending: str = "protocol_error") -> None:
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason
        self.ending = ending


# The encoder of every 3.1 / 3.1.1 connection: without topic aliases it keeps no state.
_V3_ENCODER = PublishEncoder(4, UNBOUNDED, 0)


class MQTTClientConnection:
    """Serves one MQTT client over one stream; also the session's link to that client."""

    # Thousands of these live at once, most of them idle: no per-instance dict.
    __slots__ = (
        "_auth", "_auth_failed", "_closing_slow", "_packets_read", "_pending_connect",
        "_plain_bytes", "_taken_over",
        "allow_anonymous", "broker", "client", "client_id", "conn", "encoder", "identity",
        "inbound_aliases", "keep_alive", "level", "limits", "peer", "problem_information",
        "runner", "session", "throttle", "user", "will", "will_delay",
    )

    def __init__(
        self, stream: trio.abc.Stream, broker: Broker, peer: str, identity: str | None = None,
        allow_anonymous: bool = True,
    ) -> None:
        self.broker = broker
        self.limits = limits = broker.limits
        self.peer = peer
        # The client certificate's name (use_identity_as_username), for authentication.
        self.identity = identity
        self.allow_anonymous = allow_anonymous  # the listener's setting
        self.user: str | None = None  # who logged in (None: anonymous)
        self.client: Client | None = None  # for access checks, once connected
        self.conn = ServerConnection(max_packet_size=limits.max_packet_size)
        self.level = 4
        self.client_id: str | None = None
        self.session: Session | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.keep_alive = 0
        self.encoder = _V3_ENCODER
        self.inbound_aliases: dict[int, str] = {}
        self.problem_information = True  # MQTT 5.0 Request Problem Information
        # max_publish_rate; None when there is none (no bucket to keep per connection).
        self.throttle = (PublishThrottle(limits.max_publish_rate, limits.max_publish_burst)
                         if limits.max_publish_rate > 0 else None)
        self._auth: AuthExchange | None = None
        self._pending_connect: Connect | None = None
        self._auth_failed = False  # the enhanced authentication exchange failed
        self._taken_over = False
        self._closing_slow = False
        self._plain_bytes = 0  # buffered QoS 0/1 deliveries, which need not wait for the disk
        self._packets_read = 0  # whole packets in the last read (they restart the keep alive)
        self.runner = ConnectionRunner(stream, broker, self, log, "mqtt", self.throttle,
                                       bound_replies=False)
        # Our last word (DISCONNECT, a refusing CONNACK) must be read, unless the client
        # ended the connection itself (DISCONNECT, close, reset).
        self.runner.linger = True

    @property
    def name(self) -> str:
        return f"{self.client_id or '<no id>'} ({self.peer})"

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

    # -- what the runner calls ------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self.conn.pending_bytes

    def data_to_send(self) -> bytes:
        self._plain_bytes = 0
        return self.conn.data_to_send()

    async def receive(self, data: bytes) -> bool:
        """Handle one read's worth of packets; False ends the connection."""
        try:
            received = await self._receive(data)
        except Closing as close:
            self._disconnect(close.reason_code, close.reason, close.ending)
            return False
        if received is None:
            return False
        self._packets_read = received
        # Acknowledgements (and QoS 2 deliveries) go out once the records they vouch for
        # are on disk; QoS 0/1 deliveries alone need not.
        if self.conn.pending_bytes > self._plain_bytes:
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

    def release(self, held: list) -> None:
        """queue_overflow "block": the backlogs this client filled have room (or
        ``max_block_time`` passed): send the acknowledgements withheld meanwhile."""
        for first_byte, packet_id, reason in held:
            self._ack(first_byte, packet_id, reason)
        self.runner.hold_durable()

    def sent(self) -> None:
        pass  # sessions bound deliveries by their own windows

    def end(self) -> None:
        self._end()

    # -- I/O ------------------------------------------------------------------------------

    async def _receive(self, data: bytes) -> int | None:
        """Handle one read's worth of packets; return how many, or None to close."""
        try:
            packets = self.conn.receive_data(data)
        except MQTTError as exc:
            if self.session is None and self._pending_connect is None:
                self._refuse_connect(exc)
                return None
            raise Closing(exc.reason_code, exc.reason) from None
        for packet in packets:
            handler = _HANDLERS.get(type(packet))
            if handler is None or (self.session is None and type(packet) not in _BEFORE_CONNACK):
                raise Closing(rc.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")
            if type(packet) is Connect:
                self.runner.lift_deadline()
                if not await self._login(packet):
                    return None
            if not handler(self, packet):
                if self._auth_failed:
                    self.runner.lift_deadline()
                    await self._refuse_enhanced()
                return None
        if self.conn.error_pending:
            # A bad packet after these in the same read: judged only now that they are
            # answered (a CONNECT has its CONNACK, then DISCONNECT says what was wrong).
            try:
                self.conn.receive_data(b"")
            except MQTTError as exc:
                raise Closing(exc.reason_code, exc.reason) from None
        return len(packets)

    def _refuse_connect(self, exc: MQTTError) -> None:
        """A bad CONNECT: answer with a CONNACK where the spec asks for one, then close."""
        level = self.conn.protocol_level or 4
        if level >= MQTT_5:
            self.conn.send(ConnAck(return_code=exc.reason_code))
        elif exc.connack_code is not None:
            self.conn.send(ConnAck(return_code=exc.connack_code))
        self.runner.ending("protocol_error", exc.reason)

    def _disconnect(self, reason_code: int, reason: str, ending: str = "protocol_error") -> None:
        """Close from the server side; a 5.0 client is told why [MQTT-4.13.1-1]. Before
        CONNACK only a CONNACK may say it, and no DISCONNECT is sent [MQTT-3.14.0-1]."""
        self.runner.ending(ending, reason)
        if self.level < MQTT_5:
            return
        if self.session is None:
            if rc.is_valid(PacketType.CONNACK, reason_code):
                self._refuse_with(reason_code, self._pending_connect)
            return
        packet = Disconnect(reason_code)
        if self.problem_information:
            with_reason = Disconnect(reason_code, {prop.REASON_STRING: reason})
            # Only if it fits the client's Maximum Packet Size [MQTT-3.14.2-3].
            if len(encode(with_reason, MQTT_5)) <= self.encoder.max_packet_size:
                packet = with_reason
        self.conn.send(packet)

    def _end(self) -> None:
        """The connection is over: publish the will unless DISCONNECT came, free the session."""
        session, will = self.session, self.will
        self.will = None
        if will is not None and not self.broker.security.may_publish(self.client, will.topic):
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

    # -- connecting -----------------------------------------------------------------------

    async def _login(self, packet: Connect) -> bool:
        """User name and password against ``broker.security``; a refusal is answered
        with its CONNACK (after the security's delay). Enhanced authentication (an
        Authentication Method) is the method's business instead."""
        if prop.AUTHENTICATION_METHOD in packet.properties:
            return True
        login = await self.broker.security.login(
            packet.username, packet.password, allow_anonymous=self.allow_anonymous,
            identity=self.identity, peer=self.peer, client_id=packet.client_id,
            protocol="MQTT",
        )
        if login.ok:
            self.user = login.user
            return True
        old, new = _REFUSAL_CODES[login.refusal]
        self.runner.ending("login_refused")
        self._refuse_with(new if packet.protocol_level >= MQTT_5 else old, packet)
        return False

    async def _refuse_enhanced(self) -> None:
        method = self._pending_connect.properties[prop.AUTHENTICATION_METHOD]
        await self.broker.security.refuse(
            Refusal.NOT_AUTHORIZED, username=None, peer=self.peer,
            client_id=self._pending_connect.client_id, protocol=f"MQTT {method}",
        )
        self.runner.ending("login_refused", f"authentication method {method}")
        self._refuse_with(rc.NOT_AUTHORIZED, self._pending_connect)

    def _refuse_with(self, code: int, packet: Connect | None) -> None:
        """A refusing CONNACK, unless even it is larger than the 5.0 client's Maximum
        Packet Size [MQTT-3.1.2-24] (the connection then closes without one)."""
        connack: ConnAck | None = ConnAck(return_code=code)
        if packet is not None and packet.protocol_level >= MQTT_5:
            limit = packet.properties.get(prop.MAXIMUM_PACKET_SIZE, UNBOUNDED)
            connack = fit_connack(connack, limit)
        if connack is not None:
            self.conn.send(connack)

    def _on_connect(self, packet: Connect) -> bool:
        self.level = packet.protocol_level
        props = packet.properties
        if self.level >= MQTT_5:
            self.problem_information = props.get(prop.REQUEST_PROBLEM_INFORMATION, 1) == 1
        method = props.get(prop.AUTHENTICATION_METHOD)
        if method is None:
            return self._accept(packet)
        authenticator = self.broker.authenticators.get(method)
        if authenticator is None:
            self._refuse_with(rc.BAD_AUTHENTICATION_METHOD, packet)
            self.runner.ending("login_refused", f"unknown authentication method {method!r}")
            return False
        self._pending_connect = packet
        self._auth = authenticator.start()
        return self._auth_step(props.get(prop.AUTHENTICATION_DATA))

    def _on_auth(self, packet: Auth) -> bool:
        # The codec has checked its Authentication Method against the CONNECT's.
        if self._auth is None or packet.reason_code != rc.CONTINUE_AUTHENTICATION:
            raise Closing(rc.PROTOCOL_ERROR, "unexpected AUTH")
        return self._auth_step(packet.properties.get(prop.AUTHENTICATION_DATA))

    def _auth_step(self, data: bytes | None) -> bool:
        step = self._auth.step(data)
        method = self._pending_connect.properties[prop.AUTHENTICATION_METHOD]
        if not step.done:
            props = {prop.AUTHENTICATION_METHOD: method}
            if step.data is not None:
                props[prop.AUTHENTICATION_DATA] = step.data
            self.conn.send(Auth(rc.CONTINUE_AUTHENTICATION, props))
            return True
        if not step.ok:
            self._auth_failed = True  # answered by _refuse_enhanced, after the delay
            return False
        extra = {prop.AUTHENTICATION_METHOD: method}
        if step.data is not None:
            extra[prop.AUTHENTICATION_DATA] = step.data
        packet, self._pending_connect, self._auth = self._pending_connect, None, None
        self.user = step.username
        return self._accept(packet, extra)

    def _accept(self, packet: Connect, extra: dict | None = None) -> bool:
        v5 = self.level >= MQTT_5
        props = packet.properties
        client_id = packet.client_id
        connack_props: dict[int, object] = dict(extra or {})
        if not client_id:
            if not packet.clean_session and not v5:
                # [MQTT-3.1.3-8]: empty id needs clean session; CONNACK 0x02, then close.
                self.conn.send(ConnAck(return_code=CONNACK_IDENTIFIER_REJECTED))
                self.runner.ending("connect_refused", "empty client id without clean session")
                return False
            client_id = self.broker.generate_client_id()  # [MQTT-3.1.3-6]
            if v5:
                connack_props[prop.ASSIGNED_CLIENT_IDENTIFIER] = client_id
        if client_id.startswith(RESERVED_CLIENT_ID_PREFIX):
            # The broker's own sessions (a bridge's backlog) are not for a client to take.
            self._refuse_with(
                rc.CLIENT_IDENTIFIER_NOT_VALID if v5 else CONNACK_IDENTIFIER_REJECTED, packet)
            self.runner.ending("connect_refused",
                               f"client id {client_id!r} is reserved for the broker")
            return False
        self.client_id = client_id
        self.client = Client(self.user, client_id)
        self.keep_alive = packet.keep_alive
        imposed = imposed_keep_alive(packet.keep_alive, self.limits.max_keepalive)
        if imposed is not None and not v5:
            # 3.1.1 cannot be told another keep alive: refused, as Mosquitto does.
            self.conn.send(ConnAck(return_code=CONNACK_IDENTIFIER_REJECTED))
            self.runner.ending("connect_refused", f"keep alive {packet.keep_alive}s above "
                                                  f"max_keepalive {imposed}s")
            return False
        if v5:
            expiry = props.get(prop.SESSION_EXPIRY_INTERVAL, 0)
            connack_props.update(self._server_properties(props))
            if imposed is not None:
                self.keep_alive = imposed  # the client must use it [MQTT-3.2.2-21]
                connack_props[prop.SERVER_KEEP_ALIVE] = imposed
            connack = fit_connack(ConnAck(properties=connack_props),
                                  props.get(prop.MAXIMUM_PACKET_SIZE, UNBOUNDED))
            if connack is None:
                self.runner.ending(
                    "connect_refused", f"no CONNACK fits the client's Maximum Packet Size "
                                       f"{props[prop.MAXIMUM_PACKET_SIZE]} [MQTT-3.1.2-24]")
                return False
            connack_props = connack.properties
        else:
            expiry = 0 if packet.clean_session else NEVER_EXPIRES
        if packet.will is not None:
            self.will = self._will_message(packet.will, client_id)
        session, present = self.broker.open_session(client_id, packet.clean_session, expiry)
        self.session = session
        if v5:
            session.receive_maximum = min(
                self.limits.max_inflight_messages, props.get(prop.RECEIVE_MAXIMUM, 65535)
            )
            self.encoder = PublishEncoder(
                MQTT_5, props.get(prop.MAXIMUM_PACKET_SIZE, UNBOUNDED),
                props.get(prop.TOPIC_ALIAS_MAXIMUM, 0),
            )
        else:
            session.receive_maximum = self.limits.max_inflight_messages
        # 3.1 has no session-present flag; 3.1.1 sets it only for a resumed session.
        present = present and packet.protocol_level != MQTT_3_1
        self.conn.send(ConnAck(session_present=present, properties=connack_props))
        session.attach(self)
        log.info("client %s: connected (MQTT level %d, clean session %d, keep alive %ds%s)",
                 self.name, packet.protocol_level, packet.clean_session, self.keep_alive,
                 (f", session expiry {expiry}s" if v5 else "")
                 + (f", user {self.user}" if self.user is not None else "")
                 + (f", certificate identity {self.identity}" if self.identity else ""))
        return True

    def _server_properties(self, props: dict) -> dict[int, object]:
        """What a 5.0 CONNACK tells the client about this server [MQTT-3.2.2-*]."""
        limits = self.limits
        result: dict[int, object] = {
            prop.RECEIVE_MAXIMUM: limits.receive_maximum,
            prop.TOPIC_ALIAS_MAXIMUM: limits.topic_alias_maximum,
            prop.RETAIN_AVAILABLE: 1,
            prop.WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
            prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 1,
            prop.SHARED_SUBSCRIPTION_AVAILABLE: 1,
        }
        # Maximum QoS is 2, which is said by leaving it out [MQTT-3.2.2-9].
        if limits.max_packet_size < 268_435_455:
            result[prop.MAXIMUM_PACKET_SIZE] = limits.max_packet_size
        info = self.broker.config.mqtt.response_information
        if props.get(prop.REQUEST_RESPONSE_INFORMATION) == 1 and info:
            result[prop.RESPONSE_INFORMATION] = info
        return result

    def _will_message(self, will, client_id: str) -> Message:
        props = will.properties
        self.will_delay = props.get(prop.WILL_DELAY_INTERVAL, 0)
        expiry = props.get(prop.MESSAGE_EXPIRY_INTERVAL)
        return Message(
            will.topic, will.payload, will.qos, will.retain,
            expiry=None if expiry is None else self.broker.clock() + expiry,
            payload_format=props.get(prop.PAYLOAD_FORMAT_INDICATOR),
            content_type=props.get(prop.CONTENT_TYPE),
            correlation_data=props.get(prop.CORRELATION_DATA),
            response_topic=props.get(prop.RESPONSE_TOPIC),
            headers=props.get(prop.USER_PROPERTY, ()),
            origin_protocol="mqtt", origin_client=client_id,
        )

    # -- publishing -----------------------------------------------------------------------

    def _on_publish(self, packet: Publish) -> bool:
        if self.throttle is not None:
            self.throttle.count()
        topic = packet.topic
        reason = rc.SUCCESS
        if self.level >= MQTT_5:
            topic = self._resolve_alias(packet)
            reason = self._check_publish5(packet)
        if reason == rc.SUCCESS and not self.broker.security.may_publish(self.client, topic):
            # Dropped; acknowledged all the same (3.1.1 has no way to say it, 5.0: 0x87).
            log.info("client %s: publish to %s denied", self.name, topic)
            if packet.qos == 0:
                return True
            reason = rc.NOT_AUTHORIZED
        if packet.qos == 2:
            inbound = self.session.inbound_qos2
            if packet.packet_id not in inbound:  # a resent PUBLISH is not routed again
                if len(inbound) >= self.limits.receive_maximum and self.level >= MQTT_5:
                    raise Closing(rc.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
                if reason == rc.SUCCESS:
                    # The copies for the subscribers and the packet id that stops a resent
                    # PUBLISH from being routed again survive a crash together, or neither
                    # does (then the resend is routed as the first copy would have been).
                    try:
                        with self.broker.storing(atomic=True):
                            reason = self._route(packet, topic)
                            if reason < 0x80:  # a refusal (0x97) ends the exchange
                                inbound.add(packet.packet_id)
                    except StoreFull:
                        reason = self._not_stored(packet)
            self._ack(PUBREC, packet.packet_id, reason)
            return True
        if reason == rc.SUCCESS:
            if packet.qos:
                try:
                    with self.broker.storing():
                        reason = self._route(packet, topic)
                except StoreFull:
                    reason = self._not_stored(packet)
            else:
                reason = self._route(packet, topic)
        if packet.qos == 1:
            self._ack(PUBACK, packet.packet_id, reason)
        elif reason >= 0x80:
            raise Closing(reason, "invalid payload")  # QoS 0 has no ack to carry it
        return True

    def _ack(self, first_byte: int, packet_id: int, reason: int) -> None:
        """Send PUBACK/PUBREC/PUBREL/PUBCOMP; 3.1.1 has no reason codes. While the
        publisher is held back (``runner.hold_back``) its PUBACKs and PUBRECs wait, in
        order."""
        if first_byte in (PUBACK, PUBREC) and self.runner.withhold(
                (first_byte, packet_id, reason)):
            return
        if reason == rc.SUCCESS or self.level < MQTT_5:
            self.conn.send_bytes(encode_ack(first_byte, packet_id))
        else:
            self.conn.send(_ACK_TYPES[first_byte](packet_id, reason))

    def _not_stored(self, packet: Publish) -> int:
        """A store write failed while handling this PUBLISH (full disk): 5.0 answers 0x97,
        3.1.1 can only close without acknowledging, so that the client sends it again (a
        QoS 2 resend then finds its packet id and is not routed twice)."""
        if self.level < MQTT_5:
            raise Closing(rc.QUOTA_EXCEEDED, f"message to {packet.topic!r} not acknowledged",
                          "storage_full")
        log.error("client %s: message to %s refused: storage full", self.name, packet.topic)
        if packet.qos == 2:
            self.session.inbound_qos2.discard(packet.packet_id)  # 0x97 ends the exchange
        return rc.QUOTA_EXCEEDED

    def _resolve_alias(self, packet: Publish) -> str:
        """Apply an inbound topic alias [MQTT-3.3.2-7 .. -10]."""
        alias = packet.properties.get(prop.TOPIC_ALIAS)
        if alias is None:
            if not packet.topic:
                raise Closing(rc.PROTOCOL_ERROR, "empty topic without topic alias")
            return packet.topic
        if not 0 < alias <= self.limits.topic_alias_maximum:
            raise Closing(rc.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range")
        if packet.topic:
            self.inbound_aliases[alias] = packet.topic
            return packet.topic
        topic = self.inbound_aliases.get(alias)
        if topic is None:
            raise Closing(rc.PROTOCOL_ERROR, f"topic alias {alias} not set")
        return topic

    def _check_publish5(self, packet: Publish) -> int:
        # A Subscription Identifier from a client is refused by the codec [MQTT-3.3.4-6].
        props = packet.properties
        if props.get(prop.PAYLOAD_FORMAT_INDICATOR) == 1:
            try:
                packet.payload.decode("utf-8")
            except UnicodeDecodeError:
                return rc.PAYLOAD_FORMAT_INVALID  # [MQTT-3.3.2-4] (0x99)
        return rc.SUCCESS

    def _route(self, packet: Publish, topic: str) -> int:
        props = packet.properties
        expiry = props.get(prop.MESSAGE_EXPIRY_INTERVAL) if props else None
        message = Message(
            topic, packet.payload, packet.qos, packet.retain,
            expiry=None if expiry is None else self.broker.clock() + expiry,
            payload_format=props.get(prop.PAYLOAD_FORMAT_INDICATOR) if props else None,
            content_type=props.get(prop.CONTENT_TYPE) if props else None,
            correlation_data=props.get(prop.CORRELATION_DATA) if props else None,
            response_topic=props.get(prop.RESPONSE_TOPIC) if props else None,
            headers=props.get(prop.USER_PROPERTY, ()) if props else (),
            origin_protocol="mqtt", origin_client=self.client_id,
        )
        result = self.broker.publish(message)
        if not result.matched:
            return rc.NO_MATCHING_SUBSCRIBERS
        if result.full is not None:
            self._hold_back(result.full)
        if result.refused and packet.qos:
            # Every matching session was full (drop-new): 5.0 says so; 3.1.1 cannot, and
            # the sessions have counted and logged the drop.
            return rc.QUOTA_EXCEEDED
        return rc.SUCCESS

    # -- queue_overflow "block" ------------------------------------------------------------

    def _hold_back(self, full: list[Backlog]) -> None:
        """Backlogs this client's message filled: withhold its acknowledgements and stop
        reading from it (after this read) until they have room. Its own session is not
        waited for (it could not read its acknowledgements meanwhile): new messages for it
        are dropped until it has room."""
        full = excluding_own(full, (self.session,), self.name, "its own session", log)
        if full:
            self.runner.hold_back(full)

    def _on_puback(self, packet: PubAck) -> bool:
        self.session.puback(packet.packet_id)
        return True

    def _on_pubrec(self, packet: PubRec) -> bool:
        if packet.reason_code >= 0x80:
            self.session.drop_inflight(packet.packet_id)  # refused: no PUBREL [MQTT-4.3.3-4]
            return True
        known = self.session.pubrec(packet.packet_id)
        reason = rc.SUCCESS if known else rc.PACKET_IDENTIFIER_NOT_FOUND
        self._ack(PUBREL, packet.packet_id, reason)
        return True

    def _on_pubrel(self, packet: PubRel) -> bool:
        inbound = self.session.inbound_qos2
        known = packet.packet_id in inbound
        inbound.discard(packet.packet_id)
        reason = rc.SUCCESS if known else rc.PACKET_IDENTIFIER_NOT_FOUND
        self._ack(PUBCOMP, packet.packet_id, reason)
        return True

    def _on_pubcomp(self, packet: PubComp) -> bool:
        self.session.pubcomp(packet.packet_id)
        return True

    # -- subscriptions --------------------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> bool:
        sub_id = packet.properties.get(prop.SUBSCRIPTION_IDENTIFIER)
        codes, retained = [], []
        for sub in packet.subscriptions:
            if sub.no_local and sub.topic_filter.startswith("$share/"):
                raise Closing(rc.PROTOCOL_ERROR, "No Local on a shared subscription")
            if not is_valid_shared_filter(sub.topic_filter):
                # 5.0: Topic Filter invalid; 3.1.1: Failure [MQTT-4.8.2-1, -2].
                codes.append(rc.TOPIC_FILTER_INVALID if self.level >= MQTT_5 else 0x80)
                continue
            limit = self.limits.max_subscriptions_per_client
            subscriptions = self.session.subscriptions
            if limit and len(subscriptions) >= limit and sub.topic_filter not in subscriptions:
                codes.append(rc.QUOTA_EXCEEDED if self.level >= MQTT_5 else 0x80)
                log.warning("client %s: subscription to %s refused: limit of %d reached",
                            self.name, sub.topic_filter, limit)
                continue
            if not self._may_subscribe(sub.topic_filter):
                codes.append(rc.NOT_AUTHORIZED if self.level >= MQTT_5 else 0x80)
                log.info("client %s: subscription to %s denied", self.name, sub.topic_filter)
                continue
            qos = min(sub.qos, MAX_QOS)
            options = SubscriptionOptions(qos, sub.no_local, sub.retain_as_published, sub_id)
            existed = self.broker.subscribe(self.session, sub.topic_filter, options)
            codes.append(qos)
            # Retain Handling: 0 always, 1 only for a new subscription, 2 never.
            if sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed):
                retained.append((sub.topic_filter, qos))
        self.conn.send(SubAck(packet.packet_id, tuple(codes)))
        for topic_filter, qos in retained:
            self.broker.send_retained(self.session, topic_filter, qos)
        return True

    def _may_subscribe(self, topic_filter: str) -> bool:
        shared = split_shared_filter(topic_filter)  # a shared one: its inner filter
        inner = topic_filter if shared is None else shared[1]
        return self.broker.security.may_subscribe(self.client, inner)

    def _on_unsubscribe(self, packet: Unsubscribe) -> bool:
        codes = tuple(
            rc.SUCCESS if self.broker.unsubscribe(self.session, f) else rc.NO_SUBSCRIPTION_EXISTED
            for f in packet.topic_filters
        )
        # An UNSUBACK even when nothing matched [MQTT-3.10.4-5]; 3.1.1 has no codes.
        self.conn.send(UnsubAck(packet.packet_id, codes if self.level >= MQTT_5 else ()))
        return True

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
            self.session.count_drop(SLOW_READER_QOS0)
            return True  # dropped for a slow reader; counted, not an error
        # Only 5.0 forwards a remaining expiry: 3.1.1 needs no clock reading per message.
        now = self.broker.clock() if self.level >= MQTT_5 else 0.0
        data = self.encoder.encode(delivery, packet_id, dup, now)
        if data is None:
            return False
        conn.send_bytes(data)
        if delivery.qos < 2:
            self._plain_bytes += len(data)
        else:
            self.runner.hold_durable()
        self.runner.wake()
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


_HANDLERS = {
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

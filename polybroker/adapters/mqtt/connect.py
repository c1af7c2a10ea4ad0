"""MQTT CONNECT and AUTH: the login, enhanced authentication, the CONNACK and what a
5.0 one tells the client, the will."""

from typing import Any, cast

from ...auth import Client, Refusal
from ...message import Message
from ...protocols.mqtt import (
    CONNACK_IDENTIFIER_REJECTED,
    MQTT_3_1,
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    MQTTError,
    Will,
)
from ...protocols.mqtt import properties as prop
from ...protocols.mqtt import reason_codes as rc
from ...sessions import NEVER_EXPIRES, RESERVED_CLIENT_ID_PREFIX, SessionLink
from .connack import fit_connack, imposed_keep_alive
from .outbound import PublishEncoder
from .state import UNBOUNDED, ClientState, Closing, log

# A refused login's CONNACK code: (3.1 and 3.1.1, 5.0).
_REFUSAL_CODES = {
    Refusal.BAD_CREDENTIALS: (0x04, rc.BAD_USER_NAME_OR_PASSWORD),
    Refusal.NOT_AUTHORIZED: (0x05, rc.NOT_AUTHORIZED),
}


class Connecting(ClientState):
    """CONNECT and AUTH of one connection."""

    __slots__ = ()

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
        assert login.refusal is not None  # a refused login says why
        old, new = _REFUSAL_CODES[login.refusal]
        self.runner.ending("login_refused")
        self._refuse_with(new if packet.protocol_level >= MQTT_5 else old, packet)
        return False

    async def _refuse_enhanced(self) -> None:
        pending = self._pending_connect
        assert pending is not None  # the exchange that failed began with it
        method = pending.properties[prop.AUTHENTICATION_METHOD]
        await self.broker.security.refuse(
            Refusal.NOT_AUTHORIZED, username=None, peer=self.peer,
            client_id=pending.client_id, protocol=f"MQTT {method}",
        )
        self.runner.ending("login_refused", f"authentication method {method}")
        self._refuse_with(rc.NOT_AUTHORIZED, self._pending_connect)

    def _refuse_connect(self, exc: MQTTError) -> None:
        """A bad CONNECT: answer with a CONNACK where the spec asks for one, then close."""
        level = self.conn.protocol_level or 4
        if level >= MQTT_5:
            self.conn.send(ConnAck(return_code=exc.reason_code))
        elif exc.connack_code is not None:
            self.conn.send(ConnAck(return_code=exc.connack_code))
        self.runner.ending("protocol_error", exc.reason)

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
        exchange, pending = self._auth, self._pending_connect
        assert exchange is not None and pending is not None  # begun by the CONNECT
        step = exchange.step(data)
        method = pending.properties[prop.AUTHENTICATION_METHOD]
        if not step.done:
            props: dict[int, object] = {prop.AUTHENTICATION_METHOD: method}
            if step.data is not None:
                props[prop.AUTHENTICATION_DATA] = step.data
            self.conn.send(Auth(rc.CONTINUE_AUTHENTICATION, props))
            return True
        if not step.ok:
            self._auth_failed = True  # answered by _refuse_enhanced, after the delay
            return False
        extra: dict[int, object] = {prop.AUTHENTICATION_METHOD: method}
        if step.data is not None:
            extra[prop.AUTHENTICATION_DATA] = step.data
        self._pending_connect, self._auth = None, None
        self.user = step.username
        return self._accept(pending, extra)

    def _accept(self, packet: Connect, extra: dict[int, object] | None = None) -> bool:
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
        self.runner.info.identify(client_id, self.user, session)
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
        session.attach(cast(SessionLink, self))  # MQTTClientConnection is the link
        log.info("client %s: connected (MQTT level %d, clean session %d, keep alive %ds%s)",
                 self.name, packet.protocol_level, packet.clean_session, self.keep_alive,
                 (f", session expiry {expiry}s" if v5 else "")
                 + (f", user {self.user}" if self.user is not None else "")
                 + (f", certificate identity {self.identity}" if self.identity else ""))
        return True

    def _server_properties(self, props: dict[int, Any]) -> dict[int, object]:
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

    def _will_message(self, will: Will, client_id: str) -> Message:
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


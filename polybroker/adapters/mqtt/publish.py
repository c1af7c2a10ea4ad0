"""MQTT PUBLISH from a client and the acknowledgements of both directions: aliases,
access, routing, the store's answer, queue_overflow "block"."""

from ...journal import StoreFull
from ...message import Message
from ...overflow import Backlog, excluding_own
from ...protocols.mqtt import MQTT_5, PubAck, PubComp, Publish, PubRec, PubRel
from ...protocols.mqtt import properties as prop
from ...protocols.mqtt import reason_codes as rc
from .state import PUBACK, PUBCOMP, PUBREC, PUBREL, ClientState, Closing, log


class Publishing(ClientState):
    """PUBLISH, PUBACK, PUBREC, PUBREL and PUBCOMP of one connection."""

    __slots__ = ()

    def _on_publish(self, packet: Publish) -> bool:
        self.runner.info.messages_in += 1
        if self.throttle is not None:
            self.throttle.count()
        topic = packet.topic
        reason = rc.SUCCESS
        if self.level >= MQTT_5:
            topic = self._resolve_alias(packet)
            reason = self._check_publish5(packet)
        if reason == rc.SUCCESS and not self.broker.security.may_publish(self._client, topic):
            # Dropped; acknowledged all the same (3.1.1 has no way to say it, 5.0: 0x87).
            log.info("client %s: publish to %s denied", self.name, topic)
            if packet.qos == 0:
                return True
            reason = rc.NOT_AUTHORIZED
        packet_id = packet.packet_id or 0  # the codec requires one at QoS 1 and 2
        if packet.qos == 2:
            inbound = self._session.inbound_qos2
            if packet_id not in inbound:  # a resent PUBLISH is not routed again
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
                                inbound.add(packet_id)
                    except StoreFull:
                        reason = self._not_stored(packet)
            self._ack(PUBREC, packet_id, reason)
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
            self._ack(PUBACK, packet_id, reason)
        elif reason >= 0x80:
            raise Closing(reason, "invalid payload")  # QoS 0 has no ack to carry it
        return True

    def _not_stored(self, packet: Publish) -> int:
        """A store write failed while handling this PUBLISH (full disk): 5.0 answers 0x97,
        3.1.1 can only close without acknowledging, so that the client sends it again (a
        QoS 2 resend then finds its packet id and is not routed twice)."""
        if self.level < MQTT_5:
            raise Closing(rc.QUOTA_EXCEEDED, f"message to {packet.topic!r} not acknowledged",
                          "storage_full")
        log.error("client %s: message to %s refused: storage full", self.name, packet.topic)
        if packet.qos == 2:
            self._session.inbound_qos2.discard(packet.packet_id)  # 0x97 ends the exchange
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
        if result.refusal is not None and packet.qos and self.level < MQTT_5:
            raise Closing(rc.QUOTA_EXCEEDED, result.refusal)  # 3.1.1 cannot say it otherwise
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
        self._session.puback(packet.packet_id)
        return True

    def _on_pubrec(self, packet: PubRec) -> bool:
        if packet.reason_code >= 0x80:
            self._session.drop_inflight(packet.packet_id)  # refused: no PUBREL [MQTT-4.3.3-4]
            return True
        known = self._session.pubrec(packet.packet_id)
        reason = rc.SUCCESS if known else rc.PACKET_IDENTIFIER_NOT_FOUND
        self._ack(PUBREL, packet.packet_id, reason)
        return True

    def _on_pubrel(self, packet: PubRel) -> bool:
        inbound = self._session.inbound_qos2
        known = packet.packet_id in inbound
        inbound.discard(packet.packet_id)
        reason = rc.SUCCESS if known else rc.PACKET_IDENTIFIER_NOT_FOUND
        self._ack(PUBCOMP, packet.packet_id, reason)
        return True

    def _on_pubcomp(self, packet: PubComp) -> bool:
        self._session.pubcomp(packet.packet_id)
        return True


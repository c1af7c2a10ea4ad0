"""MQTT SUBSCRIBE and UNSUBSCRIBE: filters, limits, access, retained messages."""

from ...protocols.mqtt import MQTT_5, SubAck, Subscribe, UnsubAck, Unsubscribe
from ...protocols.mqtt import properties as prop
from ...protocols.mqtt import reason_codes as rc
from ...sessions import SubscriptionOptions
from ...shared import is_valid_shared_filter, split_shared_filter
from ...stream_replay import replay_history
from .state import MAX_QOS, ClientState, Closing, log


class Subscribing(ClientState):
    """SUBSCRIBE and UNSUBSCRIBE of one connection."""

    __slots__ = ()

    def _on_subscribe(self, packet: Subscribe) -> bool:
        sub_id = packet.properties.get(prop.SUBSCRIPTION_IDENTIFIER)
        codes, retained, granted = [], [], []
        for sub in packet.subscriptions:
            if sub.no_local and sub.topic_filter.startswith("$share/"):
                raise Closing(rc.PROTOCOL_ERROR, "No Local on a shared subscription")
            if not is_valid_shared_filter(sub.topic_filter):
                # 5.0: Topic Filter invalid; 3.1.1: Failure [MQTT-4.8.2-1, -2].
                codes.append(rc.TOPIC_FILTER_INVALID if self.level >= MQTT_5 else 0x80)
                continue
            limit = self.limits.max_subscriptions_per_client
            subscriptions = self._session.subscriptions
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
            existed = self.broker.subscribe(self._session, sub.topic_filter, options)
            codes.append(qos)
            granted.append((sub.topic_filter, qos))
            # Retain Handling: 0 always, 1 only for a new subscription, 2 never.
            if sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed):
                retained.append((sub.topic_filter, qos))
        self.conn.send(SubAck(packet.packet_id, tuple(codes)))
        for topic_filter, qos in retained:
            self.broker.send_retained(self._session, topic_filter, qos)
        if self.level >= MQTT_5:  # history from a stream (user properties x-stream...)
            replay_history(self.broker, self._session, self._client,
                           packet.properties.get(prop.USER_PROPERTY, ()), granted, sub_id)
        return True

    def _may_subscribe(self, topic_filter: str) -> bool:
        shared = split_shared_filter(topic_filter)  # a shared one: its inner filter
        inner = topic_filter if shared is None else shared[1]
        return self.broker.security.may_subscribe(self._client, inner)

    def _on_unsubscribe(self, packet: Unsubscribe) -> bool:
        codes = tuple(
            rc.SUCCESS if self.broker.unsubscribe(self._session, f) else rc.NO_SUBSCRIPTION_EXISTED
            for f in packet.topic_filters
        )
        # An UNSUBACK even when nothing matched [MQTT-3.10.4-5]; 3.1.1 has no codes.
        self.conn.send(UnsubAck(packet.packet_id, codes if self.level >= MQTT_5 else ()))
        return True


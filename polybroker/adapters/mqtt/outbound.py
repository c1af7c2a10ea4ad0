"""Encoding PUBLISH packets for one MQTT connection.

Bytes are cached on the message per wire form (``Message.wire_cache``), so a fan-out
encodes a message once per form, not once per receiver: 3.1/3.1.1 QoS 0 packets are
reused whole; 5.0 reuses the encoded message properties and adds what differs per
receiver (subscription identifiers, topic alias, remaining expiry).
"""

import math

from ...message import Message
from ...protocols.mqtt import (
    PacketType,
    encode_properties,
    encode_publish,
    encode_publish5,
)
from ...protocols.mqtt import properties as prop
from ...sessions import Delivery


def message_properties(message: Message, now: float) -> dict[int, object]:
    """The MQTT 5.0 PUBLISH properties that travel with a message [MQTT-3.3.2-*]."""
    props: dict[int, object] = {}
    if message.payload_format is not None:
        props[prop.PAYLOAD_FORMAT_INDICATOR] = message.payload_format
    if message.expiry is not None:
        # The remaining lifetime is forwarded, not the original interval [MQTT-3.3.2-6].
        props[prop.MESSAGE_EXPIRY_INTERVAL] = max(1, math.ceil(message.expiry - now))
    if message.content_type is not None:
        props[prop.CONTENT_TYPE] = message.content_type
    if message.response_topic is not None:
        props[prop.RESPONSE_TOPIC] = message.response_topic
    if message.correlation_data is not None:
        props[prop.CORRELATION_DATA] = message.correlation_data
    if message.headers:
        props[prop.USER_PROPERTY] = message.headers
    return props


class PublishEncoder:
    """PUBLISH bytes for one connection: its protocol level, aliases and size limit."""

    __slots__ = ("_aliases", "alias_maximum", "level", "max_packet_size")

    def __init__(self, level: int, max_packet_size: int, alias_maximum: int) -> None:
        self.level = level
        self.max_packet_size = max_packet_size  # the client's (MQTT 5.0), else unbounded
        self.alias_maximum = alias_maximum  # the client's Topic Alias Maximum
        self._aliases: dict[str, int] = {}

    def encode(
        self, delivery: Delivery, packet_id: int | None, dup: bool, now: float
    ) -> bytes | None:
        """The PUBLISH bytes, or None if the client's Maximum Packet Size forbids it
        (the message is then dropped for this client, as if sent [MQTT-3.1.2-25])."""
        message = delivery.message
        if self.level < 5:
            data = self._encode_v3(message, delivery.qos, delivery.retain, packet_id, dup)
            return data if len(data) <= self.max_packet_size else None
        new_alias = self.alias_maximum and message.topic not in self._aliases
        data = self._encode_v5(delivery, packet_id, dup, now)
        if len(data) <= self.max_packet_size:
            return data
        if new_alias:
            self._aliases.pop(message.topic, None)  # the client never learned it
        return None

    @staticmethod
    def _encode_v3(
        message: Message, qos: int, retain: bool, packet_id: int | None, dup: bool
    ) -> bytes:
        cache = message.wire_cache
        if qos == 0:
            key = ("v3", retain)  # 3.1 and 3.1.1 share one PUBLISH form
            data = cache.get(key)
            if data is None:
                data = cache[key] = encode_publish(
                    topic_bytes(message), message.payload, 0, retain, False, None
                )
            return data
        return encode_publish(topic_bytes(message), message.payload, qos, retain, dup, packet_id)

    def _encode_v5(self, delivery: Delivery, packet_id: int | None, dup: bool, now: float) -> bytes:
        message = delivery.message
        topic = topic_bytes(message)
        extra: dict[int, object] = {}
        if delivery.subscription_ids:
            extra[prop.SUBSCRIPTION_IDENTIFIER] = delivery.subscription_ids
        if self.alias_maximum:
            alias = self._aliases.get(message.topic)
            if alias is not None:
                topic = b""  # the client already knows this alias [MQTT-3.3.2-12]
            elif len(self._aliases) < self.alias_maximum:
                alias = self._aliases[message.topic] = len(self._aliases) + 1
            if alias is not None:
                extra[prop.TOPIC_ALIAS] = alias
        if message.expiry is not None or extra:
            props = encode_properties(message_properties(message, now) | extra, PacketType.PUBLISH)
            return encode_publish5(
                topic, message.payload, delivery.qos, delivery.retain, dup, packet_id, props
            )
        # Nothing differs per receiver: reuse the encoded properties (and whole QoS 0 packets).
        cache = message.wire_cache
        if delivery.qos == 0:
            key = ("v5", delivery.retain)
            data = cache.get(key)
            if data is None:
                data = cache[key] = encode_publish5(
                    topic, message.payload, 0, delivery.retain, False, None, self._props(message)
                )
            return data
        return encode_publish5(
            topic, message.payload, delivery.qos, delivery.retain, dup, packet_id,
            self._props(message),
        )

    @staticmethod
    def _props(message: Message) -> bytes:
        cache = message.wire_cache
        props = cache.get("v5props")
        if props is None:
            props = cache["v5props"] = encode_properties(
                message_properties(message, 0.0), PacketType.PUBLISH
            )
        return props


def topic_bytes(message: Message) -> bytes:
    cache = message.wire_cache
    topic = cache.get("topic")
    if topic is None:
        topic = cache["topic"] = message.topic.encode()
    return topic

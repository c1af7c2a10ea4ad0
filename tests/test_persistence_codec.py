"""The values of the durable state's records: every field round-trips, damage is an error."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polybroker.message import Message
from polybroker.persistence import (
    decode_delivery,
    decode_message,
    decode_subscription,
    encode_delivery,
    encode_message,
    encode_released,
    encode_subscription,
)
from polybroker.sessions import Delivery, SubscriptionOptions
from polybroker.shared import SharedGroup

text = st.text(max_size=20).filter(lambda t: "\0" not in t)
optional_text = st.none() | text
messages = st.builds(
    Message,
    topic=text.filter(bool),
    payload=st.binary(max_size=100),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    expiry=st.none() | st.integers(0, 10**6).map(float),
    payload_format=st.none() | st.integers(0, 1),
    content_type=optional_text,
    correlation_data=st.none() | st.binary(max_size=20),
    response_topic=optional_text,
    headers=st.lists(st.tuples(text, text), max_size=3).map(tuple),
    origin_protocol=st.sampled_from(["", "mqtt", "stomp"]),
    origin_client=optional_text,
)


def fields(message: Message) -> tuple:
    return (message.topic, message.payload, message.qos, message.retain, message.expiry,
            message.payload_format, message.content_type, message.correlation_data,
            message.response_topic, message.headers, message.origin_protocol,
            message.origin_client)


@given(messages, st.integers(-1000, 1000).map(float))
def test_message_round_trip(message: Message, clock_offset: float) -> None:
    # Stored with wall-clock deadlines; read back onto another clock.
    decoded = decode_message(encode_message(message, clock_offset), 0, -clock_offset)
    assert fields(decoded) == fields(message)


@given(messages, st.integers(1, 2), st.booleans(), st.lists(st.integers(1, 2**28 - 1),
       max_size=3), st.booleans(), st.integers(0, 65535))
def test_delivery_round_trip(message, qos, retain, ids, shared, packet_id) -> None:
    group = SharedGroup("g", "a/#") if shared else None
    delivery = Delivery(message, qos, retain, tuple(ids), group)
    value = encode_delivery(delivery, packet_id, encode_message(message, 0))
    decoded, stored_id, stored_group = decode_delivery(value, 0)
    assert (decoded.qos, decoded.retain) == (qos, retain)
    assert decoded.subscription_ids == tuple(ids)
    assert stored_group == (("g", "a/#") if shared else None)
    assert stored_id == packet_id
    assert fields(decoded.message) == fields(message)


def test_released_keeps_only_the_packet_id() -> None:
    delivery, packet_id, _ = decode_delivery(encode_released(513), 0)
    assert delivery.released and packet_id == 513 and delivery.qos == 2


@given(st.integers(0, 2), st.booleans(), st.booleans(), st.none() | st.integers(1, 2**28 - 1))
def test_subscription_round_trip(qos, no_local, rap, sub_id) -> None:
    options = SubscriptionOptions(qos, no_local, rap, sub_id)
    assert decode_subscription(encode_subscription(options)) == options


@given(messages, st.data())
def test_a_cut_value_is_an_error_not_a_wrong_message(message, data) -> None:
    value = encode_message(message, 0)
    cut = data.draw(st.integers(0, len(value) - 1))
    with pytest.raises((ValueError, struct.error, IndexError)):
        decode_message(value[:cut], 0, 0)

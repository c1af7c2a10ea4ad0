"""A message as the fields of a Redis stream entry, and back.

``m`` holds what is small (JSON), ``p`` the payload and ``a`` an AMQP message's raw
content-header properties, both as they are. An expiry deadline travels as the seconds
left, since every node's broker clock starts at its own zero. What only an AMQP exchange
of the publishing node needs (the parsed headers table, the dead-letter history) stays
behind: across nodes a message is routed by its topic alone.
"""

import json
from collections.abc import Callable, Mapping
from typing import Any

from ..message import AmqpPart, Message

Fields = dict[bytes, bytes]


def encode(message: Message, now: float) -> Fields:
    meta: dict[str, Any] = {"t": message.topic, "q": message.qos}
    if message.retain:
        meta["r"] = 1
    if message.expiry is not None:
        meta["e"] = max(0.0, message.expiry - now)
    if message.payload_format is not None:
        meta["f"] = message.payload_format
    if message.content_type is not None:
        meta["c"] = message.content_type
    if message.correlation_data is not None:
        meta["d"] = message.correlation_data.hex()
    if message.response_topic is not None:
        meta["rt"] = message.response_topic
    if message.headers:
        meta["h"] = message.headers
    if message.origin_protocol:
        meta["op"] = message.origin_protocol
    if message.origin_client is not None:
        meta["oc"] = message.origin_client
    fields: Fields = {b"p": message.payload}
    amqp = message.amqp
    if amqp is not None:
        meta["x"] = [amqp.exchange, amqp.routing_key, int(amqp.persistent)]
        if amqp.properties is not None:
            fields[b"a"] = amqp.properties
    fields[b"m"] = json.dumps(meta, separators=(",", ":")).encode()
    return fields


def decode(fields: Mapping[bytes, bytes], clock: Callable[[], float]) -> Message:
    """The message of a stream entry; ValueError (or KeyError) if it is not one."""
    meta = json.loads(fields[b"m"])
    if not isinstance(meta, dict) or not isinstance(meta.get("t"), str):
        raise ValueError("not a message entry")
    amqp = None
    if "x" in meta:
        exchange, routing_key, persistent = meta["x"]
        amqp = AmqpPart(str(exchange), str(routing_key), fields.get(b"a"),
                        persistent=bool(persistent))
    correlation = meta.get("d")
    return Message(
        topic=meta["t"],
        payload=bytes(fields[b"p"]),
        qos=int(meta["q"]),
        retain=bool(meta.get("r", 0)),
        expiry=clock() + float(meta["e"]) if "e" in meta else None,
        payload_format=meta.get("f"),
        content_type=meta.get("c"),
        correlation_data=bytes.fromhex(correlation) if correlation is not None else None,
        response_topic=meta.get("rt"),
        headers=tuple((str(k), str(v)) for k, v in meta.get("h", ())),
        origin_protocol=meta.get("op", ""),
        origin_client=meta.get("oc"),
        amqp=amqp,
    )

"""Packet tracing at debug level: the describers read packet boundaries off the bytes,
whatever the chunking, and the traced stream logs each packet once per direction."""

import logging

import pytest
import trio
import trio.testing

from polybroker.protocols.amqp import codec as amqp_codec
from polybroker.protocols.amqp.methods import BasicPublish, ConnectionStart
from polybroker.protocols.mqtt import Publish, SubAck, encode
from polybroker.transports.trace import (
    TracedHalfCloseableStream,
    _Tracer,
    describe_amqp,
    describe_mqtt,
    describe_stomp,
    traced,
)


def lines(describe, data: bytes, chunk: int) -> list[str]:
    tracer = _Tracer(describe)
    out = []
    for start in range(0, len(data), chunk):
        out += tracer.feed(data[start:start + chunk])
    return out


MQTT = (encode(Publish("a/b", b"x" * 300, qos=1, packet_id=7)) + encode(SubAck(3, (0,)))
        + encode(Publish("t", b"", qos=0)))


@pytest.mark.parametrize("chunk", [1, 2, 5, 64, 10_000])
def test_mqtt_packets_are_described_whatever_the_chunks(chunk):
    assert lines(describe_mqtt, MQTT, chunk) == [
        "PUBLISH (d0, q1, r0, m7, 'a/b', 307 bytes)", "SUBACK (m3)",
        "PUBLISH (d0, q0, r0, m0, 't', 3 bytes)",
    ]


STOMP = (b"\n" b"SEND\ndestination:/queue/a\ncontent-length:4\n\nab\x00c\x00"
         b"\r\n" b"MESSAGE\r\ndestination:/topic/x\r\n\r\nhello\x00"
         b"ERROR\nmessage:bad\n\n\x00")


@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
def test_stomp_frames_and_heart_beats_are_described(chunk):
    assert lines(describe_stomp, STOMP, chunk) == [
        "heart-beat", "SEND '/queue/a' (4 bytes)", "heart-beat",
        "MESSAGE '/topic/x' (5 bytes)", "ERROR 'bad' (0 bytes)",
    ]


def test_amqp_frames_are_described():
    data = (b"AMQP\x00\x00\x09\x01"
            + amqp_codec.encode_method(0, ConnectionStart(mechanisms=b"PLAIN", locales=b"en_US"))
            + amqp_codec.encode_method(1, BasicPublish(exchange="amq.topic", routing_key="a.b"))
            + b"\x08\x00\x00\x00\x00\x00\x00\xce")
    assert lines(describe_amqp, data, 3) == [
        "protocol header b'AMQP\\x00\\x00\\t\\x01'", "connection.start (channel 0)",
        "basic.publish (channel 1, exchange 'amq.topic', routing key 'a.b')",
        "heartbeat (channel 0, 0 bytes)",
    ]


def test_garbage_stops_the_trace_once():
    assert lines(describe_mqtt, b"\x00\x00junk", 1) == ["(trace stops: packet type 0)"]


async def test_traced_stream_logs_both_directions_only_at_debug(caplog):
    left, right = trio.testing.memory_stream_pair()
    assert traced(left, "mqtt", "peer") is left  # info level: untouched
    caplog.set_level(logging.DEBUG, logger="polybroker.packets")
    stream = traced(left, "mqtt", "peer")
    assert isinstance(stream, TracedHalfCloseableStream)  # as the stream it wraps
    await right.send_all(encode(SubAck(1, (0,))))
    assert await stream.receive_some() == encode(SubAck(1, (0,)))
    await stream.send_all(encode(SubAck(2, (1,))))
    assert [r.getMessage() for r in caplog.records] == [
        "mqtt peer: received SUBACK (m1)", "mqtt peer: sent SUBACK (m2)"]
    assert await right.receive_some() == encode(SubAck(2, (1,)))
    await stream.send_eof()
    assert await right.receive_some() == b""

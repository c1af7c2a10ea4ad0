"""paho-mqtt (MQTT 5.0) against a real ``polybroker serve`` process.

Every wait is on an event set by a paho callback, a queue fed by one or a broker log
line, and is bounded; nothing sleeps.

paho 2.x does not resolve the topic aliases a server sends: ``on_message`` gets an
empty topic and a ``TopicAlias`` property. ``PahoClient5`` does what an application
has to do and keeps the alias map of its connection; ``Received.wire_topic`` is what
paho handed over, ``Received.topic`` the topic after resolving.
"""

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion, MQTTv5, MQTTv311
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .brokerproc import BrokerProcess
from .clients import WAIT

# Reason codes (MQTT 5.0 section 2.4).
SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10
SERVER_SHUTTING_DOWN = 0x8B
NOT_AUTHORIZED = 0x87
SESSION_TAKEN_OVER = 0x8E
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PAYLOAD_FORMAT_INVALID = 0x99

# What polybroker announces in CONNACK with its default limits (config.Limits).
RECEIVE_MAXIMUM = 1024
TOPIC_ALIAS_MAXIMUM = 64

_NOT_PROPERTIES = {"packetType", "types", "names", "properties"}


def properties(packet_type: int, **values: object) -> Properties:
    """``properties(PacketTypes.PUBLISH, ContentType="text/plain", ...)``."""
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def as_dict(props: Properties | None) -> dict[str, object]:
    """The properties paho decoded, by name (UserProperty, SubscriptionIdentifier: lists)."""
    if props is None:
        return {}
    return {name: value for name, value in vars(props).items() if name not in _NOT_PROPERTIES}


class Received(NamedTuple):
    topic: str  # after resolving a topic alias
    payload: bytes
    qos: int
    retain: bool
    props: dict[str, object]
    wire_topic: str  # as paho's on_message saw it: empty when only an alias was sent


class PahoClient5:
    """One paho client (5.0 unless told otherwise) on its own network thread."""

    def __init__(self, port: int, client_id: str, protocol: int = MQTTv5) -> None:
        self.port = port
        self.protocol = protocol
        kwargs = {"clean_session": True} if protocol != MQTTv5 else {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
            reconnect_on_failure=False, **kwargs,
        )
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.connect_reason: mqtt.ReasonCode | None = None
        self.connack_props: dict[str, object] = {}
        self.disconnect_reason: int | None = None
        self.disconnect_from_server: bool | None = None
        self.messages: queue.Queue[Received] = queue.Queue()
        # Called on paho's thread for every message, after it is queued.
        self.handler: Callable[[mqtt.Client, mqtt.MQTTMessage], None] | None = None
        self._aliases: dict[int, str] = {}  # topic aliases the server set on this connection
        self._subacks: queue.Queue[tuple[int, list[int]]] = queue.Queue()
        self._pubacks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # -- callbacks (paho's network thread) --------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, props) -> None:
        self.session_present = flags.session_present
        self.connect_reason = reason_code
        self.connack_props = as_dict(props)
        self._aliases.clear()  # aliases live as long as one network connection
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, props) -> None:
        self.disconnect_reason = reason_code.value
        self.disconnect_from_server = flags.is_disconnect_packet_from_server
        self.disconnected.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        props = as_dict(message.properties)
        wire_topic = topic = message.topic
        alias = props.get("TopicAlias")
        if alias is not None:
            if topic:
                self._aliases[alias] = topic
            else:
                topic = self._aliases.get(alias, f"<unknown topic alias {alias}>")
        self.messages.put(
            Received(topic, message.payload, message.qos, message.retain, props, wire_topic)
        )
        if self.handler is not None:
            self.handler(client, message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, props) -> None:
        self._subacks.put((mid, [code.value for code in reason_codes]))

    def _on_publish(self, client, userdata, mid, reason_code, props) -> None:
        self._pubacks.put((mid, reason_code.value))

    # -- actions, each waiting for the broker's answer --------------------------------

    def connect(self, clean_start: bool = True, **connect_props: object) -> None:
        if self.protocol == MQTTv5:
            props = properties(PacketTypes.CONNECT, **connect_props) if connect_props else None
            self.client.connect("127.0.0.1", self.port, keepalive=60,
                                clean_start=clean_start, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port, keepalive=60)
        self.client.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"
        assert not self.connect_reason.is_failure, self.connect_reason

    def subscribe(self, topic_filter: str, qos: int = 1, subscription_id: int | None = None,
                  **options: object) -> int:
        """One filter, options as SubscribeOptions keywords; waits for the SUBACK code."""
        props = None
        if subscription_id is not None:
            props = properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=subscription_id)
        if self.protocol == MQTTv5:
            result, mid = self.client.subscribe(
                topic_filter, options=SubscribeOptions(qos=qos, **options), properties=props
            )
        else:
            result, mid = self.client.subscribe(topic_filter, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        codes = _wait_for_mid(self._subacks, mid, "SUBACK")
        assert len(codes) == 1
        return codes[0]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                **publish_props: object) -> int:
        """Publish and wait for the flow to complete; the reason code paho's on_publish
        got (from PUBACK at QoS 1, PUBCOMP at QoS 2, SUCCESS at QoS 0)."""
        props = properties(PacketTypes.PUBLISH, **publish_props) if publish_props else None
        if self.protocol == MQTTv5:
            info = self.client.publish(topic, payload, qos, retain, properties=props)
        else:
            info = self.client.publish(topic, payload, qos, retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        return _wait_for_mid(self._pubacks, info.mid, f"publish to {topic!r}")

    def next_message(self, timeout: float = WAIT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def receive(self, count: int, timeout: float = WAIT) -> list[Received]:
        """The next ``count`` messages, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        received = []
        for _ in range(count):
            try:
                received.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"got {len(received)} of {count} messages within {timeout}s: {received}"
                ) from None
        return received

    def receive_until(self, topic: str, timeout: float = WAIT) -> list[Received]:
        """Messages up to (not including) the first one on ``topic``."""
        deadline = time.monotonic() + timeout
        received = []
        while True:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no message on {topic!r} within {timeout}s after {received}"
                ) from None
            if message.topic == topic:
                return received
            received.append(message)

    def disconnect(self) -> None:
        """Clean DISCONNECT, waiting for paho to report the connection closed."""
        self.client.disconnect()
        assert self.disconnected.wait(WAIT), "no on_disconnect after disconnect()"
        self.client.loop_stop()

    def stop(self) -> None:
        """Teardown: whatever state the client is in, end its connection and thread."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def _wait_for_mid(answers: queue.Queue, mid: int, what: str):
    deadline = time.monotonic() + WAIT
    while True:
        try:
            answer_mid, answer = answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no acknowledgement for {what} (packet id {mid})") from None
        if answer_mid == mid:
            return answer


@pytest.fixture
def connect(broker):
    """``connect(client_id, clean_start=True, protocol=MQTTv5, **connect_properties)``:
    a connected PahoClient5, stopped at the end of the test."""
    with contextlib.ExitStack() as stack:  # stops every client, even if one stop fails

        def factory(client_id: str, clean_start: bool = True, protocol: int = MQTTv5,
                    **connect_props: object) -> PahoClient5:
            client = PahoClient5(broker.port, client_id, protocol)
            stack.callback(client.stop)
            client.connect(clean_start, **connect_props)
            return client

        yield factory


# -- CONNACK ----------------------------------------------------------------------------


def test_connack_properties_and_assigned_client_identifier(broker, connect):
    anonymous = connect("")
    assert anonymous.session_present is False
    props = anonymous.connack_props
    assigned = props.pop("AssignedClientIdentifier")
    assert assigned.startswith("auto-")
    # Maximum QoS 2 and no packet size limit are said by leaving the properties out.
    assert props == {
        "ReceiveMaximum": RECEIVE_MAXIMUM,
        "TopicAliasMaximum": TOPIC_ALIAS_MAXIMUM,
        "RetainAvailable": 1,
        "WildcardSubscriptionAvailable": 1,
        "SubscriptionIdentifierAvailable": 1,
        "SharedSubscriptionAvailable": 1,
    }
    broker.wait_for_log(rf"client {assigned} \(.*\): connected \(MQTT level 5")

    # A client that brings its own identifier is not assigned one; each empty id gets
    # a different one.
    named = connect("named")
    assert "AssignedClientIdentifier" not in named.connack_props
    other = connect("")
    assert other.connack_props["AssignedClientIdentifier"] not in ("", assigned)

    # The assigned identifier works as a client id: messages reach that session.
    assert anonymous.subscribe("to/anonymous") == 1
    assert named.publish("to/anonymous", b"hi") == SUCCESS
    assert anonymous.next_message()[:4] == ("to/anonymous", b"hi", 1, False)


def test_server_keep_alive_caps_a_longer_keep_alive(tmp_path):
    config = tmp_path / "keepalive.toml"
    config.write_text("[limits]\nmax_keepalive = 60\n")
    proc = BrokerProcess(tmp_path / "data", "--config", str(config))
    clients = []
    try:
        for client_id, asked in (("long", 120), ("short", 30)):
            client = PahoClient5(proc.port, client_id)
            clients.append(client)
            client.client.connect("127.0.0.1", proc.port, keepalive=asked)
            client.client.loop_start()
            assert client.connected.wait(WAIT), "no CONNACK"
        assert clients[0].connack_props["ServerKeepAlive"] == 60
        assert "ServerKeepAlive" not in clients[1].connack_props
        proc.wait_for_log(r"client long \(.*\): connected \(MQTT level 5, .* keep alive 60s")
    finally:
        for client in clients:
            client.stop()
        proc.stop()


# -- properties -------------------------------------------------------------------------

PUBLISH_PROPS = {
    "ResponseTopic": "reply/here",
    "CorrelationData": b"\x00\x01corr\xff",
    "ContentType": "application/json; charset=utf-8",
    "PayloadFormatIndicator": 1,
    # Repeated names and their order are kept [MQTT-3.3.2-18].
    "UserProperty": [("z", "first"), ("a", "second"), ("z", "third"), ("ünï", "çødé")],
}


def test_publish_properties_pass_through_live_and_retained(connect):
    subscriber = connect("sub")
    assert subscriber.subscribe("props/#", qos=2) == 2
    publisher = connect("pub")
    payload = b'{"temp": 21.5}'

    for qos in (0, 1, 2):  # three encodings on the way out
        assert publisher.publish(f"props/q{qos}", payload, qos, **PUBLISH_PROPS) == SUCCESS
    assert publisher.publish("props/retained", payload, 1, retain=True, **PUBLISH_PROPS) \
        == SUCCESS

    # paho hands a QoS 2 message over at PUBREL, a round trip later: sort by topic.
    received = sorted(subscriber.receive(4), key=lambda m: m.topic)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in received] == [
        ("props/q0", payload, 0, False),
        ("props/q1", payload, 1, False),
        ("props/q2", payload, 2, False),
        ("props/retained", payload, 1, False),
    ]
    for message in received:
        assert message.props == PUBLISH_PROPS, message.topic

    # The stored retained copy keeps its properties too.
    later = connect("later")
    assert later.subscribe("props/retained", qos=1) == 1
    retained = later.next_message()
    assert (retained.topic, retained.payload, retained.retain) == ("props/retained", payload,
                                                                  True)
    assert retained.props == PUBLISH_PROPS


def test_request_response_round_trip_with_correlation_data(connect):
    responder = connect("responder")

    def answer(client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        reply = properties(PacketTypes.PUBLISH,
                           CorrelationData=message.properties.CorrelationData)
        client.publish(message.properties.ResponseTopic, b"re: " + message.payload, 1,
                       properties=reply)

    responder.handler = answer
    assert responder.subscribe("service/echo", qos=1) == 1

    requester = connect("requester")
    assert requester.subscribe("replies/requester", qos=1) == 1
    for n in (1, 2, 3):
        assert requester.publish("service/echo", f"request {n}".encode(), 1,
                                 ResponseTopic="replies/requester",
                                 CorrelationData=f"id-{n}".encode()) == SUCCESS

    replies = requester.receive(3)
    assert {(m.topic, m.payload, m.props["CorrelationData"]) for m in replies} == {
        ("replies/requester", f"re: request {n}".encode(), f"id-{n}".encode())
        for n in (1, 2, 3)
    }
    requests = responder.receive(3)
    assert [m.props["ResponseTopic"] for m in requests] == ["replies/requester"] * 3


# -- subscription options ---------------------------------------------------------------


def test_no_local_subscription_does_not_receive_own_messages(connect):
    me = connect("me")
    peer = connect("peer")
    assert me.subscribe("chat", qos=1, noLocal=True) == 1
    assert peer.subscribe("chat", qos=1) == 1

    assert me.publish("chat", b"mine") == SUCCESS
    assert peer.publish("chat", b"theirs") == SUCCESS

    assert [(m.topic, m.payload) for m in me.receive(1)] == [("chat", b"theirs")]
    assert [(m.topic, m.payload) for m in peer.receive(2)] == [
        ("chat", b"mine"), ("chat", b"theirs"),
    ]
    assert me.messages.empty()


def test_retain_as_published_keeps_the_retain_flag_on_live_delivery(connect):
    keeps = connect("keeps")
    clears = connect("clears")
    assert keeps.subscribe("rap/t", qos=1, retainAsPublished=True) == 1
    assert clears.subscribe("rap/t", qos=1) == 1
    publisher = connect("pub")

    assert publisher.publish("rap/t", b"retained", 1, retain=True) == SUCCESS
    assert publisher.publish("rap/t", b"plain", 1) == SUCCESS

    assert [(m.payload, m.retain) for m in keeps.receive(2)] == [
        (b"retained", True), (b"plain", False),
    ]
    assert [(m.payload, m.retain) for m in clears.receive(2)] == [
        (b"retained", False), (b"plain", False),
    ]


@pytest.mark.parametrize(
    ("handling", "on_first_subscribe", "on_resubscribe"),
    [(0, True, True), (1, True, False), (2, False, False)],
)
def test_retain_handling(connect, handling, on_first_subscribe, on_resubscribe):
    publisher = connect("pub")
    # Stored, but nobody has it yet: polybroker says so with 0x10 (a MAY in the spec).
    assert publisher.publish("rh/t", b"stored", 1, retain=True) == NO_MATCHING_SUBSCRIBERS
    subscriber = connect("sub")

    for expect_retained in (on_first_subscribe, on_resubscribe):
        assert subscriber.subscribe("rh/#", qos=1, retainHandling=handling) == 1
        assert publisher.publish("rh/marker", b"marker", 1) == SUCCESS
        before_marker = subscriber.receive_until("rh/marker")
        assert [(m.topic, m.payload, m.retain) for m in before_marker] == (
            [("rh/t", b"stored", True)] if expect_retained else []
        )


def test_subscription_identifiers_are_delivered(connect):
    publisher = connect("pub")
    assert publisher.publish("sid/kept", b"retained", 1, retain=True) \
        == NO_MATCHING_SUBSCRIBERS
    subscriber = connect("sub")
    assert subscriber.subscribe("sid/#", qos=1, subscription_id=7) == 1
    # The retained message sent on subscribe carries the new subscription's identifier.
    retained = subscriber.next_message()
    assert (retained.topic, retained.retain, retained.props) == (
        "sid/kept", True, {"SubscriptionIdentifier": [7]}
    )
    assert subscriber.subscribe("sid/+/deep", qos=1, subscription_id=268_435_455) == 1
    assert subscriber.subscribe("plain/#", qos=1) == 1

    assert publisher.publish("sid/a", b"one match") == SUCCESS
    assert publisher.publish("sid/x/deep", b"two matches") == SUCCESS
    assert publisher.publish("plain/t", b"no identifier") == SUCCESS

    one, two, plain = subscriber.receive(3)
    assert (one.topic, one.props) == ("sid/a", {"SubscriptionIdentifier": [7]})
    # One copy for overlapping subscriptions, with every identifier [MQTT-3.3.4-3].
    assert two.topic == "sid/x/deep"
    assert sorted(two.props["SubscriptionIdentifier"]) == [7, 268_435_455]
    assert (plain.topic, plain.props) == ("plain/t", {})
    assert subscriber.messages.empty()


# -- shared subscriptions ---------------------------------------------------------------


def test_shared_subscription_splits_messages_between_members_each_exactly_once(connect):
    members = [connect("worker-1"), connect("worker-2")]
    for member in members:
        assert member.subscribe("$share/g/jobs/#", qos=1) == 1
        assert member.subscribe("jobs-done", qos=1) == 1
    publisher = connect("pub")

    count = 20
    for i in range(count):
        assert publisher.publish(f"jobs/{i % 3}", f"job {i:02d}".encode(), 1) == SUCCESS
    # Delivered in order on each connection: after the marker nothing more can come.
    assert publisher.publish("jobs-done", b"done", 1) == SUCCESS

    shares = [member.receive_until("jobs-done") for member in members]
    assert all(shares), f"a member got nothing: {shares}"
    payloads = [m.payload for share in shares for m in share]
    assert sorted(payloads) == [f"job {i:02d}".encode() for i in range(count)]
    for share in shares:  # each member sees its part in publishing order
        assert [m.payload for m in share] == sorted(m.payload for m in share)
        assert {(m.qos, m.retain) for m in share} == {(1, False)}
    assert all(member.messages.empty() for member in members)


# -- topic aliases ----------------------------------------------------------------------


def test_topic_alias_set_by_publisher_reaches_subscriber_as_topic(connect):
    subscriber = connect("sub")  # announces no Topic Alias Maximum: always full topics
    assert subscriber.subscribe("alias/#", qos=1) == 1
    publisher = connect("pub")
    assert publisher.connack_props["TopicAliasMaximum"] == TOPIC_ALIAS_MAXIMUM

    assert publisher.publish("alias/first", b"1", 1, TopicAlias=1) == SUCCESS
    assert publisher.publish("", b"2", 1, TopicAlias=1) == SUCCESS
    assert publisher.publish("", b"3", 0, TopicAlias=1) == SUCCESS
    # The alias can be moved to another topic [MQTT-3.3.2-10] ...
    assert publisher.publish("alias/second", b"4", 1, TopicAlias=1) == SUCCESS
    assert publisher.publish("", b"5", 1, TopicAlias=1) == SUCCESS
    # ... and the highest alias announced is usable.
    assert publisher.publish("alias/last", b"6", 1, TopicAlias=TOPIC_ALIAS_MAXIMUM) == SUCCESS
    assert publisher.publish("", b"7", 1, TopicAlias=TOPIC_ALIAS_MAXIMUM) == SUCCESS

    received = subscriber.receive(7)
    assert [(m.wire_topic, m.payload) for m in received] == [
        ("alias/first", b"1"), ("alias/first", b"2"), ("alias/first", b"3"),
        ("alias/second", b"4"), ("alias/second", b"5"),
        ("alias/last", b"6"), ("alias/last", b"7"),
    ]
    # The publisher's alias is of its own connection: not forwarded.
    assert all(m.props == {} for m in received)


def test_topic_alias_above_server_maximum_is_disconnected_with_0x94(broker, connect):
    publisher = connect("pub")
    publisher.publish("alias/t", b"x", 0, TopicAlias=TOPIC_ALIAS_MAXIMUM + 1)
    assert publisher.disconnected.wait(WAIT), "not disconnected"
    assert (publisher.disconnect_reason, publisher.disconnect_from_server) == (
        TOPIC_ALIAS_INVALID, True
    )
    broker.wait_for_log(r"client pub .*disconnected: protocol error: topic alias 65 out of range")


def test_outbound_topic_aliases_to_subscriber_announcing_topic_alias_maximum(connect):
    subscriber = connect("sub", TopicAliasMaximum=2)
    assert subscriber.subscribe("oa/#", qos=1) == 1
    publisher = connect("pub")

    topics = ["oa/a", "oa/b", "oa/a", "oa/c", "oa/c", "oa/b", "oa/a"]
    for n, topic in enumerate(topics):
        qos = n % 2  # QoS 0 and 1 are encoded apart
        assert publisher.publish(topic, f"{n}".encode(), qos) == SUCCESS

    received = subscriber.receive(len(topics))
    assert [m.topic for m in received] == topics
    assert [m.payload for m in received] == [f"{n}".encode() for n in range(len(topics))]
    # What paho's on_message saw: the first message on a topic sets an alias, later
    # ones send it alone; with both aliases taken, oa/c always goes in full.
    assert [(m.wire_topic, m.props.get("TopicAlias")) for m in received] == [
        ("oa/a", 1), ("oa/b", 2), ("", 1), ("oa/c", None), ("oa/c", None), ("", 2), ("", 1),
    ]


# -- expiry -----------------------------------------------------------------------------


def test_message_expiry_interval_is_forwarded_as_remaining_lifetime(broker, connect):
    keeper = connect("keeper", SessionExpiryInterval=300)
    assert keeper.subscribe("expiry/#", qos=1) == 1
    keeper.disconnect()
    broker.wait_for_log(r"client keeper \(.*\) disconnected: client disconnect")

    publisher = connect("pub")
    assert publisher.publish("expiry/long", b"long", 1, MessageExpiryInterval=120) == SUCCESS
    assert publisher.publish("expiry/none", b"forever", 1) == SUCCESS

    again = connect("keeper", clean_start=False, SessionExpiryInterval=300)
    assert again.session_present is True
    long_lived, forever = again.receive(2)
    assert (long_lived.topic, long_lived.payload) == ("expiry/long", b"long")
    # Time spent queued is taken off [MQTT-3.3.2-6]: at most 120, never 0.
    assert 1 <= long_lived.props["MessageExpiryInterval"] <= 120
    assert (forever.topic, forever.payload, forever.props) == ("expiry/none", b"forever", {})

    # Live delivery carries it too.
    assert publisher.publish("expiry/live", b"live", 1, MessageExpiryInterval=30) == SUCCESS
    live = again.next_message()
    assert live.topic == "expiry/live"
    assert 1 <= live.props["MessageExpiryInterval"] <= 30


def test_session_expiry_interval_keeps_session_and_queued_messages(broker, connect):
    first = connect("keeper", SessionExpiryInterval=300)
    assert first.session_present is False
    assert first.subscribe("offline/t", qos=2) == 2
    first.disconnect()
    broker.wait_for_log(r"client keeper \(.*\) disconnected: client disconnect")

    publisher = connect("pub")
    for qos in (1, 2, 0):  # QoS 0 is not kept for an offline client
        assert publisher.publish("offline/t", f"q{qos}".encode(), qos) == SUCCESS

    again = connect("keeper", clean_start=False, SessionExpiryInterval=300)
    assert again.session_present is True
    queued = again.receive(2)
    assert sorted((m.payload, m.qos) for m in queued) == [(b"q1", 1), (b"q2", 2)]
    # The subscription survived: live messages flow without subscribing again.
    assert publisher.publish("offline/t", b"live", 0) == SUCCESS
    assert again.next_message()[:4] == ("offline/t", b"live", 0, False)


def test_session_without_expiry_interval_ends_with_its_connection(broker, connect):
    first = connect("brief")  # Session Expiry Interval absent: 0
    assert first.subscribe("brief/t", qos=1) == 1
    first.disconnect()
    broker.wait_for_log(r"client brief \(.*\) disconnected: client disconnect")
    publisher = connect("pub")
    assert publisher.publish("brief/t", b"nobody", 1) == NO_MATCHING_SUBSCRIBERS

    again = connect("brief", clean_start=False)
    assert again.session_present is False
    assert again.subscribe("brief/t", qos=1) == 1
    assert publisher.publish("brief/t", b"marker", 1) == SUCCESS
    assert again.next_message()[:2] == ("brief/t", b"marker")


# -- reason codes -----------------------------------------------------------------------


def test_puback_reason_codes_seen_by_on_publish(connect):
    publisher = connect("pub")
    assert publisher.publish("nobody/listens", b"lost", 1) == NO_MATCHING_SUBSCRIBERS
    # A payload that says it is UTF-8 and is not [MQTT-3.3.2-4].
    assert publisher.publish("nobody/listens", b"\xff\xfe", 1, PayloadFormatIndicator=1) \
        == PAYLOAD_FORMAT_INVALID

    subscriber = connect("sub")
    assert subscriber.subscribe("somebody/listens", qos=1) == 1
    assert publisher.publish("somebody/listens", b"heard", 1) == SUCCESS
    assert publisher.publish("somebody/listens", b"\xff", 1, PayloadFormatIndicator=1) \
        == PAYLOAD_FORMAT_INVALID
    assert publisher.publish("somebody/listens", "ünïcode".encode(), 1,
                             PayloadFormatIndicator=1) == SUCCESS
    # The refused message was not delivered.
    assert [m.payload for m in subscriber.receive(2)] == [b"heard", "ünïcode".encode()]
    assert publisher.connected.is_set() and not publisher.disconnected.is_set()


def test_publishing_to_dollar_topics_is_not_authorized(broker, connect):
    # [MQTT-4.7.2-1]: $ topics are the server's; a client's publish there is refused.
    subscriber = connect("sub")
    for topic in ("$SYS/broker/uptime", "$foo/bar", "marker"):
        assert subscriber.subscribe(topic, qos=2) == 2
    publisher = connect("pub")
    # QoS 1 only: after a PUBREC 0x87, paho still sends PUBREL and reports the PUBCOMP's
    # 0x92 (the raw-byte tests check the PUBREC).
    for topic in ("$SYS/broker/uptime", "$foo/bar"):
        assert publisher.publish(topic, b"spoofed", 1) == NOT_AUTHORIZED
    broker.wait_for_log(r"client pub .*: publish to \$SYS/broker/uptime denied")
    assert publisher.publish("marker", b"end", 1) == SUCCESS
    # The broker's own $SYS/broker/uptime may come (retained, or its timer): not the spoof.
    assert [m for m in subscriber.receive_until("marker") if m.payload == b"spoofed"] == []


def test_takeover_sends_disconnect_0x8e_to_the_first_connection(broker, connect):
    first = connect("twin")
    assert first.subscribe("twin/t", qos=1) == 1

    second = connect("twin")
    assert first.disconnected.wait(WAIT), "first connection not closed on takeover"
    assert (first.disconnect_reason, first.disconnect_from_server) == (SESSION_TAKEN_OVER,
                                                                        True)
    broker.wait_for_log(r"client twin: session taken over")

    assert second.subscribe("twin/t", qos=1) == 1
    assert connect("pub").publish("twin/t", b"to the second") == SUCCESS
    assert second.next_message()[:2] == ("twin/t", b"to the second")
    assert first.messages.empty()


# -- mixed protocol versions ------------------------------------------------------------


def test_mixed_versions_mqtt5_and_mqtt311_exchange_messages(connect):
    old = connect("old", protocol=MQTTv311)
    new = connect("new")
    assert old.subscribe("mixed/to-311", qos=2) == 2
    assert new.subscribe("mixed/to-5", qos=2) == 2

    # 5.0 -> 3.1.1: properties have no place in a 3.1.1 PUBLISH and are left out.
    assert new.publish("mixed/to-311", b"from 5.0", 2, **PUBLISH_PROPS) == SUCCESS
    received = old.next_message()
    assert (received.topic, received.payload, received.qos, received.retain) == (
        "mixed/to-311", b"from 5.0", 2, False
    )
    assert received.props == {}

    # 3.1.1 -> 5.0: nothing to add but the message itself.
    assert old.publish("mixed/to-5", b"from 3.1.1", 1) == SUCCESS
    received = new.next_message()
    assert (received.topic, received.payload, received.qos, received.retain, received.props) \
        == ("mixed/to-5", b"from 3.1.1", 1, False, {})


# -- shutdown ---------------------------------------------------------------------------


def test_sigterm_sends_disconnect_0x8b_to_mqtt5_clients(broker, connect):
    new = connect("new")
    old = connect("old", protocol=MQTTv311)

    assert broker.stop() == 0  # SIGTERM, and wait for the process to exit

    assert new.disconnected.wait(WAIT), "5.0 client not disconnected"
    assert (new.disconnect_reason, new.disconnect_from_server) == (SERVER_SHUTTING_DOWN, True)
    # 3.1.1 has no server DISCONNECT: that client only sees the connection close.
    assert old.disconnected.wait(WAIT), "3.1.1 client not disconnected"
    assert old.disconnect_from_server is False
    broker.wait_for_log(r"client new \(.*\) disconnected: shutdown")


# -- the last word ------------------------------------------------------------------------


def test_disconnect_0x93_reaches_a_client_still_pipelining_qos2(tmp_path):
    # Paho's conformance test_flow_control2: QoS 2 publishes beyond the broker's Receive
    # Maximum while PUBRELs and more publishes are still on their way. The broker closes
    # with a lingering close, so the client reads DISCONNECT 0x93, not a reset.
    config = tmp_path / "flow.toml"
    config.write_text("[limits]\nreceive_maximum = 5\n")
    proc = BrokerProcess(tmp_path / "data", "--config", str(config))
    client = PahoClient5(proc.port, "flow")
    try:
        client.client.max_inflight_messages_set(0)  # paho would otherwise hold them back
        client.connect()
        for number in range(500):  # more than the broker reads at once
            client.client.publish("flow/t", b"%04d" % number + b"x" * 1000, qos=2)
        assert client.disconnected.wait(WAIT), "not disconnected"
        assert (client.disconnect_reason, client.disconnect_from_server) == (
            RECEIVE_MAXIMUM_EXCEEDED, True)
        proc.wait_for_log(r"client flow .*disconnected: protocol error: receive maximum exceeded")
    finally:
        client.stop()
        proc.stop()

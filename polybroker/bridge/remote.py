"""One connection of a bridge to its remote broker: the transport (TCP, TLS, WebSocket)
and the MQTT client side of the protocol, on the sans-IO codec.

It is the ``SessionLink`` of the bridge's local session: what the session hands it goes
to the remote, the remote's PUBACK / PUBREC / PUBCOMP come back as ``Session.puback`` /
``pubrec`` / ``pubcomp``, which delete the stored copy. Messages from the remote are
published into the local core and acknowledged only once that publish is durable: like
every connection, the writer sends nothing before ``durability`` says the records written
so far are on disk (so also no QoS 2 PUBLISH before its packet id is recorded, and no
PUBREL before the "released" state).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import trio

from ..adapters.mqtt.outbound import PublishEncoder
from ..config import ConfigError
from ..message import Message
from ..protocols.mqtt import (
    MQTT_5,
    ConnAck,
    Connect,
    Disconnect,
    MQTTError,
    Packet,
    PacketParser,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    Unsubscribe,
    encode,
)
from ..protocols.mqtt import properties as prop
from ..sessions import RESERVED_CLIENT_ID_PREFIX, Delivery, Session
from ..transports.upgrade import UpgradeRefused, connect_websocket
from .config import BridgeTLS, RemoteAddress
from .status import BridgeStatus

if TYPE_CHECKING:
    from ..broker import Broker
    from .config import BridgeConfig


class Bridge(Protocol):
    """What a connection uses of its bridge (``bridge.Bridge``)."""

    broker: Broker
    config: BridgeConfig
    session: Session
    status: BridgeStatus

    @property
    def name(self) -> str: ...

    @property
    def client_id(self) -> str: ...

    def remote_topic(self, topic: str) -> str | None: ...

    def local_topic(self, topic: str) -> str | None: ...

    def notify(self) -> None: ...

log = logging.getLogger("polybroker.bridge")

# The user property a bridge adds to what it carries: a message that has it crossed a
# bridge once, and no bridge forwards it again (two brokers bridged both ways would
# otherwise pass it back and forth for ever).
MARKER = "polybroker-bridge"
TRY_PRIVATE = 0x80  # Mosquitto: added to the protocol level of a bridge's CONNECT
RECEIVE_SIZE = 65536
CONNECT_TIMEOUT = 10.0
DURABLE_WAIT = 5.0
MAX_OUTGOING = 8 * 1024 * 1024  # past it, QoS 0 messages are dropped (a slow remote)


class RemoteError(Exception):
    """The remote refused us or broke the protocol; the message says how."""


def client_context(tls: BridgeTLS) -> ssl.SSLContext:
    """The TLS client context of a bridge; ConfigError names the file at fault."""
    try:
        context = ssl.create_default_context(
            cafile=str(tls.cafile) if tls.cafile else None)
        if tls.certfile is not None:
            context.load_cert_chain(tls.certfile, tls.keyfile)
    except OSError as exc:
        raise ConfigError(f"tls: cannot load certificates: {exc.strerror or exc}") from None
    if tls.alpn:
        context.set_alpn_protocols(list(tls.alpn))
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_stream(
    remote: RemoteAddress, tls: BridgeTLS, context: ssl.SSLContext | None
) -> trio.abc.Stream:
    """TCP, then TLS and the WebSocket upgrade as the URL says."""
    tcp = await trio.open_tcp_stream(remote.host, remote.port)
    stream: trio.abc.Stream = tcp
    try:
        if remote.tls:
            stream = trio.SSLStream(tcp, context or client_context(tls),
                                    server_hostname=tls.server_name or remote.host)
            await stream.do_handshake()
        if remote.websocket:
            host = f"{remote.host}:{remote.port}"
            stream = await connect_websocket(stream, host, remote.path, ("mqtt",))
    except (UpgradeRefused, trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(tcp)
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        raise RemoteError(f"{'TLS' if remote.tls else 'WebSocket'} failed: {cause}") from None
    return stream


def encode_connect(connect: Connect, try_private: bool) -> bytes:
    data = bytearray(encode(connect))
    if try_private:
        # The level byte follows the protocol name; the codec only encodes known levels.
        at = data.index(b"\x00\x04MQTT") + 6
        data[at] |= TRY_PRIVATE
    return bytes(data)


class RemoteConnection:
    """A connected, logged-in MQTT client connection to the remote broker."""

    def __init__(self, bridge: Bridge, stream: trio.abc.Stream, level: int) -> None:
        self.bridge = bridge
        self.stream = stream
        self.level = level
        self.parser = PacketParser()
        self.parser.protocol_level = level
        self.encoder = PublishEncoder(level, 268_435_460, 0)
        self.out = bytearray()
        self._wake = trio.Event()
        self._pending: list[Publish] = []  # packets read along with CONNACK
        self.last_received = trio.current_time()
        self.keep_alive = bridge.config.keep_alive
        self.session_present = False
        self.max_qos = 2  # the remote's Maximum QoS (5.0); a QoS 2 message goes as QoS 1
        self.retain_available = True
        self._next_id = 1
        self._broken = False
        self._writing = False
        self._connacked = False
        self._taken_over = False
        self._cancel: trio.CancelScope | None = None

    # -- start ----------------------------------------------------------------------------

    async def login(self) -> None:
        """CONNECT and wait for the CONNACK; RemoteError if refused."""
        config = self.bridge.config
        props: dict[int, object] = {}
        if self.level == MQTT_5:
            props[prop.SESSION_EXPIRY_INTERVAL] = config.session_expiry
            props[prop.RECEIVE_MAXIMUM] = min(65535, self.bridge.broker.limits.receive_maximum)
        connect = Connect(
            self.bridge.client_id, self.level, config.clean_start, config.keep_alive,
            config.username, None if config.password is None else config.password.encode(),
            properties=props,
        )
        private = config.try_private and self.level < MQTT_5
        await self.stream.send_all(encode_connect(connect, private))
        with trio.move_on_after(CONNECT_TIMEOUT):
            while not self._connacked:
                for packet in await self._read():
                    if self._connacked:
                        self._pending.append(packet)  # handled once running
                    elif isinstance(packet, ConnAck):
                        self._connack(packet)
                    else:
                        raise RemoteError(f"{type(packet).__name__} before CONNACK")
            return
        raise RemoteError(f"no CONNACK within {CONNECT_TIMEOUT:g} s")

    def _connack(self, packet: ConnAck) -> None:
        if packet.return_code:
            raise RemoteError(f"connection refused, code 0x{packet.return_code:02x}")
        self._connacked = True
        self.session_present = packet.session_present
        props = packet.properties
        session = self.bridge.session
        window = self.bridge.config.max_inflight_messages
        session.receive_maximum = min(window, props.get(prop.RECEIVE_MAXIMUM, 65535))
        self.encoder.max_packet_size = props.get(prop.MAXIMUM_PACKET_SIZE, 268_435_460)
        self.max_qos = max(1, props.get(prop.MAXIMUM_QOS, 2))
        self.retain_available = props.get(prop.RETAIN_AVAILABLE, 1) == 1
        if prop.SERVER_KEEP_ALIVE in props:
            self.keep_alive = props[prop.SERVER_KEEP_ALIVE]
        if not packet.session_present:
            # A new remote session: its QoS 2 packet ids from before mean nothing now.
            for packet_id in list(session.inbound_qos2):
                session.inbound_qos2.discard(packet_id)

    def subscribe(self, filters: dict[str, int], stale: set[str]) -> None:
        if stale:
            self._send(Unsubscribe(self._packet_id(), tuple(sorted(stale))))
        if filters:
            five = self.level == MQTT_5
            subs = tuple(
                Subscription(f, min(qos, self.max_qos), no_local=five, retain_as_published=five)
                for f, qos in filters.items()
            )
            self._send(Subscribe(self._packet_id(), subs))

    def _packet_id(self) -> int:
        # SUBSCRIBE / UNSUBSCRIBE ids: a space of their own, away from the session's.
        self._next_id = self._next_id % 1000 + 1
        return 64535 + self._next_id

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until the connection ends: raises RemoteError, OSError or a broken stream."""
        session = self.bridge.session
        with trio.CancelScope() as self._cancel:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    if self.keep_alive:
                        nursery.start_soon(self._keep_alive)
                    for packet in self._pending:
                        self._handle(packet)
                    session.attach(self)  # resends what the remote has not acknowledged
                    self._wake.set()
                    while True:
                        for received in await self._read():
                            self._handle(received)
            except BaseException as exc:
                # Cancelled (reload, shutdown, return to the first remote): the stream still
                # works, unless a write was cut short; anything else broke it.
                self._broken = not _only_cancelled(exc) or self._writing
                raise
            finally:
                if session.link is self:
                    session.detach()
        if self._taken_over:
            raise RemoteError("the local session was taken by another connection")

    async def _read(self) -> list[Packet]:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise RemoteError("connection closed by the remote")
        self.last_received = trio.current_time()
        try:
            return self.parser.feed(bytes(data))
        except MQTTError as exc:
            raise RemoteError(f"protocol error from the remote: {exc}") from None

    async def _write_loop(self) -> None:
        durability = self.bridge.broker.durability
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # Nothing leaves before the records written so far are durable.
            while durability.pending():
                await durability.wait_durable(DURABLE_WAIT)
            if self.out:
                data, self.out = bytes(self.out), bytearray()
                self._writing = True
                await self.stream.send_all(data)
                self._writing = False

    async def _keep_alive(self) -> None:
        interval = self.keep_alive
        while True:
            await trio.sleep(interval * 0.75)
            if trio.current_time() - self.last_received > interval * 1.5:
                raise RemoteError(f"no answer from the remote within {interval * 1.5:g} s")
            self._send(PingReq())

    def _send(self, packet: Packet) -> None:
        self.out += encode(packet, self.level)
        self._wake.set()

    async def close(self) -> None:
        """Say goodbye (DISCONNECT) if the stream still works, and close it."""
        if not self._broken:
            # A stream that fails now was going away anyway.
            with trio.move_on_after(1), contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.send_all(bytes(self.out) + encode(Disconnect(), self.level))
        await trio.aclose_forcefully(self.stream)

    # -- packets from the remote ------------------------------------------------------------

    def _handle(self, packet: object) -> None:
        session = self.bridge.session
        status = self.bridge.status
        if isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, PubAck):
            if packet.reason_code >= 0x80:
                self._refused(packet.packet_id, packet.reason_code)
            elif session.puback(packet.packet_id) or self._downgraded(packet.packet_id):
                status.forwarded += 1
        elif isinstance(packet, PubRec):
            if packet.reason_code >= 0x80:
                self._refused(packet.packet_id, packet.reason_code)
            else:
                session.pubrec(packet.packet_id)
                self._send(PubRel(packet.packet_id))
        elif isinstance(packet, PubComp):
            if session.pubcomp(packet.packet_id):
                status.forwarded += 1
        elif isinstance(packet, PubRel):
            session.inbound_qos2.discard(packet.packet_id)
            self._send(PubComp(packet.packet_id))
        elif isinstance(packet, SubAck):
            status.subacks += 1
            if any(code >= 0x80 for code in packet.return_codes):
                log.warning("bridge %s: the remote refused a subscription (codes %s)",
                            self.bridge.name, list(packet.return_codes))
        elif isinstance(packet, Disconnect):
            raise RemoteError(f"disconnected by the remote (reason 0x{packet.reason_code:02x})")
        elif isinstance(packet, ConnAck):
            raise RemoteError("a second CONNACK")
        self.bridge.notify()

    def _downgraded(self, packet_id: int) -> bool:
        """PUBACK for a QoS 2 message sent as QoS 1 (the remote's Maximum QoS): done."""
        session = self.bridge.session
        return session.pubrec(packet_id) and session.pubcomp(packet_id)

    def _refused(self, packet_id: int, reason: int) -> None:
        delivery = self.bridge.session.inflight.get(packet_id)
        if delivery is not None:
            self.bridge.status.dropped += 1
            log.warning("bridge %s: the remote refused a message to %s (reason 0x%02x): dropped",
                        self.bridge.name, delivery.message.topic, reason)
        self.bridge.session.drop_inflight(packet_id)

    def _on_publish(self, packet: Publish) -> None:
        bridge = self.bridge
        session = bridge.session
        if packet.qos == 2 and packet.packet_id in session.inbound_qos2:
            self._send(PubRec(packet.packet_id))  # a resend: already published here
            return
        topic = bridge.local_topic(packet.topic)
        with bridge.broker.journal.atomic():
            if topic is None:
                log.warning("bridge %s: message to %s matches no inbound rule: ignored",
                            bridge.name, packet.topic)
            else:
                bridge.broker.publish(self._message(packet, topic))
                bridge.status.received += 1
            if packet.qos == 2 and packet.packet_id is not None:
                session.inbound_qos2.add(packet.packet_id)
        if packet.packet_id is not None:  # QoS 1 or 2
            ack = PubAck(packet.packet_id) if packet.qos == 1 else PubRec(packet.packet_id)
            self._send(ack)

    def _message(self, packet: Publish, topic: str) -> Message:
        props = packet.properties
        expiry = props.get(prop.MESSAGE_EXPIRY_INTERVAL)
        headers = tuple(props.get(prop.USER_PROPERTY, ()))
        return Message(
            topic, packet.payload, packet.qos, packet.retain,
            expiry=None if expiry is None else self.bridge.broker.clock() + expiry,
            payload_format=props.get(prop.PAYLOAD_FORMAT_INDICATOR),
            content_type=props.get(prop.CONTENT_TYPE),
            correlation_data=props.get(prop.CORRELATION_DATA),
            response_topic=props.get(prop.RESPONSE_TOPIC),
            headers=_marked(headers, self.bridge.name),
            # Seen by the router as the bridge's own: its No Local keeps it from going back.
            origin_protocol="mqtt", origin_client=session_id(self.bridge),
        )

    # -- SessionLink: messages to the remote ------------------------------------------------

    def send_publish(self, delivery: Delivery, packet_id: int | None, dup: bool) -> bool:
        bridge = self.bridge
        message = delivery.message
        if any(key == MARKER for key, _ in message.headers):
            return False  # it crossed a bridge already: forwarding it could loop
        topic = bridge.remote_topic(message.topic)
        if topic is None:
            bridge.status.dropped += 1
            log.warning("bridge %s: message to %s matches no outbound rule any more: dropped",
                        bridge.name, message.topic)
            return False
        if not delivery.qos and len(self.out) > MAX_OUTGOING:
            bridge.status.dropped += 1
            return True
        remote = replace(message, topic=topic, headers=_marked(message.headers, bridge.name),
                         wire_cache={})
        qos = min(delivery.qos, self.max_qos)
        retain = delivery.retain and self.retain_available
        data = self.encoder.encode(Delivery(remote, qos, retain),
                                   packet_id, dup, bridge.broker.clock())
        if data is None:
            bridge.status.dropped += 1
            log.warning("bridge %s: message to %s is larger than the remote accepts: dropped",
                        bridge.name, topic)
            return False
        self.out += data
        self._wake.set()
        if not delivery.qos:
            bridge.status.forwarded += 1
        return True

    def send_pubrel(self, packet_id: int) -> None:
        self._send(PubRel(packet_id))

    def session_taken_over(self) -> None:
        self._taken_over = True
        if self._cancel is not None:
            self._cancel.cancel()


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


def _marked(headers: tuple[tuple[str, str], ...], name: str) -> tuple[tuple[str, str], ...]:
    if any(key == MARKER for key, _ in headers):
        return headers
    return (*headers, (MARKER, name))


def session_id(bridge: Bridge) -> str:
    return RESERVED_CLIENT_ID_PREFIX + bridge.name


__all__ = ["MARKER", "RemoteConnection", "RemoteError", "client_context", "open_stream"]

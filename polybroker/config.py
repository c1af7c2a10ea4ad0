"""Broker configuration: frozen dataclasses built from TOML and validated once."""

import logging
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .bridge.config import BridgeConfig, parse_bridges
from .cluster.config import ClusterConfig, parse_cluster
from .config_checks import ConfigError as ConfigError  # re-exported: callers catch it from here
from .config_checks import nonempty as _nonempty
from .config_checks import reject_unknown as _reject_unknown
from .config_checks import typed as _typed
from .config_checks import typed_bool as _typed_bool

PROTOCOLS = ("mqtt", "stomp", "amqp", "auto", "http")
TRANSPORTS = ("tcp", "tls", "ws", "wss")
SECURE_TRANSPORTS = frozenset(("tls", "wss"))
WEBSOCKET_TRANSPORTS = frozenset(("ws", "wss"))
# AMQP 0-9-1 has no WebSocket binding.
_ALLOWED_TRANSPORTS = {
    "mqtt": TRANSPORTS, "stomp": TRANSPORTS, "auto": TRANSPORTS, "amqp": ("tcp", "tls"),
    "http": ("tcp", "tls"),  # the management API (``polybroker.management``)
}

# URL scheme -> (protocol, transport): "PROTOCOL" is TCP, "PROTOCOL+TRANSPORT" the rest,
# plus the customary short names for TLS.
SCHEMES: dict[str, tuple[str, str]] = {
    (p if t == "tcp" else f"{p}+{t}"): (p, t)
    for p, allowed in _ALLOWED_TRANSPORTS.items() for t in allowed
} | {"mqtts": ("mqtt", "tls"), "amqps": ("amqp", "tls"), "https": ("http", "tls")}

# The customary ports: IANA's for MQTT and AMQP, ActiveMQ's for STOMP, EMQX's for MQTT
# over WebSocket. `auto` serves MQTT among others, so it takes MQTT's.
_PORTS_BY_TRANSPORT = {
    "mqtt": {"tcp": 1883, "tls": 8883, "ws": 8083, "wss": 8084},
    "stomp": {"tcp": 61613, "tls": 61612, "ws": 61614, "wss": 61615},
    "amqp": {"tcp": 5672, "tls": 5671},
    "http": {"tcp": 18083, "tls": 18084},  # EMQX's dashboard ports
}
DEFAULT_PORTS: dict[tuple[str, str], int] = {
    (p, t): port for p, ports in _PORTS_BY_TRANSPORT.items() for t, port in ports.items()
} | {("auto", t): port for t, port in _PORTS_BY_TRANSPORT["mqtt"].items()}
# The HTTP path a WebSocket listener answers on when none is configured.
DEFAULT_PATHS = {"mqtt": "/mqtt", "stomp": "/stomp", "auto": "/"}
TLS_VERSIONS = ("1.2", "1.3")
MAX_KEEPALIVE = 65535  # MQTT's largest keep alive, and max_keepalive's default
ZERO_ALLOWED = {
    "topic_alias_maximum", "max_subscriptions_per_client", "max_keepalive",
    "max_publish_rate", "max_publish_burst", "max_retained_messages", "max_retained_bytes",
}
# limits.queue_overflow: what a full backlog does with a new message (``overflow``).
QUEUE_OVERFLOW_POLICIES = ("block", "drop-new", "drop-oldest")

log = logging.getLogger("polybroker.config")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Server certificate and client-certificate policy of a TLS (or WSS) listener."""

    certfile: Path | None = None  # PEM: the certificate, then any intermediates
    keyfile: Path | None = None  # PEM private key; None when it is in certfile
    cafile: Path | None = None  # PEM CAs that client certificates must chain to
    require_certificate: bool = False  # False: a client certificate is checked if sent
    # The verified client certificate's CN (or first SAN) becomes the username.
    use_identity_as_username: bool = False
    tls_version: str = "1.2"  # the minimum accepted
    ciphers: str | None = None  # OpenSSL cipher string for TLS 1.2; None: OpenSSL's


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    protocol: str  # mqtt, stomp, amqp or auto (sniffed from the first bytes)
    transport: str  # tcp, tls, ws or wss
    host: str
    port: int
    path: str | None = None  # WebSocket only: the HTTP path of the upgrade request
    tls: TLSConfig | None = None  # tls and wss only
    allowed_origins: tuple[str, ...] = ()  # WebSocket only; empty allows any Origin
    max_connections: int | None = None  # None: no limit
    # Clients without a user name; None: [auth] allow_anonymous, else loopback only.
    allow_anonymous: bool | None = None
    # New connections a second (token bucket, ``max_connection_burst`` saved up, by
    # default one second's worth); beyond it a connection is closed right after accept.
    max_connection_rate: float | None = None  # None: no limit
    max_connection_burst: int | None = None
    # http only: serve the management API on a non-loopback address too.
    allow_remote: bool = False

    @property
    def url(self) -> str:
        scheme = self.protocol if self.transport == "tcp" else f"{self.protocol}+{self.transport}"
        if self.protocol == "http":
            scheme = "https" if self.transport == "tls" else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path or ''}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection and per-session bounds; each has a stated policy when reached."""

    # A packet whose declared size is larger closes the connection.
    max_packet_size: int = 268_435_455
    # QoS 1/2 messages sent and not yet acknowledged, per session; the rest wait queued.
    max_inflight_messages: int = 20
    # QoS 1/2 messages queued per session beyond the in-flight window (also while
    # offline), and per STOMP topic subscription. A persistent session is bounded by
    # storage.max_stored_*_per_session instead. When full, ``queue_overflow`` applies.
    max_queued_messages: int = 1000
    # Payload bytes of those queued messages per session (and per STOMP topic
    # subscription); past it, ``queue_overflow`` applies the same way.
    max_queued_bytes: int = 64 * 1024 * 1024
    # A full backlog: "block" takes the message and holds its publisher back (no
    # acknowledgement, no reading) until there is room again, at most ``max_block_time``
    # seconds; "drop-new" drops the new message (and says so where the protocol can);
    # "drop-oldest" drops the oldest queued message to make room.
    queue_overflow: str = "block"
    # Seconds a publisher is held back; then messages for a backlog still full are
    # dropped as with "drop-new" until it has room again.
    max_block_time: float = 30.0
    # Bytes waiting to be written to one connection; past this, QoS 0 deliveries to
    # it are dropped (a slow reader must not grow the broker's memory); past twice
    # this, the client is disconnected (5.0: 0x97 Quota exceeded) and its QoS 1/2
    # messages stay in its session.
    max_outgoing_bytes: int = 8 * 1024 * 1024
    # Seconds a new connection has to send CONNECT.
    connect_timeout: float = 10.0
    # Seconds a send to a peer may block before the peer is dropped.
    send_timeout: float = 30.0
    # MQTT 5.0 Receive Maximum: QoS 2 messages a client may have unfinished towards the
    # broker; one more is answered with DISCONNECT 0x93.
    receive_maximum: int = 1024
    # MQTT 5.0 topic aliases a client may set (0: none); alias 0 or above: DISCONNECT 0x94.
    topic_alias_maximum: int = 64
    # Subscriptions one client may hold (0: no limit); more are refused in the SUBACK
    # (5.0: 0x97 Quota exceeded, 3.1.1: 0x80).
    max_subscriptions_per_client: int = 0
    # Longest keep alive a client may ask for, in seconds (Mosquitto's max_keepalive; a
    # keep alive of 0, none, counts as longer than any cap below 65535). A 5.0 client
    # asking for more gets this as Server Keep Alive in CONNACK; a 3.1 / 3.1.1 client is
    # refused (CONNACK 0x02). 65535 admits every value, 0 too; 0 means no cap at all.
    max_keepalive: int = MAX_KEEPALIVE
    # Messages one named queue holds (ready and unacknowledged); when full, new messages
    # for it are dropped and logged.
    max_queue_length: int = 100_000
    # Payload bytes one named queue holds (ready and unacknowledged); same policy.
    max_queue_bytes: int = 256 * 1024 * 1024
    # Messages a second one client may publish (MQTT PUBLISH, STOMP SEND; 0: no limit),
    # with ``max_publish_burst`` saved up (0: one second's worth). Beyond it the broker
    # stops reading from that client until the rate allows (TCP back-pressure): the
    # client is slowed down, nothing is dropped.
    max_publish_rate: float = 0.0
    max_publish_burst: int = 0
    # Retained messages kept, and their payload bytes (0: no limit). A retained message
    # for a new topic beyond either is not stored (still delivered, counted and logged);
    # replacing or clearing a retained message is always allowed.
    max_retained_messages: int = 1_000_000
    max_retained_bytes: int = 1024 * 1024 * 1024
    # Delayed messages pending (``delayed``: $delayed/ topics, STOMP delay headers, AMQP
    # x-delayed-message exchanges), their payload bytes, and the longest delay in seconds
    # (EMQX's 4294967 at most). A delayed message over one of them is refused (MQTT 5.0:
    # 0x97, 3.1.1 QoS 1/2: disconnected; STOMP: ERROR; AMQP: nack or channel.close).
    max_delayed_messages: int = 1_000_000
    max_delayed_bytes: int = 1024 * 1024 * 1024
    max_delay: float = 4294967.0


@dataclass(frozen=True, slots=True)
class MQTTSettings:
    # MQTT 5.0: sent as Response Information to a client that asks for it (empty: never).
    # The client appends its own topic levels, e.g. "reply/" -> "reply/<client>/...".
    response_information: str = ""
    # SCRAM-SHA-256 credentials for MQTT 5.0 enhanced authentication, one
    # "user:credential" line each, written by `polybroker scram-password USER`.
    scram_users_file: Path | None = None


@dataclass(frozen=True, slots=True)
class StompSettings:
    # Seconds: how often the broker can send heart-beats and how often it wants them
    # (the CONNECTED frame's heart-beat header; 0 turns a direction off).
    heart_beat_send: float = 10.0
    heart_beat_receive: float = 10.0
    # The shortest interval the broker agrees to: a client asking for beats more often
    # than the above gets them at its own rate, down to this (as RabbitMQ follows the
    # client), so a web client can notice a dead link within a second.
    heart_beat_min: float = 0.1


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The broker as a whole (``[broker]``)."""

    # Seconds between two publications of the $SYS topics (as Mosquitto's sys_interval);
    # 0: no $SYS topics.
    sys_interval: int = 10


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Where log lines go (``[log]``); with neither, to standard error."""

    file: Path | None = None  # appended to; reopened on SIGHUP (logrotate)
    syslog: bool = False  # to the local syslog socket (/dev/log; journald reads it too)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Authentication and authorization (``polybroker.auth``)."""

    password_file: Path | None = None  # user:$scrypt$... lines (``polybroker passwd``)
    acl_file: Path | None = None  # None: every client may read and write everything
    # Default for listeners without their own; None: only loopback listeners allow it.
    allow_anonymous: bool | None = None
    failure_delay: float = 1.0  # seconds before a refused login is answered


@dataclass(frozen=True, slots=True)
class ManagementConfig:
    """Who may use the management API of the http(s) listeners (``[management]``)."""

    # Users of [auth] password_file who may use /api/ (HTTP basic).
    admins: tuple[str, ...] = ()
    # Bearer tokens, one a line (``#`` comments); re-read when the file changes.
    token_file: Path | None = None
    # False: /metrics, /health/live and /health/ready need the same credentials as /api/.
    open_metrics: bool = True
    open_health: bool = True
    # The dashboard: a login session ends after this many seconds without a request.
    dashboard_idle_timeout: float = 900.0


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    # What connection.tune proposes; the client's tune-ok may lower each (0: no limit,
    # for heartbeat: none).
    heartbeat: int = 60  # seconds
    frame_max: int = 131072  # bytes, at least 4096
    channel_max: int = 2047


FSYNC_POLICIES = ("always", "batch", "never")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """The durable state of the broker (``persistence``), kept in a log-structured store
    in ``<data_dir>/store``."""

    # False: everything stays in memory and is lost when the broker stops.
    persistence: bool = True
    # When an acknowledgement may go out: "always" fsyncs as soon as a record is waiting,
    # "batch" (group commit) waits a few milliseconds first so one fsync covers more,
    # "never" does not wait for the disk at all (the operating system writes back).
    fsync: str = "batch"
    # Bytes per log segment file; compaction works one segment at a time.
    segment_size: int = 16 * 1024 * 1024
    # A sealed segment whose share of live records falls below this is rewritten.
    compaction_threshold: float = 0.5
    # QoS 1/2 messages kept per persistent session (queued and in flight), and their bytes.
    # When either is reached, new messages for that session are dropped and logged.
    max_stored_messages_per_session: int = 100_000
    max_stored_bytes_per_session: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    listeners: tuple[ListenerConfig, ...] = ()
    # Defaults for every TLS listener; a [[listener]] table's own keys override them.
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: Limits = field(default_factory=Limits)
    mqtt: MQTTSettings = field(default_factory=MQTTSettings)
    stomp: StompSettings = field(default_factory=StompSettings)
    amqp: AmqpSettings = field(default_factory=AmqpSettings)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    management: ManagementConfig = field(default_factory=ManagementConfig)
    log: LogSettings = field(default_factory=LogSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    data_dir: Path = Path("data")
    log_level: str = "info"
    # MQTT bridges to remote brokers ([[bridge]] tables; ``bridge.config.BridgeConfig``).
    bridges: tuple[BridgeConfig, ...] = ()
    # Other nodes sharing a Redis ([cluster]; ``cluster.config.ClusterConfig``).
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def default_listeners() -> tuple[ListenerConfig, ...]:
    """Like Mosquitto 2 with no configuration: MQTT on the loopback interface only."""
    return (parse_listen_url("mqtt://127.0.0.1:1883"),)


def parse_listen_url(
    url: str, key: str = "--listen", tls: TLSConfig | None = None
) -> ListenerConfig:
    """Parse ``SCHEME://HOST[:PORT][/PATH]``; port 0 picks a free port.

    A path is allowed (and is the upgrade path) for WebSocket schemes only; ``tls``
    gives the certificate settings of a TLS or WSS listener.
    """
    listener = _parse_url(url, key)
    if listener.transport in SECURE_TRANSPORTS:
        listener = replace(listener, tls=_checked_tls(tls or TLSConfig(), f"{key} {url}: "))
    return listener


def _parse_url(url: str, key: str) -> ListenerConfig:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(f"{key}: unsupported scheme in {url!r} (known: {known})")
    protocol, transport = SCHEMES[scheme]
    websocket = transport in WEBSOCKET_TRANSPORTS
    if parts.query or parts.fragment or (parts.path and not websocket):
        raise ConfigError(f"{key}: unexpected path or query in {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{key}: invalid port in {url!r}") from exc
    return ListenerConfig(
        protocol=protocol,
        transport=transport,
        host=parts.hostname or "127.0.0.1",
        port=DEFAULT_PORTS[protocol, transport] if port is None else port,
        path=(parts.path or DEFAULT_PATHS[protocol]) if websocket else None,
    )


def load_config(path: Path) -> BrokerConfig:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> BrokerConfig:
    _reject_unknown(
        raw,
        {"listener", "tls", "limits", "mqtt", "stomp", "amqp", "storage", "auth", "data_dir",
         "log_level", "log", "bridge", "management", "broker", "cluster"},
        "",
    )
    config = BrokerConfig()
    if "tls" in raw:
        config = replace(config, tls=_tls_table(raw["tls"]))
    if "listener" in raw:
        config = replace(config, listeners=_listeners(raw["listener"], config.tls))
    if "limits" in raw:
        config = replace(config, limits=_limits(raw["limits"]))
    if "mqtt" in raw:
        config = replace(config, mqtt=_mqtt(raw["mqtt"]))
    if "stomp" in raw:
        config = replace(config, stomp=_stomp(raw["stomp"]))
    if "amqp" in raw:
        config = replace(config, amqp=_amqp(raw["amqp"]))
    if "storage" in raw:
        config = replace(config, storage=_storage(raw["storage"]))
    if "auth" in raw:
        config = replace(config, auth=_auth(raw["auth"]))
    if "management" in raw:
        config = replace(config, management=_management(raw["management"]))
    if "log" in raw:
        config = replace(config, log=_log(raw["log"]))
    if "bridge" in raw:
        config = replace(config, bridges=parse_bridges(raw["bridge"]))
    if "broker" in raw:
        config = replace(config, broker=_broker(raw["broker"]))
    if "cluster" in raw:
        config = replace(config, cluster=parse_cluster(raw["cluster"]))
    if "data_dir" in raw:
        config = replace(config, data_dir=Path(_typed(raw, "data_dir", str, "")))
    if "log_level" in raw:
        level = _typed(raw, "log_level", str, "")
        if level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: must be one of debug, info, warning, error")
        config = replace(config, log_level=level)
    return config


# -- [tls] and the TLS keys of a [[listener]] ----------------------------------------------

_TLS_KEYS = {f.name: f for f in fields(TLSConfig)}


def _tls_table(raw: Any) -> TLSConfig:
    if not isinstance(raw, dict):
        raise ConfigError("tls: must be a table")
    _reject_unknown(raw, set(_TLS_KEYS), "tls.")
    # Not checked for completeness here: it only supplies defaults to TLS listeners.
    return _tls_values(raw, TLSConfig(), "tls.")


def _tls_values(table: dict[str, Any], base: TLSConfig, prefix: str) -> TLSConfig:
    """``base`` with the TLS keys present in ``table`` applied, each type-checked."""
    values: dict[str, Any] = {}
    for name in _TLS_KEYS.keys() & table.keys():
        if name in ("require_certificate", "use_identity_as_username"):
            values[name] = _typed_bool(table, name, prefix)
        elif name in ("certfile", "keyfile", "cafile"):
            values[name] = Path(_nonempty(table, name, prefix))
        else:
            values[name] = _nonempty(table, name, prefix)
    tls = replace(base, **values)
    if tls.tls_version not in TLS_VERSIONS:
        raise ConfigError(f"{prefix}tls_version: must be one of {', '.join(TLS_VERSIONS)}")
    return tls


def _checked_tls(tls: TLSConfig, prefix: str) -> TLSConfig:
    """A TLS listener's settings must be complete and consistent."""
    if tls.certfile is None:
        raise ConfigError(
            f"{prefix}certfile: a TLS listener needs a certificate "
            "(certfile in [tls] or in the listener, or --certfile)"
        )
    if tls.require_certificate and tls.cafile is None:
        raise ConfigError(f"{prefix}cafile: needed to verify client certificates "
                          "(require_certificate is set)")
    if tls.use_identity_as_username and not tls.require_certificate:
        raise ConfigError(f"{prefix}use_identity_as_username: needs require_certificate = true")
    return tls


# -- [[listener]] ----------------------------------------------------------------------------

_ADDRESS_KEYS = {"protocol", "transport", "host", "port"}
_WEBSOCKET_KEYS = {"path", "allowed_origins"}
_RATE_KEYS = {"max_connection_rate", "max_connection_burst"}
_LISTENER_KEYS = (
    {"url", "max_connections", "allow_anonymous", "allow_remote"} | _RATE_KEYS | _ADDRESS_KEYS
    | _WEBSOCKET_KEYS | set(_TLS_KEYS)
)


def _listeners(raw: Any, tls: TLSConfig) -> tuple[ListenerConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("listener: must be an array of tables ([[listener]])")
    result = []
    for index, table in enumerate(raw):
        where = f"listener[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        _reject_unknown(table, _LISTENER_KEYS, where + ".")
        result.append(_listener(table, tls, where + "."))
    return tuple(result)


def _listener(table: dict[str, Any], tls: TLSConfig, prefix: str) -> ListenerConfig:
    listener = _listener_address(table, prefix)
    websocket = listener.transport in WEBSOCKET_TRANSPORTS
    secure = listener.transport in SECURE_TRANSPORTS
    for keys, allowed, transports in ((_WEBSOCKET_KEYS, websocket, "ws and wss"),
                                      (set(_TLS_KEYS), secure, "tls and wss")):
        misplaced = sorted(table.keys() & keys)
        if misplaced and not allowed:
            raise ConfigError(f"{prefix}{misplaced[0]}: only for {transports} listeners")
    if "path" in table:
        path = _typed(table, "path", str, prefix)
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ConfigError(f"{prefix}path: must start with / and have no query ({path!r})")
        listener = replace(listener, path=path)
    if "allowed_origins" in table:
        listener = replace(listener, allowed_origins=_origins(table, prefix))
    if "max_connections" in table:
        limit = _typed(table, "max_connections", int, prefix)
        if limit <= 0:
            raise ConfigError(f"{prefix}max_connections: must be greater than 0")
        listener = replace(listener, max_connections=limit)
    if "allow_anonymous" in table:
        allow = _typed_bool(table, "allow_anonymous", prefix)
        listener = replace(listener, allow_anonymous=allow)
    if "allow_remote" in table:
        if listener.protocol != "http":
            raise ConfigError(f"{prefix}allow_remote: only for http and https listeners")
        listener = replace(listener, allow_remote=_typed_bool(table, "allow_remote", prefix))
    for name in sorted(table.keys() & _RATE_KEYS):
        value = _typed(table, name, (int, float) if name == "max_connection_rate" else int,
                       prefix)
        if value <= 0:
            raise ConfigError(f"{prefix}{name}: must be greater than 0")
        listener = replace(listener, **{name: value})
    if "max_connection_burst" in table and "max_connection_rate" not in table:
        raise ConfigError(f"{prefix}max_connection_burst: needs max_connection_rate")
    if secure:
        own = _tls_values(table, tls, prefix)
        listener = replace(listener, tls=_checked_tls(own, prefix))
    return listener


def _listener_address(table: dict[str, Any], prefix: str) -> ListenerConfig:
    """From ``url``, or from ``protocol``, ``transport``, ``host`` and ``port``."""
    if "url" in table:
        if clash := sorted(table.keys() & _ADDRESS_KEYS):
            raise ConfigError(f"{prefix}{clash[0]}: not allowed together with url")
        # TLS settings are applied by the caller, from the table and [tls].
        return _parse_url(_typed(table, "url", str, prefix), f"{prefix}url")
    if "protocol" not in table:
        raise ConfigError(f"{prefix}url: missing (or give protocol, transport, host and port)")
    protocol = _typed(table, "protocol", str, prefix)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{prefix}protocol: must be one of {', '.join(PROTOCOLS)}")
    transport = _typed(table, "transport", str, prefix) if "transport" in table else "tcp"
    if transport not in _ALLOWED_TRANSPORTS[protocol]:
        allowed = ", ".join(_ALLOWED_TRANSPORTS[protocol])
        raise ConfigError(f"{prefix}transport: must be one of {allowed} for {protocol}")
    port = DEFAULT_PORTS[protocol, transport]
    if "port" in table:
        port = _typed(table, "port", int, prefix)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{prefix}port: must be 0 to 65535")
    websocket = transport in WEBSOCKET_TRANSPORTS
    return ListenerConfig(
        protocol=protocol,
        transport=transport,
        host=_nonempty(table, "host", prefix) if "host" in table else "127.0.0.1",
        port=port,
        path=DEFAULT_PATHS[protocol] if websocket else None,
    )


def _origins(table: dict[str, Any], prefix: str) -> tuple[str, ...]:
    raw = table["allowed_origins"]
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise ConfigError(f"{prefix}allowed_origins: expected a list of strings")
    origins = []
    for origin in raw:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(
                f"{prefix}allowed_origins: {origin!r} is not an origin like https://example.com"
            )
        # Browsers send the serialized origin: lower case, no trailing slash.
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


# -- [limits] and helpers ------------------------------------------------------------------

def _limits(raw: Any) -> Limits:
    if not isinstance(raw, dict):
        raise ConfigError("limits: must be a table")
    raw = _renamed_keep_alive(raw)
    known = {f.name: f for f in fields(Limits)}
    _reject_unknown(raw, set(known), "limits.")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "queue_overflow":
            values[name] = _typed(raw, name, str, "limits.")
            if values[name] not in QUEUE_OVERFLOW_POLICIES:
                raise ConfigError("limits.queue_overflow: must be one of "
                                  + ", ".join(QUEUE_OVERFLOW_POLICIES))
            continue
        kind = float if known[name].type in (float, "float") else int
        value = _typed(raw, name, (int, float) if kind is float else int, "limits.")
        if value < 0 or (value == 0 and name not in ZERO_ALLOWED):
            raise ConfigError(f"limits.{name}: must be greater than 0")
        values[name] = kind(value)
    if values.get("max_packet_size", 1) > 268_435_455:
        raise ConfigError("limits.max_packet_size: at most 268435455 (MQTT's limit)")
    if values.get("max_keepalive", 0) > MAX_KEEPALIVE:
        raise ConfigError(f"limits.max_keepalive: at most {MAX_KEEPALIVE} (MQTT's limit)")
    if values.get("max_delay", 0) > 4294967:
        raise ConfigError("limits.max_delay: at most 4294967 (EMQX's longest $delayed/)")
    return Limits(**values)


def _renamed_keep_alive(raw: dict[str, Any]) -> dict[str, Any]:
    """``server_keep_alive`` (deprecated) is read as ``max_keepalive``: clients asking
    for less keep their own keep alive now. Its 0 (the client's) is no cap."""
    if "server_keep_alive" not in raw:
        return raw
    if "max_keepalive" in raw:
        raise ConfigError("limits.server_keep_alive: deprecated, and max_keepalive is set too: "
                          "keep max_keepalive only")
    raw = dict(raw)
    value = raw.pop("server_keep_alive")
    raw["max_keepalive"] = value
    log.warning("limits.server_keep_alive is deprecated: read as max_keepalive = %s "
                "(a client asking for a shorter keep alive keeps its own)", value)
    return raw


def _mqtt(raw: Any) -> MQTTSettings:
    if not isinstance(raw, dict):
        raise ConfigError("mqtt: must be a table")
    _reject_unknown(raw, {"response_information", "scram_users_file"}, "mqtt.")
    values: dict[str, Any] = {name: _typed(raw, name, str, "mqtt.") for name in raw}
    if "scram_users_file" in values:
        values["scram_users_file"] = Path(values["scram_users_file"])
    return MQTTSettings(**values)


_AMQP_RANGES = {"heartbeat": (0, 65535), "frame_max": (4096, 2**32 - 1),
                "channel_max": (1, 65535)}


def _amqp(raw: Any) -> AmqpSettings:
    if not isinstance(raw, dict):
        raise ConfigError("amqp: must be a table")
    _reject_unknown(raw, set(_AMQP_RANGES), "amqp.")
    values = {}
    for name in raw:
        value = _typed(raw, name, int, "amqp.")
        low, high = _AMQP_RANGES[name]
        if not low <= value <= high:
            raise ConfigError(f"amqp.{name}: must be between {low} and {high}")
        values[name] = value
    return AmqpSettings(**values)


def _stomp(raw: Any) -> StompSettings:
    if not isinstance(raw, dict):
        raise ConfigError("stomp: must be a table")
    _reject_unknown(raw, {f.name for f in fields(StompSettings)}, "stomp.")
    values = {}
    for name in raw:
        value = _typed(raw, name, (int, float), "stomp.")
        if not 0 <= value <= 2_000_000:  # the header carries milliseconds, below 2**31
            raise ConfigError(f"stomp.{name}: must be between 0 and 2000000 seconds")
        values[name] = float(value)
    return StompSettings(**values)


def _broker(raw: Any) -> BrokerSettings:
    if not isinstance(raw, dict):
        raise ConfigError("broker: must be a table")
    _reject_unknown(raw, {"sys_interval"}, "broker.")
    if "sys_interval" not in raw:
        return BrokerSettings()
    interval = _typed(raw, "sys_interval", int, "broker.")
    if not 0 <= interval <= 86400:
        raise ConfigError("broker.sys_interval: must be between 0 and 86400 seconds")
    return BrokerSettings(sys_interval=interval)


def _log(raw: Any) -> LogSettings:
    if not isinstance(raw, dict):
        raise ConfigError("log: must be a table")
    _reject_unknown(raw, {"file", "syslog"}, "log.")
    file = Path(_nonempty(raw, "file", "log.")) if "file" in raw else None
    syslog = _typed_bool(raw, "syslog", "log.") if "syslog" in raw else False
    return LogSettings(file=file, syslog=syslog)


def _storage(raw: Any) -> StorageConfig:
    if not isinstance(raw, dict):
        raise ConfigError("storage: must be a table")
    known = {f.name for f in fields(StorageConfig)}
    _reject_unknown(raw, known, "storage.")
    values: dict[str, Any] = {}
    if "persistence" in raw:
        values["persistence"] = raw["persistence"]
        if not isinstance(values["persistence"], bool):
            raise ConfigError(f"storage.persistence: expected true or false, "
                              f"got {raw['persistence']!r}")
    if "fsync" in raw:
        values["fsync"] = _typed(raw, "fsync", str, "storage.")
        if values["fsync"] not in FSYNC_POLICIES:
            raise ConfigError(f"storage.fsync: must be one of {', '.join(FSYNC_POLICIES)}")
    if "compaction_threshold" in raw:
        threshold = _typed(raw, "compaction_threshold", (int, float), "storage.")
        if not 0 < threshold <= 1:
            raise ConfigError("storage.compaction_threshold: must be in (0, 1]")
        values["compaction_threshold"] = float(threshold)
    if "segment_size" in raw:
        values["segment_size"] = _typed(raw, "segment_size", int, "storage.")
        if values["segment_size"] < 4096:
            raise ConfigError("storage.segment_size: at least 4096 bytes")
    for name in ("max_stored_messages_per_session", "max_stored_bytes_per_session"):
        if name in raw:
            values[name] = _typed(raw, name, int, "storage.")
            if values[name] <= 0:
                raise ConfigError(f"storage.{name}: must be greater than 0")
    return StorageConfig(**values)


def _management(raw: Any) -> ManagementConfig:
    if not isinstance(raw, dict):
        raise ConfigError("management: must be a table")
    _reject_unknown(raw, {f.name for f in fields(ManagementConfig)}, "management.")
    values: dict[str, Any] = {}
    if "admins" in raw:
        admins = raw["admins"]
        if not isinstance(admins, list) or not all(isinstance(a, str) and a for a in admins):
            raise ConfigError("management.admins: expected a list of user names")
        values["admins"] = tuple(admins)
    if "token_file" in raw:
        values["token_file"] = Path(_nonempty(raw, "token_file", "management."))
    for name in ("open_metrics", "open_health"):
        if name in raw:
            values[name] = _typed_bool(raw, name, "management.")
    if "dashboard_idle_timeout" in raw:
        idle = _typed(raw, "dashboard_idle_timeout", (int, float), "management.")
        if not 10 <= idle <= 86400:
            raise ConfigError("management.dashboard_idle_timeout: must be between 10 and "
                              "86400 seconds")
        values["dashboard_idle_timeout"] = float(idle)
    return ManagementConfig(**values)


def _auth(raw: Any) -> AuthConfig:
    if not isinstance(raw, dict):
        raise ConfigError("auth: must be a table")
    _reject_unknown(raw, {f.name for f in fields(AuthConfig)}, "auth.")
    values: dict[str, Any] = {}
    for name in ("password_file", "acl_file"):
        if name in raw:
            values[name] = Path(_nonempty(raw, name, "auth."))
    if "allow_anonymous" in raw:
        values["allow_anonymous"] = _typed_bool(raw, "allow_anonymous", "auth.")
    if "failure_delay" in raw:
        delay = _typed(raw, "failure_delay", (int, float), "auth.")
        if not 0 <= delay <= 60:
            raise ConfigError("auth.failure_delay: must be between 0 and 60 seconds")
        values["failure_delay"] = float(delay)
    return AuthConfig(**values)

"""The settings themselves: one frozen dataclass per table of the configuration."""

from dataclasses import dataclass, field
from pathlib import Path

from ..bridge.config import BridgeConfig
from ..cluster.config import ClusterConfig

MAX_KEEPALIVE = 65535  # MQTT's largest keep alive, and max_keepalive's default


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

"""Broker configuration: frozen dataclasses built from TOML and validated once."""

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SCHEMES = {"mqtt": ("mqtt", "tcp")}
DEFAULT_PORTS = {"mqtt": 1883}
ZERO_ALLOWED = {"topic_alias_maximum"}


class ConfigError(ValueError):
    """A configuration value is unknown or invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    protocol: str
    transport: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection and per-session bounds; each has a stated policy when reached."""

    # A packet whose declared size is larger closes the connection.
    max_packet_size: int = 268_435_455
    # QoS 1/2 messages sent and not yet acknowledged, per session; the rest wait queued.
    max_inflight_messages: int = 20
    # QoS 1/2 messages queued per session beyond the in-flight window (also while
    # offline). When full, new messages for that session are dropped and logged.
    max_queued_messages: int = 1000
    # Bytes waiting to be written to one connection; past this, QoS 0 deliveries to
    # it are dropped (a slow reader must not grow the broker's memory).
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


@dataclass(frozen=True, slots=True)
class MQTTSettings:
    # MQTT 5.0: sent as Response Information to a client that asks for it (empty: never).
    # The client appends its own topic levels, e.g. "reply/" -> "reply/<client>/...".
    response_information: str = ""


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
    limits: Limits = field(default_factory=Limits)
    mqtt: MQTTSettings = field(default_factory=MQTTSettings)
    storage: StorageConfig = field(default_factory=StorageConfig)
    data_dir: Path = Path("data")
    log_level: str = "info"


def default_listeners() -> tuple[ListenerConfig, ...]:
    """Like Mosquitto 2 with no configuration: MQTT on the loopback interface only."""
    return (parse_listen_url("mqtt://127.0.0.1:1883"),)


def parse_listen_url(url: str, key: str = "--listen") -> ListenerConfig:
    """Parse ``mqtt://HOST:PORT`` (port 0 picks a free port)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(f"{key}: unsupported scheme in {url!r} (known: {known})")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{key}: unexpected path or query in {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{key}: invalid port in {url!r}") from exc
    protocol, transport = SCHEMES[scheme]
    return ListenerConfig(
        protocol=protocol,
        transport=transport,
        host=parts.hostname or "127.0.0.1",
        port=DEFAULT_PORTS[protocol] if port is None else port,
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
    _reject_unknown(raw, {"listener", "limits", "mqtt", "storage", "data_dir", "log_level"}, "")
    config = BrokerConfig()
    if "listener" in raw:
        config = replace(config, listeners=_listeners(raw["listener"]))
    if "limits" in raw:
        config = replace(config, limits=_limits(raw["limits"]))
    if "mqtt" in raw:
        config = replace(config, mqtt=_mqtt(raw["mqtt"]))
    if "storage" in raw:
        config = replace(config, storage=_storage(raw["storage"]))
    if "data_dir" in raw:
        config = replace(config, data_dir=Path(_typed(raw, "data_dir", str, "")))
    if "log_level" in raw:
        level = _typed(raw, "log_level", str, "")
        if level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: must be one of debug, info, warning, error")
        config = replace(config, log_level=level)
    return config


def _listeners(raw: Any) -> tuple[ListenerConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("listener: must be an array of tables ([[listener]])")
    result = []
    for index, table in enumerate(raw):
        where = f"listener[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        _reject_unknown(table, {"url"}, where + ".")
        if "url" not in table:
            raise ConfigError(f"{where}.url: missing")
        result.append(parse_listen_url(_typed(table, "url", str, where + "."), f"{where}.url"))
    return tuple(result)


def _limits(raw: Any) -> Limits:
    if not isinstance(raw, dict):
        raise ConfigError("limits: must be a table")
    known = {f.name: f for f in fields(Limits)}
    _reject_unknown(raw, set(known), "limits.")
    values = {}
    for name, value in raw.items():
        kind = float if known[name].type in (float, "float") else int
        value = _typed(raw, name, (int, float) if kind is float else int, "limits.")
        if value < 0 or (value == 0 and name not in ZERO_ALLOWED):
            raise ConfigError(f"limits.{name}: must be greater than 0")
        values[name] = kind(value)
    if values.get("max_packet_size", 1) > 268_435_455:
        raise ConfigError("limits.max_packet_size: at most 268435455 (MQTT's limit)")
    return Limits(**values)


def _mqtt(raw: Any) -> MQTTSettings:
    if not isinstance(raw, dict):
        raise ConfigError("mqtt: must be a table")
    _reject_unknown(raw, {"response_information"}, "mqtt.")
    values = {name: _typed(raw, name, str, "mqtt.") for name in raw}
    return MQTTSettings(**values)


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


def _reject_unknown(table: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], prefix: str) -> Any:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "number"
        raise ConfigError(f"{prefix}{key}: expected {expected}, got {value!r}")
    return value

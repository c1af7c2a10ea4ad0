"""Broker configuration: frozen dataclasses built from TOML and validated once."""

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SCHEMES = {"mqtt": ("mqtt", "tcp"), "stomp": ("stomp", "tcp")}
DEFAULT_PORTS = {"mqtt": 1883, "stomp": 61613}
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
    # Messages one named queue holds (ready and unacknowledged); when full, new messages
    # for it are dropped and logged.
    max_queue_length: int = 100_000


@dataclass(frozen=True, slots=True)
class MQTTSettings:
    # MQTT 5.0: sent as Response Information to a client that asks for it (empty: never).
    # The client appends its own topic levels, e.g. "reply/" -> "reply/<client>/...".
    response_information: str = ""


@dataclass(frozen=True, slots=True)
class StompSettings:
    # Seconds: how often the broker can send heart-beats and how often it wants them
    # (the CONNECTED frame's heart-beat header; 0 turns a direction off).
    heart_beat_send: float = 10.0
    heart_beat_receive: float = 10.0


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    listeners: tuple[ListenerConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    mqtt: MQTTSettings = field(default_factory=MQTTSettings)
    stomp: StompSettings = field(default_factory=StompSettings)
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
    _reject_unknown(raw, {"listener", "limits", "mqtt", "stomp", "data_dir", "log_level"}, "")
    config = BrokerConfig()
    if "listener" in raw:
        config = replace(config, listeners=_listeners(raw["listener"]))
    if "limits" in raw:
        config = replace(config, limits=_limits(raw["limits"]))
    if "mqtt" in raw:
        config = replace(config, mqtt=_mqtt(raw["mqtt"]))
    if "stomp" in raw:
        config = replace(config, stomp=_stomp(raw["stomp"]))
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

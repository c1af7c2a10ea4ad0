"""``[[bridge]]`` tables: one MQTT bridge to a remote broker each.

Keys follow Mosquitto's bridge settings where it has one (``topic`` rules with a
direction, QoS and local / remote prefixes, ``try_private``, ``keepalive_interval`` as
``keep_alive``, ``cleansession`` as ``clean_start``, ``restart_timeout`` as the
``reconnect_min`` / ``reconnect_max`` back-off bounds).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config_checks import ConfigError
from ..config_checks import nonempty as _nonempty
from ..config_checks import reject_unknown as _reject_unknown
from ..config_checks import typed as _typed
from ..config_checks import typed_bool as _typed_bool
from ..protocols.mqtt import is_valid_topic_filter

# URL scheme -> (TLS, WebSocket, default port)
REMOTE_SCHEMES = {
    "mqtt": (False, False, 1883), "mqtts": (True, False, 8883),
    "mqtt+ws": (False, True, 80), "mqtt+wss": (True, True, 443),
}
DIRECTIONS = ("out", "in", "both")


@dataclass(frozen=True, slots=True)
class RemoteAddress:
    url: str
    host: str
    port: int
    tls: bool
    websocket: bool
    path: str  # the WebSocket upgrade path


@dataclass(frozen=True, slots=True)
class TopicRule:
    """Mosquitto's ``topic PATTERN DIRECTION QOS LOCAL_PREFIX REMOTE_PREFIX``: local topic
    ``local_prefix + X`` is remote topic ``remote_prefix + X`` for X matching ``pattern``."""

    pattern: str
    direction: str = "out"
    qos: int = 1
    local_prefix: str = ""
    remote_prefix: str = ""

    @property
    def local_filter(self) -> str:
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        return self.remote_prefix + self.pattern

    @property
    def outbound(self) -> bool:
        return self.direction in ("out", "both")

    @property
    def inbound(self) -> bool:
        return self.direction in ("in", "both")


@dataclass(frozen=True, slots=True)
class BridgeTLS:
    cafile: Path | None = None  # None: the system's trusted CAs
    certfile: Path | None = None  # client certificate (PEM), for remotes that require one
    keyfile: Path | None = None
    server_name: str | None = None  # SNI and the name checked; None: the URL's host
    alpn: tuple[str, ...] = ()
    insecure: bool = False  # no certificate check at all: for tests only


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    name: str
    remotes: tuple[RemoteAddress, ...]
    rules: tuple[TopicRule, ...]
    mqtt_version: int = 5  # 4 (3.1.1) or 5
    client_id: str = ""  # empty: "<hostname>.<name>"
    username: str | None = None
    password: str | None = None
    tls: BridgeTLS = BridgeTLS()
    keep_alive: int = 60
    clean_start: bool = False
    session_expiry: int = 3600  # 5.0: seconds the remote keeps our session
    try_private: bool = True  # 3.1.1: tell a Mosquitto remote it is a bridge (level 0x84)
    # Seconds between reconnection attempts: doubling from min to max, with jitter.
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    # While on a fail-over remote, seconds between attempts to return to the first.
    primary_retry: float = 60.0
    # Messages waiting for the remote (queued and in flight), and their payload bytes;
    # when either is full, new messages are dropped and counted (also bounded by
    # [storage] max_stored_messages_per_session / max_stored_bytes_per_session).
    max_queued_messages: int = 100_000
    max_queued_bytes: int = 64 * 1024 * 1024
    max_inflight_messages: int = 20


_BRIDGE_KEYS = {
    "name", "url", "urls", "mqtt_version", "client_id", "username", "password", "keep_alive",
    "clean_start", "session_expiry", "try_private", "reconnect_min", "reconnect_max",
    "primary_retry", "max_queued_messages", "max_queued_bytes", "max_inflight_messages",
    "topic", "tls",
}
_RULE_KEYS = {"topic", "direction", "qos", "local_prefix", "remote_prefix"}
_TLS_KEYS = {"cafile", "certfile", "keyfile", "server_name", "alpn", "insecure"}


def parse_bridges(raw: Any) -> tuple[BridgeConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("bridge: must be an array of tables ([[bridge]])")
    bridges = tuple(_bridge(table, f"bridge[{i}].") for i, table in enumerate(raw))
    names = [b.name for b in bridges]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"bridge: two bridges named {name!r}")
    return bridges


def parse_remote(url: str, prefix: str) -> RemoteAddress:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(f"{prefix}url: unsupported scheme in {url!r} "
                          f"(known: {', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    tls, websocket, default_port = REMOTE_SCHEMES[scheme]
    if not parts.hostname:
        raise ConfigError(f"{prefix}url: no host in {url!r}")
    if parts.path and not websocket:
        raise ConfigError(f"{prefix}url: unexpected path in {url!r}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"{prefix}url: invalid port in {url!r}") from None
    return RemoteAddress(url, parts.hostname, port, tls, websocket, parts.path or "/mqtt")


def _bridge(table: Any, prefix: str) -> BridgeConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix[:-1]}: must be a table")
    _reject_unknown(table, _BRIDGE_KEYS, prefix)
    if "name" not in table:
        raise ConfigError(f"{prefix}name: required")
    name = _nonempty(table, "name", prefix)
    if any(c in name for c in "/+#\0"):
        raise ConfigError(f"{prefix}name: may not contain '/', '+', '#'")
    prefix = f"bridge {name}: "
    urls = [table["url"]] if "url" in table else table.get("urls", [])
    if not urls or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"{prefix}url (or urls, a list for fail-over): required")
    values: dict[str, Any] = {
        "name": name, "remotes": tuple(parse_remote(u, prefix) for u in urls),
    }
    for key in ("client_id", "username", "password"):
        if key in table:
            values[key] = _typed(table, key, str, prefix)
    for key in ("clean_start", "try_private"):
        if key in table:
            values[key] = _typed_bool(table, key, prefix)
    for key, low, high in (("keep_alive", 0, 65535), ("session_expiry", 0, 0xFFFFFFFF),
                           ("max_queued_messages", 1, 2**31), ("max_queued_bytes", 1, 2**62),
                           ("max_inflight_messages", 1, 65535), ("mqtt_version", 4, 5)):
        if key in table:
            value = _typed(table, key, int, prefix)
            if not low <= value <= high:
                raise ConfigError(f"{prefix}{key}: must be from {low} to {high}")
            values[key] = value
    for key in ("reconnect_min", "reconnect_max", "primary_retry"):
        if key in table:
            value = float(_typed(table, key, (int, float), prefix))
            if value <= 0:
                raise ConfigError(f"{prefix}{key}: must be above 0")
            values[key] = value
    if values.get("reconnect_min", 1.0) > values.get("reconnect_max", 30.0):
        raise ConfigError(f"{prefix}reconnect_min: above reconnect_max")
    if "tls" in table:
        values["tls"] = _tls(table["tls"], prefix + "tls.")
    rules = table.get("topic", [])
    if not isinstance(rules, list) or not rules:
        raise ConfigError(f"{prefix}topic: at least one [[bridge.topic]] rule is required")
    values["rules"] = tuple(_rule(rule, f"{prefix}topic[{i}].") for i, rule in enumerate(rules))
    return BridgeConfig(**values)


def _rule(table: Any, prefix: str) -> TopicRule:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix[:-1]}: must be a table")
    _reject_unknown(table, _RULE_KEYS, prefix)
    if "topic" not in table:
        raise ConfigError(f"{prefix}topic: required")
    values: dict[str, Any] = {"pattern": _typed(table, "topic", str, prefix)}
    for key in ("direction", "local_prefix", "remote_prefix"):
        if key in table:
            values[key] = _typed(table, key, str, prefix)
    if values.get("direction", "out") not in DIRECTIONS:
        raise ConfigError(f"{prefix}direction: must be one of {', '.join(DIRECTIONS)}")
    if "qos" in table:
        values["qos"] = _typed(table, "qos", int, prefix)
        if values["qos"] not in (0, 1, 2):
            raise ConfigError(f"{prefix}qos: must be 0, 1 or 2")
    rule = TopicRule(**values)
    for side in ("local", "remote"):
        bridged = getattr(rule, f"{side}_filter")
        if any(c in getattr(rule, f"{side}_prefix") for c in "+#"):
            raise ConfigError(f"{prefix}{side}_prefix: may not contain wildcards")
        if not bridged or not is_valid_topic_filter(bridged):
            raise ConfigError(f"{prefix}topic: {bridged!r} is not a valid topic filter")
    return rule


def _tls(table: Any, prefix: str) -> BridgeTLS:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix[:-1]}: must be a table")
    _reject_unknown(table, _TLS_KEYS, prefix)
    values: dict[str, Any] = {}
    for key in ("cafile", "certfile", "keyfile"):
        if key in table:
            values[key] = Path(_nonempty(table, key, prefix))
    if "server_name" in table:
        values["server_name"] = _nonempty(table, "server_name", prefix)
    if "alpn" in table:
        alpn = table["alpn"]
        if not isinstance(alpn, list) or not all(isinstance(a, str) and a for a in alpn):
            raise ConfigError(f"{prefix}alpn: expected a list of protocol names")
        values["alpn"] = tuple(alpn)
    if "insecure" in table:
        values["insecure"] = _typed_bool(table, "insecure", prefix)
    if "keyfile" in values and "certfile" not in values:
        raise ConfigError(f"{prefix}keyfile: needs certfile")
    return BridgeTLS(**values)

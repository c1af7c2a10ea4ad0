"""Listeners: the URL schemes and their default ports, ``--listen`` URLs, and the
``[tls]`` and ``[[listener]]`` tables."""

from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config_checks import ConfigError
from ..config_checks import nonempty as _nonempty
from ..config_checks import reject_unknown as _reject_unknown
from ..config_checks import typed as _typed
from ..config_checks import typed_bool as _typed_bool
from .settings import ListenerConfig, TLSConfig

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

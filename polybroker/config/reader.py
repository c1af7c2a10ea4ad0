"""Reading a TOML configuration file: the top-level keys, and the checks of each table
that has no module of its own (``listeners`` and ``limits`` have)."""

import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..bridge.config import parse_bridges
from ..cluster.config import parse_cluster
from ..config_checks import ConfigError
from ..config_checks import nonempty as _nonempty
from ..config_checks import reject_unknown as _reject_unknown
from ..config_checks import typed as _typed
from ..config_checks import typed_bool as _typed_bool
from .limits import _limits
from .listeners import _listeners, _tls_table
from .settings import (
    FSYNC_POLICIES,
    AmqpSettings,
    AuthConfig,
    BrokerConfig,
    BrokerSettings,
    LogSettings,
    ManagementConfig,
    MQTTSettings,
    StompSettings,
    StorageConfig,
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
    if "cluster" in raw:
        config = replace(config, cluster=parse_cluster(raw["cluster"]))
    if "broker" in raw:
        config = replace(config, broker=_broker(raw["broker"]))
    if "data_dir" in raw:
        config = replace(config, data_dir=Path(_typed(raw, "data_dir", str, "")))
    if "log_level" in raw:
        level = _typed(raw, "log_level", str, "")
        if level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: must be one of debug, info, warning, error")
        config = replace(config, log_level=level)
    return config


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

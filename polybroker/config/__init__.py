"""Broker configuration: frozen dataclasses built from TOML and validated once.

``settings`` holds the dataclasses, ``listeners`` the listener URLs and the ``[tls]`` and
``[[listener]]`` tables, ``limits`` the ``[limits]`` table and ``reader`` the file and the
other tables. The names below are what the rest of the broker imports from here.
"""

from ..config_checks import ConfigError
from .listeners import DEFAULT_PATHS, WEBSOCKET_TRANSPORTS, default_listeners, parse_listen_url
from .reader import config_from_dict, load_config
from .settings import (
    MAX_KEEPALIVE,
    AmqpSettings,
    AuthConfig,
    BrokerConfig,
    BrokerSettings,
    Limits,
    ListenerConfig,
    LogSettings,
    ManagementConfig,
    MQTTSettings,
    StompSettings,
    StorageConfig,
    TLSConfig,
)

__all__ = [
    "DEFAULT_PATHS",
    "MAX_KEEPALIVE",
    "WEBSOCKET_TRANSPORTS",
    "AmqpSettings",
    "AuthConfig",
    "BrokerConfig",
    "BrokerSettings",
    "ConfigError",
    "Limits",
    "ListenerConfig",
    "LogSettings",
    "MQTTSettings",
    "ManagementConfig",
    "StompSettings",
    "StorageConfig",
    "TLSConfig",
    "config_from_dict",
    "default_listeners",
    "load_config",
    "parse_listen_url",
]

"""Checking the values of a configuration table: the error that names the key, and the
checks every table's parser uses (``config``, ``bridge.config``)."""

from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown or invalid; the message names the key."""


def reject_unknown(table: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")


def typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], prefix: str) -> Any:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "number"
        raise ConfigError(f"{prefix}{key}: expected {expected}, got {value!r}")
    return value


def typed_bool(table: dict[str, Any], key: str, prefix: str) -> bool:
    value = table[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: expected true or false, got {value!r}")
    return value


def nonempty(table: dict[str, Any], key: str, prefix: str) -> str:
    value: str = typed(table, key, str, prefix)
    if not value:
        raise ConfigError(f"{prefix}{key}: must not be empty")
    return value

"""The ``[limits]`` table: each bound checked against its range."""

import logging
from dataclasses import fields
from typing import Any

from ..config_checks import ConfigError
from ..config_checks import reject_unknown as _reject_unknown
from ..config_checks import typed as _typed
from .settings import MAX_KEEPALIVE, Limits

ZERO_ALLOWED = {
    "topic_alias_maximum", "max_subscriptions_per_client", "max_keepalive",
    "max_publish_rate", "max_publish_burst", "max_retained_messages", "max_retained_bytes",
}
# limits.queue_overflow: what a full backlog does with a new message (``overflow``).
QUEUE_OVERFLOW_POLICIES = ("block", "drop-new", "drop-oldest")

log = logging.getLogger("polybroker.config")


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

"""The ``[cluster]`` table: which Redis the nodes share and this node's name."""

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..config_checks import ConfigError, nonempty, reject_unknown, typed

REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    # redis://[user:password@]host:port/db, rediss:// for TLS; None: no cluster.
    redis: str | None = None
    # This node's name, unique in the cluster; None: host name and process id.
    node: str | None = None
    # Entries kept at most in a node's stream while it does not read them (a node
    # that is away long loses the oldest beyond this).
    stream_maxlen: int = 100_000
    # Seconds after a node's last heartbeat that the others forget its subscriptions.
    node_timeout: float = 10.0

    def node_name(self) -> str:
        return self.node or f"{socket.gethostname()}-{os.getpid()}"


def parse_cluster(raw: Any) -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ConfigError("cluster: must be a table")
    reject_unknown(raw, {"redis", "node", "stream_maxlen", "node_timeout"}, "cluster.")
    values: dict[str, Any] = {}
    if "redis" in raw:
        url = nonempty(raw, "redis", "cluster.")
        if urlsplit(url).scheme not in REDIS_SCHEMES:
            raise ConfigError(f"cluster.redis: expected a redis://, rediss:// or unix:// URL, "
                              f"got {url!r}")
        values["redis"] = url
    if "node" in raw:
        values["node"] = nonempty(raw, "node", "cluster.")
    if "stream_maxlen" in raw:
        maxlen = typed(raw, "stream_maxlen", int, "cluster.")
        if maxlen < 100:
            raise ConfigError("cluster.stream_maxlen: must be at least 100")
        values["stream_maxlen"] = maxlen
    if "node_timeout" in raw:
        timeout = typed(raw, "node_timeout", (int, float), "cluster.")
        if not 1 <= timeout <= 3600:
            raise ConfigError("cluster.node_timeout: must be between 1 and 3600 seconds")
        values["node_timeout"] = float(timeout)
    return ClusterConfig(**values)

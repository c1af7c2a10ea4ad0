"""What a test broker offers its test: the bound URLs and where its files are."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import trio

from .. import certs
from ..config import BrokerConfig, StorageConfig, TLSConfig, parse_listen_url
from .capture import Capture

HOST = "127.0.0.1"
# Every protocol on its own free port; the TLS ones too when asked for.
PLAIN_SCHEMES = ("mqtt", "stomp", "amqp", "mqtt+ws", "stomp+ws")
TLS_SCHEMES = ("mqtts", "stomp+tls", "amqps", "mqtt+wss", "stomp+wss")


@dataclass
class Endpoints:
    """A running test broker: ``url("mqtt")`` is ``mqtt://127.0.0.1:PORT``; ``port``,
    ``mqtt_port``, ... the same as numbers. ``certs_dir`` holds ``ca.crt`` (and the
    server's certificate and key) when the broker has TLS listeners."""

    urls: tuple[str, ...]
    data_dir: Path
    certs_dir: Path | None = None
    host: str = HOST
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def url(self, scheme: str) -> str:
        """The first bound URL of ``scheme`` (``mqtt``, ``mqtt+ws``, ``amqps``, ...)."""
        scheme = _canonical(scheme)
        for url in self.urls:
            if _canonical(url.split("://", 1)[0]) == scheme:
                return url
        raise KeyError(f"no {scheme} listener (listening on {', '.join(self.urls)})")

    def port(self, scheme: str) -> int:
        port = urlsplit(self.url(scheme)).port
        if port is None:  # every URL of a running broker names its bound port
            raise KeyError(f"no port in {self.url(scheme)}")
        return port

    @property
    def mqtt_port(self) -> int:
        return self.port("mqtt")

    @property
    def stomp_port(self) -> int:
        return self.port("stomp")

    @property
    def amqp_port(self) -> int:
        return self.port("amqp")

    @property
    def ws_port(self) -> int:
        """MQTT over WebSocket (path ``/mqtt``)."""
        return self.port("mqtt+ws")

    @property
    def ca_file(self) -> Path:
        if self.certs_dir is None:
            raise KeyError("this broker has no TLS listeners (ask for tls=True)")
        return self.certs_dir / "ca.crt"

    def capture(self, topic_filter: str = "#") -> Capture:
        """Record what is published on ``topic_filter`` from now on (a ``Capture``,
        subscribed before this returns; closed with the broker)."""
        capture = Capture(self.host, self.mqtt_port, topic_filter)
        self._closers.append(capture.close)
        return capture

    async def capture_async(self, topic_filter: str = "#") -> Capture:
        """``capture`` for trio tests whose loop runs the broker itself: the subscription
        is made from a worker thread, so the loop stays free to answer it."""
        return await trio.to_thread.run_sync(self.capture, topic_filter)

    def close_captures(self) -> None:
        while self._closers:
            self._closers.pop()()


def _canonical(scheme: str) -> str:
    return {"mqtt+tls": "mqtts", "amqp+tls": "amqps"}.get(scheme, scheme)


def make_certs(directory: Path) -> Path:
    """A development CA and a server certificate for localhost, 127.0.0.1 and ::1."""
    ca, _ = certs.load_or_create_ca(directory)
    if not (directory / "server.crt").exists():
        certs.issue_server(ca, directory, certs.DEFAULT_HOSTS)
    return directory


def listen_urls(tls: bool) -> tuple[str, ...]:
    schemes = PLAIN_SCHEMES + (TLS_SCHEMES if tls else ())
    return tuple(f"{scheme}://{HOST}:0" for scheme in schemes)


def broker_config(data_dir: Path, certs_dir: Path | None = None, *,
                persistence: bool = True) -> BrokerConfig:
    """Every protocol on free loopback ports (TLS too with ``certs_dir``), data in
    ``data_dir``."""
    tls = None
    if certs_dir is not None:
        tls = TLSConfig(certfile=certs_dir / "server.crt", keyfile=certs_dir / "server.key")
    listeners = tuple(parse_listen_url(url, tls=tls) for url in listen_urls(tls is not None))
    return BrokerConfig(listeners=listeners, data_dir=data_dir,
                        storage=StorageConfig(persistence=persistence))

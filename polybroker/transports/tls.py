"""TLS for listeners with the stdlib ``ssl`` module over trio streams.

A listener keeps a ``ReloadableContext``: new connections take whatever context it
holds when they arrive, so ``reload`` (on SIGHUP) swaps certificates for new
connections while established ones keep the context they were made with.
"""

import logging
import ssl
from typing import Any

import trio

from ..config import ConfigError, TLSConfig

log = logging.getLogger("polybroker.tls")

_MINIMUM_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# Subject alternative name kinds that can stand for a client, in getpeercert()'s spelling.
_IDENTITY_SAN_KINDS = ("DNS", "email", "URI", "IP Address")


def build_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context from the settings; ConfigError names the file or key at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MINIMUM_VERSIONS[tls.tls_version]
    if tls.certfile is None:  # the config's checks require one for TLS listeners
        raise ConfigError("certfile: required for a TLS listener")
    try:
        context.load_cert_chain(tls.certfile, tls.keyfile)
    except OSError as exc:  # ssl.SSLError is an OSError too, with a library reason
        files = str(tls.certfile) + (f" / {tls.keyfile}" if tls.keyfile else "")
        raise ConfigError(f"certfile / keyfile {files}: cannot load: {_reason(exc)}") from exc
    if tls.cafile is not None:
        try:
            context.load_verify_locations(cafile=tls.cafile)
        except OSError as exc:
            raise ConfigError(f"cafile {tls.cafile}: cannot load: {_reason(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_certificate else ssl.CERT_OPTIONAL
    if tls.ciphers is not None:
        try:
            context.set_ciphers(tls.ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"ciphers {tls.ciphers!r}: {_reason(exc)}") from exc
    return context


def _reason(exc: OSError) -> str:
    return getattr(exc, "reason", None) or exc.strerror or str(exc)


class ReloadableContext:
    """The SSL context a listener hands to new connections."""

    def __init__(self, tls: TLSConfig, name: str) -> None:
        self.tls = tls
        self.name = name
        self.context = build_context(tls)

    def reload(self) -> bool:
        """Re-read the files; on failure keep serving the previous certificates."""
        try:
            context = build_context(self.tls)
        except ConfigError as exc:
            log.error("%s: certificates not reloaded, keeping the previous ones: %s",
                      self.name, exc)
            return False
        self.context = context
        log.info("%s: certificates reloaded", self.name)
        return True


async def accept_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext
) -> trio.SSLStream[trio.abc.Stream]:
    """The server side of the handshake; raises trio.BrokenResourceError if it fails.

    Not https_compatible: closing sends close_notify, which clients such as paho wait
    for; a client that drops TCP without one shows as a lost connection.
    """
    tls_stream = trio.SSLStream(stream, context, server_side=True)
    await tls_stream.do_handshake()
    return tls_stream


def handshake_error(exc: BaseException) -> str:
    """What went wrong in a handshake, for the log line (the ssl reason when there is one)."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause) or type(cause).__name__


def certificate_identity(cert: dict[str, Any] | None) -> str | None:
    """The subject's common name, else its first subject alternative name (as Mosquitto)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                return value
    for kind, value in cert.get("subjectAltName", ()):
        if kind in _IDENTITY_SAN_KINDS and isinstance(value, str):
            return value
    return None

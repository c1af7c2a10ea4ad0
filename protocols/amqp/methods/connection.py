"""AMQP 0-9-1 methods of the connection class (10): start, secure, tune, open, close,
blocked (``methods``)."""

from typing import Any

from .base import (
    LONG,
    LONGSTR,
    OCTET,
    R_BIT,
    R_SHORTSTR,
    SHORT,
    SHORTSTR,
    TABLE,
    Method,
    _method,
    _table,
)

# --- connection (class 10) ----------------------------------------------------------------


@_method(
    10, 10, "connection.start",
    ("version_major", OCTET), ("version_minor", OCTET), ("server_properties", TABLE),
    ("mechanisms", LONGSTR), ("locales", LONGSTR),
    server=True,
)  # fmt: skip
class ConnectionStart(Method):
    version_major: int = 0
    version_minor: int = 9
    server_properties: dict[str, Any] = _table()
    mechanisms: bytes = b"PLAIN AMQPLAIN"
    locales: bytes = b"en_US"


@_method(
    10, 11, "connection.start-ok",
    ("client_properties", TABLE), ("mechanism", SHORTSTR), ("response", LONGSTR),
    ("locale", SHORTSTR),
    client=True,
)  # fmt: skip
class ConnectionStartOk(Method):
    client_properties: dict[str, Any] = _table()
    mechanism: str = "PLAIN"
    response: bytes = b""
    locale: str = "en_US"


@_method(10, 20, "connection.secure", ("challenge", LONGSTR), server=True)
class ConnectionSecure(Method):
    challenge: bytes = b""


@_method(10, 21, "connection.secure-ok", ("response", LONGSTR), client=True)
class ConnectionSecureOk(Method):
    response: bytes = b""


_TUNE = (("channel_max", SHORT), ("frame_max", LONG), ("heartbeat", SHORT))


@_method(10, 30, "connection.tune", *_TUNE, server=True)
class ConnectionTune(Method):
    channel_max: int = 0
    frame_max: int = 0
    heartbeat: int = 0


@_method(10, 31, "connection.tune-ok", *_TUNE, client=True)
class ConnectionTuneOk(Method):
    channel_max: int = 0
    frame_max: int = 0
    heartbeat: int = 0


@_method(
    10, 40, "connection.open",
    ("virtual_host", SHORTSTR), (None, R_SHORTSTR), (None, R_BIT),
    client=True,
)  # fmt: skip
class ConnectionOpen(Method):
    virtual_host: str = "/"


@_method(10, 41, "connection.open-ok", (None, R_SHORTSTR), server=True)
class ConnectionOpenOk(Method):
    pass


_CLOSE = (("reply_code", SHORT), ("reply_text", SHORTSTR), ("class_id", SHORT),
          ("method_id", SHORT))  # fmt: skip


@_method(10, 50, "connection.close", *_CLOSE, client=True, server=True)
class ConnectionClose(Method):
    reply_code: int = 200
    reply_text: str = ""
    class_id: int = 0
    method_id: int = 0


@_method(10, 51, "connection.close-ok", client=True, server=True)
class ConnectionCloseOk(Method):
    pass


@_method(10, 60, "connection.blocked", ("reason", SHORTSTR), server=True)
class ConnectionBlocked(Method):
    reason: str = ""


@_method(10, 61, "connection.unblocked", server=True)
class ConnectionUnblocked(Method):
    pass

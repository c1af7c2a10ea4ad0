"""The two single-step login mechanisms AMQP clients use: PLAIN and AMQPLAIN.

PLAIN (RFC 4616) is ``[authzid] NUL authcid NUL passwd``; AMQPLAIN is a field table
without its length prefix holding ``LOGIN`` and ``PASSWORD`` (oslo.messaging's
default). The broker answers a response it cannot read like a wrong password:
connection.close 403 ACCESS_REFUSED.
"""

from .errors import MalformedData
from .fields import decode_table

MECHANISMS = b"PLAIN AMQPLAIN"


def sasl_credentials(mechanism: str, response: bytes) -> tuple[str, str] | None:
    """(user, password) from a connection.start-ok response, None if unreadable."""
    if mechanism == "PLAIN":
        parts = bytes(response).split(b"\x00")
        if len(parts) != 3:
            return None
        try:
            return parts[1].decode(), parts[2].decode()
        except UnicodeDecodeError:
            return None
    if mechanism == "AMQPLAIN":
        try:
            table = decode_table(response, length_prefix=False)
        except MalformedData:
            return None
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if isinstance(login, str) and isinstance(password, str):
            return login, password
        return None
    return None

"""Errors raised by the STOMP codec and connection.

Each error carries what goes on the wire: ``message`` is the ERROR frame's
``message`` header, ``receipt_id`` its ``receipt-id`` header (the ``receipt`` of the
frame at fault, when there is one) and ``headers`` any further headers the spec asks
for (``version`` when negotiation failed). After any of them the server sends the
ERROR frame (``to_frame``) and closes the connection ("ERROR").
"""

from .frames import Frame, Headers


class StompError(Exception):
    """A fault in what the peer sent; the connection must be closed."""

    def __init__(
        self, message: str, *, receipt_id: str | None = None, headers: Headers = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.receipt_id = receipt_id
        self.headers = headers

    def to_frame(self) -> Frame:
        """The ERROR frame to send before closing; the body repeats the message."""
        # The header must stay one line in every version (1.0 cannot escape LF).
        summary = self.message.replace("\r", " ").replace("\n", " ")
        headers: list[tuple[str, str]] = [("message", summary)]
        if self.receipt_id is not None:
            headers.append(("receipt-id", self.receipt_id))
        headers += self.headers
        headers.append(("content-type", "text/plain"))
        return Frame("ERROR", tuple(headers), self.message.encode("utf-8", "replace"))


class MalformedFrame(StompError):
    """The bytes do not form a frame ("Augmented BNF", "Value Encoding")."""


class FrameTooLarge(StompError):
    """A frame, header line or header count exceeds the server's limit ("Size Limits")."""


class ProtocolError(StompError):
    """A well-formed frame that breaks the protocol's rules (unknown command, missing header)."""


class UnsupportedVersion(ProtocolError):
    """CONNECT accepts no version the server speaks ("Protocol Negotiation").

    The ERROR frame then carries a ``version`` header listing the server's versions.
    """

    def __init__(self, message: str, *, supported: tuple[str, ...]) -> None:
        super().__init__(message, headers=(("version", ",".join(supported)),))
        self.supported = supported

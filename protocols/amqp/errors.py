"""Errors raised by the AMQP 0-9-1 codec.

Every fault the codec finds in what the peer sent is fatal to the connection (all of
them are connection exceptions in the specification), so each error carries what
goes into the ``connection.close`` the broker answers with: ``reply_code``, ``text``
(the reply-text) and the ``class_id`` / ``method_id`` of the method at fault (0 when
no method is to blame). ``ProtocolHeaderMismatch`` is the exception: there is no
connection yet, so the answer is ``PROTOCOL_HEADER`` and a close (4.2.2).
"""

from . import constants


class AMQPError(Exception):
    """A fault in what the peer sent; the connection must be closed."""

    reply_code: int = constants.INTERNAL_ERROR

    def __init__(self, text: str, *, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.class_id = class_id
        self.method_id = method_id


class ProtocolHeaderMismatch(AMQPError):
    """The stream does not start with ``AMQP 0 0 9 1`` (4.2.2).

    Answer with ``PROTOCOL_HEADER`` and close the socket; send no connection.close.
    ``received`` holds the (up to 8) bytes that did not match.
    """

    reply_code = constants.FRAME_ERROR

    def __init__(self, text: str, *, received: bytes) -> None:
        super().__init__(text)
        self.received = received


class FrameError(AMQPError):
    """A frame that cannot be parsed: bad frame end, oversize, unknown type (501)."""

    reply_code = constants.FRAME_ERROR


class MalformedData(AMQPError):
    """Method arguments or content properties that do not decode (502 SYNTAX_ERROR)."""

    reply_code = constants.SYNTAX_ERROR


class CommandInvalid(AMQPError):
    """An unknown method, or one the peer may not send (503)."""

    reply_code = constants.COMMAND_INVALID


class ChannelError(AMQPError):
    """A frame on a channel that cannot carry it, e.g. basic.* on channel 0 (504)."""

    reply_code = constants.CHANNEL_ERROR


class UnexpectedFrame(AMQPError):
    """A frame out of order: body without header, method inside a content (505)."""

    reply_code = constants.UNEXPECTED_FRAME


class NotImplementedMethod(AMQPError):
    """A method of the specification this codec does not carry (540)."""

    reply_code = constants.NOT_IMPLEMENTED


class ContentTooLarge(AMQPError):
    """A content header announces a body above the parser's ``max_body_size`` (311)."""

    reply_code = constants.CONTENT_TOO_LARGE

"""AMQP 0-9-1 wire constants: protocol header, frame types, sizes and reply codes.

Names follow the 0-9-1 specification (section 4.2 "Framing" and the reply-code
constants of the XML grammar) with RabbitMQ's errata.
"""

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

# Frame types (4.2.3); 8 is the heartbeat of 0-9-1 (0-9 used 4).
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE

FRAME_HEADER_SIZE = 7  # type octet, channel short, size long
FRAME_OVERHEAD = 8  # the header above and the frame-end octet
FRAME_MIN_SIZE = 4096  # every peer accepts frames this large before tuning (4.2.3)
DEFAULT_FRAME_MAX = 131072  # what RabbitMQ proposes and every client accepts
DEFAULT_MAX_BODY_SIZE = 128 * 1024 * 1024  # RabbitMQ's default max_message_size

HEARTBEAT_FRAME = bytes((FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END))

# Reply codes.
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

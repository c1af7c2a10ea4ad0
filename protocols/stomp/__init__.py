"""Sans-IO STOMP codec (1.0, 1.1, 1.2)."""

from .codec import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_LENGTH,
    DEFAULT_MAX_HEADERS,
    FrameParser,
    encode_frame,
    encode_message,
    negotiate_heart_beat,
    negotiate_version,
    parse_heart_beat,
)
from .connection import ServerConnection
from .errors import FrameTooLarge, MalformedFrame, ProtocolError, StompError, UnsupportedVersion
from .frames import (
    CLIENT_COMMANDS,
    HEART_BEAT,
    SERVER_COMMANDS,
    SUPPORTED_VERSIONS,
    V1_0,
    V1_1,
    V1_2,
    Event,
    Frame,
    HeartBeat,
)

__all__ = [
    "CLIENT_COMMANDS",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_LENGTH",
    "HEART_BEAT",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "V1_0",
    "V1_1",
    "V1_2",
    "Event",
    "Frame",
    "FrameParser",
    "FrameTooLarge",
    "HeartBeat",
    "MalformedFrame",
    "ProtocolError",
    "ServerConnection",
    "StompError",
    "UnsupportedVersion",
    "encode_frame",
    "encode_message",
    "negotiate_heart_beat",
    "negotiate_version",
    "parse_heart_beat",
]

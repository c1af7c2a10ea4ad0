"""MQTT bridges to remote brokers (``[[bridge]]`` tables)."""

from .bridge import Bridge, BridgeManager, BridgeStatus
from .config import BridgeConfig, BridgeTLS, TopicRule, parse_bridges
from .remote import MARKER

__all__ = [
    "MARKER", "Bridge", "BridgeConfig", "BridgeManager", "BridgeStatus", "BridgeTLS",
    "TopicRule", "parse_bridges",
]

"""MQTT adapter (3.1, 3.1.1, 5.0): see ``connection``."""

from .connection import MQTTClientConnection, serve_mqtt

__all__ = ["MQTTClientConnection", "serve_mqtt"]

"""STOMP adapter (1.0, 1.1, 1.2): see ``connection``."""

from .connection import StompClientConnection, serve_stomp

__all__ = ["StompClientConnection", "serve_stomp"]

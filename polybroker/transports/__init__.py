"""Transports below the protocol adapters: TLS, WebSocket and protocol sniffing.

Each turns one ``trio.abc.Stream`` into another, so an adapter serves its protocol
the same way over TCP, TLS, WebSocket or WebSocket over TLS.
"""

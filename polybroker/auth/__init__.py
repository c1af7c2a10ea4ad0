"""Authentication: pluggable MQTT 5.0 enhanced-authentication methods."""

from .enhanced import Authenticator, AuthExchange, AuthStep
from .scram import ScramCredential, ScramSha256, ScramUserStore

__all__ = [
    "AuthExchange",
    "AuthStep",
    "Authenticator",
    "ScramCredential",
    "ScramSha256",
    "ScramUserStore",
]

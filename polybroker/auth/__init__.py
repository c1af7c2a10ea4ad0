"""Authentication and authorization: logins, the password file, the ACL file
(``security``, the API every protocol adapter calls), and pluggable MQTT 5.0
enhanced-authentication methods."""

from .enhanced import Authenticator, AuthExchange, AuthStep
from .scram import ScramCredential, ScramSha256, ScramUserStore
from .security import Client, Login, Refusal, Security, anonymous_allowed

__all__ = [
    "AuthExchange",
    "AuthStep",
    "Authenticator",
    "Client",
    "Login",
    "Refusal",
    "ScramCredential",
    "ScramSha256",
    "ScramUserStore",
    "Security",
    "anonymous_allowed",
]

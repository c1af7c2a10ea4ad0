"""Who may use the management API: administrators from the password file (HTTP basic)
and holders of a token from the token file (HTTP bearer).

An administrator is a user of ``[auth] password_file`` named in ``[management] admins``;
the password is checked as for a protocol login (``Security.login``: scrypt in a worker
thread, constant time). Tokens are compared with ``hmac.compare_digest``, against every
token of the file. A refused request is logged and answered after ``[auth]
failure_delay``, as a refused login is, and never says which part was wrong.
"""

import base64
import binascii
import hmac
import logging
import os
from pathlib import Path

from ..auth import Refusal, Security
from ..config import ManagementConfig
from ..config_checks import ConfigError

log = logging.getLogger("polybroker.management")

REALM = 'realm="polybroker"'
CHALLENGES = (("www-authenticate", f"Basic {REALM}, charset=\"UTF-8\""),
              ("www-authenticate", f"Bearer {REALM}"))


class TokenFile:
    """The API tokens: one a line, ``#`` comments; re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        if path is not None:
            self.tokens()  # a missing or unreadable file stops the start, with its name

    def tokens(self) -> tuple[bytes, ...]:
        if self.path is None:
            return ()
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                text = self.path.read_text(encoding="utf-8")
                self._tokens = tuple(line.strip().encode() for line in text.splitlines()
                                     if line.strip() and not line.strip().startswith("#"))
                self._stamp = stamp
        except (OSError, UnicodeDecodeError) as exc:
            if self._stamp is None:
                reason = getattr(exc, "strerror", None) or exc
                raise ConfigError(f"management.token_file: cannot read {self.path}: "
                                  f"{reason}") from None
            log.error("token file %s not re-read, keeping the old tokens: %s", self.path, exc)
        return self._tokens


class ApiAccess:
    """Checks a request's ``Authorization`` header."""

    def __init__(self, config: ManagementConfig, security: Security) -> None:
        self.config = config
        self.security = security
        self.token_file = TokenFile(config.token_file)

    async def allowed(self, authorization: str | None, peer: str) -> bool:
        """Whether the header names an administrator or a token; a wrong one is logged
        and answered late. No header at all is refused at once (clients try without)."""
        if authorization is None:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        user: str | None = None
        if scheme == "bearer":
            if self._token_ok(credentials.strip().encode()):
                return True
        elif scheme == "basic":
            user, password = _basic(credentials.strip())
            if user is not None and await self._admin_ok(user, password, peer):
                return True
        await self.security.refuse(Refusal.BAD_CREDENTIALS, username=user, peer=peer,
                                   client_id="", protocol="http")
        return False

    async def admin_login(self, user: str, password: str, peer: str) -> bool:
        """Whether ``user`` is an administrator with this password (the dashboard's
        login form); a refusal is logged and answered late, as for a request."""
        if user and await self._admin_ok(user, password, peer):
            return True
        await self.security.refuse(Refusal.BAD_CREDENTIALS, username=user or None, peer=peer,
                                   client_id="", protocol="http")
        return False

    def _token_ok(self, offered: bytes) -> bool:
        found = False
        for token in self.token_file.tokens():  # every one compared: no early exit
            found |= hmac.compare_digest(token, offered)
        return found and bool(offered)

    async def _admin_ok(self, user: str, password: str, peer: str) -> bool:
        admin = False
        for name in self.config.admins:
            admin |= hmac.compare_digest(name.encode(), user.encode())
        # The password is checked even for a user who is no administrator, so the
        # answer takes as long either way.
        ok = await self.security.password_ok(user, password)
        if ok and not admin:
            log.warning("http request from %s: user %r is not an administrator", peer, user)
        return ok and admin


def _basic(credentials: str) -> tuple[str | None, str]:
    """(user, password) of HTTP basic credentials; (None, "") if malformed."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    user, sep, password = decoded.partition(":")
    return (user, password) if sep and user else (None, "")

"""The broker's gatekeeper: logins and access rights, the same for every protocol.

An adapter (MQTT, STOMP, AMQP, ...) uses ``broker.security`` (a ``Security``):

1. Login, once per connection, before anything else is served::

       login = await broker.security.login(
           username, password, allow_anonymous=allow_anonymous, identity=identity,
           peer=peer, client_id=client_id, protocol="amqp")

   ``username`` is None for a client that sent none (anonymous); ``password`` is the
   secret it sent (str or bytes, None if none); ``identity`` the verified TLS client
   certificate name on a ``use_identity_as_username`` listener (it then is the user
   and no password is checked); ``allow_anonymous`` is the listener's setting, which
   the server hands to every adapter. A refusal is logged here (peer, protocol, client
   id and user name, never the password) and returns only after ``failure_delay``
   seconds, so the adapter answers at once: ``login.refusal`` is
   ``Refusal.BAD_CREDENTIALS`` (unknown user or wrong password: MQTT 0x04 / 0x86) or
   ``Refusal.NOT_AUTHORIZED`` (no user name where anonymous clients are refused, or a
   user name that nothing can check: MQTT 0x05 / 0x87). What goes back to the client
   must not say which part was wrong. ``login.user`` is the authenticated user name
   (None: anonymous). A protocol's own mechanism (MQTT 5.0 SCRAM, an AMQP SASL
   mechanism other than PLAIN) refuses through ``await broker.security.refuse(refusal,
   username=..., peer=..., client_id=..., protocol=...)``, which logs and waits the same.

2. Access, with ``client = Client(login.user, client_id)``::

       broker.security.may_publish(client, topic)         # publish to a topic
       broker.security.may_subscribe(client, topic_filter)  # subscribe (no $share/ prefix)
       broker.security.may_write_queue(client, name)      # send into a named queue
       broker.security.may_read_queue(client, name)       # consume from a named queue

   Each is a quick synchronous check against the ACL file (``acl``); without one
   every answer is yes, except that no client may publish to a topic starting with
   ``$`` (the server's, [MQTT-4.7.2-1]) unless an ACL rule names that ``$`` topic, and
   to ``$SYS`` never. ``$delayed/{seconds}/{topic}`` (``delayed``) is checked on the
   real topic. An AMQP ``amq.topic`` publish is ``may_publish`` on the
   MQTT-form topic, a queue declare/consume ``may_read_queue``.

Password rule: with a password file, a user name must be listed and its password
right; without one no user name can be checked, so a client giving one is treated as
anonymous (it may connect where anonymous clients may, with their rights).
``reload()`` (SIGHUP) re-reads both files, keeping the old contents if a file is broken.
"""

import enum
import functools
import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass

import trio

from ..config import AuthConfig, ConfigError, ListenerConfig
from ..delayed import DELAYED_PREFIX, split_delayed_topic
from .acl import AccessControlList, ACLError, load_acl
from .passwords import PasswordFileError, hash_password, load_password_file, verify_password

log = logging.getLogger("polybroker.auth")

# scrypt takes tens of milliseconds and 16 MiB a check: run them in worker threads, a
# few at a time, so that a burst of logins neither blocks the event loop nor eats memory.
HASHING_THREADS = 2


@functools.cache
def _dummy_hash() -> str:
    """Checked for an unknown user too, so the answer takes as long as for a known one."""
    return hash_password("", salt=bytes(16))


class Refusal(enum.Enum):
    BAD_CREDENTIALS = "bad user name or password"
    NOT_AUTHORIZED = "not authorized"


@dataclass(frozen=True, slots=True)
class Login:
    """The outcome of ``Security.login``: ``user`` (None: anonymous) or a ``refusal``."""

    user: str | None = None
    refusal: Refusal | None = None

    @property
    def ok(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class Client:
    """Whom an access check is for: the logged-in user (None: anonymous) and client id."""

    user: str | None
    client_id: str


def anonymous_allowed(listener: ListenerConfig, auth: AuthConfig) -> bool:
    """The listener's own setting, else [auth]'s, else: only on a loopback address."""
    if listener.allow_anonymous is not None:
        return listener.allow_anonymous
    if auth.allow_anonymous is not None:
        return auth.allow_anonymous
    return is_loopback(listener.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Security:
    """Password file and ACL of one broker; see the module docstring for the API."""

    def __init__(self, config: AuthConfig | None = None) -> None:
        self.config = config or AuthConfig()
        self.failure_delay = self.config.failure_delay
        self.passwords: dict[str, str] | None = None  # None: no password file
        self.acl: AccessControlList | None = None  # None: no ACL file, all allowed
        self._hashing = trio.CapacityLimiter(HASHING_THREADS)
        # Refused logins by (protocol, reason name), for the operator's counters.
        self.refused: Counter[tuple[str, str]] = Counter()

    @classmethod
    def load(cls, config: AuthConfig) -> "Security":
        """Read the configured files; ConfigError names a missing or broken one."""
        security = cls(config)
        if config.password_file is not None:
            try:
                security.passwords = load_password_file(config.password_file)
            except (OSError, PasswordFileError) as exc:
                raise ConfigError(f"auth.password_file: {exc}") from None
        if config.acl_file is not None:
            try:
                security.acl = load_acl(config.acl_file)
            except (OSError, ACLError) as exc:
                raise ConfigError(f"auth.acl_file: {exc}") from None
        return security

    def reload(self) -> bool:
        """Re-read both files (SIGHUP); a broken one keeps its old contents. Whether
        everything configured was reloaded."""
        ok = True
        path = self.config.password_file
        if path is not None:
            try:
                self.passwords = load_password_file(path)
                log.info("password file %s reloaded: %d user(s)", path, len(self.passwords))
            except (OSError, PasswordFileError) as exc:
                log.error("password file %s not reloaded, keeping the old one: %s", path, exc)
                ok = False
        path = self.config.acl_file
        if path is not None:
            try:
                self.acl = load_acl(path)
                log.info("ACL file %s reloaded", path)
            except (OSError, ACLError) as exc:
                log.error("ACL file %s not reloaded, keeping the old one: %s", path, exc)
                ok = False
        return ok

    # -- login ----------------------------------------------------------------------------

    async def login(
        self, username: str | None, password: str | bytes | None, *, allow_anonymous: bool,
        identity: str | None = None, peer: str = "?", client_id: str = "",
        protocol: str = "?",
    ) -> Login:
        """Check one client's credentials (see the module docstring)."""
        if identity is not None:
            return Login(identity)  # the TLS handshake verified it
        if username is not None and self.passwords is not None:
            if await self._password_ok(username, password):
                return Login(username)
            refusal = Refusal.BAD_CREDENTIALS
        elif allow_anonymous:
            return Login(None)
        else:
            refusal = Refusal.NOT_AUTHORIZED
        return await self.refuse(refusal, username=username, peer=peer, client_id=client_id,
                                 protocol=protocol)

    async def refuse(self, refusal: Refusal, *, username: str | None, peer: str,
                     client_id: str, protocol: str) -> Login:
        """Log a refused login and wait ``failure_delay``; for logins this class does not
        check itself (an authentication mechanism of the protocol, such as SCRAM)."""
        log.warning("%s login refused from %s (client id %r, user %r): %s", protocol, peer,
                    client_id, username, refusal.value)
        self.refused[protocol.lower(), refusal.name.lower()] += 1
        await trio.sleep(self.failure_delay)
        return Login(None, refusal)

    async def password_ok(self, username: str, password: str | bytes) -> bool:
        """Whether the password file has ``username`` with this password; nothing logged,
        no delay (for a caller that answers refusals itself: the management API)."""
        return self.passwords is not None and await self._password_ok(username, password)

    async def _password_ok(self, username: str, password: str | bytes | None) -> bool:
        # None if the file was dropped by a reload meanwhile: then every password is wrong.
        encoded = self.passwords.get(username) if self.passwords is not None else None
        secret = password if password is not None else b""
        ok = await trio.to_thread.run_sync(
            verify_password, encoded or _dummy_hash(), secret, limiter=self._hashing
        )
        return ok and encoded is not None and password is not None

    # -- access ---------------------------------------------------------------------------

    def may_publish(self, client: Client, topic: str) -> bool:
        acl = self.acl
        if topic[:1] == "$":
            return self._may_publish_reserved(client, topic)
        return acl is None or acl.may_publish(client.user, client.client_id, topic)

    def _may_publish_reserved(self, client: Client, topic: str) -> bool:
        """Topics starting with ``$`` are the server's [MQTT-4.7.2-1]: clients must not
        use them to exchange messages. ``$SYS`` never; any other only where an ACL rule
        names it (a wildcard first level does not match a ``$`` topic, so only a rule
        whose filter starts with that very ``$`` level grants it)."""
        if topic == "$SYS" or topic.startswith("$SYS/"):
            return False
        if topic.startswith(DELAYED_PREFIX):
            # Held until due, then published to the real topic: that is what is checked.
            # A malformed prefix (seconds not an integer, no topic) is refused.
            parsed = split_delayed_topic(topic)
            return parsed is not None and self.may_publish(client, parsed[1])
        acl = self.acl
        return acl is not None and acl.may_publish(client.user, client.client_id, topic)

    def may_subscribe(self, client: Client, topic_filter: str) -> bool:
        acl = self.acl
        return acl is None or acl.may_subscribe(client.user, client.client_id, topic_filter)

    def may_write_queue(self, client: Client, name: str) -> bool:
        acl = self.acl
        return acl is None or acl.may_use_queue(client.user, client.client_id, name, "write")

    def may_read_queue(self, client: Client, name: str) -> bool:
        acl = self.acl
        return acl is None or acl.may_use_queue(client.user, client.client_id, name, "read")

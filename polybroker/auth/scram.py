"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as an MQTT 5.0 enhanced-authentication method.

Exchange: CONNECT carries client-first ("n,,n=user,r=cnonce"); the server answers
AUTH 0x18 with server-first ("r=nonce,s=salt,i=iterations"); the client sends AUTH
with client-final ("c=biws,r=nonce,p=proof"); the server checks the proof and
answers CONNACK with server-final ("v=signature") or a failure. Channel binding is
not offered. Only salted keys are stored, never passwords.
"""

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from .enhanced import AuthStep

DEFAULT_ITERATIONS = 4096  # RFC 7677's minimum


@dataclass(frozen=True, slots=True)
class ScramCredential:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(
        cls, password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
    ) -> "ScramCredential":
        salt = salt if salt is not None else secrets.token_bytes(16)
        salted = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(password.encode())
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        return cls(salt, iterations, stored_key, _hmac(salted, b"Server Key"))

    def to_rfc5803(self) -> str:
        """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5803)."""
        b64 = base64.b64encode
        return (f"SCRAM-SHA-256${self.iterations}:{b64(self.salt).decode()}"
                f"${b64(self.stored_key).decode()}:{b64(self.server_key).decode()}")

    @classmethod
    def from_rfc5803(cls, text: str) -> "ScramCredential":
        scheme, _, rest = text.partition("$")
        head, _, keys = rest.partition("$")
        iterations, _, salt = head.partition(":")
        stored, _, server = keys.partition(":")
        if scheme != "SCRAM-SHA-256" or not (iterations.isdigit() and salt and stored and server):
            raise ValueError("not a SCRAM-SHA-256 credential (RFC 5803 form)")
        decode = base64.b64decode
        return cls(decode(salt, validate=True), int(iterations),
                   decode(stored, validate=True), decode(server, validate=True))


class ScramUserStore:
    """Usernames to SCRAM credentials, in memory."""

    def __init__(self) -> None:
        self._users: dict[str, ScramCredential] = {}

    def add(self, username: str, password: str) -> None:
        self._users[username] = ScramCredential.from_password(password)

    def get(self, username: str) -> ScramCredential | None:
        return self._users.get(username)

    @classmethod
    def load(cls, path: Path) -> "ScramUserStore":
        """Read ``user:credential`` lines (``polybroker scram-password`` writes them);
        blank lines and ``#`` comments are skipped."""
        store = cls()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, credential = line.partition(":")
            try:
                if not (sep and user):
                    raise ValueError("expected user:credential")
                store._users[user] = ScramCredential.from_rfc5803(credential)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
        return store


class ScramSha256:
    method = "SCRAM-SHA-256"

    def __init__(self, users: ScramUserStore) -> None:
        self.users = users

    def start(self) -> "_ScramExchange":
        return _ScramExchange(self.users)


class _ScramExchange:
    def __init__(self, users: ScramUserStore) -> None:
        self.users = users
        self._expect = self._client_first
        self._username = ""
        self._credential: ScramCredential | None = None
        self._nonce = ""
        self._auth_message = b""
        self._known = False

    def step(self, data: bytes | None) -> AuthStep:
        try:
            return self._expect(data or b"")
        except (ValueError, UnicodeDecodeError):
            return AuthStep(done=True, ok=False)

    def _client_first(self, data: bytes) -> AuthStep:
        text = data.decode()
        if not text.startswith("n,,"):  # no channel binding, no authzid
            return AuthStep(done=True, ok=False)
        bare = text[3:]
        fields = _fields(bare)
        self._username = fields["n"].replace("=2C", ",").replace("=3D", "=")
        client_nonce = fields["r"]
        credential = self.users.get(self._username)
        # An unknown user gets a made-up salt, so the answer does not reveal who exists.
        self._credential = credential or ScramCredential.from_password(
            secrets.token_hex(16), salt=hashlib.sha256(self._username.encode()).digest()[:16]
        )
        self._nonce = client_nonce + secrets.token_urlsafe(18)
        salt = base64.b64encode(self._credential.salt).decode()
        server_first = f"r={self._nonce},s={salt},i={self._credential.iterations}"
        self._auth_message = f"{bare},{server_first}".encode()
        self._known = credential is not None
        self._expect = self._client_final
        return AuthStep(done=False, data=server_first.encode())

    def _client_final(self, data: bytes) -> AuthStep:
        text = data.decode()
        without_proof, _, proof_field = text.rpartition(",p=")
        fields = _fields(without_proof)
        if fields.get("c") != "biws" or fields.get("r") != self._nonce:
            return AuthStep(done=True, ok=False)
        proof = base64.b64decode(proof_field, validate=True)
        auth_message = self._auth_message + b"," + without_proof.encode()
        credential = self._credential
        if credential is None:  # client-final before client-first
            return AuthStep(done=True, ok=False)
        signature = _hmac(credential.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        valid = len(proof) == len(signature) and hmac.compare_digest(
            hashlib.sha256(client_key).digest(), credential.stored_key
        )
        self._expect = self._finished
        if not (valid and self._known):
            return AuthStep(done=True, ok=False)
        server_signature = base64.b64encode(_hmac(credential.server_key, auth_message))
        return AuthStep(done=True, ok=True, data=b"v=" + server_signature, username=self._username)

    def _finished(self, data: bytes) -> AuthStep:
        return AuthStep(done=True, ok=False)


def _fields(text: str) -> dict[str, str]:
    result = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ValueError(f"bad SCRAM attribute {part!r}")
        result[key] = value
    return result


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()

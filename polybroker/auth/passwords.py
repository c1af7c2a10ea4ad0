"""The password file: one user a line, each password kept as a salted scrypt hash.

Format (``polybroker passwd FILE USER`` writes it)::

    # comments and blank lines are ignored
    alice:$scrypt$n=16384,r=8,p=1$<base64 salt>$<base64 hash>

The user name is everything before the first ``:`` (non-empty, no ``:``, no control
characters, no surrounding spaces). The hash is scrypt (RFC 7914) of the UTF-8 password
with the salt and the cost parameters given on the line (``n`` a power of two), in
standard base64 with padding. New hashes use ``n=16384, r=8, p=1``, a 16-byte salt and
a 32-byte hash. Verification compares in constant time (the KDF's ``verify``).

The file is rewritten whole into a temporary file and renamed over the old one, so a
reader (the broker on SIGHUP) never sees half of it; it is created with mode 0600.
"""

import base64
import binascii
import os
import secrets
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

SCHEME = "$scrypt$"
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on what a line may ask for, so that one line cannot make a login cost minutes.
MAX_N, MAX_R, MAX_P = 2**20, 32, 16


class PasswordFileError(ValueError):
    """A password file (or a user name) is malformed; the message says where."""


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R,
                  p: int = DEFAULT_P, salt: bytes | None = None) -> str:
    """The ``$scrypt$...`` form of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = Scrypt(salt=salt, length=HASH_BYTES, n=n, r=r, p=p).derive(password.encode())
    b64 = base64.b64encode
    return f"{SCHEME}n={n},r={r},p={p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(encoded: str, password: str | bytes) -> bool:
    """Whether ``password`` hashes to ``encoded`` (a ``$scrypt$`` string); constant time."""
    n, r, p, salt, digest = parse_hash(encoded)
    data = password.encode() if isinstance(password, str) else password
    try:
        Scrypt(salt=salt, length=len(digest), n=n, r=r, p=p).verify(data, digest)
    except InvalidKey:
        return False
    return True


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, hash) of a ``$scrypt$`` string; PasswordFileError if malformed."""
    if not encoded.startswith(SCHEME):
        raise PasswordFileError("not a $scrypt$ hash")
    parts = encoded[len(SCHEME):].split("$")
    if len(parts) != 3:
        raise PasswordFileError("expected $scrypt$<parameters>$<salt>$<hash>")
    params: dict[str, int] = {}
    for item in parts[0].split(","):
        key, _, value = item.partition("=")
        if key not in ("n", "r", "p") or key in params or not value.isdigit():
            raise PasswordFileError(f"bad scrypt parameter {item!r}")
        params[key] = int(value)
    n, r, p = params.get("n", 0), params.get("r", 0), params.get("p", 0)
    if not (2 <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise PasswordFileError("scrypt parameters out of range (n a power of two up to "
                                f"{MAX_N}, r up to {MAX_R}, p up to {MAX_P})")
    try:
        salt = base64.b64decode(parts[1], validate=True)
        digest = base64.b64decode(parts[2], validate=True)
    except binascii.Error:
        raise PasswordFileError("salt or hash is not base64") from None
    if not salt or len(digest) < 16:
        raise PasswordFileError("salt empty or hash shorter than 16 bytes")
    return n, r, p, salt, digest


def check_username(user: str) -> None:
    """User names are non-empty, without ':' or control characters or edge spaces."""
    if (not user or ":" in user or user != user.strip() or user.startswith("#")
            or any(ord(c) < 32 or ord(c) == 127 for c in user)):
        raise PasswordFileError(f"invalid user name {user[:40]!r} (empty, ':', a leading "
                                "'#', control characters or surrounding spaces)")


def parse_password_file(text: str, source: str = "password file") -> dict[str, str]:
    """User -> ``$scrypt$`` hash; every line is checked, the first fault raises."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        try:
            if not sep:
                raise PasswordFileError("expected USER:HASH")
            check_username(user)
            parse_hash(encoded)
            if user in users:
                raise PasswordFileError(f"user {user!r} listed twice")
        except PasswordFileError as exc:
            raise PasswordFileError(f"{source} line {number}: {exc}") from None
        users[user] = encoded
    return users


def load_password_file(path: Path) -> dict[str, str]:
    """Read and check a password file; OSError or PasswordFileError."""
    return parse_password_file(path.read_text(encoding="utf-8"), str(path))


def set_password(path: Path, user: str, password: str) -> bool:
    """Add ``user`` or change its password; whether it was already there."""
    check_username(user)
    users = load_password_file(path) if path.exists() else {}
    existed = user in users
    users[user] = hash_password(password)
    write_password_file(path, users)
    return existed


def delete_user(path: Path, user: str) -> bool:
    """Remove ``user``; whether it was there (the file is left alone when not)."""
    users = load_password_file(path)
    if users.pop(user, None) is None:
        return False
    write_password_file(path, users)
    return True


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """Replace ``path`` atomically with these users (mode 0600 when new)."""
    mode = (path.stat().st_mode & 0o777) if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.writelines(f"{user}:{encoded}\n" for user, encoded in users.items())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

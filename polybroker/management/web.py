"""The web dashboard: its static files (the ``dashboard`` folder beside this module), the
administrators' login sessions and the live feed of counters, on the management listener.

The page (``dashboard/index.html`` and its ES modules, no build step) is open to anyone
who reaches the listener: it holds no data and shows only a login form until a session
exists. ``POST /dashboard/login`` checks an administrator as the API does and sets a
session cookie (HttpOnly, SameSite=Strict, Secure on https); with it the page calls the
JSON API. A request that changes something must also carry the session's CSRF token in
``X-CSRF-Token``: a cookie alone never suffices, whatever another site makes a browser
send. A session ends on logout or after ``[management] dashboard_idle_timeout`` seconds
without a request (the feed is no request: an open page alone keeps nobody logged in).

    GET  /dashboard/            the page (and /dashboard/{file}: its modules, CSS, images)
    GET  /dashboard/session     200 {"user", "csrf", "idle_timeout"} or 401
    POST /dashboard/login       {"user", "password"} -> the same, and the cookie
    POST /dashboard/logout      ends the session (needs X-CSRF-Token)
    GET  /api/v1/feed           server-sent events: "overview" every second
"""

import hmac
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import trio

from .auth import ApiAccess
from .http import Request, Response, error_response, json_response

log = logging.getLogger("polybroker.management")

COOKIE = "polybroker_session"
CSRF_HEADER = "x-csrf-token"
FEED_INTERVAL = 1.0  # seconds between two overviews on the feed
MAX_SESSIONS = 256  # beyond it the least recently used session ends
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# The page loads nothing from elsewhere and may not be framed (clickjacking).
PAGE_HEADERS = (
    ("content-security-policy", "default-src 'self'; img-src 'self' data:; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)


def static_files() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files by name, with their content types (read once)."""
    folder = resources.files(__package__) / "dashboard"
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


@dataclass(slots=True)
class Session:
    user: str
    csrf: str
    last_seen: float


class Sessions:
    """Login sessions in memory, by cookie value; a broker restart ends them all."""

    def __init__(self, idle_timeout: float, clock: Callable[[], float] = trio.current_time):
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._sessions: dict[str, Session] = {}

    def open(self, user: str) -> tuple[str, Session]:
        self._prune()
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda key: self._sessions[key].last_seen)
            del self._sessions[oldest]
        key = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), self.clock())
        self._sessions[key] = session
        return key, session

    def get(self, key: str | None, touch: bool = True) -> Session | None:
        """The live session of a cookie value; ``touch`` counts this as activity."""
        session = self._sessions.get(key) if key else None
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen > self.idle_timeout:
            del self._sessions[key]  # type: ignore[arg-type]
            log.info("dashboard session of %r ended: idle", session.user)
            return None
        if touch:
            session.last_seen = now
        return session

    def close(self, key: str) -> None:
        self._sessions.pop(key, None)

    def alive(self, session: Session) -> bool:
        """Whether ``session`` is still open and not idle (without touching it)."""
        return (any(s is session for s in self._sessions.values())
                and self.clock() - session.last_seen <= self.idle_timeout)

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if now - s.last_seen > self.idle_timeout]:
            del self._sessions[key]


def session_cookie(request: Request) -> str | None:
    """The session cookie's value in the request, if any."""
    for part in request.headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def csrf_ok(request: Request, session: Session) -> bool:
    offered = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(offered.encode(), session.csrf.encode())


class Dashboard:
    """The ``/dashboard/`` routes and the feed of one management listener's API."""

    def __init__(self, access: ApiAccess, idle_timeout: float,
                 overview: Callable[[], Awaitable[object]]) -> None:
        self.access = access
        self.sessions = Sessions(idle_timeout)
        self.overview = overview
        self.files = static_files()

    async def handle(self, request: Request, rest: list[str]) -> Response:
        """A request for ``/dashboard/...``; ``rest`` is the path after it."""
        name = "/".join(rest)
        method = "GET" if request.method == "HEAD" else request.method
        actions = {"login": self._login, "logout": self._logout}
        if name in actions:
            if method != "POST":
                return error_response(405, f"{request.method} not allowed here (allowed: "
                                      "POST)", (("allow", "POST"),))
            return await actions[name](request)
        if method != "GET":
            return error_response(405, f"{request.method} not allowed here (allowed: GET)",
                                  (("allow", "GET"),))
        if name == "session":
            session = self.sessions.get(session_cookie(request))
            if session is None:
                return error_response(401, "not logged in")
            return self._session_json(session)
        found = self.files.get(name or "index.html")
        if found is None:
            return error_response(404, f"no such resource: {request.path}")
        body, content_type = found
        return Response(200, body, content_type, PAGE_HEADERS)

    def session_of(self, request: Request, touch: bool = True) -> Session | None:
        return self.sessions.get(session_cookie(request), touch)

    async def _login(self, request: Request) -> Response:
        # A form of another site cannot send JSON without the browser asking first.
        if not request.headers.get("content-type", "").startswith("application/json"):
            return error_response(415, "login: expected application/json")
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "body: not valid JSON")
        user = body.get("user") if isinstance(body, dict) else None
        password = body.get("password") if isinstance(body, dict) else None
        if not isinstance(user, str) or not isinstance(password, str):
            return error_response(400, "login: expected a user and a password")
        if not await self.access.admin_login(user, password, request.peer):
            return error_response(401, "wrong user name or password, or not an administrator")
        key, session = self.sessions.open(user)
        log.info("dashboard login of %r from %s", user, request.peer)
        secure = "; Secure" if request.tls else ""
        cookie = f"{COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict{secure}"
        return self._session_json(session, (("set-cookie", cookie),))

    async def _logout(self, request: Request) -> Response:
        key = session_cookie(request)
        session = self.sessions.get(key, touch=False)
        if session is None:
            return error_response(401, "not logged in")
        if not csrf_ok(request, session):
            return error_response(403, "missing or wrong X-CSRF-Token")
        self.sessions.close(key)  # type: ignore[arg-type]
        log.info("dashboard logout of %r", session.user)
        expired = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        return json_response(200, {"logged_out": True}, (("set-cookie", expired),))

    def _session_json(self, session: Session,
                      headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return json_response(200, {"user": session.user, "csrf": session.csrf,
                                   "idle_timeout": self.sessions.idle_timeout}, headers)

    def feed(self, session: Session | None) -> Response:
        """Server-sent events: the overview now and every ``FEED_INTERVAL`` seconds, until
        the client goes or (for a dashboard login) the session ends."""
        async def events() -> AsyncGenerator[bytes, None]:
            yield b"retry: 2000\n\n"
            while session is None or self.sessions.alive(session):
                data = json.dumps(await self.overview(), separators=(",", ":"))
                yield f"event: overview\ndata: {data}\n\n".encode()
                await trio.sleep(FEED_INTERVAL)
            yield b"event: expired\ndata: {}\n\n"
        return Response(200, content_type="text/event-stream; charset=utf-8",
                        stream=events)

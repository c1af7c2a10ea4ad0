"""The management API's routes: JSON over HTTP, each route one call of the operations.

URL scheme (the README's "Operating the broker" lists it too); path segments are
percent-decoded, so a client id or queue name holding ``/`` is sent as ``%2F``, and a
retained message's topic is the rest of the path::

    GET    /api/v1/overview
    GET    /api/v1/clients?protocol=&search=&offset=&limit=
    POST   /api/v1/clients/disconnect        {"clients": [...], "discard": false}
    GET    /api/v1/clients/{id}
    DELETE /api/v1/clients/{id}[?discard=true]
    GET    /api/v1/subscriptions?client=&offset=&limit=
    GET    /api/v1/queues?offset=&limit=
    GET    /api/v1/queues/{name}
    DELETE /api/v1/queues/{name}/messages    purge
    DELETE /api/v1/queues/{name}
    GET    /api/v1/retained?filter=&offset=&limit=
    GET    /api/v1/retained/{topic}
    DELETE /api/v1/retained/{topic}
    POST   /api/v1/publish                   {"topic", "payload", "encoding", "qos", "retain"}
    GET    /api/v1/listeners
    GET    /metrics                          Prometheus text format
    GET    /health/live, /health/ready       200, or 503 until ready
    GET    /api/v1/feed                      server-sent events (``web``)
    GET    /, /dashboard/...                 the dashboard (``web``)

Besides credentials, an ``/api/`` request may carry the dashboard's session cookie;
one that changes something (not GET) must then carry its CSRF token too (403 without).

Errors are ``{"error": "..."}`` with 400 (bad query or body), 401 (credentials), 404,
405 (with ``Allow``), 413, 503 (the store did not confirm a change in time) and 500 (a
bug: logged, the answer says nothing more).
"""

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..server import RunningBroker
from .auth import CHALLENGES, ApiAccess
from .http import Request, Response, error_response, json_response, path_segments
from .operations import BrokerOperations
from .ops import Invalid, NotFound
from .web import Dashboard, csrf_ok, session_cookie

log = logging.getLogger("polybroker.management")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Params = dict[str, str]
RouteHandler = Callable[["ManagementApi", Request, Params], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: tuple[str, ...]  # literal segments, "{name}", or a last "{name*}" (the rest)
    handler: RouteHandler

    def match(self, segments: list[str]) -> Params | None:
        params: Params = {}
        for index, part in enumerate(self.pattern):
            if part.endswith("*}"):
                rest = "/".join(segments[index:])
                if not rest:
                    return None
                params[part[1:-2]] = rest
                return params
            if index >= len(segments):
                return None
            if part.startswith("{"):
                if not segments[index]:
                    return None
                params[part[1:-1]] = segments[index]
            elif part != segments[index]:
                return None
        return params if len(segments) == len(self.pattern) else None


class ManagementApi:
    """The request handler of every http(s) listener of one running broker."""

    def __init__(self, running: RunningBroker) -> None:
        config = running.broker.config.management
        self.running = running
        self.config = config
        self.access = ApiAccess(config, running.broker.security)
        self.ops = BrokerOperations(running)
        self.dashboard = Dashboard(self.access, config.dashboard_idle_timeout,
                                   lambda: self.ops.overview())

    async def __call__(self, request: Request) -> Response:
        segments = path_segments(request.path)
        if request.path in ("/", "/dashboard"):
            return Response(302, headers=(("location", "/dashboard/"),))
        if segments[0] == "dashboard":
            return await self.dashboard.handle(request, segments[1:])
        if self._needs_credentials(segments):
            refused = await self._check_access(request, segments)
            if refused is not None:
                return refused
        routes = [(route, params) for route in ROUTES
                  if (params := route.match(segments)) is not None]
        if not routes:
            return error_response(404, f"no such resource: {request.path}")
        method = "GET" if request.method == "HEAD" else request.method
        for route, params in routes:
            if route.method == method:
                return await self._run(route, request, params)
        allowed = ", ".join(sorted({route.method for route, _ in routes}))
        return error_response(405, f"{request.method} not allowed here (allowed: {allowed})",
                              (("allow", allowed),))

    async def _check_access(self, request: Request, segments: list[str]) -> Response | None:
        """None if the request may go on: a dashboard session (with its CSRF token for a
        change) or an administrator's or token's Authorization header."""
        # Watching the feed is not activity: an open page alone does not keep a login.
        session = self.dashboard.session_of(request, touch=segments != [*V1, "feed"])
        if session is not None:
            if request.method in ("GET", "HEAD") or csrf_ok(request, session):
                return None
            return error_response(403, "missing or wrong X-CSRF-Token")
        if await self.access.allowed(request.headers.get("authorization"), request.peer):
            return None
        # The dashboard's own requests get no challenge: a browser would ask for a password.
        challenges = () if session_cookie(request) else CHALLENGES
        return error_response(401, "credentials required (an administrator or a token)",
                              challenges)

    def _needs_credentials(self, segments: list[str]) -> bool:
        first = segments[0] if segments else ""
        if first == "metrics":
            return not self.config.open_metrics
        if first == "health":
            return not self.config.open_health
        return True  # /api/ and anything unknown: no route is revealed to strangers

    async def _run(self, route: Route, request: Request, params: Params) -> Response:
        try:
            return await route.handler(self, request, params)
        except NotFound as exc:
            return error_response(404, str(exc))
        except Invalid as exc:
            return error_response(400, str(exc))
        except TimeoutError as exc:  # the store did not confirm a change in time
            log.error("management API: %s %s: %s", request.method, request.path, exc)
            return error_response(503, str(exc) or "timed out")
        except Exception:
            log.exception("management API: %s %s failed", request.method, request.path)
            return error_response(500, "internal error")


# -- request helpers ---------------------------------------------------------------------

def _int_param(request: Request, name: str, default: int, high: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or (high is not None and int(raw) > high):
        bound = f" up to {high}" if high is not None else ""
        raise Invalid(f"{name}: expected a whole number{bound}, got {raw[:40]!r}")
    return int(raw)


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise Invalid(f"{name}: expected true or false, got {raw[:40]!r}")
    return raw in ("true", "1")


def _paging(request: Request) -> tuple[int, int]:
    return (_int_param(request, "offset", 0),
            _int_param(request, "limit", DEFAULT_LIMIT, MAX_LIMIT))


def _json_body(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("body: not valid JSON") from None
    if not isinstance(value, dict):
        raise Invalid("body: expected a JSON object")
    return value


_KINDS = {str: "a string", int: "a whole number", bool: "true or false", list: "a list"}


def _field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise Invalid(f"{name}: expected {_KINDS[kind]}")
    return value


def _ok(value: object) -> Response:
    return json_response(200, value)


# -- the routes --------------------------------------------------------------------------

async def _overview(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.overview())


async def _clients(api: ManagementApi, request: Request, params: Params) -> Response:
    offset, limit = _paging(request)
    return _ok(await api.ops.clients(protocol=request.query.get("protocol") or None,
                                     search=request.query.get("search") or None,
                                     offset=offset, limit=limit))


async def _client(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.client(params["id"]))


async def _kick(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.kick(params["id"], discard=_bool_param(request, "discard")))


async def _kick_many(api: ManagementApi, request: Request, params: Params) -> Response:
    body = _json_body(request)
    ids = _field(body, "clients", list, None)
    if not all(isinstance(client_id, str) for client_id in ids):
        raise Invalid("clients: expected a list of client ids")
    return _ok(await api.ops.kick_many(ids, discard=_field(body, "discard", bool, False)))


async def _subscriptions(api: ManagementApi, request: Request, params: Params) -> Response:
    offset, limit = _paging(request)
    return _ok(await api.ops.subscriptions(client=request.query.get("client") or None,
                                           offset=offset, limit=limit))


async def _queues(api: ManagementApi, request: Request, params: Params) -> Response:
    offset, limit = _paging(request)
    return _ok(await api.ops.queues(offset=offset, limit=limit))


async def _queue(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.queue(params["name"]))


async def _purge(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.purge(params["name"]))


async def _delete_queue(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.delete_queue(params["name"]))


async def _retained_list(api: ManagementApi, request: Request, params: Params) -> Response:
    offset, limit = _paging(request)
    return _ok(await api.ops.retained(request.query.get("filter") or "#",
                                      offset=offset, limit=limit))


async def _retained_one(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.retained_message(params["topic"]))


async def _retained_delete(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.delete_retained(params["topic"]))


async def _publish(api: ManagementApi, request: Request, params: Params) -> Response:
    body = _json_body(request)
    topic = _field(body, "topic", str, None)
    payload = _field(body, "payload", str, "")
    encoding = _field(body, "encoding", str, "utf-8")
    if encoding == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise Invalid("payload: not base64") from None
    elif encoding == "utf-8":
        data = payload.encode()
    else:
        raise Invalid("encoding: expected utf-8 or base64")
    qos = _field(body, "qos", int, 0)
    if qos not in (0, 1, 2):
        raise Invalid("qos: expected 0, 1 or 2")
    retain = _field(body, "retain", bool, False)
    return _ok(await api.ops.publish(topic, data, qos=qos, retain=retain))


async def _listeners(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok(await api.ops.listeners())


async def _metrics(api: ManagementApi, request: Request, params: Params) -> Response:
    body, content_type = await api.ops.metrics(request.headers.get("accept"))
    return Response(200, body, content_type)


async def _feed(api: ManagementApi, request: Request, params: Params) -> Response:
    return api.dashboard.feed(api.dashboard.session_of(request, touch=False))


async def _live(api: ManagementApi, request: Request, params: Params) -> Response:
    return _ok({"status": "live"})


async def _ready(api: ManagementApi, request: Request, params: Params) -> Response:
    ready, detail = await api.ops.readiness()
    return json_response(200 if ready else 503,
                         {"status": "ready" if ready else "not ready", **detail})


V1 = ("api", "v1")
ROUTES = (
    Route("GET", (*V1, "overview"), _overview),
    Route("GET", (*V1, "clients"), _clients),
    Route("POST", (*V1, "clients", "disconnect"), _kick_many),
    Route("GET", (*V1, "clients", "{id}"), _client),
    Route("DELETE", (*V1, "clients", "{id}"), _kick),
    Route("GET", (*V1, "subscriptions"), _subscriptions),
    Route("GET", (*V1, "queues"), _queues),
    Route("GET", (*V1, "queues", "{name}"), _queue),
    Route("DELETE", (*V1, "queues", "{name}", "messages"), _purge),
    Route("DELETE", (*V1, "queues", "{name}"), _delete_queue),
    Route("GET", (*V1, "retained"), _retained_list),
    Route("GET", (*V1, "retained", "{topic*}"), _retained_one),
    Route("DELETE", (*V1, "retained", "{topic*}"), _retained_delete),
    Route("POST", (*V1, "publish"), _publish),
    Route("GET", (*V1, "listeners"), _listeners),
    Route("GET", (*V1, "feed"), _feed),
    Route("GET", ("metrics",), _metrics),
    Route("GET", ("health", "live"), _live),
    Route("GET", ("health", "ready"), _ready),
)

"""The dashboard's routes on a running broker's management API (``management.web``):
its static files and their content types, login and logout, the session cookie and its
refusals, the CSRF token a change needs, the idle timeout (on a clock the test moves),
and the server-sent feed; requests go to the API's handler, the feed over a socket."""

import json
from dataclasses import replace

import h11
import pytest
import trio

from polybroker.config import ConfigError, ManagementConfig, config_from_dict
from polybroker.management import ops, web
from polybroker.management.api import ManagementApi
from polybroker.management.http import Request, Response
from polybroker.management.web import COOKIE, Sessions
from polybroker.server import open_broker

from .test_management_ops import mqtt

IDLE = 900.0


class Clock:
    """The sessions' clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api(serve_config, auth_config):
    """(the API's handler, its http port, the sessions' clock); alice is an administrator,
    bob only a user."""
    config = serve_config("http://127.0.0.1:0",
                          auth=auth_config({"alice": "secret", "bob": "pw"}, None),
                          management=ManagementConfig(admins=("alice",)))
    async with open_broker(config, ManagementApi) as running:
        listener = next(lst for lst in running.bound if lst.config.protocol == "http")
        handler = listener.http
        clock = Clock()
        handler.dashboard.sessions.clock = clock
        yield handler, listener.config.port, clock


def request(method: str, path: str, body: bytes | dict = b"", tls: bool = False,
            **headers: str) -> Request:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("content_type", "application/json")
    query = {}
    if "?" in path:
        path, _, raw = path.partition("?")
        query = dict(part.split("=", 1) for part in raw.split("&"))
    return Request(method, path, query,
                   {name.replace("_", "-"): value for name, value in headers.items()},
                   body, "127.0.0.1:5000", tls)


def header(response: Response, name: str) -> list[str]:
    return [value for key, value in response.headers if key == name]


async def login(handler, user: str = "alice", password: str = "secret",
                tls: bool = False) -> tuple[str, str]:
    """(cookie header value, CSRF token) of a new session."""
    response = await handler(request("POST", "/dashboard/login",
                                     {"user": user, "password": password}, tls=tls))
    assert response.status == 200, response.body
    cookie = header(response, "set-cookie")[0].split(";")[0]
    return cookie, json.loads(response.body)["csrf"]


async def test_static_files_are_served_with_their_content_types(api):
    handler, _, _ = api
    types = {"": "text/html; charset=utf-8", "index.html": "text/html; charset=utf-8",
             "app.js": "text/javascript; charset=utf-8",
             "views.js": "text/javascript; charset=utf-8",
             "chart.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8", "overview.png": "image/png"}
    for name, content_type in types.items():
        response = await handler(request("GET", f"/dashboard/{name}"))
        assert (response.status, response.content_type) == (200, content_type), name
        assert response.body
        assert "default-src 'self'" in header(response, "content-security-policy")[0]
        assert header(response, "x-content-type-options") == ["nosniff"]
    page = (await handler(request("GET", "/dashboard/"))).body.decode()
    assert '<script type="module" src="app.js">' in page and "<form id=\"login\"" in page
    assert (await handler(request("GET", "/dashboard/missing.js"))).status == 404
    assert (await handler(request("GET", "/dashboard/../api.py"))).status == 404
    assert (await handler(request("POST", "/dashboard/app.js"))).status == 405
    for path in ("/", "/dashboard"):
        moved = await handler(request("GET", path))
        assert (moved.status, header(moved, "location")) == (302, ["/dashboard/"])


async def test_nothing_without_a_session(api):
    handler, _, _ = api
    session = await handler(request("GET", "/dashboard/session"))
    assert session.status == 401 and not header(session, "www-authenticate")
    # A stale cookie: 401 without a challenge (a browser would ask for a password).
    stale = await handler(request("GET", "/api/v1/overview", cookie=f"{COOKIE}=made-up"))
    assert stale.status == 401 and not header(stale, "www-authenticate")
    plain = await handler(request("GET", "/api/v1/overview"))
    assert plain.status == 401 and header(plain, "www-authenticate")
    feed = await handler(request("GET", "/api/v1/feed", cookie=f"{COOKIE}=made-up"))
    assert feed.status == 401 and feed.stream is None


async def test_login_sets_a_session_cookie_that_the_api_accepts(api):
    handler, _, _ = api
    response = await handler(request("POST", "/dashboard/login",
                                     {"user": "alice", "password": "secret"}))
    assert response.status == 200
    body = json.loads(response.body)
    assert body["user"] == "alice" and body["idle_timeout"] == IDLE and len(body["csrf"]) > 30
    (cookie,) = header(response, "set-cookie")
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value.startswith(f"{COOKIE}=") and len(name_value) > len(COOKIE) + 30
    assert set(attributes) == {"Path=/", "HttpOnly", "SameSite=Strict"}  # no Secure on http
    overview = await handler(request("GET", "/api/v1/overview", cookie=name_value))
    assert overview.status == 200 and "connections_by_transport" in json.loads(overview.body)
    again = await handler(request("GET", "/dashboard/session",
                                  cookie=f"other=1; {name_value}"))
    assert json.loads(again.body) == body
    # Each login is a session of its own.
    assert (await login(handler))[0] != name_value


async def test_the_cookie_is_secure_over_https(api):
    handler, _, _ = api
    response = await handler(request("POST", "/dashboard/login",
                                     {"user": "alice", "password": "secret"}, tls=True))
    assert header(response, "set-cookie")[0].endswith("; HttpOnly; SameSite=Strict; Secure")


async def test_login_refusals(api, caplog):
    handler, _, _ = api
    for user, password in (("alice", "wrong"), ("bob", "pw"), ("carol", "x"), ("", "")):
        response = await handler(request("POST", "/dashboard/login",
                                         {"user": user, "password": password}))
        assert response.status == 401, user
        assert not header(response, "set-cookie") and not header(response, "www-authenticate")
    assert "user 'bob' is not an administrator" in caplog.text
    assert "secret" not in caplog.text and "wrong" not in caplog.text
    form = request("POST", "/dashboard/login", b"user=alice&password=secret",
                   content_type="application/x-www-form-urlencoded")
    assert (await handler(form)).status == 415  # what another site's form could send
    bad = request("POST", "/dashboard/login", b"{", content_type="application/json")
    assert (await handler(bad)).status == 400
    assert (await handler(request("POST", "/dashboard/login", {"user": "alice"}))).status == 400
    assert (await handler(request("GET", "/dashboard/login"))).status == 405


async def test_a_change_needs_the_csrf_token(api):
    handler, _, _ = api
    cookie, csrf = await login(handler)
    body = {"topic": "a/b", "payload": "x"}
    for headers in ({}, {"x_csrf_token": "wrong"}, {"x_csrf_token": ""}):
        for method, path, data in (("POST", "/api/v1/publish", body),
                                   ("DELETE", "/api/v1/queues/jobs/messages", b""),
                                   ("DELETE", "/api/v1/clients/someone", b"")):
            refused = await handler(request(method, path, data, cookie=cookie, **headers))
            assert refused.status == 403, (method, path, headers)
            assert json.loads(refused.body) == {"error": "missing or wrong X-CSRF-Token"}
    done = await handler(request("POST", "/api/v1/publish", body, cookie=cookie,
                                 x_csrf_token=csrf))
    assert done.status == 200 and json.loads(done.body)["topic"] == "a/b"
    # A token alone is no session: the cookie is needed too.
    alone = await handler(request("POST", "/api/v1/publish", body, x_csrf_token=csrf))
    assert alone.status == 401
    # Another session's token does not fit.
    _, other_csrf = await login(handler)
    mixed = await handler(request("POST", "/api/v1/publish", body, cookie=cookie,
                                  x_csrf_token=other_csrf))
    assert mixed.status == 403


async def test_logout_ends_the_session(api):
    handler, _, _ = api
    cookie, csrf = await login(handler)
    assert (await handler(request("POST", "/dashboard/logout", cookie=cookie))).status == 403
    out = await handler(request("POST", "/dashboard/logout", cookie=cookie, x_csrf_token=csrf))
    assert out.status == 200
    assert header(out, "set-cookie") == [
        f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"]
    assert (await handler(request("GET", "/api/v1/overview", cookie=cookie))).status == 401
    assert (await handler(request("GET", "/dashboard/session", cookie=cookie))).status == 401
    again = await handler(request("POST", "/dashboard/logout", cookie=cookie, x_csrf_token=csrf))
    assert again.status == 401


async def test_a_session_ends_after_the_idle_timeout(api):
    handler, _, clock = api
    cookie, _ = await login(handler)
    clock.now += IDLE - 1
    assert (await handler(request("GET", "/api/v1/overview", cookie=cookie))).status == 200
    clock.now += IDLE - 1  # a request counts as activity: still logged in
    assert (await handler(request("GET", "/dashboard/session", cookie=cookie))).status == 200
    clock.now += IDLE + 1
    assert (await handler(request("GET", "/api/v1/overview", cookie=cookie))).status == 401
    clock.now -= IDLE  # gone for good, even if the clock went back
    assert (await handler(request("GET", "/dashboard/session", cookie=cookie))).status == 401


def test_sessions_idle_timeout_and_bound():
    clock = Clock()
    sessions = Sessions(60, clock)
    key, session = sessions.open("alice")
    clock.now += 59
    assert sessions.get(key, touch=False) is session  # looked at, not touched
    clock.now += 2
    assert sessions.get(key) is None and not sessions.alive(session)
    keys = [sessions.open(f"user{n}")[0] for n in range(web.MAX_SESSIONS + 1)]
    assert sessions.get(keys[0]) is None  # the least recently used made room
    assert all(sessions.get(k) is not None for k in keys[1:])


async def read_events(port: int, cookie: str):
    """The feed's chunks as they arrive, over a real connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method="GET", target="/api/v1/feed", headers=[
        ("host", "127.0.0.1"), ("cookie", cookie)])) + conn.send(h11.EndOfMessage()))
    send, receive = trio.open_memory_channel[object](100)

    async def pump() -> None:
        async with send, stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    await send.send(bytes(event.data).decode())
                elif isinstance(event, h11.Response):
                    await send.send(event)
                else:
                    return  # EndOfMessage or closed
    return receive, pump


async def test_the_feed_sends_the_overview_every_second_until_the_session_ends(api):
    handler, port, clock = api
    cookie, _ = await login(handler)
    receive, pump = await read_events(port, cookie)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        with trio.fail_after(10):
            head = await receive.receive()
            assert head.status_code == 200
            assert (b"content-type", b"text/event-stream; charset=utf-8") in head.headers
            assert await receive.receive() == "retry: 2000\n\n"
            overviews = []
            start = trio.current_time()
            while len(overviews) < 2:
                chunk = await receive.receive()
                event, data = chunk.split("\n")[:2]
                assert event == "event: overview" and chunk.endswith("\n\n")
                overviews.append(json.loads(data.removeprefix("data: ")))
            assert trio.current_time() - start >= web.FEED_INTERVAL * 0.9
            assert {"messages_in", "uptime", "connections_by_protocol", "store_bytes",
                    "dropped"} <= set(overviews[0])
            # Watching is no activity: the session still ends when idle, and so does the feed.
            clock.now += IDLE + 1
            chunks = [chunk async for chunk in receive]
    assert chunks[-1] == "event: expired\ndata: {}\n\n"
    assert (await handler(request("GET", "/dashboard/session", cookie=cookie))).status == 401


def test_dashboard_idle_timeout_config():
    assert ManagementConfig().dashboard_idle_timeout == IDLE
    config = config_from_dict({"management": {"dashboard_idle_timeout": 120}})
    assert config.management.dashboard_idle_timeout == 120.0
    for bad in (5, 100000, "15m", True):
        with pytest.raises(ConfigError, match=r"management\.dashboard_idle_timeout"):
            config_from_dict({"management": {"dashboard_idle_timeout": bad}})
    assert replace(config.management, admins=("a",)).dashboard_idle_timeout == 120.0


async def test_the_overview_counts_connections_by_transport_and_the_store(serve_config):
    """What the dashboard's overview shows besides the API's first overview."""
    config = serve_config("mqtt://127.0.0.1:0", "mqtt+ws://127.0.0.1:0/mqtt")
    async with open_broker(config) as running:
        client = await mqtt(running, "t")
        view = ops.overview(running)
        assert view["connections_by_transport"] == {"tcp": 1}
        await ops.publish(running, "kept", b"x" * 100, qos=1, retain=True)
        assert ops.overview(running)["store_bytes"] > 100  # the retained message is stored
        await client.close()
    memory = replace(config, storage=replace(config.storage, persistence=False))
    async with open_broker(memory) as running:
        assert ops.overview(running)["store_bytes"] == 0

"""The management API on a real http(s) listener: access (administrators, tokens,
refusals), routing (404, 405, bad input), each route reaching its operation, TLS, the
loopback rule, and no API on protocol listeners. The operations are a recording fake
here; ``test_management_ops_api`` runs the real ones."""

import logging
import ssl
from dataclasses import replace

import pytest
import trio

from polybroker.config import (
    ConfigError,
    ManagementConfig,
    TLSConfig,
    config_from_dict,
    parse_listen_url,
)
from polybroker.management.api import ManagementApi
from polybroker.management.ops import Invalid, NotFound
from polybroker.server import check_listeners, open_broker, start_listeners

from .httpclient import HttpClient, basic, http

ADMIN = basic("alice", "secret")


class FakeOperations:
    """Records each call; answers with its name and arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail: Exception | None = None
        self.ready = True

    def __getattr__(self, name):
        async def op(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if self.fail is not None:
                raise self.fail
            if name == "metrics":
                return b"# metrics\n", "text/plain; version=0.0.4; charset=utf-8"
            if name == "readiness":
                return self.ready, {}
            return {"op": name}
        return op


@pytest.fixture
def api_config(serve_config, auth_config, tmp_path):
    """A broker config with one http listener, alice (admin) and bob in the password
    file, and a token file holding ``t0ken``."""
    def config(*urls: str, **management):
        tokens = tmp_path / "tokens"
        tokens.write_text("# tokens\nt0ken\n")
        return serve_config(*(urls or ("http://127.0.0.1:0",)),
                            auth=auth_config({"alice": "secret", "bob": "pw"}, None),
                            management=ManagementConfig(admins=("alice",), token_file=tokens,
                                                        **management))
    return config


async def open_api(config):
    """(running broker, its http port, the fake operations) as an async context."""
    running_cm = open_broker(config, ManagementApi)
    running = await running_cm.__aenter__()
    listener = next(lst for lst in running.bound if lst.config.protocol == "http")
    fake = FakeOperations()
    listener.http.ops = fake
    return running_cm, listener.config.port, fake


@pytest.fixture
async def api(api_config):
    cm, port, fake = await open_api(api_config())
    yield port, fake
    await cm.__aexit__(None, None, None)


# -- access ------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    None,
    basic("alice", "wrong"),
    basic("bob", "pw"),  # a user, but no administrator
    basic("nobody", "secret"),
    {"authorization": "Bearer wrong"},
    {"authorization": "Bearer"},
    {"authorization": "Basic !!notbase64"},
    {"authorization": "Digest whatever"},
])
async def test_api_without_valid_credentials_is_401_with_challenges(api, headers, caplog):
    port, fake = api
    reply = await http(port, "GET", "/api/v1/overview", headers=headers)
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == [
        'Basic realm="polybroker", charset="UTF-8"', 'Bearer realm="polybroker"']
    assert "error" in reply.json()
    assert fake.calls == []
    assert "Traceback" not in caplog.text


async def test_wrong_credentials_are_logged_and_never_the_password(api, caplog):
    caplog.set_level(logging.INFO)
    port, _ = api
    await http(port, "GET", "/api/v1/overview", headers=basic("alice", "hunter2"))
    assert "http login refused" in caplog.text and "'alice'" in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("headers", [ADMIN, {"authorization": "Bearer t0ken"},
                                     {"authorization": "bearer t0ken"}])
async def test_administrator_or_token_gets_in(api, headers):
    port, _fake = api
    reply = await http(port, "GET", "/api/v1/overview", headers=headers)
    assert reply.status == 200 and reply.json() == {"op": "overview"}


async def test_token_file_is_reread_when_it_changes(api, tmp_path):
    port, _ = api
    (tmp_path / "tokens").write_text("n3w-token-of-another-length\n")
    new = {"authorization": "Bearer n3w-token-of-another-length"}
    assert (await http(port, "GET", "/api/v1/overview", headers=new)).status == 200
    old = {"authorization": "Bearer t0ken"}
    assert (await http(port, "GET", "/api/v1/overview", headers=old)).status == 401


async def test_unknown_api_path_without_credentials_is_401_not_404(api):
    port, _ = api
    assert (await http(port, "GET", "/api/v1/nothing")).status == 401
    assert (await http(port, "GET", "/elsewhere")).status == 401


async def test_metrics_and_health_are_open_by_default(api):
    port, _fake = api
    metrics = await http(port, "GET", "/metrics")
    assert metrics.status == 200 and metrics.body == b"# metrics\n"
    assert metrics.header("content-type").startswith("text/plain; version=0.0.4")
    assert (await http(port, "GET", "/health/live")).json() == {"status": "live"}
    assert (await http(port, "GET", "/health/ready")).status == 200


async def test_ready_is_503_until_ready(api):
    port, fake = api
    fake.ready = False
    reply = await http(port, "GET", "/health/ready")
    assert reply.status == 503 and reply.json()["status"] == "not ready"


async def test_metrics_and_health_closed_when_configured(api_config):
    cm, port, _ = await open_api(api_config(open_metrics=False, open_health=False))
    try:
        for path in ("/metrics", "/health/live", "/health/ready"):
            assert (await http(port, "GET", path)).status == 401
            assert (await http(port, "GET", path, headers=ADMIN)).status == 200
    finally:
        await cm.__aexit__(None, None, None)


async def test_the_real_readiness_follows_the_running_broker(api_config):
    async with open_broker(api_config(), ManagementApi) as running:
        port = running.port("http")
        assert (await http(port, "GET", "/health/ready")).status == 200
        running.serving = False  # as when it begins to stop
        assert (await http(port, "GET", "/health/ready")).status == 503


# -- routing -----------------------------------------------------------------------------

ROUTES = [
    ("GET", "/api/v1/overview", None, ("overview", (), {})),
    ("GET", "/api/v1/clients", None,
     ("clients", (), {"protocol": None, "search": None, "offset": 0, "limit": 100})),
    ("GET", "/api/v1/clients?protocol=mqtt&search=sens&offset=5&limit=10", None,
     ("clients", (), {"protocol": "mqtt", "search": "sens", "offset": 5, "limit": 10})),
    ("GET", "/api/v1/clients/dev%2F1", None, ("client", ("dev/1",), {})),
    ("DELETE", "/api/v1/clients/c1", None, ("kick", ("c1",), {"discard": False})),
    ("DELETE", "/api/v1/clients/c1?discard=true", None, ("kick", ("c1",), {"discard": True})),
    ("POST", "/api/v1/clients/disconnect", {"clients": ["a", "b"], "discard": True},
     ("kick_many", (["a", "b"],), {"discard": True})),
    ("GET", "/api/v1/subscriptions?client=c1", None,
     ("subscriptions", (), {"client": "c1", "offset": 0, "limit": 100})),
    ("GET", "/api/v1/queues", None, ("queues", (), {"offset": 0, "limit": 100})),
    ("GET", "/api/v1/queues/jobs", None, ("queue", ("jobs",), {})),
    ("DELETE", "/api/v1/queues/jobs/messages", None, ("purge", ("jobs",), {})),
    ("DELETE", "/api/v1/queues/jobs", None, ("delete_queue", ("jobs",), {})),
    ("GET", "/api/v1/retained", None, ("retained", ("#",), {"offset": 0, "limit": 100})),
    ("GET", "/api/v1/retained?filter=sensors/%23", None,
     ("retained", ("sensors/#",), {"offset": 0, "limit": 100})),
    ("GET", "/api/v1/retained/sensors/t1", None, ("retained_message", ("sensors/t1",), {})),
    ("GET", "/api/v1/retained/%24app%2Fx", None, ("retained_message", ("$app/x",), {})),
    ("DELETE", "/api/v1/retained/sensors/t1", None, ("delete_retained", ("sensors/t1",), {})),
    ("POST", "/api/v1/publish", {"topic": "a/b", "payload": "hi", "qos": 1, "retain": True},
     ("publish", ("a/b", b"hi"), {"qos": 1, "retain": True})),
    ("POST", "/api/v1/publish", {"topic": "a/b", "payload": "AAE=", "encoding": "base64"},
     ("publish", ("a/b", b"\x00\x01"), {"qos": 0, "retain": False})),
    ("GET", "/api/v1/listeners", None, ("listeners", (), {})),
]


@pytest.mark.parametrize(("method", "target", "body", "call"), ROUTES)
async def test_each_route_calls_its_operation(api, method, target, body, call):
    port, fake = api
    reply = await http(port, method, target, body, ADMIN)
    assert reply.status == 200, reply.body
    assert reply.json() == {"op": call[0]}
    assert fake.calls == [call]


async def test_unknown_route_is_404_and_wrong_method_405_with_allow(api):
    port, fake = api
    reply = await http(port, "GET", "/api/v1/nothing", headers=ADMIN)
    assert reply.status == 404 and reply.json() == {"error": "no such resource: /api/v1/nothing"}
    reply = await http(port, "PUT", "/api/v1/queues/jobs", headers=ADMIN)
    assert reply.status == 405 and reply.header("allow") == "DELETE, GET"
    assert (await http(port, "POST", "/metrics")).status == 405
    assert fake.calls == []


@pytest.mark.parametrize(("target", "body", "error"), [
    ("/api/v1/publish", b"{not json", "body: not valid JSON"),
    ("/api/v1/publish", b"[1]", "body: expected a JSON object"),
    ("/api/v1/publish", {"payload": "x"}, "topic: expected a string"),
    ("/api/v1/publish", {"topic": "t", "qos": 3}, "qos: expected 0, 1 or 2"),
    ("/api/v1/publish", {"topic": "t", "qos": True}, "qos: expected a whole number"),
    ("/api/v1/publish", {"topic": "t", "retain": "yes"}, "retain: expected true or false"),
    ("/api/v1/publish", {"topic": "t", "payload": "*", "encoding": "base64"},
     "payload: not base64"),
    ("/api/v1/publish", {"topic": "t", "encoding": "rot13"}, "encoding: expected utf-8 or base64"),
    ("/api/v1/clients/disconnect", {"clients": [1]}, "clients: expected a list of client ids"),
    ("/api/v1/clients/disconnect", {}, "clients: expected a list"),
])
async def test_bad_body_is_400(api, target, body, error):
    port, fake = api
    reply = await http(port, "POST", target, body, ADMIN)
    assert reply.status == 400 and reply.json() == {"error": error}
    assert fake.calls == []


@pytest.mark.parametrize("query", ["limit=-1", "limit=1001", "offset=x", "limit=1e3"])
async def test_bad_paging_is_400(api, query):
    port, _fake = api
    reply = await http(port, "GET", f"/api/v1/clients?{query}", headers=ADMIN)
    assert reply.status == 400 and reply.json()["error"].startswith(query.split("=")[0])


async def test_body_too_large_is_413(api):
    port, fake = api
    reply = await http(port, "POST", "/api/v1/publish", b"x" * (1024 * 1024 + 1), ADMIN)
    assert reply.status == 413 and fake.calls == []


async def test_operation_errors_map_to_404_400_and_500_without_internals(api, caplog):
    port, fake = api
    fake.fail = NotFound("no client 'x'")
    reply = await http(port, "GET", "/api/v1/clients/x", headers=ADMIN)
    assert (reply.status, reply.json()) == (404, {"error": "no client 'x'"})
    fake.fail = Invalid("bad filter")
    reply = await http(port, "GET", "/api/v1/retained?filter=a/%23/b", headers=ADMIN)
    assert (reply.status, reply.json()) == (400, {"error": "bad filter"})
    fake.fail = RuntimeError("secret internals")
    reply = await http(port, "GET", "/api/v1/overview", headers=ADMIN)
    assert (reply.status, reply.json()) == (500, {"error": "internal error"})


async def test_requests_share_one_kept_alive_connection(api):
    port, fake = api
    client = await HttpClient.open(port)
    try:
        for _ in range(3):
            assert (await client.request("GET", "/api/v1/overview", headers=ADMIN)).status == 200
    finally:
        await client.aclose()
    assert len(fake.calls) == 3


# -- listeners ---------------------------------------------------------------------------

async def test_https_listener(api_config, certs_dir):
    tls = TLSConfig(certfile=certs_dir / "server.crt", keyfile=certs_dir / "server.key")
    config = api_config()
    config = replace(config, listeners=(parse_listen_url("https://127.0.0.1:0", tls=tls),))
    async with open_broker(config, ManagementApi) as running:
        assert running.listeners[0].url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=certs_dir / "ca.crt")
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", running.port("http"),
                                                     ssl_context=ctx)
        client = HttpClient(stream, "localhost")
        reply = await client.request("GET", "/api/v1/listeners", headers=ADMIN)
        assert reply.status == 200
        await client.aclose()


def test_non_loopback_http_listener_is_refused_unless_allowed(serve_config):
    with pytest.raises(ConfigError, match=r"^listener http://0\.0\.0\.0:18083: the management "
                       "API listens on loopback addresses only, unless the listener sets "
                       "allow_remote = true$"):
        check_listeners(serve_config("http://0.0.0.0:18083"))
    allowed = replace(parse_listen_url("http://0.0.0.0:18083"), allow_remote=True)
    check_listeners(serve_config(allowed))
    check_listeners(serve_config("http://[::1]:18083", "http://localhost:18083"))


def test_listener_config():
    config = config_from_dict({
        "listener": [{"url": "http://127.0.0.1"}, {"url": "https://0.0.0.0",
                                                  "allow_remote": True, "certfile": "c.pem"},
                     {"protocol": "http", "port": 9000}],
        "management": {"admins": ["alice"], "token_file": "tokens", "open_metrics": False},
    })
    plain, secure, table = config.listeners
    assert (plain.url, plain.allow_remote) == ("http://127.0.0.1:18083", False)
    assert (secure.url, secure.allow_remote) == ("https://0.0.0.0:18084", True)
    assert table.url == "http://127.0.0.1:9000"
    assert config.management.admins == ("alice",)
    assert config.management.open_metrics is False and config.management.open_health is True


@pytest.mark.parametrize(("raw", "error"), [
    ({"listener": [{"url": "mqtt://127.0.0.1", "allow_remote": True}]},
     "listener[0].allow_remote: only for http and https listeners"),
    ({"listener": [{"url": "http://127.0.0.1/api"}]}, "unexpected path"),
    ({"management": {"admins": "alice"}}, "management.admins: expected a list of user names"),
    ({"management": {"open_metrics": 1}}, "management.open_metrics: expected true or false"),
    ({"management": {"admin": ["x"]}}, "management.admin: unknown key"),
])
def test_bad_management_config_is_refused(raw, error):
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(raw)


async def test_missing_token_file_stops_the_start(serve_config, tmp_path):
    config = serve_config("http://127.0.0.1:0",
                          management=ManagementConfig(token_file=tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"^management.token_file: cannot read .*missing: "
                       "No such file or directory$"):
        await start_listeners(config, ManagementApi)


async def test_http_listener_without_the_api_is_refused(serve_config):
    with pytest.raises(ConfigError, match="http listeners need the management API"):
        await start_listeners(serve_config("http://127.0.0.1:0"))


@pytest.mark.parametrize("url", ["mqtt://127.0.0.1:0", "auto://127.0.0.1:0",
                                 "stomp://127.0.0.1:0", "amqp://127.0.0.1:0",
                                 "auto+ws://127.0.0.1:0"])
async def test_protocol_listeners_never_answer_the_api(api_config, url):
    config = api_config("http://127.0.0.1:0", url)
    async with open_broker(config, ManagementApi) as running:
        port = running.listeners[1].port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /api/v1/overview HTTP/1.1\r\nhost: x\r\n"
                              b"authorization: Bearer t0ken\r\n\r\n")
        received = b""
        with trio.fail_after(15):
            try:
                while data := await stream.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:
                pass  # reset: closed with our request unread
        assert b'"op"' not in received and b"200 OK" not in received
        await stream.aclose()


async def test_a_change_the_store_does_not_confirm_is_503(api):
    port, fake = api
    fake.fail = TimeoutError("storage did not confirm in time")
    reply = await http(port, "DELETE", "/api/v1/queues/jobs/messages", headers=ADMIN)
    assert (reply.status, reply.json()) == (503, {"error": "storage did not confirm in time"})

"""``polybroker ctl``: the management API from the command line.

Aligned tables for people, ``--json`` for scripts (the API's own answer). Where the
API is and who asks: ``--url``, ``--user``/``--password`` or ``--token``, ``--cafile``;
else ``POLYBROKER_URL``, ``POLYBROKER_USER``, ``POLYBROKER_PASSWORD``,
``POLYBROKER_TOKEN``, ``POLYBROKER_CAFILE``; else the config file given with ``-c``
(its first http(s) listener and the first token of its token file); else
``http://127.0.0.1:18083``. Only the standard library: this runs wherever Python does.
"""

import argparse
import base64
import getpass
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from .config import load_config
from .config_checks import ConfigError

DEFAULT_URL = "http://127.0.0.1:18083"
TIMEOUT = 30.0
ENVIRONMENT = {"url": "POLYBROKER_URL", "user": "POLYBROKER_USER",
               "password": "POLYBROKER_PASSWORD", "token": "POLYBROKER_TOKEN",
               "cafile": "POLYBROKER_CAFILE"}


class CtlError(Exception):
    """One line for standard error; the command exits with status 1."""


# -- the command line ----------------------------------------------------------------------

def add_ctl_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    ctl = commands.add_parser(
        "ctl", help="see and steer a running broker through its management API",
        description="Talk to a running broker's management API (an http or https "
                    "listener). URL and credentials come from the options, else the "
                    "POLYBROKER_URL, POLYBROKER_USER, POLYBROKER_PASSWORD, POLYBROKER_TOKEN "
                    "and POLYBROKER_CAFILE environment variables, else the config file "
                    f"(-c), else {DEFAULT_URL}.",
    )
    _connection_options(ctl, None)
    actions = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text,
                                                             description=help_text)
        _connection_options(parser, argparse.SUPPRESS)  # also after the command
        return parser

    clients = action("clients", "list the connected clients")
    clients.add_argument("--protocol", choices=["mqtt", "stomp", "amqp"])
    clients.add_argument("--search", metavar="TEXT", help="client ids containing TEXT")
    clients.add_argument("--offset", type=int, default=0)
    clients.add_argument("--limit", type=int, default=100)
    action("client", "one client: its counts and subscriptions").add_argument("id")
    kick = action("kick", "disconnect a client")
    kick.add_argument("id")
    kick.add_argument("--discard", action="store_true",
                      help="discard its session too (MQTT: subscriptions, queued messages)")
    action("queues", "list the named queues")
    action("purge", "drop a queue's ready messages").add_argument("queue")
    retained = action("retained", "list the retained messages")
    retained.add_argument("filter", nargs="?", default="#",
                          help="topic filter (default #)")
    publish = action("publish", "publish a message")
    publish.add_argument("topic")
    publish.add_argument("message")
    publish.add_argument("--qos", type=int, choices=[0, 1, 2], default=0)
    publish.add_argument("--retain", action="store_true")
    action("stats", "the broker at a glance: connections, traffic, drops")


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_argument_group("where and who")
    group.add_argument("--url", default=default, help=f"the API's URL (default {DEFAULT_URL})")
    group.add_argument("--user", default=default, help="an administrator (HTTP basic)")
    group.add_argument("--password", default=default, help="the administrator's password")
    group.add_argument("--token", default=default, help="an API token (HTTP bearer)")
    group.add_argument("--cafile", default=default, type=Path, metavar="PEM",
                       help="CA certificates to verify an https listener with")
    group.add_argument("-c", "--config", default=default, type=Path, metavar="FILE",
                       help="the broker's config file: its first http(s) listener and "
                            "token file")
    group.add_argument("--json", action="store_true", default=default,
                       help="print the API's JSON answer instead of a table")


def run_ctl(args: argparse.Namespace) -> int:
    try:
        client = ApiClient(**_settings(args))
        print(COMMANDS[args.ctl_command](client, args))
    except CtlError as exc:
        print(f"polybroker ctl: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # | head
        return 0
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """URL and credentials: options, else environment, else the config file."""
    found: dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        value = getattr(args, name, None) or os.environ.get(variable) or None
        found[name] = Path(value) if name == "cafile" and value else value
    config_file = getattr(args, "config", None)
    if config_file is not None and (found["url"] is None or
                                    not (found["token"] or found["user"])):
        url, token = _from_config(config_file)
        found["url"] = found["url"] or url
        if not found["user"]:
            found["token"] = found["token"] or token
    if found["user"] and found["password"] is None and not found["token"] and sys.stdin.isatty():
        found["password"] = getpass.getpass(f"password for {found['user']}: ")
    found["url"] = (found["url"] or DEFAULT_URL).rstrip("/")
    found["json_output"] = bool(getattr(args, "json", False))
    return found


def _from_config(path: Path) -> tuple[str | None, str | None]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CtlError(str(exc)) from None
    url = None
    for listener in config.listeners:
        if listener.protocol == "http" and listener.port != 0:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listener.host, listener.host)
            host = f"[{host}]" if ":" in host else host
            url = f"{'https' if listener.tls else 'http'}://{host}:{listener.port}"
            break
    token = None
    if config.management.token_file is not None:
        try:
            lines = config.management.token_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CtlError(f"management.token_file: {exc.strerror}: "
                           f"{config.management.token_file}") from None
        token = next((line.strip() for line in lines
                      if line.strip() and not line.strip().startswith("#")), None)
    return url, token


# -- the HTTP client ----------------------------------------------------------------------

@dataclass
class ApiClient:
    url: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    cafile: Path | None = None
    json_output: bool = False

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The API's JSON answer; CtlError with one line for anything else."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("accept", "application/json")
        if data is not None:
            request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        elif self.user is not None:
            pair = f"{self.user}:{self.password or ''}".encode()
            request.add_header("authorization", f"Basic {base64.b64encode(pair).decode()}")
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(cafile=self.cafile)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            raise CtlError(_http_error(exc)) from None
        except urllib.error.URLError as exc:
            reason = getattr(exc.reason, "strerror", None) or exc.reason
            raise CtlError(f"cannot connect to {self.url}: {reason}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise CtlError(f"{self.url}: {exc or type(exc).__name__}") from None


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(exc.read()).get("error", "")
    except (ValueError, AttributeError, OSError):
        message = ""
    if exc.code == 401:
        return ("not authorized: give an administrator's --user and --password, or a "
                "--token (HTTP 401)")
    if exc.code == 404:
        return f"not found: {message or exc.reason}"
    return f"HTTP {exc.code}: {message or exc.reason}"


# -- the commands -------------------------------------------------------------------------

def _q(value: str) -> str:
    return quote(value, safe="")


def _clients(api: ApiClient, args: argparse.Namespace) -> str:
    query = {"offset": args.offset, "limit": args.limit}
    query |= {name: value for name in ("protocol", "search")
              if (value := getattr(args, name))}
    page = api.call("GET", f"/api/v1/clients?{urlencode(query)}")
    if api.json_output:
        return _json(page)
    rows = [[c["id"], c["protocol"], c["peer"], c.get("user") or "",
             f"{c['connected_for']:.0f}s", c["messages_in"], c["messages_out"],
             c["subscription_count"], c["queued"], c["inflight"]] for c in page["items"]]
    table = _table(["ID", "PROTOCOL", "PEER", "USER", "CONNECTED", "IN", "OUT", "SUBS",
                    "QUEUED", "INFLIGHT"], rows)
    return table + _more(page, "clients")


def _client(api: ApiClient, args: argparse.Namespace) -> str:
    detail = api.call("GET", f"/api/v1/clients/{_q(args.id)}")
    if api.json_output:
        return _json(detail)
    subscriptions = detail.pop("subscriptions", [])
    lines = _pairs(detail)
    if subscriptions:
        columns = list(dict.fromkeys(key for row in subscriptions for key in row))
        rows = [[row.get(key, "") for key in columns] for row in subscriptions]
        lines += "\n\n" + _table([c.upper() for c in columns], rows)
    return lines


def _kick(api: ApiClient, args: argparse.Namespace) -> str:
    query = "?discard=true" if args.discard else ""
    done = api.call("DELETE", f"/api/v1/clients/{_q(args.id)}{query}")
    if api.json_output:
        return _json(done)
    said = "disconnected" if done.get("disconnected") else "not connected"
    if done.get("session_discarded"):
        said += ", session discarded"
    return f"{args.id}: {said}"


def _queues(api: ApiClient, args: argparse.Namespace) -> str:
    page = api.call("GET", f"/api/v1/queues?limit={1000}")
    if api.json_output:
        return _json(page)
    rows = [[q["name"], q["ready"], q["unacknowledged"], q["consumers"], q["bytes"],
             "yes" if q["durable"] else "no"] for q in page["items"]]
    return _table(["NAME", "READY", "UNACKED", "CONSUMERS", "BYTES", "DURABLE"],
                  rows) + _more(page, "queues")


def _purge(api: ApiClient, args: argparse.Namespace) -> str:
    done = api.call("DELETE", f"/api/v1/queues/{_q(args.queue)}/messages")
    return _json(done) if api.json_output else f"{args.queue}: {done['purged']} message(s) purged"


def _retained(api: ApiClient, args: argparse.Namespace) -> str:
    page = api.call("GET", f"/api/v1/retained?{urlencode({'filter': args.filter})}")
    if api.json_output:
        return _json(page)
    rows = [[m["topic"], m["qos"], m["size"]] for m in page["items"]]
    return _table(["TOPIC", "QOS", "SIZE"], rows) + _more(page, "retained messages")


def _publish(api: ApiClient, args: argparse.Namespace) -> str:
    done = api.call("POST", "/api/v1/publish", {"topic": args.topic, "payload": args.message,
                                                "qos": args.qos, "retain": args.retain})
    if api.json_output:
        return _json(done)
    return f"published to {args.topic}: {done.get('matched', 0)} subscriber(s)"


def _stats(api: ApiClient, args: argparse.Namespace) -> str:
    overview = api.call("GET", "/api/v1/overview")
    return _json(overview) if api.json_output else _pairs(overview)


COMMANDS: dict[str, Callable[[ApiClient, argparse.Namespace], str]] = {
    "clients": _clients, "client": _client, "kick": _kick, "queues": _queues,
    "purge": _purge, "retained": _retained, "publish": _publish, "stats": _stats,
}


# -- output -------------------------------------------------------------------------------

def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(header, *cells, strict=True)]
    numeric = [bool(rows) and all(isinstance(row[i], int | float) for row in rows)
               for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if right else value.ljust(width)
                         for value, width, right in zip(values, widths, numeric,
                                                        strict=True)).rstrip()
    return "\n".join([line(header), *(line(row) for row in cells)])


def _cell(value: Any, key: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and key in TIMESTAMPS:
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


TIMESTAMPS = {"started", "connected_since"}  # seconds since the epoch, shown in UTC


def _pairs(value: dict[str, Any], prefix: str = "") -> str:
    """``key: value`` lines, nested objects as dotted keys, aligned."""
    flat: list[tuple[str, str]] = []

    def walk(item: dict[str, Any], at: str) -> None:
        for key, inner in item.items():
            if isinstance(inner, dict) and inner:
                walk(inner, f"{at}{key}.")
            elif not isinstance(inner, dict):
                flat.append((f"{at}{key}", _cell(inner, key)))
    walk(value, prefix)
    width = max((len(key) for key, _ in flat), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {text}".rstrip() for key, text in flat)


def _more(page: dict[str, Any], what: str) -> str:
    shown, total = len(page["items"]), page.get("total", len(page["items"]))
    if shown >= total:
        return ""
    start = page.get("offset", 0)
    return f"\n({what} {start + 1}-{start + shown} of {total}: --offset and --limit for more)"

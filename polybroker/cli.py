"""The ``polybroker`` command."""

import argparse
import errno
import getpass
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import trio

from . import __version__, certs
from .auth import ScramCredential
from .auth.passwords import PasswordFileError, check_username, delete_user, set_password
from .cluster.workers import add_worker_arguments, run_workers, worker_config, worker_spec
from .config import BrokerConfig, ConfigError, default_listeners, load_config, parse_listen_url
from .ctl import add_ctl_command, run_ctl
from .logsetup import SYSLOG_SOCKET, configure_logging, reopen_log_files
from .management.api import ManagementApi
from .server import RunningBroker, serve_with_storage, start_listeners
from .storage import StoreLockedError

log = logging.getLogger("polybroker")
TLS_FLAGS = ("certfile", "keyfile", "cafile", "require_certificate")

SHUTDOWN_GRACE = 2.0  # seconds connections get to flush their last packets


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polybroker", description="Multi-protocol message broker: MQTT 3.1.1 and 5.0, "
        "STOMP 1.0-1.2 and AMQP 0-9-1 on one topic router. Start it with `polybroker serve`.",
    )
    parser.add_argument("--version", action="version", version=f"polybroker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "serve", help="run the broker",
        description="Run the broker until SIGINT or SIGTERM; SIGHUP re-reads the TLS "
                    "certificates, the password and ACL files, and reopens the log file. "
                    "Options given here override the config file.",
    )
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="TOML configuration file (default: none, the built-in defaults)")
    run.add_argument(
        "--listen", action="append", metavar="URL",
        help="listen on URL, e.g. mqtt://127.0.0.1:1883, mqtt+tls://0.0.0.0:8883, "
             "mqtt+ws://127.0.0.1:8083/mqtt, auto://127.0.0.1:1883 (repeatable; replaces "
             "configured listeners; port 0 picks a free port; default: the config's "
             "listeners, else mqtt://127.0.0.1:1883)",
    )
    tls = run.add_argument_group(
        "TLS for --listen URLs (over the config file's [tls] table)")
    tls.add_argument("--certfile", type=Path, metavar="PEM", help="server certificate chain (PEM)")
    tls.add_argument("--keyfile", type=Path, metavar="PEM",
                     help="its private key (PEM), if not in --certfile")
    tls.add_argument("--cafile", type=Path, metavar="PEM",
                     help="CA certificates for client certificates")
    tls.add_argument("--require-certificate", action="store_true", default=None,
                     help="refuse clients without a certificate signed by --cafile")
    run.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="directory for broker data (default: the config's data_dir, else "
                          "./data)")
    run.add_argument("--port-file", type=Path, metavar="FILE",
                     help="once listening, write each listener's URL (one a line) to this file")
    add_worker_arguments(run)
    logs = run.add_argument_group("logging (default: standard error, level info)")
    logs.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                      help="debug adds a line for every packet, frame and method sent and "
                           "received (default: the config's log_level, else info)")
    logs.add_argument("--log-file", type=Path, metavar="FILE",
                      help="append log lines to FILE instead of standard error; reopened "
                           "on SIGHUP (for logrotate)")
    logs.add_argument("--syslog", action="store_true", default=None,
                      help="send log lines to the local syslog socket /dev/log (journald "
                           "reads it too)")
    scram = commands.add_parser(
        "scram-password",
        help="print a SCRAM-SHA-256 credential line for [mqtt] scram_users_file; the "
             "password is read from standard input (prompted on a terminal)",
    )
    scram.add_argument("user")
    add_passwd_command(commands)
    add_certs_command(commands)
    add_ctl_command(commands)
    return parser


def add_passwd_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    tool = commands.add_parser(
        "passwd", help="add a user to a password file ([auth] password_file), change its "
                       "password, or remove it",
        description="Set USER's password in FILE (created with mode 0600 if missing), as a "
                    "salted scrypt hash; the password is asked twice on the terminal. The "
                    "file is rewritten atomically; a running broker reads it on SIGHUP.",
    )
    tool.add_argument("file", type=Path)
    tool.add_argument("user")
    tool.add_argument("-D", "--delete", action="store_true", help="remove USER instead")
    tool.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")


def add_certs_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    tool = commands.add_parser(
        "certs", help="create development certificates: a CA, a server and client certificates",
        description="Create (or reuse) a development CA in DIR and sign certificates with it. "
                    "A server certificate is written for --server HOST ..., or for "
                    + ", ".join(certs.DEFAULT_HOSTS) + " when DIR has none yet. "
                    "Keys are written with mode 0600.",
    )
    tool.add_argument("--dir", type=Path, default=Path("certs"),
                      help="where ca.crt, server.crt, NAME.crt and their keys go (default certs)")
    tool.add_argument("--server", nargs="+", metavar="HOST",
                      help="write server.crt for these DNS names and IP addresses")
    tool.add_argument("--client", action="append", default=[], metavar="NAME",
                      help="write NAME.crt with subject CN=NAME (repeatable)")
    tool.add_argument("--days", type=int, default=certs.LEAF_DAYS,
                      help=f"validity of the server and client certificates (default "
                           f"{certs.LEAF_DAYS})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "scram-password":
        return _scram_password(args.user)
    if args.command == "certs":
        return _make_certs(args)
    if args.command == "passwd":
        return _passwd(args)
    if args.command == "ctl":
        return run_ctl(args)
    worker = None
    try:
        config = _config_from_args(args)
        spec = worker_spec() if args.workers is not None else None
        if spec is not None:  # one of --workers N: its node, store and ports
            config, worker = worker_config(config, spec)
    except ConfigError as exc:
        print(f"polybroker: {exc}", file=sys.stderr)
        return 2
    try:
        handlers = configure_logging(config.log_level, config.log)
    except OSError as exc:
        where = config.log.file or SYSLOG_SOCKET
        print(f"polybroker: cannot start: log {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.workers is not None and worker is None:
        return run_workers(config, args.workers, sys.argv[1:] if argv is None else argv,
                           args.port_file)
    port_file = args.port_file if worker is None else config.data_dir / "ports"
    try:
        _prepare_data_dir(config.data_dir)
        trio.run(_serve_until_signal, config, port_file, handlers,
                 lambda: _config_from_args(args), worker)
    except BaseException as exc:
        failure = _start_failure(exc, config.data_dir)
        if failure is None:
            raise
        message, code = failure
        log.error("cannot start: %s", message)
        return code
    return 0


def _prepare_data_dir(path: Path) -> None:
    """Create the data directory; an OSError that names it if it cannot be used."""
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable by this user")
    except OSError as exc:
        raise OSError(exc.errno, f"data directory {path}: {exc.strerror}") from None


# What start-up can fail with that is the operator's to fix: one log line each, no traceback.
_EXPECTED = (ConfigError, OSError, ValueError)  # ValueError: a bad SCRAM credentials file


def _start_failure(exc: BaseException, data_dir: Path) -> tuple[str, int] | None:
    """The log message and exit status for a failed start, or None for a real bug.

    Errors raised inside the broker's nurseries arrive wrapped in exception groups."""
    leaves = _leaves(exc)
    if not leaves or not all(isinstance(leaf, _EXPECTED) for leaf in leaves):
        return None
    messages = dict.fromkeys(_describe(leaf, data_dir) for leaf in leaves)
    code = 2 if all(isinstance(leaf, ConfigError) for leaf in leaves) else 1
    return "; ".join(messages), code


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _describe(exc: BaseException, data_dir: Path) -> str:
    if isinstance(exc, StoreLockedError):
        return f"data directory {data_dir}: in use by another broker (its store is locked)"
    if isinstance(exc, OSError) and not isinstance(exc, ConfigError):
        if exc.filename is not None:
            return f"{exc.filename}: {exc.strerror}"
        return exc.strerror or str(exc)
    return str(exc)


def _scram_password(user: str) -> int:
    if ":" in user or not user:
        print("polybroker: a user name must be non-empty and without ':'", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("polybroker: empty password", file=sys.stderr)
        return 2
    print(f"{user}:{ScramCredential.from_password(password).to_rfc5803()}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    try:
        check_username(args.user)
        if args.delete:
            if not delete_user(args.file, args.user):
                print(f"polybroker passwd: no user {args.user!r} in {args.file}", file=sys.stderr)
                return 1
            print(f"removed {args.user} from {args.file}")
            return 0
        password = _new_password(args.user, args.password_stdin)
        if password is None:
            return 2
        changed = set_password(args.file, args.user, password)
    except (PasswordFileError, OSError) as exc:
        print(f"polybroker passwd: {exc}", file=sys.stderr)
        return 2
    print(f"{'changed the password of' if changed else 'added'} {args.user} in {args.file}")
    return 0


def _new_password(user: str, from_stdin: bool) -> str | None:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != password:
            print("polybroker passwd: the passwords differ", file=sys.stderr)
            return None
    if not password:
        print("polybroker passwd: empty password", file=sys.stderr)
        return None
    return password


def _make_certs(args: argparse.Namespace) -> int:
    server_missing = not (args.dir / "server.crt").exists()
    hosts = tuple(args.server or certs.DEFAULT_HOSTS) if args.server or server_missing else ()
    try:
        for host in hosts:  # every name checked before any file is written
            certs.san_for_host(host)
        for name in args.client:
            certs.check_client_name(name)
        if args.days <= 0:
            raise certs.CertError("--days: must be greater than 0")
        ca, created = certs.load_or_create_ca(args.dir)
        print(f"{'created' if created else 'using existing'} CA {args.dir / 'ca.crt'}")
        if hosts:
            paths = certs.issue_server(ca, args.dir, hosts, args.days)
            print(f"wrote {paths[0]} and {paths[1]} ({', '.join(hosts)})")
        else:
            print(f"kept existing {args.dir / 'server.crt'} (--server HOST ... replaces it)")
        for name in args.client:
            paths = certs.issue_client(ca, args.dir, name, args.days)
            print(f"wrote {paths[0]} and {paths[1]} (CN={name})")
    except (certs.CertError, OSError) as exc:
        print(f"polybroker certs: {exc}", file=sys.stderr)
        return 2
    return 0


def _config_from_args(args: argparse.Namespace) -> BrokerConfig:
    config = load_config(args.config) if args.config else BrokerConfig()
    tls_flags = {name: value for name in TLS_FLAGS if (value := getattr(args, name)) is not None}
    if tls_flags and not args.listen:
        raise ConfigError("--certfile, --keyfile, --cafile and --require-certificate apply to "
                          "--listen URLs; configured listeners take theirs from [tls]")
    if args.listen:
        tls = replace(config.tls, **tls_flags)
        listeners = tuple(parse_listen_url(url, tls=tls) for url in args.listen)
        config = replace(config, listeners=listeners)
    elif not config.listeners:
        config = replace(config, listeners=default_listeners())
    if args.data_dir:
        config = replace(config, data_dir=args.data_dir)
    if args.log_level:
        config = replace(config, log_level=args.log_level)
    if args.log_file:
        config = replace(config, log=replace(config.log, file=args.log_file))
    if args.syslog:
        config = replace(config, log=replace(config.log, syslog=True))
    return config


async def _serve_until_signal(config: BrokerConfig, port_file: Path | None,
                              log_handlers: list[logging.Handler],
                              reread: Callable[[], BrokerConfig] | None = None,
                              worker: int | None = None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        # Bound before any nursery, so a start-up error comes out bare, not in a group.
        # A worker of --workers shares its ports with the others.
        running = await start_listeners(config, ManagementApi, reuse_port=worker is not None)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_with_storage, running)
            if port_file is not None:
                _write_port_file(port_file, running)
            if worker is None:
                log.info("polybroker %s ready", __version__)
            else:
                log.info("worker %d ready", worker)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reopen_log_files(log_handlers)
                    log.info("received SIGHUP, reloading certificates, password and ACL files")
                    running.reload_certificates()
                    running.broker.security.reload()
                    if reread is not None:
                        _reload_bridges(running, reread)
                    continue
                log.info("received %s, shutting down", signal.Signals(signum).name)
                running.serving = False  # /health/ready: 503 from now on
                await running.broker.shutdown(grace=SHUTDOWN_GRACE)
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def _reload_bridges(running: RunningBroker, reread: Callable[[], BrokerConfig]) -> None:
    """Bridges are added, changed and removed as the configuration file now says."""
    try:
        running.bridges.reload(reread().bridges)
    except ConfigError as exc:
        log.error("bridges not reloaded: %s", exc)
        return
    log.info("bridges reloaded: %s", ", ".join(running.bridges.bridges) or "none")


def _write_port_file(path: Path, running: RunningBroker) -> None:
    # Written whole, then renamed, so a reader never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lc.url + "\n" for lc in running.listeners))
    os.replace(tmp, path)

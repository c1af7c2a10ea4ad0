"""The ``polybroker`` command."""

import argparse
import getpass
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import trio

from . import __version__
from .auth import ScramCredential
from .config import BrokerConfig, ConfigError, default_listeners, load_config, parse_listen_url
from .server import RunningBroker, serve

log = logging.getLogger("polybroker")

SHUTDOWN_GRACE = 2.0  # seconds connections get to flush their last packets


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polybroker", description="Multi-protocol message broker."
    )
    parser.add_argument("--version", action="version", version=f"polybroker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the broker")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument(
        "--listen", action="append", metavar="URL",
        help="listen on URL, e.g. mqtt://127.0.0.1:1883 (repeatable; replaces configured "
             "listeners; port 0 picks a free port)",
    )
    run.add_argument("--data-dir", type=Path, help="directory for broker data (default ./data)")
    run.add_argument("--port-file", type=Path,
                     help="once listening, write each listener's URL (one a line) to this file")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    scram = commands.add_parser(
        "scram-password",
        help="print a SCRAM-SHA-256 credential line for [mqtt] scram_users_file; the "
             "password is read from standard input (prompted on a terminal)",
    )
    scram.add_argument("user")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "scram-password":
        return _scram_password(args.user)
    try:
        config = _config_from_args(args)
    except ConfigError as exc:
        print(f"polybroker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        trio.run(_serve_until_signal, config, args.port_file)
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


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


def _config_from_args(args: argparse.Namespace) -> BrokerConfig:
    config = load_config(args.config) if args.config else BrokerConfig()
    if args.listen:
        config = replace(config, listeners=tuple(parse_listen_url(u) for u in args.listen))
    elif not config.listeners:
        config = replace(config, listeners=default_listeners())
    if args.data_dir:
        config = replace(config, data_dir=args.data_dir)
    if args.log_level:
        config = replace(config, log_level=args.log_level)
    return config


async def _serve_until_signal(config: BrokerConfig, port_file: Path | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve, config)
            if port_file is not None:
                _write_port_file(port_file, running)
            log.info("polybroker %s ready", __version__)
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                await running.broker.shutdown(grace=SHUTDOWN_GRACE)
                nursery.cancel_scope.cancel()
                break
    log.info("stopped")


def _write_port_file(path: Path, running: RunningBroker) -> None:
    # Written whole, then renamed, so a reader never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lc.url + "\n" for lc in running.listeners))
    os.replace(tmp, path)

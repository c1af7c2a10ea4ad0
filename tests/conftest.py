from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from polybroker.auth.passwords import hash_password
from polybroker.broker import Broker
from polybroker.certs import DEFAULT_HOSTS, issue_client, issue_server, load_or_create_ca
from polybroker.config import AuthConfig, BrokerConfig, ListenerConfig, parse_listen_url

BrokerFactory = Callable[..., Broker]
ConfigFactory = Callable[..., BrokerConfig]


@pytest.fixture
def make_broker(nursery, tmp_path: Path) -> BrokerFactory:
    """Broker cores for this test, built from ``BrokerConfig`` fields given as keywords,
    with their timers running in the test's nursery and any data under ``tmp_path``."""

    def make(**fields: Any) -> Broker:
        fields.setdefault("data_dir", tmp_path / "data")
        broker = Broker(BrokerConfig(**fields))
        nursery.start_soon(broker.timers.run)
        return broker

    return make


@pytest.fixture
def broker(make_broker: BrokerFactory) -> Broker:
    """A broker core with the default configuration (connections are added per test)."""
    return make_broker()


@pytest.fixture
def serve_config(tmp_path: Path) -> ConfigFactory:
    """Configurations for ``open_broker`` on real sockets: the listeners given as URLs
    (or ``ListenerConfig``), other ``BrokerConfig`` fields as keywords, the store in
    ``tmp_path`` rather than the working directory's ``./data``."""

    def config(*listeners: str | ListenerConfig, **fields: Any) -> BrokerConfig:
        fields.setdefault("data_dir", tmp_path / "data")
        parsed = tuple(parse_listen_url(lc) if isinstance(lc, str) else lc for lc in listeners)
        return BrokerConfig(listeners=parsed, **fields)

    return config


@pytest.fixture
def auth_config(tmp_path: Path) -> Callable[..., AuthConfig]:
    """``AuthConfig`` for this test: a password file holding ``users`` (name -> password,
    cheap hashes), an ACL file holding ``acl`` (None: no such file), no refusal delay
    unless ``auth`` sets one."""

    def config(users: dict[str, str] | None, acl: str | None, **auth: Any) -> AuthConfig:
        password_file = acl_file = None
        if users is not None:
            password_file = tmp_path / "passwords"
            password_file.write_text("".join(f"{user}:{hash_password(password, n=16, r=1)}\n"
                                             for user, password in users.items()))
        if acl is not None:
            acl_file = tmp_path / "acl"
            acl_file.write_text(acl)
        return AuthConfig(password_file=password_file, acl_file=acl_file,
                          **{"failure_delay": 0.0, **auth})

    return config


@pytest.fixture(autouse=True)
def no_store_in_the_working_directory() -> Iterator[None]:
    """Fail the test that leaves a store in ``./data`` (a ``BrokerConfig`` served without
    ``data_dir``): tests write only under ``tmp_path``."""
    stray = Path("data")
    existed = stray.exists()
    yield
    if not existed and stray.exists():
        pytest.fail(f"the test wrote {stray.resolve()}: give its BrokerConfig a data_dir "
                    "under tmp_path (the make_broker / serve_config fixtures do)")


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory) -> Path:
    """A development CA with a server certificate (localhost, 127.0.0.1, ::1) and two
    client certificates (CN=sensor-1, CN=sensor-2), as ``polybroker certs`` writes them."""
    directory = tmp_path_factory.mktemp("certs")
    ca, _ = load_or_create_ca(directory)
    issue_server(ca, directory, DEFAULT_HOSTS)
    for name in ("sensor-1", "sensor-2"):
        issue_client(ca, directory, name)
    return directory

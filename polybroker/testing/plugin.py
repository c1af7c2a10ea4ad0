"""pytest fixtures for a running polybroker, loaded by pytest through the ``pytest11``
entry point (so importing polybroker never imports pytest).

- ``polybroker``: a broker on a background thread, for ordinary (synchronous) tests;
  fresh data directory per test.
- ``polybroker_session``: the same, one for the whole session.
- ``polybroker_trio``: a broker in the test's own trio loop (needs pytest-trio).
- ``polybroker_process``: the real ``polybroker serve`` command in a subprocess.

Each gives an ``Endpoints``: ``url("mqtt")``, ``mqtt_port``, ``stomp_port``,
``amqp_port``, ``ws_port``, ``capture(filter)`` (in trio tests
``await capture_async(filter)``). Mark a test
``@pytest.mark.polybroker(tls=True)`` for TLS listeners too (a generated CA in
``endpoints.ca_file``), ``persistence=False`` to keep everything in memory.
"""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypedDict

import pytest

from .endpoints import Endpoints
from .runners import SubprocessBroker, ThreadedBroker, open_test_broker


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "polybroker(tls=False, persistence=True): options of the polybroker "
                   "fixtures for this test")


class Options(TypedDict, total=False):
    """What ``@pytest.mark.polybroker(...)`` may set."""

    tls: bool
    persistence: bool


def _options(request: pytest.FixtureRequest) -> Options:
    marker = request.node.get_closest_marker("polybroker")
    given = marker.kwargs if marker is not None else {}
    unknown = set(given) - set(Options.__annotations__)
    if unknown:
        raise pytest.UsageError(f"polybroker marker: unknown options {sorted(unknown)}")
    options = Options()
    if "tls" in given:
        options["tls"] = bool(given["tls"])
    if "persistence" in given:
        options["persistence"] = bool(given["persistence"])
    return options


@pytest.fixture
def polybroker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Endpoints]:
    with ThreadedBroker(tmp_path / "polybroker" / "data", **_options(request)) as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def polybroker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    directory = tmp_path_factory.mktemp("polybroker")
    with ThreadedBroker(directory / "data") as endpoints:
        yield endpoints


@pytest.fixture
async def polybroker_trio(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Endpoints]:
    async with open_test_broker(tmp_path / "polybroker" / "data",
                                **_options(request)) as endpoints:
        yield endpoints


@pytest.fixture
def polybroker_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Endpoints]:
    broker = SubprocessBroker(tmp_path / "polybroker" / "data", **_options(request))
    try:
        yield broker.start()
    finally:
        status = broker.stop()
    if status != 0:
        pytest.fail(f"polybroker exited with status {status}:\n" + "\n".join(broker.lines))

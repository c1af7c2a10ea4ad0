from pathlib import Path

import pytest

from polybroker.broker import Broker
from polybroker.certs import DEFAULT_HOSTS, issue_client, issue_server, load_or_create_ca
from polybroker.config import BrokerConfig, Limits


@pytest.fixture
async def broker(nursery) -> Broker:
    """A broker core with its timers running (connections are added per test)."""
    broker = Broker(BrokerConfig(limits=Limits(connect_timeout=10)))
    nursery.start_soon(broker.timers.run)
    return broker


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

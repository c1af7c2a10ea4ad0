import pytest

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits


@pytest.fixture
async def broker(nursery) -> Broker:
    """A broker core with its timers running (connections are added per test)."""
    broker = Broker(BrokerConfig(limits=Limits(connect_timeout=10)))
    nursery.start_soon(broker.timers.run)
    return broker

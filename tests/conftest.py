import pytest

from polybroker.broker import Broker
from polybroker.config import BrokerConfig, Limits


@pytest.fixture
def broker() -> Broker:
    return Broker(BrokerConfig(limits=Limits(connect_timeout=10)))

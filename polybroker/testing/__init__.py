"""Brokers for tests: in the test's trio loop, in a background thread, or as a
subprocess, each on free loopback ports with a fresh data directory.

The pytest fixtures that use these (``polybroker``, ``polybroker_session``,
``polybroker_trio``, ``polybroker_process``) come with the package: pytest loads
``polybroker.testing.plugin`` through its ``pytest11`` entry point. Nothing here
imports pytest.
"""

from .capture import Capture, Captured
from .endpoints import Endpoints, broker_config, make_certs
from .runners import SubprocessBroker, ThreadedBroker, open_test_broker

__all__ = [
    "Capture",
    "Captured",
    "Endpoints",
    "SubprocessBroker",
    "ThreadedBroker",
    "broker_config",
    "make_certs",
    "open_test_broker",
]

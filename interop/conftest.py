import shutil

import pytest

from .brokerproc import BrokerProcess


@pytest.fixture
def broker(tmp_path):
    proc = BrokerProcess(tmp_path / "data")
    try:
        yield proc
    finally:
        proc.stop()


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `sh interop/install-tools.sh`")
    return path

"""A real Celery 5.7 worker (``--pool=solo``) and client against ``polybroker serve``:
task results over the rpc:// backend, a countdown task (held unacknowledged with the
prefetch raised meanwhile), a retried task, and remote control (``control.ping``).

One broker and one worker serve the whole module; every wait is bounded (result
``get(timeout=...)``, the worker's "ready" line).
"""

import os
import sys
import time

import pytest

from . import amqp_celery_app
from .amqp_support import broker_url, start_broker
from .clients import WAIT, OutputProcess

WORKER_NAME = "interop@localhost"


@pytest.fixture(scope="module")
def celery_broker(tmp_path_factory):
    proc = start_broker(tmp_path_factory.mktemp("celery") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def app(celery_broker):
    url = broker_url(celery_broker.amqp_port)
    worker = OutputProcess(
        [sys.executable, "-m", "celery", "-A", "interop.amqp_celery_app", "worker",
         "--pool=solo", "--loglevel=INFO", "-n", WORKER_NAME],
        env={**os.environ, "AMQP_TEST_BROKER_URL": url},
    )
    try:
        worker.wait_for_line(r"ready\.", timeout=30)
        amqp_celery_app.app.conf.broker_url = url
        yield amqp_celery_app.app
    finally:
        amqp_celery_app.app.close()
        worker.close()


def test_task_result(app):
    assert amqp_celery_app.add.delay(2, 3).get(timeout=WAIT) == 5


def test_countdown_task(app):
    started = time.monotonic()
    result = amqp_celery_app.add.apply_async((20, 22), countdown=1)
    assert result.get(timeout=WAIT) == 42
    assert time.monotonic() - started >= 1.0


def test_retried_task(app):
    result = amqp_celery_app.flaky.delay(2)
    assert result.get(timeout=WAIT) == 2


def test_control_ping(app):
    replies = app.control.ping(destination=[WORKER_NAME], timeout=WAIT, limit=1)
    assert {"ok": "pong"} in [reply.get(WORKER_NAME) for reply in replies], replies


def test_many_tasks(app):
    results = [amqp_celery_app.add.delay(n, n) for n in range(20)]
    assert [result.get(timeout=WAIT) for result in results] == [2 * n for n in range(20)]

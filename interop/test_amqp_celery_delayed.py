"""A real Celery worker with tasks routed through an ``x-delayed-message`` exchange
(``amqp_celery_delayed_app``): a task sent with ``countdown`` is held by the broker and
reaches the worker only when due, then runs at once.

Bounded waits only: the worker's "ready" and "received" log lines, ``result.get``.
"""

import os
import sys
import time

import pytest

from . import amqp_celery_delayed_app as delayed_app
from .amqp_support import broker_url, start_broker
from .clients import WAIT, OutputProcess

COUNTDOWN = 2.0
TOLERANCE = 1.5  # seconds the task may run after it is due (publish, worker, result)


@pytest.fixture
def app(tmp_path):
    broker = start_broker(tmp_path / "data")
    url = broker_url(broker.amqp_port)
    worker = OutputProcess(
        [sys.executable, "-m", "celery", "-A", "interop.amqp_celery_delayed_app", "worker",
         "--pool=solo", "--loglevel=INFO", "-n", "delayed@localhost"],
        env={**os.environ, "AMQP_TEST_BROKER_URL": url},
    )
    try:
        worker.wait_for_line(r"ready\.", timeout=30)
        delayed_app.app.conf.broker_url = url
        yield delayed_app.app, worker
    finally:
        delayed_app.app.close()
        worker.close()
        broker.stop()


def test_countdown_task_waits_in_the_broker_and_runs_when_due(app):
    _, worker = app
    sent = time.monotonic()
    result = delayed_app.stamp.apply_async(("late",), countdown=COUNTDOWN)
    # Held by the broker: the worker does not even see it before it is due.
    with pytest.raises(AssertionError, match="no line matching"):
        worker.wait_for_line(r"Task .*stamp.* received",
                             timeout=sent + COUNTDOWN - 0.1 - time.monotonic())
    worker.wait_for_line(r"Task .*stamp.* received")
    assert result.get(timeout=WAIT) == "late"
    ran = time.monotonic() - sent
    assert COUNTDOWN <= ran <= COUNTDOWN + TOLERANCE
    assert delayed_app.stamp.delay("now").get(timeout=WAIT) == "now"

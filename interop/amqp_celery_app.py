"""The Celery app of the AMQP interop tests: the broker URL comes from the environment
(``AMQP_TEST_BROKER_URL``), results go back over ``rpc://`` (reply queues)."""

import os

from celery import Celery

app = Celery("amqp_interop", broker=os.environ.get("AMQP_TEST_BROKER_URL", "amqp://"),
             backend="rpc://")
app.conf.update(
    broker_connection_retry_on_startup=False,
    broker_connection_max_retries=0,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=0.5)
def flaky(self, succeed_after: int) -> int:
    """Fails (and is retried, republished with a countdown) until its ``succeed_after``-th
    retry; returns the number of retries it took."""
    if self.request.retries < succeed_after:
        raise self.retry(countdown=0.5)
    return self.request.retries

"""A Celery app whose tasks go through an ``x-delayed-message`` exchange, so that a task
with ``countdown`` or ``eta`` waits in the broker, not in the worker: the queue is bound
to the delayed exchange, and a ``before_task_publish`` handler turns the task's ETA into
the ``x-delay`` header (milliseconds). The broker URL comes from ``AMQP_TEST_BROKER_URL``.
"""

import os
from datetime import UTC, datetime

from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue

DELAYED = Exchange("celery-delayed", type="x-delayed-message",
                   arguments={"x-delayed-type": "direct"})
QUEUE = "delayed-tasks"

app = Celery("amqp_delayed_interop", broker=os.environ.get("AMQP_TEST_BROKER_URL", "amqp://"),
             backend="rpc://")
app.conf.update(
    broker_connection_retry_on_startup=False,
    broker_connection_max_retries=0,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    task_queues=[Queue(QUEUE, DELAYED, routing_key=QUEUE)],
    task_default_queue=QUEUE,
    task_default_exchange=DELAYED.name,
    task_default_exchange_type=DELAYED.type,
    task_default_routing_key=QUEUE,
)


@before_task_publish.connect
def delay_in_the_broker(headers: dict, **_: object) -> None:
    """The task's ETA (from ``countdown`` or ``eta``) as ``x-delay``, in milliseconds."""
    eta = headers.get("eta")
    if eta:
        due = datetime.fromisoformat(eta)
        if due.tzinfo is None:
            due = due.replace(tzinfo=UTC)
        left = (due - datetime.now(UTC)).total_seconds()
        headers["x-delay"] = max(0, round(left * 1000))


@app.task
def stamp(label: str) -> str:
    """Returns ``label``; the worker logs when it received the task."""
    return label

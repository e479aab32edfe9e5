"""A real Celery worker on the configured broker runs a task: Redis on CI, kombu's filesystem broker on a laptop.

No `task_always_eager` here: the message goes through the broker and comes back through a worker's consumer,
exactly as the relay's messages do in production.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from portal.celery import app
from tests.conftest import need_service

runs: list[str] = []
ran = threading.Event()


@app.task(name="tests.test_celery_worker.note_run", ignore_result=True)
def note_run(marker: str) -> None:
    runs.append(marker)
    ran.set()


@pytest.fixture
def private_queue() -> Iterator[str]:
    """A queue of this test's own, so neither stale messages left by other tests on the shared broker nor a
    `make run` worker consuming the same broker can take part. Removed afterwards."""
    broker_url = settings.CELERY_BROKER_URL
    if broker_url.startswith(("redis://", "rediss://")):
        need_service("Redis broker", broker_url, 6379)
    name = f"callbridge_test_{uuid.uuid4().hex}"
    # The worker narrows the app's queue selection to `name`; later workers in this process get it back.
    selection = app.amqp.queues._consume_from
    try:
        yield name
    finally:
        app.amqp.queues._consume_from = selection
        with app.connection_for_write() as connection:
            # Declared again on this channel so that deleting it also removes its binding from the broker.
            queue = app.amqp.queues[name].bind(connection.default_channel)
            queue.declare()
            queue.delete()


def test_a_real_worker_on_the_configured_broker_runs_a_task(private_queue: str):
    runs.clear()
    ran.clear()
    marker = uuid.uuid4().hex

    with start_worker(
        app, pool="solo", perform_ping_check=False, queues=[private_queue], shutdown_timeout=30
    ):
        note_run.apply_async(args=[marker], queue=private_queue)
        # A bound on the wait, not a timing assertion: the filesystem broker polls once a second.
        assert ran.wait(timeout=60), "the worker did not run the task"

    assert runs == [marker]

"""Delivery through a real Celery worker on a real broker, and webhooks that never wait on the broker."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest
import responses
from celery.contrib.testing.worker import start_worker
from django.db import connection
from responses.registries import OrderedRegistry

from calls.models import JobAttempt, OutboundJob
from portal.celery import app
from tests.conftest import need_service
from tests.inbox import pump

CRM_URL = "https://crm.example.test/hook"
pytestmark = pytest.mark.django_db(transaction=True)


def configured_broker_reachable() -> None:
    url = app.conf.broker_url
    if url.startswith("redis"):
        need_service("Redis broker", url, 6379)


def wait_until(predicate, timeout: float, step: float = 0.2, relay: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if relay:
            with contextlib.suppress(Exception):  # a broker that is down refuses the publish: try again later
                pump()
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def webhook(client, pbx, call_id: str):
    body = {
        "events": [
            {"call": call_id, "kind": "ringing", "seq": 1},
            {"call": call_id, "kind": "completed", "seq": 9},
        ]
    }
    started = time.monotonic()
    response = client.post(
        f"/hooks/fakepbx/{pbx.public_id}/events",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_X_TOKEN="pbx-token-123",
    )
    return response, time.monotonic() - started


def test_crm_failing_twice_then_answering_is_sent_after_three_attempts_by_a_real_worker(
    client, pbx, crm, extensions, settings
):
    configured_broker_reachable()
    settings.OUTBOX_TIME_SCALE = 0.02  # 10 s → 0.2 s, 30 s → 0.6 s
    with responses.RequestsMock(registry=OrderedRegistry, assert_all_requests_are_fired=True) as mock:
        mock.add(responses.POST, CRM_URL, status=500)
        mock.add(responses.POST, CRM_URL, status=500)
        mock.add(responses.POST, CRM_URL, status=200, body="ok")
        response, _ = webhook(client, pbx, "w1")
        assert response.status_code == 200
        job = OutboundJob.objects.get(crm_connection=crm)
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            assert wait_until(
                lambda: OutboundJob.objects.get(pk=job.pk).status == OutboundJob.SENT, timeout=60
            )
    job.refresh_from_db()
    assert job.attempts == 3
    assert list(JobAttempt.objects.filter(job=job).values_list("outcome", "status_code")) == [
        ("transient", 500),
        ("transient", 500),
        ("sent", 200),
    ]


# ---------------------------------------------------------------------------------------------------------
# A private Redis, stopped and frozen by its PID (never the shared one)
# ---------------------------------------------------------------------------------------------------------


# The private_redis fixture lives in tests/private_redis.py (tests/conftest.py registers it).


@contextlib.contextmanager
def broker(url: str) -> Iterator[None]:
    """Point the Celery app at another broker for the duration of a test."""
    saved = (app.conf.broker_url, app.conf.broker_transport_options)
    app.conf.broker_url = url
    app.conf.broker_transport_options = {
        "socket_timeout": 1,
        "socket_connect_timeout": 1,
        "visibility_timeout": 60,
    }
    app._pool = None
    app.amqp._producer_pool = None
    try:
        yield
    finally:
        if app._pool is not None:
            app._pool.force_close_all()
        app.conf.broker_url, app.conf.broker_transport_options = saved
        app._pool = None
        app.amqp._producer_pool = None


def all_sent(crm) -> bool:
    jobs = OutboundJob.objects.filter(crm_connection=crm)
    return jobs.exists() and not jobs.exclude(status=OutboundJob.SENT).exists()


def test_webhooks_never_wait_on_a_stopped_or_frozen_broker_and_nothing_is_lost(
    client, pbx, crm, extensions, private_redis
):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, CRM_URL, status=200, body="ok")
        with broker(private_redis.url):
            # The broker is stopped: webhooks are still stored and answered at once.
            private_redis.stop()
            for n in range(5):
                response, took = webhook(client, pbx, f"stopped-{n}")
                assert response.status_code == 200 and took < 1.0
            with contextlib.suppress(Exception):
                pump()  # the relay cannot publish; the claims are released, nothing is lost
            assert OutboundJob.objects.filter(status=OutboundJob.PENDING).count() == 5

            # The broker is back (without its data): everything goes out within a minute.
            private_redis.start()
            with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=5):
                assert wait_until(lambda: all_sent(crm), timeout=60)

            # The broker is frozen (SIGSTOP): webhooks still answer at once.
            private_redis.freeze()
            try:
                for n in range(5):
                    response, took = webhook(client, pbx, f"frozen-{n}")
                    assert response.status_code == 200 and took < 1.0
            finally:
                private_redis.thaw()
            connection.close()
            with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=5):
                assert wait_until(lambda: all_sent(crm), timeout=60)
    assert OutboundJob.objects.filter(crm_connection=crm, status=OutboundJob.SENT).count() == 10

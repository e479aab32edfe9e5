"""Shared fixtures. Services: tests marked `services` need PostgreSQL or Redis; without them they skip, and
under REQUIRE_SERVICES=1 (CI) they fail instead."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def need_service(name: str, url: str, default_port: int) -> None:
    """Skip (laptop) or fail (CI) when a service the test needs is unreachable."""
    if _reachable(url, default_port):
        return
    message = f"{name} unreachable at {url}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def client():
    """pytest-django's client, applying what webhooks store before returning (tests/inbox.py)."""
    from tests.inbox import ProcessingClient

    return ProcessingClient()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        call_command("createcachetable", verbosity=0)


@pytest.fixture(autouse=True)
def _clear_cache(settings):
    # The portal speaks Russian by default; the suite's assertions read the English source strings. Tests of
    # the Russian admin (tests/admin_i18n/) ask for it with a cookie or translation.override.
    settings.LANGUAGE_CODE = "en"
    from django.core.cache import cache

    from portal import fastcache

    with contextlib.suppress(Exception):
        cache.clear()
    fastcache.reset()  # a test that broke the cache must not leave the next one backing off
    from calls import routing

    routing._slots.clear()  # lookups a test left running must not hold the next test's tenant's share
    routing.forget_late_results()  # nor report into the next test's cache
    from portal import health

    health.forget()  # /readyz's memoised answer belongs to the test that asked
    yield


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    need_service("Redis", url, 6379)
    return url


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = "postgres://postgres@127.0.0.1:5432/test"
    need_service("PostgreSQL", url, 5432)
    return url


@pytest.fixture(scope="session", autouse=True)
def _worker_threads_close_their_connections():
    """A worker started by a test (`start_worker`) runs its tasks in a thread of this process, and a worker keeps
    its database connection from task to task (CELERY_DB_REUSE_MAX): that thread's connection would outlive it
    and keep the test database from being dropped. Here such a thread closes it after each task."""
    from celery import signals

    def close(**_: object) -> None:
        if threading.current_thread() is not threading.main_thread():
            from django.db import connections

            connections.close_all()

    signals.task_postrun.connect(close, weak=False, dispatch_uid="tests.worker-thread-connections")
    yield
    signals.task_postrun.disconnect(dispatch_uid="tests.worker-thread-connections")


@pytest.fixture(scope="session", autouse=True)
def _private_broker_folder():
    """A test run's filesystem broker folder is its own (see settings); remove it afterwards."""
    yield
    import shutil

    from django.conf import settings

    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in", "")
    if "broker-test-" in folder:
        shutil.rmtree(os.path.dirname(folder), ignore_errors=True)


@pytest.fixture
def listener():
    """A socket on 127.0.0.1 that never answers; `connections()` counts who reached it (SSRF tests)."""
    from tests.listener import Listener

    lst = Listener()
    yield lst
    lst.close()


# A private redis-server for the tests that break Redis (tests/private_redis.py).
from tests.private_redis import private_redis  # noqa: E402,F401

"""A Celery worker keeps its database connection between tasks (Celery's Django fixup would close it around
every task) and drops it by Django's own rule: past CONN_MAX_AGE, or after it failed."""

from __future__ import annotations

import time

import pytest
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection

from calls import tasks
from portal import celery as portal_celery

pytestmark = pytest.mark.django_db(transaction=True)  # no test transaction: closing must really close


def test_what_celery_does_around_each_task_keeps_the_connection():
    fixup = DjangoWorkerFixup(portal_celery.app)
    connection.ensure_connection()
    opened = connection.connection

    for _ in range(3):  # before and after each of three tasks
        fixup.on_task_prerun(sender=tasks.relay)
        fixup.on_task_postrun(sender=tasks.relay)

    assert connection.connection is opened


def test_a_connection_past_its_age_is_closed_around_a_task():
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1  # CONN_MAX_AGE ran out

    portal_celery._close_old_connections()

    assert connection.connection is None


def test_a_reused_connection_is_kept_while_it_is_young():
    connection.ensure_connection()
    opened = connection.connection
    connection.close_at = time.monotonic() + 60

    portal_celery._close_old_connections()

    assert connection.connection is opened


def test_a_task_run_in_the_callers_process_leaves_its_connection_alone():
    connection.ensure_connection()
    opened = connection.connection
    connection.close_at = time.monotonic() - 1  # would be closed around a worker's task

    tasks.relay.apply()  # eager: the caller's connection, perhaps inside its transaction

    assert connection.connection is opened

"""PostgreSQL timestamps are read with datetime.fromisoformat and give what Django's own loader gives."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from calls.models import OutboundJob

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL loader")


def select(sql: str) -> list:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchone())


def test_the_connection_reads_timestamptz_with_the_iso_loader():
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID
    from psycopg.pq import Format

    connection.ensure_connection()
    loader = connection.connection.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    assert loader.fromisoformat and loader.timezone == connection.timezone


def test_values_read_back_as_django_reads_them():
    values = select(
        "SELECT '2026-12-03 07:42:01.123456+00'::timestamptz, '2026-06-01 00:00:00+03'::timestamptz,"
        " '1900-01-01 00:00:00+00'::timestamptz, '0001-01-01 00:00:00+00'::timestamptz"
    )
    utc = dt.UTC
    assert values == [
        dt.datetime(2026, 12, 3, 7, 42, 1, 123456, tzinfo=utc),
        dt.datetime(2026, 5, 31, 21, 0, tzinfo=utc),
        dt.datetime(1900, 1, 1, tzinfo=utc),
        dt.datetime(1, 1, 1, tzinfo=utc),
    ]
    assert all(value.tzinfo is connection.timezone for value in values)


def test_what_fromisoformat_refuses_still_goes_to_djangos_loader():
    from django.db import DataError

    # psycopg's own message: Python has no infinite datetime
    with pytest.raises(DataError, match="after year 10K"):
        select("SELECT 'infinity'::timestamptz")


def test_a_model_round_trips_its_timestamps(settings):
    moment = timezone.now().replace(microsecond=654321)
    job = OutboundJob.objects.create(
        tenant=_tenant(),
        connection_ref="crm:0",
        kind="k",
        dedupe_key="d",
        payload={},
        due_at=moment,
        next_attempt_at=moment,
    )
    again = OutboundJob.objects.get(pk=job.pk)
    assert again.due_at == moment and again.next_attempt_at == moment and again.created_at == job.created_at


def _tenant():
    from tests.factories import TenantFactory

    return TenantFactory()

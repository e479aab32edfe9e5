"""Liveness and readiness: readiness follows the database only; broker and cache are reported, not required."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import need_service
from tests.isolated import refused_port, run_django

ASK_READYZ = """
import json
from django.test import Client
response = Client().get("/readyz")
print(json.dumps({"status_code": response.status_code, "body": response.json()}))
"""


def test_healthz_answers_while_the_process_is_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_cache_and_broker(client):
    if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        need_service("Redis broker", settings.CELERY_BROKER_URL, 6379)
    if settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        need_service("Redis cache", settings.CACHES["default"]["LOCATION"], 6379)

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "inbox_oldest_pending_seconds": 0.0,
        "cache": "ok",
        "broker": "ok",
        "broker_url_scheme": settings.CELERY_BROKER_URL.split("://", 1)[0],
    }


def test_readyz_stays_ready_when_broker_and_cache_are_unreachable(tmp_path: Path):
    # Webhooks are stored in the database and answered without the broker, so the portal stays in rotation.
    with refused_port() as port:
        result = run_django(
            ASK_READYZ,
            tmp_path,
            DJANGO_SETTINGS_MODULE="portal.settings_test",
            CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
            CACHE_URL=f"redis://127.0.0.1:{port}/1",
        )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    # The inbox's age is a database read: the cache and the broker do not decide it (a number, or None in this
    # child's database without tables).
    age = answer["body"].pop("inbox_oldest_pending_seconds")
    assert age is None or age >= 0
    assert answer == {
        "status_code": 200,
        "body": {
            "status": "ok",
            "database": "ok",
            "cache": "error",
            "broker": "error",
            "broker_url_scheme": "redis",
        },
    }
    assert "readiness: broker unreachable" in result.stderr


def test_readyz_answers_503_when_the_database_is_unreachable(tmp_path: Path):
    with refused_port() as port:
        result = run_django(
            ASK_READYZ,
            tmp_path,
            DJANGO_SETTINGS_MODULE="portal.settings_test",
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/callbridge",
        )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["status_code"] == 503
    assert answer["body"]["status"] == "error"
    assert answer["body"]["database"] == "error"

"""Liveness and readiness probes.

Readiness depends on the database only: webhooks are stored in the database and answered without the broker,
so a broker or cache outage is reported in the body but does not take the portal out of rotation.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("readiness: database unreachable: %s", exc)
        return "error"
    return "ok"


def _check_cache() -> str:
    try:
        cache.set("readyz-probe", "1", 5)
        return "ok" if cache.get("readyz-probe") == "1" else "error"
    except Exception as exc:
        logger.warning("readiness: cache unreachable: %s", exc)
        return "error"


def _check_broker() -> str:
    from portal.celery import app

    try:
        with app.connection_for_write() as conn:
            # One attempt, bounded: a probe that retries would make the load balancer's check time out instead
            # of reporting the broker's state.
            conn.ensure_connection(max_retries=0, timeout=2)
    except Exception as exc:
        logger.warning("readiness: broker unreachable: %s", exc)
        return "error"
    return "ok"


def _inbox_oldest_pending_seconds() -> float | None:
    """How long the oldest stored event has waited for the inbox processor (one index lookup); None when the
    database cannot say. Informational: a lagging processor does not take the web server out of rotation."""
    from calls.processor import oldest_pending_seconds

    try:
        return round(oldest_pending_seconds(), 3)
    except Exception as exc:
        logger.warning("readiness: inbox age unknown: %s", exc)
        return None


def readyz(request: HttpRequest) -> JsonResponse:
    database = _check_database()
    body = {
        "status": "ok" if database == "ok" else "error",
        "database": database,
        "inbox_oldest_pending_seconds": _inbox_oldest_pending_seconds() if database == "ok" else None,
        "cache": _check_cache(),
        "broker": _check_broker(),
        "broker_url_scheme": settings.CELERY_BROKER_URL.split("://", 1)[0],
    }
    return JsonResponse(body, status=200 if database == "ok" else 503)

"""Liveness and readiness probes.

Readiness depends on the database only: webhooks are stored in the database and answered without the broker,
so a broker or cache outage is reported in the body but does not take the portal out of rotation.

`/readyz` answers within READYZ_WAIT_SECONDS (well under 200 ms) whatever Redis does: each service is checked in
a small thread pool and reported `ok`, `error`, or `timeout` when its check has not finished in time; a check
still running from an earlier probe is waited for, never started twice, so a frozen service costs one thread per
check. The result is memoised for MEMO_SECONDS per process, so a flood of probes costs at most one round of
checks per second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from portal import fastcache

logger = logging.getLogger(__name__)

READYZ_WAIT_SECONDS = 0.15
MEMO_SECONDS = 1.0
BROKER_CHECK_SECONDS = 2.0

_executor = ThreadPoolExecutor(max_workers=3, thread_name_prefix="readyz")
_lock = threading.Lock()
_running: dict[str, Future[str]] = {}
_memo: tuple[float, dict[str, Any]] | None = None


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
    finally:
        connection.close()  # a probe thread keeps no connection between checks
    return "ok"


def _check_cache() -> str:
    cache = fastcache.request_cache()
    try:
        cache.set("readyz-probe", "1", 5)
        return "ok" if cache.get("readyz-probe") == "1" else "error"
    except Exception as exc:
        logger.warning("readiness: cache unreachable: %s", exc)
        return "timeout" if "timeout" in f"{type(exc).__name__} {exc}".lower() else "error"


def _check_broker() -> str:
    from portal.celery import app

    try:
        with app.connection_for_write() as conn:
            # One attempt, bounded: a probe that retries would make the load balancer's check time out instead
            # of reporting the broker's state.
            conn.ensure_connection(max_retries=0, timeout=BROKER_CHECK_SECONDS)
    except Exception as exc:
        logger.warning("readiness: broker unreachable: %s", exc)
        return "error"
    return "ok"


CHECKS: dict[str, Callable[[], str]] = {
    "database": _check_database,
    "cache": _check_cache,
    "broker": _check_broker,
}


def _inline(name: str) -> bool:
    """The database cache cannot hang on Redis, and a thread of its own would wait on the request's database
    lock (SQLite): it is checked in the request, like the database it lives in."""
    return name == "cache" and fastcache.request_cache().__class__.__name__ == "DatabaseCache"


def _started(name: str) -> Future[str]:
    with _lock:
        future = _running.get(name)
        if future is None or future.done():
            future = _running[name] = _executor.submit(CHECKS[name])
        return future


def check_services(wait: float = READYZ_WAIT_SECONDS) -> dict[str, str]:
    """Each service's state (`ok`, `error` or `timeout`), within `wait` seconds in all."""
    futures = {name: _started(name) for name in CHECKS if not _inline(name)}
    deadline = time.monotonic() + wait
    states = {name: CHECKS[name]() for name in CHECKS if _inline(name)}
    for name, future in futures.items():
        try:
            states[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            states[name] = "timeout"
        except Exception as exc:  # a check that crashed
            logger.warning("readiness: %s check failed: %s", name, exc)
            states[name] = "error"
    return {name: states[name] for name in CHECKS}


def _inbox_oldest_pending_seconds() -> float | None:
    """How long the oldest stored event has waited for the inbox processor (one index lookup); None when the
    database cannot say. Informational: a lagging processor does not take the web server out of rotation."""
    from calls.processor import oldest_pending_seconds

    try:
        return round(oldest_pending_seconds(), 3)
    except Exception as exc:
        logger.warning("readiness: inbox age unknown: %s", exc)
        return None


def readiness() -> dict[str, Any]:
    """The /readyz body, memoised for MEMO_SECONDS in this process."""
    global _memo
    now = time.monotonic()
    memo = _memo
    if memo is not None and now - memo[0] < MEMO_SECONDS:
        return memo[1]
    states = check_services()
    database = states["database"]
    body = {
        "status": "ok" if database == "ok" else "error",
        "database": database,
        "inbox_oldest_pending_seconds": _inbox_oldest_pending_seconds() if database == "ok" else None,
        "cache": states["cache"],
        "broker": states["broker"],
        "broker_url_scheme": settings.CELERY_BROKER_URL.split("://", 1)[0],
    }
    _memo = (now, body)
    return body


def readyz(request: HttpRequest) -> JsonResponse:
    body = readiness()
    return JsonResponse(body, status=200 if body["database"] == "ok" else 503)


def forget() -> None:
    """Drop the memoised result (tests)."""
    global _memo
    _memo = None

"""The cache on request paths: never a long wait, always a fallback.

Webhooks, routing answers, probes and /records use the `request` cache alias (the same cache as `default`, with
REQUEST_CACHE_TIMEOUT_SECONDS socket timeouts on Redis) through `guarded()`: an error or a timeout returns the
caller's fallback with one log line, and the process then leaves the cache alone for BACKOFF_SECONDS, so a frozen
Redis costs one short wait per process rather than one per request. Background work (workers, beat) keeps the
`default` alias and its longer timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache import caches

logger = logging.getLogger("callbridge.cache")

BACKOFF_SECONDS = 30.0
T = TypeVar("T")

_lock = threading.Lock()
_down_until = 0.0


def request_cache() -> Any:
    return caches["request"]


def available() -> bool:
    """False while this process is backing off after a cache failure."""
    return time.monotonic() >= _down_until


def guarded(operation: Callable[[Any], T], fallback: T, what: str) -> T:
    """`operation(cache)` on the request cache, or `fallback` when the cache fails, is slow or is backed off."""
    global _down_until
    if not available():
        return fallback
    try:
        return operation(request_cache())
    except Exception as exc:  # any backend's connection, timeout or protocol error
        with _lock:
            _down_until = time.monotonic() + BACKOFF_SECONDS
        logger.warning("cache unavailable (%s); falling back for %.0f s: %s", what, BACKOFF_SECONDS, exc)
        return fallback


def reset() -> None:
    """Forget a back-off (tests; a probe that found the cache healthy again)."""
    global _down_until
    with _lock:
        _down_until = 0.0

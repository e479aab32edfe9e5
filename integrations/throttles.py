"""Fixed-window counters on the shared cache, and the client address they count.

Used by the recording-link throttle (RECORDS_THROTTLE) and the webhook authentication-failure throttle
(WEBHOOK_AUTH_FAILURE_THROTTLE). The click-to-call throttle counts in the database instead (calls/click_to_call).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from integrations.rates import parse_rate
from portal import fastcache

logger = logging.getLogger("callbridge.throttles")


def client_address(request: HttpRequest) -> str:
    """The address the throttles count and the audit log shows. Behind a reverse proxy REMOTE_ADDR is the
    proxy's, which would put every client in one bucket; so when REMOTE_ADDR lies in the optional
    TRUSTED_PROXY_NETWORKS, X-Forwarded-For is read from the right, skipping trusted hops (the left part is
    whatever the client chose to send)."""
    remote = request.META.get("REMOTE_ADDR", "") or ""
    trusted = getattr(settings, "TRUSTED_PROXY_NETWORKS", None) or ()
    if not trusted or not in_networks(remote, trusted):
        return remote
    address = remote
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        hop = hop.strip()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # a forged or broken entry: keep the last hop a trusted proxy vouched for
        address = hop
        if not in_networks(hop, trusted):
            break
    return address


def in_networks(address: str, networks: Iterable[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(
        ip.version == ipaddress.ip_network(n).version and ip in ipaddress.ip_network(n) for n in networks
    )


def hit(name: str, rate: str, now: float) -> tuple[int, int]:
    """Count one event in `name`'s current window of `rate`: (count so far, seconds until the window ends).

    A fixed window whose number is part of the key: the count resets when the window ends whatever the cache
    backend does to expiry times (the database cache's incr() rewrites the entry with the default timeout, so
    a key-per-name counter would never reset for a steady client, or reset early for a long period).
    """
    _limit, seconds = parse_rate(rate)
    window = int(now // seconds)
    retry_after = max(1, int((window + 1) * seconds - now))
    key = f"{name}:{window}"
    cache = fastcache.request_cache()
    if cache.add(key, 1, seconds + 1):
        return 1, retry_after
    try:
        current = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, seconds + 1)
        return 1, retry_after
    cache.touch(key, seconds + 1)
    return current, retry_after


def peek(name: str, rate: str, now: float) -> tuple[int, int]:
    """The current window's count without adding to it, and the seconds until the window ends."""
    _limit, seconds = parse_rate(rate)
    window = int(now // seconds)
    count = fastcache.request_cache().get(f"{name}:{window}")
    return int(count or 0), max(1, int((window + 1) * seconds - now))


def fail_open(operation: Any, default: Any) -> Any:
    """Run a cache operation for a throttle that must not turn a cache outage into refused requests: on the
    request cache's short timeout, with a log line and the default when the cache fails (portal/fastcache.py)."""
    return fastcache.guarded(lambda _cache: operation(), default, "throttle, not throttling")

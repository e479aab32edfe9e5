"""What tenant staff may see of an outbound failure.

Issue 15's rule: error bodies from private targets are not shown to tenant staff. A connection may reach a private
address only because an operator allowed it (OUTBOUND_ALLOWED_NETWORKS, a connection's `allowed_networks`,
OUTBOUND_ALLOW_PRIVATE_NETWORKS); what such a host answers (an intranet error page, a stack trace) describes the
operator's network, not the tenant's integration. `shown_error()` is the one place that applies the rule, for the
read API's `deliveries.last_error` and any page that shows a job's error to tenant staff.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache

HIDDEN = "details hidden: the target is on a private network"
RESOLVE_CACHE_SECONDS = 600


def _host_is_private(host: str) -> bool:
    host = host.strip("[]").lower()
    if not host:
        return False
    try:
        return not ipaddress.ip_address(host.split("%", 1)[0]).is_global
    except ValueError:
        pass
    cache_key = f"exposure:private-host:{host}"
    known = cache.get(cache_key)
    if known is not None:
        return bool(known)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
        private = any(not ipaddress.ip_address(a.split("%", 1)[0]).is_global for a in addresses)
    except (OSError, UnicodeError, ValueError):
        # Nothing answered from a name the portal cannot resolve: its error says only that much.
        private = False
    cache.set(cache_key, private, RESOLVE_CACHE_SECONDS)
    return private


def connection_urls(connection: Any) -> list[str]:
    """Every URL-valued setting or secret of a connection (the hosts its outbound requests go to)."""
    provider_cls = connection.provider_cls
    values = {**(connection.settings or {}), **(connection.secrets or {})}
    fields = (*provider_cls.settings_fields, *provider_cls.secret_fields)
    return [values[f.name] for f in fields if f.kind == "url" and isinstance(values.get(f.name), str)]


def targets_private_network(connection: Any) -> bool:
    if connection is None:
        return False
    if getattr(connection, "allowed_networks", None):
        return True  # issue 15's per-connection allowance exists only for private targets
    if not (settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS or settings.OUTBOUND_ALLOWED_NETWORKS):
        # The SSRF guard let no request reach a private address, so nothing a private host said was stored:
        # no name needs resolving.
        return False
    try:
        urls = connection_urls(connection)
    except LookupError:
        return False
    return any(_host_is_private(urlsplit(url).hostname or "") for url in urls)


def shown_error(connection: Any, message: str, status: int | None = None) -> str:
    """A job's last error as tenant staff may see it: as stored, or only its HTTP status for private targets."""
    if not message or not targets_private_network(connection):
        return message
    return f"HTTP {status} ({HIDDEN})" if status else HIDDEN

"""`Authorization: Bearer <key>` with tenant API keys, and the per-key throttle."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.throttling import SimpleRateThrottle

from api.models import LAST_USED_RESOLUTION_SECONDS, ApiKey, hash_key
from integrations.models import Tenant
from portal import fastcache, logs

logger = logging.getLogger("callbridge.api")


@dataclass(frozen=True)
class KeyHolder:
    """request.user of an API request: whoever holds the key, acting for its tenant alone."""

    key: ApiKey

    @property
    def tenant(self) -> Tenant:
        return self.key.tenant

    @property
    def is_authenticated(self) -> bool:
        return True

    def __str__(self) -> str:
        return f"api key {self.key.tenant.slug}/{self.key.name}"


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[KeyHolder, ApiKey] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization: Bearer <key>, one key, no spaces.")
        try:
            key = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        row = (
            ApiKey.objects.active()
            .select_related("tenant")
            .filter(key_hash=hash_key(key), tenant__active=True)
            .first()
        )
        # The lookup is by hash (an index); comparing the hashes again in constant time costs nothing.
        if row is None or not row.matches(key):
            logger.info("api: refused an unknown or revoked key")
            raise exceptions.AuthenticationFailed("Invalid API key.")
        self._touch(row)
        logs.bind(tenant=row.tenant_id)
        return KeyHolder(row), row

    @staticmethod
    def _touch(row: ApiKey) -> None:
        now = timezone.now()
        if row.last_used_at is None or now - row.last_used_at > dt.timedelta(
            seconds=LAST_USED_RESOLUTION_SECONDS
        ):
            ApiKey.objects.filter(pk=row.pk).update(last_used_at=now)

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="api"'


class ApiKeyThrottle(SimpleRateThrottle):
    """API_THROTTLE requests per key (default 600/min), counted in the shared cache like every throttle: on the
    request cache's short timeout, failing open with a log line when the cache does not answer."""

    scope = "api"

    @property
    def cache(self) -> Any:  # type: ignore[override]
        return fastcache.request_cache()

    def allow_request(self, request: Any, view: Any) -> bool:
        parent = super().allow_request
        return fastcache.guarded(lambda _cache: parent(request, view), True, "API throttle, not throttling")

    def get_rate(self) -> str:
        return settings.API_THROTTLE

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        key = getattr(request, "auth", None)
        if not isinstance(key, ApiKey):
            return None  # unauthenticated requests are refused before the throttle matters
        return self.cache_format % {"scope": self.scope, "ident": key.pk}

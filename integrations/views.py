"""Inbound endpoints: /hooks/<provider>/<public_id>/<action>.

One DRF view serves every provider. It resolves the connection by its public id, lets the provider's own
authentication verify the raw body in constant time before anything parses it, uses the provider's parsers
and renderers, and answers errors in the provider's own format and status.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import connection as db_connection
from django.http import Http404, HttpRequest
from rest_framework.exceptions import ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations.inbound_guard import body_problem
from integrations.models import CrmConnection, PbxConnection, Tenant
from integrations.providers.base import (
    PBX,
    REGISTRY,
    SIDES,
    WebhookAuthError,
    WebhookInputError,
    provider_class,
)
from integrations.throttles import client_address, fail_open, hit
from portal import logs

logger = logging.getLogger("callbridge.hooks")


def _now() -> float:
    return time.time()


# Connections resolved by earlier requests of this process: (model, provider, public id) → (a digest of the
# connection's and its tenant's rows, the instance). Every request still asks the database (one plain SELECT of
# that digest: no ORM query building, no decryption, one short value to read): an unchanged digest reuses the
# instance, any change in the connection or its tenant (settings, secrets, active) loads it again. Instances are
# only read by the webhook path.
_RESOLVED: dict[tuple[type, str, str], tuple[tuple[Any, ...], Any]] = {}
_RESOLVED_LIMIT = 2000


def active_connection(model: type[PbxConnection | CrmConnection], key: str, public_id: str) -> Any:
    """The active connection of an active tenant behind an inbound URL, or None."""
    digest = (
        "md5(CAST(c.* AS text) || CAST(t.* AS text))" if db_connection.vendor == "postgresql" else "c.*, t.*"
    )
    sql = (
        f"SELECT {digest} FROM {model._meta.db_table} c JOIN {Tenant._meta.db_table} t ON t.id = c.tenant_id"  # noqa: S608 - table names are ours, values parameters
        " WHERE c.provider = %s AND c.public_id = %s AND c.active AND t.active"
    )
    with db_connection.cursor() as cursor:
        cursor.execute(sql, [key, public_id])
        row = cursor.fetchone()
    if row is None:
        return None
    row = tuple(row)
    cache_key = (model, key, public_id)
    cached = _RESOLVED.get(cache_key)
    if cached is not None and cached[0] == row:
        return cached[1]
    instance = model.objects.select_related("tenant").filter(provider=key, public_id=public_id).first()
    if instance is not None:
        if len(_RESOLVED) >= _RESOLVED_LIMIT:
            _RESOLVED.clear()
        _RESOLVED[cache_key] = (row, instance)
    return instance


class HookView(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    throttle_classes: list[Any] = []

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        key = kwargs["provider"]
        if key not in REGISTRY:
            raise Http404("unknown provider")
        model = PbxConnection if SIDES[key] == PBX else CrmConnection
        self.action_name = kwargs.get("action", "") or ""
        self.connection = active_connection(model, key, kwargs["public_id"])
        self.adapter = provider_class(key)(self.connection)
        logs.bind_connection(self.connection)  # every line of this request names the tenant and connection
        return super().initialize_request(request, *args, **kwargs)

    def get_parsers(self) -> list[Any]:
        return [cls() for cls in self.adapter.parser_classes(self.action_name)]

    def get_renderers(self) -> list[Any]:
        return [cls() for cls in self.adapter.renderer_classes(self.action_name)]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # Providers answer in their own format whatever Accept says; an odd Accept must not become a 500.
        return super().perform_content_negotiation(request, force=True)

    def get_exception_handler(self) -> Any:
        return self._handle_provider_exception

    def _error(self, status: int, message: str) -> Response:
        return Response(self.adapter.error_body(status, message), status=status)

    def _handle_provider_exception(self, exc: Exception, context: dict[str, Any]) -> Response | None:
        where = (
            f"{self.adapter.key}/{self.connection.public_id if self.connection else '?'}/{self.action_name}"
        )
        if isinstance(exc, _NotFound):
            logger.warning("hook %s: unknown or inactive connection", self.adapter.key)
            return self._error(404, "Not found")
        if isinstance(exc, _TooLarge):
            logger.warning("hook %s: body over %s bytes refused", where, settings.WEBHOOK_MAX_BODY_BYTES)
            return self._error(413, "Request body too large")
        if isinstance(exc, WebhookAuthError):
            logger.warning("hook %s: authentication failed: %s", where, exc)
            limited = self._auth_failures_over_limit()
            if limited is not None:
                response = self._error(429, "Too many failed authentication attempts; try again later")
                response["Retry-After"] = str(limited)
                return response
            return self._error(self.adapter.auth_failure_status, str(exc) or "Invalid token")
        if isinstance(exc, RecursionError):
            # A nesting the guard did not see (a parser of its own): still bad input, never a 500.
            exc = WebhookInputError("Body nested too deeply")
        if isinstance(exc, WebhookInputError | ParseError):
            logger.warning("hook %s: bad input: %s", where, exc)
            own = self.adapter.bad_input_response(self.action_name, str(exc))
            return own if own is not None else self._error(400, str(exc) or "Invalid parameters")
        return None

    def _auth_failures_over_limit(self) -> int | None:
        """Count this authentication failure against the client address (WEBHOOK_AUTH_FAILURE_THROTTLE);
        past the limit, the seconds until the window ends. Only failures count and only failures are refused:
        a PBX's sending address is shared by all its tenants, so one tenant's wrong key must not cost another
        tenant's authenticated calls. A cache outage lets failures through unthrottled (fail open)."""
        address = client_address(self.request._request)
        rate = settings.WEBHOOK_AUTH_FAILURE_THROTTLE
        count, retry_after = fail_open(lambda: hit(f"hooks:authfail:{address}", rate, _now()), (0, 0))
        if count <= int(rate.split("/")[0]):
            return None
        logger.warning("hook %s: authentication failures from %s over %s", self.adapter.key, address, rate)
        return retry_after

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if self.connection is None:
            raise _NotFound()
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > settings.WEBHOOK_MAX_BODY_BYTES:
            raise _TooLarge()
        if len(request._request.body) > settings.WEBHOOK_MAX_BODY_BYTES:
            raise _TooLarge()
        if not self.adapter.allows_unauthenticated(self.action_name):
            self.adapter.authenticate(request._request, self.action_name)
        problem = body_problem(request._request.body, request.content_type or "")
        if problem:
            raise WebhookInputError(problem)

    def _dispatch_to_provider(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.adapter.handle(request, self.action_name)

    get = post = put = _dispatch_to_provider

    def head(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self._dispatch_to_provider(request, *args, **kwargs)


class _NotFound(Exception):
    pass


class _TooLarge(Exception):
    pass

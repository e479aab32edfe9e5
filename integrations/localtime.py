"""Local times for a tenant's staff.

Every time the admin shows is in the tenant's own zone. A user whose tenants share one zone (most users: one
tenant) gets that zone activated for the whole request, so Django renders every date in it. A superuser, or a
user of tenants in several zones, keeps UTC as the request's zone, and rows of calls show their own tenant's
local time with the zone named (`tenant_time`).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import formats, timezone

from integrations.models import Tenant

_ZONE_ATTR = "_callbridge_request_zone"


def request_zone(request: HttpRequest) -> zoneinfo.ZoneInfo | None:
    """The one zone of every tenant the user sees, or None (superusers, tenants in several zones, no tenant)."""
    if hasattr(request, _ZONE_ATTR):
        return getattr(request, _ZONE_ATTR)
    from integrations.admin_scoping import readable_tenant_ids

    zone = None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff and not user.is_superuser:
        ids = readable_tenant_ids(request)
        zones = set(Tenant.objects.filter(pk__in=ids).values_list("time_zone", flat=True).distinct()[:2])
        if len(zones) == 1:
            zone = zone_named(zones.pop())
    setattr(request, _ZONE_ATTR, zone)
    return zone


def zone_named(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


class TenantTimeZoneMiddleware:
    """Activates the user's tenant zone for admin pages (after AuthenticationMiddleware)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(("/admin/", "/i18n/")):
            return self.get_response(request)
        zone = request_zone(request)
        if zone is None:
            return self.get_response(request)
        with timezone.override(zone):
            return self.get_response(request)


def tenant_time(moment: dt.datetime | None, tenant: Any, *, seconds: bool = False) -> str:
    """A moment as the tenant's staff read it: in the tenant's zone; the zone is named when the request's
    active zone is another one (a user of several tenants reads each row in its own tenant's time)."""
    if moment is None:
        return "—"
    zone = zone_named(getattr(tenant, "time_zone", "") or "") or timezone.get_current_timezone()
    local = moment.astimezone(zone)
    text = formats.date_format(local, "Y-m-d H:i:s" if seconds else "Y-m-d H:i")
    if str(zone) != str(timezone.get_current_timezone()):
        text += f" ({zone})"
    return text

"""The click-to-call guard: which make-call requests reach the PBX.

A CRM's click-to-call endpoint is authenticated by a static token (RetailCRM's travels in the query string), so
whoever holds it could dial any number on the tenant's PBX at the tenant's expense. Before the PBX is asked,
every request passes three checks, for every CRM alike:

- the destination is in the tenant's click-to-call regions (default: the tenant's region);
- it is not a premium-rate or shared-cost number (libphonenumber's number types), whatever the regions;
- the CRM connection placed fewer than CLICK_TO_CALL_THROTTLE requests in the window.

The throttle counts OriginateRequest rows in the database under a row lock, not a cache counter: a cache that is
down or cleared must not lift the limit (it fails closed), and concurrent requests cannot all see room left.
A refusal is stored as an OriginateRequest with status `refused` and its reason, so the admin shows it.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from calls.models import OriginateRequest
from integrations.models import CrmConnection, Tenant
from integrations.phones import costly_number_type, number_region
from integrations.rates import parse_rate

logger = logging.getLogger("callbridge.click_to_call")


def destination_refusal(tenant: Tenant, e164: str) -> tuple[str, str] | None:
    """(reason code, message) when the number may not be dialled, else None."""
    costly = costly_number_type(e164)
    if costly:
        return OriginateRequest.NUMBER_TYPE, f"Refused: {e164} is a {costly} number"
    allowed = tenant.allowed_call_regions
    region = number_region(e164)
    if region not in allowed:
        where = f"region {region}" if region else "no known region"
        return (
            OriginateRequest.REGION,
            f"Refused: {e164} is in {where}, outside the click-to-call regions {', '.join(sorted(allowed))}",
        )
    return None


def admit(
    tenant: Tenant, crm_connection: CrmConnection | None, fields: dict[str, object]
) -> OriginateRequest:
    """Store the request: `pending` when it may go to the PBX, `refused` (with its reason) when not."""
    refusal = destination_refusal(tenant, str(fields["phone"]))
    with transaction.atomic():
        if refusal is None:
            refusal = _over_throttle(tenant, crm_connection)
        request = OriginateRequest.objects.create(
            tenant=tenant,
            crm_connection=crm_connection,
            status=OriginateRequest.REFUSED if refusal else OriginateRequest.PENDING,
            refusal=refusal[0] if refusal else "",
            error=refusal[1] if refusal else "",
            **fields,
        )
    if refusal:
        logger.warning(
            "click-to-call refused for %s via %s: %s",
            tenant.slug,
            crm_connection.key if crm_connection else "-",
            refusal[1],
        )
    return request


def _over_throttle(tenant: Tenant, crm_connection: CrmConnection | None) -> tuple[str, str] | None:
    limit, seconds = parse_rate(settings.CLICK_TO_CALL_THROTTLE)
    # The lock serialises the count-then-insert of one connection's concurrent requests (PostgreSQL: the row
    # lock; SQLite: the write transaction, which settings open IMMEDIATE, already serialises writers).
    if crm_connection is not None:
        CrmConnection.objects.select_for_update().filter(pk=crm_connection.pk).first()
        recent = OriginateRequest.objects.filter(crm_connection=crm_connection)
    else:
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
        recent = OriginateRequest.objects.filter(tenant=tenant, crm_connection__isnull=True)
    since = timezone.now() - dt.timedelta(seconds=seconds)
    # What is limited is what reaches the PBX: refused requests do not count, so a flood past the limit (or of
    # forbidden numbers) does not extend the lockout.
    placed = recent.filter(created_at__gte=since).exclude(status=OriginateRequest.REFUSED).count()
    if placed >= limit:
        return (
            OriginateRequest.THROTTLED,
            f"Refused: more than {settings.CLICK_TO_CALL_THROTTLE} click-to-call requests from this CRM connection",
        )
    return None

"""Call retention: a tenant's `call_retention_days` deletes whole calls, in batches, from the daily task.

A call's phone numbers (and its recording) are personal data; keeping them for ever is rarely lawful. Past the
tenant's `call_retention_days` (counted from the start of the call, or from when the portal first saw it), a
call goes with everything that hangs off it: its events, routing decisions, click-to-call requests, outbound
jobs and their attempts, its recording row and stored file, and the recording's playback log. Routing
decisions and click-to-call requests that never became a call go at the same age. A call that still has a
pending outbound job is kept until the job is done: purging it would lose a message a CRM is owed.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from calls.models import Call, OriginateRequest, OutboundJob, Recording, RoutingDecision
from calls.recordings import storage
from integrations.models import Tenant

logger = logging.getLogger("callbridge.retention")

# Rows deleted per transaction: short transactions keep the webhooks' writes flowing while a large backlog goes.
BATCH_SIZE = 500


def purge_old_calls(now: dt.datetime | None = None, batch_size: int = BATCH_SIZE) -> int:
    """Delete every tenant's calls older than its call_retention_days; returns how many calls went."""
    now = now or timezone.now()
    purged = 0
    for tenant in Tenant.objects.filter(call_retention_days__isnull=False):
        cutoff = now - dt.timedelta(days=tenant.call_retention_days)
        purged += _purge_calls(tenant, cutoff, batch_size)
        for model in (RoutingDecision, OriginateRequest):
            _purge_unattached(model, tenant, cutoff, batch_size)
    if purged:
        logger.info("retention: %s call(s) deleted", purged)
    return purged


def _purge_calls(tenant: Tenant, cutoff: dt.datetime, batch_size: int) -> int:
    old = (
        Call.objects.filter(tenant=tenant)
        .filter(Q(started_at__lt=cutoff) | Q(started_at__isnull=True, created_at__lt=cutoff))
        .exclude(jobs__status=OutboundJob.PENDING)
        .order_by("pk")
    )
    purged = 0
    while True:
        ids = list(old.values_list("pk", flat=True)[:batch_size])
        if not ids:
            return purged
        files = list(
            Recording.objects.filter(call_id__in=ids).exclude(file="").values_list("file", flat=True)
        )
        with transaction.atomic():
            # SET_NULL relations would outlive the call (with its caller's number): deleted explicitly.
            RoutingDecision.objects.filter(call_id__in=ids).delete()
            OriginateRequest.objects.filter(call_id__in=ids).delete()
            # Cascades to events, jobs and their attempts, the recording and its playback log.
            Call.objects.filter(pk__in=ids).delete()
        for name in files:
            try:
                storage().delete(name)
            except Exception as exc:  # the row is gone either way; an orphan file is logged for the operator
                logger.warning("retention: could not delete recording file %s: %s", name, exc)
        purged += len(ids)


def _purge_unattached(
    model: type[RoutingDecision] | type[OriginateRequest],
    tenant: Tenant,
    cutoff: dt.datetime,
    batch_size: int,
) -> None:
    old = model.objects.filter(tenant=tenant, call__isnull=True, created_at__lt=cutoff).order_by("pk")
    while ids := list(old.values_list("pk", flat=True)[:batch_size]):
        model.objects.filter(pk__in=ids).delete()

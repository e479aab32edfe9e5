"""Reconciliation of calls that went silent: no end and no event for RECONCILE_AFTER_SECONDS.

A lost `end` (the portal was down, the network dropped the webhook) must not leave a call open for ever. Beat
runs `schedule_reconciliation()`, which writes one `call.reconcile` outbox job per silent call; the job asks the
call's PBX adapter (`reconcile(call)`) and acts on the answer through the same `ingest()` the PBX's webhooks go
through, so CRMs hear of the call exactly as if its end had arrived:

* completed: the PBX's own record of the call (Rostelecom `call_info`, Mango statistics) completes it;
* live: a long conversation; the call is asked about again after another RECONCILE_AFTER_SECONDS;
* unknown: the PBX does not know the call; it is closed with result `unknown` and a completion note saying
  why, so CRMs get a completion and support sees it. A real end arriving later still wins (see
  `calls.services.recompute`) and CRMs whose protocol allows a correction get one (docs/reliability.md).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Exists, Max, OuterRef, Q, Subquery
from django.utils import timezone

from calls import outbox
from calls.events import NormalisedEvent
from calls.models import Call, CallEvent, OutboundJob
from integrations.providers.base import JobSpec, ReconcileResult, get_provider

logger = logging.getLogger("callbridge.reconcile")

RECONCILE = "call.reconcile"
# How many silent calls one beat run queues at most (the next run takes the rest).
BATCH = 500
# Marks the completion written for a call the PBX did not know (raw["_reconciled"]).
UNKNOWN_MARK = "unknown"


def _after() -> dt.timedelta:
    return dt.timedelta(seconds=settings.RECONCILE_AFTER_SECONDS)


def silent_calls(now: dt.datetime) -> list[Call]:
    """Calls with no end whose last event is older than RECONCILE_AFTER_SECONDS, on an active PBX connection,
    not asked about within that time (a live answer waits for the next round) and with no reconciliation
    still pending."""
    cutoff = now - _after()
    asked = OutboundJob.objects.filter(call=OuterRef("pk"), kind=RECONCILE).filter(
        Q(status=OutboundJob.PENDING) | Q(created_at__gt=cutoff)
    )
    # By the PBX's call id, not the call: an event still waiting in the inbox (not applied yet) counts as news.
    of_the_call = CallEvent.objects.filter(
        pbx_connection=OuterRef("pbx_connection"), provider_call_id=OuterRef("provider_call_id")
    )
    last_event = (
        of_the_call.order_by().values("provider_call_id").annotate(last=Max("received_at")).values("last")
    )
    return list(
        Call.objects.filter(ended=False, pbx_connection__active=True, tenant__active=True)
        .annotate(last_event=Subquery(last_event[:1]))
        .filter(Q(last_event__lt=cutoff) | Q(last_event__isnull=True, created_at__lt=cutoff))
        .exclude(Exists(asked))
        .exclude(Exists(of_the_call.filter(status=CallEvent.PENDING)))
        .select_related("pbx_connection")
        .order_by("last_event", "id")[:BATCH]
    )


def schedule_reconciliation(now: dt.datetime | None = None) -> int:
    """Queue a reconciliation for every silent call (beat, every minute). Returns how many were queued."""
    now = now or timezone.now()
    created = 0
    for call in silent_calls(now):
        spec = JobSpec(RECONCILE, f"reconcile:{call.pk}:{int(now.timestamp())}", {}, call=call)
        created += outbox.create_jobs(call.pbx_connection, [spec], call)
    if created:
        logger.info("reconciliation: %s silent call(s) queued", created)
    return created


def reconcile_call(job: OutboundJob) -> str:
    """The `call.reconcile` job: ask the PBX, then complete, wait, or close the call as unknown."""
    call = Call.objects.select_related("pbx_connection__tenant", "tenant").get(pk=job.call_id)
    if call.ended:
        return "already ended"
    adapter = get_provider(call.pbx_connection)
    with call.pbx_connection.outbound_scope():
        result: ReconcileResult = adapter.reconcile(call)
    if result.status == "live":
        return f"live: asked again in {settings.RECONCILE_AFTER_SECONDS:g} s {result.note}".strip()
    events = list(result.events) if result.status == "completed" else [unknown_completion(call, result.note)]
    _ingest(job, call, events)
    call.refresh_from_db()
    logger.info("reconciliation of call %s: %s → %s", call.pk, result.status, call.result or "open")
    return f"{result.status}: result {call.result or '-'} {result.note}".strip()[:2000]


def close_as_unknown(job: OutboundJob, reason: str) -> None:
    """The PBX refused the reconciliation for good (a permanent error): the call is closed as unknown rather
    than left open. A reconciliation that only timed out is asked again by the next round instead."""
    job.refresh_from_db()
    if job.status != OutboundJob.FAILED or job.call_id is None:
        return
    call = Call.objects.select_related("pbx_connection").get(pk=job.call_id)
    if call.ended:
        return
    note = f"closed as unknown: the PBX refused to reconcile the call ({reason[:150]})"
    from calls.processor import ingest

    ingest(call.pbx_connection, [unknown_completion(call, note)])


def unknown_completion(call: Call, note: str) -> NormalisedEvent:
    """The completion of a call the PBX could not account for: result `unknown`, at its last event's time."""
    from calls.services import stored_events

    events = stored_events(call)
    last = max((e.timestamp for e in events), default=call.started_at or timezone.now())
    order = max((e.order_key for e in events), default="")
    return NormalisedEvent(
        provider_call_id=call.provider_call_id,
        kind="completed",
        order_key=f"{order}~reconcile",
        dedupe_key=f"reconcile:unknown:{call.provider_call_id}",
        timestamp=last,
        outcome="unknown",
        final=True,
        raw={
            "_reconciled": UNKNOWN_MARK,
            "_note": note or "closed as unknown: no end arrived and the PBX does not know the call",
        },
    )


def is_unknown_close(event: NormalisedEvent) -> bool:
    return isinstance(event.raw, dict) and event.raw.get("_reconciled") == UNKNOWN_MARK


def _ingest(job: OutboundJob, call: Call, events: list[NormalisedEvent]) -> None:
    from calls.processor import ingest

    with outbox.on_behalf_of(job):  # fenced: a worker that lost its lease completes nothing
        ingest(call.pbx_connection, events)

"""The call state machine, fan-out to CRM connections, click-to-call and recordings.

Webhooks store normalised events in the inbox (calls.inbox); the inbox processor (calls.processor) hands each
call's new events to `apply_events()`. The call's state is recomputed from ALL its applied events on every
change, so repeated and out-of-order events give the same final Call as in-order ones; the notices CRMs react to
are derived from the difference. Jobs are written in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from calls import click_to_call, outbox
from calls.events import NormalisedEvent
from calls.models import Call, CallEvent, OriginateRequest, Recording, RoutingDecision
from calls.reconcile import is_unknown_close
from integrations.models import CrmConnection, Extension, PbxConnection, Tenant
from integrations.phones import InvalidPhone, to_e164
from integrations.providers.base import JobSpec, Notice, ProviderError, get_provider

logger = logging.getLogger("callbridge.ingest")

MATCH_WINDOW = dt.timedelta(minutes=1)
# Order keys of the notices the pipeline adds at the end of a call: after every event of the call.
CANCEL_SUFFIX = "~1"
COMPLETED_SUFFIX = "~2"
CORRECTED_SUFFIX = "~3"
RECORDING_ORDER_KEY = "~~recording"


# ---------------------------------------------------------------------------------------------------------
# Applying events (the inbox processor, calls.processor, calls this under the call's lock)
# ---------------------------------------------------------------------------------------------------------


def stored_events(call: Call) -> list[NormalisedEvent]:
    """The call's applied events, in order. raw too: recompute() reads an adapter's `_note` from it
    (Call.completion_note)."""
    rows = (
        call.events.filter(status=CallEvent.DONE).order_by("order_key", "id").values_list("normalised", "raw")
    )
    return [NormalisedEvent.from_record(normalised, raw) for normalised, raw in rows]


def apply_events(
    call: Call,
    created: bool,
    new: Sequence[NormalisedEvent],
    all_events: Sequence[NormalisedEvent],
    adapter: Any,
) -> None:
    """Everything new events cause: the call's state, attachments, the recording, the PBX adapter's own jobs
    and the CRMs' jobs for the notices, written together (one dedupe lookup and one INSERT for all jobs)."""
    before = CallSnapshot.of(call)
    recompute(call, all_events, adapter)
    _attach_originate_request(call, all_events)
    call.save()
    if created:  # a decision made before the call existed is looked for once, with its first events
        _attach_routing_decision(call)
    jobs = outbox.JobBatch()
    if call.final_for_crm:
        # Also after the call became final: a PBX may announce a recording late.
        _expect_recording(call, all_events, jobs)
    jobs.add(call.pbx_connection, adapter.jobs_after_ingest(call, new), call)
    if call.is_external:
        notices = compute_notices(call, before, new, all_events)
        if before.result == "unknown" and call.result not in ("", "unknown") and before.final_for_crm:
            # A real end after a reconciliation closed the call as unknown: CRMs that can take a correction.
            notices.append(
                Notice(
                    "corrected", _last_order_key(all_events) + CORRECTED_SUFFIX, call.responsible_extension
                )
            )
        fan_out(call, notices, jobs)
    jobs.write()


@dataclass(frozen=True)
class CallSnapshot:
    ended: bool
    final_for_crm: bool
    answered: tuple[str, ...]
    result: str = ""

    @classmethod
    def of(cls, call: Call) -> CallSnapshot:
        return cls(call.ended, call.final_for_crm, tuple(call.answered_extensions), call.result)


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def recompute(call: Call, events: Sequence[NormalisedEvent], adapter: Any) -> None:
    """Derive the call's state from all its events, whatever order they arrived in."""
    events = sorted(events, key=lambda e: e.order_key)
    known = [e for e in events if e.kind != "unknown"]
    completed = [e for e in known if e.kind == "completed"]
    # A call reconciliation closed as `unknown` (calls/reconcile.py) is corrected by any real completion.
    real = [e for e in completed if not is_unknown_close(e)]
    if real:
        known = [e for e in known if not is_unknown_close(e)]
        completed = real
    last_completed = completed[-1] if completed else None

    directions = [e.direction for e in known if e.direction]
    if last_completed and last_completed.direction:
        call.direction = last_completed.direction
    elif directions:
        call.direction = directions[0]
    for attr in ("client_phone", "client_phone_raw", "external_phone"):
        values = [getattr(e, attr) for e in known if getattr(e, attr)]
        if values:
            setattr(call, attr, values[0])
    locations = [e.location for e in known if e.location]
    call.location = locations[-1] if locations else call.location

    ringing = [e for e in known if e.kind == "ringing"]
    answered = [e for e in known if e.kind == "answered" and e.extension]
    if call.direction == Call.OUT:
        starters = [e.extension for e in known if e.extension and e.kind in {"ringing", "answered"}]
        call.initiating_extension = (starters[0] if starters else call.initiating_extension)[:6]
        call.rang_extensions = []
    else:
        call.rang_extensions = _unique(
            [x for e in ringing if e.location in {"", "agent"} for x in (e.extension, *e.extensions)]
        )
    call.answered_extensions = _unique([e.extension for e in answered])
    if answered:
        call.first_answered_extension = answered[0].extension[:6]
        call.last_answered_extension = answered[-1].extension[:6]
    answered_times = [e.timestamp for e in known if e.kind == "answered"]

    call.started_at = min((e.timestamp for e in known), default=call.started_at)
    call.answered_at = min(answered_times, default=None)
    call.ended = bool(completed)
    if last_completed:
        call.ended_at = max(e.timestamp for e in completed)
    else:
        call.ended_at = None
    outcome = next((e.outcome for e in reversed(completed) if e.outcome), "")
    talk = next((e.talk_seconds for e in reversed(completed) if e.talk_seconds is not None), None)
    if call.ended:
        call.result = outcome or _derived_result(call, known)
        if call.result == "answered" and call.answered_at is None:
            call.answered_at = call.started_at
        if talk is not None:
            call.talk_seconds = talk
        elif call.answered_at and call.ended_at:
            call.talk_seconds = max(0, int((call.ended_at - call.answered_at).total_seconds()))
        else:
            call.talk_seconds = 0
        waited_until = call.answered_at or call.ended_at
        if waited_until and call.started_at:
            call.wait_seconds = max(0, int((waited_until - call.started_at).total_seconds()))
        call.recording_expected = bool(adapter.recording_expected(call, events)) and call.result == "answered"
        if not call.final_for_crm and adapter.is_final(call, events):
            call.final_for_crm = True
            call.final_at = timezone.now()
    else:
        call.result = ""
    notes = [e.raw.get("_note") for e in completed if isinstance(e.raw, dict) and e.raw.get("_note")]
    if notes:
        call.completion_note = str(notes[-1])[:300]


def _derived_result(call: Call, events: Sequence[NormalisedEvent]) -> str:
    if call.answered_at or call.answered_extensions:
        return "answered"
    if call.direction == Call.OUT:
        return "no_answer"
    return "missed"


def _attach_originate_request(call: Call, events: Sequence[NormalisedEvent]) -> None:
    if call.originate_request_id:
        return
    ids = _unique([e.correlation_id for e in events])
    request = None
    if ids:
        request = OriginateRequest.objects.filter(
            pbx_connection=call.pbx_connection, correlation_id__in=ids
        ).first()
    if request is None and call.direction == Call.OUT and call.client_phone and call.started_at:
        extensions = _unique([call.initiating_extension, *call.answered_extensions])
        request = (
            OriginateRequest.objects.filter(
                pbx_connection=call.pbx_connection,
                call__isnull=True,
                status=OriginateRequest.OK,
                phone=call.client_phone,
                extension__in=extensions,
                created_at__gte=call.started_at - MATCH_WINDOW,
                created_at__lte=call.started_at + MATCH_WINDOW,
            )
            .order_by("-created_at")
            .first()
        )
    if request is not None:
        call.originate_request = request
        if not call.initiating_extension:
            call.initiating_extension = request.extension
        OriginateRequest.objects.filter(pk=request.pk, call__isnull=True).update(call=call)


def _attach_routing_decision(call: Call) -> None:
    """A PBX may ask "whose caller" before the call exists: attach that decision to the call it was for."""
    if call.direction != Call.IN or not call.started_at:
        return
    by_id = RoutingDecision.objects.filter(
        pbx_connection=call.pbx_connection, call__isnull=True, provider_call_id=call.provider_call_id
    ).exclude(provider_call_id="")
    decision = by_id.order_by("-created_at").first()
    if decision is None and call.client_phone:
        candidates = RoutingDecision.objects.filter(
            pbx_connection=call.pbx_connection,
            call__isnull=True,
            caller=call.client_phone,
            created_at__gte=call.started_at - MATCH_WINDOW,
            created_at__lte=call.started_at + MATCH_WINDOW,
        )
        if call.external_phone:
            candidates = candidates.filter(did__in=[call.external_phone, ""])
        decision = candidates.order_by("-created_at").first()
    if decision is not None:
        RoutingDecision.objects.filter(pk=decision.pk, call__isnull=True).update(call=call)


def _last_order_key(events: Sequence[NormalisedEvent]) -> str:
    return max((e.order_key for e in events if e.kind != "unknown"), default="")


def compute_notices(
    call: Call, before: CallSnapshot, new: Sequence[NormalisedEvent], events: Sequence[NormalisedEvent]
) -> list[Notice]:
    """What CRMs should hear about this change. Pop-ups only while the call is live and at an agent; the end
    of the call (cancelled legs, completion) once the PBX adapter says the call is final."""
    notices: list[Notice] = []
    if not call.ended:
        for event in sorted(new, key=lambda e: e.order_key):
            if event.location in {"ivr", "queue"}:
                continue
            if event.kind == "ringing" and call.direction == Call.IN:
                if _leg_moved_on(event, events):
                    continue  # a late ringing of a leg that was already answered or ended opens no card
                targets = _unique([event.extension, *event.extensions])
                if not targets:
                    routed = call.routing_decisions.exclude(extension="").order_by("-created_at").first()
                    targets = [routed.extension] if routed else []
                notices += [Notice("ringing", event.order_key, ext) for ext in targets]
            elif (
                event.kind in {"ringing", "answered"}
                and call.direction == Call.OUT
                and call.initiating_extension
            ):
                notices.append(Notice("dialing", _first_order_key(events), call.initiating_extension))
                if event.kind == "answered":
                    notices.append(
                        Notice("answered", event.order_key, event.extension or call.initiating_extension)
                    )
            elif event.kind == "answered" and event.extension:
                notices.append(Notice("answered", event.order_key, event.extension))
    if call.final_for_crm and not before.final_for_crm:
        last = _last_order_key(events)
        if call.direction == Call.IN:
            for ext in call.rang_extensions:
                if ext not in call.answered_extensions:
                    notices.append(Notice("leg_cancelled", last + CANCEL_SUFFIX, ext))
        # A transfer: everyone who talked before the last one gets a completion of their own.
        for ext in call.answered_extensions:
            if ext != call.responsible_extension:
                talk = _talk_seconds_of(ext, events)
                notices.append(Notice("leg_completed", last + CANCEL_SUFFIX, ext, talk_seconds=talk))
        notices.append(Notice("completed", last + COMPLETED_SUFFIX, call.responsible_extension))
    return notices


def _talk_seconds_of(extension: str, events: Sequence[NormalisedEvent]) -> int | None:
    """How long `extension` talked: its answered → leg_ended spans; None when the events have no such pair."""
    total, opened, seen = 0.0, None, False
    for event in sorted(events, key=lambda e: e.order_key):
        if event.extension != extension:
            continue
        if event.kind == "answered" and opened is None:
            opened = event.timestamp
        elif event.kind in {"leg_ended", "completed"} and opened is not None:
            total += max(0.0, (event.timestamp - opened).total_seconds())
            opened, seen = None, True
    return int(total) if seen else None


def _leg_moved_on(event: NormalisedEvent, events: Sequence[NormalisedEvent]) -> bool:
    return bool(event.leg_id) and any(
        e.leg_id == event.leg_id and e.order_key > event.order_key and e.kind != "unknown" for e in events
    )


def _first_order_key(events: Sequence[NormalisedEvent]) -> str:
    return min((e.order_key for e in events if e.kind != "unknown"), default="")


def fan_out(call: Call, notices: Sequence[Notice], jobs: outbox.JobBatch) -> None:
    """Every active CRM connection of the tenant turns the notices into its own jobs (added to `jobs`)."""
    if not notices or not call.is_external:
        return
    for crm in CrmConnection.objects.filter(tenant_id=call.tenant_id, active=True).select_related("tenant"):
        jobs.add(crm, get_provider(crm).jobs_for(call, notices), call)


def resend_to_crm(call: Call) -> int:
    """Admin action: send the call's completion messages again (new jobs, same payload rules)."""
    if not call.final_for_crm or not call.is_external:
        return 0
    stamp = timezone.now().strftime("%Y%m%d%H%M%S")
    notices = [Notice("completed", "~2", call.responsible_extension)]
    if hasattr(call, "recording") and call.recording.state == Recording.STORED:
        notices.append(Notice("recording_stored", RECORDING_ORDER_KEY))
    created = 0
    with transaction.atomic():
        for crm in CrmConnection.objects.filter(tenant_id=call.tenant_id, active=True):
            specs = get_provider(crm).jobs_for(call, notices)
            resent = [
                JobSpec(s.kind, f"{s.dedupe_key}:resend:{stamp}", s.payload, s.call, s.order_key, s.due_at)
                for s in specs
            ]
            created += outbox.create_jobs(crm, resent, call)
    return created


# ---------------------------------------------------------------------------------------------------------
# Recordings plumbing
# ---------------------------------------------------------------------------------------------------------


def _expect_recording(call: Call, events: Sequence[NormalisedEvent], jobs: outbox.JobBatch) -> None:
    if not call.recording_expected:
        return
    hints: dict[str, Any] = {}
    for event in events:
        hints.update(event.recording or {})
    recording, created = Recording.objects.get_or_create(call=call, defaults={"hints": hints})
    if not created and hints and recording.hints != {**recording.hints, **hints}:
        Recording.objects.filter(pk=recording.pk).update(hints={**recording.hints, **hints})
    jobs.add(
        call.pbx_connection,
        [JobSpec("recording.fetch", f"recording:{recording.pk}", {"recording": recording.pk}, call=call)],
        call,
    )


def update_recording_hints(call: Call, hints: dict[str, Any]) -> None:
    """A PBX event that arrives after the call was final (a late recording notice) adds fetching hints."""
    recording = Recording.objects.filter(call=call).first()
    if recording:
        Recording.objects.filter(pk=recording.pk).update(hints={**recording.hints, **hints})


def recording_stored(recording: Recording) -> int:
    """The "recording stored" change: every CRM adapter queues its message, exactly once per recording."""
    call = recording.call
    if not call.is_external:
        return 0
    created = 0
    with transaction.atomic():
        for crm in CrmConnection.objects.filter(tenant_id=call.tenant_id, active=True):
            specs = get_provider(crm).jobs_for(call, [Notice("recording_stored", RECORDING_ORDER_KEY)])
            created += outbox.create_jobs(crm, specs, call)
    return created


def revoke_recording_link(recording: Recording) -> int:
    """Revoke a recording's link (the old one answers 404 from now on) and let every CRM whose protocol can
    replace a link receive the new one; returns the jobs queued."""
    with transaction.atomic():
        Recording.objects.filter(pk=recording.pk).update(
            link_version=F("link_version") + 1, legacy_token_hash=""
        )
        recording.refresh_from_db()
        call = recording.call
        if recording.state != Recording.STORED or not call.is_external:
            return 0  # the link was never sent; the CRM gets the current one when the file is stored
        created = 0
        for crm in CrmConnection.objects.filter(tenant_id=call.tenant_id, active=True):
            notice = Notice("recording_link_changed", f"{RECORDING_ORDER_KEY}~{recording.link_version}")
            created += outbox.create_jobs(crm, get_provider(crm).jobs_for(call, [notice]), call)
    logger.info(
        "recording %s: link revoked (version %s), %s message(s) queued",
        recording.pk,
        recording.link_version,
        created,
    )
    return created


# ---------------------------------------------------------------------------------------------------------
# Click-to-call
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OriginateOutcome:
    ok: bool
    correlation_id: str = ""
    error: str = ""
    # no_pbx | unknown_extension | bad_number | pbx_refused | pbx_unreachable, or the guard's refusal:
    # throttled | region | number_type (OriginateRequest.REFUSALS)
    code: str = ""
    request: OriginateRequest | None = None


def originate(
    tenant: Tenant,
    extension: str,
    phone: str,
    *,
    crm_connection: CrmConnection | None = None,
    external_phone: str = "",
    crm_user_id: str = "",
    context: dict[str, Any] | None = None,
) -> OriginateOutcome:
    """Click-to-call asked by a CRM: store the request, ask the tenant's PBX to originate, and say how it went."""
    pbx = tenant.active_pbx()
    if pbx is None:
        return OriginateOutcome(False, error="The tenant has no active PBX connection", code="no_pbx")
    extension = (extension or "").strip()
    if not Extension.objects.filter(tenant=tenant, number=extension).exists():
        return OriginateOutcome(False, error=f"Unknown extension {extension!r}", code="unknown_extension")
    try:
        number = to_e164(phone, tenant.region)
    except InvalidPhone:
        return OriginateOutcome(False, error=f"Not a phone number: {phone!r}", code="bad_number")
    did = ""
    if external_phone:
        try:
            did = to_e164(external_phone, tenant.region)
        except InvalidPhone:
            return OriginateOutcome(False, error=f"Not a phone number: {external_phone!r}", code="bad_number")
    request = click_to_call.admit(
        tenant,
        crm_connection,
        {
            "pbx_connection": pbx,
            "extension": extension,
            "phone": number,
            "external_phone": did,
            "crm_user_id": crm_user_id,
            "context": context or {},
        },
    )
    if request.status == OriginateRequest.REFUSED:  # the PBX never hears of it
        return OriginateOutcome(False, error=request.error, code=request.refusal, request=request)
    try:
        with pbx.outbound_scope():
            result = get_provider(pbx).originate(request)
    except ProviderError as exc:
        refused = exc.permanent or (
            exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429)
        )
        code = "pbx_refused" if refused else "pbx_unreachable"
        OriginateRequest.objects.filter(pk=request.pk).update(
            status=OriginateRequest.FAILED, error=str(exc)[:2000]
        )
        logger.warning("originate %s → %s refused by the PBX: %s", extension, number, exc)
        return OriginateOutcome(False, error=str(exc), code=code, request=request)
    except Exception as exc:  # an HTTP error type of the client (timeouts, 5xx)
        permanent = bool(getattr(exc, "permanent", False))
        OriginateRequest.objects.filter(pk=request.pk).update(
            status=OriginateRequest.FAILED, error=str(exc)[:2000]
        )
        logger.warning("originate %s → %s failed: %s", extension, number, exc)
        return OriginateOutcome(
            False, error=str(exc), code="pbx_refused" if permanent else "pbx_unreachable", request=request
        )
    request.correlation_id = result.correlation_id
    request.status = OriginateRequest.OK
    request.save(update_fields=["correlation_id", "status"])
    _attach_early_call(request)
    return OriginateOutcome(True, correlation_id=result.correlation_id, request=request)


def _attach_early_call(request: OriginateRequest) -> None:
    """Events may arrive before the PBX answered our command: attach the call they created."""
    if not request.correlation_id:
        return
    event = (
        CallEvent.objects.filter(
            pbx_connection=request.pbx_connection,
            call__isnull=False,  # an event not applied yet: the processor attaches the request itself
            call__originate_request__isnull=True,
            normalised__correlation_id=request.correlation_id,
        )
        .order_by("id")
        .first()
    )
    if event is not None:
        Call.objects.filter(pk=event.call_id, originate_request__isnull=True).update(
            originate_request=request
        )
        # As _attach_originate_request does when the events come second: the call is the extension's.
        Call.objects.filter(pk=event.call_id, initiating_extension="").update(
            initiating_extension=request.extension
        )
        OriginateRequest.objects.filter(pk=request.pk).update(call_id=event.call_id)


# ---------------------------------------------------------------------------------------------------------
# Periodic work (beat)
# ---------------------------------------------------------------------------------------------------------


def schedule_periodic_jobs(now: dt.datetime | None = None) -> int:
    """Write every active connection's periodic jobs (dedupe keys make a repeat a no-op)."""
    now = now or timezone.now()
    created = 0
    for model in (PbxConnection, CrmConnection):
        for connection in model.objects.filter(active=True, tenant__active=True).select_related("tenant"):
            try:
                specs = get_provider(connection).periodic_jobs(now)
            except Exception:
                logger.exception("periodic jobs of %s failed", connection)
                continue
            with transaction.atomic():
                created += outbox.create_jobs(connection, specs)
    return created

"""Reconciliation of calls that went silent (issue 14 item 2): a call with no end and no event for
RECONCILE_AFTER_SECONDS is asked about at its PBX; completed, asked again later, or closed as `unknown` with a
note; a real end after an unknown close corrects the call and sends CRMs a correction."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from calls import outbox
from calls.models import Call, CallEvent, OutboundJob
from calls.processor import ingest
from calls.reconcile import RECONCILE, schedule_reconciliation
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db

ANSWERED_NO_END = [
    {"call": "c1", "kind": "ringing", "seq": 1, "ext": "101"},
    {"call": "c1", "kind": "answered", "seq": 5, "ext": "101"},
]


def run_due() -> None:
    outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))


def silent_call(pbx, seconds_ago: float) -> Call:
    (call,) = ingest(pbx, [to_event(e) for e in ANSWERED_NO_END])
    CallEvent.objects.filter(call=call).update(received_at=timezone.now() - dt.timedelta(seconds=seconds_ago))
    return call


def reconcile_now(pbx, answer: str) -> Call:
    pbx.settings = {"reconcile": answer}
    pbx.save()
    assert schedule_reconciliation() == 1
    run_due()
    return Call.objects.get(provider_call_id="c1")


def test_a_call_silent_for_less_than_the_threshold_is_left_alone(pbx, crm, extensions, settings):
    settings.RECONCILE_AFTER_SECONDS = 900
    silent_call(pbx, 600)
    assert schedule_reconciliation() == 0


def test_a_call_the_pbx_does_not_know_is_closed_as_unknown_with_a_note(pbx, crm, extensions):
    silent_call(pbx, 1000)
    call = reconcile_now(pbx, "unknown")
    assert call.ended and call.final_for_crm and call.result == "unknown"
    assert "the fake PBX says unknown" in call.completion_note
    completions = OutboundJob.objects.filter(crm_connection=crm, payload__notice="completed")
    assert completions.count() == 1, "CRMs get a completion, so nothing stays open there either"


def test_a_call_the_pbx_reports_completed_is_completed_from_its_answer(pbx, crm, extensions):
    silent_call(pbx, 1000)
    call = reconcile_now(pbx, "completed")
    assert call.ended and call.result == "answered"
    assert OutboundJob.objects.get(kind=RECONCILE).status == OutboundJob.SENT


def test_a_live_call_is_asked_again_after_another_period(pbx, crm, extensions, settings):
    silent_call(pbx, 1000)
    call = reconcile_now(pbx, "live")
    assert not call.ended
    assert schedule_reconciliation() == 0, "not asked again at once"
    later = timezone.now() + dt.timedelta(seconds=settings.RECONCILE_AFTER_SECONDS + 1)
    assert schedule_reconciliation(now=later) == 1


def test_a_call_of_an_inactive_pbx_is_not_reconciled(pbx, crm, extensions):
    silent_call(pbx, 1000)
    pbx.active = False
    pbx.save()
    assert schedule_reconciliation() == 0


def test_a_real_end_after_an_unknown_close_corrects_the_call_and_crms_hear_of_it(pbx, crm, extensions):
    silent_call(pbx, 1000)
    reconcile_now(pbx, "unknown")

    ingest(pbx, [to_event({"call": "c1", "kind": "completed", "seq": 60, "outcome": "answered"})])

    call = Call.objects.get(provider_call_id="c1")
    assert call.result == "answered" and call.talk_seconds == 55
    assert OutboundJob.objects.filter(crm_connection=crm, payload__notice="corrected").count() == 1


def test_the_beat_task_queues_reconciliations(pbx, crm, extensions):
    from calls.tasks import reconcile_silent_calls

    silent_call(pbx, 1000)
    assert reconcile_silent_calls() == 1
    assert OutboundJob.objects.filter(kind=RECONCILE, status=OutboundJob.PENDING).count() == 1


def test_a_call_whose_end_waits_in_the_inbox_is_not_reconciled(pbx, crm, extensions):
    from calls import inbox

    silent_call(pbx, 1000)
    inbox.store(
        pbx, [to_event({"call": "c1", "kind": "completed", "seq": 60})], []
    )  # stored, not applied yet
    assert schedule_reconciliation() == 0

"""Call retention (issue 15 item 11): the daily task deletes calls older than the tenant's call_retention_days
with their events, routing decisions, click-to-call requests, jobs and attempts, recordings (files too) and
playback logs, in batches; a call with a pending job is kept; without the setting nothing goes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from calls import retention
from calls.models import (
    Call,
    CallEvent,
    JobAttempt,
    OriginateRequest,
    OutboundJob,
    PlaybackLog,
    Recording,
    RoutingDecision,
)
from calls.tasks import purge_expired_recordings
from tests.recordings.conftest import stored_files

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


def ago(days: float) -> dt.datetime:
    return timezone.now() - days * DAY


@pytest.fixture
def full_call(tenant, pbx, crm, stored_recording):
    """A call with one of everything that hangs off it."""

    def make(days_ago: float, job_status: str = OutboundJob.SENT) -> Call:
        recording = stored_recording(started_at=ago(days_ago))
        call = recording.call
        CallEvent.objects.create(
            call=call,
            pbx_connection=pbx,
            dedupe_key=f"e{call.pk}",
            order_key="1",
            kind="ringing",
            occurred_at=ago(days_ago),
        )
        RoutingDecision.objects.create(tenant=tenant, call=call, caller=call.client_phone, source="none")
        OriginateRequest.objects.create(tenant=tenant, call=call, extension="101", phone=call.client_phone)
        job = OutboundJob.objects.create(
            tenant=tenant,
            crm_connection=crm,
            connection_ref=f"crm:{crm.pk}",
            kind="fake.event",
            call=call,
            dedupe_key=f"j{call.pk}",
            status=job_status,
        )
        JobAttempt.objects.create(job=job, outcome="sent")
        PlaybackLog.objects.create(recording=recording, status=200)
        return call

    return make


def test_calls_past_retention_go_with_everything_that_hangs_off_them(tenant, full_call, recordings_storage):
    tenant.call_retention_days = 30
    tenant.save()
    old, recent = full_call(31), full_call(29)
    recent_file = recent.recording.file

    assert purge_expired_recordings() == 1  # the existing daily task

    assert list(Call.objects.values_list("pk", flat=True)) == [recent.pk]
    for model in (CallEvent, RoutingDecision, OriginateRequest, OutboundJob, Recording):
        assert model.objects.count() == 1, model
    assert JobAttempt.objects.count() == 1 and PlaybackLog.objects.count() == 1
    assert not RoutingDecision.objects.filter(call__isnull=True).exists()
    assert stored_files(recordings_storage) == [recent_file]
    assert old.pk not in set(OriginateRequest.objects.values_list("call_id", flat=True))


def test_a_call_with_a_pending_job_is_never_purged(tenant, full_call):
    tenant.call_retention_days = 30
    tenant.save()
    waiting = full_call(90, job_status=OutboundJob.PENDING)

    assert retention.purge_old_calls() == 0
    assert Call.objects.filter(pk=waiting.pk).exists()

    OutboundJob.objects.update(status=OutboundJob.DEAD)
    assert retention.purge_old_calls() == 1


def test_without_call_retention_everything_is_kept(tenant, full_call):
    full_call(3650)

    assert retention.purge_old_calls() == 0
    assert Call.objects.count() == 1


def test_old_requests_and_decisions_without_a_call_go_too(tenant):
    tenant.call_retention_days = 7
    tenant.save()
    RoutingDecision.objects.create(tenant=tenant, caller="+79161234567", source="none", created_at=ago(8))
    OriginateRequest.objects.create(tenant=tenant, extension="101", phone="+79161234567", created_at=ago(8))
    RoutingDecision.objects.create(tenant=tenant, caller="+79161234568", source="none")

    retention.purge_old_calls()

    assert RoutingDecision.objects.count() == 1 and not OriginateRequest.objects.exists()


def test_calls_go_in_batches(tenant, make_call):
    tenant.call_retention_days = 1
    tenant.save()
    for _ in range(7):
        make_call(ago(2))

    assert retention.purge_old_calls(batch_size=3) == 7
    assert not Call.objects.exists()


def test_call_retention_days_travels_in_the_tenant_file(tenant):
    from tests.test_tenant_file import export_document, import_document, new_tenant_document

    import_document(new_tenant_document(call_retention_days=90))
    assert export_document("newco")["call_retention_days"] == 90

"""Deactivated means paused (issue 14 item 5): an inactive connection gets no new jobs and sends none of its
pending ones; they are held (and shown so in the admin) and go out on reactivation if still inside their retry
window, while pop-ups that expired meanwhile are dropped."""

from __future__ import annotations

import datetime as dt

import pytest
import responses
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from calls import outbox
from calls.models import OutboundJob
from calls.processor import ingest
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db

CRM_URL = "https://crm.example.test/hook"
RINGING = [{"call": "c1", "kind": "ringing", "seq": 1, "ext": "101"}]
END = [{"call": "c1", "kind": "completed", "seq": 9}]


def run_due() -> None:
    outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))


def set_active(connection, active: bool) -> None:
    connection.active = active
    connection.save()


@responses.activate
def test_an_inactive_crm_gets_no_new_jobs_and_its_expired_pop_ups_are_dropped(pbx, crm, extensions):
    responses.add(responses.POST, CRM_URL, status=200, body="ok")
    ingest(pbx, [to_event(e) for e in RINGING])  # a pop-up is queued
    set_active(crm, False)
    ingest(pbx, [to_event(e) for e in END])
    run_due()
    assert len(responses.calls) == 0, "nothing is sent to an inactive connection"
    (popup,) = OutboundJob.objects.filter(crm_connection=crm)  # no completion job was created for it
    assert popup.payload["notice"] == "ringing"
    assert popup.status == OutboundJob.EXPIRED, "its call ended: a late pop-up is dropped, held or not"

    set_active(crm, True)
    run_due()
    assert len(responses.calls) == 0


@responses.activate
def test_pending_jobs_queued_before_deactivation_are_held_then_sent(pbx, crm, extensions):
    responses.add(responses.POST, CRM_URL, status=200, body="ok")
    ingest(pbx, [to_event(e) for e in RINGING + END])
    set_active(crm, False)
    run_due()
    assert len(responses.calls) == 0
    jobs = OutboundJob.objects.filter(crm_connection=crm)
    assert set(jobs.values_list("status", flat=True)) == {OutboundJob.PENDING}

    set_active(crm, True)
    run_due()
    run_due()  # the completion waits for the card-closing message before it (same call, ordered)
    completion = jobs.get(payload__notice="completed")
    assert completion.status == OutboundJob.SENT
    assert [c.request.body for c in responses.calls][-1].find(b'"completed"') > 0


def test_a_held_job_whose_window_ended_is_dead_on_reactivation(pbx, crm, extensions):
    ingest(pbx, [to_event(e) for e in RINGING + END])
    set_active(crm, False)
    completion = OutboundJob.objects.get(crm_connection=crm, payload__notice="completed")
    OutboundJob.objects.filter(pk=completion.pk).update(window_ends_at=timezone.now() - dt.timedelta(hours=1))
    outbox.expire_due_jobs()
    completion.refresh_from_db()
    assert completion.status == OutboundJob.PENDING, "held while inactive"

    set_active(crm, True)
    outbox.expire_due_jobs()
    completion.refresh_from_db()
    assert completion.status == OutboundJob.DEAD and "retry window" in completion.last_error


def test_the_admin_shows_held_jobs(pbx, crm, extensions):
    ingest(pbx, [to_event(e) for e in RINGING + END])
    set_active(crm, False)
    admin = get_user_model().objects.create_superuser("root", "root@example.test", "pw-123456789")
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/calls/outboundjob/")
    assert page.status_code == 200
    assert b"held (connection inactive)" in page.content

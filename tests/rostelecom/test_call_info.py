"""The call_info job after `end`: the exact signed request, retries within its window, and completing from the
events alone (and saying so) when call_info keeps failing."""

from __future__ import annotations

import json

import pytest
import requests
import responses
from django.utils import timezone

from calls.models import Call, OutboundJob
from integrations.providers.rostelecom.call_info import CALL_INFO
from tests.factories import CrmConnectionFactory
from tests.rostelecom.conftest import API, CLIENT_ID, load, post_all, run_due, sign

pytestmark = pytest.mark.django_db


@pytest.fixture
def crm(tenant, fake_crm_registered):
    return CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key="crm", settings={}, secrets={"token": "t"}
    )


def completion_jobs(crm) -> list[OutboundJob]:
    return list(OutboundJob.objects.filter(crm_connection=crm, payload__notice="completed"))


def window_over(job: OutboundJob) -> None:
    """Time passes: the job is due again and its window has run out."""
    now = timezone.now()
    OutboundJob.objects.filter(pk=job.pk).update(next_attempt_at=now, window_ends_at=now)


@responses.activate
def test_call_info_is_asked_with_a_signed_ascii_json_body_and_a_timeout(client, pbx, extensions):
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))
    post_all(client, pbx, load("incoming_answered.json"))
    run_due()

    assert len(responses.calls) == 1
    request = responses.calls[0].request
    assert request.body == b'{"session_id":"SDsnZugDFmTW7Sec","domain":"acme.rt.ru"}'
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Client-ID"] == CLIENT_ID
    assert request.headers["X-Client-Sign"] == sign(request.body)
    assert request.req_kwargs["timeout"] == (3.05, 10)
    assert request.req_kwargs["verify"] is True or isinstance(request.req_kwargs["verify"], str)


@responses.activate
def test_the_call_waits_for_call_info_before_crms_hear_it_ended(client, pbx, extensions, crm):
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))
    post_all(client, pbx, load("incoming_answered.json"))
    assert completion_jobs(crm) == []

    run_due()
    assert len(completion_jobs(crm)) == 1
    assert Call.objects.get().final_for_crm


@responses.activate
def test_a_failing_call_info_is_retried_and_the_call_stays_open_meanwhile(client, pbx, extensions, crm):
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_not_found.json"))
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))
    post_all(client, pbx, load("incoming_answered.json"))

    run_due()
    job = OutboundJob.objects.get(kind=CALL_INFO)
    assert job.status == OutboundJob.PENDING and job.attempts == 1
    assert "session not found" in job.last_error, "the PBX's own message"
    call = Call.objects.get()
    assert not call.final_for_crm and completion_jobs(crm) == []

    OutboundJob.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now())
    run_due()
    job.refresh_from_db()
    call.refresh_from_db()
    assert job.status == OutboundJob.SENT and job.attempts == 2
    assert call.final_for_crm and call.completion_note == ""


@responses.activate
def test_when_call_info_keeps_failing_the_call_completes_from_its_events_and_says_so(
    client, pbx, extensions, crm
):
    responses.add(responses.POST, f"{API}/call_info", body=requests.exceptions.ConnectTimeout("slow"))
    post_all(client, pbx, load("incoming_answered.json"))
    run_due()
    job = OutboundJob.objects.get(kind=CALL_INFO)
    assert job.status == OutboundJob.PENDING and not Call.objects.get().final_for_crm

    window_over(job)
    run_due()

    job.refresh_from_db()
    call = Call.objects.get()
    assert job.status == OutboundJob.DEAD
    assert call.final_for_crm and call.result == "answered"
    assert call.talk_seconds == 7, "from connected → disconnected"
    assert call.completion_note.startswith("completed from events: call_info unavailable (")
    assert "timed out" in call.completion_note
    assert call.recording_expected is True, "end said is_record true"
    assert call.recording.hints == {"session_id": "SDsnZugDFmTW7Sec"}
    assert len(completion_jobs(crm)) == 1


@responses.activate
def test_a_permanent_refusal_completes_the_call_at_once_and_flags_the_connection(client, pbx, extensions):
    responses.add(
        responses.POST, f"{API}/call_info", status=403, json={"result": 1, "resultMessage": "Forbidden"}
    )
    post_all(client, pbx, load("outbound_busy.json"))
    run_due()

    job = OutboundJob.objects.get(kind=CALL_INFO)
    call = Call.objects.get()
    pbx.refresh_from_db()
    assert job.status == OutboundJob.FAILED and job.attempts == 1
    assert call.final_for_crm and call.result == "no_answer"
    assert call.recording_expected is False
    assert "HTTP 403" in call.completion_note
    assert "HTTP 403" in pbx.last_error


def test_a_call_whose_call_info_job_died_completes_with_its_next_event(client, pbx, extensions):
    # The guard for a job that died without its last attempt running (a killed worker, a lost lease).
    bodies = load("incoming_answered.json")
    post_all(client, pbx, bodies)
    OutboundJob.objects.filter(kind=CALL_INFO).update(status=OutboundJob.DEAD)
    assert not Call.objects.get().final_for_crm

    post_all(client, pbx, [{**bodies[-1], "state": "analytics", "timestamp": "2019-12-27 15:35:30.000"}])
    assert Call.objects.get().final_for_crm


def test_a_busy_disconnect_reason_makes_an_events_only_outbound_call_busy(client, pbx, extensions):
    new, end = load("outbound_busy.json")
    busy = {**new, "state": "disconnected", "timestamp": "2019-12-27 17:05:03.300", "disconnect_reason": "3"}
    post_all(client, pbx, [new, busy, end])
    job = OutboundJob.objects.get(kind=CALL_INFO)
    window_over(job)
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/call_info", status=502)
        run_due()
    assert Call.objects.get().result == "busy"


def test_call_info_fills_in_the_answering_pin_when_the_connected_event_was_lost(client, pbx, extensions):
    new, _connected, _disconnected, end = load("incoming_answered.json")
    post_all(client, pbx, [new, end])
    assert Call.objects.get().result == "missed"

    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))
        run_due()

    call = Call.objects.get()
    assert call.result == "answered"
    assert (call.first_answered_extension, call.last_answered_extension) == ("101", "101")
    assert call.answered_at == call.started_at + (timezone.timedelta(seconds=7))
    assert call.talk_seconds == 8 and call.recording_expected is True


def test_call_info_answers_for_the_record_when_end_did_not_say_is_record(client, pbx, extensions):
    bodies = load("incoming_answered.json")
    bodies[-1] = {**bodies[-1], "is_record": ""}
    post_all(client, pbx, bodies)
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))
        run_due()
    assert Call.objects.get().recording_expected is True


def test_a_repeated_end_asks_call_info_once(client, pbx, extensions):
    bodies = load("incoming_answered.json")
    post_all(client, pbx, bodies)
    post_all(client, pbx, [{**bodies[-1], "timestamp": "2019-12-27 15:35:00.000"}])
    assert OutboundJob.objects.filter(kind=CALL_INFO).count() == 1


def test_call_info_result_as_string_zero_is_success(client, pbx, extensions):
    post_all(client, pbx, load("incoming_missed.json"))
    answer = load("call_info_incoming_missed.json")
    assert answer["result"] == "0"
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/call_info", body=json.dumps(answer))
        run_due()
    assert Call.objects.get().final_for_crm


def _silent(client, pbx) -> Call:
    """An answered call whose `end` never arrived, silent for an hour."""
    from calls.models import CallEvent

    post_all(client, pbx, [b for b in load("incoming_answered.json") if b.get("state") != "end"])
    CallEvent.objects.update(received_at=timezone.now() - timezone.timedelta(hours=1))
    return Call.objects.get()


@responses.activate
def test_a_call_whose_end_never_arrived_is_completed_from_call_info(client, pbx, extensions, crm):
    from calls.reconcile import schedule_reconciliation

    call = _silent(client, pbx)
    assert not call.ended
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))

    assert schedule_reconciliation() == 1
    run_due()

    call.refresh_from_db()
    assert call.ended and call.final_for_crm and call.result == "answered"
    assert "reconciliation from call_info" in call.completion_note
    [asked] = [c.request for c in responses.calls if c.request.url.endswith("/call_info")]
    assert json.loads(asked.body)["session_id"] == call.provider_call_id
    assert len(completion_jobs(crm)) == 1


@responses.activate
def test_a_call_call_info_does_not_know_is_closed_as_unknown(client, pbx, extensions, crm):
    from calls.reconcile import schedule_reconciliation

    call = _silent(client, pbx)
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_not_found.json"))
    schedule_reconciliation()
    run_due()
    call.refresh_from_db()
    assert (call.ended, call.result) == (True, "unknown")
    assert "session not found" in call.completion_note
    assert len(completion_jobs(crm)) == 1

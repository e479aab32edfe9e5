"""History upload: POST /api/v5/telephony/calls/upload, field `calls`, at most 50 calls a request."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import pytest
import responses
from django.utils import timezone

from calls.models import JobAttempt, OutboundJob, Recording
from calls.services import resend_to_crm
from integrations.providers.base import Notice
from tests.retailcrm.conftest import (
    API_KEY,
    EVENT_URL,
    UPLOAD_URL,
    completed_call,
    fixture_json,
    form_field,
    retailcrm_connection,
    run_due,
    upload_jobs,
)

pytestmark = pytest.mark.django_db


def uploaded_calls(call_index: int = 0) -> list[dict]:
    return form_field(responses.calls[call_index].request, "calls")


def accept_all(request):
    calls = form_field(request, "calls")
    return 200, {}, json.dumps({"success": True, "processedCallsCount": len(calls), "duplicateCalls": []})


@responses.activate
def test_an_answered_call_is_uploaded_with_every_field(world):
    call = completed_call(world.pbx, recording_expected=True)
    upload_jobs(world.crm, [call])
    responses.add(responses.POST, UPLOAD_URL, json=fixture_json("calls_upload_ok.json"))

    run_due()

    request = responses.calls[0].request
    assert request.headers["X-API-KEY"] == API_KEY
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    [item] = uploaded_calls()
    assert item["date"] == "2026-11-24 10:00:05"  # the tenant's time zone (Moscow), Y-m-d H:i:s
    assert item["type"] == "in"
    assert item["phone"] == "+79161234567"
    assert item["code"] == "100"
    assert item["userId"] == 1
    assert item["result"] == "answered"
    assert item["duration"] == 95
    assert item["durationWaiting"] == 12
    assert item["externalId"] == "pbx-call-1"
    assert item["externalPhone"] == "+74999999999"
    assert item["site"] == "shop1"
    assert item["recordUrl"] == call.recording.public_url
    assert set(item) == {
        "date", "type", "phone", "code", "userId", "result", "duration", "durationWaiting", "externalId",
        "externalPhone", "site", "recordUrl",
    }  # fmt: skip
    job = OutboundJob.objects.get(kind="retailcrm.upload")
    assert job.status == OutboundJob.SENT


@responses.activate
def test_a_call_without_recording_line_site_or_mapping_leaves_those_fields_out(world):
    call = completed_call(
        world.pbx,
        direction="out",
        external_phone="+74998888888",  # shop2's line has no site code for this connection
        rang_extensions=[],
        answered_extensions=[],
        first_answered_extension="",
        last_answered_extension="",
        initiating_extension="300",  # nobody mapped it
        answered_at=None,
        talk_seconds=0,
        wait_seconds=30,
        result="busy",
    )
    upload_jobs(world.crm, [call])
    responses.add(responses.POST, UPLOAD_URL, json=fixture_json("calls_upload_ok.json"))

    run_due()

    [item] = uploaded_calls()
    assert item["type"] == "out"
    assert item["code"] == "300"  # unanswered: the initiating extension
    assert item["result"] == "busy"
    assert item["duration"] == 0 and item["durationWaiting"] == 30
    assert item["externalPhone"] == "+74998888888"
    assert "userId" not in item and "site" not in item and "recordUrl" not in item


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("answered", "answered"),
        ("missed", "no answer"),
        ("cancelled", "no answer"),
        ("busy", "busy"),
        ("no_answer", "no answer"),
        ("not_available", "failed"),
        ("not_allowed", "not allowed"),
        ("failed", "failed"),
        ("unknown", "unknown"),
    ],
)
def test_results_map_to_the_calls_result_enum(world, ours, theirs):
    call = completed_call(world.pbx, result=ours)
    assert world.crm.adapter.upload_item(call)["result"] == theirs


@responses.activate
def test_a_backlog_of_120_calls_goes_in_requests_of_50_50_and_20(world):
    calls = [completed_call(world.pbx, f"pbx-{n:03d}") for n in range(120)]
    upload_jobs(world.crm, calls)
    responses.add_callback(responses.POST, UPLOAD_URL, callback=accept_all)

    for _ in range(3):
        run_due()

    sizes = [len(uploaded_calls(i)) for i in range(len(responses.calls))]
    assert sizes == [50, 50, 20]
    uploaded = [item["externalId"] for i in range(3) for item in uploaded_calls(i)]
    assert sorted(uploaded) == sorted(c.provider_call_id for c in calls)  # each once
    assert OutboundJob.objects.filter(kind="retailcrm.upload", status=OutboundJob.SENT).count() == 120
    # One claim (a task) carried all 120: a claim holds up to 200 uploads, sent as requests of at most 50.
    assert {a.batch_size for j in OutboundJob.objects.all() for a in j.attempt_log.all()} == {120}


@responses.activate
def test_a_backlog_of_450_calls_is_claimed_200_200_50_and_sent_50_a_request(world):
    calls = [completed_call(world.pbx, f"pbx-{n:03d}") for n in range(450)]
    upload_jobs(world.crm, calls)
    responses.add_callback(responses.POST, UPLOAD_URL, callback=accept_all)

    run_due()

    assert [len(uploaded_calls(i)) for i in range(len(responses.calls))] == [50] * 9
    claim_sizes = Counter(JobAttempt.objects.values_list("batch_size", flat=True))  # of each job's attempt
    assert claim_sizes == {200: 400, 50: 50}
    assert OutboundJob.objects.filter(status=OutboundJob.SENT).count() == 450


@responses.activate
def test_after_a_request_fails_for_the_crm_the_claims_next_requests_are_not_sent(world):
    """The first request goes through, the second meets a 503: the third would fail alike, so its calls wait
    for the retry with the second's, and the first's stay sent."""
    calls = [completed_call(world.pbx, f"pbx-{n:03d}") for n in range(120)]
    upload_jobs(world.crm, calls)
    responses.add_callback(responses.POST, UPLOAD_URL, callback=accept_all)
    responses.add(responses.POST, UPLOAD_URL, status=503, json={"success": False, "errorMsg": "Busy"})

    run_due()

    assert len(responses.calls) == 2
    jobs = OutboundJob.objects.filter(kind="retailcrm.upload")
    assert jobs.filter(status=OutboundJob.SENT).count() == 50
    waiting = jobs.filter(status=OutboundJob.PENDING)
    assert waiting.count() == 70
    assert all(job.attempts == 1 and "503" in job.last_error for job in waiting)


@responses.activate
def test_perform_batch_given_more_than_50_still_sends_at_most_50_a_request(world):
    calls = [completed_call(world.pbx, f"pbx-{n:03d}") for n in range(120)]
    upload_jobs(world.crm, calls)
    responses.add_callback(responses.POST, UPLOAD_URL, callback=accept_all)
    jobs = list(OutboundJob.objects.select_related("call", "crm_connection__tenant"))

    results = world.crm.adapter.perform_batch(jobs)

    assert [len(uploaded_calls(i)) for i in range(len(responses.calls))] == [50, 50, 20]
    assert all(isinstance(r, str) for r in results.values()) and len(results) == 120


def reject_bad_phones_by_index(request):
    calls = form_field(request, "calls")
    bad = {
        f"calls[{i}].phone": "This value is not valid."
        for i, c in enumerate(calls)
        if c["phone"] == "+70000000000"
    }
    if bad:
        return (
            400,
            {},
            json.dumps({"success": False, "errorMsg": "Errors in the entity format", "errors": bad}),
        )
    return accept_all(request)


def reject_bad_phones_without_saying_which(request):
    calls = form_field(request, "calls")
    if any(c["phone"] == "+70000000000" for c in calls):
        return 400, {}, json.dumps(fixture_json("calls_upload_validation_list.json"))
    return accept_all(request)


@responses.activate
def test_a_batch_rejected_for_named_items_is_resent_without_them(world):
    calls = [completed_call(world.pbx, f"pbx-{n}") for n in range(3)]
    calls[1].client_phone = "+70000000000"
    calls[1].save()
    upload_jobs(world.crm, calls)
    responses.add_callback(responses.POST, UPLOAD_URL, callback=reject_bad_phones_by_index)

    run_due()

    assert [len(uploaded_calls(i)) for i in range(len(responses.calls))] == [3, 2]
    assert [c["externalId"] for c in uploaded_calls(1)] == ["pbx-0", "pbx-2"]
    jobs = {j.call.provider_call_id: j for j in OutboundJob.objects.select_related("call")}
    assert jobs["pbx-0"].status == jobs["pbx-2"].status == OutboundJob.SENT
    assert jobs["pbx-1"].status == OutboundJob.FAILED
    assert "calls[1].phone: This value is not valid." in jobs["pbx-1"].last_error


@responses.activate
def test_a_batch_rejected_without_naming_items_is_sent_call_by_call(world):
    calls = [completed_call(world.pbx, f"pbx-{n}") for n in range(3)]
    calls[2].client_phone = "+70000000000"
    calls[2].save()
    upload_jobs(world.crm, calls)
    responses.add_callback(responses.POST, UPLOAD_URL, callback=reject_bad_phones_without_saying_which)

    run_due()

    assert [len(uploaded_calls(i)) for i in range(len(responses.calls))] == [3, 1, 1, 1]
    accepted = [uploaded_calls(i)[0]["externalId"] for i in (1, 2)]
    assert accepted == ["pbx-0", "pbx-1"]
    jobs = {j.call.provider_call_id: j for j in OutboundJob.objects.select_related("call")}
    assert jobs["pbx-0"].status == jobs["pbx-1"].status == OutboundJob.SENT
    assert jobs["pbx-2"].status == OutboundJob.FAILED
    assert "Phone is not valid" in jobs["pbx-2"].last_error
    world.crm.refresh_from_db()
    assert world.crm.last_error == ""  # a bad call is not a broken connection


@responses.activate
def test_calls_reported_as_duplicates_count_as_uploaded(world):
    call = completed_call(world.pbx, "pbx-call-1")
    upload_jobs(world.crm, [call])
    responses.add(responses.POST, UPLOAD_URL, json=fixture_json("calls_upload_duplicates.json"))

    run_due()

    job = OutboundJob.objects.get(kind="retailcrm.upload")
    assert job.status == OutboundJob.SENT
    assert "duplicateCalls" in job.last_response


@responses.activate
def test_resending_a_call_uploads_it_again_and_the_duplicate_is_fine(world):
    call = completed_call(world.pbx, "pbx-call-1")
    upload_jobs(world.crm, [call])
    responses.add(responses.POST, UPLOAD_URL, json=fixture_json("calls_upload_ok.json"))
    responses.add(responses.POST, UPLOAD_URL, json=fixture_json("calls_upload_duplicates.json"))
    run_due()

    responses.add(responses.POST, EVENT_URL, json=fixture_json("call_event_ok.json"))  # the resent hang-up
    assert resend_to_crm(call) >= 1
    run_due()

    uploads = [r.request for r in responses.calls if r.request.url == UPLOAD_URL]
    assert [form_field(r, "calls")[0]["externalId"] for r in uploads] == ["pbx-call-1", "pbx-call-1"]
    uploads = OutboundJob.objects.filter(kind="retailcrm.upload")
    assert uploads.count() == 2 and all(j.status == OutboundJob.SENT for j in uploads)


@responses.activate
def test_a_503_is_retried_later_and_then_uploaded(world, settings):
    settings.OUTBOX_TIME_SCALE = 0.0001
    upload_jobs(world.crm, [completed_call(world.pbx)])
    responses.add(
        responses.POST, UPLOAD_URL, status=503, json={"success": False, "errorMsg": "Service unavailable"}
    )
    responses.add(responses.POST, UPLOAD_URL, json=fixture_json("calls_upload_ok.json"))

    run_due()
    job = OutboundJob.objects.get(kind="retailcrm.upload")
    assert job.status == OutboundJob.PENDING and job.last_status == 503 and "rate limit" in job.last_error

    run_due()
    job.refresh_from_db()
    assert job.status == OutboundJob.SENT and job.attempts == 2
    world.crm.refresh_from_db()
    assert world.crm.last_error == ""


@responses.activate
def test_a_wrong_api_key_fails_the_upload_and_flags_the_connection(world):
    upload_jobs(world.crm, [completed_call(world.pbx)])
    responses.add(responses.POST, UPLOAD_URL, status=403, json=fixture_json("error_wrong_api_key.json"))

    run_due()

    job = OutboundJob.objects.get(kind="retailcrm.upload")
    assert job.status == OutboundJob.FAILED and job.attempts == 1
    world.crm.refresh_from_db()
    assert 'Wrong "apiKey" value.' in world.crm.last_error and world.crm.last_error_at is not None
    assert API_KEY not in world.crm.last_error


@responses.activate
def test_telephony_not_enabled_flags_the_connection(world):
    upload_jobs(world.crm, [completed_call(world.pbx)])
    responses.add(responses.POST, UPLOAD_URL, status=400, json=fixture_json("calls_upload_not_enabled.json"))

    run_due()

    world.crm.refresh_from_db()
    assert "Telephony not enabled" in world.crm.last_error


def test_immediate_uploads_are_due_now(world):
    call = completed_call(world.pbx)
    [spec] = [
        s
        for s in world.crm.adapter.jobs_for(call, [Notice("completed", "~2", "100")])
        if s.kind.endswith("upload")
    ]
    assert spec.due_at is None and spec.dedupe_key == f"upload:{call.pk}"


def test_periodic_uploads_are_due_at_the_next_interval_boundary_so_they_go_together(world):
    crm = retailcrm_connection(
        world.tenant, "periodic", upload_strategy="periodic", upload_interval_minutes=10
    )
    calls = [completed_call(world.pbx, f"pbx-{n}") for n in range(3)]
    before = timezone.now()
    due = {
        s.due_at
        for call in calls
        for s in crm.adapter.jobs_for(call, [Notice("completed", "~2", "100")])
        if s.kind == "retailcrm.upload"
    }
    [due_at] = due
    assert due_at.timestamp() % 600 == 0
    assert before < due_at <= before + dt.timedelta(minutes=10)


def test_without_events_only_the_upload_is_queued(world):
    crm = retailcrm_connection(world.tenant, "quiet", send_events=False)
    call = completed_call(world.pbx)
    kinds = [s.kind for s in crm.adapter.jobs_for(call, [Notice("completed", "~2", "100")])]
    assert kinds == ["retailcrm.upload"]


def test_a_recording_that_became_unavailable_is_not_linked(world):
    call = completed_call(world.pbx, recording_expected=True)
    Recording.objects.filter(call=call).update(state=Recording.UNAVAILABLE)
    call.refresh_from_db()
    assert "recordUrl" not in world.crm.adapter.upload_item(call)

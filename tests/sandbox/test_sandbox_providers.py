"""The sandbox PBX and CRM through the inbound view and the outbox (relay passes run inline here; the scenario
contract tests in test_scenarios.py use a live server and a real worker)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from calls.models import Call, OutboundJob, Recording, RoutingDecision
from integrations.providers.base import get_provider
from integrations.providers.sandbox.models import SandboxCall, SandboxMessage
from integrations.simulation import default_options
from tests.sandbox.conftest import CALLER, post_simulated, run_due

pytestmark = pytest.mark.django_db


def test_an_answered_sandbox_call_reaches_the_sandbox_inbox_with_its_recording(
    client, tenant, pbx, crm, recordings_in_tmp
):
    requests = get_provider(pbx).simulate("answered", default_options(tenant, fast=True, extension="102"))
    answers = []
    for item in requests:  # the relay runs between webhooks, as it would while the call goes on
        answers += post_simulated(client, [item])
        run_due(2)
    assert answers[0].json() == {"extension": "102", "name": "Ivan Petrov"}  # the routing table answered
    run_due()

    call = Call.objects.get(pbx_connection=pbx)
    assert (call.result, call.last_answered_extension, call.client_phone, call.talk_seconds) == (
        "answered",
        "102",
        CALLER,
        8,
    )
    assert RoutingDecision.objects.get(call=call).extension == "102"
    recording = Recording.objects.get(call=call)
    assert recording.state == Recording.STORED and recording.content_type == "audio/wav"
    kinds = list(
        SandboxMessage.objects.filter(crm_connection=crm).order_by("id").values_list("kind", flat=True)
    )
    assert kinds == ["routing", "popup", "popup", "completed", "history", "recording"]
    link = SandboxMessage.objects.get(kind="recording").data["link"]
    assert link == recording.public_url
    assert not OutboundJob.objects.exclude(status=OutboundJob.SENT).exists()


def test_signatures_are_checked_and_bad_input_is_the_providers_own_400(client, pbx):
    body = json.dumps({"call_id": "x", "seq": 1, "event": "ringing"}).encode()
    url = f"/hooks/sandbox_pbx/{pbx.public_id}/events"
    response = client.post(
        url, data=body, content_type="application/json", headers={"X-Sandbox-Signature": "0" * 64}
    )
    assert response.status_code == 403 and response.json() == {"ok": False, "error": "Invalid signature"}
    headers = get_provider(pbx).signed_headers(body)
    response = client.post(url, data=body, content_type="application/json", headers=headers)
    assert response.status_code == 400 and response.json()["ok"] is False
    assert not Call.objects.exists()


def test_refused_when_sandbox_is_disabled(client, settings, tenant, pbx, crm):
    requests = get_provider(pbx).simulate("missed", default_options(tenant, fast=True))
    settings.SANDBOX_ENABLED = False
    response = client.post(
        requests[1].path, data=requests[1].body, content_type="application/json", headers=requests[1].headers
    )
    assert response.status_code == 403 and "SANDBOX_ENABLED" in response.json()["error"]
    assert get_provider(pbx).check_connection().ok is False
    assert get_provider(crm).check_connection().ok is False
    assert client.get(f"/sandbox/pbx/{pbx.public_id}/directory").status_code == 404


def test_click_to_call_plays_the_call_through_the_inbound_view(client, tenant, pbx, crm, recordings_in_tmp):
    from django.utils import timezone

    from calls.services import originate

    outcome = originate(tenant, "101", "+79161234567", crm_connection=crm)
    assert outcome.ok, outcome.error
    plays = OutboundJob.objects.filter(kind="sandbox_pbx.play").order_by("due_at")
    assert [job.payload["description"] for job in plays] == [
        "ringing 101",
        "answered 101",
        "leg_ended 101",
        "ended",
    ]
    assert plays.last().due_at - plays.first().due_at == dt.timedelta(seconds=13)
    # The PBX sends each webhook when it would: here they are made due now rather than waited for.
    for job in plays:
        OutboundJob.objects.filter(pk=job.pk).update(next_attempt_at=timezone.now())
        run_due(2)
    # ... and so is the PBX's clock: the call it planned has ended, its recording is ready.
    played = SandboxCall.objects.get(call_id=outcome.correlation_id)
    played.plan["ended_at"] = timezone.now().isoformat()
    played.recording_ready_at = None
    played.save()
    OutboundJob.objects.filter(kind="sandbox_pbx.call_details").update(next_attempt_at=timezone.now())
    run_due()
    call = Call.objects.get(provider_call_id=outcome.correlation_id)
    assert (call.direction, call.result, call.initiating_extension, call.client_phone) == (
        "out",
        "answered",
        "101",
        "+79161234567",
    )
    assert call.originate_request_id == outcome.request.pk
    assert Recording.objects.get(call=call).state == Recording.STORED
    assert [job.status for job in plays.all()] == [OutboundJob.SENT] * 4


def test_an_extension_the_pbx_does_not_know_is_refused(tenant, pbx, crm):
    from calls.services import originate
    from integrations.models import Extension

    Extension.objects.create(tenant=tenant, number="555")
    outcome = originate(tenant, "555", "+79161234567", crm_connection=crm)
    assert not outcome.ok and outcome.code == "pbx_refused"
    assert not OutboundJob.objects.filter(kind="sandbox_pbx.play").exists()


def test_the_pbx_api_answers_under_sandbox(client, tenant, pbx):
    get_provider(pbx).simulate("answered", default_options(tenant, fast=True, call_id="sim-api-1"))
    headers = {"X-Sandbox-Key": "sandbox-signing-key-0123456789"}
    assert client.get(f"/sandbox/pbx/{pbx.public_id}/directory").status_code == 403
    users = client.get(f"/sandbox/pbx/{pbx.public_id}/directory", headers=headers).json()["users"]
    assert [u["extension"] for u in users] == ["101", "102", "103"]
    details = client.get(f"/sandbox/pbx/{pbx.public_id}/calls/sim-api-1", headers=headers).json()["call"]
    assert (
        details["state"] == "completed" and details["result"] == "answered" and details["talk_seconds"] == 8
    )
    audio = client.get(f"/sandbox/pbx/{pbx.public_id}/recordings/sim-api-1", headers=headers)
    assert audio.status_code == 200 and audio["Content-Type"] == "audio/wav" and audio.content[:4] == b"RIFF"


def test_reconcile_answers_from_the_pbxs_memory(client, tenant, pbx, crm):
    from django.utils import timezone

    requests = get_provider(pbx).simulate("transfer", default_options(tenant, fast=True, call_id="sim-rec-1"))
    post_simulated(client, [r for r in requests if b'"ended"' not in r.body])  # the end never arrived
    call = Call.objects.get(provider_call_id="sim-rec-1")
    result = get_provider(pbx).reconcile(call)
    assert result.status == "completed" and result.events[-1].final
    assert (result.events[-1].outcome, result.events[-1].talk_seconds) == ("answered", 15)

    played = SandboxCall.objects.get(call_id="sim-rec-1")
    played.plan["ended_at"] = (timezone.now() + dt.timedelta(minutes=1)).isoformat()
    played.save()
    assert get_provider(pbx).reconcile(call).status == "live"
    played.delete()
    assert get_provider(pbx).reconcile(call).status == "unknown"


def test_check_connection_reports_the_far_end(tenant, pbx, crm):
    pbx_check, crm_check = get_provider(pbx).check_connection(), get_provider(crm).check_connection()
    assert pbx_check.ok and "3 users in its directory" in pbx_check.summary
    assert crm_check.ok and "1 routing-table rows" in crm_check.summary


def test_recordings_are_mp3_when_a_crm_plays_only_mp3(tenant, pbx, crm):
    from integrations.providers.sandbox import farend
    from tests.factories import CrmConnectionFactory

    get_provider(pbx).simulate("answered", default_options(tenant, fast=True, call_id="sim-mp3"))
    SandboxCall.objects.filter(call_id="sim-mp3").update(recording_ready_at=None)
    assert farend.recording(pbx, "sim-mp3")[1] == "audio/wav"
    CrmConnectionFactory(tenant=tenant, provider="wirecrm")
    content, content_type = farend.recording(pbx, "sim-mp3")
    assert content_type == "audio/mpeg"
    assert content[0] == 0xFF and content[1] & 0xE0 == 0xE0  # an MPEG audio frame starts the file
    assert len(content) > 1000

"""The sandbox PBX and CRM through the inbound view and the outbox (relay passes run inline here; the scenario
contract tests in test_scenarios.py use a live server and a real worker)."""

from __future__ import annotations

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


def test_click_to_call_plays_the_call_through_the_inbound_view(
    client, tenant, pbx, crm, recordings_in_tmp, settings
):
    from calls.services import originate

    outcome = originate(tenant, "101", "+79161234567", crm_connection=crm)
    assert outcome.ok, outcome.error
    plays = OutboundJob.objects.filter(kind="sandbox_pbx.play")
    assert plays.count() == 4
    # The PBX sends each webhook when it would: make them all due now rather than wait the call's length.
    from django.utils import timezone

    plays.update(next_attempt_at=timezone.now(), due_at=timezone.now())
    SandboxCall.objects.filter(call_id=outcome.correlation_id).update(recording_ready_at=None)
    run_due()
    plays.update(next_attempt_at=timezone.now())
    call = Call.objects.get(provider_call_id=outcome.correlation_id)
    run_due()
    call.refresh_from_db()
    assert call.direction == "out" and call.originate_request_id == outcome.request.pk
    assert call.initiating_extension == "101" and call.client_phone == "+79161234567"


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

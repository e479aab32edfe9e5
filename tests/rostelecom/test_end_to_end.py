"""A whole call through real adapters: a signed Rostelecom webhook in, Planfix messages out.

Rostelecom posts the seed's call events; the portal answers at once, asks call_info after `end`, fetches the
recording with a fresh get_record link, and Planfix receives COMPLETED (with is_recorded=1) and then `record`
with the portal's permanent link. Only HTTP is faked (`responses`); the relay and the adapters are real.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
import responses
from django.core.files.storage import FileSystemStorage

from calls.models import Call, OutboundJob, Recording
from tests.factories import CrmConnectionFactory
from tests.rostelecom.conftest import API, load, post_all, run_due

pytestmark = pytest.mark.django_db

PLANFIX_URL = "https://acme.planfix.ru/tel/api"
RECORD_URL = "https://api.cloudpbx.rt.ru/records_new_scheme/record/download/8d1ba7d5c2ad4e0f9a3c/188254033084"
MP3 = b"ID3" + b"\x00" * 2000


@pytest.fixture
def recordings_in_tmp(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": f"{FileSystemStorage.__module__}.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }


def planfix_messages() -> list[dict[str, str]]:
    return [
        {k: v[0] for k, v in parse_qs(call.request.body).items()}
        for call in responses.calls
        if call.request.url.startswith(PLANFIX_URL)
    ]


@responses.activate
def test_an_answered_recorded_rostelecom_call_reaches_planfix_with_its_recording(
    client, tenant, pbx, extensions, recordings_in_tmp
):
    planfix = CrmConnectionFactory(tenant=tenant, provider="planfix", settings={"api_url": PLANFIX_URL})
    responses.add(responses.POST, f"{API}/call_info", json=load("call_info_incoming_answered.json"))
    responses.add(responses.POST, f"{API}/get_record", json=load("get_record.json"))
    responses.add(responses.GET, RECORD_URL, body=MP3, content_type="audio/mpeg")
    responses.add(responses.POST, PLANFIX_URL, json={})

    post_all(client, pbx, load("incoming_answered.json"))
    assert not [c for c in responses.calls], "the webhooks sent nothing themselves"
    for _ in range(10):
        run_due()

    call = Call.objects.get(provider_call_id="SDsnZugDFmTW7Sec")
    assert (call.result, call.last_answered_extension, call.client_phone) == (
        "answered",
        "101",
        "+79161234567",
    )
    recording = Recording.objects.get(call=call)
    assert recording.state == Recording.STORED and recording.content_type == "audio/mpeg"

    sent = planfix_messages()
    completed = [m for m in sent if m.get("cmd") == "event" and m.get("event") == "COMPLETED"]
    records = [m for m in sent if m.get("cmd") == "record"]
    assert len(completed) == 1 and len(records) == 1
    assert completed[0]["status"] == "Success" and completed[0]["is_recorded"] == "1"
    assert completed[0]["ext"] == "101" and completed[0]["phone"] == "79161234567"
    assert completed[0]["planfix_token"] == planfix.secrets["planfix_token"]
    assert records[0]["record_link"] == recording.public_url and records[0]["is_temp"] == "0"
    assert sent.index(completed[0]) < sent.index(records[0])
    assert not OutboundJob.objects.filter(status=OutboundJob.PENDING).exists()

    response = client.get(f"/records/{recording.token}")
    assert response.status_code == 200 and b"".join(response.streaming_content) == MP3

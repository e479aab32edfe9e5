"""A whole call through real adapters: signed Mango webhooks in, WireCRM NOTIFY_* webhooks out.

The seed scenario "incoming call through the IVR to an employee" arrives at the real endpoint; the IVR leg
makes the portal ask WireCRM (NOTIFY_START, synchronously, since Mango gives the call id) and route the call;
the summary and the recording outcome make the call final; the recording is fetched through
queries/recording/post; WireCRM receives its messages in order and NOTIFY_RECORD with the permanent link.
Only HTTP is faked (`responses`); the relay and both adapters are real.
"""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP

import pytest
import responses
from django.core.files.storage import FileSystemStorage

from calls.models import Call, OutboundJob, Recording
from calls.outbox import relay, run_claim
from tests.factories import CrmConnectionFactory
from tests.mango.support import API_URL, deliver, load

pytestmark = pytest.mark.django_db

WEBHOOK = "https://acme.wirecrm.com/api/pbx/hook/abc"
DOWNLOAD = "https://download.mango-office.ru/rec/once/abc.mp3"
MP3 = b"ID3" + b"\x00" * 2000


def multipart_fields(request) -> dict[str, str]:
    content_type = request.headers["Content-Type"]
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_content()
        for part in message.iter_parts()
    }


@responses.activate
def test_an_ivr_call_answered_by_an_employee_reaches_wirecrm_with_its_recording(
    client, tenant, pbx, extensions, settings, tmp_path
):
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": f"{FileSystemStorage.__module__}.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    CrmConnectionFactory(tenant=tenant, provider="wirecrm")
    responses.add(responses.POST, WEBHOOK, json={})
    responses.add(responses.POST, f"{API_URL}/commands/route", json={"result": 1000})
    responses.add(
        responses.POST, f"{API_URL}/queries/recording/post", status=302, headers={"Location": DOWNLOAD}
    )
    responses.add(responses.GET, DOWNLOAD, body=MP3, content_type="audio/mpeg")

    deliver(client, pbx, load("incoming_ivr_to_employee.json")["webhooks"])
    for _ in range(12):
        relay(publish=lambda owner, ids: run_claim(owner, ids))

    call = Call.objects.get()
    assert (call.result, call.last_answered_extension) == ("answered", "101")
    recording = Recording.objects.get(call=call)
    assert recording.state == Recording.STORED

    sent = [multipart_fields(c.request) for c in responses.calls if c.request.url == WEBHOOK]
    events = [m["event"] for m in sent]
    assert events[0] == "NOTIFY_START"
    assert events.count("NOTIFY_START") == 1
    assert "NOTIFY_END" in events and events[-1] == "NOTIFY_RECORD"
    end = sent[events.index("NOTIFY_END")]
    assert (end["internal"], end["disposition"], end["pbx_call_id"]) == (
        "101",
        "answered",
        call.provider_call_id,
    )
    assert sent[-1]["record_link"] == recording.public_url
    opening = {"NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_OUT_START"}
    assert not opening & set(events[events.index("NOTIFY_END") :])
    assert not OutboundJob.objects.filter(
        status__in=[OutboundJob.PENDING, OutboundJob.FAILED, OutboundJob.DEAD]
    ).exists()

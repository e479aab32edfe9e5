"""Issue 16 item 7: a caller who withheld their number, from Rostelecom's seed-shaped events to every CRM. Each
CRM gets what its documentation allows for "no number" (docs/providers/*.md), and nothing fails."""

from __future__ import annotations

import pytest
import responses

from calls.models import Call, OutboundJob
from tests.factories import CrmConnectionFactory
from tests.rostelecom.conftest import API, load, post_all, run_due
from tests.rostelecom.test_transfer_end_to_end import (
    PLANFIX_URL,
    RETAILCRM,
    WIRECRM_URL,
    form,
    retail_document,
    sent,
)
from tests.test_wirecrm import multipart_fields

pytestmark = pytest.mark.django_db

WITHHELD = "sip:anonymous@anonymous.invalid"  # what a SIP trunk writes for a withheld caller id (RFC 3323)


def anonymous_call() -> list[dict]:
    events = load("incoming_answered.json")
    return [{**e, "from_number": WITHHELD} for e in events]


@responses.activate
def test_an_anonymous_call_reaches_every_crm_without_failing(client, tenant, pbx, extensions):
    CrmConnectionFactory(tenant=tenant, provider="planfix", key="pf", settings={"api_url": PLANFIX_URL})
    CrmConnectionFactory(
        tenant=tenant,
        provider="retailcrm",
        key="rc",
        settings={"account_url": RETAILCRM},
        secrets={"api_key": "rc-key", "client_id": "rc-client"},
    )
    CrmConnectionFactory(
        tenant=tenant, provider="wirecrm", key="wc", secrets={"webhook_url": WIRECRM_URL, "pbx_token": "t"}
    )
    info = load("call_info_incoming_answered.json")
    info["info"] = {**info["info"], "orig_number": WITHHELD, "is_record": False}
    responses.add(responses.POST, f"{API}/call_info", json=info)
    responses.add(responses.POST, PLANFIX_URL, json={})
    responses.add(responses.POST, f"{RETAILCRM}/api/v5/telephony/call/event", json={"success": True})
    responses.add(
        responses.POST,
        f"{RETAILCRM}/api/v5/telephony/calls/upload",
        json={"success": True, "processedCallsCount": 1, "duplicateCalls": []},
    )
    responses.add(responses.POST, WIRECRM_URL, body="", status=200)

    for event in anonymous_call():
        post_all(client, pbx, [{**event, "is_record": "false"}])
        run_due()
    for _ in range(10):
        run_due()

    call = Call.objects.get()
    assert (call.client_phone, call.direction, call.result) == ("", "in", "answered")
    assert (
        not OutboundJob.objects.exclude(status=OutboundJob.SENT)
        .exclude(kind__endswith="popup")
        .filter(status__in=[OutboundJob.FAILED, OutboundJob.DEAD, OutboundJob.PENDING])
        .exists()
    )

    planfix = [form(r) for r in sent(PLANFIX_URL)]
    assert planfix and {m["phone"] for m in planfix if m["cmd"] == "event"} == {"anonymous"}

    events = [
        doc for _, doc in (retail_document(r) for r in sent(f"{RETAILCRM}/api/v5/telephony/call/event"))
    ]
    assert events and {e["phone"] for e in events} == {"anonymous"}
    ((_, items),) = [retail_document(r) for r in sent(f"{RETAILCRM}/api/v5/telephony/calls/upload")]
    assert items[0]["phone"] == "anonymous" and items[0]["result"] == "answered"

    wirecrm = [multipart_fields(r) for r in sent(WIRECRM_URL)]
    assert (wirecrm[0]["event"], wirecrm[-1]["event"]) == ("NOTIFY_START", "NOTIFY_END")
    assert {m["caller_id"] for m in wirecrm if "caller_id" in m} == {"0"}

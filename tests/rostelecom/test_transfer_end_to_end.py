"""Issue 16: a transferred call end to end. Rostelecom's signed call_events (the seed's shape: 101 answers, the
call is transferred to 102) reach Planfix, RetailCRM and WireCRM through the real pipeline and relay; only HTTP is
faked. Both employees who talked get a completion of their own; the call's history names the last one."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest
import responses

from calls.models import Call, OutboundJob
from tests.factories import CrmConnectionFactory
from tests.rostelecom.conftest import API, load, post_all, run_due
from tests.test_wirecrm import multipart_fields

pytestmark = pytest.mark.django_db

PLANFIX_URL = "https://acme.planfix.ru/tel/api"
RETAILCRM = "https://acme.retailcrm.ru"
WIRECRM_URL = "https://acme.wirecrm.com/api/pbx/hook/5f1d0c9e7a"


def transfer_events() -> list[dict]:
    """incoming_transfer.json, without a recording (the recording path has its own end-to-end test)."""
    events = load("incoming_transfer.json")
    events[-1] = {**events[-1], "is_record": "false"}
    return events


def call_info_answer() -> dict:
    answer = load("call_info_incoming_transfer.json")
    answer["info"] = {**answer["info"], "is_record": False}
    return answer


def sent(url: str) -> list:
    return [c.request for c in responses.calls if c.request.url.startswith(url)]


def form(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.body).items()}


def retail_document(request) -> tuple[str, object]:
    fields = parse_qs(request.body if isinstance(request.body, str) else request.body.decode())
    (name,) = fields
    return name, json.loads(fields[name][0])


@responses.activate
def test_a_transferred_call_closes_both_employees_cards_in_every_crm(client, tenant, pbx, extensions):
    CrmConnectionFactory(
        tenant=tenant, provider="planfix", key="pf", priority=1, settings={"api_url": PLANFIX_URL}
    )
    CrmConnectionFactory(
        tenant=tenant,
        provider="retailcrm",
        key="rc",
        priority=2,
        settings={"account_url": RETAILCRM},
        secrets={"api_key": "rc-key", "client_id": "rc-client"},
    )
    CrmConnectionFactory(
        tenant=tenant,
        provider="wirecrm",
        key="wc",
        priority=3,
        secrets={"webhook_url": WIRECRM_URL, "pbx_token": "wc-token"},
    )
    responses.add(responses.POST, f"{API}/call_info", json=call_info_answer())
    responses.add(responses.POST, PLANFIX_URL, json={})
    responses.add(responses.POST, f"{RETAILCRM}/api/v5/telephony/call/event", json={"success": True})
    responses.add(
        responses.POST,
        f"{RETAILCRM}/api/v5/telephony/calls/upload",
        json={"success": True, "processedCallsCount": 1, "duplicateCalls": []},
    )
    responses.add(responses.POST, WIRECRM_URL, body="", status=200)

    for event in transfer_events():  # the relay runs between webhooks, as it does live
        post_all(client, pbx, [event])
        run_due()
    for _ in range(12):
        run_due()

    call = Call.objects.get(provider_call_id="transfer-0001")
    assert (call.result, call.answered_extensions, call.last_answered_extension) == (
        "answered",
        ["101", "102"],
        "102",
    )
    assert not OutboundJob.objects.filter(status=OutboundJob.PENDING).exists()

    # Planfix: ACCEPTED for both; each gets a COMPLETED: 101's closes its card (Cancelled, its own 35 s of
    # talk, no recording, no analytics), 102's is the call's own (Success, the call's talk time).
    planfix = [form(r) for r in sent(PLANFIX_URL)]
    accepted = sorted(m["ext"] for m in planfix if m.get("event") == "ACCEPTED")
    completed = {m["ext"]: m for m in planfix if m.get("event") == "COMPLETED"}
    assert accepted == ["101", "102"]
    assert set(completed) == {"101", "102"}
    assert (completed["101"]["status"], completed["101"]["duration"], completed["101"]["is_recorded"]) == (
        "Cancelled",
        "35",
        "0",
    )
    assert completed["102"]["status"] == "Success"
    assert completed["102"]["duration"] == str(call.talk_seconds)
    assert all(m["callid"] == "transfer-0001" for m in completed.values())

    # RetailCRM: a hangup event for each employee who talked (no history entry), and one history upload naming
    # the last one.
    events = [retail_document(r) for r in sent(f"{RETAILCRM}/api/v5/telephony/call/event")]
    hangups = [doc for name, doc in events if name == "event" and doc["type"] == "hangup"]
    assert sorted(code for doc in hangups for code in doc["codes"]) == ["101", "102"]
    assert {doc["hangupStatus"] for doc in hangups} == {"answered"}
    uploads = [retail_document(r) for r in sent(f"{RETAILCRM}/api/v5/telephony/calls/upload")]
    assert len(uploads) == 1
    (item,) = uploads[0][1]
    assert (item["externalId"], item["code"], item["result"]) == ("transfer-0001", "102", "answered")

    # WireCRM: one NOTIFY_START, one NOTIFY_END naming the last employee (a second END of one pbx_call_id
    # would risk a second history entry; see docs/providers/wirecrm.md).
    wirecrm = [multipart_fields(r) for r in sent(WIRECRM_URL)]
    kinds = [m["event"] for m in wirecrm]
    assert kinds.count("NOTIFY_START") == 1 and kinds.count("NOTIFY_END") == 1
    end = next(m for m in wirecrm if m["event"] == "NOTIFY_END")
    assert (end["internal"], end["disposition"], end["pbx_call_id"]) == ("102", "answered", "transfer-0001")

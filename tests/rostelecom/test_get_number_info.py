"""get_number_info: "whose caller is this", answered within routing_budget_ms, always result 0, in both body
shapes; the decision is stored and attached to the call when its `new` arrives."""

from __future__ import annotations

import json
import time
import zoneinfo

import pytest
from django.utils import timezone

from calls.models import Call, CallEvent, RoutingDecision
from tests.factories import CrmConnectionFactory
from tests.rostelecom.conftest import CLIENT_ID, load, post, post_all, sign

pytestmark = pytest.mark.django_db


def crm_answering(tenant, answer, delay=0):
    return CrmConnectionFactory(
        tenant=tenant,
        provider="fakecrm",
        key="crm",
        settings={"answer": answer, "delay": delay},
        secrets={"token": "t"},
    )


@pytest.fixture
def crm(tenant, fake_crm_registered):
    return crm_answering(tenant, {"extension": "102", "display_name": "Иванов Иван Иванович"})


def test_the_guides_body_gets_the_crms_pin_and_display_name(client, pbx, extensions, crm):
    response = post(client, pbx, "get_number_info", load("get_number_info_guide.json"))

    assert response.status_code == 200
    assert response.json() == {
        "result": 0,
        "resultMessage": "Caller found",
        "displayName": "Иванов Иван Иванович",
        "PIN": "102",
    }
    assert response.content.isascii(), "ASCII-only JSON, like everything we sign"
    assert response["X-Client-ID"] == CLIENT_ID and response["X-Client-Sign"] == sign(response.content)
    decision = RoutingDecision.objects.get()
    assert (decision.caller, decision.did, decision.extension, decision.source) == (
        "+79161234567",
        "+74992222222",
        "102",
        "crm",
    )
    assert decision.pbx_connection == pbx and decision.call is None


def moscow_now() -> str:
    """The PBX's wall-clock form of "now": the guide's body carries no session id, so the match is by time."""
    return timezone.now().astimezone(zoneinfo.ZoneInfo("Europe/Moscow")).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def test_the_decision_is_attached_to_the_call_when_its_new_event_arrives(client, pbx, extensions, crm):
    post(client, pbx, "get_number_info", load("get_number_info_guide.json"))
    new = {**load("incoming_answered.json")[0], "timestamp": moscow_now()}
    post_all(client, pbx, [new])

    call = Call.objects.get()
    assert list(call.routing_decisions.values_list("extension", flat=True)) == ["102"]
    assert call.responsible_extension == "102", "routed, not yet answered"


def test_the_seeds_call_events_shaped_body_is_accepted_and_keyed_by_session_id(client, pbx, extensions):
    # No CRM: the extension that last talked with this number answers (history fallback).
    previous = Call.objects.create(
        tenant=pbx.tenant,
        pbx_connection=pbx,
        provider_call_id="earlier-call",
        direction="in",
        client_phone="+79161234567",
        last_answered_extension="103",
    )
    assert previous.pk

    response = post(client, pbx, "get_number_info", load("get_number_info_seed.json"))

    assert response.status_code == 200
    assert response.json() == {"result": 0, "resultMessage": "Caller found", "PIN": "103"}
    decision = RoutingDecision.objects.get()
    assert (decision.provider_call_id, decision.source, decision.did) == (
        "SDsnZugDFmTW7Sec",
        "history",
        "+74992222222",
    )
    post_all(client, pbx, load("incoming_answered.json")[:1])
    decision.refresh_from_db()
    assert decision.call == Call.objects.get(provider_call_id="SDsnZugDFmTW7Sec")


def test_a_decision_asked_after_the_call_exists_belongs_to_it_at_once(client, pbx, extensions, crm):
    post_all(client, pbx, load("incoming_answered.json")[:1])
    post(client, pbx, "get_number_info", load("get_number_info_seed.json"))
    assert RoutingDecision.objects.get().call == Call.objects.get()


def test_an_unknown_caller_gets_result_0_without_pin(client, pbx, extensions):
    response = post(client, pbx, "get_number_info", load("get_number_info_guide.json"))
    assert response.status_code == 200
    assert response.json() == {"result": 0, "resultMessage": "Caller unknown"}
    assert RoutingDecision.objects.get().source == "none"


def test_a_slow_crm_does_not_hold_the_pbx_past_its_budget(client, pbx, extensions, fake_crm_registered):
    crm_answering(pbx.tenant, {"extension": "102"}, delay=3)
    pbx.settings = {**pbx.settings, "routing_budget_ms": 300}
    pbx.save()

    started = time.monotonic()
    response = post(client, pbx, "get_number_info", load("get_number_info_guide.json"))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json() == {"result": 0, "resultMessage": "Caller unknown"}
    assert elapsed < 2, "answered long before the CRM's 3 s"
    assert RoutingDecision.objects.get().detail["late"] == ["crm"]


def test_a_pin_the_tenant_does_not_have_is_not_passed_to_the_pbx(
    client, pbx, extensions, fake_crm_registered
):
    crm_answering(pbx.tenant, {"extension": "999", "display_name": "Петров"})
    response = post(client, pbx, "get_number_info", load("get_number_info_guide.json"))
    assert response.json() == {"result": 0, "resultMessage": "Caller found", "displayName": "Петров"}


@pytest.mark.parametrize("caller", ["", "anonymous", "sip:anonymous@anonymous.invalid", "123"])
def test_a_caller_without_a_phone_number_gets_result_0_and_no_decision(client, pbx, caller):
    body = {**load("get_number_info_guide.json"), "from_number": caller}
    response = post(client, pbx, "get_number_info", body)
    assert response.status_code == 200
    assert response.json() == {"result": 0, "resultMessage": "Caller unknown"}
    assert not RoutingDecision.objects.exists()


def test_a_routing_failure_is_still_a_result_0_answer(client, pbx, extensions, monkeypatch):
    # The one seam mocked here is the routing service breaking, to prove the PBX never sees a 5xx.
    from integrations.providers.rostelecom import RostelecomProvider

    def broken(self, *args):
        raise RuntimeError("database gone")

    monkeypatch.setattr(RostelecomProvider, "resolve_caller", broken)
    response = post(client, pbx, "get_number_info", load("get_number_info_guide.json"))
    assert response.status_code == 200 and response.json() == {"result": 0, "resultMessage": "Caller unknown"}


@pytest.mark.parametrize("body", [b'{"from_number": ', b"[1, 2]", b"\xff\xfe not json"])
def test_malformed_get_number_info_is_answered_in_shape_without_a_pin_and_stores_nothing(client, pbx, body):
    # Issue 16 item 5: a 400 would leave the PBX waiting for a routing answer it can use; `result: 0` without
    # a PIN makes it route the call by its own rules at once.
    response = post(client, pbx, "get_number_info", body)
    assert response.status_code == 200 and response.json() == {"result": 0, "resultMessage": "Caller unknown"}
    assert response["X-Client-Sign"]
    assert not (RoutingDecision.objects.exists() or CallEvent.objects.exists())


@pytest.mark.parametrize(
    "body",
    [b'{"from_number": ', b'{"from_number": "+7916\\u0000"}', b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}"],
    ids=["truncated", "nul", "deep-nesting"],
)
def test_malformed_get_number_info_is_answered_200_result_0_and_stores_nothing(client, pbx, body):
    """Issue 15: bad input on the routing question gets no PIN, so the PBX routes by its own rules."""
    response = post(client, pbx, "get_number_info", body)
    assert response.status_code == 200 and response.json() == {"result": 0, "resultMessage": "Caller unknown"}
    assert not (RoutingDecision.objects.exists() or CallEvent.objects.exists())


def test_get_number_info_stores_no_call_event(client, pbx, extensions):
    post(client, pbx, "get_number_info", json.dumps(load("get_number_info_seed.json")).encode())
    assert not Call.objects.exists() and not CallEvent.objects.exists()

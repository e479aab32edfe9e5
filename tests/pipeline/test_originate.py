"""Click-to-call plumbing: `originate()` stores the request, asks the PBX and answers with a typed outcome; the
call the PBX then reports is attached to the request by correlation id or by extension + number."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
import requests
import responses
from django.utils import timezone

from calls.models import Call, OriginateRequest
from calls.processor import ingest
from calls.services import MATCH_WINDOW, originate
from tests.factories import PbxConnectionFactory
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db

PBX_URL = "https://pbx.example.test"
PBX_CALL_URL = f"{PBX_URL}/call"
CLIENT = "+79161234567"  # the client phone every fake PBX event carries


@pytest.fixture
def pbx(tenant):
    return PbxConnectionFactory(
        tenant=tenant, provider="fakepbx", settings={"api_url": PBX_URL}, secrets={"token": "pbx-token-123"}
    )


def pbx_accepts(correlation_id: str) -> None:
    responses.add(responses.POST, PBX_CALL_URL, json={"id": correlation_id}, status=200)


def outgoing(call_id: str, seq: int, kind: str, **fields) -> dict:
    return {"call": call_id, "kind": kind, "seq": seq, "direction": "out", **fields}


def event_at(item: dict, when: dt.datetime):
    """A fake PBX event that happened at `when` (the fake's own clock is a fixed date)."""
    return dataclasses.replace(to_event(item), timestamp=when)


# ---- the outcome --------------------------------------------------------------------------------------


@responses.activate
def test_accepted_originate_returns_the_correlation_id_and_stores_it(tenant, pbx, crm, extensions):
    pbx_accepts("corr-1")

    outcome = originate(tenant, "101", "8 (916) 123-45-67", crm_connection=crm, crm_user_id="u7")

    assert outcome.ok and outcome.correlation_id == "corr-1" and outcome.code == ""
    [sent] = responses.calls
    assert sent.request.url == PBX_CALL_URL
    assert json.loads(sent.request.body) == {"ext": "101"}
    request = OriginateRequest.objects.get()
    assert request == outcome.request
    assert request.correlation_id == "corr-1"
    assert request.status == OriginateRequest.OK
    assert (request.extension, request.phone, request.crm_connection, request.crm_user_id) == (
        "101",
        CLIENT,
        crm,
        "u7",
    )


@responses.activate
def test_unknown_extension_is_refused_without_asking_the_pbx(tenant, pbx, extensions):
    outcome = originate(tenant, "555", CLIENT)

    assert not outcome.ok and outcome.code == "unknown_extension"
    assert "555" in outcome.error
    assert len(responses.calls) == 0
    assert not OriginateRequest.objects.exists()


@responses.activate
@pytest.mark.parametrize("phone", ["", "hello", "12"])
def test_a_number_that_is_not_a_phone_is_a_bad_number(tenant, pbx, extensions, phone):
    outcome = originate(tenant, "101", phone)

    assert not outcome.ok and outcome.code == "bad_number"
    assert len(responses.calls) == 0


@responses.activate
def test_a_bad_external_number_is_a_bad_number_too(tenant, pbx, extensions):
    outcome = originate(tenant, "101", CLIENT, external_phone="not a DID")

    assert not outcome.ok and outcome.code == "bad_number"
    assert len(responses.calls) == 0


def test_a_tenant_without_an_active_pbx_gets_no_pbx(tenant, extensions):
    PbxConnectionFactory(tenant=tenant, provider="fakepbx", settings={"api_url": PBX_URL}, active=False)

    outcome = originate(tenant, "101", CLIENT)

    assert not outcome.ok and outcome.code == "no_pbx"
    assert not OriginateRequest.objects.exists()


@responses.activate
def test_a_pbx_answering_4xx_is_pbx_refused_with_its_message(tenant, pbx, extensions):
    responses.add(responses.POST, PBX_CALL_URL, status=403, json={"error": "forbidden"})

    outcome = originate(tenant, "101", CLIENT)

    assert not outcome.ok and outcome.code == "pbx_refused"
    assert outcome.error == "PBX refused"
    request = OriginateRequest.objects.get()
    assert request.status == OriginateRequest.FAILED and request.error == "PBX refused"
    assert request.correlation_id == ""


@responses.activate
def test_a_pbx_that_cannot_be_reached_is_pbx_unreachable(tenant, pbx, extensions):
    responses.add(responses.POST, PBX_CALL_URL, body=requests.ConnectionError("connection refused"))

    outcome = originate(tenant, "101", CLIENT)

    assert not outcome.ok and outcome.code == "pbx_unreachable"
    assert "connection refused" in outcome.error
    assert OriginateRequest.objects.get().status == OriginateRequest.FAILED


# ---- attaching the call -------------------------------------------------------------------------------


@responses.activate
def test_events_carrying_the_correlation_id_attach_to_the_request(tenant, pbx, crm, extensions):
    pbx_accepts("X")
    outcome = originate(tenant, "101", CLIENT)

    [call] = ingest(pbx, [to_event(outgoing("c1", 1, "ringing", ext="101", corr="X"))])
    ingest(pbx, [to_event(outgoing("c1", 5, "answered", ext="101"))])

    call.refresh_from_db()
    assert call.originate_request == outcome.request
    outcome.request.refresh_from_db()
    assert outcome.request.call == call


@responses.activate
def test_events_arriving_before_originate_returned_attach_to_the_same_call(tenant, pbx, crm, extensions):
    [call] = ingest(pbx, [to_event(outgoing("c1", 1, "ringing", ext="101", corr="X"))])
    assert call.originate_request is None
    pbx_accepts("X")

    outcome = originate(tenant, "101", CLIENT)

    call.refresh_from_db()
    assert call.originate_request == outcome.request
    outcome.request.refresh_from_db()
    assert outcome.request.call == call
    ingest(pbx, [to_event(outgoing("c1", 9, "completed", ext="101"))])
    assert Call.objects.get().originate_request == outcome.request


@responses.activate
def test_an_early_event_without_an_extension_gets_the_requests_extension(tenant, pbx, crm, extensions):
    """Events first or originate first: the call ends up the same."""
    ingest(pbx, [to_event(outgoing("c1", 1, "ringing", corr="X"))])
    pbx_accepts("X")

    originate(tenant, "102", CLIENT)

    assert Call.objects.get().initiating_extension == "102"


@responses.activate
def test_an_early_event_with_another_correlation_id_is_not_attached(tenant, pbx, crm, extensions):
    ingest(pbx, [to_event(outgoing("c1", 1, "ringing", ext="101", corr="other"))])
    pbx_accepts("X")

    originate(tenant, "101", CLIENT)

    assert Call.objects.get().originate_request is None
    assert OriginateRequest.objects.get().call is None


@responses.activate
def test_an_outgoing_call_of_the_extension_to_the_number_within_a_minute_attaches_without_an_id(
    tenant, pbx, crm, extensions
):
    pbx_accepts("")  # a PBX that gives no correlation id
    outcome = originate(tenant, "101", "8 916 123-45-67")
    soon = timezone.now() + dt.timedelta(seconds=20)

    [call] = ingest(pbx, [event_at(outgoing("c1", 1, "ringing", ext="101"), soon)])

    assert call.originate_request == outcome.request
    outcome.request.refresh_from_db()
    assert outcome.request.call == call


@responses.activate
def test_a_call_of_another_extension_or_later_than_a_minute_is_not_attached(tenant, pbx, crm, extensions):
    pbx_accepts("")
    originate(tenant, "101", CLIENT)
    later = timezone.now() + MATCH_WINDOW + dt.timedelta(seconds=30)

    [other_extension] = ingest(pbx, [event_at(outgoing("c1", 1, "ringing", ext="102"), timezone.now())])
    [too_late] = ingest(pbx, [event_at(outgoing("c2", 1, "ringing", ext="101"), later)])

    assert other_extension.originate_request is None
    assert too_late.originate_request is None
    assert OriginateRequest.objects.get().call is None


@responses.activate
def test_an_incoming_call_from_the_number_is_not_taken_for_the_click_to_call(tenant, pbx, crm, extensions):
    pbx_accepts("")
    originate(tenant, "101", CLIENT)

    [call] = ingest(
        pbx, [event_at({"call": "c1", "kind": "answered", "seq": 1, "ext": "101"}, timezone.now())]
    )

    assert call.originate_request is None


@responses.activate
def test_one_request_attaches_to_one_call_only(tenant, pbx, crm, extensions):
    pbx_accepts("")
    outcome = originate(tenant, "101", CLIENT)
    now = timezone.now()

    [first] = ingest(pbx, [event_at(outgoing("c1", 1, "ringing", ext="101"), now)])
    [second] = ingest(pbx, [event_at(outgoing("c2", 1, "ringing", ext="101"), now)])

    assert first.originate_request == outcome.request
    assert second.originate_request is None

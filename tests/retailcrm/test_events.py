"""Call events: POST /api/v5/telephony/call/event, field `event` (in, out, hangup with hangupStatus)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import responses

from calls.models import OutboundJob
from calls.processor import ingest
from tests.factories import ExternalPhoneFactory, SiteCodeFactory
from tests.pipeline.fake_providers import to_event
from tests.retailcrm.conftest import (
    EVENT_URL,
    UPLOAD_URL,
    fixture_json,
    form_field,
    retailcrm_connection,
    run_due,
)

pytestmark = pytest.mark.django_db

# The fake PBX's calls come from +79161234567 on the line +74951234567, started 2026-11-24 10:00 UTC.
LINE = "+74951234567"


@pytest.fixture
def line(world):
    phone = ExternalPhoneFactory(tenant=world.tenant, number=LINE)
    SiteCodeFactory(external_phone=phone, crm_connection=world.crm, code="shop7")
    return phone


@pytest.fixture
def crm_answers():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, EVENT_URL, json=fixture_json("call_event_ok.json"))
        mock.add(responses.POST, UPLOAD_URL, json=fixture_json("calls_upload_ok.json"))
        yield mock


def sent_events(mock) -> list[dict]:
    return [form_field(c.request, "event") for c in mock.calls if c.request.url == EVENT_URL]


def test_each_extension_that_rings_gets_an_in_event_in_order(world, line, crm_answers):
    ingest(world.pbx, [to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"})])
    ingest(world.pbx, [to_event({"call": "c1", "kind": "ringing", "seq": 2, "ext": "200"})])
    run_due()
    run_due()  # the second waits until the first is sent

    assert sent_events(crm_answers) == [
        {
            "phone": "+79161234567",
            "type": "in",
            "codes": ["100"],
            "callExternalId": "c1",
            "externalPhone": LINE,
            "site": "shop7",
        },
        {
            "phone": "+79161234567",
            "type": "in",
            "codes": ["200"],
            "callExternalId": "c1",
            "externalPhone": LINE,
            "site": "shop7",
        },
    ]


def test_extensions_rung_together_share_one_in_event(world, line, crm_answers):
    ringing = replace(
        to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"}), extensions=("100", "200")
    )
    ingest(world.pbx, [ringing])
    run_due()
    [event] = sent_events(crm_answers)
    assert event["type"] == "in" and event["codes"] == ["100", "200"]


def test_the_seed_example_event_has_the_fields_we_send(world, line, crm_answers):
    ingest(world.pbx, [to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"})])
    run_due()
    [event] = sent_events(crm_answers)
    assert set(fixture_json("call_event_seed.json")) <= set(event)


def test_a_call_taken_by_a_colleague_closes_the_other_card_as_cancel_and_the_answerer_gets_answered(
    world, line, crm_answers
):
    ingest(
        world.pbx,
        [
            to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"}),
            to_event({"call": "c1", "kind": "ringing", "seq": 2, "ext": "200"}),
        ],
    )
    ingest(world.pbx, [to_event({"call": "c1", "kind": "answered", "seq": 3, "ext": "200"})])
    ingest(world.pbx, [to_event({"call": "c1", "kind": "completed", "seq": 9, "outcome": "answered"})])
    run_due()
    run_due()  # the hang-ups wait behind the pop-ups of the same call

    hangups = [e for e in sent_events(crm_answers) if e["type"] == "hangup"]
    assert {e["codes"][0]: e["hangupStatus"] for e in hangups} == {"100": "cancel", "200": "answered"}
    assert all(e["callExternalId"] == "c1" and e["site"] == "shop7" for e in hangups)


def test_a_missed_call_tells_the_ringing_extension_no_answered(world, line, crm_answers):
    ingest(world.pbx, [to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"})])
    run_due()
    ingest(world.pbx, [to_event({"call": "c1", "kind": "completed", "seq": 9, "outcome": "missed"})])
    run_due()

    hangups = [e for e in sent_events(crm_answers) if e["type"] == "hangup"]
    assert [(e["codes"], e["hangupStatus"]) for e in hangups] == [(["100"], "no answered")]
    [upload] = [c for c in crm_answers.calls if c.request.url == UPLOAD_URL]
    assert form_field(upload.request, "calls")[0]["result"] == "no answer"


def test_an_outgoing_call_sends_out_once_then_hangup_with_its_result(world, line, crm_answers):
    ingest(
        world.pbx, [to_event({"call": "c2", "kind": "ringing", "seq": 1, "ext": "100", "direction": "out"})]
    )
    ingest(
        world.pbx, [to_event({"call": "c2", "kind": "answered", "seq": 2, "ext": "100", "direction": "out"})]
    )
    run_due()
    ingest(
        world.pbx,
        [to_event({"call": "c2", "kind": "completed", "seq": 5, "direction": "out", "outcome": "busy"})],
    )
    run_due()

    events = sent_events(crm_answers)
    assert [(e["type"], e["codes"], e.get("hangupStatus")) for e in events] == [
        ("out", ["100"], None),
        ("hangup", ["100"], "busy"),
    ]


def test_a_pop_up_not_sent_before_the_call_ended_is_dropped_but_the_hangup_is_not(world, line, crm_answers):
    ingest(world.pbx, [to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"})])
    ingest(world.pbx, [to_event({"call": "c1", "kind": "completed", "seq": 9, "outcome": "missed"})])
    run_due()

    assert [e["type"] for e in sent_events(crm_answers)] == ["hangup"]
    assert OutboundJob.objects.get(kind="retailcrm.event").status == OutboundJob.EXPIRED
    kinds = dict(OutboundJob.objects.values_list("kind", "status"))
    assert kinds["retailcrm.hangup"] == kinds["retailcrm.upload"] == OutboundJob.SENT


def test_a_hangup_never_expires_while_the_crm_is_down(world):
    kind = world.crm.adapter.job_kinds["retailcrm.hangup"]
    assert kind.ttl is None and not kind.expires_on_call_end
    popup = world.crm.adapter.job_kinds["retailcrm.event"]
    assert popup.ttl is not None and popup.expires_on_call_end


def test_with_events_switched_off_no_event_is_queued(world, line):
    world.crm.delete()
    retailcrm_connection(world.tenant, "quiet", send_events=False)
    ingest(world.pbx, [to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"})])
    ingest(world.pbx, [to_event({"call": "c1", "kind": "completed", "seq": 9, "outcome": "missed"})])
    assert list(OutboundJob.objects.values_list("kind", flat=True)) == ["retailcrm.upload"]


@responses.activate
def test_unknown_codes_reported_by_the_crm_are_noted_but_the_event_counts_as_sent(world, line):
    responses.add(responses.POST, EVENT_URL, json=fixture_json("call_event_unknown_codes.json"))
    ingest(world.pbx, [to_event({"call": "c1", "kind": "ringing", "seq": 1, "ext": "100"})])
    run_due()
    job = OutboundJob.objects.get(kind="retailcrm.event")
    assert job.status == OutboundJob.SENT and "notExistCodes" in job.last_response

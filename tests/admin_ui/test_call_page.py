"""A call's page reads as a story: who rang, who answered, the hang-up, routing, each CRM message with its status
and the recording, in the tenant's time; the raw JSON stays behind a toggle."""

from __future__ import annotations

import datetime as dt

from django.urls import reverse

from calls.models import Call, CallEvent, OutboundJob, Recording, RoutingDecision
from calls.timeline import call_timeline
from tests.admin_world import client_for

T0 = dt.datetime(2026, 11, 30, 20, 51, 0, tzinfo=dt.UTC)


def story(world) -> Call:
    call = Call.objects.create(
        tenant=world.tenant_a,
        pbx_connection=world.pbx_a,
        provider_call_id="s1",
        direction="in",
        client_phone="+79161234567",
        external_phone="+74951110000",
        started_at=T0,
        result="answered",
    )

    def event(n, kind, seconds, **data):
        CallEvent.objects.create(
            call=call,
            pbx_connection=world.pbx_a,
            dedupe_key=f"e{n}",
            order_key=f"{n:04}",
            kind=kind,
            occurred_at=T0 + dt.timedelta(seconds=seconds),
            normalised={"kind": kind, **data},
        )

    event(1, "ringing", 0, client_phone="+79161234567", external_phone="+74951110000")
    event(2, "ringing", 1, extension="101")
    event(3, "answered", 5, extension="101")
    event(4, "leg_ended", 40, extension="101", talk_seconds=35)
    event(5, "answered", 41, extension="102")
    event(6, "completed", 90, outcome="answered")
    RoutingDecision.objects.create(
        tenant=world.tenant_a,
        call=call,
        caller="+79161234567",
        source="planfix",
        extension="101",
        latency_ms=140,
        created_at=T0 + dt.timedelta(milliseconds=500),
    )
    OutboundJob.objects.create(
        tenant=world.tenant_a,
        crm_connection=world.crm_a,
        connection_ref=f"crm:{world.crm_a.pk}",
        call=call,
        kind="event",
        dedupe_key="j1",
        status="sent",
        attempts=1,
        created_at=T0 + dt.timedelta(seconds=91),
        sent_at=T0 + dt.timedelta(seconds=92),
    )
    OutboundJob.objects.create(
        tenant=world.tenant_a,
        crm_connection=world.crm_a,
        connection_ref=f"crm:{world.crm_a.pk}",
        call=call,
        kind="record",
        dedupe_key="j2",
        status="failed",
        attempts=3,
        last_error="HTTP 500",
        created_at=T0 + dt.timedelta(seconds=95),
    )
    Recording.objects.create(
        call=call, state=Recording.STORED, size=1234, stored_at=T0 + dt.timedelta(seconds=94)
    )
    return call


def test_the_timeline_tells_the_call_in_order(world):
    texts = [entry.text for entry in call_timeline(story(world))]
    assert texts == [
        "+79161234567 calls +74951110000",
        "Routing: planfix chose extension 101 in 140 ms",
        "Rings extension 101",
        "Extension 101 answered",
        "Extension 101 left the call after 35 s of talk",
        "Extension 102 answered",
        "Hang-up: answered",
        "Message event to planfix (planfix): sent",
        "Recording stored (1234 bytes)",
        "Message record to planfix (planfix): failed after 3 attempts — HTTP 500",
    ]


def test_the_call_page_shows_the_timeline_in_local_time_with_json_behind_a_toggle(world):
    call = story(world)
    page = (
        client_for(world.support_a).get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()
    )
    assert 'id="call-timeline"' in page
    assert "2026-11-30 23:51:05</span> Extension 101 answered" in page
    assert '<li class="status-failed">' in page
    assert "<details><summary>JSON</summary>" in page

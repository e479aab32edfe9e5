from __future__ import annotations

import json
import random

import pytest

from calls.models import Call, CallEvent, OutboundJob, Recording
from calls.processor import ingest
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db

ANSWERED_RING_GROUP = [
    {"call": "c1", "kind": "ringing", "seq": 1, "ext": "101"},
    {"call": "c1", "kind": "ringing", "seq": 2, "ext": "102"},
    {"call": "c1", "kind": "answered", "seq": 5, "ext": "102"},
    {"call": "c1", "kind": "leg_ended", "seq": 6, "ext": "101"},
    {"call": "c1", "kind": "completed", "seq": 40, "recorded": True},
]


def post(client, pbx, events, token="pbx-token-123"):
    return client.post(
        f"/hooks/fakepbx/{pbx.public_id}/events",
        data=json.dumps({"events": events}),
        content_type="application/json",
        HTTP_X_TOKEN=token,
    )


def test_duplicate_webhook_is_a_no_op(client, pbx, crm, extensions):
    assert post(client, pbx, ANSWERED_RING_GROUP).status_code == 200
    jobs = sorted(OutboundJob.objects.values_list("dedupe_key", flat=True))
    assert post(client, pbx, ANSWERED_RING_GROUP).status_code == 200
    assert CallEvent.objects.count() == len(ANSWERED_RING_GROUP)
    assert sorted(OutboundJob.objects.values_list("dedupe_key", flat=True)) == jobs
    assert Call.objects.count() == 1


def test_ring_group_colleague_who_did_not_pick_up_is_cancelled_not_missed(pbx, crm, extensions):
    [call] = ingest(pbx, [to_event(e) for e in ANSWERED_RING_GROUP])
    assert call.result == "answered"
    assert call.rang_extensions == ["101", "102"]
    assert call.first_answered_extension == call.last_answered_extension == "102"
    assert call.talk_seconds == 35 and call.wait_seconds == 4
    notices = {j.dedupe_key: j.payload["notice"] for j in OutboundJob.objects.filter(crm_connection=crm)}
    assert notices[f"{call.pk}:leg_cancelled:101"] == "leg_cancelled"
    assert f"{call.pk}:leg_cancelled:102" not in notices
    assert notices[f"{call.pk}:completed:102"] == "completed"


def final_state(call: Call) -> dict:
    fields = [
        "direction",
        "result",
        "rang_extensions",
        "answered_extensions",
        "first_answered_extension",
        "last_answered_extension",
        "started_at",
        "answered_at",
        "ended_at",
        "talk_seconds",
        "wait_seconds",
        "final_for_crm",
        "recording_expected",
        "ended",
    ]
    return {f: getattr(call, f) for f in fields}


def test_shuffled_event_order_gives_the_same_final_call(pbx, crm, extensions):
    [in_order] = ingest(pbx, [to_event(e) for e in ANSWERED_RING_GROUP])
    expected = final_state(in_order)
    for seed in range(5):
        shuffled = [dict(e, call=f"s{seed}") for e in ANSWERED_RING_GROUP]
        random.Random(seed).shuffle(shuffled)
        for item in shuffled:  # one webhook per event, in shuffled order
            ingest(pbx, [to_event(item)])
        assert final_state(Call.objects.get(provider_call_id=f"s{seed}")) == expected


def test_late_answered_after_completed_does_not_reopen_the_call(pbx, crm, extensions):
    events = [to_event(e) for e in ANSWERED_RING_GROUP]
    ingest(pbx, [e for e in events if e.kind != "answered"])
    [call] = ingest(pbx, [e for e in events if e.kind == "answered"])
    assert call.ended and call.result == "answered" and call.last_answered_extension == "102"
    popups = OutboundJob.objects.filter(kind="fake.popup")
    assert not popups.exists(), "no pop-up once the end is known"


def test_pop_ups_go_to_ringing_extensions_but_not_from_the_ivr(pbx, crm, extensions):
    ingest(pbx, [to_event({"call": "c9", "kind": "ringing", "seq": 1, "location": "ivr"})])
    assert not OutboundJob.objects.exists()
    ingest(pbx, [to_event({"call": "c9", "kind": "ringing", "seq": 2, "ext": "101", "location": "agent"})])
    assert [(j.kind, j.payload["ext"]) for j in OutboundJob.objects.all()] == [("fake.popup", "101")]


def test_internal_calls_are_logged_and_sent_to_no_crm(pbx, crm, extensions):
    ingest(
        pbx,
        [
            to_event({"call": "i1", "kind": "ringing", "seq": 1, "ext": "101", "direction": "internal"}),
            to_event({"call": "i1", "kind": "completed", "seq": 9, "direction": "internal"}),
        ],
    )
    assert Call.objects.get(provider_call_id="i1").ended
    assert not OutboundJob.objects.filter(crm_connection=crm).exists()


def test_unknown_events_are_stored_and_change_nothing(pbx, crm, extensions):
    [call] = ingest(pbx, [to_event({"call": "u1", "kind": "something-new", "seq": 3})])
    assert CallEvent.objects.get().kind == "unknown"
    assert call.result == "" and not call.ended and not OutboundJob.objects.exists()


def test_answered_recorded_call_gets_a_recording_with_an_unguessable_token(pbx, crm, extensions):
    [call] = ingest(pbx, [to_event(e) for e in ANSWERED_RING_GROUP])
    recording = Recording.objects.get(call=call)
    assert len(recording.token) >= 43  # 32 random bytes, URL-safe
    assert OutboundJob.objects.filter(kind="recording.fetch", pbx_connection=pbx).count() == 1


def test_missed_call_expects_no_recording(pbx, crm, extensions):
    [call] = ingest(
        pbx,
        [
            to_event({"call": "m1", "kind": "ringing", "seq": 1, "ext": "101"}),
            to_event({"call": "m1", "kind": "completed", "seq": 20, "recorded": True}),
        ],
    )
    assert call.result == "missed" and not Recording.objects.exists()


def test_webhook_with_wrong_token_stores_nothing(client, pbx, crm):
    assert post(client, pbx, ANSWERED_RING_GROUP, token="wrong").status_code == 403
    assert not CallEvent.objects.exists()


def test_credentials_are_stripped_from_stored_payloads(pbx):
    ingest(
        pbx, [to_event({"call": "k1", "kind": "ringing", "seq": 1, "sign": "abc", "note": "pbx-token-123"})]
    )
    raw = CallEvent.objects.get().raw
    assert raw["sign"] == "***" and raw["note"] == "***"


def test_a_late_ringing_of_a_leg_that_moved_on_opens_no_card(pbx, crm, extensions):
    from dataclasses import replace

    answered = replace(to_event({"call": "l1", "kind": "answered", "seq": 5, "ext": "101"}), leg_id="leg-1")
    ringing = replace(to_event({"call": "l1", "kind": "ringing", "seq": 1, "ext": "101"}), leg_id="leg-1")
    ingest(pbx, [answered])
    ingest(pbx, [ringing])
    kinds = [j.payload["notice"] for j in OutboundJob.objects.filter(crm_connection=crm)]
    assert kinds == ["answered"]

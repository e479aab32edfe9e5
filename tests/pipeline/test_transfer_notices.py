"""Issue 16 item 11, in the pipeline: everyone who talked before the last employee gets a completion of their
own (a `leg_completed` notice with their own talk time); the call's completion names the last one."""

from __future__ import annotations

import pytest

from calls.models import Call, OutboundJob
from calls.processor import ingest
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db


def test_a_transfer_gives_the_first_employee_a_completion_with_their_own_talk_time(pbx, crm, extensions):
    events = [
        {"call": "t1", "kind": "ringing", "seq": 0, "ext": "101"},
        {"call": "t1", "kind": "answered", "seq": 5, "ext": "101"},
        {"call": "t1", "kind": "leg_ended", "seq": 40, "ext": "101"},
        {"call": "t1", "kind": "answered", "seq": 48, "ext": "102"},
        {"call": "t1", "kind": "leg_ended", "seq": 90, "ext": "102"},
        {"call": "t1", "kind": "completed", "seq": 91, "ext": "102", "outcome": "answered"},
    ]
    for item in events:
        ingest(pbx, [to_event(item)])

    call = Call.objects.get(provider_call_id="t1")
    assert (call.answered_extensions, call.responsible_extension) == (["101", "102"], "102")
    jobs = {j.payload["notice"]: j for j in OutboundJob.objects.filter(crm_connection=crm, kind="fake.final")}
    assert jobs["leg_completed"].payload == {"notice": "leg_completed", "ext": "101", "talk_seconds": 35}
    assert jobs["completed"].payload["ext"] == "102"
    assert jobs["leg_completed"].order_key < jobs["completed"].order_key


def test_a_call_answered_by_one_employee_has_no_leg_completion(pbx, crm, extensions):
    for item in [
        {"call": "a1", "kind": "ringing", "seq": 0, "ext": "101"},
        {"call": "a1", "kind": "answered", "seq": 5, "ext": "101"},
        {"call": "a1", "kind": "completed", "seq": 60, "ext": "101", "outcome": "answered"},
    ]:
        ingest(pbx, [to_event(item)])
    notices = set(OutboundJob.objects.filter(crm_connection=crm).values_list("payload__notice", flat=True))
    assert "leg_completed" not in notices and "completed" in notices

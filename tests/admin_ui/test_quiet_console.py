"""make run's console: the relay's runs at DEBUG, one INFO line per call event and per delivery."""

from __future__ import annotations

import logging

from calls.models import Call, CallEvent, JobAttempt, OutboundJob
from portal.logs import RoutineTaskFilter


def record(name: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def test_routine_task_lines_are_demoted_to_debug():
    routine = record("celery.app.trace", "Task calls.tasks.relay[abc] succeeded in 0.01s: 0")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        assert RoutineTaskFilter().filter(routine) is False
        assert routine.levelname == "DEBUG"
        beat = record("celery.beat", "Scheduler: Sending due task outbox-relay (calls.tasks.relay)")
        assert RoutineTaskFilter().filter(beat) is False
        notice = record(
            "kombu.connection", "No hostname was supplied. Reverting to default 'localhost'", logging.WARNING
        )
        assert RoutineTaskFilter().filter(notice) is False
        other = record(
            "celery.app.trace", "Task calls.tasks.purge_expired_recordings[abc] succeeded in 0.2s: 3"
        )
        assert RoutineTaskFilter().filter(other) is True and other.levelname == "INFO"
        root.setLevel(logging.DEBUG)
        assert (
            RoutineTaskFilter().filter(record("celery.app.trace", "Task calls.tasks.relay[x] received"))
            is True
        )
    finally:
        root.setLevel(level)


def test_one_readable_line_per_call_event_and_per_delivery(world, caplog):
    caplog.set_level(logging.INFO, logger="callbridge.activity")
    call = Call.objects.create(
        tenant=world.tenant_a, pbx_connection=world.pbx_a, provider_call_id="rt-9", direction="in"
    )
    CallEvent.objects.create(
        call=call,
        pbx_connection=world.pbx_a,
        dedupe_key="k",
        order_key="1",
        kind="answered",
        occurred_at=call.created_at,
        normalised={"extension": "101"},
    )
    job = OutboundJob.objects.create(
        tenant=world.tenant_a,
        crm_connection=world.crm_a,
        connection_ref=f"crm:{world.crm_a.pk}",
        call=call,
        kind="event",
        dedupe_key="j",
    )
    JobAttempt.objects.create(job=job, outcome="sent", status_code=200, duration_ms=42)
    lines = [r.getMessage() for r in caplog.records if r.name == "callbridge.activity"]
    assert lines == [
        "call rt-9 answered ext 101 (alpha/pbx (rostelecom))",
        f"delivery event → crm:{world.crm_a.pk}: sent HTTP 200 in 42 ms",
    ]

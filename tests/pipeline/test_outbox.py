"""The outbox: schedule, verdicts, leases and races, and delivery through a real Celery worker."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import responses
from django.utils import timezone

from calls import outbox
from calls.models import JobAttempt, OutboundJob
from calls.processor import ingest
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db

CRM_URL = "https://crm.example.test/hook"
MISSED_CALL = [  # nobody rang: the only CRM message is the completion
    {"call": "c1", "kind": "ringing", "seq": 1},
    {"call": "c1", "kind": "completed", "seq": 9},
]


def completion_job(pbx, crm) -> OutboundJob:
    ingest(pbx, [to_event(e) for e in MISSED_CALL])
    return OutboundJob.objects.get(crm_connection=crm, kind="fake.final", payload__notice="completed")


def run_due(now=None) -> None:
    """One relay pass whose published tasks run inline (the worker is exercised in test_worker.py)."""
    outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))


def test_retry_schedule_is_10s_30s_1min_2min_5min_then_every_5min():
    delays = [outbox.next_delay(n).total_seconds() for n in range(1, 6)]
    assert delays == [10, 30, 60, 120, 300]
    for n in range(6, 30):
        assert 240 <= outbox.next_delay(n).total_seconds() <= 360


def test_retry_after_is_honoured():
    assert outbox.next_delay(1, retry_after=90).total_seconds() == 90


def test_time_scale_shrinks_every_delay(settings):
    settings.OUTBOX_TIME_SCALE = 0.01
    assert outbox.next_delay(1).total_seconds() == pytest.approx(0.1)


@responses.activate
def test_transient_failure_is_retried_later_and_then_sent(pbx, crm, extensions, settings):
    settings.OUTBOX_TIME_SCALE = 0.0001
    responses.add(responses.POST, CRM_URL, status=503)
    responses.add(responses.POST, CRM_URL, status=200, body="ok")
    job = completion_job(pbx, crm)
    run_due()
    job.refresh_from_db()
    assert job.status == OutboundJob.PENDING and job.attempts == 1 and job.last_status == 503
    run_due()
    job.refresh_from_db()
    assert job.status == OutboundJob.SENT and job.attempts == 2
    assert [a.outcome for a in job.attempt_log.all()] == ["transient", "sent"]


@responses.activate
def test_crm_answering_401_fails_at_once_and_flags_the_connection(pbx, crm, extensions):
    responses.add(responses.POST, CRM_URL, status=401)
    job = completion_job(pbx, crm)
    run_due()
    job.refresh_from_db()
    crm.refresh_from_db()
    assert job.status == OutboundJob.FAILED and job.attempts == 1
    assert "Invalid token" in crm.last_error and crm.last_error_at is not None


@responses.activate
def test_a_job_past_its_window_is_dead(pbx, crm, extensions):
    responses.add(responses.POST, CRM_URL, status=500)
    job = completion_job(pbx, crm)
    OutboundJob.objects.filter(pk=job.pk).update(window_ends_at=timezone.now() + dt.timedelta(seconds=5))
    run_due()
    job.refresh_from_db()
    assert job.status == OutboundJob.DEAD


@responses.activate
def test_a_later_job_waits_while_an_earlier_one_of_the_same_call_is_retrying(pbx, crm, extensions, settings):
    settings.OUTBOX_TIME_SCALE = 0.0001
    responses.add(responses.POST, CRM_URL, status=500)
    responses.add(responses.POST, CRM_URL, status=200)
    ingest(pbx, [to_event({"call": "o1", "kind": "ringing", "seq": 1, "ext": "101"})])
    ingest(pbx, [to_event({"call": "o1", "kind": "answered", "seq": 2, "ext": "101"})])
    ringing, answered = OutboundJob.objects.filter(crm_connection=crm).order_by("order_key")
    run_due()
    ringing.refresh_from_db()
    answered.refresh_from_db()
    assert ringing.status == OutboundJob.PENDING and ringing.attempts == 1
    assert answered.attempts == 0, "must not overtake the retrying pop-up"


def test_pop_ups_expire_once_the_call_has_ended(pbx, crm, extensions):
    ingest(pbx, [to_event({"call": "e1", "kind": "ringing", "seq": 1, "ext": "101"})])
    popup = OutboundJob.objects.get(kind="fake.popup")
    ingest(pbx, [to_event({"call": "e1", "kind": "completed", "seq": 5})])
    outbox.expire_due_jobs()
    popup.refresh_from_db()
    assert popup.status == OutboundJob.EXPIRED
    assert (
        OutboundJob.objects.get(kind="fake.final", payload__notice="completed").status == OutboundJob.PENDING
    )


@responses.activate
def test_a_job_whose_worker_died_is_sent_once_its_lease_expires(pbx, crm, extensions):
    responses.add(responses.POST, CRM_URL, status=200)
    job = completion_job(pbx, crm)
    [claimed] = outbox.claim_due()  # a worker took it ... and died before running it
    assert claimed.job_ids == [job.pk]
    assert outbox.claim_due() == [], "leased: nobody else may take it"
    OutboundJob.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    run_due()
    job.refresh_from_db()
    assert job.status == OutboundJob.SENT
    outbox.run_claim(claimed.owner, claimed.job_ids)  # the dead worker's message, redelivered late
    assert len(responses.calls) == 1, "a stale lease does nothing"


@pytest.mark.django_db(transaction=True)
@responses.activate
def test_two_relays_racing_send_each_job_once(pbx, crm, extensions):
    responses.add(responses.POST, CRM_URL, status=200)
    for n in range(20):
        ingest(
            pbx,
            [
                to_event({"call": f"r{n}", "kind": "ringing", "seq": 1, "ext": "101"}),
                to_event({"call": f"r{n}", "kind": "completed", "seq": 9}),
            ],
        )
    barrier = threading.Barrier(2)
    errors = []

    def relay():
        from django.db import connection

        try:
            barrier.wait()
            run_due()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    run_due()
    assert not errors
    final_jobs = OutboundJob.objects.filter(crm_connection=crm, kind="fake.final")
    assert final_jobs.count() == 40  # per call: the cancelled leg of 101 and the completion
    assert final_jobs.filter(status=OutboundJob.SENT).count() == 40
    assert JobAttempt.objects.filter(job__in=final_jobs).count() == 40
    bodies = [c.request.body for c in responses.calls]
    assert len(bodies) == OutboundJob.objects.filter(crm_connection=crm, status=OutboundJob.SENT).count()


def test_retry_now_puts_failed_jobs_back(pbx, crm, extensions):
    job = completion_job(pbx, crm)
    OutboundJob.objects.filter(pk=job.pk).update(status=OutboundJob.DEAD)
    assert outbox.retry_now(OutboundJob.objects.all()) == 1
    job.refresh_from_db()
    assert job.status == OutboundJob.PENDING and job.next_attempt_at <= timezone.now()


def test_the_relay_claims_no_more_than_the_workers_can_take(pbx, crm, extensions, settings):
    """After an outage a backlog reaches the broker as fast as workers finish claims, not in one burst; a claim
    still queued keeps its lease and is not claimed again."""
    settings.OUTBOX_MAX_IN_FLIGHT = 3
    for n in range(10):
        ingest(
            pbx,
            [
                to_event({"call": f"b{n}", "kind": "ringing", "seq": 1}),
                to_event({"call": f"b{n}", "kind": "completed", "seq": 9}),
            ],
        )
    due = OutboundJob.objects.filter(status=OutboundJob.PENDING).count()
    assert due >= 10
    published: list[tuple[str, list[int]]] = []
    assert outbox.relay(lambda owner, ids: published.append((owner, ids))) == 3
    assert len(published) == 3
    # Nothing finished: the workers are full, the next pass publishes nothing and re-claims nothing.
    assert outbox.relay(lambda owner, ids: published.append((owner, ids))) == 0
    assert len(published) == 3
    # One claim done: one slot free, one more claim.
    with responses.RequestsMock() as mocked:
        mocked.add(responses.POST, CRM_URL, status=200)
        outbox.run_claim(*published[0])
    assert outbox.relay(lambda owner, ids: published.append((owner, ids))) == 1
    claimed = [pk for _, ids in published for pk in ids]
    assert len(claimed) == len(set(claimed)) == 4


def test_the_relay_beat_entry_expires_before_the_next_is_due(settings):
    for name in ("outbox-relay", "inbox-sweep"):
        entry = settings.CELERY_BEAT_SCHEDULE[name]
        assert entry["options"]["expires"] <= entry["schedule"].run_every.total_seconds()

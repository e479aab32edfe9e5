"""Leases that fence (issue 14 item 1): a worker that outlived its lease changes nothing on the job, every kind's
outbound work ends before its task's limits, and those before the lease; a trickling server cannot keep a
request past its total deadline."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from unittest import mock

import pytest
import responses
from django.conf import settings as django_settings
from django.utils import timezone

from calls import outbox, tasks
from calls.models import JobAttempt, OutboundJob
from calls.processor import ingest
from integrations import http
from integrations.providers.base import REGISTRY, provider_class
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db

CRM_URL = "https://crm.example.test/hook"
MISSED_CALL = [{"call": "c1", "kind": "ringing", "seq": 1}, {"call": "c1", "kind": "completed", "seq": 9}]


def completion_job(pbx, crm) -> OutboundJob:
    ingest(pbx, [to_event(e) for e in MISSED_CALL])
    return OutboundJob.objects.get(crm_connection=crm, kind="fake.final", payload__notice="completed")


def leased(job: OutboundJob, owner: str, at: dt.datetime) -> OutboundJob:
    assert outbox.claim([job.pk], owner, at) == [job.pk]
    return OutboundJob.objects.get(pk=job.pk)


def test_a_late_result_after_another_claim_took_the_job_is_fenced(pbx, crm, extensions):
    job = completion_job(pbx, crm)
    long_ago = timezone.now() - dt.timedelta(hours=1)
    first = leased(job, "first-worker", long_ago)  # its lease ran out an hour ago
    second = leased(job, "second-worker", timezone.now())

    outbox.record_result(first, "ok from the slow first attempt", timezone.now(), 95000, 1)

    job.refresh_from_db()
    assert job.status == OutboundJob.PENDING and job.attempts == 0
    assert job.lease_owner == second.lease_owner == "second-worker"
    attempt = JobAttempt.objects.get(job=job)
    assert attempt.outcome == JobAttempt.FENCED and attempt.response == "ok from the slow first attempt"


def test_a_result_after_the_lease_expired_is_fenced_even_if_nobody_claimed_again(pbx, crm, extensions):
    job = completion_job(pbx, crm)
    expired = leased(job, "only-worker", timezone.now() - dt.timedelta(hours=1))

    outbox.record_result(expired, RuntimeError("boom"), timezone.now(), 10, 1)

    job.refresh_from_db()
    assert job.attempts == 0 and job.last_error == "" and job.lease_owner == "only-worker"
    assert list(JobAttempt.objects.filter(job=job).values_list("outcome", flat=True)) == ["fenced"]


def test_a_result_within_the_lease_is_recorded(pbx, crm, extensions):
    job = leased(completion_job(pbx, crm), "worker", timezone.now())
    outbox.record_result(job, "ok", timezone.now(), 10, 1)
    job.refresh_from_db()
    assert job.status == OutboundJob.SENT and job.lease_owner == ""
    assert JobAttempt.objects.get(job=job).outcome == JobAttempt.SENT


def test_a_claim_records_its_sent_jobs_and_fences_the_one_another_claim_took(pbx, crm, extensions):
    jobs = []
    for n in range(3):
        ingest(pbx, [to_event({**e, "call": f"c{n}"}) for e in MISSED_CALL])
        jobs.append(
            OutboundJob.objects.get(crm_connection=crm, kind="fake.final", call__provider_call_id=f"c{n}")
        )
    now = timezone.now()
    assert outbox.claim([j.pk for j in jobs], "batch-worker", now - dt.timedelta(hours=1)) == [
        j.pk for j in jobs
    ]
    assert outbox.claim([jobs[2].pk], "other-worker", now) == [jobs[2].pk]  # the batch's lease had run out
    OutboundJob.objects.filter(pk__in=[jobs[0].pk, jobs[1].pk]).update(
        lease_expires_at=now + dt.timedelta(minutes=1)
    )
    mine = list(OutboundJob.objects.filter(pk__in=[j.pk for j in jobs]).order_by("pk"))
    for job in mine:
        job.lease_owner = "batch-worker"

    outbox.record_sent([(job, "accepted") for job in mine], now, 40, 3)

    sent = OutboundJob.objects.filter(status=OutboundJob.SENT, last_response="accepted", attempts=1)
    assert set(sent.values_list("pk", flat=True)) == {jobs[0].pk, jobs[1].pk}
    assert OutboundJob.objects.get(pk=jobs[2].pk).lease_owner == "other-worker"
    outcomes = dict(JobAttempt.objects.values_list("job_id", "outcome"))
    assert outcomes == {jobs[0].pk: "sent", jobs[1].pk: "sent", jobs[2].pk: "fenced"}


@responses.activate
def test_a_stale_message_whose_lease_expired_sends_nothing(pbx, crm, extensions):
    job = leased(completion_job(pbx, crm), "old-claim", timezone.now() - dt.timedelta(hours=1))
    responses.add(responses.POST, CRM_URL, status=200, body="ok")
    outbox.run_claim("old-claim", [job.pk])
    assert len(responses.calls) == 0
    assert not JobAttempt.objects.filter(job=job).exists()


def test_a_handler_that_lost_its_lease_writes_nothing(pbx, crm, extensions):
    job = leased(completion_job(pbx, crm), "worker", timezone.now() - dt.timedelta(hours=1))
    with pytest.raises(outbox.LeaseLost), outbox.on_behalf_of(job):
        ingest(pbx, [to_event({"call": "c2", "kind": "ringing", "seq": 1})])
    assert not pbx.calls.filter(provider_call_id="c2").exists()


def every_kind() -> list[str]:
    kinds = set(outbox.PIPELINE_KINDS)
    for key in REGISTRY:
        kinds |= set(provider_class(key).job_kinds)
    return sorted(kinds)


@pytest.mark.parametrize("kind", every_kind())
def test_deadline_ends_before_the_task_limits_and_those_before_the_lease(kind):
    limits = outbox.timing(kind)
    assert 0 < limits.deadline < limits.soft_limit < limits.hard_limit < limits.lease
    # Whatever limit a task ends up with (its own or the configured default), it ends before the lease.
    assert limits.lease > django_settings.CELERY_TASK_TIME_LIMIT


def test_a_recording_download_gets_time_for_the_largest_file_at_the_slowest_throughput(settings):
    settings.RECORDING_MAX_BYTES = 100 * 1024 * 1024
    settings.RECORDING_MIN_BYTES_PER_SECOND = 512 * 1024
    fetch = outbox.timing("recording.fetch")
    assert fetch.deadline >= 200 + settings.OUTBOUND_DEADLINE_SECONDS
    assert fetch.lease > fetch.hard_limit > outbox.timing("fake.final").lease


def test_the_relay_leases_each_job_for_its_kind(pbx, crm, extensions):
    job = completion_job(pbx, crm)
    before = timezone.now()
    claimed = outbox.claim_due()
    assert [c.job_ids for c in claimed] == [[job.pk]]
    job.refresh_from_db()
    lease = (job.lease_expires_at - before).total_seconds()
    assert lease == pytest.approx(outbox.timing("fake.final").lease, abs=2)
    assert lease > django_settings.CELERY_TASK_TIME_LIMIT


def test_each_task_is_published_with_its_kinds_limits(pbx, crm, extensions):
    job = completion_job(pbx, crm)
    with mock.patch.object(tasks.send_jobs, "apply_async") as apply_async:
        tasks.publish_claim("owner", [job.pk])
    limits = outbox.timing("fake.final")
    assert apply_async.call_args.kwargs["soft_time_limit"] == limits.soft_limit
    assert apply_async.call_args.kwargs["time_limit"] == limits.hard_limit < limits.lease


class TricklingServer:
    """Answers 200 with a Content-Length of 1000 bytes and then sends one byte every 0.2 s."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n")
        with conn:
            while not self.stop.is_set():
                try:
                    conn.sendall(b".")
                except OSError:
                    return
                time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def trickling(settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    server = TricklingServer()
    yield f"http://127.0.0.1:{server.port}/slow"
    server.close()


def test_a_trickling_answer_is_cut_at_the_total_deadline(trickling):
    started = time.monotonic()
    with pytest.raises(http.OutboundError) as caught, http.deadline(1.0):
        # Each read gets a byte well within its 5 s read timeout: only the total deadline can stop this.
        http.request("GET", trickling, timeout=(1, 5))
    elapsed = time.monotonic() - started
    assert caught.value.kind == "timeout" and caught.value.transient
    assert "total deadline" in str(caught.value)
    assert elapsed < 3, f"the request ran {elapsed:.1f} s past a 1 s deadline"


def test_a_request_after_the_deadline_passed_is_not_sent(trickling):
    with http.deadline(0.05) as current:
        time.sleep(0.1)
        with pytest.raises(http.OutboundError) as caught:
            http.request("GET", trickling, timeout=(1, 5))
    assert current.expired and caught.value.kind == "timeout"

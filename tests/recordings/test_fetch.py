"""Fetching recordings from the PBX into storage: on the outbox schedule, with a fresh link per attempt,
through the SSRF-guarded client, size-capped, and announced to CRMs exactly once."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.utils import timezone

from calls import outbox, recordings
from calls.models import JobAttempt, OutboundJob, Recording
from calls.processor import ingest
from tests.pipeline.fake_providers import to_event
from tests.recordings.conftest import LOOPBACK, MP3, mp3_answer, stored_files
from tests.recordings.providers import LinkPbx

pytestmark = pytest.mark.django_db

RECORDED_CALL = [
    {"call": "c1", "kind": "ringing", "seq": 1, "ext": "101"},
    {"call": "c1", "kind": "answered", "seq": 5, "ext": "101"},
    {"call": "c1", "kind": "completed", "seq": 40, "recorded": True},
]


@pytest.fixture(autouse=True)
def fast_schedule(settings):
    settings.OUTBOX_TIME_SCALE = 1e-6  # 10 s between attempts becomes 10 µs


def recorded_call(pbx, record_url: str = "", **more_settings) -> Recording:
    pbx.settings = {"record_url": record_url, **more_settings}
    pbx.save()
    [call] = ingest(pbx, [to_event(e) for e in RECORDED_CALL])
    return Recording.objects.get(call=call)


def run_fetch_jobs(passes: int = 1) -> None:
    """Relay passes that run the recording jobs in-process (CRM jobs are claimed but left for their tests)."""

    def publish(owner, job_ids):
        if OutboundJob.objects.filter(pk__in=job_ids, kind="recording.fetch").exists():
            outbox.run_claim(owner, job_ids)

    for _ in range(passes):
        outbox.relay(publish=publish)


def fetch_job() -> OutboundJob:
    return OutboundJob.objects.get(kind="recording.fetch")


def recording_stored_notices(crm) -> int:
    return sum(
        j.payload["notice"] == "recording_stored" for j in OutboundJob.objects.filter(crm_connection=crm)
    )


def test_a_recording_that_appears_late_is_fetched_after_three_not_found(
    pbx, crm, extensions, serve, loopback_allowed, recordings_storage
):
    answers = itertools.chain([(404, {}, b"not yet")] * 3, itertools.repeat(mp3_answer()))
    server = serve(lambda handler: next(answers))
    recording = recorded_call(pbx, server.url("/records/c1.mp3"))

    run_fetch_jobs(passes=6)

    recording.refresh_from_db()
    assert recording.state == Recording.STORED
    assert recording.content_type == "audio/mpeg" and recording.size == len(MP3)
    assert recordings.storage().open(recording.file).read() == MP3
    assert recording.file.startswith("acme/2026/11/24/") and recording.file.endswith(".mp3")
    assert server.seen == ["/records/c1.mp3"] * 4
    job = fetch_job()
    assert job.status == OutboundJob.SENT and job.attempts == 4
    assert [a.outcome for a in job.attempt_log.all()] == [JobAttempt.TRANSIENT] * 3 + [JobAttempt.SENT]
    assert "not ready yet" in job.attempt_log.first().error
    assert stored_files(recordings_storage) == [recording.file]


def test_while_retrying_the_recording_is_expected_not_stuck_fetching(pbx, serve, loopback_allowed):
    server = serve(lambda handler: (404, {}, b"not yet"))
    recording = recorded_call(pbx, server.url("/records/c1.mp3"))

    run_fetch_jobs()

    recording.refresh_from_db()
    assert recording.state == Recording.EXPECTED
    assert fetch_job().status == OutboundJob.PENDING


def test_a_recording_still_missing_when_the_fetch_window_ends_is_unavailable_with_the_reason(
    pbx, serve, loopback_allowed, settings
):
    settings.OUTBOX_TIME_SCALE = 1.0  # the first retry (10 s later) falls outside the window
    settings.RECORDING_FETCH_HOURS = 0.001  # 3.6 s
    server = serve(lambda handler: (404, {}, b"not yet"))
    recording = recorded_call(pbx, server.url("/records/c1.mp3"))

    run_fetch_jobs()

    recording.refresh_from_db()
    assert fetch_job().status == OutboundJob.DEAD
    assert recording.state == Recording.UNAVAILABLE
    assert "not ready yet" in recording.reason and "HTTP 404" in recording.reason


def test_single_use_links_work_because_each_attempt_asks_for_a_fresh_link_right_before_downloading(
    pbx, serve, loopback_allowed
):
    issued: list[str] = []
    spent: set[str] = set()

    def pbx_api(handler):
        path = handler.path.split("?")[0]
        if path == "/api/link":  # the PBX's "give me a link" call (Mango queries/recording/post)
            issued.append(f"/once/{len(issued) + 1}.mp3")
            return (
                200,
                {"Content-Type": "application/json"},
                f'{{"url": "{server.url(issued[-1])}"}}'.encode(),
            )
        if path not in issued or path in spent:
            return 404, {}, b"link expired"
        spent.add(path)
        if path == issued[0]:
            return 503, {}, b"busy"  # the first download fails and spends its link
        return mp3_answer()

    server = serve(pbx_api)
    recording = recorded_call(pbx, link_api=server.url("/api/link"))

    run_fetch_jobs(passes=3)

    recording.refresh_from_db()
    assert recording.state == Recording.STORED
    # Every attempt: a fresh link, then at once its download; no link is ever used twice.
    assert [p.split("?")[0] for p in server.seen] == ["/api/link", "/once/1.mp3", "/api/link", "/once/2.mp3"]
    assert LinkPbx.links_given == [server.url("/once/1.mp3"), server.url("/once/2.mp3")]
    # The links live nowhere: neither in the job nor in the recording's hints.
    assert "once" not in str(fetch_job().payload) and "once" not in str(recording.hints)


@pytest.mark.parametrize("announces_length", [True, False], ids=["content-length", "chunked"])
def test_an_oversize_recording_is_refused_and_marked_unavailable_with_the_reason(
    pbx, serve, loopback_allowed, settings, recordings_storage, announces_length
):
    settings.RECORDING_MAX_BYTES = 1000

    def big_file(handler):
        if announces_length:
            return mp3_answer(b"x" * 5000)
        handler.send_response(200)  # no Content-Length: the limit must hold while streaming
        handler.send_header("Content-Type", "audio/mpeg")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(5):
            handler.wfile.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")
        return None

    server = serve(big_file)
    recording = recorded_call(pbx, server.url("/records/c1.mp3"))

    run_fetch_jobs()

    recording.refresh_from_db()
    assert fetch_job().status == OutboundJob.FAILED and fetch_job().attempts == 1
    assert recording.state == Recording.UNAVAILABLE
    assert "too large (over 1000 bytes)" in recording.reason
    assert stored_files(recordings_storage) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["literal-ip", "name-resolving-to-loopback"])
def test_a_link_to_a_refused_address_ends_unavailable_without_connecting(pbx, crm, listener, settings, host):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    recording = recorded_call(pbx, f"http://{host}:{listener.port}/records/c1.mp3")

    run_fetch_jobs()

    recording.refresh_from_db()
    assert recording.state == Recording.UNAVAILABLE
    assert "loopback" in recording.reason  # the guard's verdict, shown in admin
    assert fetch_job().status == OutboundJob.FAILED
    assert listener.connections() == 0
    assert recording_stored_notices(crm) == 0


def test_a_page_instead_of_audio_is_refused(pbx, serve, loopback_allowed):
    server = serve(lambda handler: (200, {"Content-Type": "text/html"}, b"<html>login</html>"))
    recording = recorded_call(pbx, server.url("/records/c1.mp3"))

    run_fetch_jobs()

    recording.refresh_from_db()
    assert recording.state == Recording.UNAVAILABLE and "unexpected Content-Type" in recording.reason


def test_the_pbx_saying_there_is_no_recording_makes_it_unavailable(pbx):
    recording = recorded_call(pbx, "")  # LinkPbx without a link raises a permanent ProviderError

    run_fetch_jobs()

    recording.refresh_from_db()
    assert recording.state == Recording.UNAVAILABLE and recording.reason == "no recording for this call"


def test_recording_stored_fires_once_even_if_the_fetch_runs_again(
    pbx, crm, extensions, serve, loopback_allowed, recordings_storage
):
    server = serve(lambda handler: mp3_answer())
    recording = recorded_call(pbx, server.url("/records/c1.mp3"))

    run_fetch_jobs()
    recordings.fetch_recording(fetch_job())  # a repeated task message, a second worker, …
    recordings.fetch(Recording.objects.get(pk=recording.pk))

    assert recording_stored_notices(crm) == 1
    assert len(server.seen) == 1, "a stored recording is not downloaded again"
    assert len(stored_files(recordings_storage)) == 1


def test_two_fetches_racing_announce_once_and_keep_one_file(
    pbx, crm, extensions, serve, loopback_allowed, recordings_storage
):
    server = serve(lambda handler: mp3_answer())
    recording = recorded_call(pbx, server.url("/records/c1.mp3"))
    seen_by_worker = Recording.objects.get(pk=recording.pk)
    seen_by_player = Recording.objects.get(pk=recording.pk)  # both loaded before either stored the file

    assert recordings.fetch(seen_by_worker).startswith("stored")
    assert recordings.fetch(seen_by_player) == "already stored by another fetch"

    assert len(server.seen) == 2
    assert recording_stored_notices(crm) == 1
    assert stored_files(recordings_storage) == [Recording.objects.get(pk=recording.pk).file]


def test_the_stored_notice_goes_to_every_active_crm_of_the_tenant(
    pbx, crm, extensions, serve, loopback_allowed, tenant
):
    from tests.factories import CrmConnectionFactory

    other = CrmConnectionFactory(tenant=tenant, provider="fakecrm", key="crm2", settings={}, secrets={})
    inactive = CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key="crm3", settings={}, secrets={}, active=False
    )
    server = serve(lambda handler: mp3_answer())
    recorded_call(pbx, server.url("/records/c1.mp3"))

    run_fetch_jobs()

    assert [recording_stored_notices(c) for c in (crm, other, inactive)] == [1, 1, 0]


@pytest.mark.parametrize(
    ("content_type", "path", "stored_type", "suffix"),
    [
        ("audio/mpeg", "/r/c1", "audio/mpeg", ".mp3"),
        ("audio/mp3", "/r/c1", "audio/mpeg", ".mp3"),
        ("application/octet-stream", "/r/c1.mp3", "audio/mpeg", ".mp3"),
        ("application/octet-stream", "/r/c1.wav", "audio/x-wav", ".wav"),
        ("audio/wav; charset=binary", "/r/c1", "audio/wav", ".wav"),
    ],
)
def test_the_content_type_is_recorded_as_players_expect_it(
    pbx, serve, loopback_allowed, content_type, path, stored_type, suffix
):
    server = serve(lambda handler: mp3_answer(content_type=content_type))
    recording = recorded_call(pbx, server.url(path))

    run_fetch_jobs()

    recording.refresh_from_db()
    assert recording.content_type == stored_type and recording.file.endswith(suffix)


def test_fetch_again_queues_a_new_job_for_an_unavailable_recording(pbx, serve, settings, listener):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    recording = recorded_call(pbx, f"http://127.0.0.1:{listener.port}/r.mp3")
    run_fetch_jobs()
    recording.refresh_from_db()
    assert recording.state == Recording.UNAVAILABLE

    server = serve(lambda handler: mp3_answer())  # the admin fixed the PBX side
    pbx.settings = {"record_url": server.url("/r.mp3")}
    pbx.save()
    settings.OUTBOUND_ALLOWED_NETWORKS = [*settings.OUTBOUND_ALLOWED_NETWORKS, *LOOPBACK]
    job = recordings.fetch_again(recording)

    recording.refresh_from_db()
    assert job is not None and job.status == OutboundJob.PENDING and job.kind == "recording.fetch"
    assert recording.state == Recording.EXPECTED and recording.reason == ""
    assert OutboundJob.objects.filter(kind="recording.fetch").count() == 2, "the old job's history stays"
    run_fetch_jobs()
    recording.refresh_from_db()
    assert recording.state == Recording.STORED


def test_fetch_again_does_nothing_for_a_stored_or_purged_recording(stored_recording):
    stored = stored_recording()
    purged = stored_recording()
    Recording.objects.filter(pk=purged.pk).update(state=Recording.PURGED, file="")
    purged.refresh_from_db()

    assert recordings.fetch_again(stored) is None
    assert recordings.fetch_again(purged) is None
    assert not OutboundJob.objects.filter(kind="recording.fetch").exists()


def test_the_fetch_window_follows_the_setting(pbx, settings):
    settings.RECORDING_FETCH_HOURS = 2
    before = timezone.now()
    recorded_call(pbx, "https://pbx.example.test/r.mp3")
    job = fetch_job()
    assert dt.timedelta(hours=2) <= job.window_ends_at - before < dt.timedelta(hours=2, minutes=1)


def test_recordings_go_to_the_configured_storage(recordings_storage):
    assert recordings.storage().location == str(recordings_storage)

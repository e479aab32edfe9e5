"""/metrics from a live gunicorn with two worker processes: web-only counters in prometheus-client's
multiprocess mode add up across the workers, and everything workers did is read from the shared database, so
every scrape, whichever worker answers it, reports the same values."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import responses

from calls.models import OutboundJob
from tests.crm_world import WEBHOOK_SECRET, webhook_subscriber
from tests.factories import PbxConnectionFactory, TenantFactory
from tests.inbox import process_inbox
from tests.live_server import gunicorn
from tests.metrics.scrape import samples, value
from tests.rostelecom.conftest import API, CLIENT_ID, SIGN_KEY, as_bytes, load, run_due, sign
from tests.rostelecom.test_end_to_end import MP3, RECORD_URL

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

TOKEN = "live-metrics-token-0123456789"
HOOK = "https://hooks.subscriber.example/in"
SECRET = WEBHOOK_SECRET


@pytest.fixture
def live(tmp_path):
    """gunicorn -w 2 on loopback, on this test's database, in multiprocess mode."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    with gunicorn(tmp_path, METRICS_TOKEN=TOKEN, PROMETHEUS_MULTIPROC_DIR=str(multiproc)) as base:
        yield base, multiproc


def post_signed(base: str, pbx, action: str, body, signature: str | None = None) -> int:
    raw = as_bytes(body)
    headers = {
        "Content-Type": "application/json",
        "X-Client-ID": CLIENT_ID,
        "X-Client-Sign": signature or sign(raw),
    }
    return requests.post(
        f"{base}/hooks/rostelecom/{pbx.public_id}/{action}", data=raw, headers=headers, timeout=10
    ).status_code


def scrape(base: str) -> dict:
    response = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text)


def call_info(request):
    """The PBX's call_info answer for the session asked about (the seed's missed or answered call)."""
    missed = json.loads(request.body)["session_id"] == "76981273981237"
    return 200, {}, json.dumps(load(f"call_info_incoming_{'missed' if missed else 'answered'}.json"))


@responses.activate(assert_all_requests_are_fired=False)
def test_metrics_after_a_known_sequence_scraped_from_two_workers(live, settings, tmp_path):
    settings.OUTBOX_TIME_SCALE = 1e-6  # retries at once
    settings.STORAGES = {
        **settings.STORAGES,
        "recordings": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "recordings")},
        },
    }
    responses.add_passthru("http://127.0.0.1")
    base, multiproc = live
    tenant = TenantFactory(slug="live", time_zone="Europe/Moscow")
    pbx = PbxConnectionFactory(
        tenant=tenant,
        provider="rostelecom",
        settings={"domain": "live.rt.ru", "time_zone": "Europe/Moscow"},
        secrets={"client_id": CLIENT_ID, "sign_key": SIGN_KEY},
    )
    hooks = webhook_subscriber(tenant, HOOK)

    # The PBX's webhooks, through the live server: a missed and an answered (recorded) call, one routing
    # question, one request with a wrong signature.
    for body in load("incoming_missed.json") + load("incoming_answered.json"):
        assert post_signed(base, pbx, "call_events", body) == 200
    process_inbox()  # the inbox processor, before the routing question that reads the calls' history
    assert post_signed(base, pbx, "get_number_info", load("get_number_info_seed.json")) == 200
    assert post_signed(base, pbx, "call_events", load("incoming_missed.json")[0], signature="0" * 64) == 403
    # Unknown connections, in concurrent bursts until both workers have answered some (each worker writes its
    # own counter file in the multiprocess directory).
    unknown = 0
    with ThreadPoolExecutor(8) as pool:
        while len(list(multiproc.glob("counter_*.db"))) < 2 and unknown < 400:
            statuses = list(
                pool.map(
                    lambda _: (
                        requests.post(
                            f"{base}/hooks/rostelecom/no-such-connection-000000/call_events", timeout=10
                        ).status_code
                    ),
                    range(20),
                )
            )
            assert set(statuses) == {404}
            unknown += 20
    assert len(list(multiproc.glob("counter_*.db"))) == 2, "both workers answered webhooks"

    # What Celery workers would do, here in the test process on the same database: ask call_info, fetch the
    # recording, deliver the subscriber's messages (its first answer is a 503, then 200s).
    responses.add_callback(responses.POST, f"{API}/call_info", callback=call_info)
    responses.add(responses.POST, f"{API}/get_record", json=load("get_record.json"))
    responses.add(responses.GET, RECORD_URL, body=MP3, content_type="audio/mpeg")
    responses.add(responses.POST, HOOK, status=503)
    responses.add(responses.POST, HOOK, status=200)
    for _ in range(15):
        run_due()
    assert not OutboundJob.objects.filter(status=OutboundJob.PENDING).exists()
    sent_to_subscriber = len([c for c in responses.calls if c.request.url == HOOK])
    assert OutboundJob.objects.filter(crm_connection=hooks, status=OutboundJob.SENT).count() == 6

    scrapes = [scrape(base) for _ in range(8)]

    # Every scrape reports the same, whichever worker answered it.
    ages = {"callbridge_outbox_oldest_pending_seconds", "callbridge_outbox_overdue_seconds"}  # grow with time
    totals = {key: v for key, v in scrapes[0].items() if key[0] not in ages}
    for other in scrapes[1:]:
        assert {key: v for key, v in other.items() if key in totals} == totals
    scraped = scrapes[-1]
    assert value(scraped, "callbridge_webhooks_total", provider="rostelecom", status="200") == 7
    assert value(scraped, "callbridge_webhooks_total", provider="rostelecom", status="403") == 1
    assert value(scraped, "callbridge_webhooks_total", provider="rostelecom", status="404") == unknown
    # Six from the webhooks, one completion from each call_info answer.
    assert value(scraped, "callbridge_events_processed_total", provider="rostelecom") == 8
    # The caller of the routing question talked to extension 101 in the answered call: history answers.
    assert value(scraped, "callbridge_routing_answers_total", source="history", provider="") == 1
    assert value(scraped, "callbridge_recordings", state="stored") == 1
    assert value(scraped, "callbridge_recordings", state="expected") == 0
    assert value(scraped, "callbridge_outbox_jobs", kind="rostelecom.call_info", state="sent") == 2
    assert value(scraped, "callbridge_outbox_jobs", kind="webhook.call.recording_ready", state="sent") == 1
    assert value(scraped, "callbridge_outbox_jobs", kind="webhook.call.completed", state="sent") == 2
    assert value(scraped, "callbridge_deliveries_total", provider="webhook", outcome="transient") == 1
    assert (
        value(scraped, "callbridge_deliveries_total", provider="webhook", outcome="sent")
        == sent_to_subscriber - 1
    )
    assert (
        value(scraped, "callbridge_delivery_duration_seconds_count", provider="webhook") == sent_to_subscriber
    )
    # ringing ×2, answered, completed ×2, recording_ready, and the retried first message
    assert sent_to_subscriber == 7

"""GET /metrics in process: who may read it, and the values after a known sequence of calls."""

from __future__ import annotations

import datetime as dt

import pytest
import responses
from django.utils import timezone

from calls import routing
from calls.models import JobAttempt, OutboundJob, RoutingDecision
from tests.crm_world import WEBHOOK_SECRET, CallScript, deliver, play, register_fake_pbx, webhook_subscriber
from tests.factories import CrmConnectionFactory, PbxConnectionFactory, TenantFactory
from tests.metrics.scrape import samples, value

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-0123456789abcdef"
HOOK = "https://hooks.subscriber.example/in"
SECRET = WEBHOOK_SECRET


def scrape(client) -> dict:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content.decode())


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN


def test_with_a_token_the_bearer_token_is_required(client, token):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_without_a_token_only_debug_serves_metrics(client, settings):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = False
    assert client.get("/metrics").status_code == 404
    settings.DEBUG = True
    assert client.get("/metrics").status_code == 200


def test_every_name_has_the_prefix(client, token):
    names = {name for name, _labels in scrape(client)}
    assert names and all(name.startswith("callbridge_") for name in names)


@responses.activate
def test_values_after_a_known_sequence_of_calls(client, token, monkeypatch):
    register_fake_pbx(monkeypatch)
    tenant = TenantFactory()
    pbx = PbxConnectionFactory(tenant=tenant, provider="fakepbx", secrets={"token": "t" * 24})
    hooks = webhook_subscriber(tenant, HOOK)
    responses.add(responses.POST, HOOK, status=503)
    responses.add(responses.POST, HOOK, status=200)

    answered = CallScript("a1")
    play(pbx, answered.event(0, "ringing", "101"), answered.event(2, "answered", "101"))
    play(pbx, answered.event(40, "completed", recorded=True))
    missed = CallScript("m1", client="+79107654321")
    play(pbx, missed.event(0, "ringing", "102"), missed.event(15, "completed", outcome="missed"))
    # Two relay passes with a pause: the first attempt fails (503), its retry succeeds.
    deliver(hooks, passes=1)
    OutboundJob.objects.filter(status=OutboundJob.PENDING).update(next_attempt_at=timezone.now())
    deliver(hooks)
    RoutingDecision.objects.create(tenant=tenant, source="hooks", latency_ms=120)  # a CRM answered
    RoutingDecision.objects.create(tenant=tenant, source="history", latency_ms=30)
    RoutingDecision.objects.create(tenant=tenant, source="none", latency_ms=900)
    # Web-only counters live in this process for the whole run: compare with the value before.
    refused_before = value(scrape(client), "callbridge_webhooks_total", provider="fakepbx", status="403")
    response = client.post(f"/hooks/fakepbx/{pbx.public_id}/events", "{}", content_type="application/json")
    assert response.status_code == 403  # a webhook without its token

    scraped = scrape(client)

    assert value(scraped, "callbridge_events_processed_total", provider="fakepbx") == 5
    assert value(scraped, "callbridge_events_unprocessed") == 0
    assert value(scraped, "callbridge_event_processing_lag_seconds") == 0
    assert value(scraped, "callbridge_webhooks_total", provider="fakepbx", status="403") == refused_before + 1
    for kind, sent in {"call.ringing": 2, "call.answered": 1, "call.completed": 2}.items():
        assert value(scraped, "callbridge_outbox_jobs", kind=f"webhook.{kind}", state="sent") == sent, kind
    attempts = JobAttempt.objects.filter(job__crm_connection=hooks)
    assert value(scraped, "callbridge_deliveries_total", provider="webhook", outcome="transient") == 1
    assert (
        value(scraped, "callbridge_deliveries_total", provider="webhook", outcome="sent")
        == attempts.count() - 1
    )
    assert (
        value(scraped, "callbridge_delivery_duration_seconds_count", provider="webhook") == attempts.count()
    )
    assert (
        value(scraped, "callbridge_delivery_duration_seconds_bucket", provider="webhook", le="+Inf")
        == attempts.count()
    )
    assert value(scraped, "callbridge_routing_answers_total", source="crm", provider="webhook") == 1
    assert value(scraped, "callbridge_routing_answers_total", source="history", provider="") == 1
    assert (
        value(scraped, "callbridge_routing_duration_seconds_bucket", source="none", provider="", le="0.8")
        == 0
    )
    assert (
        value(scraped, "callbridge_routing_duration_seconds_bucket", source="none", provider="", le="1.0")
        == 1
    )
    assert value(scraped, "callbridge_routing_duration_seconds_sum", source="crm", provider="webhook") == 0.12
    assert value(scraped, "callbridge_recordings", state="expected") == 1
    assert value(scraped, "callbridge_recordings", state="stored") == 0
    assert value(scraped, "callbridge_routing_breaker_open", provider="webhook") == 0


def test_backlog_ages_and_open_breakers(client, token, monkeypatch):
    register_fake_pbx(monkeypatch)
    tenant = TenantFactory()
    crm = CrmConnectionFactory(tenant=tenant, provider="planfix")
    now = timezone.now()
    OutboundJob.objects.create(
        tenant=tenant,
        crm_connection=crm,
        connection_ref=f"crm:{crm.pk}",
        kind="planfix.event",
        dedupe_key="old",
        created_at=now - dt.timedelta(minutes=10),
        next_attempt_at=now - dt.timedelta(minutes=2),
    )
    OutboundJob.objects.create(
        tenant=tenant,
        crm_connection=crm,
        connection_ref=f"crm:{crm.pk}",
        kind="planfix.event",
        dedupe_key="dead",
        status=OutboundJob.DEAD,
    )
    for _ in range(routing.BREAKER_THRESHOLD):
        routing._record_failure(crm)  # what failed lookups record

    scraped = scrape(client)

    assert 600 <= value(scraped, "callbridge_outbox_oldest_pending_seconds") < 660
    assert 120 <= value(scraped, "callbridge_outbox_overdue_seconds") < 180
    assert value(scraped, "callbridge_outbox_jobs", kind="planfix.event", state="dead") == 1
    assert value(scraped, "callbridge_routing_breaker_open", provider="planfix") == 1


def test_settings_refuse_a_bad_throttle_and_a_missing_multiprocess_directory(tmp_path):
    from tests.isolated import run_django

    result = run_django("", tmp_path, DEBUG="true", API_THROTTLE="lots")
    assert result.returncode != 0 and "API_THROTTLE" in result.stderr
    result = run_django("", tmp_path, DEBUG="true", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing"))
    assert result.returncode != 0 and "PROMETHEUS_MULTIPROC_DIR" in result.stderr
    code = "from django.conf import settings\nprint(settings.API_THROTTLE, repr(settings.METRICS_TOKEN))"
    assert run_django(code, tmp_path, DEBUG="true").stdout.split() == ["600/min", "''"]

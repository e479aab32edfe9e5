"""The inbox: a call-event webhook stores its events and answers; the inbox processor applies them.

Tests here post with a plain django.test.Client (no processing after the request) and run the processor
themselves, as `manage.py process_inbox` would.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from calls import processor
from calls.models import Call, CallEvent, OutboundJob
from tests.pipeline.fake_providers import FakeCrm

ANSWERED = [
    {"call": "c1", "kind": "ringing", "seq": 1, "ext": "101"},
    {"call": "c1", "kind": "ringing", "seq": 2, "ext": "102"},
    {"call": "c1", "kind": "answered", "seq": 5, "ext": "102"},
    {"call": "c1", "kind": "leg_ended", "seq": 6, "ext": "101"},
    {"call": "c1", "kind": "completed", "seq": 40},
]
CALL_FIELDS = (
    "direction",
    "client_phone",
    "rang_extensions",
    "answered_extensions",
    "last_answered_extension",
    "started_at",
    "answered_at",
    "ended_at",
    "result",
    "talk_seconds",
    "final_for_crm",
)


def post(client, pbx, events, token="pbx-token-123"):
    return client.post(
        f"/hooks/fakepbx/{pbx.public_id}/events",
        data=json.dumps({"events": events}),
        content_type="application/json",
        HTTP_X_TOKEN=token,
    )


def state(call: Call) -> tuple:
    return tuple(getattr(call, f) for f in CALL_FIELDS)


def jobs(call: Call) -> list[tuple[str, str, str]]:
    return sorted(call.jobs.values_list("kind", "order_key", "dedupe_key"))


def job_shapes(call: Call) -> list[tuple[str, str]]:
    return [(kind, order_key) for kind, order_key, _ in jobs(call)]


@pytest.mark.django_db
def test_webhooks_answered_while_the_processor_is_stopped_are_stored_then_applied(pbx, crm, extensions):
    raw = Client()
    for item in ANSWERED:
        assert post(raw, pbx, [item]).status_code == 200

    # Stored, not applied: no call, no job, every event waiting.
    assert not Call.objects.exists() and not OutboundJob.objects.exists()
    assert list(CallEvent.objects.values_list("status", flat=True)) == [CallEvent.PENDING] * len(ANSWERED)
    assert processor.oldest_pending_seconds() >= 0

    assert processor.drain() == 1
    call = Call.objects.get()
    assert set(CallEvent.objects.values_list("status", "call_id")) == {(CallEvent.DONE, call.pk)}
    assert processor.oldest_pending_seconds() == 0.0

    # The same webhooks, each applied as it arrives (a processor keeping up), give the same call and jobs.
    other, other_jobs = Call.objects.get(pk=call.pk), job_shapes(call)
    assert other_jobs, "pop-ups and the completion were queued"
    Call.objects.all().delete()
    CallEvent.objects.all().delete()
    for item in ANSWERED:
        post(raw, pbx, [item])
        processor.drain()
    in_order = Call.objects.get()
    assert state(in_order) == state(other)
    assert job_shapes(in_order) == other_jobs


@pytest.mark.django_db
def test_replayed_and_shuffled_webhooks_give_the_same_call(pbx, crm, extensions):
    raw = Client()
    for item in ANSWERED:
        post(raw, pbx, [item])
    processor.drain()
    expected = state(Call.objects.get())
    Call.objects.all().delete()
    CallEvent.objects.all().delete()

    shuffled = ANSWERED * 2
    random.Random(7).shuffle(shuffled)
    for item in shuffled:
        assert post(raw, pbx, [item]).status_code == 200
        if random.Random(item["seq"]).random() < 0.5:
            processor.drain()
    processor.drain()
    assert CallEvent.objects.count() == len(ANSWERED)
    assert state(Call.objects.get()) == expected


@pytest.mark.django_db
def test_a_processing_error_is_isolated_retried_shown_and_requeued(
    pbx, crm, extensions, monkeypatch, settings, admin_client
):
    settings.INBOX_MAX_ATTEMPTS = 3
    original = FakeCrm.jobs_for
    broken = {"bad"}

    def jobs_for(self, call, notices):
        if call.provider_call_id in broken:
            raise RuntimeError("CRM adapter bug")
        return original(self, call, notices)

    monkeypatch.setattr(FakeCrm, "jobs_for", jobs_for)
    raw = Client()
    post(raw, pbx, [{"call": "bad", "kind": "ringing", "seq": 1, "ext": "101"}])
    post(raw, pbx, [{"call": "good", "kind": "ringing", "seq": 1, "ext": "101"}])

    processor.drain()
    # The good call went through; the bad one's event keeps its error and waits for a retry.
    assert Call.objects.filter(provider_call_id="good").exists()
    assert not Call.objects.filter(provider_call_id="bad").exists()
    bad = CallEvent.objects.get(provider_call_id="bad")
    assert (bad.status, bad.attempts) == (CallEvent.PENDING, 1)
    assert "CRM adapter bug" in bad.last_error and bad.next_attempt_at > timezone.now()

    # A later event of the same call waits behind it, in order.
    post(raw, pbx, [{"call": "bad", "kind": "completed", "seq": 9}])
    processor.drain()
    later = CallEvent.objects.get(provider_call_id="bad", kind="completed")
    assert later.status == CallEvent.PENDING and later.next_attempt_at == bad.next_attempt_at

    # The admin shows the event and its error.
    page = admin_client.get("/admin/calls/callevent/?status__exact=pending").content.decode()
    assert "CRM adapter bug" in page and "bad" in page

    # Retried after the backoff; after INBOX_MAX_ATTEMPTS it is marked failed and skipped, so the call's
    # later event is applied.
    future = timezone.now()
    for _ in range(3):
        future += dt.timedelta(hours=1)
        processor.process_pending(now=future)
    bad.refresh_from_db()
    assert (bad.status, bad.attempts) == (CallEvent.FAILED, 3)
    # The completion alone failed in the one-at-a-time pass too (same adapter bug): every try is recorded.
    assert CallEvent.objects.get(pk=later.pk).status in {CallEvent.PENDING, CallEvent.FAILED}

    # The bug is fixed; the admin action queues the failed events again and they are applied in order.
    broken.clear()
    response = admin_client.post(
        "/admin/calls/callevent/",
        {"action": "requeue", "_selected_action": list(CallEvent.objects.values_list("pk", flat=True))},
    )
    assert response.status_code == 302
    processor.process_pending(now=future + dt.timedelta(hours=1))
    call = Call.objects.get(provider_call_id="bad")
    assert call.ended and set(call.events.values_list("status", flat=True)) == {CallEvent.DONE}


@pytest.mark.django_db
def test_the_webhook_answer_is_a_few_statements_and_no_call_state(pbx, crm, extensions):
    raw = Client()
    with CaptureQueriesContext(connection) as queries:
        assert post(raw, pbx, ANSWERED[:1]).status_code == 200
    statements = [q["sql"] for q in queries.captured_queries]
    # Resolving the connection and one INSERT of the event: no Call, no job, no routing or extension lookup.
    assert len(statements) <= 3, statements
    assert not [s for s in statements if 'calls_call"' in s or "outboundjob" in s or "routing" in s]


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.test", "pw")


@pytest.mark.django_db(transaction=True)
def test_concurrent_webhooks_of_one_call_apply_every_event_once(pbx, crm, extensions):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers are a PostgreSQL concern (SQLite serialises every write)")
    items = ANSWERED * 3  # every webhook three times, from several threads at once
    random.Random(3).shuffle(items)
    errors: list[BaseException] = []

    def send(chunk):
        try:
            client = Client()
            for item in chunk:
                assert post(client, pbx, [item]).status_code == 200
                processor.process_pending()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(items[i::5],)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    processor.drain()
    call = Call.objects.get()
    assert CallEvent.objects.filter(status=CallEvent.DONE, call=call).count() == len(ANSWERED)
    assert (call.result, call.answered_extensions, call.final_for_crm) == ("answered", ["102"], True)
    keys = [k for _, _, k in jobs(call)]
    assert len(keys) == len(set(keys))


STORE_ONE_WEBHOOK = """
import json, time
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

call_command("migrate", verbosity=0)
from calls.models import Call, CallEvent, OutboundJob
from tests.factories import CrmConnectionFactory, PbxConnectionFactory, TenantFactory
from tests.rostelecom.conftest import CLIENT_ID, SIGN_KEY, load, sign

tenant = TenantFactory(slug="acme", region="RU", time_zone="Europe/Moscow")
pbx = PbxConnectionFactory(
    tenant=tenant, provider="rostelecom", settings={"domain": "acme.rt.ru"},
    secrets={"client_id": CLIENT_ID, "sign_key": SIGN_KEY},
)
for key in ("planfix", "retailcrm", "wirecrm"):
    CrmConnectionFactory(tenant=tenant, provider=key, key=key)
answers = []
for body in load("incoming_answered.json"):
    raw = json.dumps(body, ensure_ascii=False).encode()
    started = time.monotonic()
    with CaptureQueriesContext(connection) as queries:
        response = Client().post(
            f"/hooks/rostelecom/{pbx.public_id}/call_events", data=raw, content_type="application/json",
            HTTP_X_CLIENT_ID=CLIENT_ID, HTTP_X_CLIENT_SIGN=sign(raw),
        )
    answers.append([response.status_code, len(queries.captured_queries), time.monotonic() - started])
print(json.dumps({
    "answers": answers,
    "stored": CallEvent.objects.filter(status="pending").count(),
    "calls": Call.objects.count(),
    "jobs": OutboundJob.objects.count(),
}))
"""


def test_the_webhook_answer_touches_neither_the_cache_nor_the_broker(tmp_path):
    """Cache and broker point at a socket that accepts connections and never answers: any use would show up
    as a connection (and a request hung for seconds)."""
    from tests.isolated import run_django
    from tests.listener import Listener

    listener = Listener()
    try:
        result = run_django(
            STORE_ONE_WEBHOOK,
            tmp_path,
            DJANGO_SETTINGS_MODULE="portal.settings_test",
            CELERY_BROKER_URL=f"redis://127.0.0.1:{listener.port}/0",
            CACHE_URL=f"redis://127.0.0.1:{listener.port}/1",
        )
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        assert listener.connections() == 0
    finally:
        listener.close()
    assert [status for status, _, _ in outcome["answers"]] == [200] * len(outcome["answers"])
    assert max(statements for _, statements, _ in outcome["answers"]) <= 3
    assert max(seconds for _, _, seconds in outcome["answers"]) < 1.0
    assert (outcome["stored"], outcome["calls"], outcome["jobs"]) == (len(outcome["answers"]), 0, 0)

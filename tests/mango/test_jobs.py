"""Jobs towards Mango: CRM-driven routing of IVR calls, the recording grace timer, reconciliation from statistics."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import parse_qsl

import pytest
import responses
from django.core.cache import cache
from django.utils import timezone

from calls import outbox
from calls.models import Call, CallEvent, OutboundJob, RoutingDecision
from integrations.providers.base import ProviderError, get_provider
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory
from tests.mango.support import API_KEY, API_SALT, API_URL, FIXTURES, T0, deliver, form, load, notices, post

pytestmark = pytest.mark.django_db


@pytest.fixture
def mocked():
    with responses.RequestsMock() as rsps:
        yield rsps


@pytest.fixture
def nothing_sent():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
        assert len(rsps.calls) == 0


@pytest.fixture
def routing_crm(tenant):
    """A CRM that knows the caller: the responsible employee is 101, the name Ivan Petrov's client."""
    return CrmConnectionFactory(
        tenant=tenant,
        provider="fakecrm",
        key="crm",
        settings={"answer": {"extension": "101", "display_name": "ООО Ромашка, Анна"}},
        secrets={"token": "t"},
    )


def ivr_appeared(entry: str, leg: str, caller: str = "79161234567") -> dict:
    return {
        "entry_id": entry,
        "call_id": leg,
        "timestamp": T0,
        "seq": 1,
        "call_state": "Appeared",
        "location": "ivr",
        "from": {"number": caller},
        "to": {"number": "74951234567", "line_number": "74951234567"},
    }


def route_job(entry: str) -> OutboundJob:
    return OutboundJob.objects.get(kind="mango.route", call__provider_call_id=entry)


# ---------------------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------------------


def test_an_incoming_call_in_the_ivr_is_routed_to_the_responsible_employee(
    client, mocked, pbx, routing_crm, extensions
):
    assert post(client, pbx, "events/call", ivr_appeared("E-r1", "L-ivr-1")).status_code == 200
    job = route_job("E-r1")
    assert job.payload["leg_id"] == "L-ivr-1" and job.payload["caller"] == "+79161234567"
    assert job.payload["did"] == "+74951234567"
    assert not mocked.calls  # never inside the webhook

    mocked.add(responses.POST, f"{API_URL}/commands/route", json={"result": 1000})
    assert get_provider(pbx).perform(job) == "routed to 101 (crm)"

    name = "\\u041e\\u041e\\u041e \\u0420\\u043e\\u043c\\u0430\\u0448\\u043a\\u0430, \\u0410\\u043d\\u043d\\u0430"
    expected = (
        (
            '{"command_id":"CID","call_id":"L-ivr-1","to_number":"101","sip_headers":{"From/display-name":"NAME"}}'
        )
        .replace("CID", job.payload["command_id"])
        .replace("NAME", name)
    )
    assert mocked.calls[0].request.body == form(expected)
    decision = RoutingDecision.objects.get()
    assert (decision.extension, decision.source, decision.call.provider_call_id) == ("101", "crm", "E-r1")


def test_two_ivr_calls_within_two_seconds_get_one_route_and_the_pbx_routes_the_other(
    client, mocked, pbx, routing_crm, extensions
):
    post(client, pbx, "events/call", ivr_appeared("E-a", "L-a"))
    post(client, pbx, "events/call", ivr_appeared("E-b", "L-b", caller="79031112233"))
    mocked.add(responses.POST, f"{API_URL}/commands/route", json={"result": 1000})

    adapter = get_provider(pbx)
    first, second = adapter.perform(route_job("E-a")), adapter.perform(route_job("E-b"))
    assert first == "routed to 101 (crm)"
    assert second.startswith("skipped: rate limit")
    assert len(mocked.calls) == 1


def test_the_route_limit_is_per_tenant(client, mocked, pbx, routing_crm, extensions):
    other = PbxConnectionFactory(
        provider="mango", settings={}, secrets={"api_key": API_KEY + "x", "api_salt": API_SALT + "x"}
    )
    CrmConnectionFactory(
        tenant=other.tenant,
        provider="fakecrm",
        key="crm",
        settings=routing_crm.settings,
        secrets={"token": "t"},
    )
    ExtensionFactory(tenant=other.tenant, number="101")
    post(client, pbx, "events/call", ivr_appeared("E-a", "L-a"))
    post(client, other, "events/call", ivr_appeared("E-b", "L-b"))
    mocked.add(responses.POST, f"{API_URL}/commands/route", json={"result": 1000})
    assert get_provider(pbx).perform(route_job("E-a")).startswith("routed")
    assert get_provider(other).perform(route_job("E-b")).startswith("routed")


def test_no_route_is_sent_once_the_ivr_leg_has_ended(client, nothing_sent, pbx, routing_crm, extensions):
    post(client, pbx, "events/call", ivr_appeared("E-r", "L-ivr"))
    post(client, pbx, "events/call", dict(ivr_appeared("E-r", "L-ivr"), seq=3, call_state="Disconnected"))
    assert get_provider(pbx).perform(route_job("E-r")) == "skipped: the IVR leg has ended"


def test_without_a_responsible_employee_the_pbx_scheme_routes(client, nothing_sent, pbx, crm, extensions):
    post(client, pbx, "events/call", ivr_appeared("E-r", "L-ivr"))
    assert get_provider(pbx).perform(route_job("E-r")).startswith("skipped: no responsible extension")


def test_the_route_job_expires_when_the_call_ends(client, pbx, routing_crm, extensions):
    webhooks = load("missed_call.json")["webhooks"]
    deliver(client, pbx, webhooks[:1])
    job = OutboundJob.objects.get(kind="mango.route")
    assert (job.status, job.expires_on_call_end) == ("pending", True)
    deliver(client, pbx, webhooks[1:])
    outbox.expire_due_jobs()
    job.refresh_from_db()
    assert job.status == OutboundJob.EXPIRED


def test_no_route_job_when_crm_routing_is_off(client, tenant, routing_crm, extensions):
    pbx = PbxConnectionFactory(
        tenant=tenant,
        provider="mango",
        settings={"crm_routing": False},
        secrets={"api_key": API_KEY, "api_salt": API_SALT},
    )
    post(client, pbx, "events/call", ivr_appeared("E-r", "L-ivr"))
    assert not OutboundJob.objects.filter(kind="mango.route").exists()


def test_a_long_display_name_is_cut_to_64_bytes_without_breaking_a_letter(
    client, mocked, pbx, tenant, extensions
):
    CrmConnectionFactory(
        tenant=tenant,
        provider="fakecrm",
        key="crm",
        settings={"answer": {"extension": "102", "display_name": "Щ" * 40}},
        secrets={"token": "t"},
    )
    post(client, pbx, "events/call", ivr_appeared("E-r", "L-ivr"))
    mocked.add(responses.POST, f"{API_URL}/commands/route", json={"result": 1000})
    get_provider(pbx).perform(route_job("E-r"))
    sent = json.loads(dict(parse_qsl(mocked.calls[0].request.body))["json"])
    assert sent["sip_headers"]["From/display-name"] == "Щ" * 32


def test_a_route_refused_by_mango_fails_permanently(client, mocked, pbx, routing_crm, extensions):
    post(client, pbx, "events/call", ivr_appeared("E-r", "L-ivr"))
    mocked.add(responses.POST, f"{API_URL}/commands/route", json={"result": 4101})
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).perform(route_job("E-r"))
    assert exc.value.permanent and "4101" in str(exc.value)


# ---------------------------------------------------------------------------------------------------------
# Recording grace
# ---------------------------------------------------------------------------------------------------------


def test_the_grace_timer_runs_through_the_outbox_and_makes_the_call_final(client, pbx, crm, extensions):
    deliver(client, pbx, load("ring_group_one_answers.json")["webhooks"])
    job = OutboundJob.objects.get(kind="mango.recording_grace")
    assert outbox.claim([job.pk], "too-early", timezone.now()) == [job.pk]  # a lease, but not due yet:
    assert job.pk not in outbox.claimable(timezone.now()).values_list("pk", flat=True)
    outbox.release([job.pk], "too-early")

    later = job.due_at + dt.timedelta(seconds=1)
    assert outbox.claim([job.pk], "test-owner", later) == [job.pk]
    outbox.run_claim("test-owner", [job.pk])
    job.refresh_from_db()
    assert job.status == OutboundJob.SENT
    assert Call.objects.get().final_for_crm
    assert "completed:102" in notices(crm)


def test_the_grace_timer_after_a_recording_verdict_does_nothing(client, pbx, crm, extensions):
    webhooks = load("recording_too_short.json")["webhooks"]
    deliver(client, pbx, webhooks)
    job = OutboundJob.objects.get(kind="mango.recording_grace")
    assert get_provider(pbx).perform(job) == "already final"
    assert not CallEvent.objects.filter(dedupe_key__startswith="grace:").exists()


def test_a_grace_of_zero_seconds_is_due_at_once(client, tenant, crm, extensions):
    pbx = PbxConnectionFactory(
        tenant=tenant,
        provider="mango",
        settings={"recording_grace_seconds": 0},
        secrets={"api_key": API_KEY, "api_salt": API_SALT},
    )
    deliver(client, pbx, load("ring_group_one_answers.json")["webhooks"])
    assert OutboundJob.objects.get(kind="mango.recording_grace").due_at <= timezone.now()


# ---------------------------------------------------------------------------------------------------------
# Reconciliation
# ---------------------------------------------------------------------------------------------------------


def test_reconciliation_is_asked_once_per_hour_per_connection(pbx):
    adapter = get_provider(pbx)
    at_ten = dt.datetime(2024, 11, 24, 10, 1, tzinfo=dt.UTC)
    [spec] = adapter.periodic_jobs(at_ten)
    [again] = adapter.periodic_jobs(at_ten + dt.timedelta(minutes=58))
    [next_hour] = adapter.periodic_jobs(at_ten + dt.timedelta(hours=1))
    assert spec.dedupe_key == again.dedupe_key != next_hour.dedupe_key
    until = int(dt.datetime(2024, 11, 24, 9, 55, tzinfo=dt.UTC).timestamp())
    assert spec.payload == {"date_from": until - 24 * 3600, "date_to": until}


def test_reconciliation_can_be_turned_off(tenant):
    pbx = PbxConnectionFactory(tenant=tenant, provider="mango", settings={"reconcile_hours": 0})
    assert get_provider(pbx).periodic_jobs(timezone.now()) == []


def _reconcile_job(pbx) -> OutboundJob:
    spec = get_provider(pbx).periodic_jobs(dt.datetime(2024, 11, 24, 11, 0, tzinfo=dt.UTC))[0]
    outbox.create_jobs(pbx, [spec])
    return OutboundJob.objects.get(kind="mango.reconcile")


@pytest.fixture
def quick_polls(settings):
    settings.OUTBOX_TIME_SCALE = 0.0001  # the 5-second waits between polls, shrunk


def test_reconciliation_completes_the_calls_no_webhook_reported(
    client, mocked, quick_polls, pbx, crm, extensions
):
    deliver(client, pbx, load("incoming_ivr_to_employee.json")["webhooks"])
    already = Call.objects.get()
    events_before = CallEvent.objects.filter(call=already).count()
    job = _reconcile_job(pbx)
    mocked.add(responses.POST, f"{API_URL}/stats/request", json={"key": "S2V5LTE="})
    mocked.add(responses.POST, f"{API_URL}/stats/result", status=204)
    mocked.add(responses.POST, f"{API_URL}/stats/result", body=(FIXTURES / "stats.csv").read_bytes())

    assert get_provider(pbx).perform(job) == "5 calls in the statistics, 3 completed from them"

    fields = (
        "entry_id,create,start,finish,answer,from_extension,from_number,to_extension,to_number,"
        "disconnect_reason,line_number,location,records"
    )
    date_from, date_to = job.payload["date_from"], job.payload["date_to"]
    expected = f'{{"date_from":{date_from},"date_to":{date_to},"fields":"{fields}","request_id":"reconcile-{job.pk}"}}'
    assert mocked.calls[0].request.body == form(expected)
    assert mocked.calls[1].request.body == form('{"key":"S2V5LTE="}')

    missed = Call.objects.get(provider_call_id="U3RhdC1taXNzZWQtMQ==")
    assert (missed.direction, missed.result, missed.client_phone) == ("in", "missed", "+79031112233")
    assert missed.rang_extensions == ["101"] and missed.final_for_crm
    assert "completed from Mango statistics" in missed.completion_note

    answered = Call.objects.get(provider_call_id="U3RhdC1hbnN3ZXJlZC0y")
    assert (answered.result, answered.last_answered_extension, answered.talk_seconds) == (
        "answered",
        "102",
        90,
    )
    assert answered.final_for_crm and answered.recording.hints == {"recording_id": "MToxMDA1NzU5MzpyZWM6OQ=="}

    outgoing = Call.objects.get(provider_call_id="U3RhdC1vdXQtMw==")
    assert (outgoing.direction, outgoing.initiating_extension, outgoing.client_phone) == (
        "out",
        "101",
        "+79037778899",
    )

    # The call the webhooks completed is untouched; the one still in progress is left to its webhooks.
    assert CallEvent.objects.filter(call=already).count() == events_before
    assert not Call.objects.filter(provider_call_id="U3RhdC1saXZlLTQ=").exists()
    assert not CallEvent.objects.filter(dedupe_key__startswith="stats:", call=already).exists()


def test_a_call_whose_summary_was_lost_is_completed_from_the_statistics(
    client, mocked, quick_polls, pbx, crm, extensions
):
    webhooks = [w for w in load("missed_call.json")["webhooks"] if w["path"] != "events/summary"]
    deliver(client, pbx, webhooks)
    entry = webhooks[0]["json"]["entry_id"]
    assert not Call.objects.get().ended
    row = f"{entry};{T0};{T0 + 6};{T0 + 31};0;;79161234567;101;sip:ivan@acme.mangosip.ru;1110;74951234567;abonent;[]\n"
    mocked.add(responses.POST, f"{API_URL}/stats/request", json={"key": "k"})
    mocked.add(responses.POST, f"{API_URL}/stats/result", body=row)

    get_provider(pbx).perform(_reconcile_job(pbx))
    call = Call.objects.get()
    assert (call.ended, call.result, call.final_for_crm) == (True, "missed", True)
    assert call.rang_extensions == ["101", "102"]


def test_an_export_not_ready_in_time_is_retried_with_the_same_key(client, mocked, quick_polls, pbx):
    job = _reconcile_job(pbx)
    mocked.add(responses.POST, f"{API_URL}/stats/request", json={"key": "k1"})
    mocked.add(responses.POST, f"{API_URL}/stats/result", status=204)
    with pytest.raises(ProviderError) as exc:
        get_provider(pbx).perform(job)
    assert not exc.value.permanent
    assert [c.request.url.rsplit("/", 1)[1] for c in mocked.calls] == ["request", "result", "result"]

    # The retry polls the same export instead of asking for a new one.
    mocked.add(responses.POST, f"{API_URL}/stats/result", body="")
    assert get_provider(pbx).perform(job) == "0 calls in the statistics, 0 completed from them"
    assert [c.request.url.rsplit("/", 1)[1] for c in mocked.calls][3:] == ["result"]


def test_a_repeated_reconciliation_adds_nothing(client, mocked, quick_polls, pbx, crm, extensions):
    csv = (FIXTURES / "stats.csv").read_bytes()
    for _ in range(2):
        mocked.add(responses.POST, f"{API_URL}/stats/request", json={"key": "k"})
        mocked.add(responses.POST, f"{API_URL}/stats/result", body=csv)
    job = _reconcile_job(pbx)
    adapter = get_provider(pbx)
    adapter.perform(job)
    counts = (Call.objects.count(), CallEvent.objects.count(), OutboundJob.objects.count())
    cache.clear()  # the per-tenant 2-second limiter of stats/request
    assert adapter.perform(job) == "5 calls in the statistics, 0 completed from them"
    assert (Call.objects.count(), CallEvent.objects.count(), OutboundJob.objects.count()) == counts


def test_periodic_reconciliation_covers_the_time_since_its_last_successful_run(tenant):
    pbx = PbxConnectionFactory(tenant=tenant, provider="mango", settings={"reconcile_hours": 2})
    adapter = get_provider(pbx)
    at_ten = dt.datetime(2024, 11, 24, 10, 7, tzinfo=dt.UTC)
    [first] = adapter.periodic_jobs(at_ten)
    until = int(dt.datetime(2024, 11, 24, 9, 55, tzinfo=dt.UTC).timestamp())
    assert first.payload == {"date_from": until - 2 * 3600, "date_to": until}, "no run yet: reconcile_hours"

    # The last run that succeeded covered up to three days ago (the portal was down since).
    last = until - 3 * 86400
    outbox.create_jobs(
        pbx, [type(first)("mango.reconcile", "old", {"date_from": last - 7200, "date_to": last})]
    )
    OutboundJob.objects.filter(dedupe_key="old").update(status=OutboundJob.SENT)
    [catch_up] = adapter.periodic_jobs(at_ten)
    assert catch_up.payload == {"date_from": last, "date_to": until}

    # Never further back than the 14 days Mango keeps.
    OutboundJob.objects.filter(dedupe_key="old").update(payload={"date_to": until - 30 * 86400})
    [bounded] = adapter.periodic_jobs(at_ten)
    assert bounded.payload["date_from"] == until - 14 * 86400


def test_a_silent_call_is_reconciled_from_the_statistics(client, mocked, quick_polls, pbx, crm, extensions):
    from calls.reconcile import schedule_reconciliation

    webhooks = [w for w in load("missed_call.json")["webhooks"] if w["path"] != "events/summary"]
    deliver(client, pbx, webhooks)
    entry = webhooks[0]["json"]["entry_id"]
    CallEvent.objects.update(received_at=timezone.now() - dt.timedelta(hours=1))
    row = f"{entry};{T0};{T0 + 6};{T0 + 31};0;;79161234567;101;sip:ivan@acme.mangosip.ru;1110;74951234567;abonent;[]\n"
    mocked.add(responses.POST, f"{API_URL}/stats/request", json={"key": "k"})
    mocked.add(responses.POST, f"{API_URL}/stats/result", body=row)

    assert schedule_reconciliation() == 1
    outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))

    call = Call.objects.get()
    assert (call.ended, call.result, call.final_for_crm) == (True, "missed", True)


def test_a_silent_call_missing_from_the_statistics_is_closed_as_unknown(
    client, mocked, quick_polls, pbx, crm, extensions
):
    from calls.reconcile import schedule_reconciliation

    webhooks = [w for w in load("missed_call.json")["webhooks"] if w["path"] != "events/summary"]
    deliver(client, pbx, webhooks)
    CallEvent.objects.update(received_at=timezone.now() - dt.timedelta(hours=1))
    mocked.add(responses.POST, f"{API_URL}/stats/request", json={"key": "k"})
    mocked.add(responses.POST, f"{API_URL}/stats/result", body="")

    assert schedule_reconciliation() == 1
    outbox.relay(publish=lambda owner, ids: outbox.run_claim(owner, ids))

    call = Call.objects.get()
    assert (call.ended, call.result) == (True, "unknown")
    assert "Mango's statistics have no such call" in call.completion_note

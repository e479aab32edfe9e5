from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone

from calls import routing
from calls.models import Call, RoutingDecision
from calls.processor import ingest
from integrations.models import ExtensionMapping
from tests.factories import CrmConnectionFactory
from tests.pipeline.fake_providers import to_event

pytestmark = pytest.mark.django_db

CALLER = "+79161234567"


def fake_crm(tenant, key, priority, answer=None, delay=0):
    settings = {"delay": delay}
    if answer:
        settings["answer"] = answer
    return CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key=key, priority=priority, settings=settings, secrets={}
    )


def test_the_highest_priority_answer_wins(tenant, extensions):
    fake_crm(tenant, "second", 2, {"extension": "102", "display_name": "Second"})
    fake_crm(tenant, "first", 1, {"extension": "101", "display_name": ""})
    decision = routing.resolve(tenant, CALLER, "+74951234567")
    assert (decision.extension, decision.display_name, decision.source) == ("101", "Second", "first")


def test_a_sleeping_crm_does_not_hold_the_answer_past_the_budget(tenant, extensions):
    fake_crm(tenant, "slow", 1, {"extension": "101"}, delay=5)
    fake_crm(tenant, "fast", 2, {"extension": "102", "display_name": "Ivan"})
    started = time.monotonic()
    decision = routing.resolve(tenant, CALLER, "", deadline_ms=200)
    assert time.monotonic() - started < 2
    assert decision.extension == "102" and decision.source == "fast"
    assert decision.detail["late"] == ["slow"]


def test_every_crm_slow_falls_back_to_the_last_extension_that_talked(tenant, pbx, extensions):
    fake_crm(tenant, "slow", 1, {"extension": "101"}, delay=5)
    ingest(
        pbx,
        [
            to_event({"call": "old", "kind": "answered", "seq": 1, "ext": "103"}),
            to_event({"call": "old", "kind": "completed", "seq": 5}),
        ],
    )
    started = time.monotonic()
    decision = routing.resolve(tenant, CALLER, "", deadline_ms=200)
    assert time.monotonic() - started < 2
    assert (decision.extension, decision.source) == ("103", "history")


def test_history_skips_a_manager_who_is_not_free(tenant, pbx, crm, extensions):
    ingest(
        pbx,
        [
            to_event({"call": "old", "kind": "answered", "seq": 1, "ext": "103"}),
            to_event({"call": "old", "kind": "completed", "seq": 5}),
        ],
    )
    ExtensionMapping.objects.create(
        extension=extensions[2],
        crm_connection=crm,
        crm_user_id="7",
        status="dinner",
        status_at=timezone.now(),
    )
    decision = routing.resolve(tenant, CALLER, "")
    assert decision.extension == "" and decision.source == "none"


def test_an_extension_the_tenant_does_not_have_never_reaches_the_pbx(tenant, extensions):
    fake_crm(tenant, "crm", 1, {"extension": "999", "display_name": "Ivan"})
    decision = routing.resolve(tenant, CALLER, "")
    assert decision.extension == "" and decision.display_name == "Ivan"
    assert decision.detail["dropped_extension"] == "999"


def test_answers_are_cached(tenant, extensions):
    crm = fake_crm(tenant, "crm", 1, {"extension": "101", "display_name": "Ivan"})
    routing.resolve(tenant, CALLER, "")
    crm.settings = {"answer": {"extension": "102"}}
    crm.save()
    decision = routing.resolve(tenant, CALLER, "")
    assert (decision.extension, decision.source) == ("101", "cache")


def test_circuit_breaker_skips_a_crm_after_five_failures(tenant, extensions, settings):
    settings.ROUTING_CACHE_SECONDS = 0
    failing = CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key="failing", priority=1, settings={"fail": True}, secrets={}
    )
    for n in range(5):
        routing.resolve(tenant, f"+7916123456{n}", "", deadline_ms=150)
    assert routing.breaker_open(failing)
    started = time.monotonic()
    decision = routing.resolve(tenant, CALLER, "", deadline_ms=150)
    assert time.monotonic() - started < 0.1
    assert decision.detail["skipped"] == ["failing"]


def test_a_late_answer_is_no_failure_and_is_cached_for_the_next_call(tenant, extensions):
    slow = fake_crm(tenant, "slow", 1, {"extension": "101", "display_name": "Ivan"}, delay=0.6)
    for _n in range(6):  # more late answers than the breaker's threshold of failures
        first = routing.resolve(tenant, CALLER, "", deadline_ms=200)
        assert first.detail["late"] == ["slow"] and first.extension == ""
    time.sleep(1.0)  # the abandoned lookups finish after the routing deadline
    assert not routing.breaker_open(slow)
    second = routing.resolve(tenant, CALLER, "", deadline_ms=200)
    assert (second.extension, second.source) == ("101", "cache")


def test_a_tenant_holds_a_bounded_share_of_the_lookup_threads(tenant, extensions, settings):
    from tests.factories import ExtensionFactory, TenantFactory

    settings.ROUTING_TENANT_THREADS = 2
    fake_crm(tenant, "hanging", 1, {"extension": "101"}, delay=2)
    decisions = [routing.resolve(tenant, f"+7916123456{n}", "", deadline_ms=150) for n in range(4)]
    assert [d.detail.get("busy") for d in decisions] == [None, None, ["hanging"], ["hanging"]]

    other = TenantFactory(slug="other")
    ExtensionFactory(tenant=other, number="201")
    fake_crm(other, "healthy", 1, {"extension": "201", "display_name": "Olga"})
    started = time.monotonic()
    decision = routing.resolve(other, CALLER, "", deadline_ms=800)
    assert (decision.extension, decision.source) == ("201", "healthy")
    assert time.monotonic() - started < 0.8


def test_a_decision_made_before_the_call_existed_is_attached_to_it(tenant, pbx, extensions):
    fake_crm(tenant, "crm", 1, {"extension": "102"})
    decision = routing.resolve(tenant, CALLER, "+74951234567", pbx_connection=pbx)
    first_event = to_event({"call": "new1", "kind": "ringing", "seq": 1})
    RoutingDecision.objects.filter(pk=decision.pk).update(
        created_at=first_event.timestamp - dt.timedelta(seconds=2)
    )
    ingest(pbx, [to_event({"call": "new1", "kind": "ringing", "seq": 1})])
    call = Call.objects.get(provider_call_id="new1")
    decision.refresh_from_db()
    assert decision.call == call
    assert RoutingDecision.objects.filter(call=call).count() == 1

"""simulate_call's refusals: a real PBX connection without --yes, a disabled sandbox, what a scenario needs."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from calls.models import Call
from integrations.models import Extension
from integrations.simulation import SCENARIOS, build_timeline
from tests.factories import PbxConnectionFactory

pytestmark = pytest.mark.django_db


def simulate(*args, **options) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command("simulate_call", *args, stdout=out, stderr=err, **options)
    return out.getvalue() + err.getvalue()


def test_a_real_pbx_connection_needs_yes_and_the_warning_names_the_crms(tenant, sandbox_crm):
    PbxConnectionFactory(tenant=tenant, provider="rostelecom")
    with pytest.raises(CommandError) as refused:
        simulate(tenant.slug, scenario="answered", url="http://127.0.0.1:9")
    assert "real PBX connection" in str(refused.value) and "contract/sandbox-crm" in str(refused.value)
    assert "--yes" in str(refused.value)
    assert not Call.objects.exists()


def test_unknown_tenant_and_tenant_without_pbx(tenant):
    with pytest.raises(CommandError, match="no tenant"):
        simulate("nobody", scenario="answered")
    with pytest.raises(CommandError, match="no active PBX"):
        simulate(tenant.slug, scenario="answered")


def test_a_disabled_sandbox_refuses_to_simulate(tenant, settings):
    settings.SANDBOX_ENABLED = False
    PbxConnectionFactory(
        tenant=tenant, provider="sandbox_pbx", settings={}, secrets={"signing_key": "k" * 32}
    )
    with pytest.raises(CommandError, match="SANDBOX_ENABLED=false"):
        simulate(tenant.slug, scenario="answered", url="http://127.0.0.1:9")


def test_an_unreachable_portal_is_a_clear_error(tenant, settings):
    settings.SANDBOX_ENABLED = True
    PbxConnectionFactory(
        tenant=tenant, provider="sandbox_pbx", settings={}, secrets={"signing_key": "k" * 32}
    )
    with pytest.raises(CommandError, match="did not answer"):
        simulate(tenant.slug, scenario="missed", url="http://127.0.0.1:9", fast=True)


def test_a_ring_group_needs_three_extensions(tenant, settings):
    settings.SANDBOX_ENABLED = True
    Extension.objects.filter(tenant=tenant, number="103").delete()
    PbxConnectionFactory(
        tenant=tenant, provider="sandbox_pbx", settings={}, secrets={"signing_key": "k" * 32}
    )
    with pytest.raises(CommandError, match="needs 3 extension"):
        simulate(tenant.slug, scenario="ring-group", url="http://127.0.0.1:9")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_timelines_keep_time_in_order_and_end_once(scenario):
    timeline = build_timeline(
        scenario, {"from": "+79161110022", "extension": "101", "extensions": ["102", "103"]}
    )
    offsets = [s.at for s in timeline.steps]
    assert offsets == sorted(offsets)
    assert [s.kind for s in timeline.steps].count("ended") == 1
    fast = build_timeline(
        scenario, {"from": "+79161110022", "extension": "101", "extensions": ["102", "103"], "fast": True}
    )
    assert all(fast.delay_before(i) == 0 for i in range(len(fast.steps)))
    assert fast.moment(fast.steps[-1]) <= timezone.now()  # a fast call lies wholly in the past

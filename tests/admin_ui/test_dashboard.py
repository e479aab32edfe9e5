"""The admin index is the tenant's dashboard: figures computed from its calls, deliveries and routing."""

from __future__ import annotations

import datetime as dt

from django.urls import reverse
from django.utils import timezone

from calls.dashboard import tenant_dashboard
from calls.models import Call, OutboundJob, Recording, RoutingDecision
from tests.admin_world import client_for


def make_call(world, n, *, result, hours_ago, tenant=None, talk=None, wait=None):
    tenant = tenant or world.tenant_a
    pbx = world.pbx_a if tenant == world.tenant_a else world.pbx_b
    return Call.objects.create(
        tenant=tenant,
        pbx_connection=pbx,
        provider_call_id=f"c{n}",
        direction="in",
        ended=True,
        client_phone="+7916000000" + str(n),
        result=result,
        talk_seconds=talk,
        wait_seconds=wait,
        started_at=timezone.now() - dt.timedelta(hours=hours_ago),
    )


def test_figures_come_from_the_tenants_calls(world):
    make_call(world, 1, result="answered", hours_ago=1, talk=60, wait=10)
    make_call(world, 2, result="answered", hours_ago=2, talk=120, wait=20)
    make_call(world, 3, result="missed", hours_ago=3, wait=30)
    make_call(world, 4, result="missed", hours_ago=24 * 40)  # outside the 30 days
    make_call(world, 5, result="missed", hours_ago=1, tenant=world.tenant_b)
    board = tenant_dashboard(world.tenant_a)
    assert board.total == 3
    assert board.missed_rate == 33.3
    assert board.avg_talk == 90 and board.avg_wait == 20
    assert sum(board.per_day["answered"]) == 2 and sum(board.per_day["missed"]) == 1
    assert sum(board.hours) == 3


def test_delivery_health_per_crm(world):
    call = make_call(world, 1, result="answered", hours_ago=1)
    common = {
        "tenant": world.tenant_a,
        "crm_connection": world.crm_a,
        "connection_ref": f"crm:{world.crm_a.pk}",
        "call": call,
    }
    OutboundJob.objects.create(kind="event", dedupe_key="a", status="pending", **common)
    OutboundJob.objects.create(kind="event", dedupe_key="b", status="pending", attempts=2, **common)
    OutboundJob.objects.create(kind="event", dedupe_key="c", status="dead", **common)
    OutboundJob.objects.create(kind="event", dedupe_key="d", status="sent", **common)
    world.crm_a.last_error = "HTTP 500 from Planfix"
    world.crm_a.last_error_at = timezone.now()
    world.crm_a.save()
    Recording.objects.create(call=call)
    RoutingDecision.objects.create(
        tenant=world.tenant_a, caller="+79160000001", source="planfix", extension="101", latency_ms=120
    )
    board = tenant_dashboard(world.tenant_a)
    (health,) = board.delivery
    assert (health.pending, health.retrying, health.failed, health.held) == (2, 1, 1, 0)
    assert health.oldest_pending is not None and health.last_error == "HTTP 500 from Planfix"
    assert board.recordings_waiting == 1
    assert board.routing == [{"source": "planfix", "n": 1, "answered": 1, "avg_ms": 120.0, "max_ms": 120}]


def test_tenant_staff_see_their_dashboard_on_the_admin_index(world):
    make_call(world, 1, result="answered", hours_ago=1, talk=30)
    make_call(world, 2, result="missed", hours_ago=1, tenant=world.tenant_b)
    page = client_for(world.support_a).get(reverse("admin:index")).content.decode()
    assert 'id="calls-per-day"' in page and "chart.umd.min.js" in page
    assert "Alpha Ltd" in page and "Beta Ltd" not in page
    assert 'id="figure-total"><div class="value">1<' in page


def test_superusers_pick_a_tenant(world):
    client = client_for(world.superuser)
    page = client.get(reverse("admin:index")).content.decode()
    assert "Pick a tenant" in page
    page = client.get(reverse("admin:index"), {"tenant": world.tenant_b.pk}).content.decode()
    assert "Beta Ltd" in page and 'id="calls-per-day"' in page


def test_another_tenants_dashboard_is_not_shown(world):
    page = (
        client_for(world.support_a)
        .get(reverse("admin:index"), {"tenant": world.tenant_b.pk})
        .content.decode()
    )
    assert "Beta Ltd" not in page

"""Every time shown to a tenant's staff is in the tenant's zone: activated per request for users whose tenants
share one zone; per row, with the zone named, for users of tenants in several zones (and superusers)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.urls import reverse
from django.utils import timezone

from calls.models import Call
from integrations.localtime import tenant_time
from integrations.models import TenantMembership
from tests.admin_world import client_for
from tests.factories import MembershipFactory

UTC = dt.UTC


@pytest.fixture
def calls(world):
    world.tenant_b.time_zone = "Asia/Yekaterinburg"
    world.tenant_b.save()
    moment = dt.datetime(
        2026, 11, 30, 20, 51, 7, tzinfo=UTC
    )  # 23:51 in Moscow, 01:51 next day in Yekaterinburg
    a = Call.objects.create(
        tenant=world.tenant_a,
        pbx_connection=world.pbx_a,
        provider_call_id="a1",
        direction="in",
        client_phone="+79161234567",
        started_at=moment,
        result="answered",
    )
    b = Call.objects.create(
        tenant=world.tenant_b,
        pbx_connection=world.pbx_b,
        provider_call_id="b1",
        direction="in",
        client_phone="+79161234568",
        started_at=moment,
        result="missed",
    )
    return a, b


def test_single_tenant_staff_read_their_tenants_time(world, calls):
    page = client_for(world.support_a).get(reverse("admin:calls_call_changelist")).content.decode()
    assert "2026-11-30 23:51:07" in page
    assert "20:51" not in page
    assert "(Europe/Moscow)" in page  # the date filter names the zone; rows need not


def test_the_call_page_shows_local_times_too(world, calls):
    page = (
        client_for(world.support_a)
        .get(reverse("admin:calls_call_change", args=[calls[0].pk]))
        .content.decode()
    )
    assert "11:51 p.m." in page  # English in tests; the local hour, not 20:51 UTC


def test_users_of_tenants_in_several_zones_read_each_row_in_its_zone_with_the_zone_named(world, calls):
    MembershipFactory(tenant=world.tenant_b, user=world.support_a, role=TenantMembership.SUPPORT)
    page = client_for(world.support_a).get(reverse("admin:calls_call_changelist")).content.decode()
    assert "2026-11-30 23:51:07 (Europe/Moscow)" in page
    assert "2026-12-01 01:51:07 (Asia/Yekaterinburg)" in page


def test_superusers_read_rows_in_each_tenants_zone(world, calls):
    page = client_for(world.superuser).get(reverse("admin:calls_call_changelist")).content.decode()
    assert "2026-12-01 01:51:07 (Asia/Yekaterinburg)" in page


def test_the_local_date_filter_uses_the_tenants_day(world, calls):
    client = client_for(world.support_a)
    url = reverse("admin:calls_call_changelist")
    assert (
        "+79161234567"
        in client.get(url, {"started_from": "2026-11-30", "started_to": "2026-11-30"}).content.decode()
    )
    assert "+79161234567" not in client.get(url, {"started_from": "2026-12-01"}).content.decode()


def test_tenant_time_names_the_zone_only_when_it_differs(world):
    moment = dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert tenant_time(moment, world.tenant_a) == "2026-01-01 15:00 (Europe/Moscow)"
    with timezone.override(zoneinfo.ZoneInfo("Europe/Moscow")):
        assert tenant_time(moment, world.tenant_a) == "2026-01-01 15:00"
    assert tenant_time(None, world.tenant_a) == "—"

"""RetailCRM's operations in the admin, and the automatic re-sync after mapping or external-phone edits."""

from __future__ import annotations

import pytest
import responses
from django.urls import reverse

from calls.models import OutboundJob
from integrations import background
from tests.admin_world import add_inline_row, client_for, form_payload, inline_prefix
from tests.factories import MembershipFactory, UserFactory
from tests.retailcrm.conftest import EDIT_URL, fixture_json

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant_admin(world):
    user = UserFactory()
    MembershipFactory(tenant=world.tenant, user=user)
    return client_for(user)


def run_action(client, action: str, crm):
    return client.post(
        reverse("admin:integrations_crmconnection_changelist"),
        {"action": action, "_selected_action": [str(crm.pk)], "index": "0"},
        follow=True,
    )


@responses.activate
def test_tenant_admin_registers_the_module_from_the_admin_and_sees_unknown_users(world, tenant_admin):
    responses.add(responses.POST, EDIT_URL, json=fixture_json("integration_module_edit_info.json"))
    assert "queued" in run_action(tenant_admin, "retailcrm_register", world.crm).content.decode()
    assert len(responses.calls) == 0  # a worker runs it, not the request
    assert background.run_queued() == 1
    page = tenant_admin.get(reverse("admin:integrations_crmconnection_change", args=[world.crm.pk]))
    assert (
        "telephony module registered (unknown user ids: 42; unknown site codes: shop9)"
        in page.content.decode()
    )
    assert len(responses.calls) == 1


def test_support_is_not_offered_the_operations(world):
    user = UserFactory()
    MembershipFactory(tenant=world.tenant, user=user, role="support")
    page = client_for(user).get(reverse("admin:integrations_crmconnection_changelist")).content.decode()
    assert "retailcrm_register" not in page


def test_editing_an_extensions_crm_users_queues_one_debounced_sync(world, tenant_admin):
    url = reverse("admin:integrations_extension_change", args=[world.ext100.pk])
    response = tenant_admin.get(url)
    data = form_payload(response)
    data["name"] = "Renamed"
    tenant_admin.post(url, data)
    tenant_admin.post(url, data)
    syncs = OutboundJob.objects.filter(crm_connection=world.crm, kind="retailcrm.sync")
    assert syncs.count() == 1
    assert syncs.get().due_at > syncs.get().created_at


def test_adding_a_site_code_queues_a_sync(world, tenant_admin):
    url = reverse("admin:integrations_externalphone_change", args=[world.shop2.pk])
    response = tenant_admin.get(url)
    data = form_payload(response)
    prefix = inline_prefix(response, type(world.shop2).site_codes.rel.related_model)
    add_inline_row(data, prefix, {"crm_connection": str(world.crm.pk), "code": "shop2"})
    tenant_admin.post(url, data)
    assert world.shop2.site_codes.get().code == "shop2"
    assert OutboundJob.objects.filter(crm_connection=world.crm, kind="retailcrm.sync").exists()

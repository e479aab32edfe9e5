"""The sandbox in the admin: "Send test call" only plays through sandbox PBX connections, the sandbox CRM's inbox
page (routing table, click-to-call), and the sandbox marked as such."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from calls.models import OutboundJob
from integrations.providers.sandbox.models import SandboxContact, SandboxMessage
from tests.factories import PbxConnectionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = get_user_model().objects.create_superuser("root", "root@example.test", "pw-Secret-123")
    client.force_login(user)
    return client


def send_test_call(admin_client, *connections):
    return admin_client.post(
        "/admin/integrations/pbxconnection/",
        {"action": "send_test_call", "_selected_action": [c.pk for c in connections]},
        follow=True,
    )


def test_send_test_call_plays_a_call_on_a_sandbox_pbx_and_never_on_a_real_one(admin_client, tenant, pbx, crm):
    real = PbxConnectionFactory(tenant=tenant, key="rt", provider="rostelecom", active=False)
    response = send_test_call(admin_client, pbx, real)
    text = response.content.decode()
    assert "test calls are only for sandbox PBX connections; nothing was sent" in text
    assert "is playing: 5 webhooks" in text
    plays = OutboundJob.objects.filter(kind="sandbox_pbx.play")
    assert plays.count() == 5 and {j.pbx_connection_id for j in plays} == {pbx.pk}


def test_send_test_call_is_refused_when_the_sandbox_is_disabled(admin_client, settings, pbx, crm):
    settings.SANDBOX_ENABLED = False
    text = send_test_call(admin_client, pbx).content.decode()
    assert "SANDBOX_ENABLED=false" in text
    assert not OutboundJob.objects.exists()


def test_the_inbox_page_edits_the_routing_table_and_places_click_to_call(admin_client, tenant, pbx, crm):
    url = f"/admin/integrations/crmconnection/{crm.pk}/provider-page/"
    change = admin_client.get(f"/admin/integrations/crmconnection/{crm.pk}/change/").content.decode()
    assert url in change and "Sandbox inbox" in change
    page = admin_client.get(url)
    assert page.status_code == 200 and "Ivan Petrov" in page.content.decode()

    form = {
        "contacts-TOTAL_FORMS": "2",
        "contacts-INITIAL_FORMS": "1",
        "contacts-MIN_NUM_FORMS": "0",
        "contacts-MAX_NUM_FORMS": "1000",
        "contacts-0-id": str(SandboxContact.objects.get().pk),
        "contacts-0-phone": "+79161110022",
        "contacts-0-name": "Ivan Petrov",
        "contacts-0-extension": "103",
        "contacts-1-phone": "8 (916) 555-44-33",
        "contacts-1-name": "New Client",
        "contacts-1-extension": "102",
        "save_contacts": "1",
    }
    assert admin_client.post(url, form).status_code == 302
    assert dict(SandboxContact.objects.values_list("phone", "extension")) == {
        "+79161110022": "103",
        "+79165554433": "102",
    }

    response = admin_client.post(
        url, {"call-extension": "101", "call-phone": "+79161234567", "click_to_call": "1"}
    )
    assert response.status_code == 302
    message = SandboxMessage.objects.get(kind="click_to_call")
    assert message.text.startswith("Click-to-call 101 → +79161234567: placed (PBX call sim-")
    assert OutboundJob.objects.filter(kind="sandbox_pbx.play").count() == 4


def test_pages_of_other_providers_do_not_exist(admin_client, tenant):
    real = PbxConnectionFactory(tenant=tenant, key="rt", provider="rostelecom", active=False)
    assert admin_client.get(f"/admin/integrations/pbxconnection/{real.pk}/provider-page/").status_code == 404


def test_sandbox_connections_are_marked_in_the_lists(admin_client, pbx, crm):
    assert (
        "Sandbox PBX (simulated, in the portal)"
        in admin_client.get("/admin/integrations/pbxconnection/").content.decode()
    )
    assert (
        "Sandbox CRM (simulated, in the portal)"
        in admin_client.get("/admin/integrations/crmconnection/").content.decode()
    )


def test_the_sandbox_pbx_page_lists_calls_played_and_sends_a_test_call(admin_client, tenant, pbx, crm):
    url = f"/admin/integrations/pbxconnection/{pbx.pk}/provider-page/"
    assert url in admin_client.get(f"/admin/integrations/pbxconnection/{pbx.pk}/change/").content.decode()
    assert admin_client.post(url, {"test-scenario": "missed"}).status_code == 302
    page = admin_client.get(url).content.decode()
    assert "missed" in page and "+79161110022" in page
    assert OutboundJob.objects.filter(kind="sandbox_pbx.play").count() == 4


def test_send_test_call_is_not_offered_without_a_sandbox_pbx(admin_client, tenant):
    PbxConnectionFactory(tenant=tenant, key="rt", provider="rostelecom")
    assert "send_test_call" not in admin_client.get("/admin/integrations/pbxconnection/").content.decode()

"""Per-connection allowed_networks (issue 15 item 7) and https-only credential URLs (item 8).

OUTBOUND_ALLOWED_NETWORKS stays the operator's global list; a connection's own `allowed_networks` opens a
private network to that connection alone, is changed by superusers only (admin) or import_tenant, and what
private hosts answer is not shown to tenant staff. URLs that carry credentials must be https unless they point
into an allowed private network."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from calls.models import OutboundJob
from calls.routing import resolve
from integrations.models import CrmConnection
from tests.admin_world import client_for, form_payload
from tests.factories import CrmConnectionFactory, TenantFactory
from tests.listener import Listener
from tests.test_tenant_file import export_document, import_document, new_tenant_document

pytestmark = pytest.mark.django_db


@pytest.fixture
def listener():
    listening = Listener("127.0.0.1")
    yield listening
    listening.close()


@pytest.fixture(autouse=True)
def strict_outbound(settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_NETWORKS = []


def planfix_at(tenant, url: str, networks: list[str]) -> CrmConnection:
    return CrmConnectionFactory(
        tenant=tenant,
        provider="planfix",
        key="pf",
        settings={"api_url": url},
        secrets={"planfix_token": "p" * 32, "pbx_token": "t" * 32},
        allowed_networks=networks,
    )


def test_a_connections_own_network_is_reachable_for_that_connection_alone(listener):
    alpha, beta = TenantFactory(slug="alpha"), TenantFactory(slug="beta")
    planfix_at(alpha, listener.url("/api"), ["127.0.0.1/32"])
    planfix_at(beta, listener.url("/api"), [])

    resolve(beta, "+79161234567", deadline_ms=300)
    assert listener.connections() == 0

    resolve(alpha, "+79161234567", deadline_ms=300)
    assert listener.connections() == 1


def test_credential_urls_must_be_https_unless_in_an_allowed_network():
    tenant = TenantFactory(slug="alpha")
    crm = planfix_at(tenant, "http://planfix.example.com/api", [])
    with pytest.raises(ValidationError, match="https"):
        crm.full_clean()

    crm.settings = {"api_url": "http://10.20.1.5/api"}
    with pytest.raises(ValidationError, match="https"):
        crm.full_clean()  # private, but not in any allowed network

    crm.allowed_networks = ["10.20.0.0/16"]
    crm.full_clean()
    crm.settings = {"api_url": "https://planfix.example.com/api"}
    crm.full_clean()


def test_a_wirecrm_webhook_url_secret_is_checked_too():
    crm = CrmConnectionFactory(
        tenant=TenantFactory(slug="alpha"),
        provider="wirecrm",
        key="wire",
        settings={},
        secrets={"webhook_url": "http://wirecrm.example.com/hook", "pbx_token": "t" * 32},
    )
    with pytest.raises(ValidationError, match="webhook_url"):
        crm.full_clean()


def test_import_tenant_honours_allowed_networks_and_the_https_rule():
    document = new_tenant_document()
    document["crm"][0]["settings"]["api_url"] = "http://10.20.1.5/tel/api"
    with pytest.raises(Exception, match=r"crm\[0\]\.settings\.api_url"):
        import_document(document)

    document["crm"][0]["allowed_networks"] = ["10.20.0.0/16"]
    import_document(document)

    assert CrmConnection.objects.get(key="pf").allowed_networks == ["10.20.0.0/16"]
    assert export_document("newco")["crm"][0]["allowed_networks"] == ["10.20.0.0/16"]


def connection_page(user, crm):
    return client_for(user).get(reverse("admin:integrations_crmconnection_change", args=[crm.pk]))


def test_only_superusers_change_allowed_networks_in_the_admin(world):
    url = reverse("admin:integrations_crmconnection_change", args=[world.crm_a.pk])
    client = client_for(world.admin_a)
    data = form_payload(client.get(url))
    data["allowed_networks"] = "10.0.0.0/8"
    client.post(url, data)
    world.crm_a.refresh_from_db()
    assert world.crm_a.allowed_networks == []
    assert 'name="allowed_networks"' not in client.get(url).content.decode()

    client = client_for(world.superuser)
    data = form_payload(client.get(url))
    data["allowed_networks"] = "10.20.0.0/16, 192.168.5.10"
    assert client.post(url, data).status_code == 302
    world.crm_a.refresh_from_db()
    assert world.crm_a.allowed_networks == ["10.20.0.0/16", "192.168.5.10/32"]


def test_what_a_private_target_answered_is_hidden_from_tenant_staff(world):
    world.crm_a.allowed_networks = ["10.20.0.0/16"]
    world.crm_a.save()
    world.crm_a.flag_error("HTTP 500: <html>intranet wiki page: salaries</html>")
    job = OutboundJob.objects.create(
        tenant=world.tenant_a,
        crm_connection=world.crm_a,
        connection_ref=f"crm:{world.crm_a.pk}",
        kind="planfix.event",
        dedupe_key="x",
        status=OutboundJob.FAILED,
        last_response="<html>intranet wiki page: salaries</html>",
    )
    job.attempt_log.create(outcome="permanent", response="<html>intranet wiki page: salaries</html>")
    job_url = reverse("admin:calls_outboundjob_change", args=[job.pk])

    for user in (world.admin_a, world.support_a):
        assert "salaries" not in client_for(user).get(job_url).content.decode()
        assert "salaries" not in connection_page(user, world.crm_a).content.decode()
    assert "salaries" in client_for(world.superuser).get(job_url).content.decode()
    assert "salaries" in connection_page(world.superuser, world.crm_a).content.decode()


def test_answers_of_public_targets_stay_visible_to_tenant_staff(world):
    world.crm_a.settings = {"api_url": "https://acme.planfix.example/api"}
    world.crm_a.save()
    world.crm_a.flag_error("HTTP 400: wrong parameters")
    assert "wrong parameters" in connection_page(world.admin_a, world.crm_a).content.decode()

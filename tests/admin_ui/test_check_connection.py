"""Test connection: every provider's check_connection() against its (faked) far end, run by a worker, with the
result and its time on the connection page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import responses
from django.urls import reverse

from integrations import background
from integrations.models import ConnectionOperation
from integrations.providers.base import get_provider
from tests.admin_world import client_for
from tests.factories import CrmConnectionFactory, PbxConnectionFactory, TenantFactory

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture(provider: str, name: str) -> str:
    return (FIXTURES / provider / name).read_text()


@pytest.fixture
def tenant(db):
    return TenantFactory(slug="acme")


@responses.activate
def test_rostelecom_reads_its_directory(tenant):
    pbx = PbxConnectionFactory(tenant=tenant, settings={"domain": "acme.rt.ru"})
    responses.add(
        responses.POST, "https://api.cloudpbx.rt.ru/users_info", body=fixture("rostelecom", "users_info.json")
    )
    result = get_provider(pbx).check_connection()
    assert result.ok, result
    assert result.summary.startswith("users_info answered:")
    assert responses.calls[0].request.headers["X-Client-ID"] == "client-1"


@responses.activate
def test_rostelecom_bad_key_is_said_in_plain_words(tenant):
    pbx = PbxConnectionFactory(tenant=tenant, settings={"domain": "acme.rt.ru"})
    responses.add(responses.POST, "https://api.cloudpbx.rt.ru/users_info", status=401, json={"result": "1"})
    result = get_provider(pbx).check_connection()
    assert not result.ok
    assert "users_info failed" in result.summary


@responses.activate
def test_mango_reads_its_employees(tenant):
    pbx = PbxConnectionFactory(tenant=tenant, provider="mango", key="mango", settings={})
    responses.add(
        responses.POST,
        "https://app.mango-office.ru/vpbx/config/users/request",
        body=fixture("mango", "users.json"),
    )
    result = get_provider(pbx).check_connection()
    assert result.ok, result
    assert "config/users/request answered" in result.summary


@responses.activate
def test_planfix_asks_about_a_number_nobody_has(tenant):
    crm = CrmConnectionFactory(tenant=tenant, provider="planfix")
    responses.add(responses.POST, "https://acme.planfix.ru/tel/api", json={})
    result = get_provider(crm).check_connection()
    assert result.ok, result
    body = responses.calls[0].request.body
    body = body.decode() if isinstance(body, bytes) else body
    assert "cmd=contact" in body and "phone=70000000000" in body and "planfix_token=pf-token-out" in body


@responses.activate
def test_planfix_refusing_the_token_fails(tenant):
    crm = CrmConnectionFactory(tenant=tenant, provider="planfix")
    responses.add(
        responses.POST,
        "https://acme.planfix.ru/tel/api",
        status=401,
        body=fixture("planfix", "error_invalid_token.json"),
    )
    result = get_provider(crm).check_connection()
    assert not result.ok
    assert "planfix_token" in result.summary and "Invalid token" in result.detail


@responses.activate
def test_retailcrm_reads_the_first_page_of_users(tenant):
    crm = CrmConnectionFactory(tenant=tenant, provider="retailcrm")
    responses.add(
        responses.GET, "https://acme.retailcrm.ru/api/v5/users", body=fixture("retailcrm", "users.json")
    )
    result = get_provider(crm).check_connection()
    assert result.ok, result
    assert result.summary == "RetailCRM accepted the API key: 4 users"
    assert responses.calls[0].request.headers["X-API-KEY"] == "rc-api-key"


@responses.activate
def test_retailcrm_wrong_key(tenant):
    crm = CrmConnectionFactory(tenant=tenant, provider="retailcrm")
    responses.add(
        responses.GET,
        "https://acme.retailcrm.ru/api/v5/users",
        status=403,
        body=fixture("retailcrm", "error_wrong_api_key.json"),
    )
    result = get_provider(crm).check_connection()
    assert not result.ok
    assert "RetailCRM refused" in result.summary


@responses.activate
def test_wirecrm_sends_nothing_and_says_so(tenant, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    crm = CrmConnectionFactory(
        tenant=tenant,
        provider="wirecrm",
        secrets={"webhook_url": "https://crm.invalid/hook", "pbx_token": "t"},
    )
    result = get_provider(crm).check_connection()
    assert not result.ok
    assert "does not resolve" in result.summary
    assert len(responses.calls) == 0
    assert get_provider(crm).check_sends_request is False


def test_wirecrm_refuses_a_private_address(tenant, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    crm = CrmConnectionFactory(tenant=tenant, provider="wirecrm")
    crm.secrets = {"webhook_url": "https://127.0.0.1/hook", "pbx_token": "t"}
    result = get_provider(crm).check_connection()
    assert not result.ok
    assert "not allowed" in result.summary


@responses.activate
def test_test_connection_runs_in_the_background_and_shows_its_result_with_the_time(world):
    client = client_for(world.admin_a)
    url = reverse("admin:integrations_crmconnection_operation", args=[world.crm_a.pk, "check_connection"])
    response = client.post(url, follow=True)
    assert "queued" in response.content.decode()
    assert len(responses.calls) == 0  # the request only queued it
    operation = ConnectionOperation.objects.get()
    assert operation.status == "queued" and operation.requested_by == world.admin_a

    responses.add(responses.POST, "https://acme.planfix.ru/tel/api", json={})
    assert background.run_queued() == 1
    operation.refresh_from_db()
    assert operation.status == "ok" and operation.finished_at is not None
    page = client.get(
        reverse("admin:integrations_crmconnection_change", args=[world.crm_a.pk])
    ).content.decode()
    assert "Planfix answered the contact request (HTTP 200)" in page
    local = operation.finished_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Moscow"))
    assert local.strftime("%Y-%m-%d %H:%M") in page


def test_support_sees_results_but_cannot_run_operations(world):
    client = client_for(world.support_a)
    url = reverse("admin:integrations_crmconnection_operation", args=[world.crm_a.pk, "check_connection"])
    assert client.post(url).status_code == 403
    page = client.get(
        reverse("admin:integrations_crmconnection_change", args=[world.crm_a.pk])
    ).content.decode()
    assert "operation-button" not in page
    assert not ConnectionOperation.objects.exists()


def test_another_tenants_connection_answers_404(world):
    url = reverse("admin:integrations_crmconnection_operation", args=[world.crm_b.pk, "check_connection"])
    assert client_for(world.admin_a).post(url).status_code == 404


def test_an_unknown_operation_answers_404(world):
    url = reverse("admin:integrations_crmconnection_operation", args=[world.crm_a.pk, "import_extensions"])
    assert client_for(world.admin_a).post(url).status_code == 404


@responses.activate
def test_a_failing_check_is_recorded_as_failed(world):
    background.queue(world.crm_a, background.CHECK)
    responses.add(
        responses.POST, "https://acme.planfix.ru/tel/api", status=403, json={"error": "Invalid token"}
    )
    background.run_queued()
    operation = ConnectionOperation.objects.get()
    assert operation.status == "failed"
    assert json.loads(operation.detail) == {"error": "Invalid token"}


def test_an_operation_runs_once_even_if_two_workers_get_it(world):
    operation = background.queue(world.pbx_a, background.CHECK)
    operation.status = ConnectionOperation.RUNNING
    operation.save()
    assert background.run(operation.pk) is None


def test_an_operation_whose_worker_died_is_failed_by_the_sweep(world):
    import datetime as dt

    from django.utils import timezone

    operation = background.queue(world.pbx_a, background.CHECK)
    ConnectionOperation.objects.filter(pk=operation.pk).update(
        status=ConnectionOperation.RUNNING, started_at=timezone.now() - dt.timedelta(minutes=11)
    )
    fresh = background.queue(world.crm_a, background.CHECK)
    ConnectionOperation.objects.filter(pk=fresh.pk).update(
        status=ConnectionOperation.RUNNING, started_at=timezone.now()
    )
    assert background.fail_stalled() == 1
    operation.refresh_from_db()
    assert operation.status == "failed" and "run it again" in operation.summary


def test_the_worker_speaks_the_requesters_language(world, monkeypatch):
    from django.utils import translation

    with translation.override("ru"):
        operation = background.queue(world.pbx_a, background.IMPORT_EXTENSIONS)
    assert operation.language == "ru"
    seen = []

    def observe(connection, progress):  # records the language the worker runs the operation in
        seen.append(translation.get_language())
        return background.Outcome(True, "observed")

    monkeypatch.setattr(background, "_import_extensions", observe)
    assert background.run(operation.pk).status == "ok"
    assert seen == ["ru"]

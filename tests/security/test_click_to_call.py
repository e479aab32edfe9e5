"""The click-to-call guard (issue 15 item 1): a CRM's make-call reaches the PBX only for a destination in the
tenant's click-to-call regions, never for a premium-rate or shared-cost number, and at most
CLICK_TO_CALL_THROTTLE times per window per CRM connection, counted in the database. A refusal is answered in
the CRM's own format, asks no PBX, is logged and is stored with its reason."""

from __future__ import annotations

import threading

import pytest
import responses
from django.core.cache import cache
from django.db import connection as db_connection

from calls.models import OriginateRequest
from integrations.providers import base
from tests.factories import CrmConnectionFactory, ExtensionFactory, PbxConnectionFactory, TenantFactory
from tests.pipeline.fake_providers import register

pytestmark = pytest.mark.django_db

PBX_URL = "https://pbx.example.test"
PBX_TOKEN = "202cb962ac59075b964b07152d234b70"
WIRE_TOKEN = "wire-token-0123456789abcdef"
MOBILE = "+79161234567"
PREMIUM = "+78091234567"  # 8-809: Russian premium rate
KZ_MOBILE = "+77011234567"


@pytest.fixture(autouse=True)
def fake_pbx(monkeypatch):
    register(monkeypatch, "fakepbx", "tests.pipeline.fake_providers.FakePbx", base.PBX)


@pytest.fixture
def tenant(db):
    tenant = TenantFactory(slug="acme", region="RU")
    PbxConnectionFactory(
        tenant=tenant, provider="fakepbx", settings={"api_url": PBX_URL}, secrets={"token": "t"}
    )
    ExtensionFactory(tenant=tenant, number="101")
    return tenant


@pytest.fixture
def planfix(tenant):
    return CrmConnectionFactory(
        tenant=tenant,
        provider="planfix",
        key="pf",
        settings={"api_url": "https://acme.planfix.ru/api"},
        secrets={"planfix_token": "x" * 32, "pbx_token": PBX_TOKEN},
    )


@pytest.fixture
def wirecrm(tenant):
    return CrmConnectionFactory(
        tenant=tenant,
        provider="wirecrm",
        key="wire",
        settings={},
        secrets={"webhook_url": "https://wirecrm.example.test/hook", "pbx_token": WIRE_TOKEN},
    )


@pytest.fixture
def pbx_calls():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr"}, status=200)
        yield mock


def planfix_make_call(client, planfix, to: str):
    return client.post(
        f"/hooks/planfix/{planfix.public_id}/",
        data=f"cmd=makeCall&from=101&to={to.replace('+', '%2B')}&token={PBX_TOKEN}",
        content_type="application/x-www-form-urlencoded",
    )


def wirecrm_make_call(client, wirecrm, to: str):
    return client.post(
        f"/hooks/wirecrm/{wirecrm.public_id}/make-call",
        data=f"from=101&to={to.replace('+', '%2B')}",
        content_type="application/x-www-form-urlencoded",
        HTTP_X_PBX_AUTHENTICATION=WIRE_TOKEN,
    )


def pbx_requests(mock) -> int:
    return sum(1 for call in mock.calls if call.request.url.startswith(PBX_URL))


# --------------------------------------------------------------------------------------------- destinations


def test_a_premium_rate_number_is_refused_without_asking_the_pbx(client, planfix, pbx_calls, caplog):
    response = planfix_make_call(client, planfix, PREMIUM)

    assert response.status_code == 403
    assert "premium-rate" in response.json()["error"]
    assert pbx_requests(pbx_calls) == 0
    request = OriginateRequest.objects.get()
    assert (request.status, request.refusal) == (OriginateRequest.REFUSED, OriginateRequest.NUMBER_TYPE)
    assert "premium-rate" in request.error
    assert any("click-to-call refused" in r.getMessage() for r in caplog.records)


def test_a_premium_rate_number_is_refused_even_when_its_region_is_allowed(client, tenant, planfix, pbx_calls):
    tenant.click_to_call_regions = ["RU", "GB"]
    tenant.save()

    for number in (PREMIUM, "+449012345678"):  # RU 809, GB 09 premium rate
        assert planfix_make_call(client, planfix, number).status_code == 403

    assert pbx_requests(pbx_calls) == 0


def test_a_number_outside_the_tenants_region_is_refused(client, planfix, pbx_calls):
    response = planfix_make_call(client, planfix, KZ_MOBILE)

    assert response.status_code == 403
    assert "KZ" in response.json()["error"]
    assert pbx_requests(pbx_calls) == 0
    assert OriginateRequest.objects.get().refusal == OriginateRequest.REGION


def test_click_to_call_regions_widen_where_calls_may_go(client, tenant, planfix, pbx_calls):
    tenant.click_to_call_regions = ["RU", "KZ"]
    tenant.save()

    assert planfix_make_call(client, planfix, KZ_MOBILE).status_code == 200
    assert planfix_make_call(client, planfix, MOBILE).status_code == 200
    assert pbx_requests(pbx_calls) == 2


def test_an_ordinary_mobile_number_in_the_region_goes_through(client, planfix, pbx_calls):
    assert planfix_make_call(client, planfix, MOBILE).status_code == 200
    assert pbx_requests(pbx_calls) == 1
    assert OriginateRequest.objects.get().status == OriginateRequest.OK


def test_wirecrm_gets_the_refusal_in_its_own_format(client, wirecrm, pbx_calls):
    response = wirecrm_make_call(client, wirecrm, PREMIUM)

    assert response.status_code == 200  # WireCRM reads the JSON status
    assert response.json()["status"] == "0" and response.json()["error"]
    assert pbx_requests(pbx_calls) == 0


# --------------------------------------------------------------------------------------------- throttle


def test_past_the_throttle_requests_are_refused_per_crm_connection(
    client, tenant, planfix, wirecrm, pbx_calls, settings
):
    settings.CLICK_TO_CALL_THROTTLE = "3/min"

    answers = [planfix_make_call(client, planfix, MOBILE).status_code for _ in range(5)]

    assert answers == [200, 200, 200, 429, 429]
    assert pbx_requests(pbx_calls) == 3
    assert OriginateRequest.objects.filter(refusal=OriginateRequest.THROTTLED).count() == 2
    # Another CRM connection of the same tenant has its own allowance.
    assert wirecrm_make_call(client, wirecrm, MOBILE).json()["status"] == "1"


def test_the_throttle_counts_in_the_database_so_clearing_the_cache_does_not_lift_it(
    client, planfix, pbx_calls, settings
):
    settings.CLICK_TO_CALL_THROTTLE = "2/min"
    for _ in range(2):
        assert planfix_make_call(client, planfix, MOBILE).status_code == 200

    cache.clear()

    assert planfix_make_call(client, planfix, MOBILE).status_code == 429
    assert pbx_requests(pbx_calls) == 2


def test_the_window_passes(client, planfix, pbx_calls, settings):
    settings.CLICK_TO_CALL_THROTTLE = "1/min"
    assert planfix_make_call(client, planfix, MOBILE).status_code == 200
    assert planfix_make_call(client, planfix, MOBILE).status_code == 429

    OriginateRequest.objects.update(created_at=OriginateRequest.objects.first().created_at.replace(year=2020))

    assert planfix_make_call(client, planfix, MOBILE).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_make_calls_never_pass_the_limit(live_server, tenant, planfix, settings):
    """The measured attack: many make-call requests at once. Each runs in its own thread and database
    connection; the row lock lets exactly the limit through."""
    import requests

    settings.CLICK_TO_CALL_THROTTLE = "5/min"
    url = f"{live_server.url}/hooks/planfix/{planfix.public_id}/"
    body = f"cmd=makeCall&from=101&to=%2B79161234567&token={PBX_TOKEN}"
    statuses: list[int] = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(live_server.url)
        mock.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr"}, status=200)

        def one() -> None:
            answer = requests.post(
                url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30
            )
            statuses.append(answer.status_code)

        threads = [threading.Thread(target=one) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        db_connection.close()
        assert sorted(statuses) == [200] * 5 + [429] * 7
        assert pbx_requests(mock) == 5


# --------------------------------------------------------------------------------------------- admin


def test_refusals_are_listed_with_their_reason_in_the_admin(admin_client, planfix, pbx_calls):
    planfix_make_call(client=admin_client, planfix=planfix, to=PREMIUM)

    page = admin_client.get("/admin/calls/originaterequest/?status=refused")

    assert page.status_code == 200
    text = page.content.decode()
    assert "premium-rate" in text
    detail = admin_client.get(f"/admin/calls/originaterequest/{OriginateRequest.objects.get().pk}/change/")
    assert "premium-rate" in detail.content.decode()


def test_click_to_call_regions_are_validated(tenant):
    from django.core.exceptions import ValidationError

    tenant.click_to_call_regions = ["RU", "XX"]
    with pytest.raises(ValidationError):
        tenant.full_clean()
    tenant.click_to_call_regions = ["ru", "kz", "RU"]
    tenant.full_clean()
    assert tenant.click_to_call_regions == ["RU", "KZ"]


def test_click_to_call_regions_travel_in_the_tenant_file(tenant):
    from tests.test_tenant_file import export_document, import_document, new_tenant_document

    import_document(new_tenant_document(click_to_call_regions=["ru", "KZ"]))

    from integrations.models import Tenant

    assert Tenant.objects.get(slug="newco").click_to_call_regions == ["RU", "KZ"]
    assert export_document("newco")["click_to_call_regions"] == ["RU", "KZ"]
    with pytest.raises(Exception, match=r"click_to_call_regions\[0\]"):
        import_document(new_tenant_document(click_to_call_regions=["QQ"]))


def test_the_tenant_admin_edits_regions_as_a_comma_separated_list(rf, tenant):
    from django.contrib import admin as django_admin
    from django.contrib.auth.models import AnonymousUser

    from integrations.models import Tenant

    model_admin = django_admin.site._registry[Tenant]
    request = rf.get("/")
    request.user = AnonymousUser()
    form_class = model_admin.get_form(
        request, tenant, fields=["name", "slug", "region", "time_zone", "click_to_call_regions", "active"]
    )
    data = {
        "name": tenant.name,
        "slug": tenant.slug,
        "region": "RU",
        "time_zone": "Europe/Moscow",
        "click_to_call_regions": "ru, KZ",
        "active": "on",
    }
    form = form_class(data, instance=tenant)

    assert form.is_valid(), form.errors
    assert form.save().click_to_call_regions == ["RU", "KZ"]
    assert 'value="RU, KZ"' in str(form_class(instance=tenant)["click_to_call_regions"])
    bad = form_class({**data, "click_to_call_regions": "RU, XX"}, instance=tenant)
    assert not bad.is_valid() and "click_to_call_regions" in bad.errors


def test_retailcrm_gets_the_refusal_in_its_own_format(client, tenant, pbx_calls, settings):
    from tests.retailcrm.conftest import CLIENT_ID, retailcrm_connection

    settings.CLICK_TO_CALL_THROTTLE = "1/min"
    crm = retailcrm_connection(tenant)
    url = f"/hooks/retailcrm/{crm.public_id}/make-call"

    premium = client.get(url, {"clientId": CLIENT_ID, "code": "101", "phone": PREMIUM})
    first = client.get(url, {"clientId": CLIENT_ID, "code": "101", "phone": MOBILE})
    second = client.get(url, {"clientId": CLIENT_ID, "code": "101", "phone": MOBILE})

    assert premium.status_code == 403 and premium.json()["success"] is False
    assert premium.json()["code"] == "number_type"
    assert first.status_code == 200
    assert second.status_code == 429 and second.json() == {
        "success": False,
        "error": second.json()["error"],
        "code": "throttled",
    }
    assert pbx_requests(pbx_calls) == 1

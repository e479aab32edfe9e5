"""Registration (integration-modules/{code}/edit), reading it back, proposing mappings, and the debounced re-sync."""

from __future__ import annotations

import datetime as dt

import pytest
import responses
from django.utils import timezone

from calls.models import OutboundJob
from integrations.models import ExtensionMapping, ExternalPhoneSiteCode
from integrations.providers.retailcrm.api import RetailCrmError
from integrations.providers.retailcrm.operations import (
    propose_mappings,
    read_module_back,
    register_module,
    request_sync,
)
from tests.factories import ExtensionFactory, ExtensionMappingFactory
from tests.retailcrm.conftest import (
    API_KEY,
    CLIENT_ID,
    EDIT_URL,
    GET_MODULE_URL,
    USERS_URL,
    fixture_json,
    form_field,
    run_due,
)

pytestmark = pytest.mark.django_db


def expected_module(world, settings) -> dict:
    hooks = f"{settings.PUBLIC_BASE_URL}/hooks/retailcrm/{world.crm.public_id}"
    return {
        "code": "callbridge",
        "integrationCode": "callbridge",
        "active": True,
        "name": "Callbridge",
        "clientId": CLIENT_ID,
        "accountUrl": f"{settings.PUBLIC_BASE_URL}/admin/integrations/tenant/{world.tenant.pk}/change/",
        "integrations": {
            "telephony": {
                "makeCallUrl": f"{hooks}/make-call",
                "changeUserStatusUrl": f"{hooks}/user-status",
                "allowEdit": True,
                "inputEventSupported": True,
                "outputEventSupported": True,
                "hangupEventSupported": True,
                "additionalCodes": [{"userId": 1, "code": "100"}, {"userId": 2, "code": "200"}],
                "externalPhones": [{"siteCode": "shop1", "externalPhone": "+74999999999"}],
            }
        },
    }


@responses.activate
def test_registration_posts_the_module_document_and_accepts_the_seeds_201(world, settings):
    responses.add(
        responses.POST, EDIT_URL, status=201, json=fixture_json("integration_module_edit_created.json")
    )

    assert register_module(world.crm) == {"notExistUsersIds": [], "notExistSiteCodes": []}

    request = responses.calls[0].request
    assert request.headers["X-API-KEY"] == API_KEY
    assert form_field(request, "integrationModule") == expected_module(world, settings)


@responses.activate
def test_registration_sends_every_field_of_the_seeds_example_except_the_logo(world):
    responses.add(
        responses.POST, EDIT_URL, status=201, json=fixture_json("integration_module_edit_created.json")
    )
    register_module(world.crm)
    seed = fixture_json("integration_module_edit_seed.json")
    sent = form_field(responses.calls[0].request, "integrationModule")
    assert set(seed) - {"logo"} <= set(sent)
    assert set(seed["integrations"]["telephony"]) <= set(sent["integrations"]["telephony"])


@responses.activate
def test_registration_reports_users_and_sites_retailcrm_does_not_know(world):
    responses.add(responses.POST, EDIT_URL, json=fixture_json("integration_module_edit_info.json"))
    assert register_module(world.crm) == {"notExistUsersIds": [42], "notExistSiteCodes": ["shop9"]}


@responses.activate
def test_an_empty_info_list_means_nothing_unknown(world):
    responses.add(responses.POST, EDIT_URL, json=fixture_json("integration_module_edit_empty_info.json"))
    assert register_module(world.crm) == {"notExistUsersIds": [], "notExistSiteCodes": []}


@responses.activate
def test_registration_with_a_bad_key_raises_and_flags_the_connection(world):
    responses.add(responses.POST, EDIT_URL, status=403, json=fixture_json("error_wrong_api_key.json"))
    with pytest.raises(RetailCrmError, match="apiKey"):
        register_module(world.crm)
    world.crm.refresh_from_db()
    assert 'Wrong "apiKey" value.' in world.crm.last_error


@responses.activate
def test_with_events_off_the_module_says_no_events_are_supported(world):
    world.crm.settings = {**world.crm.settings, "send_events": False}
    world.crm.save()
    responses.add(responses.POST, EDIT_URL, json={"success": True})
    register_module(world.crm)
    telephony = form_field(responses.calls[0].request, "integrationModule")["integrations"]["telephony"]
    assert not (
        telephony["inputEventSupported"]
        or telephony["outputEventSupported"]
        or telephony["hangupEventSupported"]
    )


@responses.activate
def test_reading_the_module_back_imports_codes_and_site_codes_edited_in_retailcrm(world):
    responses.add(responses.GET, GET_MODULE_URL, json=fixture_json("integration_module_get.json"))

    result = read_module_back(world.crm)

    # 100→1 and shop1 as before; 200 is now user 7; shop2 gets its site code; code 999 and the 777 line are unknown.
    assert (result["created"], result["updated"], result["unchanged"]) == (1, 1, 2)
    assert len(result["skipped"]) == 2 and "999" in result["skipped"][0] and "777" in result["skipped"][1]
    assert ExtensionMapping.objects.get(extension=world.ext200, crm_connection=world.crm).crm_user_id == "7"
    assert (
        ExternalPhoneSiteCode.objects.get(external_phone=world.shop2, crm_connection=world.crm).code
        == "shop2"
    )
    assert responses.calls[0].request.headers["X-API-KEY"] == API_KEY


@responses.activate
def test_proposing_mappings_matches_emails_and_never_overwrites(world):
    ext101 = ExtensionFactory(tenant=world.tenant, number="101", email="e101@example.test")
    ext102 = ExtensionFactory(tenant=world.tenant, number="102", email="e102@example.test")
    ExtensionFactory(tenant=world.tenant, number="103", email="e103@example.test")
    ExtensionMappingFactory(extension=ext102, crm_connection=world.crm, crm_user_id="5")
    responses.add(responses.GET, USERS_URL, json=fixture_json("users.json"))

    proposals = propose_mappings(world.crm)

    assert [(p["extension"], p["user_id"], p["action"]) for p in proposals] == [
        ("101", "1", "conflict"),  # user 1 already has extension 100
        ("102", "2", "conflict"),  # extension 102 is mapped to user 5
    ]
    assert not ExtensionMapping.objects.filter(extension=ext101).exists()
    assert "limit=100" in responses.calls[0].request.url and "page=1" in responses.calls[0].request.url


@responses.activate
def test_proposing_mappings_creates_the_missing_ones_and_queues_a_sync(world):
    ExtensionMapping.objects.filter(crm_connection=world.crm).delete()
    ext101 = ExtensionFactory(tenant=world.tenant, number="101", email="e101@example.test")
    responses.add(responses.GET, USERS_URL, json=fixture_json("users.json"))

    proposals = propose_mappings(world.crm)

    assert proposals == [
        {
            "extension": "101",
            "user_id": "1",
            "email": "e101@example.test",
            "name": "Ivan Petrov",
            "action": "created",
        }
    ]
    assert ExtensionMapping.objects.get(extension=ext101, crm_connection=world.crm).crm_user_id == "1"
    assert OutboundJob.objects.filter(kind="retailcrm.sync", crm_connection=world.crm).count() == 1


@responses.activate
def test_users_are_read_page_by_page(world):
    page = fixture_json("users.json")
    responses.add(responses.GET, USERS_URL, json={**page, "pagination": {"totalPageCount": 2}, "users": []})
    responses.add(responses.GET, USERS_URL, json={**page, "pagination": {"totalPageCount": 2}})
    ExtensionFactory(tenant=world.tenant, number="102", email="nobody@example.test")
    ExtensionMapping.objects.filter(crm_connection=world.crm).delete()

    proposals = propose_mappings(world.crm)

    assert ["page=1" in c.request.url for c in responses.calls] == [True, False]
    assert [p["user_id"] for p in proposals] == ["3"]


def test_changes_within_30_seconds_make_one_sync_due_30_seconds_later(world):
    before = timezone.now()
    created = [request_sync(world.crm) for _ in range(3)]
    job = OutboundJob.objects.get(kind="retailcrm.sync")
    assert created[0] == 1 and created[1:] in ([0, 0], [0, 1], [1, 0])  # a 30-s boundary may fall in between
    assert before + dt.timedelta(seconds=30) <= job.due_at <= timezone.now() + dt.timedelta(seconds=30)


@responses.activate
def test_the_sync_job_registers_the_mappings_as_they_are_when_it_runs(world, settings):
    request_sync(world.crm)
    world.map200.crm_user_id = "22"
    world.map200.save()
    OutboundJob.objects.filter(kind="retailcrm.sync").update(next_attempt_at=timezone.now())
    responses.add(responses.POST, EDIT_URL, json=fixture_json("integration_module_edit_info.json"))

    run_due()

    sent = form_field(responses.calls[0].request, "integrationModule")
    assert sent["integrations"]["telephony"]["additionalCodes"][1] == {"userId": 22, "code": "200"}
    job = OutboundJob.objects.get(kind="retailcrm.sync")
    assert job.status == OutboundJob.SENT and "shop9" in job.last_response


def test_request_sync_ignores_other_providers(world):
    from tests.factories import CrmConnectionFactory

    assert request_sync(CrmConnectionFactory(tenant=world.tenant, provider="planfix")) == 0

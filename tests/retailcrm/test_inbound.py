"""RetailCRM → portal: GET make-call and user-status, authenticated by the clientId we registered."""

from __future__ import annotations

import json
import logging

import pytest
import responses

from calls.models import OriginateRequest
from calls.routing import resolve
from integrations.models import ExtensionMapping
from tests.factories import ExtensionFactory, PbxConnectionFactory
from tests.retailcrm.conftest import (
    CLIENT_ID,
    MANAGER_URL,
    PBX_URL,
    completed_call,
    fixture_json,
    fixture_text,
    retailcrm_connection,
)
from tests.webhook_security import WebhookSecurityContract

pytestmark = pytest.mark.django_db


def hook(crm, action: str) -> str:
    return f"/hooks/retailcrm/{crm.public_id}/{action}"


# ---- the shared security contract, for both actions ----


class TestUserStatusWebhookSecurity(WebhookSecurityContract):
    failure_status = 403
    failure_body = {"success": False, "error": "Invalid clientId"}
    credential_keys = ("client_id",)

    def make_connection(self, tenant, suffix):
        crm = retailcrm_connection(tenant)
        crm.secrets = {**crm.secrets, "client_id": f"client-id-{suffix}-0123456789"}
        crm.save()
        return crm

    def signed_request(self, connection, secrets):
        data = {"userId": "1", "code": "100", "status": "busy"}
        if secrets:
            data["clientId"] = secrets["client_id"]
        return {"path": hook(connection, "user-status"), "data": data, "method": "get"}


class TestMakeCallWebhookSecurity(TestUserStatusWebhookSecurity):
    @pytest.fixture(autouse=True)
    def pbx_answers(self):
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            mock.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr-1"})
            yield mock

    def make_connection(self, tenant, suffix):
        PbxConnectionFactory(
            tenant=tenant, provider="fakepbx", settings={"api_url": PBX_URL}, secrets={"token": "t"}
        )
        ExtensionFactory(tenant=tenant, number="100")
        return super().make_connection(tenant, suffix)

    def signed_request(self, connection, secrets):
        data = {"code": "100", "phone": "+79121234567", "userId": "1"}
        if secrets:
            data["clientId"] = secrets["client_id"]
        return {"path": hook(connection, "make-call"), "data": data, "method": "get"}


# ---- make-call ----


@pytest.fixture
def pbx_answers():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_the_seeds_make_call_with_an_unencoded_plus_calls_the_number_and_answers_200(
    client, world, pbx_answers
):
    pbx_answers.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr-1"})
    query = fixture_text("make_call_seed.query").strip()  # ...&phone=+79121234567&... as RetailCRM sends it
    assert "phone=+7912" in query

    response = client.get(f"{hook(world.crm, 'make-call')}?{query}")

    assert response.status_code == 200
    request = OriginateRequest.objects.get()
    assert (request.extension, request.phone, request.crm_user_id) == ("100", "+79121234567", "1")
    assert request.crm_connection == world.crm and request.status == OriginateRequest.OK
    assert json.loads(pbx_answers.calls[0].request.body) == {"ext": "100"}
    assert CLIENT_ID not in json.dumps(request.context)


def test_make_call_with_an_external_phone_passes_it_to_the_pbx_request(client, world, pbx_answers):
    pbx_answers.add(responses.POST, f"{PBX_URL}/call", json={"id": "corr-1"})
    response = client.get(
        hook(world.crm, "make-call"),
        {
            "clientId": CLIENT_ID,
            "code": "100",
            "phone": "+79121234567",
            "userId": "1",
            "externalPhone": "+74999999999",
        },
    )
    assert response.status_code == 200
    assert OriginateRequest.objects.get().external_phone == "+74999999999"


def test_make_call_for_an_unknown_extension_fails_with_a_reason(client, world):
    response = client.get(
        hook(world.crm, "make-call"), {"clientId": CLIENT_ID, "code": "555", "phone": "+79121234567"}
    )
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_extension" and "555" in response.json()["error"]


def test_make_call_that_the_pbx_refuses_answers_502_with_the_reason(client, world, pbx_answers):
    pbx_answers.add(responses.POST, f"{PBX_URL}/call", status=500)
    response = client.get(
        hook(world.crm, "make-call"), {"clientId": CLIENT_ID, "code": "100", "phone": "+79121234567"}
    )
    assert response.status_code == 502
    assert response.json() == {"success": False, "error": "PBX refused", "code": "pbx_refused"}


def test_make_call_to_something_that_is_not_a_number_answers_400(client, world):
    response = client.get(
        hook(world.crm, "make-call"), {"clientId": CLIENT_ID, "code": "100", "phone": "abc"}
    )
    assert response.status_code == 400 and response.json()["code"] == "bad_number"


def test_make_call_without_a_phone_answers_400(client, world):
    response = client.get(hook(world.crm, "make-call"), {"clientId": CLIENT_ID, "code": "100"})
    assert response.status_code == 400 and response.json()["success"] is False


def test_make_call_without_a_pbx_answers_409(client, world):
    world.pbx.delete()
    response = client.get(
        hook(world.crm, "make-call"), {"clientId": CLIENT_ID, "code": "100", "phone": "+79121234567"}
    )
    assert response.status_code == 409 and response.json()["code"] == "no_pbx"


def test_a_wrong_client_id_is_refused_and_never_logged(client, world, caplog):
    wrong = "wrong-client-id-that-must-not-be-logged"
    with caplog.at_level(logging.DEBUG):
        response = client.get(
            hook(world.crm, "make-call"), {"clientId": wrong, "code": "100", "phone": "+79121234567"}
        )
    assert response.status_code == 403
    assert response.json() == {"success": False, "error": "Invalid clientId"}
    assert wrong not in caplog.text and CLIENT_ID not in caplog.text
    assert not OriginateRequest.objects.exists()


def test_an_unknown_action_answers_400(client, world):
    response = client.get(hook(world.crm, "hang-up"), {"clientId": CLIENT_ID})
    assert response.status_code == 400


# ---- user-status ----


def test_a_status_change_is_stored_on_the_mapping(client, world):
    response = client.get(
        f"{hook(world.crm, 'user-status')}?{fixture_text('change_status_seed.query').strip()}"
    )

    assert response.status_code == 200
    mapping = ExtensionMapping.objects.get(pk=world.map100.pk)
    assert mapping.status == "busy" and mapping.status_at is not None
    assert ExtensionMapping.objects.get(pk=world.map200.pk).status == ""


def test_a_status_for_a_user_known_only_by_code_is_stored_by_code(client, world):
    response = client.get(
        hook(world.crm, "user-status"),
        {"clientId": CLIENT_ID, "userId": "99", "code": "200", "status": "dinner"},
    )
    assert response.status_code == 200
    assert ExtensionMapping.objects.get(pk=world.map200.pk).status == "dinner"


def test_a_status_for_an_unmapped_user_is_answered_200_and_changes_nothing(client, world):
    response = client.get(
        hook(world.crm, "user-status"),
        {"clientId": CLIENT_ID, "userId": "99", "code": "999", "status": "free"},
    )
    assert response.status_code == 200 and response.json()["updated"] == 0


@responses.activate
def test_a_manager_who_went_to_dinner_is_skipped_by_the_history_fallback(client, world):
    responses.add(responses.GET, MANAGER_URL, json=fixture_json("manager_not_found.json"))
    completed_call(world.pbx)  # +79161234567 last talked with 100
    assert resolve(world.tenant, "+79161234567").extension == "100"
    client.get(
        hook(world.crm, "user-status"),
        {"clientId": CLIENT_ID, "userId": "1", "code": "100", "status": "dinner"},
    )
    assert resolve(world.tenant, "+79161234567").extension == ""


def test_the_crm_plays_recordings_with_its_client_id(world):
    adapter = world.crm.adapter
    assert adapter.accepts_playback_client_id(CLIENT_ID)
    assert not adapter.accepts_playback_client_id("someone-else")
    assert not adapter.accepts_playback_client_id("")

"""Issue 16, Rostelecom items 1–5: paths with stray slashes, SIP logins, groups, the required domain, and
get_number_info always answered in time and in shape."""

from __future__ import annotations

import json

import pytest
import responses
from django.core.cache import cache
from django.core.exceptions import ValidationError

from calls import routing
from calls.models import Call, CallEvent, RoutingDecision
from integrations.directory import import_extensions
from integrations.models import Extension, ExtensionMapping
from integrations.providers.base import SchemaError, get_provider
from integrations.providers.rostelecom import RostelecomProvider
from integrations.tenant_file import TenantFileError as TenantImportError
from integrations.tenant_file import import_tenant
from tests.factories import CrmConnectionFactory, ExtensionFactory
from tests.rostelecom.conftest import API, CLIENT_ID, SIGN_KEY, as_bytes, load, post, post_all, sign

pytestmark = pytest.mark.django_db


def post_to(client, path: str, body) -> object:
    raw = as_bytes(body)
    return client.post(
        path,
        data=raw,
        content_type="application/json",
        HTTP_X_CLIENT_ID=CLIENT_ID,
        HTTP_X_CLIENT_SIGN=sign(raw),
    )


def new_tenant_document(**parts) -> dict:
    return {"name": "Acme Ltd", "pbx": [], "crm": [], "extensions": [], "external_phones": [], **parts}


# ---- 1. inbound paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["call_events", "/call_events", "call_events/", "//call_events//"])
def test_call_events_is_accepted_with_a_doubled_or_trailing_slash(client, pbx, extensions, suffix):
    response = post_to(
        client, f"/hooks/rostelecom/{pbx.public_id}/{suffix}", load("incoming_answered.json")[0]
    )
    assert response.status_code == 200 and response.json() == {"result": 0, "resultMessage": "ok"}
    assert CallEvent.objects.count() == 1


def test_get_number_info_is_accepted_after_a_base_url_pasted_with_a_trailing_slash(client, pbx):
    response = post_to(
        client, f"/hooks/rostelecom/{pbx.public_id}//get_number_info/", load("get_number_info_seed.json")
    )
    assert response.status_code == 200 and response.json()["result"] == 0


def test_an_unknown_method_is_still_refused(client, pbx):
    response = post_to(client, f"/hooks/rostelecom/{pbx.public_id}//call_eventz", {})
    assert response.status_code == 400 and "Unknown method" in response.json()["resultMessage"]


# ---- 2. SIP logins ----------------------------------------------------------------------------------------


def answered_by_login(login: str) -> list[dict]:
    """The seed's incoming call, where `connected` names the employee only by SIP login / URI (no request_pin)."""
    new, connected, *_ = load("incoming_transfer.json")
    connected = {**connected, "request_number": login}
    connected.pop("request_pin")
    end = {**connected, "state": "end", "timestamp": "2019-12-27 19:00:30.000", "is_record": "false"}
    return [new, connected, end]


@pytest.mark.parametrize("named_as", ["admin@acme.rt.ru", "sip:admin@188.254.33.73", "ADMIN@acme.rt.ru"])
def test_an_employee_named_by_sip_login_or_uri_is_resolved_to_the_pin(client, pbx, named_as):
    ExtensionFactory(tenant=pbx.tenant, number="101", sip_login="admin")
    ExtensionFactory(tenant=pbx.tenant, number="102", sip_login="test")
    post_all(client, pbx, answered_by_login(named_as))
    call = Call.objects.get()
    assert call.answered_extensions == ["101"] and call.last_answered_extension == "101"


def test_an_unknown_login_names_no_extension(client, pbx, extensions):
    post_all(client, pbx, answered_by_login("stranger@acme.rt.ru"))
    assert Call.objects.get().answered_extensions == []


@responses.activate
def test_call_back_by_sip_uri_when_the_connection_says_so(pbx):
    from calls.services import originate

    ExtensionFactory(tenant=pbx.tenant, number="101", sip_login="admin")
    pbx.settings = {**pbx.settings, "call_back_from": "sipuri"}
    pbx.save()
    responses.add(responses.POST, f"{API}/call_back", json=load("call_back_ok.json"))

    outcome = originate(pbx.tenant, "101", "+74951234567")

    assert outcome.ok
    sent = json.loads(responses.calls[0].request.body)
    assert sent == {
        "from_sipuri": "admin@acme.rt.ru",
        "request_number": "+74951234567",
        "domain": "acme.rt.ru",
    }


@responses.activate
def test_call_back_uses_from_pin_by_default(pbx, extensions):
    from calls.services import originate

    responses.add(responses.POST, f"{API}/call_back", json=load("call_back_ok.json"))
    assert originate(pbx.tenant, "101", "+74951234567").ok
    assert json.loads(responses.calls[0].request.body)["from_pin"] == "101"


def test_call_back_by_sip_uri_without_a_login_is_refused_before_calling_the_pbx(pbx, extensions):
    from calls.services import originate

    pbx.settings = {**pbx.settings, "call_back_from": "sipuri"}
    pbx.save()
    outcome = originate(pbx.tenant, "101", "+74951234567")  # no HTTP mock: a request would fail differently
    assert not outcome.ok and outcome.code == "pbx_refused" and "SIP login" in outcome.error


# ---- 3. groups --------------------------------------------------------------------------------------------


@responses.activate
def test_users_info_groups_are_imported_as_routing_targets_and_a_crm_naming_one_routes_to_it(
    client, pbx, fake_crm_registered
):
    responses.add(responses.POST, f"{API}/users_info", json=load("users_info.json"))
    import_extensions(pbx)
    group = Extension.objects.get(tenant=pbx.tenant, number="500")
    assert (group.kind, group.name, group.sip_login) == ("group", "testAPI", "")
    assert Extension.objects.get(tenant=pbx.tenant, number="101").sip_login == "admin"

    CrmConnectionFactory(
        tenant=pbx.tenant,
        provider="fakecrm",
        key="crm",
        settings={"answer": {"extension": "500"}},
        secrets={},
    )
    response = post(client, pbx, "get_number_info", load("get_number_info_guide.json"))
    assert response.json()["PIN"] == "500"
    assert RoutingDecision.objects.get().extension == "500"


def test_a_group_cannot_be_mapped_to_a_crm_user(pbx):
    group = ExtensionFactory(tenant=pbx.tenant, number="500", kind="group")
    crm = CrmConnectionFactory(tenant=pbx.tenant, provider="planfix", key="pf")
    with pytest.raises(ValidationError, match="group"):
        ExtensionMapping(extension=group, crm_connection=crm, crm_user_id="7").full_clean()


def test_the_tenant_file_carries_kind_and_sip_login_and_refuses_a_mapped_group(tenant):
    document = new_tenant_document(
        slug=tenant.slug,
        pbx=[],
        crm=[],
        external_phones=[],
        extensions=[
            {"number": "101", "name": "Ivan", "sip_login": "admin", "crm_users": {}},
            {"number": "500", "name": "Sales", "kind": "group", "crm_users": {}},
        ],
    )
    import_tenant(document)
    rows = Extension.objects.filter(tenant=tenant).values_list("number", "kind", "sip_login")
    assert list(rows) == [("101", "user", "admin"), ("500", "group", "")]

    document["extensions"][1]["kind"] = "team"
    with pytest.raises(TenantImportError, match=r"extensions\[1\]\.kind"):
        import_tenant(document)


# ---- 4. the domain is required ----------------------------------------------------------------------------


def test_a_rostelecom_connection_without_a_domain_is_refused_with_a_clear_error():
    with pytest.raises(SchemaError, match=r"settings\.domain: is required"):
        RostelecomProvider.clean_settings({"api_url": "https://api.cloudpbx.rt.ru"})


def test_import_tenant_refuses_a_rostelecom_connection_without_a_domain(tenant):
    document = new_tenant_document(
        slug=tenant.slug,
        crm=[],
        extensions=[],
        external_phones=[],
        pbx=[
            {
                "key": "pbx",
                "provider": "rostelecom",
                "active": True,
                "settings": {},
                "secrets": {"client_id": CLIENT_ID, "sign_key": SIGN_KEY},
            }
        ],
    )
    with pytest.raises(TenantImportError, match=r"pbx\[0\]\.settings\.domain"):
        import_tenant(document)


@responses.activate
def test_users_info_carries_the_domain(pbx):
    responses.add(responses.POST, f"{API}/users_info", json=load("users_info.json"))
    get_provider(pbx).list_extensions()
    assert json.loads(responses.calls[0].request.body) == {"domain": "acme.rt.ru"}


# ---- 5. get_number_info in time and in shape --------------------------------------------------------------


def test_the_decision_and_the_cache_are_written_after_the_answer(
    tenant, pbx, extensions, fake_crm_registered
):
    CrmConnectionFactory(
        tenant=tenant, provider="fakecrm", key="crm", settings={"answer": {"extension": "102"}}, secrets={}
    )
    decision = routing.resolve(tenant, "+79161234567", "", pbx_connection=pbx, defer_writes=True)
    # Nothing written yet: the PBX gets its answer first.
    assert decision.pk is None and not RoutingDecision.objects.exists()
    assert (
        cache.get(routing._cache_key(tenant, routing.CrmConnection.objects.get(), "+79161234567", "")) is None
    )
    routing.save_decision(decision)
    assert RoutingDecision.objects.get().extension == "102"
    again = routing.resolve(tenant, "+79161234567", "", pbx_connection=pbx)
    assert (again.extension, again.source) == ("102", "cache")


def test_get_number_info_records_its_decision_once_answered(client, pbx, extensions, fake_crm_registered):
    CrmConnectionFactory(
        tenant=pbx.tenant,
        provider="fakecrm",
        key="crm",
        settings={"answer": {"extension": "103"}},
        secrets={},
    )
    response = post(client, pbx, "get_number_info", load("get_number_info_seed.json"))
    assert response.json()["PIN"] == "103"
    decision = RoutingDecision.objects.get()
    assert (decision.provider_call_id, decision.extension) == ("SDsnZugDFmTW7Sec", "103")


def test_an_event_naming_a_groups_pin_opens_no_card_for_the_group(client, pbx, extensions):
    ExtensionFactory(tenant=pbx.tenant, number="500", kind="group")
    new = {**load("incoming_transfer.json")[0], "request_pin": "500"}
    post_all(client, pbx, [new])
    event = CallEvent.objects.get()
    assert event.normalised["extension"] == "" and Call.objects.get().rang_extensions == []


def test_a_connection_saved_before_domain_was_required_is_not_asked_for_an_unscoped_directory(pbx):
    from integrations.providers.base import ProviderError

    pbx.settings = {"time_zone": "Europe/Moscow"}  # as stored before issue 16; nothing is sent (no HTTP mock)
    pbx.save()
    with pytest.raises(ProviderError, match=r"settings\.domain is required") as raised:
        import_extensions(pbx)
    assert raised.value.permanent and raised.value.flag_connection

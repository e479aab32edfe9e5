"""Connection settings as generated form fields (URLs, selects, checkboxes, key/value rows), validated per field;
the JSON editor behind the "advanced" toggle."""

from __future__ import annotations

from django.urls import reverse

from integrations.models import CrmConnection, PbxConnection
from tests.admin_world import client_for, form_payload


def change_url(conn) -> str:
    return reverse(f"admin:integrations_{conn._meta.model_name}_change", args=[conn.pk])


def test_each_setting_is_a_field_of_its_kind(world):
    world.crm_a.provider = "retailcrm"
    world.crm_a.settings = {"account_url": "https://acme.retailcrm.ru"}
    world.crm_a.secrets = {"api_key": "k", "client_id": "c" * 20}
    world.crm_a.save()
    form = client_for(world.admin_a).get(change_url(world.crm_a)).context["adminform"].form
    assert form.fields["setting__account_url"].widget.input_type == "url"
    assert form.fields["setting__upload_strategy"].widget.__class__.__name__ == "Select"
    assert form.fields["setting__send_events"].widget.input_type == "checkbox"
    assert form.fields["setting__upload_interval_minutes"].max_value == 1440
    assert form["setting__module_code"].value() == "callbridge"  # the schema's default


def test_a_map_is_edited_as_key_value_rows(world):
    client = client_for(world.admin_a)
    data = form_payload(client.get(change_url(world.crm_a)))
    data.pop("setting__analytics", None)
    data["setting__analytics__key_0"] = "Manager"
    data["setting__analytics__value_0"] = "extension"
    data["setting__analytics__key_1"] = ""
    data["setting__analytics__value_1"] = ""
    assert client.post(change_url(world.crm_a), data).status_code == 302
    world.crm_a.refresh_from_db()
    assert world.crm_a.settings["analytics"] == {"Manager": "extension"}
    page = client.get(change_url(world.crm_a)).content.decode()
    assert 'name="setting__analytics__key_0" value="Manager"' in page


def test_each_field_carries_its_own_message(world):
    client = client_for(world.admin_a)
    data = form_payload(client.get(change_url(world.pbx_a)))
    data["setting__routing_budget_ms"] = "5"
    data["setting__api_url"] = "not a url"
    response = client.post(change_url(world.pbx_a), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"setting__routing_budget_ms", "setting__api_url"}


def test_a_plain_http_api_url_is_refused_at_its_field(world):
    client = client_for(world.admin_a)
    data = form_payload(client.get(change_url(world.crm_a)))
    data["setting__api_url"] = "http://acme.planfix.ru/tel/api"
    response = client.post(change_url(world.crm_a), data)
    assert "setting__api_url" in response.context["adminform"].form.errors


def test_unticking_a_checkbox_saves_false(world):
    world.pbx_a.provider = "mango"
    world.pbx_a.settings = {}
    world.pbx_a.secrets = {"api_key": "k", "api_salt": "s"}
    world.pbx_a.save()
    client = client_for(world.admin_a)
    data = form_payload(client.get(change_url(world.pbx_a)))
    assert data["setting__crm_routing"] == "on"
    del data["setting__crm_routing"]
    assert client.post(change_url(world.pbx_a), data).status_code == 302
    world.pbx_a.refresh_from_db()
    assert world.pbx_a.settings["crm_routing"] is False


def test_the_advanced_json_wins_when_ticked(world):
    client = client_for(world.admin_a)
    data = form_payload(client.get(change_url(world.crm_a)))
    data["settings_as_json"] = "on"
    data["settings"] = '{"api_url": "https://other.planfix.ru/tel/api"}'
    assert client.post(change_url(world.crm_a), data).status_code == 302
    world.crm_a.refresh_from_db()
    assert world.crm_a.settings["api_url"] == "https://other.planfix.ru/tel/api"


def test_a_new_connection_is_built_from_fields_once_the_provider_is_picked(world):
    world.pbx_a.delete()
    client = client_for(world.admin_a)
    url = reverse("admin:integrations_pbxconnection_add") + f"?tenant={world.tenant_a.pk}&provider=rostelecom"
    form = client.get(url).context["adminform"].form
    assert "setting__domain" in form.fields and "secret__sign_key" in form.fields
    assert (
        "secret__api_salt" not in form.fields
    )  # Mango's secrets are not offered for a Rostelecom connection
    response = client.post(
        url,
        {
            "tenant": world.tenant_a.pk,
            "key": "rt",
            "provider": "rostelecom",
            "active": "on",
            "setting__api_url": "https://api.cloudpbx.rt.ru",
            "setting__domain": "alpha.rt.ru",
            "setting__routing_budget_ms": "800",
            "setting__time_zone": "Europe/Moscow",
            "setting__call_back_from": "pin",
            "secret__client_id": "id",
            "secret__sign_key": "key",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    pbx = PbxConnection.objects.get(key="rt")
    assert pbx.settings["domain"] == "alpha.rt.ru" and pbx.settings["call_back_from"] == "pin"


def test_support_reads_settings_without_fields(world):
    page = client_for(world.support_a).get(change_url(world.crm_a)).content.decode()
    assert "setting__api_url" not in page
    assert "acme.planfix.ru" in page
    assert CrmConnection.objects.count() == 2

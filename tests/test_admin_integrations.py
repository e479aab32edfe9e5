"""The tenant-scoped admin: two tenants, their admins and support, and an outsider who must see nothing."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.urls import reverse

from integrations.models import (
    CrmConnection,
    Extension,
    ExtensionMapping,
    PbxConnection,
    Tenant,
    TenantMembership,
)
from tests.admin_world import (
    FAST_HASHERS,
    World,
    add_inline_row,
    build_world,
    client_for,
    form_payload,
    inline_prefix,
)
from tests.factories import CrmConnectionFactory, UserFactory

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def world(settings) -> World:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    return build_world()


def change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def changelist(client, model) -> list:
    response = client.get(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"))
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def secret_url(conn, action: str, name: str) -> str:
    return reverse(f"admin:integrations_{conn._meta.model_name}_{action}_secret", args=[conn.pk, name])


def message_texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# ---- who sees what ----


def test_superuser_sees_every_tenant(world):
    assert set(changelist(client_for(world.superuser), Tenant)) == {world.tenant_a, world.tenant_b}


def test_tenant_admin_sees_only_their_tenant_and_its_objects(world):
    client = client_for(world.admin_a)
    assert changelist(client, Tenant) == [world.tenant_a]
    assert changelist(client, PbxConnection) == [world.pbx_a]
    assert changelist(client, CrmConnection) == [world.crm_a]


def test_tenant_admin_needs_no_django_model_permissions(world):
    assert not world.admin_a.has_perm("integrations.change_tenant")
    response = client_for(world.admin_a).get(reverse("admin:index"))
    assert reverse("admin:integrations_tenant_changelist") in response.content.decode()


def test_tenant_admin_edits_their_tenant(world):
    client = client_for(world.admin_a)
    data = form_payload(client.get(change_url(world.tenant_a)))
    data["name"] = "Alpha Renamed"
    response = client.post(change_url(world.tenant_a), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    world.tenant_a.refresh_from_db()
    assert world.tenant_a.name == "Alpha Renamed"


@pytest.mark.parametrize("attr", ["tenant_b", "pbx_b", "crm_b", "extension_b", "phone_b", "membership_b"])
def test_another_tenants_object_answers_404(world, attr):
    obj = getattr(world, attr)
    client = client_for(world.admin_a)
    assert client.get(change_url(obj)).status_code == 404
    assert client.post(change_url(obj), {"name": "stolen"}).status_code == 404
    delete = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_delete", args=[obj.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 404
    assert type(obj).objects.filter(pk=obj.pk).exists()


def test_support_reads_but_cannot_change(world):
    client = client_for(world.support_a)
    response = client.get(change_url(world.tenant_a))
    assert response.status_code == 200
    assert not response.context["has_change_permission"]
    assert client.post(change_url(world.tenant_a), {"name": "Hijacked"}).status_code == 403
    assert client.post(change_url(world.pbx_a), {"key": "hijacked"}).status_code == 403
    assert client.get(reverse("admin:integrations_pbxconnection_add")).status_code == 403
    world.tenant_a.refresh_from_db()
    assert world.tenant_a.name == "Alpha Ltd"


def test_support_sees_which_secrets_are_stored_but_no_values(world):
    response = client_for(world.support_a).get(change_url(world.crm_a))
    page = response.content.decode()
    assert "planfix_token: stored" in page
    assert "pf-token-out" not in page and "pf-token-in-0123456789" not in page
    assert "Reveal pbx_token" not in page


def test_admin_of_one_tenant_only_reads_the_tenant_where_they_are_support(world):
    TenantMembership.objects.create(tenant=world.tenant_a, user=world.admin_b, role="support")
    client = client_for(world.admin_b)
    assert set(changelist(client, Tenant)) == {world.tenant_a, world.tenant_b}
    assert client.post(change_url(world.extension_a), {"number": "999"}).status_code == 403
    response = client.post(
        reverse("admin:integrations_extension_changelist"),
        {"action": "delete_selected", "_selected_action": [world.extension_a.pk], "post": "yes"},
    )
    assert response.status_code in {200, 403}
    assert Extension.objects.filter(pk=world.extension_a.pk).exists()


def test_outsider_staff_sees_nothing(world):
    client = client_for(world.outsider)
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:integrations_tenant_changelist") not in index
    assert client.get(reverse("admin:integrations_tenant_changelist")).status_code == 403
    assert client.get(change_url(world.tenant_a)).status_code == 404
    assert client.get(change_url(world.pbx_a)).status_code == 404


def test_tenant_choices_are_the_users_admin_tenants(world):
    client = client_for(world.admin_a)
    response = client.get(reverse("admin:integrations_pbxconnection_add"))
    assert list(response.context["adminform"].form.fields["tenant"].queryset) == [world.tenant_a]
    response = client.post(
        reverse("admin:integrations_pbxconnection_add"),
        {"tenant": world.tenant_b.pk, "key": "intruder", "provider": "mango", "settings": "{}"},
    )
    assert response.status_code == 200
    assert "tenant" in response.context["adminform"].form.errors
    assert not PbxConnection.objects.filter(key="intruder").exists()


def test_only_superusers_create_or_delete_tenants(world):
    client = client_for(world.admin_a)
    assert client.get(reverse("admin:integrations_tenant_add")).status_code == 403
    delete = reverse("admin:integrations_tenant_delete", args=[world.tenant_a.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403


def test_mapping_choices_are_the_extensions_own_tenant(world):
    CrmConnectionFactory(tenant=world.tenant_b, provider="retailcrm")
    response = client_for(world.superuser).get(change_url(world.extension_a))
    (formset,) = [f.formset for f in response.context["inline_admin_formsets"]]
    assert list(formset.form.base_fields["crm_connection"].queryset) == [world.crm_a]


def test_mapping_to_another_tenants_crm_is_refused(world):
    client = client_for(world.superuser)
    response = client.get(change_url(world.extension_a))
    data = form_payload(response)
    add_inline_row(
        data,
        inline_prefix(response, ExtensionMapping),
        {"crm_connection": str(world.crm_b.pk), "crm_user_id": "7"},
    )
    response = client.post(change_url(world.extension_a), data)
    assert response.status_code == 200
    assert not ExtensionMapping.objects.exists()


# ---- connections: settings, write-only secrets, issued tokens, inbound URLs ----


def crm_payload(client, conn) -> dict:
    return form_payload(client.get(change_url(conn)))


def test_connection_form_never_renders_stored_secrets(world):
    page = client_for(world.admin_a).get(change_url(world.crm_a)).content.decode()
    assert 'name="secret__planfix_token"' in page
    assert "pf-token-out" not in page
    assert "pf-token-in-0123456789" not in page


def test_blank_secret_keeps_the_stored_value(world):
    client = client_for(world.admin_a)
    data = crm_payload(client, world.crm_a)
    assert data.get("secret__planfix_token", "") == ""
    data["priority"] = "3"
    response = client.post(change_url(world.crm_a), data)
    assert response.status_code == 302
    world.crm_a.refresh_from_db()
    assert world.crm_a.priority == 3
    assert world.crm_a.secrets == {"planfix_token": "pf-token-out", "pbx_token": "pf-token-in-0123456789"}


def test_typed_secret_replaces_only_that_secret(world):
    client = client_for(world.admin_a)
    data = crm_payload(client, world.crm_a)
    data["secret__planfix_token"] = "pf-token-new"
    assert client.post(change_url(world.crm_a), data).status_code == 302
    world.crm_a.refresh_from_db()
    assert world.crm_a.secrets == {"planfix_token": "pf-token-new", "pbx_token": "pf-token-in-0123456789"}


def test_settings_are_validated_by_the_providers_schema(world):
    client = client_for(world.admin_a)
    data = crm_payload(client, world.crm_a)
    data["settings"] = '{"api_url": "https://acme.planfix.ru/tel/api", "colour": "red"}'
    data["settings_as_json"] = "on"  # the JSON editor is the "advanced" way; the fields are the usual one
    response = client.post(change_url(world.crm_a), data)
    assert response.status_code == 200
    assert "colour" in str(response.context["adminform"].form.errors)


def test_generated_token_is_shown_once(world):
    client = client_for(world.admin_a)
    data = crm_payload(client, world.crm_a)
    data["generate__pbx_token"] = "on"
    response = client.post(change_url(world.crm_a), data, follow=True)
    world.crm_a.refresh_from_db()
    token = world.crm_a.secrets["pbx_token"]
    assert token != "pf-token-in-0123456789" and len(token) >= 32
    assert token in response.content.decode()
    assert token not in client.get(change_url(world.crm_a)).content.decode()


def test_typing_generate_issues_a_token(world):
    client = client_for(world.admin_a)
    data = crm_payload(client, world.crm_a)
    data["secret__pbx_token"] = "generate"
    response = client.post(change_url(world.crm_a), data)
    world.crm_a.refresh_from_db()
    assert world.crm_a.secrets["pbx_token"] not in {"generate", "pf-token-in-0123456789"}
    assert any(world.crm_a.secrets["pbx_token"] in text for text in message_texts(response))


def test_a_secret_the_provider_issues_cannot_be_generated(world):
    client = client_for(world.admin_a)
    data = crm_payload(client, world.crm_a)
    data["secret__planfix_token"] = "generate"
    response = client.post(change_url(world.crm_a), data)
    assert response.status_code == 200
    assert "secret__planfix_token" in response.context["adminform"].form.errors
    world.crm_a.refresh_from_db()
    assert world.crm_a.secrets["planfix_token"] == "pf-token-out"


def test_new_connection_gets_its_token_generated_and_announced(world):
    client = client_for(world.admin_a)
    response = client.post(
        reverse("admin:integrations_crmconnection_add"),
        {
            "tenant": world.tenant_a.pk,
            "key": "wire",
            "provider": "wirecrm",
            "active": "on",
            "priority": "5",
            "settings": "",
            "secret__webhook_url": "https://acme.wirecrm.com/api/pbx/hook/xyz",
            "generate__pbx_token": "on",
            "generate__client_id": "on",  # ticked by default, but WireCRM has no client_id: ignored
        },
        follow=True,
    )
    wire = CrmConnection.objects.get(key="wire")
    assert set(wire.secrets) == {"webhook_url", "pbx_token"}
    assert wire.settings == {"start_timeout_ms": 700, "popup_ttl_seconds": 120}
    assert wire.secrets["pbx_token"] in response.content.decode()
    assert "https://acme.wirecrm.com/api/pbx/hook/xyz" not in response.content.decode()


def test_a_secret_of_another_provider_is_refused_on_a_new_connection(world):
    response = client_for(world.admin_a).post(
        reverse("admin:integrations_crmconnection_add"),
        {
            "tenant": world.tenant_a.pk,
            "key": "wire",
            "provider": "wirecrm",
            "priority": "5",
            "secret__api_key": "a RetailCRM key",
        },
    )
    assert response.status_code == 200
    assert "secret__api_key" in response.context["adminform"].form.errors


def test_tenant_admin_reveals_an_issued_token(world):
    client = client_for(world.admin_a)
    assert (
        secret_url(world.crm_a, "reveal", "pbx_token") in client.get(change_url(world.crm_a)).content.decode()
    )
    response = client.get(secret_url(world.crm_a, "reveal", "pbx_token"))
    assert response.status_code == 200
    assert "pf-token-in-0123456789" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert LogEntry.objects.filter(
        object_id=str(world.crm_a.pk), change_message="Revealed pbx_token."
    ).exists()


def test_a_secret_the_provider_issued_is_never_revealed(world):
    client = client_for(world.admin_a)
    assert client.get(secret_url(world.crm_a, "reveal", "planfix_token")).status_code == 404
    assert client.post(secret_url(world.crm_a, "regenerate", "planfix_token")).status_code == 404
    assert client.get(secret_url(world.pbx_a, "reveal", "sign_key")).status_code == 404


@pytest.mark.parametrize("who, status", [("support_a", 403), ("admin_b", 404), ("outsider", 404)])
def test_only_the_tenants_admin_reveals_or_regenerates(world, who, status):
    client = client_for(getattr(world, who))
    assert client.get(secret_url(world.crm_a, "reveal", "pbx_token")).status_code == status
    assert client.post(secret_url(world.crm_a, "regenerate", "pbx_token")).status_code == status
    world.crm_a.refresh_from_db()
    assert world.crm_a.secrets["pbx_token"] == "pf-token-in-0123456789"


def test_regenerate_asks_first_then_shows_the_new_token_once(world):
    client = client_for(world.admin_a)
    confirm = client.get(secret_url(world.crm_a, "regenerate", "pbx_token"))
    assert confirm.status_code == 200 and "pf-token-in-0123456789" not in confirm.content.decode()
    response = client.post(secret_url(world.crm_a, "regenerate", "pbx_token"), follow=True)
    world.crm_a.refresh_from_db()
    token = world.crm_a.secrets["pbx_token"]
    assert token != "pf-token-in-0123456789"
    assert token in response.content.decode()
    assert token not in client.get(change_url(world.crm_a)).content.decode()


def test_rostelecom_page_shows_the_base_url_to_paste_and_the_full_urls(world):
    page = client_for(world.support_a).get(change_url(world.pbx_a)).content.decode()
    base = f"{settings.PUBLIC_BASE_URL}/hooks/rostelecom/{world.pbx_a.public_id}/"
    assert f"<code>{base}</code>" in page
    assert f"{base}call_events" in page and f"{base}get_number_info" in page


def test_crm_page_shows_its_inbound_urls(world):
    retail = CrmConnectionFactory(tenant=world.tenant_a, provider="retailcrm")
    page = client_for(world.admin_a).get(change_url(retail)).content.decode()
    base = f"{settings.PUBLIC_BASE_URL}/hooks/retailcrm/{retail.public_id}/"
    assert f"{base}make-call" in page and f"{base}user-status" in page


def test_last_error_is_shown_read_only(world):
    world.pbx_a.flag_error("401 from the PBX: wrong sign key")
    page = client_for(world.admin_a).get(change_url(world.pbx_a)).content.decode()
    assert "401 from the PBX: wrong sign key" in page
    assert 'name="last_error"' not in page


# ---- memberships ----


def test_superuser_adds_an_existing_user_by_username_on_the_tenant_page(world):
    carol = UserFactory(username="carol", email="carol@example.test")
    client = client_for(world.superuser)
    response = client.get(change_url(world.tenant_a))
    data = form_payload(response)
    add_inline_row(
        data, inline_prefix(response, TenantMembership), {"user_lookup": "carol", "role": "support"}
    )
    response = client.post(change_url(world.tenant_a), data)
    assert response.status_code == 302
    assert TenantMembership.objects.get(tenant=world.tenant_a, user=carol).role == "support"


def test_tenant_admin_adds_an_existing_user_by_email(world):
    carol = UserFactory(username="carol", email="Carol@Example.test")
    response = client_for(world.admin_a).post(
        reverse("admin:integrations_tenantmembership_add"),
        {"tenant": world.tenant_a.pk, "role": "admin", "email": "carol@example.test"},
    )
    assert response.status_code == 302
    assert TenantMembership.objects.get(tenant=world.tenant_a, user=carol).role == "admin"


def test_superuser_creates_a_new_member_with_a_password(world):
    client = client_for(world.superuser)
    response = client.get(change_url(world.tenant_a))
    data = form_payload(response)
    add_inline_row(
        data,
        inline_prefix(response, TenantMembership),
        {
            "role": "support",
            "new_username": "dmitry",
            "new_email": "dmitry@alpha.test",
            "new_password": "Long-and-unusual-42",
        },
    )
    assert client.post(change_url(world.tenant_a), data).status_code == 302
    dmitry = User.objects.get(username="dmitry")
    assert dmitry.is_staff and not dmitry.is_superuser
    assert dmitry.check_password("Long-and-unusual-42")
    assert TenantMembership.objects.filter(tenant=world.tenant_a, user=dmitry, role="support").exists()


def test_for_a_superuser_an_unknown_user_is_an_error_not_a_new_user(world):
    response = client_for(world.superuser).post(
        reverse("admin:integrations_tenantmembership_add"),
        {"tenant": world.tenant_a.pk, "role": "support", "user_lookup": "nobody@nowhere.test"},
    )
    assert response.status_code == 200
    assert "user_lookup" in response.context["adminform"].form.errors


def test_adding_an_existing_member_again_is_refused(world):
    response = client_for(world.admin_a).post(
        reverse("admin:integrations_tenantmembership_add"),
        {"tenant": world.tenant_a.pk, "role": "admin", "email": "sasha@alpha.test"},
    )
    assert response.status_code == 200
    assert TenantMembership.objects.filter(tenant=world.tenant_a, user=world.support_a).count() == 1


def test_tenant_admin_cannot_add_members_to_another_tenant(world):
    response = client_for(world.admin_a).post(
        reverse("admin:integrations_tenantmembership_add"),
        {"tenant": world.tenant_b.pk, "role": "admin", "email": "anna@alpha.test"},
    )
    assert response.status_code == 200
    assert not TenantMembership.objects.filter(tenant=world.tenant_b, user=world.admin_a).exists()


def test_membership_pages_never_list_other_tenants_users(world):
    client = client_for(world.admin_a)
    for url in (reverse("admin:integrations_tenantmembership_add"), change_url(world.tenant_a)):
        page = client.get(url).content.decode()
        assert "boris" not in page and "olga" not in page and "root" not in page
        assert 'name="user"' not in page
    assert {m.user for m in changelist(client, TenantMembership)} == {world.admin_a, world.support_a}


# ---- issue 16 item 6: every change RetailCRM holds a copy of re-registers its module ---------------------


@pytest.fixture
def retail_a(world):
    return CrmConnectionFactory(
        tenant=world.tenant_a,
        provider="retailcrm",
        key="retail",
        settings={"account_url": "https://alpha.retailcrm.ru"},
        secrets={"api_key": "rc-key", "client_id": "rc-client"},
    )


def retail_syncs(connection) -> int:
    from calls.models import OutboundJob

    return OutboundJob.objects.filter(crm_connection=connection, kind="retailcrm.sync").count()


def delete_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_delete", args=[obj.pk])


@pytest.mark.parametrize("target", ["extension_a", "phone_a"])
def test_deleting_an_extension_or_an_external_phone_re_registers_retailcrm(world, retail_a, target):
    response = client_for(world.admin_a).post(delete_url(getattr(world, target)), {"post": "yes"})
    assert response.status_code == 302
    assert retail_syncs(retail_a) == 1
    assert retail_syncs(world.crm_b) == 0  # another tenant's CRM is not touched


def test_regenerating_the_client_id_re_registers_retailcrm(world, retail_a):
    client_for(world.admin_a).post(secret_url(retail_a, "regenerate", "client_id"))
    retail_a.refresh_from_db()
    assert retail_a.secrets["client_id"] != "rc-client"
    assert retail_syncs(retail_a) == 1


def test_editing_the_retailcrm_connection_in_the_admin_re_registers_it(world, retail_a):
    client = client_for(world.admin_a)
    data = crm_payload(client, retail_a)
    data["priority"] = "4"
    assert client.post(change_url(retail_a), data).status_code == 302
    retail_a.refresh_from_db()
    assert retail_a.priority == 4
    assert retail_syncs(retail_a) == 1
    assert retail_syncs(world.crm_b) == 0


def test_retailcrm_proposals_are_shown_on_the_connection_page(world, retail_a):
    retail_a.crm_proposals = [{"code": "999", "userId": "9"}]
    retail_a.save()
    page = client_for(world.support_a).get(change_url(retail_a)).content.decode()
    assert "Proposals from the CRM" in page and "code 999, userId 9" in page


def test_a_rostelecom_connection_without_a_domain_is_refused_by_the_admin_form(world):
    """Issue 16 item 4: users_info needs the domain; the form says so instead of saving a connection without it."""
    world.pbx_a.active = False
    world.pbx_a.save()
    response = client_for(world.admin_a).post(
        reverse("admin:integrations_pbxconnection_add"),
        {
            "tenant": world.tenant_a.pk,
            "key": "rt",
            "provider": "rostelecom",
            "active": "on",
            "settings": "{}",
            "secret__client_id": "id",
            "secret__sign_key": "key",
        },
    )
    assert response.status_code == 200
    errors = str(response.context["adminform"].form.errors)
    assert "settings.domain: is required" in errors
    assert not PbxConnection.objects.filter(key="rt").exists()

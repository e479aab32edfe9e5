"""manage.py seed_demo: the demo tenant and admin login a fresh install starts with."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from integrations.management.commands.seed_demo import demo_document
from integrations.models import (
    CrmConnection,
    Extension,
    ExtensionMapping,
    ExternalPhone,
    PbxConnection,
    Tenant,
    TenantMembership,
)
from integrations.providers.sandbox.models import SandboxContact
from integrations.tenant_file import dump_document, export_tenant, import_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _environment(settings, monkeypatch):
    settings.PUBLIC_BASE_URL = "https://portal.example"
    monkeypatch.delenv("DEMO_ADMIN_PASSWORD", raising=False)


def seed() -> str:
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_seed_demo_creates_a_tenant_with_the_sandbox_active_and_the_real_providers_inactive():
    seed()
    tenant = Tenant.objects.get(slug="demo")
    pbxs = PbxConnection.objects.filter(tenant=tenant).order_by("key")
    assert [(p.provider, p.active) for p in pbxs] == [("rostelecom", False), ("sandbox_pbx", True)]
    crms = CrmConnection.objects.filter(tenant=tenant).order_by("priority")
    assert [(c.provider, c.active) for c in crms] == [
        ("sandbox_crm", True),
        ("planfix", False),
        ("retailcrm", False),
        ("wirecrm", False),
    ]
    sandbox_crm = crms[0]
    assert SandboxContact.objects.get(crm_connection=sandbox_crm, phone="+79161110022").extension == "101"


def old_demo_document() -> dict:
    """The demo tenant as seed_demo wrote it before the sandbox existed."""
    document = demo_document()
    document["pbx"] = [{**document["pbx"][1], "active": True}]
    document["crm"] = document["crm"][1:]
    return document


def test_an_old_demo_tenant_gets_the_sandbox_and_its_placeholder_pbx_is_switched_off():
    import_tenant(old_demo_document())
    old = PbxConnection.objects.get(provider="rostelecom")
    secrets = dict(old.secrets)
    output = seed()
    old.refresh_from_db()
    assert not old.active and old.secrets == secrets
    tenant = Tenant.objects.get(slug="demo")
    assert tenant.active_pbx().provider == "sandbox_pbx"
    assert [c.provider for c in tenant.active_crms()] == ["sandbox_crm"]
    assert "sandbox PBX added (active)" in output
    assert SandboxContact.objects.count() == 2


def test_an_old_demo_tenant_with_a_configured_pbx_keeps_it_active_and_its_credentials():
    import_tenant(old_demo_document())
    old = PbxConnection.objects.get(provider="rostelecom")
    old.secrets = {"client_id": "REAL-CLIENT", "sign_key": "REAL-KEY"}
    old.save()
    seed()
    old.refresh_from_db()
    assert old.active and old.secrets == {"client_id": "REAL-CLIENT", "sign_key": "REAL-KEY"}
    sandbox = PbxConnection.objects.get(provider="sandbox_pbx")
    assert not sandbox.active and len(sandbox.secrets["signing_key"]) >= 32
    assert not CrmConnection.objects.get(provider="sandbox_crm").active


def test_seed_demo_issues_the_tokens_the_crms_will_need():
    seed()
    for crm in CrmConnection.objects.all():
        for name in crm.provider_cls.issued_secrets():
            assert crm.secrets[name] != "generate" and len(crm.secrets[name]) >= 32


def test_seed_demo_creates_mapped_extensions_and_external_phones_with_site_codes():
    seed()
    assert list(Extension.objects.values_list("number", flat=True)) == ["101", "102", "103"]
    assert ExtensionMapping.objects.count() == 9
    phones = list(ExternalPhone.objects.all())
    assert len(phones) == 2
    assert all(phone.site_codes.exists() for phone in phones)


def test_seed_demo_creates_an_admin_and_prints_the_login_once():
    output = seed()
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert TenantMembership.objects.get(user=admin).role == TenantMembership.ADMIN
    assert "https://portal.example/admin/" in output
    password = output.split("Password: ", 1)[1].split()[0]
    assert admin.check_password(password)


def test_seed_demo_takes_the_admin_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "demo-Password-42")
    output = seed()
    assert get_user_model().objects.get(username="admin").check_password("demo-Password-42")
    assert "demo-Password-42" not in output


def test_running_seed_demo_twice_changes_nothing():
    seed()
    tenant = Tenant.objects.get(slug="demo")
    document = dump_document(export_tenant(tenant, include_secrets=True))
    password_hash = get_user_model().objects.get(username="admin").password

    output = seed()

    assert dump_document(export_tenant(tenant, include_secrets=True)) == document
    assert get_user_model().objects.get(username="admin").password == password_hash
    assert TenantMembership.objects.count() == 1
    assert "exists" in output and "Password:" not in output


def test_seed_demo_leaves_credentials_an_admin_entered_alone():
    seed()
    retail = CrmConnection.objects.get(key="retailcrm")
    retail.secrets = {**retail.secrets, "api_key": "real-key"}
    retail.active = True
    retail.save()
    seed()
    retail.refresh_from_db()
    assert retail.active and retail.secrets["api_key"] == "real-key"

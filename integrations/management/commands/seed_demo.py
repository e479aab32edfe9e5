"""manage.py seed_demo: a demo tenant and an admin login, so a fresh install has something to look at and, with
the sandbox PBX and CRM, a whole call to watch (`make simulate SCENARIO=answered`)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from integrations.models import CrmConnection, PbxConnection, Tenant, TenantMembership
from integrations.providers.sandbox import enabled as sandbox_enabled
from integrations.providers.sandbox.models import SandboxContact
from integrations.simulation import DEFAULT_CLIENT
from integrations.tenant_file import import_tenant

DEMO_SLUG = "demo"
ADMIN_USERNAME = "admin"
PASSWORD_ENV = "DEMO_ADMIN_PASSWORD"
PLACEHOLDER = "replace-me"


SANDBOX_PBX = {
    "key": "sandbox",
    "provider": "sandbox_pbx",
    "active": True,
    "settings": {},
    "secrets": {"signing_key": "generate"},
}
SANDBOX_CRM = {
    "key": "sandbox",
    "provider": "sandbox_crm",
    "active": True,
    "priority": 0,
    "settings": {},
    "secrets": {},
}
# The sandbox CRM's routing table: the number `simulate_call` calls from by default is a known client of 101.
DEMO_CONTACTS = (
    (DEFAULT_CLIENT, "Ivan Petrov (demo client)", "101"),
    ("+79162220033", "Olga Smirnova (demo client)", "102"),
)


def demo_document() -> dict[str, Any]:
    """The demo tenant as a tenant file: the sandbox PBX and CRM, active, so `make simulate` shows the whole flow
    without accounts; a Rostelecom PBX and three CRMs inactive, with placeholders, to fill in and switch on. The
    real CRMs stay inactive: their hosts and credentials are invented, and an active connection would keep
    retrying against them until an admin enters real ones."""
    return {
        "slug": DEMO_SLUG,
        "name": "Demo",
        "active": True,
        "region": "RU",
        "time_zone": "Europe/Moscow",
        "retention_days": None,
        "pbx": [
            dict(SANDBOX_PBX),
            {
                "key": "pbx",
                "provider": "rostelecom",
                "active": False,
                "settings": {"domain": "demo.example"},
                "secrets": {"client_id": PLACEHOLDER, "sign_key": PLACEHOLDER},
            },
        ],
        "crm": [
            dict(SANDBOX_CRM),
            {
                "key": "planfix",
                "provider": "planfix",
                "active": False,
                "priority": 1,
                "settings": {"api_url": "https://demo.planfix.example/tel/api"},
                "secrets": {"planfix_token": PLACEHOLDER, "pbx_token": "generate"},
            },
            {
                "key": "retailcrm",
                "provider": "retailcrm",
                "active": False,
                "priority": 2,
                "settings": {"account_url": "https://demo.retailcrm.example"},
                "secrets": {"api_key": PLACEHOLDER, "client_id": "generate"},
            },
            {
                "key": "wirecrm",
                "provider": "wirecrm",
                "active": False,
                "priority": 3,
                "settings": {},
                "secrets": {
                    "webhook_url": f"https://demo.wirecrm.example/api/pbx/hook/{PLACEHOLDER}",
                    "pbx_token": "generate",
                },
            },
        ],
        "extensions": [
            {
                "number": number,
                "name": name,
                "email": f"{login}@demo.example",
                "crm_users": {"planfix": user_id, "retailcrm": user_id, "wirecrm": user_id},
            }
            for number, name, login, user_id in (
                ("101", "Anna Demo", "anna", "1"),
                ("102", "Boris Demo", "boris", "2"),
                ("103", "Vera Demo", "vera", "3"),
            )
        ],
        "external_phones": [
            {"number": "+74950000001", "label": "Main line", "site_codes": {"retailcrm": "demo-shop"}},
            {"number": "+74950000002", "label": "Second shop", "site_codes": {"retailcrm": "demo-shop-2"}},
        ],
    }


def _has_placeholders(connection: Any) -> bool:
    return any(PLACEHOLDER in str(value) for value in (connection.secrets or {}).values())


def _create(model: Any, tenant: Tenant, spec: dict[str, Any], active: bool) -> Any:
    connection = model(
        tenant=tenant,
        key=spec["key"],
        provider=spec["provider"],
        active=active,
        settings=dict(spec["settings"]),
        secrets=dict(spec["secrets"]),
        **({"priority": spec["priority"]} if "priority" in spec else {}),
    )
    connection.full_clean()  # issues the generated tokens
    connection.save()
    return connection


def upgrade_demo(tenant: Tenant) -> list[str]:
    """A demo tenant from before the sandbox: add the sandbox PBX and CRM. The sandbox PBX becomes the active one
    only when the active PBX still has the placeholder credentials (it could not work anyway); a PBX an admin
    configured stays active, and the sandbox ones are added switched off. No credential is changed."""
    notes = []
    if not tenant.pbxconnections.filter(provider="sandbox_pbx").exists():
        current = tenant.active_pbx()
        takes_over = current is None or _has_placeholders(current)
        if current is not None and takes_over:
            PbxConnection.objects.filter(pk=current.pk).update(active=False)
            notes.append(f"PBX {current.key!r} still had placeholder credentials: switched off")
        key = (
            SANDBOX_PBX["key"]
            if not tenant.pbxconnections.filter(key=SANDBOX_PBX["key"]).exists()
            else "sandbox-pbx"
        )
        _create(PbxConnection, tenant, {**SANDBOX_PBX, "key": key}, active=takes_over)
        notes.append(
            f"sandbox PBX added ({'active' if takes_over else 'inactive: the configured PBX stays active'})"
        )
    if not tenant.crmconnections.filter(provider="sandbox_crm").exists():
        active = tenant.pbxconnections.filter(provider="sandbox_pbx", active=True).exists()
        key = (
            SANDBOX_CRM["key"]
            if not tenant.crmconnections.filter(key=SANDBOX_CRM["key"]).exists()
            else "sandbox-crm"
        )
        _create(CrmConnection, tenant, {**SANDBOX_CRM, "key": key}, active=active)
        notes.append(f"sandbox CRM added ({'active' if active else 'inactive'})")
    return notes


def seed_contacts(tenant: Tenant) -> None:
    for crm in tenant.crmconnections.filter(provider="sandbox_crm"):
        if not SandboxContact.objects.filter(crm_connection=crm).exists():
            SandboxContact.objects.bulk_create(
                SandboxContact(crm_connection=crm, phone=phone, name=name, extension=extension)
                for phone, name, extension in DEMO_CONTACTS
            )


class Command(BaseCommand):
    help = (
        "Create the demo tenant (the sandbox PBX and CRM, active; a Rostelecom PBX and three CRMs, inactive; "
        f"extensions, external phones) and a superuser '{ADMIN_USERNAME}' (password from {PASSWORD_ENV} or "
        "random, printed once). Safe to run again: an existing demo tenant only gets the sandbox connections it "
        "lacks; no credential is changed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            tenant = Tenant.objects.filter(slug=DEMO_SLUG).first()
            if tenant is None:
                tenant = import_tenant(demo_document()).tenant
                self.stdout.write(self.style.SUCCESS(f"Demo tenant {DEMO_SLUG!r} created."))
            else:
                # An admin may have entered real credentials since: never overwrite them with placeholders.
                notes = upgrade_demo(tenant)
                self.stdout.write(
                    f"Demo tenant {DEMO_SLUG!r} exists; "
                    + ("; ".join(notes) + "." if notes else "left as it is.")
                )
            seed_contacts(tenant)
            user, password = self._admin_user()
            TenantMembership.objects.get_or_create(
                tenant=tenant, user=user, defaults={"role": TenantMembership.ADMIN}
            )

        self.stdout.write(f"Admin: {settings.PUBLIC_BASE_URL}/admin/")
        if sandbox_enabled():
            self.stdout.write(
                "Try a call: make simulate SCENARIO=answered (then open the sandbox CRM's inbox)"
            )
        else:
            self.stdout.write("SANDBOX_ENABLED is off: the demo's sandbox PBX and CRM refuse to work here.")
        if password is None:
            self.stdout.write(f"User {ADMIN_USERNAME!r} exists; its password was not changed.")
        elif os.environ.get(PASSWORD_ENV):
            self.stdout.write(f"Username: {ADMIN_USERNAME}  Password: (from {PASSWORD_ENV})")
        else:
            self.stdout.write(f"Username: {ADMIN_USERNAME}  Password: {password}")
            self.stdout.write("The password is shown only this once.")

    def _admin_user(self) -> tuple[Any, str | None]:
        """The admin user and its new password, or None as the password when the user already existed."""
        User = get_user_model()
        user = User.objects.filter(username=ADMIN_USERNAME).first()
        if user is not None:
            return user, None
        password = os.environ.get(PASSWORD_ENV) or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(ADMIN_USERNAME, f"{ADMIN_USERNAME}@demo.example", password)
        return user, password

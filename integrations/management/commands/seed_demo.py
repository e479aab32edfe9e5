"""manage.py seed_demo: a demo tenant and an admin login, so a fresh install has something to look at."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from integrations.models import Tenant, TenantMembership
from integrations.tenant_file import import_tenant

DEMO_SLUG = "demo"
ADMIN_USERNAME = "admin"
PASSWORD_ENV = "DEMO_ADMIN_PASSWORD"
PLACEHOLDER = "replace-me"


def demo_document() -> dict[str, Any]:
    """The demo tenant as a tenant file. The CRMs are inactive: their hosts and credentials are invented, and
    an active connection would keep retrying against them until an admin enters real ones."""
    return {
        "slug": DEMO_SLUG,
        "name": "Demo",
        "active": True,
        "region": "RU",
        "time_zone": "Europe/Moscow",
        "retention_days": None,
        "pbx": [
            {
                "key": "pbx",
                "provider": "rostelecom",
                "active": True,
                "settings": {"domain": "demo.example"},
                "secrets": {"client_id": PLACEHOLDER, "sign_key": PLACEHOLDER},
            }
        ],
        "crm": [
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


class Command(BaseCommand):
    help = (
        "Create the demo tenant (one PBX, three inactive CRMs, extensions, external phones) and a superuser "
        f"'{ADMIN_USERNAME}' (password from {PASSWORD_ENV} or random, printed once). Safe to run again: "
        "whatever exists is left as it is."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            tenant = Tenant.objects.filter(slug=DEMO_SLUG).first()
            if tenant is None:
                tenant = import_tenant(demo_document()).tenant
                self.stdout.write(self.style.SUCCESS(f"Demo tenant {DEMO_SLUG!r} created."))
            else:
                # An admin may have entered real credentials since: never overwrite them with placeholders.
                self.stdout.write(f"Demo tenant {DEMO_SLUG!r} exists; left as it is.")
            user, password = self._admin_user()
            TenantMembership.objects.get_or_create(
                tenant=tenant, user=user, defaults={"role": TenantMembership.ADMIN}
            )

        self.stdout.write(f"Admin: {settings.PUBLIC_BASE_URL}/admin/")
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
